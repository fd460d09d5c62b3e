"""`fastwsss diagnose`: boundary probabilities and the walk with the IRN's, the ground truth's or no boundary map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from small_runs import fast_config
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.engine.pipeline import run_pipeline
from fastwsss.reporting.walk_diagnosis import label_borders, to_grid

runner = CliRunner()


def test_label_borders_mark_changes_and_skip_the_ignore_label():
    labels = np.array([[0, 0, 1], [0, 255, 1], [2, 2, 2]], np.uint8)
    expected = np.array([[0, 1, 0], [1, 0, 1], [0, 0, 0]], bool)
    np.testing.assert_array_equal(label_borders(labels).numpy(), expected)
    with_ignore = label_borders(labels, None).numpy()
    assert with_ignore[0, 1] and with_ignore[1, 1] and with_ignore[1, 0] and not with_ignore[2, 2]


def test_to_grid_sets_a_cell_when_any_of_its_pixels_is_set_and_crops_to_the_image():
    mask = torch.zeros(9, 6, dtype=torch.bool)
    mask[5, 4] = True
    grid = to_grid(mask, (3, 2))
    assert grid.shape == (3, 2) and grid.sum() == 1 and grid[1, 1]
    assert not to_grid(torch.zeros(9, 6, dtype=torch.bool), (3, 2)).any()


@pytest.mark.slow
def test_diagnose_a_real_run(tmp_path):
    run = run_pipeline(fast_config("cam", num_train=24), tmp_path / "run", stages="cls,cam,ir_label,irn").path
    out = tmp_path / "walk.json"
    result = runner.invoke(app, ["diagnose", str(run), "--images", "6", "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["images"] == 6 and saved["pseudo"]["exp_times"] == {"full": 4, "quarter": 2}
    probabilities = saved["boundary_probability"]
    assert all(0.0 < probabilities[k] < 1.0 for k in ("in_ir_label_unsure_band", "on_ground_truth_borders", "elsewhere"))
    assert probabilities["on_ir_label_borders"] is None or 0.0 < probabilities["on_ir_label_borders"] < 1.0
    mious = saved["pseudo_miou"]
    assert set(mious) == {"irn edge, full walk", "irn edge, quarter walk", "ground-truth edge, full walk",
                          "ground-truth edge, quarter walk", "no walk"}
    assert all(0.0 <= v <= 1.0 for v in mious.values())
    assert mious["irn edge, full walk"] != mious["ground-truth edge, full walk"]  # the two maps really differ
    assert "ground-truth edge" in result.output
    refused = runner.invoke(app, ["diagnose", str(run), "--images", "0"])
    assert refused.exit_code == 2 and "--images" in refused.output
