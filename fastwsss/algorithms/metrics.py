"""Segmentation metrics with the semantics of docs/algorithms.md section 9.

Labels 0..L-1 (0 = background), 255 ignored. Rows of the confusion matrix are ground truth, columns are
predictions. IoU = diag / (row + col - diag); a class absent from both gt and prediction has IoU NaN and
is left out of the mean (nanmean), as in the reference code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fastwsss.data.palette import IGNORE_INDEX


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) int64 counts; pixels with gt 255 (or outside 0..num_labels-1) are ignored."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {gt.shape}")
    gt = gt.astype(np.int64).ravel()
    pred = pred.astype(np.int64).ravel()
    keep = (gt != IGNORE_INDEX) & (gt >= 0) & (gt < num_labels) & (pred >= 0) & (pred < num_labels)
    index = gt[keep] * num_labels + pred[keep]
    return np.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU per label; NaN where the label appears in neither gt nor prediction."""
    conf = conf.astype(np.float64)
    diag = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - diag
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, diag / np.maximum(union, 1e-12), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    ious = iou_per_class(conf)
    return float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan")


class ConfusionMeter:
    """Accumulates a confusion matrix over many images."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.matrix = np.zeros((num_labels, num_labels), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.matrix += confusion_matrix(pred, gt, self.num_labels)

    def iou(self) -> np.ndarray:
        return iou_per_class(self.matrix)

    def miou(self) -> float:
        return mean_iou(self.matrix)


def json_ious(ious: np.ndarray) -> list[float | None]:
    """IoUs as JSON-friendly floats (NaN -> None)."""
    return [None if not np.isfinite(v) else round(float(v), 6) for v in ious]


def score_row(stage: str, split: str, method: str, meter: ConfusionMeter, class_names: list[str], images: int,
              **extra: Any) -> dict[str, Any]:
    """One scored metrics.jsonl row: mIoU (a fraction) and IoU per label, background first, plus `extra`."""
    return {
        "stage": stage,
        "split": split,
        "method": method,
        "miou": meter.miou(),
        "per_class_iou": json_ious(meter.iou()),
        "class_names": ["background", *class_names],
        **extra,
        "images": images,
    }
