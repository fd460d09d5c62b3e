"""Scoring int8 candidates against the fp32 model, and choosing the calibration method by that score.

What is measured, per candidate (one int8 ONNX per calibration method) and for the fp32 model.onnx, in one
pass over the evaluation images (each image read once, every session run on it):
- mIoU against the run's val split ground truth (the number a user of the model cares about);
- argmax agreement (% of pixels) and the largest absolute logit difference against model.onnx on
  onnxruntime, which itself matches torch eager within the fp32 parity thresholds (export.onnx).
The candidate with the highest mIoU is kept (ties: higher agreement). Without a val split that has masks,
candidates are scored on held-out training images (not among the calibration images) by mIoU against the
run's pseudo masks, the labels the DeepLab was trained on, or by agreement with fp32 where the run has
none; the report then marks the val mIoU as absent and says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastwsss.algorithms.metrics import ConfusionMeter
from fastwsss.config import RunConfig
from fastwsss.data import build_source
from fastwsss.data.base import SegmentationSource, read_label_png
from fastwsss.errors import FastwsssError, one_line
from fastwsss.export.onnx import INPUT_NAME, _image_tensor

HOLDOUT_IMAGES = 100
"""Held-out training images scored when the run has no val split with masks."""
MIN_AGREEMENT_PCT = 98.0
MAX_MIOU_DROP = 1.0
"""An int8 model passes with >= 98% argmax agreement and a val mIoU at most 1 point below fp32's."""


@dataclass
class EvalPlan:
    """The images candidates are scored on and what their predictions are compared with."""

    source: SegmentationSource
    ids: list[str]
    target: str
    """"val" (ground truth), "pseudo" (the run's pseudo masks) or "fp32" (agreement only)."""
    note: str = ""
    pseudo_dir: Path | None = None

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        if self.target == "val":
            return self.source.load_pair(image_id)
        image = self.source.load_image(image_id)
        if self.target == "pseudo" and self.pseudo_dir is not None:
            return image, read_label_png(self.pseudo_dir / f"{image_id}.png", self.source.num_classes)
        return image, None


def val_source(config: RunConfig) -> tuple[SegmentationSource | None, str]:
    """The run's val split when it exists with images and masks, else (None, why not)."""
    split = config.data.val_split
    if not split:
        return None, "the run's config names no val split"
    try:
        source = build_source(config.data, split)
        if not source.ids:
            return None, f"val split {split!r} holds no images"
        if not source.has_masks():
            return None, f"val split {split!r} has no ground-truth masks"
    except FastwsssError as exc:
        return None, f"val split {split!r} cannot be read ({one_line(str(exc))[:160]})"
    return source, ""


def plan_evaluation(config: RunConfig, rundir: Path, skip_ids: set[str], limit: int | None = None) -> EvalPlan:
    """Val ground truth when there is some; else held-out training images (module docstring)."""
    from fastwsss.engine.rundir import open_run_dir

    source, why = val_source(config)
    if source is not None:
        return EvalPlan(source, source.ids[:limit] if limit else list(source.ids), "val")
    train = build_source(config.data, config.data.train_split)
    ids = [i for i in train.ids if i not in skip_ids][: limit or HOLDOUT_IMAGES]
    if not ids:
        raise FastwsssError(f"{why}, and the train split has no image outside the calibration set to score on")
    final = open_run_dir(rundir).final_view(config)
    pseudo = final.pseudo_dir
    if final.pseudo_file(ids[0]).is_file():
        return EvalPlan(train, ids, "pseudo", f"{why}: scored by mIoU against the run's pseudo masks on "
                        f"{len(ids)} held-out training images", pseudo)  # fmt: skip
    return EvalPlan(train, ids, "fp32", f"{why} and the run has no pseudo masks: scored by argmax agreement with "
                    f"fp32 on {len(ids)} held-out training images")  # fmt: skip


@dataclass
class _Tally:
    meter: ConfusionMeter
    agree: int = 0
    pixels: int = 0
    max_abs_diff: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self, scored: bool) -> dict[str, Any]:
        miou = self.meter.miou() if scored else float("nan")
        return {
            "miou": round(100.0 * miou, 3) if np.isfinite(miou) else None,
            "agreement_pct": 100.0 * self.agree / max(self.pixels, 1),
            "max_abs_diff": self.max_abs_diff,
        }


Runner = Callable[[np.ndarray], np.ndarray]
"""Normalised (1, 3, H, W) float32 -> (1, K+1, H, W) logits."""


