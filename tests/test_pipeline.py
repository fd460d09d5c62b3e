"""End-to-end runs of the tiny preset: the CLI, resume after an interruption, and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fastwsss.algorithms.cam_inference import load_cam_npz
from fastwsss.cli import app
from fastwsss.config import SynthConfig, get_preset
from fastwsss.data.synthetic import ensure_synthetic
from fastwsss.engine.pipeline import run_pipeline

runner = CliRunner()


def small_config(**cls_changes):
    """The tiny preset on an even smaller set, for runs repeated inside one test."""
    config = get_preset("tiny")
    synth = SynthConfig(size=64, num_train=48, num_val=8, num_debiased=8, seed=1)
    cls = dataclasses.replace(config.cls, **{"epochs": 2, "batch_size": 16, **cls_changes})
    return dataclasses.replace(config, data=dataclasses.replace(config.data, synth=synth), cls=cls,
                               cam=dataclasses.replace(config.cam, scales=(1.0, 0.5)))


class Interrupt:
    """A step hook that raises KeyboardInterrupt at the n-th step of one stage (like Ctrl-C)."""

    def __init__(self, stage: str, at: int) -> None:
        self.stage, self.at = stage, at

    def __call__(self, stage: str, count: int) -> None:
        if stage == self.stage and count == self.at:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_cli_tiny_preset_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "tiny" and config["method"] == "cam"
    assert (out / "cls" / "ckpt.pt").is_file()
    train_ids = (ensure_synthetic(get_preset("tiny").data.synth) / "ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(p.stem for p in (out / "cams").glob("*.npz")) == sorted(train_ids)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cam_rows = [r for r in rows if r["stage"] == "cam"]
    assert cam_rows and math.isfinite(cam_rows[-1]["miou"]) and 0.0 <= cam_rows[-1]["miou"] <= 1.0
    assert len(cam_rows[-1]["per_class_iou"]) == 1 + len(cam_rows[-1]["class_names"]) - 1
    assert {"stage", "split", "method", "miou", "per_class_iou"} <= set(cam_rows[-1])

    again = runner.invoke(app, ["train", "--preset", "tiny", "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in again.output

    scored = runner.invoke(app, ["eval", str(out), "-v"])
    assert scored.exit_code == 0, scored.output
    assert "background" in scored.output


def test_cls_interrupted_and_resumed_trains_the_same_weights(tmp_path):
    config = small_config()
    run_pipeline(config, tmp_path / "straight", stages="cls")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "cut", stages="cls", on_step=Interrupt("cls", 4))  # inside epoch 2
    assert (tmp_path / "cut" / "cls" / "last.pt").is_file() and not (tmp_path / "cut" / "cls" / "ckpt.pt").exists()
    run_pipeline(config, tmp_path / "cut", stages="cls", resume=True)
    a = torch.load(tmp_path / "straight" / "cls" / "ckpt.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "cls" / "ckpt.pt", weights_only=False)
    state_a, state_b = a["state_dict"], b["state_dict"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=1e-6, msg=key)


def test_cam_interrupted_and_resumed_never_redoes_finished_images(tmp_path):
    config = small_config(epochs=1)
    run_pipeline(config, tmp_path / "straight", stages="cls,cam")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, tmp_path / "cut", stages="cls,cam", on_step=Interrupt("cam", 10))
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut" / "cams").glob("*.npz")}
    assert len(done) == 10
    assert not list((tmp_path / "cut" / "cams").glob(".*tmp*"))
    run_pipeline(config, tmp_path / "cut", stages="cls,cam", resume=True)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut" / "cams").glob("*.npz")}
    assert len(after) == 48
    assert all(after[name] == mtime for name, mtime in done.items())
    for name in after:
        a = load_cam_npz(tmp_path / "straight" / "cams" / name)
        b = load_cam_npz(tmp_path / "cut" / "cams" / name)
        np.testing.assert_array_equal(a.keys, b.keys)
        np.testing.assert_allclose(a.high_res, b.high_res, atol=1e-3)


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), result.output
    assert "Traceback" not in result.output
    return lines[-1]


def test_missing_image_in_list_is_one_line_naming_the_file(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ensure_synthetic(small_config().data.synth), data)
    victim = data / "JPEGImages" / "train_00003.jpg"
    victim.unlink()
    result = runner.invoke(app, ["train", "--preset", "tiny", "--root", str(data), "--out", str(tmp_path / "r")])
    assert "train_00003.jpg" in _one_line_error(result)


def test_class_count_mismatch_between_data_and_checkpoint(tmp_path):
    config = small_config(epochs=1)
    run = run_pipeline(config, tmp_path / "r", stages="cls")
    ckpt = run.path / "cls" / "ckpt.pt"
    state = torch.load(ckpt, weights_only=False)
    from fastwsss.models.cam_net import CAMNet, save_checkpoint

    other = CAMNet(config.cls.backbone, 3, freeze_bn=False, detach_early=False)
    save_checkpoint(ckpt, other, state["meta"])
    result = runner.invoke(app, ["train", "--out", str(run.path), "--resume", "--stages", "cam"])
    line = _one_line_error(result)
    assert "ckpt.pt" in line and "3" in line


def test_unknown_preset_and_method_are_one_line(tmp_path):
    line = _one_line_error(runner.invoke(app, ["train", "--preset", "huge", "--out", str(tmp_path / "a")]))
    assert "huge" in line and "tiny" in line
    line = _one_line_error(runner.invoke(app, ["train", "--method", "seam", "--out", str(tmp_path / "b")]))
    assert "seam" in line and "cam" in line


def test_module_help_runs():
    done = subprocess.run([sys.executable, "-m", "fastwsss", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--preset" in done.stdout


def test_version_is_the_package_version():
    from fastwsss import __version__

    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0 and done.output.strip() == f"fastwsss {__version__}"


def test_pseudo_interrupted_and_resumed_equals_an_uninterrupted_run(tmp_path):
    from PIL import Image

    config = small_config(epochs=1)
    config = dataclasses.replace(config, irn=dataclasses.replace(config.irn, epochs=1))
    straight = run_pipeline(config, tmp_path / "straight", stages="cls,cam,ir_label,irn,pseudo")
    cut = tmp_path / "cut"
    shutil.copytree(straight.path, cut, ignore=shutil.ignore_patterns("pseudo", ".lock"))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, cut, stages="pseudo", resume=True, on_step=Interrupt("pseudo", 7))
    done = {p.name: p.stat().st_mtime_ns for p in (cut / "pseudo").glob("*.png")}
    assert len(done) == 7 and not (cut / "pseudo" / "DONE").exists()
    run_pipeline(config, cut, stages="pseudo", resume=True)
    after = sorted((cut / "pseudo").glob("*.png"))
    assert len(after) == 48
    assert all(p.stat().st_mtime_ns == done[p.name] for p in after if p.name in done)
    for path in after:
        a = np.asarray(Image.open(straight.path / "pseudo" / path.name))
        b = np.asarray(Image.open(path))
        np.testing.assert_array_equal(a, b, err_msg=path.name)
