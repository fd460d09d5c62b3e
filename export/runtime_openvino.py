"""The OpenVINO backend of export/runtime.py: an exported .onnx file (fp32 or int8 Q/DQ) on OpenVINO's CPU plugin.

Optional: `pip install 'fastwsss[openvino]'`. OpenVINO reads the ONNX file directly (no conversion step
on disk) and turns the Q/DQ pairs of model_int8.onnx into the int8 convolutions of its CPU plugin; on
the 2-core Xeon with AMX it served resnet18_half DeepLab-v2 at 512x512 about twice as fast as onnxruntime
did with the same int8 file (README, serving table).

Settings: the CPU plugin with `cpu_threads()` inference threads, the LATENCY hint (one stream: one image
batch at a time, like the other backends), and INFERENCE_PRECISION_HINT f32. On CPUs with AMX or
avx512_bf16 OpenVINO's default is bf16 for every layer that is not quantised, which changes the
numerics of the float layers (the final resize, and any layer the quantiser left in float) without the parity report saying so;
f32 keeps "int8" meaning the Q/DQ layers only and "fp32" meaning fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastwsss.errors import CheckpointError, ConfigError, one_line
from fastwsss.export.runtime import Segmenter, cpu_threads
from fastwsss.export.runtime_onnx import _onnx_metadata

PRECISION_HINT = "f32"


def openvino_unavailable_reason() -> str | None:
    """Why OpenVINO cannot run here, or None."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "OpenVINO is not installed (pip install 'fastwsss[openvino]')"
    return None


class OpenVinoSegmenter(Segmenter):
    """An exported .onnx file on OpenVINO's CPU plugin; `detail` names the precision and threads."""

    backend = "openvino"

    def __init__(self, path: Path, device: str | None = None, reason: str = "", threads: int | None = None) -> None:
        why = openvino_unavailable_reason()
        if why:
            raise ConfigError(f"--backend openvino: {why}")
        if device is not None and not device.startswith("cpu"):
            raise ConfigError(f"--device {device}: the openvino backend runs on the CPU only (--device cpu)")
        import openvino as ov

        self.threads = threads or cpu_threads()
        core = ov.Core()
        settings = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": PRECISION_HINT}  # fmt: skip
        try:
            compiled = core.compile_model(core.read_model(str(path)), "CPU", settings)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own for bad files
            raise CheckpointError(f"{path}: OpenVINO cannot load it ({one_line(str(exc))[:300]})") from exc
        outputs = {name: port for port in compiled.outputs for name in port.get_names()}
        if "logits" not in outputs:
            raise CheckpointError(
                f"{path}: the openvino backend needs the 'logits' output (outputs: {', '.join(outputs)})"
            )
        self._logits = outputs["logits"]
        self.request = compiled.create_infer_request()
        meta = _onnx_metadata(path)
        if meta.get("kind", "seg") != "seg":
            raise CheckpointError(f"{path}: a {meta['kind']!r} export, not the logits graph of a segmentation model")
        channels = self._logits.get_partial_shape()[1]
        num_labels = channels.get_length() if channels.is_static else None
        super().__init__(path, meta, num_labels, reason)
        self.precision = str(meta.get("precision", "fp32"))
        self.detail = (
            f"OpenVINO {ov.get_version().split('-')[0]} CPU, {self.precision} (float layers {PRECISION_HINT}), "
            + (f"{self.threads} thread{'s' * (self.threads > 1)}, latency hint")
        )

    def logits(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        result: Any = self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return torch.from_numpy(np.array(result[self._logits], dtype=np.float32, copy=True))