def ort_runner(path: Path) -> Runner:
    """An ONNX file on onnxruntime's CPU provider (its default threads) as a Runner."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {INPUT_NAME: x})[0]


def openvino_runner(path: Path) -> Runner:
    """An ONNX file on the openvino backend (export/runtime_openvino.py, its serving settings) as a Runner."""
    from fastwsss.export.runtime_openvino import OpenVinoSegmenter

    segmenter = OpenVinoSegmenter(path, "cpu")
    return lambda x: segmenter.logits(x).numpy()


def score_candidates(
    fp32_path: Path, candidates: dict[str, Runner], plan: EvalPlan, num_labels: int, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """{"fp32": row, "candidates": {name: row}, "images": n, "skipped": [...]}; rows as `_Tally.row`.

    An evaluation image that cannot be read is skipped with one line naming it (it counts for no model)."""
    reference = ort_runner(fp32_path)
    tallies = {name: _Tally(ConfusionMeter(num_labels)) for name in ["fp32", *candidates]}
    scored = plan.target != "fp32"
    done, skipped = 0, []
    for image_id in plan.ids:
        try:
            image, target = plan.load(image_id)
        except (FastwsssError, OSError, ValueError) as exc:
            skipped.append(image_id)
            say(f"skipped evaluation image {plan.source.image_path(image_id)}: {one_line(str(exc))[:160]}")
            continue
        x = _image_tensor(image)
        ref = reference(x)
        ref_labels = ref.argmax(axis=1)[0]
        outputs = {"fp32": ref, **{name: run(x) for name, run in candidates.items()}}
        for name, logits in outputs.items():
            labels = logits.argmax(axis=1)[0]
            tally = tallies[name]
            if target is not None:
                tally.meter.update(labels, target)
            tally.agree += int((labels == ref_labels).sum())
            tally.pixels += int(labels.size)
            tally.max_abs_diff = max(tally.max_abs_diff, float(np.abs(logits - ref).max()))
        done += 1
    if not done:
        raise FastwsssError(f"no readable evaluation image among {len(plan.ids)} of split {plan.source.split!r}")
    return {
        "fp32": tallies["fp32"].row(scored),
        "candidates": {name: tallies[name].row(scored) for name in candidates},
        "images": done,
        "skipped": skipped,
    }


def choose(scores: dict[str, Any]) -> str:
    """The candidate with the highest mIoU (agreement when there is no mIoU); ties go to higher agreement."""

    def key(name: str) -> tuple[float, float]:
        row = scores["candidates"][name]
        return (row["miou"] if row["miou"] is not None else row["agreement_pct"], row["agreement_pct"])

    return max(scores["candidates"], key=key)


def passes(row: dict[str, Any], fp32_miou: float | None) -> bool:
    """>= MIN_AGREEMENT_PCT argmax agreement and, with a val mIoU on both sides, at most MAX_MIOU_DROP lost."""
    drop = fp32_miou - row["miou"] if fp32_miou is not None and row["miou"] is not None else None
    return row["agreement_pct"] >= MIN_AGREEMENT_PCT and (drop is None or drop <= MAX_MIOU_DROP)


def int8_report(name: str, method: str, scores: dict[str, Any], plan: EvalPlan, calibration: dict[str, Any]) -> dict:
    """The parity.json entry of model_int8.onnx: chosen method, every candidate's score, fp32 beside int8."""
    row, fp32 = scores["candidates"][method], scores["fp32"]
    val = plan.target == "val"
    drop = fp32["miou"] - row["miou"] if val and row["miou"] is not None and fp32["miou"] is not None else None
    passed = passes(row, fp32["miou"] if val else None)
    report = {
        "onnx": name,
        "kind": "seg",
        "precision": "int8",
        "method": method,
        "selected_by": {"val": "val mIoU", "pseudo": "pseudo-mask mIoU", "fp32": "argmax agreement"}[plan.target],
        "split": plan.source.split,
        "images": scores["images"],
        "fp32_miou": fp32["miou"] if val else None,
        "miou": row["miou"] if val else None,
        "miou_drop": drop,
        "agreement_pct": row["agreement_pct"],
        "max_abs_diff": row["max_abs_diff"],
        "reference": "model.onnx (fp32) on onnxruntime CPUExecutionProvider",
        "candidates": [{"method": m, **scores["candidates"][m]} for m in scores["candidates"]],
        "calibration": calibration,
        "thresholds": {"min_agreement_pct": MIN_AGREEMENT_PCT, "max_miou_drop": MAX_MIOU_DROP},
        "providers": ["CPUExecutionProvider"],
        "passed": passed,
    }
    if not val:
        report["miou_absent"] = plan.note
    if scores["skipped"]:
        report["skipped_images"] = scores["skipped"]
    return report
