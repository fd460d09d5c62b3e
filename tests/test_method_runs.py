"""C2AM and CONTA end to end on a very small synthetic set: stage plan, run layout, per-round metrics."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from small_runs import fast_config
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.data.base import read_label_png
from fastwsss.data.palette import save_mask_png
from fastwsss.engine.pipeline import run_pipeline
from fastwsss.engine.rundir import open_run_dir
from fastwsss.methods.conta import ConfounderAttention, MaskTable
from fastwsss.models.cam_net import load_cam_net
from fastwsss.stages import plan
from fastwsss.stages.confounder import load_confounders, run_confounder
from fastwsss.stages.context import StageContext


def small(method: str, rounds: int = 1):
    return fast_config(method, rounds=rounds)


def test_plans() -> None:
    names = [(p.stage.name, p.round) for p in plan("conta", 2)]
    baseline = ["cls", "cam", "ir_label", "irn", "pseudo", "seg", "eval"]
    assert names == [(n, 0) for n in baseline] + [(n, t) for t in (1, 2) for n in ["confounder", *baseline]]
    assert [p.stage.name for p in plan("c2am", 3)][:4] == ["cls", "global_cam", "c2am", "cam"]
    assert all(p.round is None for p in plan("c2am", 3))
    assert [(p.stage.name, p.round) for p in plan("conta", 1, "cls,confounder")] == [("cls", 0), ("confounder", 1), ("cls", 1)]


@pytest.mark.slow
def test_c2am_end_to_end(tmp_path) -> None:
    run = run_pipeline(small("c2am"), tmp_path / "c2am")
    g = np.load(run.path / "global_cam" / "global_cam.npy")
    assert g.shape == (10, 16, 16) and g.min() >= 0 and g.max() <= 1
    assert (run.path / "global_cam" / "global_cam.png").is_file()
    base, _ = load_cam_net(run.path / "cls" / "ckpt.pt")
    tuned, meta = load_cam_net(run.path / "c2am" / "ckpt.pt")
    torch.testing.assert_close(meta["logit_constants"], torch.from_numpy(g).mean(dim=(1, 2)))
    assert not torch.equal(base.head.weight, tuned.head.weight)
    rows = run.metrics()
    assert {r["stage"] for r in rows} >= {"cls", "c2am", "cam", "pseudo", "seg"}
    assert any(r["stage"] == "seg" and r["split"] == "debiased" for r in rows)
    cam_row = [r for r in rows if r["stage"] == "cam"][-1]
    assert 0.0 <= cam_row["context_leakage"] <= 1.0


@pytest.mark.slow
def test_conta_end_to_end_and_m_follows_the_previous_round(tmp_path) -> None:
    run = run_pipeline(small("conta", rounds=1), tmp_path / "conta")
    r0, r1 = run.path / "rounds" / "0", run.path / "rounds" / "1"
    assert (r0 / "seg" / "DONE").is_file() and (r1 / "seg" / "DONE").is_file() and not (run.path / "cls").exists()
    assert not (r0 / "confounder").exists()
    confounders, table = load_confounders(r1)
    assert confounders.shape == (10, 64) and len(table.ids) == 40
    net, _ = load_cam_net(r1 / "cls" / "ckpt.pt")
    assert net.extra_channels == 1 and (r1 / "cls" / "attention.pt").is_file()
    rows = run.metrics()
    for t in (0, 1):
        assert {r["stage"] for r in rows if r.get("round") == t} >= {"cls", "cam", "pseudo", "seg"}
    scored = CliRunner().invoke(app, ["eval", str(run.path)])
    assert scored.exit_code == 0, scored.output
    rescored = open_run_dir(run.path).metrics()[len(rows):]
    assert {(r["stage"], r["round"]) for r in rescored} >= {("cam", 0), ("cam", 1), ("seg", 0), ("seg", 1)}

    # Change round 0's predictions: round 1's X_m and C, and so M_1, must change with them.
    config = open_run_dir(run.path).load_config()
    copy = tmp_path / "changed"
    shutil.copytree(run.path, copy)
    preds = sorted((copy / "rounds" / "0" / "seg" / "pred").glob("*.png"))
    for path in preds[:10]:
        mask = read_label_png(path, 10)
        mask[: mask.shape[0] // 2] = 1
        save_mask_png(mask, path)
    changed = open_run_dir(copy)
    run_confounder(StageContext(config=config, run=changed.view("rounds/1", round=1), device=torch.device("cpu"), round=1))
    new_c, new_table = load_confounders(copy / "rounds" / "1")
    assert not torch.allclose(new_c, confounders)
    assert not np.allclose(new_table.batch(table.ids[:10]).numpy(), table.batch(table.ids[:10]).numpy())
    untouched = [i for i in table.ids if f"{i}.png" not in {p.name for p in preds[:10]}]
    np.testing.assert_allclose(new_table.batch(untouched).numpy(), table.batch(untouched).numpy())
    assert isinstance(MaskTable.load(copy / "rounds" / "1" / "confounder" / "xm.npz"), MaskTable)

    # The changed copy has a non-zero M (this run's own round 0 may predict background only): with the
    # attention restarted on its confounders, check bench.methods' diagnosis of M at block 5.
    torch.save(ConfounderAttention(new_c, seed=0).state_dict(), copy / "rounds" / "1" / "cls" / "attention.pt")
    check_placement_diagnostics(copy)


def check_placement_diagnostics(path) -> None:
    """bench.methods' check of CONTA's M at block 5 (the default): M reaches the logits only through its spatial
    mean (global average pooling; the 8x8 M is resized to the 4x4 feature grid by an exact 2x average), yet
    it moves them, and W1, W2 get a gradient."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is a folder of the repository
    from bench.methods_score import placement_diagnostics

    found = placement_diagnostics(path, 1, images=8)
    assert found is not None and found["images"] == 8
    assert found["logit_change_mean_m"] < 1e-4, found
    assert found["logit_change_zero_m"] > 0, found
    assert 0 < found["w_relative_gradient"] < float("inf") and found["head_relative_gradient"] > 0, found
    assert placement_diagnostics(path, 0) is None  # round 0 has no M
