"""`fastwsss segment` (fastwsss/commands/segment.py): bad files fail alone with one line each, convertible
ones are converted, nothing is ever written into an input folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastwsss.commands.segment import MAX_PIXELS, collect_inputs, plan_outputs, segment_command
from fastwsss.config import get_preset
from fastwsss.engine.rundir import RunDir
from fastwsss.errors import ConfigError, DataError
from fastwsss.export.onnx import build_metadata, export_seg_onnx
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.models.deeplab import build_seg_model, save_seg_checkpoint

NAMES = [f"thing{i}" for i in range(1, 10)]
GOOD = ["rgb.jpg", "cmyk.jpg", "gray.png", "rgba.png", "deep16.png", "rotated.jpg", "sub/nested.png"]
BAD = ["corrupt.png", "truncated.jpg", "truncated.png", "text.jpg", "huge.png"]


def picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, np.full_like(xx, 90)], axis=-1)
    return np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_inputs(folder: Path) -> None:
    """One file per input case: good ones of every convertible kind, and truly bad ones."""
    folder.mkdir(parents=True)
    (folder / "sub").mkdir()
    rgb = Image.fromarray(picture(48, 64))
    rgb.save(folder / "rgb.jpg")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    Image.fromarray(picture(40, 56)[..., 0].astype(np.uint16) * 257).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 64 wide x 48 high, shown rotated: 48 wide x 64 high
    rgb.save(folder / "rotated.jpg", exif=exif)
    Image.fromarray(picture(33, 45, seed=1)).save(folder / "sub" / "nested.png")
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (folder / "truncated.jpg").write_bytes(encoded(rgb, "JPEG")[:600])
    png = encoded(rgb, "PNG")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "text.jpg").write_text("this is not a picture\n")
    side = int(MAX_PIXELS**0.5) + 100  # just above the limit; mode "1" keeps the file small
    Image.new("1", (side, side)).save(folder / "huge.png")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run directory with a tiny DeepLab and classifier, an ONNX export of it, and the input folder."""
    root = tmp_path_factory.mktemp("segment")
    torch.manual_seed(0)
    model = build_seg_model("deeplabv2", "resnet18_quarter", 10).eval()
    run = root / "run"
    config = get_preset("tiny")
    RunDir(run).save_config(config)
    save_seg_checkpoint(run / "seg" / "ckpt.pt", model, {"class_names": NAMES})
    save_checkpoint(run / "cls" / "ckpt.pt", CAMNet("resnet18_quarter", 9), {"class_names": NAMES})
    onnx = export_seg_onnx(model, root / "model.onnx", metadata=build_metadata(NAMES), example_hw=(64, 64))
    write_inputs(root / "inputs")
    return {"root": root, "run": run, "onnx": onnx, "inputs": root / "inputs"}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_bad_files_fail_alone(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(setup["inputs"])
    out = tmp_path / "masks"
    # a fixed budget far above huge.png's need: the pixel limit, not this machine's free memory, refuses it
    code = segment_command([str(setup["inputs"])], setup["run"], out, "auto", 3, True, True, False, verbose=True,
                           memory_budget=2**40)
    err = capsys.readouterr().err
    assert code == 1
    for name in GOOD:
        mask_path = out / Path(name).with_suffix(".png")
        assert mask_path.is_file(), name
        assert (out / (str(Path(name).with_suffix("")) + "_overlay.jpg")).is_file()
        with Image.open(mask_path) as mask:
            assert mask.mode == "P"
    for name in BAD:
        hits = [line for line in lines(err) if "failed:" in line and name in line]
        assert len(hits) == 1, (name, err)
        assert not (out / Path(name).with_suffix(".png")).exists()
    assert "MP limit" in err and "5 failed" in err
    with Image.open(out / "rotated.png") as mask:
        assert mask.size == (48, 64)  # EXIF orientation applied: the mask follows the displayed image
    with Image.open(out / "deep16.png") as mask:
        assert mask.size == (56, 40)
    for note in ("CMYK converted", "alpha channel dropped", "grayscale replicated", "scaled to 8 bits", "EXIF"):
        assert sum(note in line for line in lines(err)) == 1, note
    assert "images/s" in err and "p90" in err
    assert snapshot(setup["inputs"]) == before


def test_all_good_exit_zero_onnx_and_cam_refused(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(setup["inputs"] / name) for name in ("rgb.jpg", "sub/nested.png")]
    code = segment_command(files, setup["onnx"], tmp_path / "out", "onnxruntime", 8, False, False, True)
    err = capsys.readouterr().err
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["nested.png", "rgb.png"]
    assert sum("--cam" in line for line in lines(err)) == 1 and "run directory" in err
    assert "CPUExecutionProvider" in err


def test_cam_heat_maps_from_the_run_classifier(setup: dict[str, Path], tmp_path: Path) -> None:
    code = segment_command([str(setup["inputs"] / "rgb.jpg")], setup["run"], tmp_path / "out", "torch", 1,
                           False, False, True)  # fmt: skip
    assert code == 0
    with Image.open(tmp_path / "out" / "rgb_cam.png") as strip:
        assert strip.mode == "RGB" and strip.size[1] == 48


def test_globs_and_name_clashes(setup: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "clash"
    shutil.copytree(setup["inputs"], folder, ignore=shutil.ignore_patterns("huge.png", "corrupt.png", "trunc*"))
    Image.fromarray(picture(20, 30)).save(folder / "rgb.png")  # same stem as rgb.jpg
    items, folders = collect_inputs([str(folder / "**" / "*.png"), str(folder / "rgb.jpg")], recursive=False)
    assert folders == []
    plan_outputs(items, tmp_path / "out", overlay=False, cam=False)
    names = {item.path.name: item.outputs["mask"].relative_to(tmp_path / "out").as_posix() for item in items}
    assert names["rgb.png"] == "rgb_png.png" and names["rgb.jpg"] == "rgb_jpg.png"
    assert names["nested.png"] == "sub/nested.png"
    assert len(set(names.values())) == len(names)
    with pytest.raises(DataError, match="matches no file"):
        collect_inputs([str(folder / "*.webp")], recursive=False)
    with pytest.raises(DataError, match="no such file"):
        collect_inputs([str(folder / "missing.jpg")], recursive=False)


def test_out_inside_an_input_is_refused(setup: dict[str, Path]) -> None:
    inputs = setup["inputs"]
    before = snapshot(inputs)
    for out in (inputs, inputs / "masks", inputs / "sub"):
        with pytest.raises(ConfigError, match="--out"):
            segment_command([str(inputs)], setup["run"], out, "auto", 2, False, False, False)
    with pytest.raises(ConfigError, match="holds input images"):
        segment_command([str(inputs / "rgb.jpg")], setup["run"], inputs, "auto", 2, False, False, False)
    with pytest.raises(ConfigError, match="--batch-size"):
        segment_command([str(inputs)], setup["run"], setup["root"] / "x", "auto", 0, False, False, False)
    assert snapshot(inputs) == before
    assert not (inputs / "masks").exists()


@pytest.mark.slow
def test_two_processes_split_the_images_and_report_once(setup: dict[str, Path], tmp_path: Path) -> None:
    """`--nproc 2` (torchrun, gloo on the CPU): the same masks as one process, one summary for all images."""
    single = tmp_path / "single"
    assert segment_command([str(setup["inputs"])], setup["run"], single, "torch", 2, True, False, False) == 1
    double = tmp_path / "double"
    command = [sys.executable, "-m", "fastwsss", "segment", str(setup["inputs"]), "--model", str(setup["run"]),
               "--out", str(double), "--backend", "torch", "--batch-size", "2", "--recursive", "--nproc", "2"]  # fmt: skip
    env = {**os.environ, "FASTWSSS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stderr[-3000:]  # the bad files fail, as with one process
    assert snapshot(double) == snapshot(single)
    summaries = [line for line in lines(result.stderr) if "images segmented into" in line]
    assert len(summaries) == 1 and summaries[0].startswith(f"{len(GOOD)} of {len(GOOD) + len(BAD)} images")
    assert sum("failed:" in line for line in lines(result.stderr)) == len(BAD)
