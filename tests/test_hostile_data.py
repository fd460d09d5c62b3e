"""Hostile or careless data through the real commands: `data coco-masks` beside a user's file, malformed
COCO JSON, a relative --root used from another folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_coco import needs_pycocotools, write_instances
from test_hostile_input import cli, one_error_line

from fastwsss.config import SynthConfig
from fastwsss.data.synthetic import generate_synthetic


@needs_pycocotools
def test_coco_masks_keeps_a_users_file_beside_the_output(tmp_path: Path) -> None:
    instances = write_instances(tmp_path / "instances.json")
    out = tmp_path / "masks"
    mine = tmp_path / "masks.txt"
    mine.write_text("my shopping list\n")
    code, output = cli("data", "coco-masks", instances, "--out", out)
    assert code == 2 and str(mine) in one_error_line(output), output
    assert mine.read_text() == "my shopping list\n"
    mine.unlink()
    code, output = cli("data", "coco-masks", instances, "--out", out)
    assert code == 0 and mine.is_file(), output
    code, output = cli("data", "coco-masks", instances, "--out", out)  # its own list from before is replaced
    assert code == 0, output


@needs_pycocotools
@pytest.mark.parametrize(
    "edit",
    [
        lambda d: [1, 2, 3],
        lambda d: {**d, "images": [{"id": 9}]},
        lambda d: {**d, "images": [{"id": 9, "file_name": "../..", "height": 4, "width": 4}]},
        lambda d: {**d, "images": [{"id": 9, "file_name": ["x"], "height": 4, "width": 4}]},
        lambda d: {**d, "annotations": [{**d["annotations"][0], "segmentation": "abc"}]},
        lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": [1]}]},
        lambda d: {**d, "categories": "none"},
        lambda d: "[" * 100_000 + "]" * 100_000,
    ],
)
def test_malformed_coco_json_is_one_line(edit, tmp_path: Path) -> None:  # noqa: ANN001
    instances = write_instances(tmp_path / "instances.json")
    changed = edit(json.loads(instances.read_text()))
    instances.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    code, output = cli("data", "coco-masks", instances, "--out", tmp_path / "masks")
    assert code == 2 and str(instances) in one_error_line(output), output


def test_relative_root_is_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    generate_synthetic(tmp_path / "data", SynthConfig(size=32, num_train=8, num_val=2, num_debiased=0, seed=1),
                       progress=False)
    code, output = cli("train", "--preset", "tiny", "--data", "synthetic", "--root", "data", "--stages", "cls",
                       "--set", "cls.epochs=1", "--set", "cls.batch_size=4", "--out", "run")
    assert code == 0, output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["root"] == str(tmp_path / "data")
    code, output = cli("train", "--resume", "--root", "data", "--stages", "cls", "--out", "run")
    assert code == 0 and "already finished" in output, output
