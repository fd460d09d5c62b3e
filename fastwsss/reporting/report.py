"""`fastwsss report`: one self-contained HTML page about a run directory (RUNDIR/report.html).

The page holds no URL: pictures are embedded as data: URIs of small PNGs and charts are inline SVG
(fastwsss.reporting.charts), so it can be mailed, archived or opened offline. Every section is built on its
own and a missing or corrupt piece becomes a "not available: <reason>" note, because a report is most
wanted exactly when a run went wrong. Only a folder that is not a run directory at all is an error.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fastwsss.algorithms.cam_inference import cam_seed_mask, load_cam_npz
from fastwsss.config import RunConfig
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource, read_label_png
from fastwsss.data.palette import voc_palette
from fastwsss.engine.environment import flatten
from fastwsss.engine.files import atomic_path, read_jsonl
from fastwsss.engine.rundir import RunDir, open_run_dir
from fastwsss.errors import FastwsssError, one_line
from fastwsss.methods import METHODS
from fastwsss.reporting.charts import (
    CSS,
    bar_chart,
    blend_mask,
    display_size,
    img_tag,
    line_chart,
    missing_tile,
    png_data_uri,
    thumb_size,
    thumbnail,
)
from fastwsss.reporting.summary import latest_rows

THUMB = 160
"""Longest side of an overlay thumbnail, in pixels."""
STAGE_LABELS = {"cam": "CAM seeds", "ir_label": "IR labels", "pseudo": "pseudo masks", "seg": "segmentation"}

def _loss_stages(method: str) -> dict[str, str]:
    """Metric stage -> title of its loss curve, in the method's stage order (every stage that declares a
    `loss_label`), then DeepLab's `seg_train`."""
    from fastwsss.stages import all_stages

    stages = all_stages()
    order = [stages[name] for name in METHODS[method].stages] if method in METHODS else list(stages.values())
    labels = {stage.name: stage.loss_label for stage in order if stage.loss_label}
    return {**labels, "seg_train": "segmentation training"}


ROUND_STAGES = ("cam", "pseudo", "seg")
PALETTE = voc_palette(256)
NUMBER_COLUMNS = ("mIoU (%)", "best bg threshold / mIoU (%)", "context leakage (%)", "confident fraction (%)", "images")


@dataclass
class RunInfo:
    """What the report knows about a run; `config` is None when config.json cannot be read."""

    path: Path
    config: RunConfig | None
    config_text: str
    config_error: str | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    rows_error: str | None = None

    @property
    def run(self) -> RunDir:
        """The run directory, for the paths of its outputs."""
        return RunDir(self.path)

    @property
    def method(self) -> str:
        if self.config is not None:
            return self.config.method
        if self.run.rounds_dir.is_dir():
            rounded = [name for name, method in METHODS.items() if method.rounds]
            if len(rounded) == 1:
                return rounded[0]
        return "unknown"


def _reason(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, FastwsssError) else f"{type(exc).__name__}: {exc}"
    text = one_line(text)
    return text if len(text) <= 300 else text[:297] + "..."


def not_available(reason: str) -> str:
    return f'<p class="na">not available: {escape(reason)}</p>'


def _guard(build: Callable[[], str]) -> str:
    """The section's HTML, or a "not available" note: no piece of a report may stop the rest of it."""
    try:
        return build()
    except Exception as exc:
        return not_available(_reason(exc))


def load_run(rundir: str | Path) -> RunInfo:
    """The config and metrics of `rundir`; RunDirError only if it is not a run directory."""
    run = open_run_dir(rundir)
    config: RunConfig | None = None
    config_error = None
    config_text = ""
    try:
        config_text = run.config_path.read_text(encoding="utf-8", errors="replace")
        config = run.load_config()
        config_text = json.dumps(config.to_dict(), indent=2)
    except Exception as exc:  # not only FastwsssError: a JSON list or a wrong type must not stop the report
        config_error = _reason(exc)
    info = RunInfo(run.path, config, config_text, config_error)
    try:
        info.rows = [row for row in read_jsonl(run.metrics_path) if isinstance(row, dict)]
    except (OSError, UnicodeDecodeError) as exc:
        info.rows_error = f"{run.metrics_path}: {_reason(exc)}"
    return info


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if _is_number(value) else "–"


