"""The released IRNet / C2AM / DeepLab definitions that the voc and coco presets select (docs/reproduce.md).

Each reference below is written from the released definition in this file (the released code itself is not
a dependency); the comments name the released function it restates.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from fastwsss.algorithms.affinity import half_disc_directions
from fastwsss.algorithms.irn_pairs import downsample_labels, pair_masks
from fastwsss.data.datasets import ClassificationDataset
from fastwsss.data.synthetic import SyntheticSource, generate_synthetic
from fastwsss.engine.training import sgd_optimizer
from fastwsss.models.cam_net import CAMNet
from fastwsss.models.deeplab import build_seg_model
from fastwsss.models.irn import BoundaryNet, grid_size
from fastwsss.models.msc import deeplab_param_groups, msc_outputs, nearest_labels


def pathindex_pairs(height: int, width: int, radius: int) -> set[tuple[int, int]]:
    """(source, destination) flat indices as IRNet's PathIndex.get_path_indices builds them: one window of
    sources, full[:h - f, f:f + w - 2f], and for each search direction (dy, dx) the destinations
    full[dy:dy + h - f, f + dx:f + dx + w - 2f], f = ceil(radius) - 1."""
    floor = int(np.ceil(radius) - 1)
    full = np.arange(height * width).reshape(height, width)
    crop_h, crop_w = height - floor, width - 2 * floor
    sources = full[:crop_h, floor:floor + crop_w].reshape(-1)
    directions = [(0, x) for x in range(1, radius)]
    directions += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius**2]
    pairs = set()
    for dy, dx in directions:
        destinations = full[dy:dy + crop_h, floor + dx:floor + dx + crop_w].reshape(-1)
        pairs.update(zip(sources.tolist(), destinations.tolist(), strict=True))
    return pairs


def mask_pairs(height: int, width: int, radius: int, window: bool) -> set[tuple[int, int]]:
    masks = pair_masks(torch.zeros(1, height, width, dtype=torch.long), radius, window=window)
    pairs = set()
    for d, (dy, dx) in enumerate(half_disc_directions(radius)):
        for y, x in torch.nonzero(masks.bg_pos[0, d]).tolist():
            pairs.add((y * width + x, (y + dy) * width + x + dx))
    return pairs


@pytest.mark.parametrize("size, radius", [((12, 17), 5), ((32, 32), 10), ((40, 57), 10), ((40, 57), 5), ((20, 19), 10)])
def test_pathindex_window_gives_exactly_pathindex_pairs(size: tuple[int, int], radius: int) -> None:
    reference = pathindex_pairs(*size, radius)
    assert mask_pairs(*size, radius, window=True) == reference
    assert len(mask_pairs(*size, radius, window=False)) > len(reference)  # the default keeps every in-grid pair


def test_pathindex_window_on_the_released_crop() -> None:
    assert mask_pairs(128, 128, 10, window=True) == pathindex_pairs(128, 128, 10)


def test_label_offset_two_is_pil_nearest_quarter() -> None:
    """IRNet's pil_rescale(label, 0.25, 0) on its 512 crop: PIL's nearest samples rows and columns 2, 6, ..."""
    rng = np.random.default_rng(0)
    for height, width in ((64, 48), (512, 512), (36, 100)):
        label = rng.integers(0, 21, size=(height, width)).astype(np.uint8)
        pil = np.asarray(Image.fromarray(label).resize((width // 4, height // 4), Image.NEAREST))
        ours = downsample_labels(torch.from_numpy(label), offset=2).numpy()
        np.testing.assert_array_equal(ours, pil)
        assert not np.array_equal(downsample_labels(torch.from_numpy(label)).numpy(), pil)


@pytest.mark.parametrize("size", [(33, 47), (45, 45), (1, 6)])
def test_label_offset_keeps_the_boundary_grid_at_other_sizes(size: tuple[int, int]) -> None:
    label = torch.arange(size[0] * size[1]).reshape(size)
    assert downsample_labels(label, offset=2).shape == grid_size(*size)


def released_edge(model: BoundaryNet, image: torch.Tensor, crop: int) -> torch.Tensor:
    """IRNet's EdgeDisplacement on [image, flipped image]: pad both to crop x crop, fc_edge1..6 with the deeper
    taps as conv, GroupNorm, Upsample(scale_factor), ReLU, crop each tap to edge2's size, then crop the map to
    the stride-4 grid and return sigmoid(edge[0] / 2 + edge[1].flip(-1) / 2)."""
    height, width = image.shape[-2:]
    batch = torch.cat([image, image.flip(-1)])
    batch = F.pad(batch, [0, crop - width, 0, crop - height])
    features = model._taps(batch)  # IRNet's x1..x5: stem, layer1..layer4 of the frozen backbone
    factors = (1, 1, 2, 4, 4)
    edges = []
    for block, feature, factor in zip(model.head.taps, features, factors, strict=True):
        conv, norm, relu = block
        layers = [conv, norm] + ([nn.Upsample(scale_factor=factor, mode="bilinear", align_corners=False)] if factor > 1 else [])
        edges.append(relu(nn.Sequential(*layers)(feature)))
    size = edges[1].shape[-2:]
    edge = model.head.fuse(torch.cat([e[..., :size[0], :size[1]] for e in edges], dim=1))
    h4, w4 = grid_size(height, width)
    edge = edge[..., :h4, :w4]
    return torch.sigmoid(edge[0] / 2 + edge[1].flip(-1) / 2)


def test_boundary_map_equals_the_released_definition() -> None:
    torch.manual_seed(0)
    model = BoundaryNet("resnet18_quarter", infer_pad=128, relu_after_upsample=True).eval()
    image = torch.randn(1, 3, 75, 101)
    with torch.no_grad():
        ours = model.boundary_with_flip(image)[0]
        reference = released_edge(model, image, 128)
        default = BoundaryNet("resnet18_quarter")
        default.load_state_dict(model.state_dict())
        before = default.eval().boundary_with_flip(image)[0]
    assert ours.shape == reference.shape == (1, *grid_size(75, 101))
    assert torch.max(torch.abs(ours - reference)) < 1e-4
    assert torch.max(torch.abs(before - reference)) > 1e-3  # padding to a multiple of 16 and ReLU first differ


def test_infer_pad_is_kept_in_the_checkpoint(tmp_path) -> None:
    from fastwsss.models.irn import load_irn, save_irn_checkpoint

    model = BoundaryNet("resnet18_quarter", infer_pad=64, relu_after_upsample=True)
    save_irn_checkpoint(tmp_path / "irn.pt", model)
    loaded, _ = load_irn(tmp_path / "irn.pt")
    assert (loaded.infer_pad, loaded.relu_after_upsample) == (64, True)


def test_nearest_labels_match_pil_nearest() -> None:
    """DeepLab's resize_labels: PIL nearest of each label map to the logit size (321 -> 41 at stride 8)."""
    rng = np.random.default_rng(1)
    for (height, width), (out_h, out_w) in (((321, 321), (41, 41)), ((100, 60), (13, 8)), ((9, 9), (20, 3))):
        labels = rng.integers(0, 21, size=(2, height, width))
        pil = np.stack([np.asarray(Image.fromarray(m.astype(np.float32)).resize((out_w, out_h), Image.NEAREST)) for m in labels])
        np.testing.assert_array_equal(nearest_labels(torch.from_numpy(labels), (out_h, out_w)).numpy(), pil.astype(np.int64))


