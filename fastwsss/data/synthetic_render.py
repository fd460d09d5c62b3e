"""One synthetic image: which classes, which scenes, where, and the pixels (image, mask, context map).

The confounders are set here. In the confounded splits (train, val) an object's context scene is its
class's preferred scene with probability `context_prob`, a class's partner is added with probability
`cooccur_prob`, and an object's part takes its scene's colour with probability `part_context_prob`.
In the debiased split scene and part colour are drawn independently of the class and nothing is forced.

Every random decision is drawn whether or not it is used, in a fixed order, so changing one probability
changes only the decisions it governs (the same seed keeps classes, sizes and positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fastwsss.config import SynthConfig
from fastwsss.data.synthetic_draw import (
    CLASSES,
    SCENES,
    Placement,
    context_region,
    draw_object,
    neutral_background,
    scene_texture,
    shape_fill,
)

Rng = np.random.Generator
CANDIDATES = 24  # centre proposals per object; the first far enough from the others wins


@dataclass
class ObjectDraw:
    """The non-geometric choices for one object."""

    cls: int
    scene: int
    part_scene: int  # -1: a neutral grey part
    primary: bool
    forced_partner: bool


def sample_objects(rng: Rng, cfg: SynthConfig, debiased: bool) -> list[ObjectDraw]:
    """Classes, scenes and part colours for one image (see the module docstring for the rules)."""
    num_classes, num_scenes = len(CLASSES), len(SCENES)
    target = int(rng.integers(1, cfg.max_objects + 1))
    primary = int(rng.integers(num_classes))
    add_partner = bool(rng.random() < cfg.cooccur_prob) and not debiased and cfg.max_objects >= 2
    order = [int(k) for k in rng.permutation(num_classes)]
    classes = [primary]
    forced = [False]
    if add_partner:
        classes.append(CLASSES[primary].partner)
        forced.append(True)
    for k in order:
        if len(classes) >= target:
            break
        if k not in classes:
            classes.append(k)
            forced.append(False)
    objects = []
    for index, k in enumerate(classes):
        u_ctx, u_part = rng.random(2)
        other = int(rng.integers(num_scenes - 1))
        free_scene, free_part = (int(x) for x in rng.integers(num_scenes, size=2))
        preferred = CLASSES[k].scene
        if debiased:
            scene, part_scene = free_scene, free_part
        else:
            scene = preferred if u_ctx < cfg.context_prob else other + (other >= preferred)
            part_scene = scene if u_part < cfg.part_context_prob else -1
        objects.append(ObjectDraw(k, scene, part_scene, index == 0, forced[index]))
    return objects


def _place(rng: Rng, size: int, objects: list[ObjectDraw]) -> list[Placement]:
    """Sizes, rotations and centres; centres are spread out so overlaps stay partial."""
    n = len(objects)
    lo, hi = 0.13 / n**0.6, 0.28 / n**0.7
    placed: list[Placement] = []
    for obj in objects:
        fraction = rng.uniform(lo, hi)
        radius = min(np.sqrt(fraction * size * size / shape_fill(CLASSES[obj.cls].shape)), 0.46 * size)
        margin = min(0.6 * radius, size / 2.0)
        cands = rng.uniform(margin, size - margin, (CANDIDATES, 2))
        if placed:
            centres = np.array([[p.cx, p.cy] for p in placed])
            radii = np.array([p.radius for p in placed])
            dist = np.linalg.norm(cands[:, None, :] - centres[None, :, :], axis=2)
            score = (dist / (radius + radii[None, :])).min(axis=1)
            good = np.flatnonzero(score >= 0.85)
            pick = int(good[0]) if good.size else int(np.argmax(score))
        else:
            pick = 0
        angle, ctx_scale, ctx_aspect, ctx_angle = rng.uniform((0, 1.35, 0.75, 0), (2 * np.pi, 1.7, 1.3, np.pi))
        placed.append(
            Placement(
                cx=float(cands[pick, 0]),
                cy=float(cands[pick, 1]),
                radius=float(radius),
                angle=float(angle),
                ctx_radius=float(radius * ctx_scale),
                ctx_aspect=float(ctx_aspect),
                ctx_angle=float(ctx_angle),
            )
        )
    return placed


def _part_color(rng: Rng, part_scene: int) -> np.ndarray:
    jitter = rng.normal(0.0, 6.0, 3)
    if part_scene < 0:
        return np.full(3, rng.uniform(95, 165)) + jitter
    return np.asarray(SCENES[part_scene].color, dtype=np.float64) + jitter


@dataclass
class Rendered:
    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W uint8, 0 = background, k + 1 = class k
    context: np.ndarray  # H x W uint8, 0 = none, s + 1 = context region of scene s
    objects: list[dict[str, Any]]


_GRIDS: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of a size x size image, cached."""
    if size not in _GRIDS:
        axis = np.arange(size, dtype=np.float32) + 0.5
        _GRIDS[size] = (np.broadcast_to(axis[None, :], (size, size)), np.broadcast_to(axis[:, None], (size, size)))
    return _GRIDS[size]


def render_image(rng: Rng, cfg: SynthConfig, debiased: bool) -> Rendered:
    """Sample and draw one image: neutral clutter, then every context blob, then every object on top."""
    size = cfg.size
    objects = sample_objects(rng, cfg, debiased)
    places = _place(rng, size, objects)
    xx, yy = _grid(size)
    ux, uy = xx * (96.0 / size), yy * (96.0 / size)
    canvas = neutral_background(size, rng)
    context = np.zeros((size, size), dtype=np.uint8)
    for obj, place in zip(objects, places, strict=True):
        wobble = rng.uniform((0.0, 0.0, 0.0, 0.0), (0.12, 2 * np.pi, 0.08, 2 * np.pi))
        where, region = context_region(xx, yy, place, wobble)
        canvas[where][region] = scene_texture(obj.scene, ux[where], uy[where], rng)[region]
        context[where][region] = obj.scene + 1
    mask = np.zeros((size, size), dtype=np.uint8)
    areas = []
    for obj, place in zip(objects, places, strict=True):
        shape = draw_object(canvas, xx, yy, CLASSES[obj.cls], place, _part_color(rng, obj.part_scene), rng)
        mask[shape] = obj.cls + 1
        areas.append(int(shape.sum()))
    context[mask > 0] = 0
    canvas += 3.0 * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    records = []
    for obj, place, area in zip(objects, places, areas, strict=True):
        records.append(
            {
                "class": obj.cls,
                "label": obj.cls + 1,
                "scene": obj.scene,
                "preferred_scene": CLASSES[obj.cls].scene,
                "part_scene": obj.part_scene,
                "primary": obj.primary,
                "forced_partner": obj.forced_partner,
                "cx": round(place.cx, 2),
                "cy": round(place.cy, 2),
                "radius": round(place.radius, 2),
                "angle": round(place.angle, 3),
                "area_px": area,
                "visible_px": int((mask == obj.cls + 1).sum()),
            }
        )
    return Rendered(image, mask, context, records)
