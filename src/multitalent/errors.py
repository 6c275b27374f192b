"""The one exception type for errors a user can cause, and atomic-write helpers."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class UserInputError(Exception):
    """A problem with the user's input: the message names the file and what to do.

    The CLI turns it into exit code 2 and a one-line message, without a traceback.
    """


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed non-finite, a training process died); the message says
    why. The CLI prints it in one line and exits with code 1."""


def _mkdir(path: Path) -> None:
    """``mkdir -p``; a folder it cannot create (a file in the way, no permission) is a user error."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        if isinstance(e, FileExistsError) or (path.exists() and not path.is_dir()):
            reason = "a file is in the way"
        raise UserInputError(f"{path}: cannot create this folder ({reason}); give another output path."
                             ) from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is flushed and renamed to ``final``.

    On an exception the temporary file is removed, so nothing half-written ever sits under the
    final name. ``suffix`` defaults to the final name's own ending(s) so writers that pick the
    format from the name (SimpleITK, numpy) still do the right thing.
    """
    final = Path(final)
    _mkdir(final.parent)
    if suffix is None:
        suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` in one rename."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise UserInputError(f"{final}: the output path exists and is a file; give a folder path instead.")
    _mkdir(final.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_output_dir(path: str | os.PathLike) -> Path:
    """Create an output folder, refusing a path that exists as a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserInputError(f"{path}: the output path exists and is a file; give a folder path instead.")
    _mkdir(path)
    return path


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write JSON atomically (temporary name, fsync, rename)."""
    import json

    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
