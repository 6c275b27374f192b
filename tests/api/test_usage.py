"""The public API: ``import multitalent as mt`` exposes the stages and ``Predictor``; the notebook example
of docs/usage.md runs as it is written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

DOC = Path(__file__).resolve().parents[2] / "docs" / "usage.md"


def test_the_api_names_exist():
    import multitalent as mt

    for name in ("preprocess", "train", "finetune", "extend", "predict", "evaluate", "validate", "Predictor"):
        assert callable(getattr(mt, name)), name
    import multitalent.extend  # noqa: F401 - importing the module keeps the name callable
    import multitalent.finetune  # noqa: F401

    assert callable(mt.extend) and callable(mt.finetune)
    from multitalent import api

    for name in ("extend", "finetune"):  # the module answers with the API function of its name
        assert isinstance(getattr(mt, name), type(multitalent.extend))
        with pytest.raises(TypeError) as direct:
            getattr(api, name)()
        with pytest.raises(TypeError) as via_module:
            getattr(mt, name)()
        assert str(via_module.value) == str(direct.value) and f"{name}() missing" in str(direct.value)


@pytest.mark.slow  # trains and predicts
def test_usage_example_runs(tiny_collection, tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    assert len(block.strip().splitlines()) <= 10
    work = tmp_path / "work"
    work.mkdir()
    (work / "raw").symlink_to(tiny_collection.parent)
    scan = tiny_collection.parent / "Dataset001_Liver" / "imagesTr" / "liver_0_0000.nii.gz"
    shutil.copy(scan, work / "scan.nii.gz")
    monkeypatch.chdir(work)
    namespace: dict = {}
    exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - the documented example itself
    maps = namespace["maps"]
    assert set(maps) == {"D001", "D002"}
    image = sitk.ReadImage(str(scan))
    for m in maps.values():  # in the scan's own geometry
        assert m.GetSize() == image.GetSize() and m.GetSpacing() == image.GetSpacing()
        assert m.GetOrigin() == image.GetOrigin() and m.GetDirection() == image.GetDirection()
    assert "D001" in capsys.readouterr().out
    # the array form gives the same label maps, and one mask per head on request
    predictor = namespace["predictor"]
    array = sitk.GetArrayFromImage(image)
    out = predictor(array, spacing=tuple(reversed(image.GetSpacing())), origin=image.GetOrigin(),
                    direction=image.GetDirection(), heads=True)
    for ds, m in maps.items():
        assert np.array_equal(out[ds], sitk.GetArrayFromImage(m))
    assert set(out["heads"]) == {h.id for h in predictor.registry.heads}
