"""Vectorised drawing for the synthetic confounded scenes: shapes, object textures, scene textures.

Everything is computed on whole coordinate grids with numpy (implicit shape equations, periodic
patterns), never pixel by pixel. Texture scales are given in units of a 96-pixel image so that a
64-pixel set looks like a downscaled 96-pixel one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray
Rng = np.random.Generator


@dataclass(frozen=True)
class ObjectClass:
    name: str
    shape: str
    color: tuple[int, int, int]
    texture: str
    part: str  # "cap" (top of the shape), "band" (middle strip) or "core" (central disc)
    scene: int  # index of the preferred scene in SCENES
    partner: int  # index of the co-occurring class in CLASSES


@dataclass(frozen=True)
class Scene:
    name: str
    color: tuple[int, int, int]  # signature colour, also used for object parts that follow the scene


SCENES: tuple[Scene, ...] = (
    Scene("grass", (70, 160, 50)),
    Scene("sand", (222, 196, 140)),
    Scene("water", (35, 85, 175)),
    Scene("snow", (244, 246, 252)),
    Scene("sky", (130, 190, 245)),
    Scene("road", (62, 62, 68)),
    Scene("brick", (165, 70, 48)),
    Scene("forest", (28, 84, 38)),
    Scene("night", (18, 22, 62)),
    Scene("ice", (180, 228, 238)),
)

CLASSES: tuple[ObjectClass, ...] = (
    ObjectClass("disc", "disc", (220, 40, 40), "solid", "core", 0, 1),
    ObjectClass("square", "square", (40, 70, 220), "stripes", "cap", 1, 0),
    ObjectClass("triangle", "triangle", (240, 212, 40), "dots", "cap", 2, 3),
    ObjectClass("star", "star", (60, 200, 70), "checks", "core", 3, 2),
    ObjectClass("cross", "cross", (248, 130, 20), "gradient", "core", 4, 5),
    ObjectClass("ring", "ring", (145, 50, 195), "zigzag", "band", 5, 4),
    ObjectClass("diamond", "diamond", (30, 205, 210), "rings", "band", 6, 7),
    ObjectClass("hexagon", "hexagon", (245, 110, 185), "hatch", "core", 7, 6),
    ObjectClass("crescent", "crescent", (238, 236, 225), "waves", "cap", 8, 9),
    ObjectClass("ellipse", "ellipse", (135, 82, 40), "grid", "band", 9, 8),
)


def _polygon(u: Array, v: Array, sides: int, inradius: float, offset: float) -> Array:
    """Regular polygon as the intersection of `sides` half-planes (outward normals every 360/sides degrees)."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(sides):
        a = offset + 2.0 * np.pi * k / sides
        inside &= u * np.cos(a) + v * np.sin(a) <= inradius
    return inside


def _star(u: Array, v: Array) -> Array:
    theta = np.arctan2(v, u) + np.pi / 2.0
    t = np.mod(theta * 5.0 / (2.0 * np.pi), 1.0)
    spike = 1.0 - np.abs(2.0 * t - 1.0)  # 0 at the tips, 1 half-way between them
    return np.hypot(u, v) <= 1.0 - 0.55 * spike


SHAPES: dict[str, Callable[[Array, Array], Array]] = {
    "disc": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.78,
    "triangle": lambda u, v: _polygon(u, v, 3, 0.55, np.pi / 2.0),
    "star": _star,
    "cross": lambda u, v: ((np.abs(u) <= 0.32) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.32) & (np.abs(u) <= 0.95)),
    "ring": lambda u, v: np.abs(u * u + v * v - 0.62) <= 0.38,
    "diamond": lambda u, v: np.abs(u) / 0.62 + np.abs(v) <= 1.0,
    "hexagon": lambda u, v: _polygon(u, v, 6, 0.87, 0.0),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.5) ** 2 + (v + 0.1) ** 2 > 0.72),
    "ellipse": lambda u, v: u * u + (v / 0.58) ** 2 <= 1.0,
}


def _frac(x: Array) -> Array:
    return x - np.floor(x)


TEXTURES: dict[str, Callable[[Array, Array, float], Array]] = {
    "solid": lambda u, v, p: 0.25 + 0.15 * (u + v),
    "stripes": lambda u, v, p: (np.sin(u * 3.2 * np.pi + p) > 0).astype(np.float32),
    "dots": lambda u, v, p: ((_frac(u * 2.4 + p) - 0.5) ** 2 + (_frac(v * 2.4) - 0.5) ** 2 < 0.08).astype(np.float32),
    "checks": lambda u, v, p: np.mod(np.floor(u * 2.6 + p) + np.floor(v * 2.6), 2.0),
    "gradient": lambda u, v, p: np.clip((u + 1.0) * 0.5, 0.0, 1.0),
    "zigzag": lambda u, v, p: (np.sin(v * 4.0 * np.pi + 2.5 * np.abs(_frac(u * 2.0 + p) - 0.5) * 2 * np.pi) > 0).astype(
        np.float32
    ),
    "rings": lambda u, v, p: (np.sin(np.hypot(u, v) * 4.5 * np.pi + p) > 0).astype(np.float32),
    "hatch": lambda u, v, p: (
        (np.sin((u + v) * 3.0 * np.pi + p) > 0.55) | (np.sin((u - v) * 3.0 * np.pi) > 0.55)
    ).astype(np.float32),
    "waves": lambda u, v, p: (np.sin(u * 3.5 * np.pi + 1.8 * np.sin(v * 2.5 * np.pi + p)) > 0).astype(np.float32),
    "grid": lambda u, v, p: ((_frac(u * 2.5 + p) < 0.2) | (_frac(v * 2.5) < 0.2)).astype(np.float32),
}