def _stage_title(row: dict[str, Any]) -> str:
    title = f"{STAGE_LABELS.get(row.get('stage'), str(row.get('stage')))} / {row.get('split')}"
    return title if row.get("round") is None else f"{title} (round {row['round']})"


def _header(info: RunInfo) -> str:
    c = info.config
    times = [r["time"] for r in info.rows if isinstance(r.get("time"), str)]
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.run.config_path.stat().st_mtime))
    items = [
        ("run directory", str(info.path)),
        ("method", info.method),
        ("preset", c.preset if c else "–"),
        ("data set", (c.data.name + (f" ({c.data.root})" if c.data.root else "")) if c else "–"),
        ("seed", str(c.seed) if c else "–"),
        ("started", started),
        ("last metric", max(times).replace("T", " ") if times else "none yet"),
        ("report written", time.strftime("%Y-%m-%d %H:%M:%S")),
    ]
    meta = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items)
    body = f'<h1>fastwsss run: {escape(info.path.name)}</h1><dl class="meta">{meta}</dl>'
    if info.config_error:
        body += not_available(f"resolved config: {info.config_error}")
    return (
        body
        + f"<details><summary>resolved config (JSON)</summary><pre>{escape(info.config_text, quote=False)}</pre></details>"
        + _environment(info.path)
    )


def _environment(path: Path) -> str:
    """The latest start's environment (versions, CPU, GPU, data fingerprint) as a folded table."""
    rows = RunDir(path).environments()
    if not rows:
        return ""
    cells = "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in flatten(rows[-1]).items())
    return f"<details><summary>environment (latest of {len(rows)} start(s))</summary><table>{cells}</table></details>"


def _scored(info: RunInfo) -> list[dict[str, Any]]:
    if info.rows_error:
        raise FastwsssError(info.rows_error)
    return latest_rows(info.rows)


