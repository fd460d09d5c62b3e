"""The real-data path of `fastwsss train --data voc` for all three methods, on a temporary copy of voc-mini.

The copy gets what the released code reads besides the official tree: `train_aug.txt`,
`SegmentationClassAug/` and `val.txt`; its images are shrunk to a 64-pixel long side so that every stage of
the `voc` preset runs on the CPU with ResNet-50 and ResNet-101 state dicts written here in torchvision's
key format (random values: the test checks which file each stage loaded, not accuracy). Epochs and
iterations are cut through --set; every definition of the preset stays as released.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet50, resnet101
from typer.testing import CliRunner

from fastwsss.algorithms.crf import crf_available
from fastwsss.cli import app

runner = CliRunner()
LONG_SIDE = 64
FAST = [
    "cls.epochs=1", "cls.batch_size=4", "cls.resize_long=48,64", "cls.crop=48", "cam.scales=1.0",
    "irn.epochs=1", "irn.batch_size=4", "irn.crop=48", "irn.infer_pad=64",
    "seg.iterations=2", "seg.batch_size=2", "seg.crop=48", "data.num_workers=0",
    "c2am.epochs=1", "c2am.batch_size=4", "c2am.global_size=16", "conta.rounds=1", "conta.mask_size=16",
    f"ir_label.crf={str(crf_available()).lower()}", f"seg.crf={str(crf_available()).lower()}",
]


def _shrink(path: Path, resample: Image.Resampling) -> None:
    image = Image.open(path)
    scale = LONG_SIDE / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image.resize(size, resample).save(path)


@pytest.fixture(scope="module")
def voc_copy(voc_mini: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(VOC2012 folder of the copy, its cls_labels.npy)."""
    base = tmp_path_factory.mktemp("voc-copy")
    root = base / "VOCdevkit" / "VOC2012"
    shutil.copytree(voc_mini, root)
    labels = voc_mini.parents[1] / "cls_labels.npy"
    shutil.copy(labels, base / "cls_labels.npy")
    for jpeg in (root / "JPEGImages").glob("*.jpg"):
        _shrink(jpeg, Image.Resampling.BICUBIC)
    aug = root / "SegmentationClassAug"
    aug.mkdir()
    for mask in (root / "SegmentationClass").glob("*.png"):
        _shrink(mask, Image.Resampling.NEAREST)
        Image.fromarray(np.asarray(Image.open(mask))).save(aug / mask.name)  # mode L class indices
    lists = root / "ImageSets" / "Segmentation"
    ids = (lists / "train.txt").read_text().split()
    (lists / "train_aug.txt").write_text("\n".join(ids) + "\n")
    (lists / "val.txt").write_text("\n".join(ids[:2]) + "\n")
    return root, base / "cls_labels.npy"


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """ResNet-50 and ResNet-101 state dicts in torchvision's key format (fc included, as released).

    zero_init_residual makes each block start as the identity, so that a random 101-layer net with frozen
    BatchNorm stays finite (real ImageNet weights are finite by training).
    """
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    paths = (folder / "resnet50.pth", folder / "resnet101.pth")
    for build, path in zip((resnet50, resnet101), paths, strict=True):
        torch.save(build(weights=None, zero_init_residual=True).state_dict(), path)
    return paths


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _done(stage_dir: Path) -> dict:
    return json.loads((stage_dir / "DONE").read_text())


def _args(voc_copy: tuple[Path, Path], method: str, out: Path, weights: tuple[Path, Path] | None) -> list[str]:
    root, labels = voc_copy
    args = ["train", "--data", "voc", "--root", str(root), "--cls-labels", str(labels), "--method", method,
            "--out", str(out), "--device", "cpu"]
    if weights is not None:
        args += ["--weights", str(weights[0]), "--seg-weights", str(weights[1])]
    for item in FAST:
        args += ["--set", item]
    return args


@pytest.mark.parametrize("method", ["cam", "c2am", "conta"])
def test_voc_preset_runs_every_stage_on_the_given_weights(method: str, voc_copy, imagenet_files, tmp_path: Path) -> None:
    out = tmp_path / method
    result = runner.invoke(app, _args(voc_copy, method, out, imagenet_files))
    assert result.exit_code == 0, result.output
    r50, r101 = imagenet_files
    record50 = {"path": str(r50.resolve()), "sha256": _sha256(r50)}
    record101 = {"path": str(r101.resolve()), "sha256": _sha256(r101)}
    file50 = torch.load(r50, weights_only=True)
    file101 = torch.load(r101, weights_only=True)
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["train_split"] == config["data"]["cam_split"] == "train_aug"

    rounds = [out / "rounds" / str(t) for t in (0, 1)] if method == "conta" else [out]
    for run in rounds:
        assert _done(run / "cls")["weights"] == record50
        assert _done(run / "irn")["weights"] == record50
        assert _done(run / "seg")["weights"] == record101
        cls_state = torch.load(run / "cls" / "ckpt.pt", weights_only=False)["state_dict"]
        # Frozen by the released definition, so still exactly the file's tensors: conv1, and FixedBatchNorm statistics.
        assert torch.equal(cls_state["backbone.stage1.conv1.weight"], file50["conv1.weight"])
        assert torch.equal(cls_state["backbone.stage4.0.bn1.running_mean"], file50["layer4.0.bn1.running_mean"])
        irn = torch.load(run / "irn" / "ckpt.pt", weights_only=False)
        assert torch.equal(irn["backbone"]["stage3.5.conv3.weight"], file50["layer3.5.conv3.weight"])
        assert irn["kwargs"]["infer_pad"] == 64 and irn["kwargs"]["relu_after_upsample"] is True
        seg = torch.load(run / "seg" / "ckpt.pt", weights_only=False)["state_dict"]
        assert torch.equal(seg["backbone.stage3.22.bn3.running_var"], file101["layer3.22.bn3.running_var"])
        assert _done(run / "seg")["train_images"] == 4 and _done(run / "seg")["steps"] == 2
        assert len(list((run / "cams").glob("*.npz"))) == 4
    if method == "c2am":
        assert _done(out / "c2am")["output_stride"] == 32
        assert torch.load(out / "c2am" / "ckpt.pt", weights_only=False)["kwargs"]["output_stride"] == 16
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {("cls", "train_aug"), ("seg", "val"), ("cam", "train"), ("pseudo", "train")} <= {
        (row["stage"], row["split"]) for row in metrics}


def test_a_voc_run_without_imagenet_weights_stops_before_the_first_stage(voc_copy, imagenet_files, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    args = _args(voc_copy, "cam", out, None) + ["--weights", str(imagenet_files[0])]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "seg.weights" in result.output and "--seg-weights" in result.output and "Traceback" not in result.output
    assert not (out / "cls").exists()
    nothing = runner.invoke(app, _args(voc_copy, "cam", tmp_path / "none", None))
    assert nothing.exit_code == 2 and "cls.weights" in nothing.output


def test_dry_run_shows_the_released_plan_without_work(voc_copy, imagenet_files, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    result = runner.invoke(app, _args(voc_copy, "cam", out, imagenet_files)[:-2 * len(FAST)] + ["--dry-run"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "cls: split train_aug (4 images)" in text and "irn: split train_aug (4 images)" in text
    assert "seg: split train_aug (pseudo masks) (4 images); 20,000 steps; batch 10 (2 x 5)" in text
    assert "stepped every 10" in text and "momentum 0.0001" in text
    assert str(imagenet_files[0]) in text and str(imagenet_files[1]) in text
    assert not out.exists()
