"""Serving runtimes: one `Segmenter` interface over torch, onnxruntime and TensorRT.

    segmenter = load_segmenter(Path("runs/voc"), backend="auto")   # RUNDIR | model.onnx | model.engine
    masks = segmenter.segment([image_a, image_b])                   # uint8 HxWx3 RGB -> uint8 HxW labels

Mixed sizes: `segment` groups the images by exact (H, W) and runs one batch per size, without padding.
Padding to a common (bucketed) size would change the predictions: DeepLab's receptive field covers the
whole image, so padded pixels (the mean colour after normalisation) move logits far from the border, and
the final resize works on the padded shape. Per-size batches keep every mask identical to running that
image alone; photos of all-different sizes then run one at a time, which is the price.

`auto` rule: the fastest backend available for the given model without a conversion step, in the order
tensorrt > torch fp16 with CUDA graphs on a GPU > onnxruntime > torch eager fp32 on the CPU:
    .engine   -> tensorrt (nothing else runs an engine)
    .onnx     -> onnxruntime: CUDAExecutionProvider when this onnxruntime has it, else the CPU
    RUNDIR    -> on a GPU: tensorrt on an engine in RUNDIR/export that fits this GPU and TensorRT version,
                 else torch fp16 + CUDA graphs; on the CPU: onnxruntime on RUNDIR/export/model_int8.onnx
                 (`fastwsss export --int8`), else model.onnx, else torch eager fp32. An export counts only
                 when made from the run's current checkpoint (its source_sha256), so a run trained further
                 never serves a stale export.
`openvino` (optional extra, CPU) is never picked by `auto`; asked for by name on a RUNDIR it takes the same
export files as onnxruntime on the CPU.

CPU threads (`cpu_threads`): one intra-op thread per physical core, divided among the processes of
`--nproc` on this machine (LOCAL_WORLD_SIZE), so N processes never run more threads than there are cores;
hyper-threads share one core's vector units and only add contention for int8 and fp32 convolutions.
    .pt       -> torch (fp16 + CUDA graphs on a GPU, eager fp32 on the CPU)
Nothing is exported or built on the fly (seconds to minutes); `fastwsss export` does that once.
`segmenter.reason` says which backend `auto` picked and why.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastwsss.data.palette import voc_palette
from fastwsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fastwsss.engine.device import requested_device, resolve_device
from fastwsss.errors import CheckpointError, ConfigError, FastwsssError, one_line
from fastwsss.export.tensorrt import tensorrt_unavailable_reason

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt", "openvino")
ONNX_BACKENDS = ("onnxruntime", "openvino")
INT8_ONNX = "model_int8.onnx"
ENGINE_SUFFIXES = (".engine", ".trt", ".plan")
CHECKPOINT_SUFFIXES = (".pt", ".pth")
EXPORT_FOLDER = "export"


def _as_list(value: Any, source: Path, key: str) -> list[float]:
    try:
        array = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{source}: metadata {key!r} is not a list of numbers ({type(exc).__name__})") from None
    if array.size != 3 or not np.isfinite(array).all() or (key == "std" and (array <= 0).any()):
        raise CheckpointError(f"{source}: metadata {key!r} needs 3 finite values (R, G, B), got {value!r:.80}")
    return array.tolist()


def _class_names(meta: dict[str, Any], source: Path) -> list[str]:
    """The metadata's class names: a list of strings (a number is taken as its text), nothing else."""
    names = meta.get("classes") or meta.get("class_names") or []
    if not isinstance(names, list) or not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in names):
        raise CheckpointError(f"{source}: metadata classes must be a list of names")
    return [str(n) for n in names]