def _metrics_table(info: RunInfo) -> str:
    rows = _scored(info)
    if not rows:
        return "<p>No metrics yet: no stage of this run has been scored (metrics.jsonl has no mIoU rows).</p>"
    with_round = any(r.get("round") is not None for r in rows)
    head = ["stage", "split", "method", *(["round"] if with_round else []), *NUMBER_COLUMNS]
    lines = ['<table id="miou-table"><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for r in rows:
        best = ""
        if _is_number(r.get("best_bg_threshold")):
            best = f"{r['best_bg_threshold']:.2f} / {_pct(r.get('best_miou'))}"
        cells = [STAGE_LABELS.get(r.get("stage"), str(r.get("stage"))), str(r.get("split")), str(r.get("method"))]
        cells += ["–" if r.get("round") is None else str(r["round"])] if with_round else []
        numbers = [_pct(r.get("miou")), best, *(_pct(r.get(k)) for k in ("context_leakage", "confident_fraction"))]
        numbers.append(str(r.get("images", "")))
        lines.append(
            "<tr>"
            + "".join(f"<td>{escape(x)}</td>" for x in cells)
            + "".join(f'<td class="num">{escape(x)}</td>' for x in numbers)
            + "</tr>"
        )
    return "".join(lines) + "</table>"


def _class_charts(info: RunInfo) -> str:
    rows = [r for r in _scored(info) if isinstance(r.get("per_class_iou"), list)]
    if not rows:
        return "<p>No scored outputs yet.</p>"

    def chart(row: dict[str, Any]) -> str:
        values = row["per_class_iou"]
        names = row.get("class_names") if isinstance(row.get("class_names"), list) else None
        names = names or [str(i) for i in range(len(values))]
        return _guard(lambda: bar_chart(names, values, f"{_stage_title(row)}: IoU (%), mIoU {_pct(row.get('miou'))}"))

    rounds = sorted({r.get("round") for r in rows if r.get("round") is not None})
    if not rounds:
        return '<div class="charts">' + "".join(chart(r) for r in rows) + "</div>"
    parts = []
    for t in rounds:
        charts = "".join(chart(r) for r in rows if r.get("round") == t)
        parts.append(
            f"<details{' open' if t == rounds[-1] else ''}><summary>round {escape(str(t))}</summary>"
            f'<div class="charts">{charts}</div></details>'
        )
    return "".join(parts)


def _loss_charts(info: RunInfo) -> str:
    if info.rows_error:
        raise FastwsssError(info.rows_error)
    latest: dict[tuple[Any, Any, Any], float] = {}
    for r in info.rows:
        epoch, loss = r.get("epoch"), r.get("loss")
        if _is_number(epoch) and _is_number(loss) and r.get("miou") is None:
            latest[(r.get("stage"), r.get("round"), epoch)] = float(loss)
    if not latest:
        return "<p>No training epochs logged yet.</p>"
    labels = _loss_stages(info.method)
    stages = sorted({k[0] for k in latest}, key=lambda s: (list(labels).index(s) if s in labels else 9, str(s)))
    charts = []
    for stage in stages:
        series: dict[str, list[tuple[float, float]]] = {}
        for (s, t, epoch), loss in sorted(latest.items(), key=lambda kv: (kv[0][1] or 0, kv[0][2])):
            if s == stage:
                series.setdefault("loss" if t is None else f"round {t}", []).append((float(epoch), loss))
        title = f"{labels.get(stage, str(stage))}: training loss per epoch"
        charts.append(_guard(lambda series=series, title=title: line_chart(series, title, "epoch", "mean loss")))
    return '<div class="charts">' + "".join(charts) + "</div>"


def _picture(path: Path, caption: str, max_side: int = 900) -> str:
    """A PNG file of the run as an embedded figure, or a note saying why it cannot be shown."""
    if not path.is_file():
        return not_available(f"{path}: not found")
    try:
        with Image.open(path) as image:
            image.load()
            picture = image.convert("RGB")
    except Exception as exc:
        return not_available(f"{path}: not a readable image ({_reason(exc)})")
    picture.thumbnail((max_side, max_side))
    return (
        f'<figure><img src="{png_data_uri(picture)}" alt="{escape(caption)}" width="{picture.width}" '
        f'height="{picture.height}"><figcaption>{escape(caption)}</figcaption></figure>'
    )


class NotRun(Exception):
    """The stage that writes this piece has not written it (yet)."""


def _mask_file(path: Path, num_classes: int) -> np.ndarray:
    if not path.is_file():
        raise NotRun(str(path))
    return read_label_png(path, num_classes)


def _cam_seeds(path: Path, threshold: float) -> np.ndarray:
    if not path.is_file():
        raise NotRun(str(path))
    cams = load_cam_npz(path)
    return cam_seed_mask(cams.high_res, cams.keys, threshold)


def _overlay_run(info: RunInfo, config: RunConfig) -> RunDir:
    """The final view; while a run in rounds has not reached its last round, its latest round instead."""
    final = info.run.final_view(config)
    rounds = info.run.rounds()
    return final if final.path.is_dir() or not rounds else info.run.round_view(rounds[-1])


def _overlay_row(source: SegmentationSource, image_id: str, run: RunDir, config: RunConfig, seen: set[int]) -> str:
    """One row: image | ground truth | CAM seeds | pseudo mask | seg prediction, for one image."""
    k = source.num_classes
    pieces: list[tuple[str, Callable[[], np.ndarray]]] = [
        ("ground truth", lambda: source.load_mask(image_id)),
        ("CAM seeds", lambda: _cam_seeds(run.cam_file(image_id), config.eval.cam_bg_threshold)),
        ("pseudo mask", lambda: _mask_file(run.pseudo_file(image_id), k)),
        ("seg prediction", lambda: _mask_file(run.seg_prediction_file(image_id), k)),
    ]
    masks: list[np.ndarray | str] = []
    for _, load in pieces:
        try:
            masks.append(load())
        except NotRun:
            masks.append("not run")
        except Exception as exc:
            masks.append(f"not available: {_reason(exc)}")
    try:
        image: np.ndarray | None = source.load_image(image_id)
        image_error = ""
    except Exception as exc:
        image, image_error = None, f"not available: {_reason(exc)}"
    shape = (
        image.shape[:2]
        if image is not None
        else next((m.shape for m in masks if isinstance(m, np.ndarray)), (THUMB, THUMB))
    )
    size = thumb_size(shape[0], shape[1], THUMB)
    show = display_size(size, THUMB)
    base = thumbnail(image, size) if image is not None else np.full((size[1], size[0], 3), 128, np.uint8)
    cells = [img_tag(base, show, f"image {image_id}") if image is not None else missing_tile(show, image_error)]
    for (name, _), mask in zip(pieces, masks, strict=True):
        if isinstance(mask, np.ndarray) and mask.shape != tuple(shape):
            mask = f"not available: {name} is {mask.shape[0]}x{mask.shape[1]} but the image is {shape[0]}x{shape[1]}"
        if isinstance(mask, str):
            cells.append(missing_tile(show, mask))
            continue
        seen.update(int(v) for v in np.unique(mask))
        cells.append(img_tag(blend_mask(base, mask, PALETTE), show, f"{name} {image_id}"))
    return f"<tr><td>{escape(image_id)}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _overlays(info: RunInfo, sample: int) -> str:
    if sample <= 0:
        return "<p>No sample images requested (--sample 0).</p>"
    config = info.config
    if config is None:
        raise FastwsssError(f"needs the run's config ({info.config_error})")
    source = build_source(config.data, config.data.cam_split)
    ids = source.ids
    count = min(sample, len(ids))
    if count == 0:
        return f"<p>Split {escape(source.split)} has no images.</p>"
    chosen = [ids[i * len(ids) // count] for i in range(count)]  # evenly spread, the same every time
    view = _overlay_run(info, config)
    seen: set[int] = set()
    rows = [
        _guard(lambda image_id=image_id: _overlay_row(source, image_id, view, config, seen)) for image_id in chosen
    ]
    names = ["background", *source.class_names]
    legend = "".join(
        f'<span class="swatch" style="background:rgb{tuple(int(c) for c in PALETTE[v])}"></span>'
        f"{escape(names[v] if v < len(names) else 'ignore' if v == 255 else str(v))}"
        for v in sorted(seen)
    )
    where = view.path.relative_to(info.path).as_posix() if view.path != info.path else "the run directory"
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "id",
            "image",
            "ground truth",
            f"CAM seeds (bg {config.eval.cam_bg_threshold:.2f})",
            "pseudo mask",
            "seg prediction",
        )
    )
    return (
        f"<p>{count} of {len(ids)} images of split <b>{escape(source.split)}</b>; outputs from "
        f'{escape(where)}.</p><p>{legend}</p><table class="overlay"><tr>{head}</tr>{"".join(rows)}</table>'
    )


def build_report(rundir: str | Path, sample: int = 8) -> str:
    """The report page of `rundir` as one HTML string."""
    info = load_run(rundir)
    sections = [
        ("metrics", "mIoU per stage", lambda: _metrics_table(info)),
        ("per-class", "IoU per class", lambda: _class_charts(info)),
        ("losses", "Training loss", lambda: _loss_charts(info)),
    ]
    method = METHODS.get(info.method)
    for extra in method.report_sections if method is not None else ():
        sections.append((extra.key, extra.title, lambda extra=extra: extra.build(info)))
    sections.append(("overlays", "Sample overlays", lambda: _overlays(info, sample)))
    body = "".join(
        f'<section id="{key}"><h2>{escape(title)}</h2>{_guard(build)}</section>' for key, title, build in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>fastwsss report: {escape(info.path.name)}</title><style>{CSS}</style></head>"
        f"<body><header>{_guard(lambda: _header(info))}</header><main>{body}</main>"
        "<footer><p>Written by fastwsss report; self-contained (no scripts, fonts or links).</p></footer></body></html>\n"
    )


def write_report(rundir: Path, sample: int = 8, out: Path | None = None) -> Path:
    """Write the report of `rundir` to `out` (default RUNDIR/report.html) atomically and return its path."""
    html = build_report(rundir, sample)
    path = Path(out) if out is not None else Path(rundir) / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return path
