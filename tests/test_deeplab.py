"""DeepLab-v2 / v3 segmentation models: shapes, stride, dilation, param groups, checkpoints, weights, ONNX."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from fastwsss.errors import CheckpointError, ConfigError
from fastwsss.models.backbone import feature_size
from fastwsss.models.deeplab import (
    SEG_MODELS,
    SegModel,
    build_seg_model,
    load_seg_model,
    save_seg_checkpoint,
)

NUM_LABELS = 5
SMALL = [("deeplabv2", "resnet18_quarter"), ("deeplabv3", "resnet18_quarter")]
LARGE = [("deeplabv2", "resnet101"), ("deeplabv3", "resnet50")]


def sizes_for(backbone: str) -> list[tuple[int, int]]:
    """Odd sizes; the ImageNet-width nets get one small size to keep the file fast on 2 CPU cores."""
    return [(65, 47), (33, 97), (64, 64)] if backbone.endswith("_quarter") else [(33, 17)]


@pytest.fixture(scope="module", params=SMALL + LARGE, ids=lambda c: f"{c[0]}-{c[1]}")
def built(request: pytest.FixtureRequest) -> tuple[str, str, SegModel]:
    name, backbone = request.param
    torch.manual_seed(0)
    return name, backbone, build_seg_model(name, backbone, NUM_LABELS).eval()


class TestSegModels:
    def test_output_has_input_size(self, built: tuple[str, str, SegModel]) -> None:
        _, backbone, model = built
        for height, width in sizes_for(backbone):
            x = torch.randn(2, 3, height, width)
            with torch.no_grad():
                logits = model(x)
                coarse = model.head(model.features(x))
            assert logits.shape == (2, NUM_LABELS, height, width)
            assert torch.isfinite(logits).all()
            # The one resize an exported graph will carry: by size, bilinear, align_corners=False.
            expected = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
            torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)

    def test_features_at_output_stride_8(self, built: tuple[str, str, SegModel]) -> None:
        _, backbone, model = built
        height, width = sizes_for(backbone)[0]
        with torch.no_grad():
            features = model.features(torch.randn(2, 3, height, width))
        assert features.shape[0] == 2
        assert features.shape[-2:] == (feature_size(height, 8), feature_size(width, 8))

    def test_dilated_like_deeplab(self, built: tuple[str, str, SegModel]) -> None:
        _, _, model = built
        trunk = getattr(model.backbone, "body", model.backbone)
        stages = {"stage3": 2, "stage4": 4} if hasattr(trunk, "stage3") else {"layer3": 2, "layer4": 4}
        for stage, rate in stages.items():
            convs = [m for m in getattr(trunk, stage).modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
            assert convs and all(c.stride == (1, 1) for c in convs)
            # torchvision's own dilated ResNet gives a stage's first block the previous rate.
            assert all(c.dilation == (rate, rate) and c.padding == (rate, rate) for c in convs[1:])

    def test_param_groups_cover_every_parameter_once(self, built: tuple[str, str, SegModel]) -> None:
        _, _, model = built
        groups = model.param_groups()
        assert [g["name"] for g in groups] == ["backbone", "head"]
        ids = [id(p) for g in groups for p in g["params"]]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
        assert all(len(g["params"]) > 0 for g in groups)

    def test_checkpoint_round_trip(self, built: tuple[str, str, SegModel], tmp_path: Path) -> None:
        name, backbone, model = built
        if backbone == "resnet101":
            pytest.skip("same code path as deeplabv2-resnet18_quarter; a 170 MB write is not worth the time")
        path = tmp_path / "seg.pt"
        save_seg_checkpoint(path, model, {"class_names": ["a", "b", "c", "d"], "epoch": 3})
        loaded, meta = load_seg_model(path, expect_num_classes=NUM_LABELS)
        assert meta == {"class_names": ["a", "b", "c", "d"], "epoch": 3}
        assert type(loaded) is type(model) and loaded.init_kwargs == {
            "name": name,
            "backbone": backbone,
            "num_classes": NUM_LABELS,
        }
        assert not loaded.training
        x = torch.randn(2, 3, *sizes_for(backbone)[0])
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        with pytest.raises(CheckpointError) as info:
            load_seg_model(path, expect_num_classes=NUM_LABELS + 2)
        assert (
            str(path) in str(info.value)
            and str(NUM_LABELS) in str(info.value)
            and str(NUM_LABELS + 2) in str(info.value)
        )


def test_unknown_model_lists_the_registry() -> None:
    with pytest.raises(ConfigError) as info:
        build_seg_model("pspnet", "resnet18_quarter", 3)
    for name in SEG_MODELS:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="resnet18_quarter"):
        build_seg_model("deeplabv3", "resnet7", 3)


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_seg_model(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(corrupt)):
        load_seg_model(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something/1"}, foreign)
    with pytest.raises(CheckpointError, match="not a fastwsss segmentation checkpoint"):
        load_seg_model(foreign)


@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3"])
def test_training_steps_reduce_the_loss(name: str) -> None:
    """Gradients reach backbone and head: a few SGD steps fit one fixed batch."""
    torch.manual_seed(0)
    model = build_seg_model(name, "resnet18_quarter", 3).train()
    x = torch.randn(2, 3, 40, 40)
    target = torch.zeros(2, 40, 40, dtype=torch.long)
    target[:, 10:30, 5:25] = 1
    target[1, 30:, 30:] = 2
    target[0, :3] = 255
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(x), target, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]
    for group in model.param_groups():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in group["params"])


def test_torchvision_trunk_takes_imagenet_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet50().state_dict()
    path = tmp_path / "resnet50-test.pth"
    torch.save(reference, path)
    model = build_seg_model("deeplabv3", "resnet50", 3, weights=path)
    trunk = model.backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer3.5.conv2.weight", "layer4.2.bn3.bias"):
        torch.testing.assert_close(trunk[f"body.{key}"], reference[key], rtol=0, atol=0)

    bad = tmp_path / "resnet18-as-50.pth"
    torch.save(torchvision.models.resnet18().state_dict(), bad)
    with pytest.raises(CheckpointError, match=str(bad)):
        build_seg_model("deeplabv3", "resnet50", 3, weights=bad)
    with pytest.raises(ConfigError, match="reduced-width"):
        build_seg_model("deeplabv2", "resnet18_quarter", 3, weights=path)


@pytest.mark.skipif(os.environ.get("FASTWSSS_SKIP_ONNX") == "1", reason="FASTWSSS_SKIP_ONNX=1")
@pytest.mark.parametrize("name", ["deeplabv2", "deeplabv3"])
def test_onnx_export_dynamic_shapes_match_eager(name: str, tmp_path: Path) -> None:
    """Exported once at 2x3x64x64 with dynamic N/H/W, run by onnxruntime at other odd shapes."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from torch.export import Dim

    torch.manual_seed(0)
    model = build_seg_model(name, "resnet18_quarter", NUM_LABELS).eval()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 64, 64),),
        str(path),
        dynamo=True,
        external_data=False,
        dynamic_shapes={"images": {0: Dim("batch"), 2: Dim("h"), 3: Dim("w")}},
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    for shape in [(1, 3, 65, 47), (3, 3, 33, 97)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {input_name: x.numpy()})[0]
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
