"""Inline SVG charts and small embedded PNGs for the HTML report: no script, font, file or network needed.

The SVG has no xmlns attribute: inline SVG in HTML5 needs none, and the report must hold no URL at all.
Every number a chart shows is also written as text (bar labels, point tooltips, data-* attributes), so a
reader without colour vision and a test both see the values.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from html import escape

import numpy as np
from PIL import Image

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1150px;padding:0 16px;color:#222}
h1{font-size:22px;margin:16px 0 4px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:2px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f4f4}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:8px 0}dl.meta dt{font-weight:600}
dl.meta dd{margin:0}pre{background:#f7f7f7;padding:8px;overflow:auto;max-height:480px;font-size:12px}
.na{color:#a33;font-style:italic}.charts{display:flex;flex-wrap:wrap;gap:12px}
svg.chart{background:#fff;border:1px solid #eee;font-size:11px}svg .title{font-weight:600;font-size:12px}
svg .track{fill:#f0f0f0}svg .bar{fill:#0072B2}svg .grid{stroke:#eee}svg .axis{stroke:#888}svg text{fill:#222}
.overlay td{padding:2px;vertical-align:top}.overlay img{display:block}
.tile.missing{background:#bbb;color:#333;display:flex;align-items:center;justify-content:center;text-align:center;
font-size:11px;overflow:hidden;word-break:break-all;padding:2px;box-sizing:border-box}
.swatch{display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;vertical-align:-2px;border:1px solid #888}
figure{margin:8px 0}figcaption{font-size:12px;color:#555}
"""

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
SERIES_COLORS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def _num(value: float) -> str:
    """Coordinates with at most one decimal keep the SVG short."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi] (steps of 1, 2 or 5 times a power of ten)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = [math.floor(lo / step) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _tick_label(value: float) -> str:
    return f"{value:g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def bar_chart(
    names: Sequence[str], values: Sequence[float | None], title: str, scale: float = 100.0, unit: str = "%"
) -> str:
    """Horizontal bars of `values` (0..1, None = not defined) times `scale`, one row per name."""
    label_w, bar_w, row_h, top = 120, 300, 16, 24
    width, height = label_w + bar_w + 60, top + row_h * len(names) + 8
    parts = [
        f'<svg class="chart bars" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="4" y="15" class="title">{escape(title)}</text>',
    ]
    for i, (name, value) in enumerate(zip(names, values, strict=False)):
        y = top + i * row_h
        parts.append(f'<text x="{label_w - 6}" y="{y + 11}" text-anchor="end">{escape(str(name)[:18])}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{bar_w}" height="{row_h - 4}" class="track"/>')
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            parts.append(f'<text x="{label_w + 4}" y="{y + 11}" class="na">n/a</text>')
            continue
        shown = value * scale
        length = max(0.0, min(1.0, value)) * bar_w
        parts.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{_num(length)}" height="{row_h - 4}" class="bar">'
            f"<title>{escape(str(name))}: {shown:.1f}{unit}</title></rect>"
        )
        parts.append(f'<text x="{_num(label_w + length + 4)}" y="{y + 11}" class="value">{shown:.1f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    x_label: str,
    y_label: str,
    y_zero: bool = True,
    integer_x: bool = True,
) -> str:
    """Lines with a dot per point for each named series of (x, y) points; a legend below the plot.

    Each dot is `<circle class="pt" data-series=.. data-x=.. data-y=..>` with a tooltip of its value.
    `y_zero` starts the y axis at 0 (mIoU, losses); otherwise it starts at the smallest value.
    """
    points = [(x, y) for pts in series.values() for x, y in pts if math.isfinite(x) and math.isfinite(y)]
    left, right, top, plot_h, plot_w = 56, 16, 26, 180, 440
    legend_rows = (len(series) + 2) // 3
    width, height = left + plot_w + right, top + plot_h + 40 + 16 * legend_rows
    parts = [
        f'<svg class="chart lines" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<text x="4" y="15" class="title">{escape(title)}</text>',
    ]
    if not points:
        parts.append(f'<text x="{left}" y="{top + plot_h / 2}" class="na">no data points</text></svg>')
        return "".join(parts)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = nice_ticks(min(0.0, min(ys)) if y_zero else min(ys), max(ys))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    for tick in y_ticks:
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{_num(py(tick))}" y2="{_num(py(tick))}" class="grid"/>'
        )
        parts.append(f'<text x="{left - 4}" y="{_num(py(tick) + 4)}" text-anchor="end">{_tick_label(tick)}</text>')
    x_ticks = sorted({x for x in xs}) if integer_x and len(set(xs)) <= 12 else nice_ticks(x_lo, x_hi)
    for tick in x_ticks:
        if x_lo <= tick <= x_hi:
            parts.append(
                f'<text x="{_num(px(tick))}" y="{top + plot_h + 14}" text-anchor="middle">{_tick_label(tick)}</text>'
            )
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}" class="axis"/>')
    parts.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" class="axis"/>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 30}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(
        f'<text x="12" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {top + plot_h / 2})">{escape(y_label)}</text>'
    )
    for k, (name, pts) in enumerate(series.items()):
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        clean = sorted((x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y))
        if len(clean) > 1:
            path = " ".join(f"{_num(px(x))},{_num(py(y))}" for x, y in clean)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in clean:
            parts.append(
                f'<circle class="pt" data-series="{escape(name)}" data-x="{x:g}" data-y="{y:.4g}" cx="{_num(px(x))}" '
                f'cy="{_num(py(y))}" r="3" fill="{color}"><title>{escape(name)}: {x:g} → {y:.4g}</title></circle>'
            )
        lx, ly = left + (k % 3) * (plot_w // 3), top + plot_h + 46 + 16 * (k // 3)
        parts.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="{ly}">{escape(name[:28])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def png_data_uri(image: Image.Image | np.ndarray, colors: int | None = 64) -> str:
    """A data:image/png;base64 URI of a PIL image or an (H, W[, 3]) uint8 array.

    RGB pictures are reduced to `colors` palette colours: a quarter of the bytes, no visible loss at thumbnail size.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if colors is not None and image.mode == "RGB":
        image = image.quantize(colors)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def thumb_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(width, height) of a thumbnail whose longest side is at most `max_side` (never enlarged)."""
    scale = min(1.0, max_side / max(height, width, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def thumbnail(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image resized to `size` = (width, height)."""
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def blend_mask(base: np.ndarray, mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Class colours of `mask` over the thumbnail `base`; the mask is resized (nearest) to the thumbnail.

    Background is only darkened, so the objects stand out; ignore (255) gets the palette's void colour.
    """
    height, width = base.shape[:2]
    small = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((width, height), Image.Resampling.NEAREST))
    colour = palette[small].astype(np.float32)
    image = base.astype(np.float32)
    blended = np.where((small == 0)[..., None], image * 0.55, image * 0.4 + colour * 0.6)
    return blended.clip(0, 255).astype(np.uint8)


def display_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """On-page size of a thumbnail: small pictures (64 px synthetic scenes) are shown up to twice as large."""
    factor = max(1, min(2, max_side // max(size)))
    return size[0] * factor, size[1] * factor


def img_tag(pixels: np.ndarray, display: tuple[int, int], alt: str) -> str:
    return f'<img src="{png_data_uri(pixels)}" width="{display[0]}" height="{display[1]}" alt="{escape(alt)}">'


def missing_tile(size: tuple[int, int], text: str) -> str:
    """A grey placeholder of the thumbnail size holding `text` (e.g. "not run")."""
    return (
        f'<div class="tile missing" style="width:{size[0]}px;height:{size[1]}px" title="{escape(text)}">'
        f"{escape(text)}</div>"
    )
