"""`fastwsss segment` against hostile globs and output folders: nothing is written outside --out, and no
file the command did not write in this run is replaced unless --overwrite is given (docs/security.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_hostile_input import cli, one_error_line
from test_segment_command import NAMES, picture

from fastwsss.config import get_preset
from fastwsss.engine.rundir import RunDir
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.models.deeplab import build_seg_model, save_seg_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run directory with an untrained tiny DeepLab and classifier (what they predict does not matter here)."""
    run = tmp_path_factory.mktemp("hostile-segment") / "run"
    torch.manual_seed(0)
    RunDir(run).save_config(get_preset("tiny"))
    save_seg_checkpoint(run / "seg" / "ckpt.pt", build_seg_model("deeplabv2", "resnet18_quarter", 10).eval(),
                        {"class_names": NAMES})
    save_checkpoint(run / "cls" / "ckpt.pt", CAMNet("resnet18_quarter", 9), {"class_names": NAMES})
    return {"run": run}


def jpeg(path: Path, height: int = 40, width: int = 52, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(height, width, seed)).save(path)
    return path


def test_glob_with_dotdot_writes_only_under_out(setup: dict[str, Path], tmp_path: Path) -> None:
    deep = tmp_path / "deep"
    jpeg(deep / "imgs" / "a" / "x.jpg")
    jpeg(deep / "victim" / "secret.jpg", seed=1)
    secret = deep / "victim" / "secret.png"
    secret.write_bytes(b"the user's own file")
    out = deep / "out"
    code, output = cli("segment", f"{deep}/imgs/*/../../victim/*.jpg", "--model", setup["run"], "--out", out)
    assert code == 0, output
    assert secret.read_bytes() == b"the user's own file"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["secret.png"]


def test_existing_files_in_out_are_kept_unless_overwrite(setup: dict[str, Path], tmp_path: Path) -> None:
    inputs = tmp_path / "photos"
    jpeg(inputs / "holiday.jpg")
    jpeg(inputs / "beach.jpg", seed=2)
    out = tmp_path / "masks"
    out.mkdir()
    holiday = out / "holiday.png"
    holiday.write_bytes(b"a picture the user made")
    code, output = cli("segment", inputs, "--model", setup["run"], "--out", out)
    assert code == 1, output
    skipped = [line for line in output.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and str(holiday) in skipped[0] and "--overwrite" in skipped[0], output
    assert holiday.read_bytes() == b"a picture the user made"
    assert (out / "beach.png").is_file()  # the other input was still processed
    code, output = cli("segment", inputs, "--model", setup["run"], "--out", out, "--overwrite")
    assert code == 0, output
    with Image.open(holiday) as mask:
        assert mask.mode == "P" and mask.size == (52, 40)


def test_out_as_the_run_directory_keeps_its_pseudo_masks(setup: dict[str, Path], tmp_path: Path) -> None:
    run = setup["run"]
    own = run / "pseudo" / "x.png"
    own.parent.mkdir(exist_ok=True)
    own.write_bytes(b"pseudo mask of the run")
    jpeg(tmp_path / "imgs" / "pseudo" / "x.jpg")
    try:
        code, output = cli("segment", f"{tmp_path}/imgs/*/*.jpg", "--model", run, "--out", run)
        assert code == 1 and str(own) in output, output
        assert own.read_bytes() == b"pseudo mask of the run"
    finally:
        own.unlink()


def test_link_in_out_pointing_elsewhere_is_refused(setup: dict[str, Path], tmp_path: Path) -> None:
    jpeg(tmp_path / "imgs" / "sub" / "y.jpg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    code, output = cli("segment", f"{tmp_path}/imgs/*/*.jpg", "--model", setup["run"], "--out", out)
    line = one_error_line(output)
    assert code == 2 and "outside" in line, output
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("width", [1, 2])
def test_one_pixel_wide_image_with_cam_fails_alone(setup: dict[str, Path], tmp_path: Path, width: int) -> None:
    inputs = tmp_path / "imgs"
    inputs.mkdir()
    Image.fromarray(np.full((64, width, 3), 128, np.uint8)).save(inputs / "a_thin.png")
    jpeg(inputs / "b_normal.jpg")
    out = tmp_path / "out"
    code, output = cli("segment", inputs, "--model", setup["run"], "--out", out, "--cam")
    assert "Traceback" not in output, output
    assert (out / "b_normal.png").is_file() and (out / "b_normal_cam.png").is_file(), output
    thin = [line for line in output.splitlines() if "a_thin.png" in line]
    assert code in (0, 1) and len(thin) <= 1, output


def test_fifos_and_link_loops_are_named_not_read(setup: dict[str, Path], tmp_path: Path) -> None:
    inputs = tmp_path / "imgs"
    jpeg(inputs / "good.jpg")
    os.mkfifo(inputs / "pipe.jpg")  # opening it would block forever
    (inputs / "loop_a.png").symlink_to(inputs / "loop_b.png")
    (inputs / "loop_b.png").symlink_to(inputs / "loop_a.png")
    out = tmp_path / "out"
    code, output = cli("segment", inputs, "--model", setup["run"], "--out", out)
    assert code == 0 and (out / "good.png").is_file(), output
    for name, kind in (("pipe.jpg", "FIFO"), ("loop_a.png", "loop"), ("loop_b.png", "loop")):
        named = [line for line in output.splitlines() if name in line]
        assert len(named) == 1 and kind in named[0], output
    code, output = cli("segment", inputs / "pipe.jpg", "--model", setup["run"], "--out", out)
    assert code == 2 and "FIFO" in one_error_line(output)
