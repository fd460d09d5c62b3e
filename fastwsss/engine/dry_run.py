"""`fastwsss train --dry-run`: every stage the run would execute, with its split, image count, optimiser steps,
batch size, lr schedule and the weights it would load, computed from the settings and the split lists alone.

Nothing is trained, generated or written: the synthetic set's sizes come from its settings, a real data
set's from its list files. A missing list or weights file shows in its row instead of stopping the listing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastwsss.config import RunConfig
from fastwsss.errors import FastwsssError, one_line
from fastwsss.stages import plan_for


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


def _steps(images: int | None, batch: int, epochs: int) -> int | None:
    return None if not images else (images // min(batch, images)) * epochs


def _poly(lr: float, head_mult: float, momentum: float, decay: float, every: int = 1) -> str:
    stepped = "" if every == 1 else f", stepped every {every}"
    return f"poly 0.9 from {lr:g} (head x{head_mult:g}){stepped}; momentum {momentum:g}, wd {decay:g}"


def _row(config: RunConfig, name: str, images: dict[str, int | None]) -> PlannedRow:
    d, c, n, g, m = config.data, config.cls, config.irn, config.seg, config.c2am
    cam = images[d.cam_split]
    if name == "cls":
        return PlannedRow(name, d.train_split, images[d.train_split], _steps(images[d.train_split], c.batch_size, c.epochs),
                          str(c.batch_size), _poly(c.lr, c.head_lr_mult, c.momentum, c.weight_decay),
                          _file(c.weights, "cls.weights"))
    if name == "c2am":
        stride = m.output_stride or c.output_stride
        return PlannedRow(name, d.train_split, images[d.train_split], _steps(images[d.train_split], m.batch_size, m.epochs),
                          str(m.batch_size), _poly(m.lr, m.head_lr_mult, c.momentum, c.weight_decay) + f"; stride {stride}",
                          "RUNDIR/cls/ckpt.pt")
    if name == "irn":
        source = _file(n.weights, "irn.weights") if n.backbone_from == "imagenet" else "classifier backbone (RUNDIR/cls)"
        return PlannedRow(name, d.cam_split, cam, _steps(cam, n.batch_size, n.epochs), str(n.batch_size),
                          _poly(n.lr, 1.0, n.momentum, n.weight_decay), source)
    if name == "seg":
        steps = g.iterations or _steps(cam, g.batch_size, g.epochs)
        batch = f"{g.batch_size}" + (f" ({g.iter_size} x {g.batch_size // g.iter_size})" if g.iter_size > 1 else "")
        return PlannedRow(name, f"{d.cam_split} (pseudo masks)", cam, steps, batch,
                          _poly(g.lr, g.head_lr_mult, g.momentum, g.weight_decay, g.lr_step), _file(g.weights, "seg.weights"))
    split = {"global_cam": d.train_split, "eval": d.eval_split or d.cam_split}.get(name, d.cam_split)
    loads = {"cam": "RUNDIR classifier", "global_cam": "RUNDIR/cls/ckpt.pt", "pseudo": "RUNDIR/irn/ckpt.pt",
             "confounder": "previous round's seg"}.get(name, "-")
    return PlannedRow(name, split, images[split], None, "-", "-", loads)


def dry_run_rows(config: RunConfig, stages: str | None = None) -> tuple[list[tuple[str, PlannedRow]], list[str]]:
    """(label, row) for every stage of the run in order (the label names the round), and one line per
    split whose list cannot be read."""
    d = config.data
    splits = sorted({d.train_split, d.cam_split, d.val_split, d.eval_split or d.cam_split})
    sizes = {split: split_size(config, split) for split in splits}
    problems = [f"split {split}: {size}" for split, size in sizes.items() if isinstance(size, str)]
    images = {split: size if isinstance(size, int) else None for split, size in sizes.items()}
    rows = []
    for planned in plan_for(config, stages):
        label = planned.stage.name if planned.round is None else f"round {planned.round}: {planned.stage.name}"
        rows.append((label, _row(config, planned.stage.name, images)))
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
