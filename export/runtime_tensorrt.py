"""The TensorRT backend of export/runtime.py: runs a self-describing engine file (export/tensorrt.py).

Written against TensorRT 10/11's tensor API (`num_io_tensors`, `set_input_shape`, `set_tensor_address`,
`execute_async_v3`) with torch CUDA tensors as buffers. TensorRT cannot be installed on this project's
machines, so this module is untested beyond its "not installed" error (DEPLOY.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastwsss.errors import CheckpointError, ConfigError, DataError, FastwsssError
from fastwsss.export.runtime import Segmenter, require_tensorrt
from fastwsss.export.tensorrt import check_engine_compatible, read_engine_file


class TensorRTSegmenter(Segmenter):
    """A self-describing engine file (export/tensorrt.py) on TensorRT; refuses engines built elsewhere."""

    backend = "tensorrt"

    def __init__(self, path: Path, device: str | None = None, reason: str = "") -> None:
        require_tensorrt(path)
        import tensorrt as trt

        self.device = torch.device(device or "cuda")
        if self.device.type != "cuda":
            raise ConfigError(f"--device {device}: TensorRT engines run on a CUDA device only")
        header, blob = read_engine_file(path)
        check_engine_compatible(header, trt.__version__, torch.cuda.get_device_capability(self.device), path)
        if header.get("kind", "seg") not in ("seg", "seg_labels"):
            raise CheckpointError(f"{path}: a {header['kind']!r} engine, not a segmentation model")
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(blob)
            if self.engine is None:
                raise CheckpointError(f"{path}: TensorRT {trt.__version__} could not deserialize the engine")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise CheckpointError(f"{path}: expected one input tensor, the engine has {inputs}")
        self._input = inputs[0]
        self._outputs = [n for n in names if n not in inputs]
        dtypes = {
            getattr(trt, k): v
            for k, v in (
                ("float32", torch.float32),
                ("float16", torch.float16),
                ("bfloat16", torch.bfloat16),
                ("int32", torch.int32),
                ("int64", torch.int64),
                ("int8", torch.int8),
                ("uint8", torch.uint8),
                ("bool", torch.bool),
            )
            if hasattr(trt, k)
        }
        self._dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in names}
        self._profile = [tuple(s) for s in self.engine.get_tensor_profile_shape(self._input, 0)]
        logits_shape = self.engine.get_tensor_shape("logits") if "logits" in self._outputs else None
        super().__init__(path, header, int(logits_shape[1]) if logits_shape and logits_shape[1] > 0 else None, reason)
        low, _, high = self._profile
        self.detail = (
            f"TensorRT {trt.__version__} on {self.device} ({torch.cuda.get_device_name(self.device)}), "
            f"input {self._dtypes[self._input]}, profile {low} .. {high}"
        )

    def _run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low, _, high = self._profile
        shape = tuple(x.shape)
        if len(shape) != len(low) or any(s < lo or s > hi for s, lo, hi in zip(shape, low, high, strict=True)):
            raise DataError(f"{self.source}: input {shape} is outside the engine's profile {low} .. {high}")
        x = x.to(self.device, self._dtypes[self._input]).contiguous()
        self.context.set_input_shape(self._input, shape)
        self.context.set_tensor_address(self._input, x.data_ptr())
        outs = {}
        for name in self._outputs:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name], device=self.device)
            self.context.set_tensor_address(name, out.data_ptr())
            outs[name] = out
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise FastwsssError(f"{self.source}: TensorRT execution failed for input {shape}")
        stream.synchronize()
        return outs

    def logits(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        if "logits" not in self._outputs:
            raise CheckpointError(f"{self.source}: this engine outputs labels only (exported with argmax)")
        return self._run(torch.as_tensor(batch))["logits"].float()

    def labels(self, stack: np.ndarray) -> np.ndarray:
        outs = self._run(self.normalize(stack))
        if "labels" in outs:
            return outs["labels"].reshape(stack.shape[0], *stack.shape[1:3]).to(torch.uint8).cpu().numpy()
        return outs["logits"].argmax(dim=1).to(torch.uint8).cpu().numpy()
