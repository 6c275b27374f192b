"""Shared fixtures: tiny raw datasets built in the test, with fixed seeds, and the session's shared artefacts
(built once, on first use). Helpers to build data yourself are in ``tests/helpers.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Shared, build_collection


@pytest.fixture
def tiny_collection(tmp_path: Path) -> Path:
    """Two datasets (one plain, one with nnU-Net regions) in this test's folder; returns the manifest path."""
    return build_collection(tmp_path)


@pytest.fixture(scope="session")
def tiny_preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny collection preprocessed once per session (preset small, 2 mm, patch 16x32x32); read-only."""
    from multitalent.preprocessing.pipeline import run_preprocessing

    root = tmp_path_factory.mktemp("tiny_preprocessed")
    manifest = build_collection(root / "raw")
    return run_preprocessing(manifest, root / "pre", preset="small", spacing=(2.0, 2.0, 2.0),
                             patch_size=(16, 32, 32), workers=1, progress=False)


@pytest.fixture
def pre(tiny_preprocessed: Path):
    """The session's preprocessed tiny collection, opened afresh for this test."""
    from multitalent.preprocessing.pipeline import Preprocessed

    return Preprocessed.open(tiny_preprocessed)


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """The tiny collection and, built by the command line on first use: its preprocessed folder, a trained run
    and predictions (``tests.helpers.Shared``); read-only, shared by the whole session."""
    return Shared(tmp_path_factory.getbasetemp() / "multitalent_shared")


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Tests that pin torch to one thread must not leak it: CPU results depend on the thread count."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
