"""IRN: the boundary net (grid size, freezing, flip, checkpoints), pair labels, the loss and the irn stage."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastwsss.algorithms.affinity import half_disc_directions
from fastwsss.algorithms.irn_pairs import PairMasks, affinity_loss, downsample_labels, pair_masks
from fastwsss.config import IRNConfig, RunConfig, SynthConfig, get_preset
from fastwsss.data.palette import IGNORE_INDEX, save_mask_png
from fastwsss.data.synthetic import SyntheticSource, ensure_synthetic
from fastwsss.engine.files import read_jsonl
from fastwsss.engine.rundir import create_or_resume
from fastwsss.errors import CheckpointError, FastwsssError
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.models.irn import BoundaryNet, load_irn, save_irn_checkpoint
from fastwsss.stages import irn as irn_stage
from fastwsss.stages.context import StageContext

SIZES = [(65, 47), (64, 64), (33, 97)]


def grid(height: int, width: int) -> tuple[int, int]:
    return (height - 1) // 4 + 1, (width - 1) // 4 + 1


# ---------------------------------------------------------------- BoundaryNet


@pytest.mark.parametrize("size", SIZES)
def test_output_is_the_stride4_grid_at_odd_sizes(size: tuple[int, int]) -> None:
    model = BoundaryNet("resnet18_quarter").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 1, *grid(*size))


def test_output_grid_resnet50_and_output_stride_8() -> None:
    with torch.no_grad():
        assert BoundaryNet("resnet50").eval()(torch.randn(1, 3, 65, 47)).shape == (1, 1, 17, 12)
        assert BoundaryNet("resnet18_quarter", output_stride=8).eval()(torch.randn(1, 3, 33, 97)).shape == (1, 1, 9, 25)


def test_head_channels_follow_the_backbone() -> None:
    model = BoundaryNet("resnet18_quarter")
    assert [block[0].in_channels for block in model.head.taps] == [16, 16, 32, 64, 128]
    assert model.head.fuse.in_channels == 160 and model.head.fuse.bias is not None


def test_backbone_stays_frozen_in_eval_mode_while_the_head_learns() -> None:
    torch.manual_seed(0)
    model = BoundaryNet("resnet18_quarter")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    optimizer = torch.optim.SGD(model.head_parameters(), lr=0.1)
    model.train()
    assert model.head.training and not any(m.training for m in model.backbone.modules())
    loss = model(torch.randn(2, 3, 48, 40) * 3 + 1).sigmoid().mean()
    loss.backward()
    optimizer.step()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.head_parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.head_parameters())
    after = model.backbone.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # BN running stats and weights unchanged


def test_boundary_with_flip_is_the_mean_of_direct_and_mirrored_logits() -> None:
    torch.manual_seed(0)
    model = BoundaryNet("resnet18_quarter").eval()
    x = torch.randn(2, 3, 40, 45)
    with torch.no_grad():
        expected = torch.sigmoid(model(x) / 2 + model(x.flip(-1)).flip(-1) / 2)
        got = model.boundary_with_flip(x)
        assert torch.allclose(model.boundary(x), torch.sigmoid(model(x)))
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, model.boundary(x))


def _classifier_ckpt(path: Path, output_stride: int = 16) -> CAMNet:
    torch.manual_seed(3)
    cam = CAMNet("resnet18_quarter", num_classes=10, output_stride=output_stride, freeze_bn=False, detach_early=False)
    with torch.no_grad():
        cam.backbone.stage3[0].bn1.running_mean.uniform_(-1, 1)
    save_checkpoint(path, cam)
    return cam


def test_from_classifier_copies_the_backbone_exactly(tmp_path: Path) -> None:
    cam = _classifier_ckpt(tmp_path / "cls.pt", output_stride=8)
    model = BoundaryNet.from_classifier(tmp_path / "cls.pt")
    assert model.output_stride == 8 and model.backbone_name == "resnet18_quarter"
    assert torch.equal(model.backbone.stage2[0].conv1.weight, cam.backbone.stage2[0].conv1.weight)
    mine = model.backbone.state_dict()
    for key, value in cam.backbone.state_dict().items():
        assert torch.equal(mine[key], value), key
    assert model(torch.randn(1, 3, 33, 50)).shape == (1, 1, 9, 13)


def test_checkpoint_round_trip_stands_alone(tmp_path: Path) -> None:
    _classifier_ckpt(tmp_path / "cls.pt")
    model = BoundaryNet.from_classifier(tmp_path / "cls.pt")
    with torch.no_grad():
        for p in model.head_parameters():
            p.uniform_(-0.5, 0.5)
    save_irn_checkpoint(tmp_path / "irn.pt", model, {"radius": 10})
    (tmp_path / "cls.pt").unlink()
    loaded, meta = load_irn(tmp_path / "irn.pt")
    assert meta == {"radius": 10} and not loaded.training
    x = torch.randn(1, 3, 37, 41)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    payload = torch.load(tmp_path / "irn.pt", weights_only=True)
    assert set(payload["head"]) == set(model.head.state_dict())


def test_missing_or_corrupt_checkpoint_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothere.pt"):
        load_irn(tmp_path / "nothere.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_irn(bad)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, CAMNet("resnet18_quarter", num_classes=2))
    with pytest.raises(CheckpointError, match="wrong.pt.*not a fastwsss IRN"):
        load_irn(wrong)


# ---------------------------------------------------------------- pair labels and loss

GRID = np.array([[0, 0, 1, 1], [0, 255, 1, 1], [0, 0, 0, 1]], dtype=np.uint8)


def test_downsample_takes_every_fourth_pixel_like_the_boundary_grid() -> None:
    full = torch.from_numpy(np.kron(GRID, np.ones((4, 4), dtype=np.uint8)))  # 12 x 16
    assert torch.equal(downsample_labels(full), torch.from_numpy(GRID))
    odd = full[:9, :13]
    assert downsample_labels(odd).shape == grid(9, 13) == (3, 4)


def test_pair_masks_counted_by_hand_radius_2() -> None:
    # Radius 2: directions (0,1), (1,-1), (1,0), (1,1), i.e. every 8-neighbour pair once. Counting the
    # grid above by hand: horizontal bg 3 fg 2 neg 2, vertical bg 2 fg 3 neg 1, (1,1) bg 1 fg 2 neg 1,
    # (1,-1) bg 1 fg 1 neg 2; 8 in-grid pairs touch the 255 cell.
    masks = pair_masks(torch.from_numpy(GRID)[None], radius=2)
    assert masks.bg_pos.shape == (1, 4, 3, 4) and masks.bg_pos.dtype == torch.bool
    assert masks.counts() == {"bg_pos": 7, "fg_pos": 8, "neg": 6}
    right = half_disc_directions(2).index((0, 1))
    assert masks.bg_pos[0, right, 0, 0] and masks.neg[0, right, 0, 1] and masks.fg_pos[0, right, 0, 2]
    assert not (masks.bg_pos | masks.fg_pos | masks.neg)[0, right, :, 3].any()  # partner outside the grid


def test_pair_masks_radius_3_and_two_classes() -> None:
    labels = torch.tensor([[[1, 2, 0]]])  # one row: only the horizontal directions reach a partner
    masks = pair_masks(labels, radius=3)
    assert masks.bg_pos.shape[1] == len(half_disc_directions(3))
    assert masks.counts() == {"bg_pos": 0, "fg_pos": 0, "neg": 3}  # 1-2, 2-0 (dx=1) and 1-0 (dx=2)
    # All-one 3x3 grids: 12 directions, (0,1) (0,2), then dy = 1 and dy = 2 each with dx in -2..2. In-grid
    # pairs per direction (3 - dy) * (3 - |dx|): 6 + 3 + (6 + 2*4 + 2*2) + (3 + 2*2 + 2*1) = 36 per image.
    ones = pair_masks(torch.ones(2, 3, 3, dtype=torch.long), radius=3)
    assert ones.bg_pos.shape == (2, 12, 3, 3)
    assert ones.counts() == {"bg_pos": 0, "fg_pos": 72, "neg": 0}


def _masks(*rows: list[int]) -> PairMasks:
    return PairMasks(*(torch.tensor(r, dtype=torch.bool).view(1, 1, 1, -1) for r in rows))


def test_affinity_loss_matches_a_hand_computation() -> None:
    aff = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.2, 0.1]).view(1, 1, 1, 6)
    masks = _masks([1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1])
    total, parts = affinity_loss(aff, masks)
    eps = 1e-5
    bg = (-math.log(0.9 + eps) - math.log(0.8 + eps)) / 2
    fg = (-math.log(0.7 + eps) - math.log(0.6 + eps)) / 2
    neg = (-math.log(1 + eps - 0.2) - math.log(1 + eps - 0.1)) / 2
    assert parts["bg_pos"].item() == pytest.approx(bg, rel=1e-5)
    assert parts["fg_pos"].item() == pytest.approx(fg, rel=1e-5)
    assert parts["neg"].item() == pytest.approx(neg, rel=1e-5)
    assert total.item() == pytest.approx((0.5 * bg + 0.5 * fg + neg) / 2, rel=1e-5)


def test_empty_pair_sets_give_a_finite_loss_and_gradient() -> None:
    aff = torch.tensor([0.0, 1.0, 0.5]).view(1, 1, 1, 3).requires_grad_()
    total, parts = affinity_loss(aff, _masks([0, 0, 0], [0, 0, 0], [0, 0, 0]))
    total.backward()
    assert total.item() == 0.0 and torch.isfinite(aff.grad).all()
    total, parts = affinity_loss(aff.detach(), _masks([0, 0, 1], [0, 0, 0], [0, 0, 0]))
    assert parts["fg_pos"].item() == 0.0 and parts["neg"].item() == 0.0
    assert total.item() == pytest.approx(-math.log(0.5 + 1e-5) / 4, rel=1e-5)


# ---------------------------------------------------------------- the irn stage

SYNTH = SynthConfig(size=64, num_train=16, num_val=4, num_debiased=4)


def _config() -> RunConfig:
    config = get_preset("tiny")
    irn = IRNConfig(
        backbone="resnet18_quarter",
        backbone_from="cls",
        radius=5,
        epochs=2,
        batch_size=4,
        lr=0.05,
        resize_long=(56, 72),
        crop=64,
    )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, synth=SYNTH), irn=irn)


def _ir_label(mask: np.ndarray) -> np.ndarray:
    """Ground truth with a 255 band where a 3x3 neighbourhood holds two labels (the unsure seam)."""
    padded = np.pad(mask, 1, mode="edge")
    seam = np.zeros(mask.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            seam |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] != mask
    label = mask.copy()
    label[seam | (mask == IGNORE_INDEX)] = IGNORE_INDEX
    return label


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier checkpoint and IR labels for all train images but the first."""
    base = tmp_path_factory.mktemp("irn-inputs")
    source = SyntheticSource(ensure_synthetic(SYNTH, progress=False), "train")
    _classifier_ckpt(base / "cls" / "ckpt.pt")
    for image_id in source.ids[1:]:
        save_mask_png(_ir_label(source.load_mask(image_id)), base / "ir_labels" / f"{image_id}.png")
    return base