def test_deeplab_parameter_groups_and_frozen_batchnorm() -> None:
    model = build_seg_model("deeplabv2", "resnet18_quarter", 5).freeze_batchnorm()
    groups = {g["name"]: g for g in sgd_optimizer(deeplab_param_groups(model, 10.0, 5e-4), 2.5e-4, 0.9, 5e-4).param_groups}
    convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert {id(p) for p in groups["backbone"]["params"]} == {id(c.weight) for c in convs}
    assert {id(p) for p in groups["head"]["params"]} == {id(b.weight) for b in model.head.branches}
    assert {id(p) for p in groups["head_bias"]["params"]} == {id(b.bias) for b in model.head.branches}
    assert (groups["backbone"]["lr"], groups["head"]["lr"], groups["head_bias"]["lr"]) == pytest.approx((2.5e-4, 2.5e-3, 5e-3))
    assert (groups["backbone"]["weight_decay"], groups["head"]["weight_decay"], groups["head_bias"]["weight_decay"]) == (5e-4, 5e-4, 0.0)
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    model.train()
    assert all(not m.training and not m.weight.requires_grad for m in norms)
    before = norms[0].running_mean.clone()
    model(torch.randn(2, 3, 40, 40))
    assert torch.equal(before, norms[0].running_mean)


