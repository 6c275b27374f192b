"""The evidence of an output folder: the measured records every number of the report comes from, small enough to
keep beside the report (``docs/results_evidence/``) when the folder itself cannot be kept.

The output folder of a ``--full`` reproduction holds gigabytes (checkpoints, predicted label maps, the phantom
collection and its preprocessed arrays), and it lives on the machine that trained it: the five-dataset folder of
2026-12-03/04 (1041 min of training over 27 invocations) was lost with its machine between two sessions, and with
it every per-case score behind ``docs/results.md``. What the report is computed from is small: every run's
training log (its validation curve), its configuration and head list, its held-out whole-scan scores, the test
cases' evaluation summaries, the cached stage results under ``results/`` and the folder's records of its
invocations and sizes.

``write_evidence`` packs those into one ``.tar.xz`` per run (``runs/<run>.tar.xz``), one per evaluation
(``evaluation/<key>.tar.xz``) and one for the rest (``folder.tar.xz``). The archives hold no times or owners, so
the same records give the same bytes: an archive changes only when its records do (a finished run's once more at
most, when its held-out scores are added), and a version-controlled evidence folder grows by what an invocation
added, not by the whole folder every time. The training logs are kept with every number rounded to
``LOG_DECIMALS`` decimals (a Dice of 0.73452 is 73.452 points), which saves a third of their size; every other
file is kept byte for byte.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

# the records kept, as globs relative to the output folder (nothing else: no checkpoint, image or label map)
EVIDENCE_GLOBS = (
    "*.md",                             # the reports written there (results.md, results_extension.md)
    "reproduce.log",                    # every stage's progress lines, all invocations
    "results/*.json",                   # findings, invocations, sizes, wall times, cached stage results
    "manifests/*.json",                 # which datasets each collection (pre-training, target, fully) holds
    "raw/collection.json",              # the phantom collection's manifest: its datasets, cases and seed
    "preprocessed/*/plans.json",        # spacing, patch, batch, topology
    "preprocessed/*/heads.json",        # the heads of each collection
    "preprocessed/*/splits.json",       # the folds: which training cases each run held out
    "runs/*/log.jsonl",                 # every epoch: losses, held-out patch pseudo-Dice, lr, times
    "runs/*/config.json",               # the run's options
    "runs/*/heads.json",
    "runs/*/validation/summary.json",   # held-out whole-scan Dice (the budget pairs' criterion)
    "evaluation/*/summary.json",        # test-case Dice per case and head (the tables and t-tests)
    "evaluation/*/*/summary.json",
)
LOG_DECIMALS = 5
# what is kept of a run of another folder that a budget pair reads (``write_evidence``'s ``paired``)
RUN_GLOBS = tuple(g.removeprefix("runs/*/") for g in EVIDENCE_GLOBS if g.startswith("runs/*/"))
PAIRED_NOTE = ("the runs of other folders that the budget pairs read, their records likewise, under "
               "`paired/<folder>/`")

# what the report says of it
EVIDENCE_NOTE = ("every run's training log and configuration, the held-out and test-case scores, the stage results "
                 "and the records of every invocation on the output folder, without checkpoints or images: one "
                 "`.tar.xz` per run and per evaluation and `folder.tar.xz` for the rest; "
                 "`find DIR -name '*.tar.xz' -exec tar xJf {} -C OUT \\;` unpacks them into the folder's layout")


def evidence_files(out: Path) -> list[Path]:
    """The files of ``out`` that ``write_evidence`` keeps, sorted by their path inside ``out``."""
    out = Path(out)
    found = {p for pattern in EVIDENCE_GLOBS for p in out.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.relative_to(out).as_posix())


def evidence_groups(out: Path) -> dict[str, list[Path]]:
    """``evidence_files`` by archive: ``runs/<run>`` and ``evaluation/<key>`` for the files under those folders,
    ``folder`` for the rest."""
    out = Path(out)
    groups: dict[str, list[Path]] = {}
    for f in evidence_files(out):
        parts = f.relative_to(out).parts
        key = "/".join(parts[:2]) if parts[0] in ("runs", "evaluation") and len(parts) > 2 else "folder"
        groups.setdefault(key, []).append(f)
    return groups


def evidence_path(report: Path) -> Path:
    """Where the evidence of a report goes: beside it, named after it (``results.md``: ``results_evidence/``), as
    its plots are."""
    report = Path(report)
    return report.with_name(report.stem + "_evidence")


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, LOG_DECIMALS)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _kept_bytes(path: Path) -> bytes:
    """The bytes kept of ``path``: a training log with its numbers rounded (a line that is not JSON as it is)."""
    data = path.read_bytes()
    if path.suffix != ".jsonl":
        return data
    lines = []
    for line in data.decode().splitlines():
        try:
            lines.append(json.dumps(_rounded(json.loads(line)), separators=(",", ":")))
        except json.JSONDecodeError:
            lines.append(line)
    return "".join(line + "\n" for line in lines).encode()


def _archive(out: Path, files: list[Path], prefix: str = "") -> bytes:
    """A ``.tar.xz`` of ``files`` under their paths inside ``out`` (after ``prefix``), with no times or owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz", format=tarfile.PAX_FORMAT, preset=6) as tar:
        for f in files:
            data = _kept_bytes(f)
            info = tarfile.TarInfo(prefix + f.relative_to(out).as_posix())
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_evidence(out: Path, *dirs: Path, paired: tuple[Path, ...] | list[Path] = ()) -> int:
    """Write the evidence of output folder ``out`` into each of ``dirs`` (each archive written whole or not at all,
    and only when its bytes changed; an archive of a run or evaluation no longer in ``out`` is removed) and return
    the number of files kept. ``paired``: run folders of other output folders (``F/runs/<run>``) whose records the
    report also reads (the other runs of its budget pairs), each kept as ``paired/<F's name>/<run>.tar.xz`` with
    its files under ``paired/<F's name>/runs/<run>/``, so that unpacking beside ``out``'s own runs clashes with
    none of them (F resolved: ``.`` is named; a second folder of the same name is ``<name>_2``)."""
    from multitalent.errors import atomic_path

    out = Path(out)
    groups = evidence_groups(out)
    archives = {f"{key}.tar.xz": _archive(out, files) for key, files in groups.items()}
    n = sum(map(len, groups.values()))
    tags: dict[Path, str] = {}  # each other folder's name in the evidence (a second folder of the same name: _2, ...)
    for run in map(Path, paired):
        root = run.resolve().parents[1]
        if root not in tags:
            tag, i = root.name, 1
            while tag in tags.values():
                i += 1
                tag = f"{root.name}_{i}"
            tags[root] = tag
        tag = tags[root]
        files = sorted({f for g in RUN_GLOBS for f in run.glob(g) if f.is_file()}, key=lambda f: f.as_posix())
        if files:
            archives[f"paired/{tag}/{run.name}.tar.xz"] = _archive(run.parents[1], files, f"paired/{tag}/")
            n += len(files)
    for d in map(Path, dirs):
        for name, data in archives.items():
            path = d / name
            if not (path.is_file() and path.read_bytes() == data):
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data)
        for old in d.rglob("*.tar.xz") if d.is_dir() else ():
            if old.relative_to(d).as_posix() not in archives:
                old.unlink()
    return n
