"""Report sections that only some methods' runs have (`Method.report_sections`): one per round-based
chart and picture (CONTA), one for the global CAM (C2AM)."""

from __future__ import annotations

from fastwsss.reporting.charts import line_chart
from fastwsss.reporting.report import ROUND_STAGES, STAGE_LABELS, RunInfo, _guard, _is_number, _picture, _scored


def rounds_section(info: RunInfo) -> str:
    """mIoU per round of every scored output, and each round's confounder set."""
    series: dict[str, list[tuple[float, float]]] = {}
    for r in _scored(info):
        if r.get("stage") in ROUND_STAGES and isinstance(r.get("round"), int) and _is_number(r.get("miou")):
            name = f"{STAGE_LABELS[r['stage']]} ({r.get('split')})"
            series.setdefault(name, []).append((float(r["round"]), 100 * float(r["miou"])))
    parts = []
    if series:
        parts.append(_guard(lambda: line_chart(series, "mIoU (%) per CONTA round", "round", "mIoU (%)")))
    else:
        parts.append("<p>No round has been scored yet.</p>")
    for t in [t for t in info.run.rounds() if t >= 1]:
        picture = info.run.round_view(t).confounders_picture
        parts.append(f"<h3>round {t}: confounder set (class-wise mean masks)</h3>")
        parts.append(_guard(lambda picture=picture: _picture(picture, picture.relative_to(info.path).as_posix())))
    return "".join(parts)


def global_cam_section(info: RunInfo) -> str:
    """The picture of the global CAM per class."""
    picture = info.run.global_cam_picture
    return _picture(picture, f"{picture.relative_to(info.path).as_posix()}: the global CAM per class")