def _run(path: Path, prepared: Path, resume: bool = False, on_step=None) -> None:
    run, config = create_or_resume(path, _config(), resume=resume)
    try:
        for sub in ("cls", "ir_labels"):
            if not (path / sub).exists():
                shutil.copytree(prepared / sub, path / sub)
        irn_stage.run_irn(StageContext(config, run, torch.device("cpu"), resume=resume, on_step=on_step))
    finally:
        run.unlock()


def test_irn_stage_trains_and_resumes_to_the_same_weights(tmp_path: Path, prepared: Path) -> None:
    _run(tmp_path / "straight", prepared)
    done = tmp_path / "straight" / "irn"
    assert (done / "ckpt.pt").is_file() and (done / "DONE").is_file()
    model, meta = load_irn(done / "ckpt.pt")
    assert meta["backbone_from"] == "cls" and meta["radius"] == 5
    info = json.loads((done / "DONE").read_text())
    assert info["images"] == 15 and info["skipped"] == 1 and info["steps"] == 6
    rows = read_jsonl(tmp_path / "straight" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["stage"] == "irn" for r in rows)
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 and r["miou"] is None for r in rows)

    def interrupt(stage: str, count: int) -> None:
        if stage == "irn" and count == 5:  # inside epoch 2 (3 steps per epoch)
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        _run(cut, prepared, on_step=interrupt)
    assert (cut / "irn" / "last.pt").is_file() and not (cut / "irn" / "ckpt.pt").exists()
    seen: list[int] = []
    _run(cut, prepared, resume=True, on_step=lambda stage, count: seen.append(count))
    assert seen == [4, 5, 6]  # continued after epoch 1 rather than starting again
    a = torch.load(done / "ckpt.pt", weights_only=True)
    b = torch.load(cut / "irn" / "ckpt.pt", weights_only=True)
    for part in ("head", "backbone"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-6, msg=key)
    classifier = BoundaryNet.from_classifier(prepared / "cls" / "ckpt.pt")
    for key, value in classifier.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[key], value), key  # frozen: BN stats included
    torch.manual_seed(_config().seed)
    untrained = BoundaryNet.from_classifier(prepared / "cls" / "ckpt.pt")
    assert not torch.equal(untrained.head.fuse.weight, model.head.fuse.weight)  # the head did train
    assert [r["epoch"] for r in read_jsonl(cut / "metrics.jsonl")] == [1, 2]


def test_non_finite_loss_names_epoch_and_step(tmp_path: Path, prepared: Path, monkeypatch) -> None:
    real = irn_stage.path_max_affinity
    monkeypatch.setattr(irn_stage, "path_max_affinity", lambda edge, radius: real(edge, radius) * float("nan"))
    with pytest.raises(FastwsssError, match="irn: loss is nan at epoch 1 step 1"):
        _run(tmp_path / "nan", prepared)