def _rgb(color: tuple[int, int, int] | Array) -> Array:
    return np.asarray(color, dtype=np.float32).reshape(1, 1, 3)


def _blobs(xx: Array, yy: Array, rng: Rng, count: int, radius: tuple[float, float]) -> Array:
    """Sum of `count` random Gaussian bumps, clipped to [0, 1]."""
    out = np.zeros(xx.shape, dtype=np.float32)
    cx = rng.uniform(-10, 106, count)
    cy = rng.uniform(-10, 106, count)
    rad = rng.uniform(radius[0], radius[1], count)
    for x0, y0, r0 in zip(cx, cy, rad, strict=True):
        out += np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2.0 * r0 * r0))
    return np.clip(out, 0.0, 1.0)


def _mix(base: Array, other: tuple[int, int, int], weight: Array) -> Array:
    return base + (_rgb(other) - base) * weight[..., None]


def scene_texture(index: int, xx: Array, yy: Array, rng: Rng) -> Array:
    """The full-frame RGB texture (float32, H x W x 3) of scene `index`; xx, yy in 96-pixel units."""
    name = SCENES[index].name
    base = np.broadcast_to(_rgb(SCENES[index].color), xx.shape + (3,)).astype(np.float32)
    ph = rng.uniform(0, 2 * np.pi, 3)
    if name == "grass":
        blades = np.sin(xx * 2.1 + 3.0 * np.sin(yy * 0.21 + ph[0])) * np.sin(xx * 0.9 + ph[1])
        return _mix(base, (150, 215, 70), np.clip(blades, 0, 1) * 0.8)
    if name == "sand":
        dunes = 0.5 + 0.5 * np.sin(yy * 0.35 + 2.0 * np.sin(xx * 0.12 + ph[0]))
        speck = (rng.random(xx.shape, dtype=np.float32) < 0.12).astype(np.float32)
        return _mix(base, (168, 130, 80), dunes * 0.35 + speck * 0.5)
    if name == "water":
        waves = np.sin(yy * 0.9 + 1.6 * np.sin(xx * 0.22 + ph[0]))
        return _mix(base, (120, 190, 245), np.clip(waves - 0.45, 0, 1) * 1.6)
    if name == "snow":
        flakes = (rng.random(xx.shape, dtype=np.float32) < 0.06).astype(np.float32)
        drift = 0.5 + 0.5 * np.sin(xx * 0.1 + yy * 0.07 + ph[0])
        return _mix(base, (150, 168, 205), flakes * 0.7 + drift * 0.15)
    if name == "sky":
        clouds = _blobs(xx, yy, rng, 4, (6.0, 11.0))
        return _mix(_mix(base, (70, 130, 220), yy / 120.0), (255, 255, 255), clouds * 0.9)
    if name == "road":
        t = xx * np.cos(ph[0]) + yy * np.sin(ph[0])
        s = -xx * np.sin(ph[0]) + yy * np.cos(ph[0])
        dash = (np.abs(_frac(t / 24.0 + ph[1]) - 0.5) < 0.08) & (_frac(s / 14.0) < 0.6)
        grit = rng.random(xx.shape, dtype=np.float32) * 0.25
        return _mix(_mix(base, (30, 30, 34), grit), (250, 215, 40), dash.astype(np.float32))
    if name == "brick":
        row = np.floor(yy / 7.0 + ph[0])
        mortar = (_frac(yy / 7.0 + ph[0]) < 0.2) | (_frac(xx / 14.0 + 0.5 * np.mod(row, 2.0) + ph[1]) < 0.1)
        return _mix(base, (215, 205, 190), mortar.astype(np.float32) * 0.85)
    if name == "forest":
        leaves = 0.5 + 0.5 * np.sin(xx * 0.7 + ph[0]) * np.sin(yy * 0.8 + 1.5 * np.sin(xx * 0.3 + ph[1]))
        return _mix(base, (80, 150, 55), np.clip(leaves - 0.35, 0, 1) * 1.2)
    if name == "night":
        stars = (rng.random(xx.shape, dtype=np.float32) < 0.035).astype(np.float32)
        return _mix(base, (250, 250, 210), stars)
    if name == "ice":
        cracks = np.abs(np.sin((xx + 0.6 * yy) * 0.25 + 2.5 * np.sin(yy * 0.09 + ph[0])))
        cracks2 = np.abs(np.sin((yy - 0.4 * xx) * 0.21 + ph[1]))
        return _mix(base, (95, 150, 175), ((cracks < 0.12) | (cracks2 < 0.08)).astype(np.float32) * 0.8)
    raise ValueError(f"unknown scene {name!r}")


