"""Static int8 quantisation of the exported DeepLab (model.onnx -> model_int8.onnx) with Q/DQ nodes.

`quantize_seg_onnx` writes one candidate per calibration method:
1. `quant_pre_process` (symbolic and ONNX shape inference): the quantiser needs every tensor's shape to
   place Q/DQ pairs and per-channel axes on a graph whose batch, height and width are dynamic.
2. `quantize_static` in the QDQ format: weights int8, symmetric, one scale per output channel (a single
   scale per tensor lets the widest channel flatten the others); activations uint8, asymmetric, with the
   ranges of one CalibrationMethod (MinMax, Entropy or Percentile) over the run's own training images.
   The final Resize stays float32 (FLOAT_KEEP): quantising it would round the full-size logits that the
   argmax decides on and add a Q/DQ pair on the largest tensor of the graph. The stem convolution is
   quantised although its 3 input channels make its int8 kernel slower than fp32 on its own (onnxruntime
   1.32's profiler, 1 thread: 10.2 against 6.5 ms at 512x512): the whole graph is faster with it (median
   128 against 155 ms at 512x512, 2 threads, machine under load, 2026-12-02), since the stem's large output
   then needs no QuantizeLinear and the max-pool after it runs in uint8.
3. onnxruntime's graph optimisations at ORT_ENABLE_BASIC saved into the file (`optimized_model_filepath`):
   constant folding and redundant-node removal, all standard ONNX. EXTENDED and ALL would fuse the Q/DQ
   pairs into com.microsoft QLinearConv nodes and NCHWc layouts that only onnxruntime's CPU provider
   runs, so the file would no longer load on other onnxruntime builds or in TensorRT, which reads the
   Q/DQ pairs to place its int8 layers. A serving session applies those fusions itself when it starts.

Which method is kept is decided by measurement (fastwsss.export.int8_eval), never fixed here. Note on
Entropy: onnxruntime 1.32's quantize_static builds its histograms with 128 bins and searches thresholds
from 128 quantised bins, which leaves the full range as the only candidate, so its activation ranges
equal MinMax's (all 36 scales of the synthetic run's DeepLab); the report still scores it. Calibration
images that cannot be read are skipped with one line naming the file; fewer usable images than asked
is an error that says how many there were.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fastwsss.data.base import SegmentationSource
from fastwsss.engine.files import atomic_path
from fastwsss.errors import ConfigError, DataError, one_line
from fastwsss.export.onnx import INPUT_NAME, _image_tensor, read_onnx_metadata, write_metadata

METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMAT = "QDQ"
FLOAT_KEEP = ("final Resize",)
SAVED_LEVEL = "ORT_ENABLE_BASIC"
QUANTIZED_OPS = ("Conv", "Add", "MaxPool", "Relu")
"""Operators given Q/DQ pairs; Resize is left out (see the module docstring)."""


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration images and the ids that were used or skipped."""

    images: list[np.ndarray]
    ids: list[str]
    skipped: list[str]


def load_calibration_images(
    source: SegmentationSource, count: int, say: Callable[[str], None] = print, start: int = 0
) -> CalibrationSet:
    """The first `count` readable images of `source` from index `start`; each unreadable one is skipped with
    one line naming its file; a ConfigError naming --calib when the split holds fewer usable images."""
    if count <= 0:
        raise ConfigError(f"--calib: int8 calibration needs N > 0 training images, got {count}")
    images, ids, skipped = [], [], []
    for image_id in source.ids[start:]:
        if len(images) == count:
            break
        try:
            images.append(source.load_image(image_id))
        except (DataError, OSError, ValueError) as exc:
            skipped.append(image_id)
            say(f"skipped calibration image {source.image_path(image_id)}: {one_line(str(exc))[:160]}")
            continue
        ids.append(image_id)
    if len(images) < count:
        raise ConfigError(
            f"--calib {count}: the {source.split!r} split has only {len(images)} usable images from index {start} "
            f"({len(skipped)} unreadable, listed above); ask for at most {len(images)}"
        )
    return CalibrationSet(images, ids, skipped)


class ImageReader:
    """onnxruntime's CalibrationDataReader protocol over uint8 images, one normalised image per batch.

    Each image keeps its own size: the graph is dynamic, and resizing would calibrate on statistics that
    serving never sees. A plain class with `get_next`/`rewind` (what the calibrators call)."""

    def __init__(self, images: list[np.ndarray]) -> None:
        self.images = images
        self._iter: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iter, None)
        return None if image is None else {INPUT_NAME: _image_tensor(image)}

    def rewind(self) -> None:
        self._iter = iter(self.images)

    def __iter__(self) -> ImageReader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}  # fmt: skip
    if name not in table:
        raise ConfigError(f"calibration method {name!r}: valid: {', '.join(METHODS)}")
    return table[name]


def save_optimized(src: Path, dst: Path) -> None:
    """onnxruntime's ORT_ENABLE_BASIC graph optimisations applied to `src` and saved to `dst` (module doc)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def qdq_counts(path: str | Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes a graph holds, and any non-standard-domain nodes."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        "QuantizeLinear": sum(node.op_type == "QuantizeLinear" for node in graph.node),
        "DequantizeLinear": sum(node.op_type == "DequantizeLinear" for node in graph.node),
        "non_standard_ops": sum(node.domain not in ("", "ai.onnx") for node in graph.node),
    }


def quantize_seg_onnx(
    fp32_path: str | Path, out_path: str | Path, calibration: CalibrationSet, method: str, **extra: Any
) -> Path:
    """model.onnx (fp32, exported by export.onnx) -> a Q/DQ int8 ONNX calibrated with `method` (module doc).

    The metadata is the fp32 file's with precision "int8" and a `quantization` record (method, images,
    what stays float). `extra` goes to quantize_static's extra_options (measured variants, e.g.
    ActivationSymmetric). The file appears at `out_path` only once it is complete and checked."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    meta = read_onnx_metadata(fp32_path)
    if meta.get("kind") != "seg" or meta.get("precision", "fp32") != "fp32":
        raise ConfigError(f"{fp32_path}: int8 quantisation needs the fp32 logits graph (kind seg), not "
                          f"{meta.get('kind')} {meta.get('precision')}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fastwsss-int8-") as tmp:
        pre, qdq = Path(tmp) / "pre.onnx", Path(tmp) / "qdq.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress lines
            quantize_static(
                str(pre), str(qdq), ImageReader(calibration.images), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=_calibration_method(method),
                op_types_to_quantize=list(QUANTIZED_OPS),
                extra_options=dict(extra),
            )  # fmt: skip
        with atomic_path(out_path) as final:
            save_optimized(qdq, final)
            quant = {
                "format": QUANT_FORMAT, "method": method, "calibration_images": len(calibration.images),
                "calibration_ids": [calibration.ids[0], calibration.ids[-1]], "weights": "int8 symmetric per channel",
                "activations": "uint8 asymmetric per tensor", "float32": list(FLOAT_KEEP),
                "saved_optimisation": SAVED_LEVEL, **({"extra_options": extra} if extra else {}),
            }  # fmt: skip
            write_metadata(final, {**meta, "precision": "int8", "quantization": quant}, out_path)
    return out_path


def copy_candidate(src: Path, dst: Path) -> Path:
    """Put the chosen candidate at `dst` atomically (candidates live in a temporary folder)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst
