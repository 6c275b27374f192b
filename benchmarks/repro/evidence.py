"""The evidence of an output folder: the measured records every number of the report comes from, in one small
archive that can be kept beside the report (``docs/results_evidence.tar.xz``) when the folder itself cannot.

The output folder of a ``--full`` reproduction holds gigabytes (checkpoints, predicted label maps, the phantom
collection and its preprocessed arrays), and it lives on the machine that trained it: the five-dataset folder of
2026-12-03/04 (1041 min of training over 27 invocations) was lost with its machine between two sessions, and with
it every per-case score behind ``docs/results.md``. What the report is computed from is small: every run's
training log (its validation curve), its configuration and head list, its held-out whole-scan scores, the test
cases' evaluation summaries, the cached stage results under ``results/`` and the folder's records of its
invocations and sizes. ``write_evidence`` packs exactly those, byte-for-byte the same archive for the same
files (sorted members, no times or owners, xz), so that a re-render that measured nothing new leaves it unchanged.
"""

from __future__ import annotations

import io
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

# what the report says of it
EVIDENCE_NOTE = ("every run's training log and configuration, the held-out and test-case scores, the stage results "
                 "and the records of every invocation on the output folder, without checkpoints or images; "
                 "`tar xJf` unpacks them into the folder layout")


def evidence_files(out: Path) -> list[Path]:
    """The files of ``out`` that ``write_evidence`` keeps, sorted by their path inside ``out``."""
    out = Path(out)
    found = {p for pattern in EVIDENCE_GLOBS for p in out.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.relative_to(out).as_posix())


def evidence_path(report: Path) -> Path:
    """Where the evidence of a report goes: beside it, named after it (``results.md``: ``results_evidence.tar.xz``),
    as its plots are."""
    report = Path(report)
    return report.with_name(report.stem + "_evidence.tar.xz")


def write_evidence(out: Path, *paths: Path) -> int:
    """Write the evidence of output folder ``out`` to each of ``paths`` (``.tar.xz`` files, each written whole or
    not at all) and return the number of files in it. The same files give the same bytes."""
    from multitalent.errors import atomic_path

    out = Path(out)
    files = evidence_files(out)
    buf = io.BytesIO()
    # preset 6, no check of the data beyond xz's own CRC64; tarfile writes no time into the xz stream
    with tarfile.open(fileobj=buf, mode="w:xz", format=tarfile.PAX_FORMAT, preset=6) as tar:
        for f in files:
            data = f.read_bytes()
            info = tarfile.TarInfo(f.relative_to(out).as_posix())
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    for path in paths:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
    return len(files)
