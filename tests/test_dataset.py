"""Round trip and refusal behaviour of datasets on disk."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bsoc.data.dataset import Dataset
from bsoc.errors import DatasetNotFoundError, DataValidationError, OverwriteRefusedError


def test_round_trip_is_exact(toy_dataset):
    loaded = Dataset.load(toy_dataset)
    again = Dataset.load(toy_dataset)
    assert len(loaded) == 10
    assert [c.meta.split for c in loaded].count("test") == 2
    for a, b in zip(loaded, again, strict=True):
        pd.testing.assert_frame_equal(a.frame, b.frame, check_exact=True)
        assert a.meta == b.meta
    assert Dataset.manifest(toy_dataset)["fingerprint"] == loaded.fingerprint()


def test_a_format_1_dataset_keeps_loading_and_saves_as_format_2(toy_dataset, tmp_path):
    """Format 1 called a cycle's load kind ``profile``; such datasets on disk still load."""
    out = Dataset.load(toy_dataset).save(tmp_path / "old")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 1
    for entry in manifest["cycles"]:
        entry["profile"] = entry.pop("load_kind")
    (out / "manifest.json").write_text(json.dumps(manifest))
    old = Dataset.load(out)
    assert [c.meta for c in old] == [c.meta for c in Dataset.load(toy_dataset)]
    assert {c.meta.load_kind for c in old} == {"toy-drive"}
    saved = json.loads((old.save(tmp_path / "new") / "manifest.json").read_text())
    assert saved["format_version"] == 2
    assert all(e["load_kind"] == "toy-drive" and "profile" not in e for e in saved["cycles"])


def test_save_refuses_to_overwrite_without_force(toy_dataset, tmp_path):
    data = Dataset.load(toy_dataset)
    out = data.save(tmp_path / "copy")
    with pytest.raises(OverwriteRefusedError, match="--force"):
        data.save(out)
    data.save(out, force=True)
    pd.testing.assert_frame_equal(Dataset.load(out).cycles[0].frame, data.cycles[0].frame)


def test_load_missing_dataset_names_the_remedy(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="bsoc data simulate"):
        Dataset.load(tmp_path / "nothing")


def test_load_revalidates_edited_cycle(toy_dataset, tmp_path):
    out = Dataset.load(toy_dataset).save(tmp_path / "edited")
    entry = json.loads((out / "manifest.json").read_text())["cycles"][0]
    frame = pd.read_parquet(out / entry["file"])
    frame.loc[5, "voltage_v"] = float("nan")
    frame.to_parquet(out / entry["file"], index=False)
    with pytest.raises(DataValidationError) as caught:
        Dataset.load(out)
    assert caught.value.row == 5 and caught.value.column == "voltage_v"
    assert entry["file"] in str(caught.value)


def test_cycles_whose_names_make_the_same_file_name_keep_their_own_files(toy_dataset, tmp_path):
    from dataclasses import replace

    data = Dataset.load(toy_dataset)
    first, second, third = data.cycles[:3]
    clashing = [type(first)(first.frame, replace(first.meta, name="drive a")),
                type(second)(second.frame, replace(second.meta, name="drive_a")),
                type(third)(third.frame, replace(third.meta, name="Drive_A"))]
    out = Dataset(name="clash", cycles=clashing, provenance={}).save(tmp_path / "clash")
    files = [entry["file"] for entry in Dataset.manifest(out)["cycles"]]
    assert files == ["cycles/drive_a.parquet", "cycles/drive_a-2.parquet",
                     "cycles/Drive_A-3.parquet"]
    for saved, original in zip(Dataset.load(out), clashing, strict=True):
        assert saved.meta.name == original.meta.name
        pd.testing.assert_frame_equal(saved.frame, original.frame, check_exact=True)
