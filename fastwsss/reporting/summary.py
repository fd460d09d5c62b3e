"""Tables of a run's metrics for the terminal."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

STAGE_ORDER = {"cam": 0, "ir_label": 1, "pseudo": 2, "seg": 3}


def latest_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The most recent scored row per (stage, split, round), in pipeline order."""
    latest: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        if not isinstance(row, dict) or row.get("miou") is None:
            continue
        key = (row.get("stage"), row.get("split"), row.get("round"))
        if not all(part is None or isinstance(part, (str, int)) for part in key):
            continue  # a hand-edited row: stage, split and round must be plain values
        latest[key] = row

    def order(row: dict[str, Any]) -> tuple:
        round_ = row.get("round")
        return (round_ if isinstance(round_, int) else 0, STAGE_ORDER.get(row.get("stage"), 9), str(row.get("split")))

    return sorted(latest.values(), key=order)


def percent(value: Any) -> str:
    """A fraction as a percentage with one decimal; '-' for None, NaN or anything that is not a number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
        return "-"
    return f"{100 * value:.1f}"


def plain(value: Any) -> Text:
    """A table cell or title shown as it is: text from metrics.jsonl or a path is never read as rich markup."""
    return Text(str(value))


def metrics_table(rows: list[dict[str, Any]], title: str = "mIoU (%)") -> Table:
    table = Table(title=plain(title))
    for column in ("stage", "split", "method", "round", "mIoU", "best thr / mIoU", "images"):
        table.add_column(column, justify="right" if column in ("mIoU", "images") else "left")
    for row in latest_rows(rows):
        best = ""
        if row.get("best_miou") is not None and percent(row.get("best_bg_threshold")) != "-":
            best = f"{row['best_bg_threshold']:.2f} / {percent(row['best_miou'])}"
        cells = (row.get("stage"), row.get("split"), row.get("method"), "-" if row.get("round") is None else row["round"],
                 percent(row.get("miou")), best, row.get("images", ""))
        table.add_row(*(plain(cell) for cell in cells))
    return table


def per_class_table(row: dict[str, Any]) -> Table:
    values = row.get("per_class_iou") if isinstance(row.get("per_class_iou"), list) else []
    names = row.get("class_names") if isinstance(row.get("class_names"), list) else [str(i) for i in range(len(values))]
    table = Table(title=plain(f"{row.get('stage')} / {row.get('split')}: IoU per class (%)"))
    table.add_column("class")
    table.add_column("IoU", justify="right")
    for name, value in zip(names, values, strict=False):
        table.add_row(plain(name), percent(value))
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
        table.add_column(plain(name), justify="right")
    base = latest[0][1]
    for key in keys:
        cells = []
        for index, (_, by_key) in enumerate(latest):
            value = by_key[key]["miou"] if key in by_key else None
            cell = percent(value)
            if index and value is not None and key in base and base[key]["miou"] is not None:
                cell += f" ({100 * (value - base[key]['miou']):+.1f})"
            cells.append(cell)
        table.add_row(plain(key[0]), plain(key[1]), plain("-" if key[2] is None else key[2]), *cells)
    return table
