"""Quality columns of bench/serving.py: val mIoU and argmax agreement of every backend, and the CPU targets.

Every backend segments the same val images (the run's val split, each image at its own size, batch 1,
through `Segmenter.segment` as a user would call it): mIoU against the ground truth, and argmax agreement
(% of pixels) with torch eager fp32, the reference every speed-up is measured against. A run without a
val split has no mIoU column (None, and the JSON says why); agreement is then measured on the benchmark's
structured images only.

Targets (`targets`), read from one benchmark run at one size and batch (512x512, batch 1): the fastest
backend on the CPU against torch eager fp32: >= 3x its images/s, val mIoU within 1 point, agreement >= 98%.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fastwsss.algorithms.metrics import ConfusionMeter
from fastwsss.export.runtime import Segmenter

SPEEDUP_TARGET = 3.0
MAX_MIOU_DROP = 1.0
MIN_AGREEMENT_PCT = 98.0


def load_val(model: Path | None, limit: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], int, str]:
    """([(image, mask)], labels incl. background, note) of the run's val split; [] with the reason otherwise."""
    if model is None or not model.is_dir():
        return [], 0, "no run directory given (--model RUNDIR): no val mIoU"
    from fastwsss.engine.rundir import open_run_dir
    from fastwsss.export.int8_eval import val_source

    source, why = val_source(open_run_dir(model).load_config())
    if source is None:
        return [], 0, f"{why}: no val mIoU"
    pairs = [source.load_pair(image_id) for image_id in source.ids[:limit]]
    return pairs, source.num_classes + 1, f"val split {source.split!r}, first {len(pairs)} images, each at its own size"


def val_quality(
    segmenter: Segmenter, pairs: list[tuple[np.ndarray, np.ndarray]], num_labels: int,
    reference: list[np.ndarray] | None,
) -> tuple[dict[str, Any], list[np.ndarray]]:  # fmt: skip
    """({val_miou, val_agreement_pct}, the predicted masks); agreement against `reference` masks (None: the
    masks of this segmenter, which is then the reference)."""
    if not pairs:
        return {"val_miou": None, "val_agreement_pct": None}, []
    meter = ConfusionMeter(num_labels)
    masks = []
    for image, target in pairs:
        mask = segmenter.segment([image])[0]
        meter.update(mask, target)
        masks.append(mask)
    reference = reference if reference is not None else masks  # the first case is the reference itself
    same = sum(int((a == b).sum()) for a, b in zip(masks, reference, strict=True))
    agree = 100.0 * same / max(sum(m.size for m in masks), 1)
    return {"val_miou": round(100.0 * meter.miou(), 3), "val_agreement_pct": agree}, masks


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Each timed row gains `speedup_vs_eager`: its images/s over torch eager fp32's at the same size and batch."""
    eager = {(r["size"], r["batch"]): r["images_per_s"] for r in results
             if r.get("status") == "ok" and r["backend"] == "torch" and r["variant"] == "eager" and r["precision"] == "fp32"}  # fmt: skip
    for row in results:
        base = eager.get((row.get("size"), row.get("batch")))
        if row.get("status") == "ok" and base:
            row["speedup_vs_eager"] = row["images_per_s"] / base


def targets(results: list[dict[str, Any]], size: str = "512x512", batch: int = 1) -> dict[str, Any] | None:
    """The CPU targets (module docstring) judged on the fastest row at `size` and `batch`; None without rows."""
    rows = [r for r in results if r.get("status") == "ok" and r.get("size") == size and r.get("batch") == batch]
    eager = next(
        (r for r in rows if r["backend"] == "torch" and r["variant"] == "eager" and r["precision"] == "fp32"), None
    )
    if eager is None or not rows:
        return None
    best = max(rows, key=lambda r: r["images_per_s"])
    drop = None
    if best.get("val_miou") is not None and eager.get("val_miou") is not None:
        drop = eager["val_miou"] - best["val_miou"]
    agreement = best.get("val_agreement_pct")
    if agreement is None:
        agreement = best.get("argmax_agreement_pct")
    return {
        "size": size,
        "batch": batch,
        "fastest": f"{best['backend']} {best['variant']} {best['precision']}",
        "speedup_vs_eager": best["images_per_s"] / eager["images_per_s"],
        "miou_drop": drop,
        "agreement_pct": agreement,
        "speedup_met": best["images_per_s"] >= SPEEDUP_TARGET * eager["images_per_s"],
        "miou_met": None if drop is None else drop <= MAX_MIOU_DROP,
        "agreement_met": agreement is not None and agreement >= MIN_AGREEMENT_PCT,
    }