def _palette(value: Any, source: Path, count: int) -> np.ndarray:
    """(N, 3) uint8 colours from the metadata: N >= count rows of three integers in 0..255."""
    try:
        array = np.asarray(value, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CheckpointError(f"{source}: metadata palette is not a list of colours ({type(exc).__name__})") from None
    if array.ndim != 2 or array.shape[1] != 3 or array.shape[0] < count or ((array < 0) | (array > 255)).any():
        raise CheckpointError(f"{source}: metadata palette needs {count} or more [R, G, B] rows of 0..255")
    return array.astype(np.uint8)


class Segmenter(ABC):
    """A segmentation model behind one interface, whatever runs it.

    Attributes: `backend` ("torch", "onnxruntime", "tensorrt"), `detail` (what actually runs: device,
    dtype, provider), `reason` (why `load_segmenter` picked it; "" when asked for by name), `class_names`
    (K + 1 names, background first), `palette` ((K + 1, 3) uint8), `mean` / `std` (per channel, on the
    0..1 scale), `source` (the model path).
    """

    backend = ""

    def __init__(self, source: Path, meta: dict[str, Any], num_labels: int | None, reason: str = "") -> None:
        self.source = Path(source)
        self.reason = reason
        self.detail = ""
        if not isinstance(meta, dict):
            raise CheckpointError(f"{source}: model metadata must be a JSON object, got {type(meta).__name__}")
        names = _class_names(meta, self.source)
        if num_labels is not None and names and len(names) == num_labels - 1:
            names = ["background", *names]  # checkpoints store the K foreground names only
        if not names and num_labels is not None:
            names = ["background", *(f"class{i}" for i in range(1, num_labels))]
        if num_labels is not None and len(names) != num_labels:
            raise CheckpointError(f"{source}: {len(names)} class names for a model of {num_labels} labels")
        if len(names) > 256:
            raise CheckpointError(f"{source}: {len(names)} labels do not fit a uint8 mask")
        self.class_names = names
        palette = meta.get("palette")
        self.palette = _palette(palette, self.source, len(names)) if palette is not None else voc_palette(256)[: max(len(names), 1)]
        mean, std = meta.get("mean"), meta.get("std")
        self.mean = _as_list(mean, self.source, "mean") if mean is not None else IMAGENET_MEAN.tolist()
        self.std = _as_list(std, self.source, "std") if std is not None else IMAGENET_STD.tolist()
        if max(self.mean + self.std) > 1.0:  # given on the 0..255 scale
            self.mean = [m / 255.0 for m in self.mean]
            self.std = [s / 255.0 for s in self.std]

    @abstractmethod
    def logits(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Normalised (B, 3, H, W) float images -> float32 (B, K+1, H, W) logits, on the backend's device."""

    def normalize(self, stack: np.ndarray) -> torch.Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 on the CPU, (x / 255 - mean) / std."""
        x = torch.from_numpy(np.ascontiguousarray(stack)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)  # in place: x is a fresh float copy

    def labels(self, stack: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 images of one size -> (B, H, W) uint8 label maps."""
        return argmax_labels(self.logits(self.normalize(stack))).cpu().numpy()

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """uint8 (H, W, 3) RGB images of any sizes -> uint8 (H, W) label maps, in order (see module doc)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
                raise ValueError(f"image {index}: expected a uint8 (H, W, 3) array, got {got}")
            groups.setdefault(image.shape[:2], []).append(index)
        masks: list[np.ndarray | None] = [None] * len(images)
        for indices in groups.values():
            out = self.labels(np.stack([images[i] for i in indices]))
            for i, mask in zip(indices, out, strict=True):
                masks[i] = mask
        return masks  # type: ignore[return-value]


ARGMAX_BLOCK = 1 << 20
"""Logits per block of the CPU argmax (4 MiB of float32): the channels-last copy stays this small."""


def argmax_labels(logits: torch.Tensor, block: int = ARGMAX_BLOCK) -> torch.Tensor:
    """(B, K, H, W) logits -> (B, H, W) uint8 labels, the first maximum on ties (torch.argmax's result).

    On the CPU torch reduces over the strided label axis slowly: 75 ms for 11 x 512 x 512 on 2 cores, more
    than an int8 network takes. The same argmax over a channels-last copy takes 8 ms (2-core Xeon,
    torch 2.14.1), with the identical result. The copy is made a few rows at a time (about `block` logits),
    so that it adds no full-size tensor to the memory a `segment --memory-budget` batch may use."""
    if logits.device.type != "cpu":
        return logits.argmax(dim=1).to(torch.uint8)
    batch, labels, height, width = logits.shape
    out = torch.empty((batch, height, width), dtype=torch.uint8)
    rows = max(1, block // max(1, labels * width))
    for index in range(batch):
        for top in range(0, height, rows):
            part = logits[index, :, top : top + rows].permute(1, 2, 0).contiguous()
            out[index, top : top + rows] = part.argmax(dim=-1)
    return out


# ---------------------------------------------------------------------------------------------- loading


def model_kind(path: Path) -> str:
    """ "rundir", "checkpoint", "onnx" or "engine"; a one-line error for anything else."""
    if path.is_dir():
        return "rundir"
    if not path.exists():
        raise CheckpointError(f"{path}: model not found (give a run directory, a .onnx or a .engine file)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    raise ConfigError(
        f"--model {path}: unknown model file type {suffix!r} (expected a run directory, "
        f".onnx, {', '.join(ENGINE_SUFFIXES)} or {', '.join(CHECKPOINT_SUFFIXES)})"
    )


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads of one core count once); os.cpu_count() where
    the topology cannot be read."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            return len(cpus) or os.cpu_count() or 1
    return len(cores) or os.cpu_count() or 1


def cpu_threads() -> int:
    """Intra-op threads for one serving process: physical cores / processes on this machine, at least 1."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, physical_cores() // local)


def _checkpoint_sha256(rundir: Path) -> str:
    from fastwsss.engine.artifacts import final_seg_checkpoint
    from fastwsss.export.onnx import file_sha256

    return file_sha256(final_seg_checkpoint(rundir))


def exported_model(rundir: Path, backend: str, device: str | None = None) -> tuple[Path | None, str]:
    """(RUNDIR/export file for `backend` made from the run's current checkpoint, or None; why not).

    onnxruntime / openvino: export/model_int8.onnx on the CPU, else export/model.onnx (the fp32 graph only
    where onnxruntime runs on CUDA). tensorrt: export/model.*.engine built by this TensorRT for this GPU.
    An export whose `source_sha256` is not the checkpoint's is stale (the run was trained further).
    """
    folder = rundir / EXPORT_FOLDER
    if backend in ONNX_BACKENDS:
        names = ["model.onnx"] if backend == "onnxruntime" and _onnxruntime_on_cuda(device) else [INT8_ONNX, "model.onnx"]
        candidates = [folder / name for name in names if (folder / name).is_file()]
    else:
        candidates = sorted(folder.glob("model.*.engine")) if folder.is_dir() else []
    if not candidates:
        return None, f"no {'model.onnx' if backend in ONNX_BACKENDS else 'engine'} in {folder}"
    sha = _checkpoint_sha256(rundir)
    why = f"{candidates[0]} was exported from another checkpoint (stale)"
    for candidate in candidates:
        try:
            if backend in ONNX_BACKENDS:
                from fastwsss.export.onnx import read_onnx_metadata

                meta = read_onnx_metadata(candidate)
            else:
                import tensorrt as trt

                from fastwsss.export.tensorrt import check_engine_compatible, read_engine_file

                meta = read_engine_file(candidate)[0]
                check_engine_compatible(meta, trt.__version__, torch.cuda.get_device_capability(device), candidate)
        except FastwsssError as exc:
            why = one_line(str(exc))
            continue
        if meta.get("source_sha256") == sha:
            return candidate, ""
    return None, why


def _onnxruntime_on_cuda(device: str | None) -> bool:
    """Whether OnnxRuntimeSegmenter would run on CUDAExecutionProvider for `device`."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return has_cuda and (device is None or device.startswith("cuda"))


def _export_note(path: Path) -> str:
    """What a run's export file is, for the line that says which model runs."""
    if path.name == INT8_ONNX:
        return f"the run's int8 export {EXPORT_FOLDER}/{path.name} (static int8, Q/DQ; `fastwsss export --int8`)"
    return f"the run's up-to-date fp32 export {EXPORT_FOLDER}/{path.name}"


def _auto_choice(path: Path, kind: str, device: str | None) -> tuple[str, Path, str]:
    """(backend, file to load, reason) per the module docstring's rule."""
    if kind == "engine":
        return "tensorrt", path, "auto: a TensorRT engine file runs only on TensorRT"
    if kind == "onnx":
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers() and (device is None or device.startswith("cuda")):
            return "onnxruntime", path, "auto: an ONNX file runs on onnxruntime; CUDAExecutionProvider is available"
        return "onnxruntime", path, "auto: an ONNX file runs on onnxruntime; no CUDAExecutionProvider, so the CPU"
    on_cuda = resolve_device(device).type == "cuda"
    if kind == "rundir" and on_cuda and tensorrt_unavailable_reason() is None:
        engine, _ = exported_model(path, "tensorrt", device)
        if engine is not None:
            return "tensorrt", engine, f"auto: {engine.name} in the run's export folder fits this GPU and TensorRT"
    if on_cuda:
        return "torch", path, "auto: on a CUDA GPU, torch fp16 with CUDA graphs (no usable TensorRT engine)"
    if kind == "rundir":
        onnx, why = exported_model(path, "onnxruntime", device)
        if onnx is not None:
            return "onnxruntime", onnx, f"auto: on the CPU, onnxruntime on {_export_note(onnx)}"
        return "torch", path, f"auto: on the CPU, torch eager fp32 ({why}; `fastwsss export` makes one for onnxruntime)"
    return "torch", path, "auto: a checkpoint file on the CPU runs as torch eager fp32"


def load_segmenter(
    model: str | Path,
    backend: str = "auto",
    device: str | None = None,
    *,
    half: bool | None = None,
    cuda_graphs: bool | None = None,
    compile: bool = False,
) -> Segmenter:
    """The model (RUNDIR, .pt, .onnx or .engine) behind the asked-for backend; `auto` per the module doc.

    `device`: "auto" or None (CUDA when present, else CPU), "cpu" or "cuda[:N]". `half`, `cuda_graphs` and
    `compile` apply to the torch backend only. A run directory with --backend onnxruntime / tensorrt uses
    its up-to-date export (RUNDIR/export, written by `fastwsss export`).
    """
    path = Path(model)
    device = requested_device(device)
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "tensorrt":
        require_tensorrt(path)
    kind = model_kind(path)
    reason = ""
    if backend == "auto":
        backend, path, reason = _auto_choice(path, kind, device)
        kind = model_kind(path)
    elif kind == "rundir" and backend in ("onnxruntime", "tensorrt", "openvino"):
        exported, why = exported_model(path, backend, device)
        if exported is None:
            raise ConfigError(
                f"--backend {backend}: {why}; run `fastwsss export {path}`" + (" --trt" * (backend == "tensorrt"))
            )
        if backend in ONNX_BACKENDS:
            reason = f"--backend {backend}: {_export_note(exported)}"
        path, kind = exported, model_kind(exported)
    if backend == "tensorrt":
        if kind != "engine":
            raise ConfigError(
                f"--backend tensorrt: {path} is not an engine file; build one with `fastwsss export --trt`"
            )
        from fastwsss.export.runtime_tensorrt import TensorRTSegmenter

        return TensorRTSegmenter(path, device, reason)
    if backend == "onnxruntime":
        if kind != "onnx":
            raise ConfigError(f"--backend onnxruntime: {path} is not an .onnx file; export one with `fastwsss export`")
        from fastwsss.export.runtime_onnx import OnnxRuntimeSegmenter

        return OnnxRuntimeSegmenter(path, device, reason)
    if backend == "openvino":
        if kind != "onnx":
            raise ConfigError(f"--backend openvino: {path} is not an .onnx file; export one with `fastwsss export`")
        from fastwsss.export.runtime_openvino import OpenVinoSegmenter

        return OpenVinoSegmenter(path, device, reason)
    if kind not in ("rundir", "checkpoint"):
        raise ConfigError(f"--backend torch: needs a run directory or a .pt checkpoint, {path} is a {kind} file")
    from fastwsss.export.runtime_torch import load_torch_segmenter

    return load_torch_segmenter(path, device, half, cuda_graphs, compile, reason)


def require_tensorrt(path: Path) -> None:
    """Say plainly that TensorRT is missing before looking at the file."""
    why = tensorrt_unavailable_reason()
    if why:
        raise FastwsssError(f"{path}: cannot run a TensorRT engine here: {why}")


_BACKEND_MODULES = {
    "TorchSegmenter": "runtime_torch",
    "OnnxRuntimeSegmenter": "runtime_onnx",
    "TensorRTSegmenter": "runtime_tensorrt",
    "OpenVinoSegmenter": "runtime_openvino",
}


def __getattr__(name: str) -> Any:
    """The backend classes, imported on first use (each module imports this one for `Segmenter`)."""
    if name in _BACKEND_MODULES:
        return getattr(importlib.import_module(f"fastwsss.export.{_BACKEND_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