def test_msc_outputs_are_the_released_pyramid_and_max() -> None:
    torch.manual_seed(0)
    model = build_seg_model("deeplabv2", "resnet18_quarter", 3).eval()
    images = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        outputs = msc_outputs(model, images, (0.5, 0.75))
        full = model(images, upsample=False)
        half = model(F.interpolate(images, scale_factor=0.5, mode="bilinear", align_corners=False), upsample=False)
    assert len(outputs) == 4 and torch.equal(outputs[0], full) and torch.equal(outputs[1], half)
    resized = [F.interpolate(o, size=full.shape[-2:], mode="bilinear", align_corners=False) for o in outputs[1:3]]
    torch.testing.assert_close(outputs[3], torch.stack([full, *resized]).max(dim=0).values)


def test_fixed_batchnorm_trains_affine_but_not_the_stem() -> None:
    model = CAMNet("resnet18_quarter", 4, freeze_bn=True, train_bn_affine=True, detach_early=True)
    stem = model.backbone.stage1
    assert not stem.conv1.weight.requires_grad and not stem.bn1.weight.requires_grad
    deep = [m for m in model.backbone.stage4.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.weight.requires_grad and m.bias.requires_grad for m in deep)
    model.train()
    assert all(not m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    frozen = CAMNet("resnet18_quarter", 4, freeze_bn=True)
    assert not any(m.weight.requires_grad for m in frozen.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_scale_set_and_scale_range_draw_relative_long_sides(tmp_path) -> None:
    from fastwsss.config import SynthConfig

    root = generate_synthetic(tmp_path / "s", SynthConfig(size=64, num_train=6, num_val=1, num_debiased=0), progress=False)
    source = SyntheticSource(root, "train")
    chosen = ClassificationDataset(source, (8, 8), 32, scale_set=(0.5, 1.5))
    ranged = ClassificationDataset(source, (8, 8), 32, scale_range=(0.5, 1.5))
    rng = np.random.default_rng(0)
    assert {chosen._draw_long_side(64, 40, rng) for _ in range(50)} == {32, 96}
    assert {ranged._draw_long_side(64, 40, rng) for _ in range(200)} <= set(range(32, 97))
    assert ranged.long_side_range(64, 40) == (32, 96)


def test_deeplab_test_time_crf_follows_confident_probabilities() -> None:
    from fastwsss.algorithms.crf import crf_available, crf_refine_probs

    if not crf_available():
        pytest.skip("pydensecrf2 is not installed (pip install 'fastwsss[crf]')")
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 15:] = 255
    probs = np.full((2, 20, 30), 0.1, np.float32)
    probs[0, :, :15] = probs[1, :, 15:] = 0.9
    probs[:, 5, 20] = (0.55, 0.45)  # one weakly wrong pixel inside the bright half
    labels = crf_refine_probs(image, probs)
    assert labels.shape == (20, 30) and labels[:, :15].max() == 0 and labels[:, 15:].min() == 1
