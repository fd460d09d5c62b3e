"""`fastwsss train --dry-run`: every stage the run would execute, with its split, image count, optimiser steps,
batch size, lr schedule and the weights it would load, computed from the settings and the split lists alone.
Each stage's declaration (fastwsss.stages.Stage) gives its row: `describe` for a training stage, else the
split it reads and what it loads.

Nothing is trained, generated or written: the synthetic set's sizes come from its settings, a real data
set's from its list files. A missing list or weights file shows in its row instead of stopping the listing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fastwsss.config import DataConfig, RunConfig
from fastwsss.errors import FastwsssError, one_line
from fastwsss.stages import Stage, plan_for


@dataclass
class PlannedRow:
    stage: str
    split: str
    images: int | None
    steps: int | None
    batch: str
    schedule: str
    weights: str


def split_size(config: RunConfig, split: str) -> int | str:
    """Images in `split`, or the one-line reason its list cannot be read; no image is generated or loaded."""
    if config.data.name == "synthetic" and config.data.root is None:
        synth = config.data.synth
        sizes = {"train": synth.num_train, "val": synth.num_val, "debiased": synth.num_debiased}
        return sizes.get(split, f"the synthetic set has no split {split!r}")
    from fastwsss.data import build_source

    try:
        return len(build_source(config.data, split).ids)
    except FastwsssError as exc:
        return one_line(str(exc))


def _file(path: str | None, setting: str) -> str:
    if path is None:
        return f"random init ({setting} unset)"
    return path if Path(path).is_file() else f"{path} (MISSING)"


def steps(images: int | None, batch: int, epochs: int) -> int | None:
    """Optimiser steps of `epochs` passes over `images` in batches of `batch` (None when the count is unknown)."""
    return None if not images else (images // min(batch, images)) * epochs


def poly_schedule(lr: float, head_mult: float, momentum: float, decay: float, every: int = 1) -> str:
    """The lr column of a training stage's row."""
    stepped = "" if every == 1 else f", stepped every {every}"
    return f"poly 0.9 from {lr:g} (head x{head_mult:g}){stepped}; momentum {momentum:g}, wd {decay:g}"


def split_names(data: DataConfig, key: str) -> list[str]:
    """The splits the `config.data` setting `key` names (`eval_split` empty = `cam_split`; `test_splits` a list)."""
    value = getattr(data, key)
    if key == "eval_split":
        return [value or data.cam_split]
    return list(value) if isinstance(value, tuple) else [value]


def cls_row(config: RunConfig, images: dict[str, int | None]) -> PlannedRow:
    c, split = config.cls, config.data.train_split
    return PlannedRow("cls", split, images[split], steps(images[split], c.batch_size, c.epochs), str(c.batch_size),
                      poly_schedule(c.lr, c.head_lr_mult, c.momentum, c.weight_decay), _file(c.weights, "cls.weights"))


def irn_row(config: RunConfig, images: dict[str, int | None]) -> PlannedRow:
    n, split = config.irn, config.data.cam_split
    source = _file(n.weights, "irn.weights") if n.backbone_from == "imagenet" else "classifier backbone (RUNDIR/cls)"
    return PlannedRow("irn", split, images[split], steps(images[split], n.batch_size, n.epochs), str(n.batch_size),
                      poly_schedule(n.lr, 1.0, n.momentum, n.weight_decay), source)


def seg_row(config: RunConfig, images: dict[str, int | None]) -> PlannedRow:
    g, split = config.seg, config.data.cam_split
    count = g.iterations or steps(images[split], g.batch_size, g.epochs)
    batch = f"{g.batch_size}" + (f" ({g.iter_size} x {g.batch_size // g.iter_size})" if g.iter_size > 1 else "")
    return PlannedRow("seg", f"{split} (pseudo masks)", images[split], count, batch,
                      poly_schedule(g.lr, g.head_lr_mult, g.momentum, g.weight_decay, g.lr_step), _file(g.weights, "seg.weights"))


def _row(config: RunConfig, stage: Stage, images: dict[str, int | None]) -> PlannedRow:
    """The stage's own row (`Stage.describe`), else its split and what it loads."""
    if stage.describe is not None:
        return stage.describe(config, images)
    split = split_names(config.data, stage.reads[0])[0] if stage.reads else config.data.cam_split
    return PlannedRow(stage.name, split, images.get(split), None, "-", "-", stage.loads)


def dry_run_rows(config: RunConfig, stages: str | Sequence[str] | None = None) -> tuple[list[tuple[str, PlannedRow]], list[str]]:
    """(label, row) for every stage of the run in order (the label names the round), and one line per
    split whose list cannot be read."""
    splits = sorted({name for planned in plan_for(config) for key in planned.stage.reads if key != "test_splits"
                     for name in split_names(config.data, key)})
    sizes = {split: split_size(config, split) for split in splits}
    problems = [f"split {split}: {size}" for split, size in sizes.items() if isinstance(size, str)]
    images = {split: size if isinstance(size, int) else None for split, size in sizes.items()}
    rows = []
    for planned in plan_for(config, stages):
        label = planned.stage.name if planned.round is None else f"round {planned.round}: {planned.stage.name}"
        rows.append((label, _row(config, planned.stage, images)))
    return rows, problems


def format_rows(rows: list[tuple[str, PlannedRow]]) -> list[str]:
    """One line per stage: name, split (images), steps, batch, schedule, weights."""
    lines = []
    for label, row in rows:
        count = "?" if row.images is None else f"{row.images:,}"
        steps = "-" if row.steps is None else f"{row.steps:,} steps"
        lines.append(f"{label}: split {row.split} ({count} images); {steps}; batch {row.batch}; lr {row.schedule}; "
                     f"loads {row.weights}")
    return lines