def neutral_background(size: int, rng: Rng) -> Array:
    """A desaturated grey-ish clutter of random rectangles and faint lines: no scene, no object."""
    level = rng.uniform(110, 150)
    tint = rng.uniform(-8, 8, 3)
    out = np.empty((size, size, 3), dtype=np.float32)
    out[...] = _rgb(level + tint)
    unit = size / 96.0
    for _ in range(int(rng.integers(6, 12))):
        x0, y0 = (int(round(a * unit)) for a in rng.uniform(-10, 96, 2))
        w, h = (max(1, int(round(a * unit))) for a in rng.uniform(8, 40, 2))
        shade = level + rng.uniform(-35, 35) + rng.uniform(-6, 6, 3)
        out[max(y0, 0) : max(y0 + h, 0), max(x0, 0) : max(x0 + w, 0)] = shade
    angle = rng.uniform(0, np.pi)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / unit
    proj = (axis[None, :] * np.cos(angle) + axis[:, None] * np.sin(angle)) / rng.uniform(9, 16)
    out[np.abs(_frac(proj) - 0.5) < 0.04] *= 0.85
    return out


def box(cx: float, cy: float, extent: float, size: int) -> tuple[slice, slice]:
    """Rows and columns of the square of half-width `extent` around (cx, cy), clipped to the image."""
    y0, y1 = max(int(cy - extent) - 1, 0), min(int(cy + extent) + 2, size)
    x0, x1 = max(int(cx - extent) - 1, 0), min(int(cx + extent) + 2, size)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


@dataclass
class Placement:
    """Where one object and its context blob go, in pixels."""

    cx: float
    cy: float
    radius: float
    angle: float
    ctx_radius: float
    ctx_aspect: float
    ctx_angle: float


def local_coords(xx: Array, yy: Array, cx: float, cy: float, radius: float, angle: float) -> tuple[Array, Array]:
    """Grid coordinates rotated by `angle` around (cx, cy) and divided by `radius`."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xx - cx, yy - cy
    return (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius


def context_region(xx: Array, yy: Array, place: Placement, wobble: Array) -> tuple[tuple[slice, slice], Array]:
    """A wobbly elliptical blob around the object, clearly larger than it, as (box, mask inside the box)."""
    extent = place.ctx_radius * (1.0 + wobble[0] + wobble[2]) * max(1.0, 1.0 / place.ctx_aspect)
    where = box(place.cx, place.cy, extent, xx.shape[0])
    u, v = local_coords(xx[where], yy[where], place.cx, place.cy, place.ctx_radius, place.ctx_angle)
    v = v * place.ctx_aspect
    theta = np.arctan2(v, u)
    edge = 1.0 + wobble[0] * np.sin(3 * theta + wobble[1]) + wobble[2] * np.sin(5 * theta + wobble[3])
    return where, u * u + v * v <= edge * edge


def part_region(kind: str, u: Array, v: Array) -> Array:
    if kind == "cap":
        return v <= -0.42
    if kind == "band":
        return np.abs(v) <= 0.17
    return u * u + v * v <= 0.38**2


def draw_object(
    canvas: Array, xx: Array, yy: Array, cls: ObjectClass, place: Placement, part_color: Array, rng: Rng
) -> Array:
    """Paint one object onto `canvas` (in place); return its full-size pixel mask."""
    where = box(place.cx, place.cy, place.radius, xx.shape[0])
    u, v = local_coords(xx[where], yy[where], place.cx, place.cy, place.radius, place.angle)
    shape = SHAPES[cls.shape](u, v)
    color = _rgb(cls.color) * rng.uniform(0.88, 1.08) + rng.normal(0.0, 10.0, 3).astype(np.float32)
    pattern = TEXTURES[cls.texture](u, v, float(rng.uniform(0, 2 * np.pi))).astype(np.float32)
    texture = color * (1.0 - 0.42 * pattern[..., None])
    part = shape & part_region(cls.part, u, v)
    local = canvas[where]
    local[shape] = texture[shape]
    local[part] = part_color
    full = np.zeros(xx.shape, dtype=bool)
    full[where] = shape
    return full


def shape_fill(shape: str) -> float:
    """Area of a shape in units of radius squared (estimated on a fine grid, cached)."""
    if shape not in _FILL:
        axis = np.linspace(-1.0, 1.0, 401, dtype=np.float32)
        u, v = np.meshgrid(axis, axis)
        _FILL[shape] = float(SHAPES[shape](u, v).mean()) * 4.0
    return _FILL[shape]


_FILL: dict[str, float] = {}
