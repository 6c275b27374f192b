"""The documentation names what exists: every repository path that README.md and docs/*.md cite (a module, a test
file, a script, a report) is in the repository, so that a moved or renamed file cannot leave its docs behind."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a path relative to the repository root, in prose or in a command (not part of an absolute or longer path)
PATH = re.compile(r"(?<![\w/.~-])((?:src|tests|benchmarks|scripts|docs|\.ci)/[\w./-]*\w)")
# cited on purpose although absent: placeholders of a convention, and what a run on a GPU machine will write
NOT_YET = {"src/multitalent/X/Y.py", "tests/X/test_Y.py", "tests/test_Z.py", "docs/results_evidence",
           "docs/results_gpu.md"}


def cited_paths(text: str) -> set[str]:
    return {m.group(1).rstrip(".") for m in PATH.finditer(text)}


def test_the_path_pattern_finds_relative_paths_only():
    text = ("see `tests/training/test_memory.py` and docs/usage.md. Run bash .ci/run; not /work/main/src/x.py "
            "nor ../shared/docs/DESIGN.md")
    assert cited_paths(text) == {"tests/training/test_memory.py", "docs/usage.md", ".ci/run"}


def test_every_repository_path_the_docs_cite_exists():
    missing = {}
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for path in cited_paths(doc.read_text(encoding="utf-8")) - NOT_YET:
            if not (REPO / path).exists():
                missing.setdefault(path, []).append(doc.name)
    assert not missing, f"cited but not in the repository: {missing}"
