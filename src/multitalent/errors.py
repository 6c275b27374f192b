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


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is flushed and renamed to ``final``.

    On an exception the temporary file is removed, so nothing half-written ever sits under the
    final name. ``suffix`` defaults to the final name's own ending(s) so writers that pick the
    format from the name (SimpleITK, numpy) still do the right thing.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent)
    os.close(fd)
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
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
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
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write JSON atomically (temporary name, fsync, rename)."""
    import json

    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
