"""The maths of C2AM (global CAM, scaled logits) and CONTA (confounder set, X_m, Eq. 3 wiring, M_t input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastwsss.algorithms.context_metrics import ContextLeakageMeter
from fastwsss.config import get_preset
from fastwsss.kernels.confounder_attention import confounder_attention_reference
from fastwsss.methods.c2am import GlobalCamAccumulator, c2am_loss, logit_constants, resize_to_global, scaled_logits
from fastwsss.methods.conta import (
    ConfounderAttention,
    ConfounderSetBuilder,
    ContextClassifier,
    MaskTable,
    foreground_map,
)
from fastwsss.models.cam_net import CAMNet


class TestC2AM:
    def test_global_cam_is_mean_over_all_images_with_absent_classes_zero(self) -> None:
        rng = np.random.default_rng(0)
        acc = GlobalCamAccumulator(num_classes=3, size=4)
        images = [(np.array([0]), rng.random((1, 4, 4))), (np.array([0, 2]), rng.random((2, 4, 4))),
                  (np.array([2]), rng.random((1, 4, 4)))]
        for keys, cams in images:
            acc.add(keys, cams.astype(np.float32))
        g = acc.result()
        np.testing.assert_allclose(g[0], (images[0][1][0] + images[1][1][0]) / 3, atol=1e-6)
        np.testing.assert_allclose(g[1], 0.0)
        np.testing.assert_allclose(g[2], (images[1][1][1] + images[2][1][0]) / 3, atol=1e-6)
        by_class = acc.result(by_class=True)
        np.testing.assert_allclose(by_class[0], (images[0][1][0] + images[1][1][0]) / 2, atol=1e-6)
        np.testing.assert_allclose(by_class[1], 0.0)

    def test_resize_ignores_aspect_ratio(self) -> None:
        cams = np.zeros((1, 10, 40), np.float32)
        cams[0, :, :20] = 1.0  # left half
        out = resize_to_global(cams, 8)
        assert out.shape == (1, 8, 8)
        assert out[0, :, :3].min() == pytest.approx(1.0) and out[0, :, 5:].max() == pytest.approx(0.0)

    def test_scaled_logits_are_s_times_gamma_mean_of_g(self) -> None:
        g = torch.rand(4, 6, 6).numpy()
        gamma = 0.7
        constants = logit_constants(g, gamma)
        expected = torch.tensor([gamma * g[c].mean() for c in range(4)])
        torch.testing.assert_close(constants, expected)
        logits = torch.randn(3, 4)
        torch.testing.assert_close(scaled_logits(logits, constants), logits * expected.view(1, 4))
        labels = (torch.rand(3, 4) > 0.5).float()
        by_hand = -(labels * F.logsigmoid(logits * expected) + (1 - labels) * F.logsigmoid(-logits * expected)).mean()
        torch.testing.assert_close(c2am_loss(logits, labels, constants), by_hand)

    def test_scaled_logits_shape_check(self) -> None:
        with pytest.raises(ValueError, match="disagree"):
            scaled_logits(torch.zeros(2, 3), torch.ones(4))

    def test_voc_preset_takes_released_c2am_downstream_settings(self) -> None:
        base, c2am = get_preset("voc"), get_preset("voc", "c2am")
        assert c2am.method == "c2am" and c2am.cam.scales == (*base.cam.scales, 2.5, 3.0)
        assert (c2am.ir_label.fg_threshold, c2am.ir_label.bg_threshold, c2am.pseudo.bg_threshold) == (0.375, 0.10, 0.20)
        assert (c2am.c2am.epochs, c2am.c2am.lr, c2am.c2am.head_lr_mult, c2am.c2am.global_size) == (4, 5e-4, 10.0, 128)
        assert get_preset("synthetic", "c2am").ir_label == get_preset("synthetic").ir_label


class TestConta:
    def test_foreground_map_area_average(self) -> None:
        mask = np.zeros((4, 6), np.uint8)
        mask[:2, :3] = 5
        mask[3, 5] = 255  # unsure is not foreground
        np.testing.assert_allclose(foreground_map(mask, 2), [1.0, 0.0, 0.0, 0.0])

    def test_confounder_set_averages_each_class_over_its_images(self) -> None:
        builder = ConfounderSetBuilder(num_classes=3, size=2)
        a = np.zeros((2, 2), np.uint8)
        a[0, 0] = 1
        a[1, 1] = 3
        b = np.zeros((2, 2), np.uint8)
        b[0, :] = 1
        builder.add(a, np.array([1, 0, 1]))
        builder.add(b, np.array([1, 0, 0]))
        c = builder.result()
        np.testing.assert_allclose(c[0], [1.0, 0.5, 0.0, 0.0])  # class 0 (id 1): mean of a and b
        np.testing.assert_allclose(c[1], 0.0)  # nobody tagged
        np.testing.assert_allclose(c[2], [0.0, 0.0, 0.0, 1.0])
        assert builder.counts.tolist() == [2, 0, 1]

    def test_attention_module_is_eq3_on_a_square_grid(self) -> None:
        c = torch.rand(3, 16)
        module = ConfounderAttention(c, seed=1)
        xm = torch.rand(2, 16)
        m = module(xm)
        assert m.shape == (2, 1, 4, 4)
        torch.testing.assert_close(m.view(2, 16), confounder_attention_reference(xm, module.w1, module.w2, c))
        m.sum().backward()
        assert module.w1.grad is not None and module.w2.grad is not None and module.w1.grad.abs().sum() > 0
        with pytest.raises(ValueError, match="square"):
            ConfounderAttention(torch.rand(3, 15))

    def test_m_changes_when_the_predictions_change(self) -> None:
        rng = np.random.default_rng(3)
        masks = [rng.integers(0, 3, (8, 8)).astype(np.uint8) for _ in range(4)]
        labels = [np.array([1, 1]) for _ in masks]

        def m_for(masks: list[np.ndarray]) -> torch.Tensor:
            builder = ConfounderSetBuilder(2, 4)
            for mask, label in zip(masks, labels, strict=True):
                builder.add(mask, label)
            attention = ConfounderAttention(torch.from_numpy(builder.result()), seed=0)
            return attention(torch.from_numpy(np.stack([foreground_map(m, 4) for m in masks])))

        before = m_for(masks)
        changed = [masks[0].copy(), *masks[1:]]
        changed[0][:4] = 2
        after = m_for(changed)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(m_for(masks), before)  # and nothing else moves it

    def test_context_classifier_trains_w1_w2_and_block5_has_2049_inputs(self) -> None:
        assert CAMNet("resnet50", 20, extra_channels=1).head.in_channels == 2049
        net = CAMNet("resnet18_quarter", 3, extra_channels=1, freeze_bn=False, detach_early=False)
        model = ContextClassifier(net, ConfounderAttention(torch.rand(3, 16)))
        logits = model(torch.randn(2, 3, 32, 32), torch.rand(2, 16))
        F.multilabel_soft_margin_loss(logits, torch.tensor([[1.0, 0, 1], [0, 1, 0]])).backward()
        assert model.attention.w1.grad.abs().sum() > 0 and model.attention.w2.grad.abs().sum() > 0
        groups = model.param_groups()
        assert [g["name"] for g in groups] == ["backbone", "head", "attention"] and "lr_mult" not in groups[2]
        assert groups[2]["params"][0] is model.attention.w1 and groups[2]["params"][1] is model.attention.w2
        assert ContextClassifier(net, model.attention, 50.0).param_groups()[2]["lr_mult"] == 50.0

    @pytest.mark.parametrize("extra_at", ["block2", "block3", "block4", "dense"])
    def test_inner_blocks_widen_with_zero_weights(self, extra_at: str) -> None:
        torch.manual_seed(0)
        net = CAMNet("resnet18_quarter", 3, extra_channels=1, extra_at=extra_at, freeze_bn=False, detach_early=False)
        plain = CAMNet("resnet18_quarter", 3, freeze_bn=False, detach_early=False)
        plain.backbone.load_state_dict(net.image_backbone().state_dict())
        if extra_at == "dense":
            plain.head.weight.data.copy_(net.head.weight.data[:, :-1])
        else:
            plain.head.load_state_dict(net.head.state_dict())
        net.eval()
        plain.eval()
        x = torch.randn(2, 3, 40, 40)
        extra = torch.rand(2, 1, 9, 9)
        if extra_at == "dense":  # block5's head weight for the map is random; zero it to compare
            net.head.weight.data[:, -1] = 0
        torch.testing.assert_close(net(x, extra), plain(x))  # a fresh widened layer ignores the map
        first = {"block2": 2, "block3": 3, "block4": 4}.get(extra_at, 2)
        conv = getattr(net.backbone, f"stage{first}")[0].conv1
        assert conv.in_channels == getattr(plain.backbone, f"stage{first}")[0].conv1.in_channels + 1

    def test_mask_table_round_trip_and_unknown_id(self, tmp_path) -> None:
        table = MaskTable(["a", "b"], np.array([[0.0, 1.0], [0.5, 0.25]], np.float32))
        table.save(tmp_path / "xm.npz")
        loaded = MaskTable.load(tmp_path / "xm.npz")
        torch.testing.assert_close(loaded.batch(["b", "a"]), torch.tensor([[0.5, 0.25], [0.0, 1.0]]))
        with pytest.raises(Exception, match="'c'"):
            loaded.batch(["c"])


def test_context_leakage_counts_hot_mass_on_context() -> None:
    meter = ContextLeakageMeter(threshold=0.2)
    cams = np.array([[[1.0, 0.5], [0.1, 0.3]]], np.float32)
    context = np.array([[0, 1], [1, 0]], np.uint8)
    meter.update(cams, context)
    assert meter.value() == pytest.approx(0.5 / (1.0 + 0.5 + 0.3))  # 0.1 is below the threshold
    assert ContextLeakageMeter(0.2).value() is None
    with pytest.raises(ValueError, match="disagree"):
        meter.update(cams, np.zeros((3, 3)))


def test_optimizer_groups_take_their_multipliers() -> None:
    from fastwsss.engine.training import sgd_optimizer, with_multipliers

    net = CAMNet("resnet18_quarter", 3, extra_channels=1, freeze_bn=False, detach_early=False)
    model = ContextClassifier(net, ConfounderAttention(torch.rand(3, 16)), attention_lr_mult=30.0)
    optimizer = sgd_optimizer(with_multipliers(model.param_groups(), 10.0), 0.01, 0.9, 1e-4)
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.1, 0.3])
    assert [(g["momentum"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.9, 1e-4)] * 3
    plain = sgd_optimizer(with_multipliers(ContextClassifier(net, model.attention).param_groups(), 10.0), 0.01, 0.9, 1e-4)
    assert [g["lr"] for g in plain.param_groups] == pytest.approx([0.01, 0.1, 0.1])
