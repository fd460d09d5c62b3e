"""`seg.init = "classifier"`: the segmentation backbone starts from the run's own CAM classifier."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fastwsss.config import get_preset, validate
from fastwsss.errors import ConfigError
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.models.deeplab import build_seg_model
from fastwsss.stages.seg import init_from_classifier


def with_seg(**changes: object):
    config = get_preset("tiny")
    return dataclasses.replace(config, seg=dataclasses.replace(config.seg, **changes))


def test_the_synthetic_preset_starts_deeplab_from_its_classifier() -> None:
    config = validate(get_preset("synthetic"))
    assert config.seg.init == "classifier" and config.seg.backbone == config.cls.backbone
    assert validate(get_preset("tiny")).seg.init == "weights"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"init": "imagenet"}, "weights or classifier"),
        ({"init": "classifier", "weights": "/x/resnet.pth"}, "drop seg.weights"),
        ({"init": "classifier", "backbone": "resnet18_half"}, "seg.backbone = cls.backbone"),
    ],
)
def test_invalid_init_names_the_setting(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^seg\.init: .*{message}"):
        validate(with_seg(**changes))


@pytest.mark.parametrize("extra_at", [None, "block3", "block5"])
def test_backbone_weights_are_the_classifiers(tmp_path: Path, extra_at: str | None) -> None:
    torch.manual_seed(0)
    kwargs = {} if extra_at is None else {"extra_channels": 1, "extra_at": extra_at}
    net = CAMNet("resnet18_quarter", 3, output_stride=8, **kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    save_checkpoint(tmp_path / "ckpt.pt", net)
    model = build_seg_model("deeplabv2", "resnet18_quarter", 4)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    init_from_classifier(model, tmp_path / "ckpt.pt")
    expected = net.image_backbone().state_dict()
    got = model.backbone.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)
    for key, value in model.head.state_dict().items():
        torch.testing.assert_close(value, head_before[key], rtol=0, atol=0)


def test_a_classifier_of_another_width_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ckpt.pt", CAMNet("resnet18_quarter", 3, output_stride=8))
    model = build_seg_model("deeplabv2", "resnet18_half", 4)
    with pytest.raises(ConfigError, match=r"^seg\.init: .*ckpt\.pt: the classifier's backbone does not fit"):
        init_from_classifier(model, tmp_path / "ckpt.pt")
