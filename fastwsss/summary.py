"""Tables of a run's metrics for the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table

STAGE_ORDER = {"cam": 0, "ir_label": 1, "pseudo": 2, "seg": 3}


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most recent scored row per (stage, split, round), in pipeline order."""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if row.get("miou") is None:
            continue
        latest[(row.get("stage"), row.get("split"), row.get("round"))] = row
    return sorted(latest.values(), key=lambda r: (r.get("round") or 0, STAGE_ORDER.get(r.get("stage"), 9), r.get("split", "")))


def percent(value: Any) -> str:
    """A fraction as a percentage with one decimal; '-' for None or NaN."""
    return "-" if value is None or value != value else f"{100 * value:.1f}"


def metrics_table(rows: list[dict[str, Any]], title: str = "mIoU (%)") -> Table:
    table = Table(title=title)
    for column in ("stage", "split", "method", "round", "mIoU", "best thr / mIoU", "images"):
        table.add_column(column, justify="right" if column in ("mIoU", "images") else "left")
    for row in latest_rows(rows):
        best = ""
        if row.get("best_miou") is not None:
            best = f"{row['best_bg_threshold']:.2f} / {percent(row['best_miou'])}"
        table.add_row(
            str(row.get("stage")), str(row.get("split")), str(row.get("method")),
            "-" if row.get("round") is None else str(row["round"]), percent(row.get("miou")), best, str(row.get("images", "")),
        )
    return table


def per_class_table(row: dict[str, Any]) -> Table:
    names = row.get("class_names") or [str(i) for i in range(len(row["per_class_iou"]))]
    table = Table(title=f"{row['stage']} / {row['split']}: IoU per class (%)")
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in zip(names, row["per_class_iou"], strict=False):
        table.add_row(name, percent(value))
    return table


def row_key(row: dict[str, Any]) -> tuple[str, str, int | None]:
    """What a scored row is about: (stage, split, round)."""
    return (str(row.get("stage")), str(row.get("split")), row.get("round"))


def compare_table(runs: list[tuple[str, list[dict[str, Any]]]]) -> Table:
    """mIoU (%) of each (stage, split, round) side by side for several runs, with each run's difference to the first.

    A row that a run lacks shows "-"; rows follow the pipeline order of the first run that has them.
    """
    latest = [(name, {row_key(r): r for r in latest_rows(rows)}) for name, rows in runs]
    keys: list[tuple[str, str, int | None]] = []
    for _, by_key in latest:
        keys += [key for key in by_key if key not in keys]
    keys.sort(key=lambda k: (k[2] or 0, STAGE_ORDER.get(k[0], 9), k[1]))
    table = Table(title="mIoU (%) per run; in brackets the difference to the first run")
    for column in ("stage", "split", "round"):
        table.add_column(column)
    for name, _ in latest:
        table.add_column(name, justify="right")
    base = latest[0][1]
    for key in keys:
        cells = []
        for index, (_, by_key) in enumerate(latest):
            value = by_key[key]["miou"] if key in by_key else None
            cell = percent(value)
            if index and value is not None and key in base and base[key]["miou"] is not None:
                cell += f" ({100 * (value - base[key]['miou']):+.1f})"
            cells.append(cell)
        table.add_row(key[0], key[1], "-" if key[2] is None else str(key[2]), *cells)
    return table
