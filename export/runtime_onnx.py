"""The onnxruntime backend of export/runtime.py: an exported .onnx file (export/onnx.py) on onnxruntime.

Providers: CUDAExecutionProvider when this onnxruntime has it (onnxruntime-gpu) and the device allows,
then CPUExecutionProvider. onnxruntime-gpu lists CUDA even where it cannot load and then falls back to
the CPU with log lines only (DEPLOY.md), so `detail` reports `session.get_providers()[0]`, the provider
actually in use.

On the CPU: `cpu_threads()` intra-op threads (physical cores, shared out among --nproc processes), one
inter-op thread and sequential execution: DeepLab is one chain of convolutions, so parallel execution of
independent nodes only adds threads that compete with the intra-op ones for the same cores. An int8 file
(`fastwsss export --int8`) runs as it is: onnxruntime fuses its Q/DQ pairs into integer kernels when
the session starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastwsss.errors import CheckpointError, ConfigError, FastwsssError, one_line
from fastwsss.export.onnx import read_onnx_metadata
from fastwsss.export.runtime import Segmenter, cpu_threads


def _onnx_metadata(path: Path) -> dict[str, Any]:
    """The export's metadata (class names, palette, normalisation), or {} for a plain ONNX file."""
    try:
        return dict(read_onnx_metadata(path))
    except FastwsssError:
        return {}


class OnnxRuntimeSegmenter(Segmenter):
    """An exported .onnx file on onnxruntime; `detail` names the provider that actually runs it."""

    backend = "onnxruntime"

    def __init__(self, path: Path, device: str | None = None, reason: str = "", threads: int | None = None) -> None:
        """`threads`: onnxruntime's intra-op threads on the CPU (default: `cpu_threads()`, module docstring)."""
        import onnxruntime as ort

        available = ort.get_available_providers()
        has_cuda = "CUDAExecutionProvider" in available
        if device is not None and device.startswith("cuda") and not has_cuda:
            raise ConfigError(
                f"--device {device}: this onnxruntime has no CUDAExecutionProvider "
                f"(providers: {', '.join(available)}); install onnxruntime-gpu instead of onnxruntime"
            )
        want_cuda = has_cuda and (device is None or device.startswith("cuda"))
        providers: list[Any] = ["CPUExecutionProvider"]
        if want_cuda:
            index = int(device.split(":")[1]) if device and ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        threads = threads or cpu_threads()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({one_line(str(exc))[:300]})") from exc
        used = self.session.get_providers()
        self.provider = used[0]
        image_input = self.session.get_inputs()[0]
        self._input_name = image_input.name
        self._input_type = np.float16 if image_input.type == "tensor(float16)" else np.float32
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._logits_name = "logits" if "logits" in outputs else None
        self._labels_name = "labels" if "labels" in outputs else None
        if self._logits_name is None and self._labels_name is None:
            if len(outputs) != 1:
                raise CheckpointError(f"{path}: no output named 'logits' or 'labels' (outputs: {', '.join(outputs)})")
            self._logits_name = next(iter(outputs))
        channels = outputs[self._logits_name].shape[1] if self._logits_name else None
        meta = _onnx_metadata(path)
        if meta.get("kind", "seg") not in ("seg", "seg_labels"):
            raise CheckpointError(f"{path}: a {meta['kind']!r} export, not a segmentation model")
        super().__init__(path, meta, channels if isinstance(channels, int) else None, reason)
        self.precision = str(meta.get("precision", "fp32"))
        self.threads = threads
        self.detail = f"{used[0]}, {self.precision}"
        if used[0] == "CPUExecutionProvider":
            self.detail += f", {threads} intra-op thread{'s' * (threads > 1)}, sequential"
        if want_cuda and used[0] != "CUDAExecutionProvider":
            self.detail += " (CUDAExecutionProvider was requested but did not load)"
        if self._logits_name is None:
            self.detail += ", labels output only (argmax in the graph)"

    def _run(self, x: np.ndarray, name: str) -> np.ndarray:
        feed = {self._input_name: np.ascontiguousarray(x, dtype=self._input_type)}
        return self.session.run([name], feed)[0]

    def logits(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        if self._logits_name is None:
            raise CheckpointError(f"{self.source}: this ONNX file outputs labels only (exported with argmax)")
        x = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
        return torch.from_numpy(self._run(x, self._logits_name).astype(np.float32, copy=False))

    def labels(self, stack: np.ndarray) -> np.ndarray:
        if self._labels_name is None:
            return super().labels(stack)
        out = self._run(self.normalize(stack).numpy(), self._labels_name)
        return out.reshape(out.shape[0], *out.shape[-2:]).astype(np.uint8)
