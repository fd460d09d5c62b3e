"""The torch backend of export/runtime.py: eager fp32 anywhere; on CUDA fp16, torch.compile, CUDA graphs.

CUDA graphs are captured per input shape (`_GraphCache`), since a graph replays fixed shapes and fixed
memory addresses: a server of one image size pays the capture once and then launches the whole network
as one graph. Only the eager CPU path can be tested on this project's machines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastwsss.engine.device import resolve_device
from fastwsss.errors import ConfigError
from fastwsss.export.runtime import Segmenter, argmax_labels

MAX_CUDA_GRAPHS = 8
"""Input shapes that get a captured CUDA graph each; further shapes run without one (each graph keeps its
own activation memory, so photos of many sizes would otherwise fill the GPU)."""


class _GraphCache:
    """Replays one captured CUDA graph per input shape (up to `limit`; further shapes run `fn` directly).

    The returned tensor is the graph's static output: it is overwritten by the next call of that shape.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], limit: int = MAX_CUDA_GRAPHS) -> None:
        self.fn = fn
        self.limit = limit
        self.graphs: dict[tuple[Any, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.stride())
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.limit:
                return self.fn(x)
            static_in = x.clone()
            side = torch.cuda.Stream(x.device)
            side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the capture (cuDNN algorithm choice, compilation)
                    self.fn(static_in)
            torch.cuda.current_stream(x.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.fn(static_in)
            entry = self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out


class TorchSegmenter(Segmenter):
    """A SegModel in torch: eager fp32 anywhere; on CUDA optionally fp16, torch.compile and CUDA graphs."""

    backend = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        source: Path,
        meta: dict[str, Any],
        device: torch.device,
        half: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
        reason: str = "",
    ) -> None:
        num_labels = getattr(model, "num_classes", None)
        super().__init__(source, meta, num_labels, reason)
        if device.type != "cuda" and (half or cuda_graphs):
            raise ConfigError(f"device {device}: fp16 and CUDA graphs need a CUDA device")
        self.device = device
        self.dtype = torch.float16 if half else torch.float32
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        model = model.to(device=device, dtype=self.dtype, memory_format=self.memory_format).eval()
        self.model = model
        forward: Callable[[torch.Tensor], torch.Tensor] = model
        if compile:
            forward = torch.compile(model, dynamic=False)  # one compilation per input shape
        self._forward = _GraphCache(forward) if cuda_graphs else forward
        parts = [str(device)]
        if device.type == "cuda":
            parts[0] += f" ({torch.cuda.get_device_name(device)})"
        else:
            threads = torch.get_num_threads()
            parts.append(f"{threads} thread{'s' if threads != 1 else ''}")
        parts += ["fp16" if half else "fp32", "torch.compile" if compile else "eager"]
        if cuda_graphs:
            parts.append(f"CUDA graphs (one per input shape, up to {MAX_CUDA_GRAPHS})")
        self.detail = ", ".join(parts)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self.memory_format)
        return self._forward(x)

    def logits(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            out = self._run(torch.as_tensor(batch))
            return out.float() if out.dtype != torch.float32 else out.clone()

    def labels(self, stack: np.ndarray) -> np.ndarray:
        """Normalises on the device: uploads uint8 (4x less to copy than float32)."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(stack)).to(self.device).permute(0, 3, 1, 2).float()
            mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1) * 255.0
            std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1) * 255.0
            out = self._run(x.sub_(mean).div_(std))  # in place: x is a fresh float copy
            return argmax_labels(out).cpu().numpy()


def load_torch_segmenter(
    path: Path,
    device: str | None = None,
    half: bool | None = None,
    cuda_graphs: bool | None = None,
    compile: bool = False,
    reason: str = "",
) -> TorchSegmenter:
    """A run directory's final DeepLab (or a seg checkpoint file) in torch.

    `half` / `cuda_graphs` default to True on CUDA and False on the CPU.
    """
    from fastwsss.engine.artifacts import final_seg_checkpoint
    from fastwsss.models.deeplab import load_seg_model

    chosen = resolve_device(device)
    checkpoint = final_seg_checkpoint(path) if path.is_dir() else path
    model, meta = load_seg_model(checkpoint, map_location="cpu")
    on_cuda = chosen.type == "cuda"
    return TorchSegmenter(
        model,
        checkpoint,
        meta,
        chosen,
        half=on_cuda if half is None else half,
        compile=compile,
        cuda_graphs=on_cuda if cuda_graphs is None else cuda_graphs,
        reason=reason,
    )
