"""Colour-affinity refinement (fastwsss.algorithms.colour_refine) against a pixel-by-pixel numpy reference, its effect
at a colour edge, and its use in the pseudo stage (`pseudo.refine_iterations`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fastwsss.algorithms.colour_refine import refine_maps
from fastwsss.algorithms.seg_inference import predict_mask
from fastwsss.config import get_preset, validate
from fastwsss.errors import ConfigError
from fastwsss.stages.pseudo import walk_to_mask


def refine_maps_reference(maps: np.ndarray, image: np.ndarray, iterations: int, dilations: tuple[int, ...],
                          scale: float = 0.3) -> np.ndarray:  # fmt: skip
    """The refinement written per pixel: softmax over the neighbours of -(|dI| / (sigma + 1e-8) / scale)^2,
    averaged over the colour channels; sigma the (n - 1) standard deviation of the neighbours' colours."""
    height, width = image.shape[:2]
    rgb = image.astype(np.float64) / 255.0
    offsets = [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d) if dy or dx]

    def at(y: int, x: int) -> tuple[int, int]:
        return min(max(y, 0), height - 1), min(max(x, 0), width - 1)

    weights = np.zeros((height, width, len(offsets)))
    for y in range(height):
        for x in range(width):
            colours = np.array([rgb[at(y + dy, x + dx)] for dy, dx in offsets])
            sigma = colours.std(axis=0, ddof=1)
            logits = (-((np.abs(colours - rgb[y, x]) / (sigma + 1e-8) / scale) ** 2)).mean(axis=1)
            weights[y, x] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    out = maps.astype(np.float64)
    for _ in range(iterations):
        out = np.stack([
            np.array([[sum(w * m[at(y + dy, x + dx)] for w, (dy, dx) in zip(weights[y, x], offsets, strict=True))
                       for x in range(width)] for y in range(height)])
            for m in out
        ])  # fmt: skip
    return out


@pytest.mark.parametrize(("size", "dilations", "iterations"), [((7, 9), (1,), 1), ((9, 6), (1, 2), 3), ((5, 5), (1, 4), 2)])
def test_refine_maps_equals_the_reference(size: tuple[int, int], dilations: tuple[int, ...], iterations: int) -> None:
    rng = np.random.default_rng(sum(size) + iterations)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    image[: size[0] // 2, : size[1] // 2] = 40  # a flat patch: sigma 0 there, weights from the 1e-8 alone
    maps = rng.random((2, *size)).astype(np.float32)
    got = refine_maps(torch.from_numpy(maps), image, iterations, dilations).numpy()
    np.testing.assert_allclose(got, refine_maps_reference(maps, image, iterations, dilations), rtol=1e-4, atol=1e-5)


def test_zero_iterations_and_no_maps_leave_the_maps_unchanged() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    maps = torch.rand(2, 4, 4)
    assert refine_maps(maps, image, 0) is maps
    assert refine_maps(torch.zeros(0, 4, 4), image, 5).shape == (0, 4, 4)
    with pytest.raises(ValueError, match="differ in size"):
        refine_maps(maps, np.zeros((5, 4, 3), np.uint8), 1)


def test_a_map_that_spills_over_a_colour_edge_is_pulled_back() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = (200, 40, 40)  # the object: left half, a flat colour; the scene: right half, noise
    image[:, 16:] = np.random.default_rng(0).integers(0, 120, (32, 16, 3))
    blob = np.zeros((1, 32, 32), np.float32)
    blob[0, :, :22] = 1.0  # spills 6 columns into the scene
    refined = refine_maps(torch.from_numpy(blob), image, 10).numpy()[0]
    assert refined.min() >= 0.0 and refined.max() <= 1.0 + 1e-6  # convex averages stay in range
    assert refined[:, :16].min() > 0.99  # the flat object keeps its value up to its edge
    assert refined[:, 16:22].mean() < 0.6  # the spill into the scene loses almost half of it


def test_walk_to_mask_refines_only_when_asked() -> None:
    rw = torch.zeros(1, 8, 8)
    rw[0, :, :6] = 1.0
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, :16] = 255
    keys = np.array([2])
    plain = walk_to_mask(rw, keys, (32, 32), 0.25, "otsu")
    assert np.array_equal(plain, walk_to_mask(rw, keys, (32, 32), 0.25, "otsu", image, 0))
    refined = walk_to_mask(rw, keys, (32, 32), 0.25, "otsu", image, 10)
    assert (refined == 3).sum() < (plain == 3).sum() and refined[:, :14].min() == 3


def test_presets_and_validation() -> None:
    assert get_preset("voc").pseudo.refine_iterations == 0 and get_preset("coco").pseudo.refine_iterations == 0
    assert validate(get_preset("synthetic")).pseudo.refine_iterations > 0
    config = get_preset("tiny")
    for changes, setting in (({"refine_iterations": -1}, "pseudo.refine_iterations"),
                             ({"refine_dilations": ()}, "pseudo.refine_dilations"),
                             ({"refine_dilations": (0, 2)}, "pseudo.refine_dilations")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"^{setting}: "):
            validate(dataclasses.replace(config, pseudo=dataclasses.replace(config.pseudo, **changes)))


class SpillingModel(torch.nn.Module):
    """Class 1 sure over the left 16 columns, unsure over the next 6 (a spill), background sure elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(images.shape[0], 2, *images.shape[-2:])
        logits[:, 1] = -4.0
        logits[:, 1, :, :22] = 1.0
        logits[:, 1, :, :16] = 4.0
        return logits


def test_predict_mask_refines_deeplab_softmax_only_when_asked() -> None:
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, :16] = (200, 40, 40)  # the object
    image[:, 16:] = (20, 90, 160)  # the scene, another flat colour
    raw = predict_mask(SpillingModel(), image, "cpu")
    refined = predict_mask(SpillingModel(), image, "cpu", refine_iterations=10)
    assert (raw == 1).sum() == 32 * 22
    assert (refined[:, :16] == 1).all() and (refined == 1).sum() == 32 * 16  # back to the colour edge


def test_seg_refinement_settings_are_checked() -> None:
    config = get_preset("tiny")
    assert validate(get_preset("synthetic")).seg.refine_iterations == validate(get_preset("synthetic")).pseudo.refine_iterations
    for changes, message in (({"refine_iterations": 101}, "0..100"), ({"refine_iterations": 5, "crf": True}, "not both")):
        with pytest.raises(ConfigError, match=rf"^seg\.refine_iterations: .*{message}"):
            validate(dataclasses.replace(config, seg=dataclasses.replace(config.seg, **changes)))


def test_a_uniform_region_without_a_confident_value_is_flooded() -> None:
    """The limitation the module states: the averaging does not preserve mass. A class sure over its object
    and a 2-pixel spill takes over a flat scene where both classes are otherwise equally likely."""
    image = np.zeros((32, 48, 3), np.uint8)
    image[:, :16] = (200, 40, 40)
    image[:, 16:] = (20, 90, 160)
    logits = torch.zeros(2, 32, 48)
    logits[1, :, :18] = 4.0
    refined = refine_maps(torch.softmax(logits, dim=0), image, 10)
    assert (logits.argmax(dim=0) == 1).sum() == 32 * 18
    assert (refined.argmax(dim=0) == 1).all()
