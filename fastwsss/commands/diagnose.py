"""`fastwsss diagnose RUNDIR`: where the boundary net and the random walk gain or lose mIoU (fastwsss.reporting.walk_diagnosis)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from fastwsss.engine.files import write_json
from fastwsss.engine.progress import console
from fastwsss.errors import ConfigError
from fastwsss.reporting.summary import percent


def diagnose_command(rundir: Path, images: int, device: str, json_path: Path | None) -> dict[str, Any]:
    """Run the walk diagnosis, print two tables, write the JSON where asked; returns the result."""
    from fastwsss.reporting.walk_diagnosis import diagnose_walk

    if images < 1:
        raise ConfigError(f"--images: must be >= 1, got {images}")
    result = diagnose_walk(rundir, images, device)
    probability = Table(title=f"IRN boundary probability, {result['images']} images (mean per image)")
    probability.add_column("where")
    probability.add_column("mean", justify="right")
    for key, label in (("on_ir_label_borders", "on the IR labels' borders (what it was taught)"),
                       ("in_ir_label_unsure_band", "in the IR labels' unsure band (255)"),
                       ("on_ground_truth_borders", "on the ground truth's borders (what would help)"),
                       ("elsewhere", "elsewhere")):
        value = result["boundary_probability"][key]
        probability.add_row(label, "-" if value is None else f"{value:.3f}")
    console.print(probability)
    steps = result["pseudo"]["exp_times"]
    walk = Table(title=f"pseudo-mask mIoU (%): full walk = 2^{steps['full']} steps, quarter = 2^{steps['quarter']}")
    walk.add_column("boundary map, walk")
    walk.add_column("mIoU", justify="right")
    for name, value in result["pseudo_miou"].items():
        walk.add_row(name, percent(value))
    console.print(walk)
    if json_path is not None:
        write_json(json_path, result)
        console.print(escape(f"wrote {json_path}"), soft_wrap=True)
    return result
