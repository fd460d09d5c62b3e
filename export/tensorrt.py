"""TensorRT engines from the exported ONNX: build plan per TensorRT version, engine cache, self-describing files.

TensorRT cannot be installed on this project's machines, so `build_engine` and the calibrator are written
against the documented Python API (TensorRT 10 and 11) and only their pure logic is tested here; nothing
TensorRT-specific is imported unless `tensorrt` is present.

Version branch (`build_plan`):
- TensorRT 10 is weakly typed: fp16 sets BuilderFlag.FP16, int8 sets INT8 (+ FP16 fallback) with an
  IInt8EntropyCalibrator2 over calibration images. Both also set OBEY_PRECISION_CONSTRAINTS and pin every
  layer after the last convolution (the CAM max-normalisation, the final resize, the argmax) to float32.
- TensorRT >= 11 is strongly typed (no FP16/INT8 flags, no calibrator): fp16 needs an fp16 ONNX (exported
  with `fp16=True`, normalisation kept in float32), int8 needs a Q/DQ ONNX: model_int8.onnx, written by
  `fastwsss export --int8` (export/quantize.py), whose Q/DQ pairs say which layers run in int8.
- fp32 clears TF32, so that an "fp32" engine computes in fp32.

An engine runs only on the TensorRT version and GPU architecture that built it, so engines are cached under
a key of (onnx sha256, TensorRT version, compute capability, profile, precision) and each file starts with
a JSON header that `check_engine_compatible` compares before anything is deserialised:

    b"FWSSTRT1" | uint32 little-endian header length | UTF-8 JSON header | serialized engine
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import fastwsss
from fastwsss.engine.files import atomic_path
from fastwsss.errors import CheckpointError, ConfigError, FastwsssError, one_line

MAGIC = b"FWSSTRT1"
HEADER_FORMAT = "fastwsss.trt_engine/1"
PRECISIONS = ("fp32", "fp16", "int8")
MIN_TRT_MAJOR = 10
DEFAULT_WORKSPACE_BYTES = 4 << 30
_LENGTH = struct.Struct("<I")


def parse_shape(text: str, setting: str = "shape") -> tuple[int, ...]:
    """'1x3x512x512' -> (1, 3, 512, 512); every size a positive integer."""
    parts = str(text).strip().lower().split("x")
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        shape = ()
    if not shape or any(size <= 0 for size in shape):
        raise ConfigError(f"{setting}: {text!r} is not a shape like 1x3x512x512 (positive sizes joined by 'x')")
    return shape


@dataclass(frozen=True)
class Profile:
    """One optimisation profile of the `images` input: min <= opt <= max per dimension, 3 channels."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        shapes = {"--min": self.min, "--opt": self.opt, "--max": self.max}
        for name, shape in shapes.items():
            if len(shape) != 4:
                raise ConfigError(f"{name}: {_fmt(shape)} must have 4 sizes NxCxHxW (e.g. 1x3x512x512)")
            if any(int(size) <= 0 for size in shape):
                raise ConfigError(f"{name}: {_fmt(shape)} has a size <= 0")
            if shape[1] != 3:
                raise ConfigError(f"{name}: {_fmt(shape)} must have 3 channels (NxCxHxW with C = 3)")
        for axis, label in enumerate(("batch", "channels", "height", "width")):
            lo, mid, hi = self.min[axis], self.opt[axis], self.max[axis]
            if not lo <= mid <= hi:
                raise ConfigError(f"--min/--opt/--max: {label} must satisfy min <= opt <= max, got {lo} / {mid} / {hi}")

    @classmethod
    def from_strings(cls, min_shape: str, opt_shape: str, max_shape: str) -> Profile:
        return cls(parse_shape(min_shape, "--min"), parse_shape(opt_shape, "--opt"), parse_shape(max_shape, "--max"))

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def __str__(self) -> str:
        return f"min {_fmt(self.min)}, opt {_fmt(self.opt)}, max {_fmt(self.max)}"


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(size) for size in shape)


def trt_major(version: str) -> int:
    """'10.3.0.26' -> 10, '11.4' -> 11."""
    match = re.match(r"\s*(\d+)", str(version))
    if match is None:
        raise ConfigError(f"TensorRT version {version!r}: cannot read a major version number")
    return int(match.group(1))


@dataclass(frozen=True)
class BuildPlan:
    """What the builder needs for one (TensorRT version, precision): flag names, not TensorRT objects."""

    trt_version: str
    precision: str
    builder_flags: tuple[str, ...] = ()
    cleared_flags: tuple[str, ...] = ()
    strongly_typed: bool = False
    needs_fp16_onnx: bool = False
    needs_qdq_onnx: bool = False
    calibrator: bool = False
    fp32_tail: bool = False
    """Pin the layers after the last convolution to float32 (weakly typed fp16 / int8 builds)."""


def build_plan(trt_version: str, precision: str) -> BuildPlan:
    """The builder settings for `precision` on TensorRT `trt_version` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    major = trt_major(trt_version)
    if major < MIN_TRT_MAJOR:
        raise ConfigError(f"TensorRT {trt_version}: fastwsss needs TensorRT >= {MIN_TRT_MAJOR}")
    if major == 10:
        if precision == "fp32":
            return BuildPlan(trt_version, precision, cleared_flags=("TF32",))
        if precision == "fp16":
            return BuildPlan(trt_version, precision, ("FP16", "OBEY_PRECISION_CONSTRAINTS"), fp32_tail=True)
        return BuildPlan(
            trt_version, precision, ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"), calibrator=True, fp32_tail=True
        )
    if precision == "int8":  # explicit quantisation: the Q/DQ pairs of the graph give the int8 layers
        return BuildPlan(trt_version, precision, strongly_typed=True, needs_qdq_onnx=True)
    if precision == "fp16":
        return BuildPlan(trt_version, precision, strongly_typed=True, needs_fp16_onnx=True)
    return BuildPlan(trt_version, precision, cleared_flags=("TF32",), strongly_typed=True)


def _cc(compute_capability: str | tuple[int, int]) -> str:
    """(8, 6) or '8.6' -> '8.6'."""
    if isinstance(compute_capability, (tuple, list)):
        return f"{int(compute_capability[0])}.{int(compute_capability[1])}"
    return str(compute_capability)


def gpu_tag(compute_capability: str | tuple[int, int]) -> str:
    """'8.6' -> 'sm86' (engines are tied to the GPU architecture)."""
    return "sm" + _cc(compute_capability).replace(".", "")


def engine_cache_key(
    onnx_sha256: str, trt_version: str, compute_capability: str | tuple[int, int], profile: Profile, precision: str
) -> str:
    """sha256 hex of the canonical JSON of everything an engine depends on."""
    fields = {
        "onnx_sha256": onnx_sha256,
        "trt_version": str(trt_version),
        "compute_capability": _cc(compute_capability),
        "profile": profile.to_dict(),
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def engine_file_name(stem: str, compute_capability: str | tuple[int, int], trt_version: str, key: str) -> str:
    """'model.sm86.10.3.0.1a2b3c4d.engine'."""
    return f"{stem}.{gpu_tag(compute_capability)}.{trt_version}.{key[:8]}.engine"


def engine_header(
    onnx_meta: dict[str, Any], profile: Profile, plan: BuildPlan, compute_capability: str | tuple[int, int],
    onnx_sha256: str, key: str,
) -> dict[str, Any]:  # fmt: skip
    """The JSON header of an engine file: the ONNX metadata that a server needs plus the build settings."""
    keep = ("kind", "classes", "palette", "mean", "std", "input_scale", "input", "outputs", "source_sha256")
    return {
        "format": HEADER_FORMAT,
        **{name: onnx_meta[name] for name in keep if name in onnx_meta},
        "profile": profile.to_dict(),
        "precision": plan.precision,
        "trt_version": plan.trt_version,
        "compute_capability": _cc(compute_capability),
        "onnx_sha256": onnx_sha256,
        "cache_key": key,
        "fastwsss_version": fastwsss.__version__,
    }


def write_engine_file(path: str | Path, header: dict[str, Any], engine: bytes) -> Path:
    """Write MAGIC + header length + JSON header + engine bytes atomically."""
    path = Path(path)
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(MAGIC + _LENGTH.pack(len(blob)) + blob)
        handle.write(bytes(engine))
    return path


def read_engine_file(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """(header, engine bytes) of a file written by `write_engine_file`; a one-line CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: engine file not found")
    data = path.read_bytes()
    start = len(MAGIC) + _LENGTH.size
    if not data.startswith(MAGIC):
        raise CheckpointError(
            f"{path}: not a fastwsss engine file (no {MAGIC.decode()} header; a bare trtexec engine has none)"
        )
    if len(data) < start:
        raise CheckpointError(f"{path}: truncated engine file (no header length)")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if start + length > len(data):
        raise CheckpointError(f"{path}: truncated engine file (header of {length} bytes, file of {len(data)})")
    try:
        header = json.loads(data[start : start + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: engine header is not valid JSON ({one_line(str(exc))})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: engine header is nested too deeply") from None
    if not isinstance(header, dict) or header.get("format") != HEADER_FORMAT:
        raise CheckpointError(f"{path}: engine header format is not {HEADER_FORMAT}")
    engine = data[start + length :]
    if not engine:
        raise CheckpointError(f"{path}: engine file holds a header but no engine")
    return header, engine


def check_engine_compatible(
    header: dict[str, Any], trt_version: str, compute_capability: str | tuple[int, int], path: str | Path = "engine"
) -> None:
    """Refuse an engine built by another TensorRT version or for another GPU architecture, naming both."""
    built_trt, built_cc = str(header.get("trt_version")), str(header.get("compute_capability"))
    here_cc = _cc(compute_capability)
    if built_trt != str(trt_version) or built_cc != here_cc:
        raise CheckpointError(
            f"{path}: built with TensorRT {built_trt} for {gpu_tag(built_cc)} (compute capability {built_cc}), "
            f"but this machine has TensorRT {trt_version} on {gpu_tag(here_cc)} (compute capability {here_cc}); "
            "rebuild it with `fastwsss export RUNDIR --trt`"
        )


def tensorrt_unavailable_reason() -> str | None:
    """Why `build_engine` cannot run here (TensorRT missing, no CUDA GPU), or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (the `tensorrt` package, whose libraries come from NVIDIA's package index)"
    except Exception as exc:  # a wheel whose CUDA libraries do not load
        return f"TensorRT is installed but cannot be loaded ({type(exc).__name__}: {one_line(str(exc))[:200]})"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False); TensorRT engines are built on the GPU"
    return None


def compute_capability() -> str:
    """The current CUDA device's compute capability as 'major.minor'."""
    import torch

    return _cc(torch.cuda.get_device_capability())


def fp32_tail_indices(layer_types: list[str]) -> list[int]:
    """Indices of the layers after the last CONVOLUTION (the head's tail: resize, CAM normalisation, argmax)."""
    convs = [i for i, name in enumerate(layer_types) if name == "CONVOLUTION"]
    return list(range(convs[-1] + 1, len(layer_types))) if convs else []


def calibration_batches(images: list[np.ndarray], shape: tuple[int, ...]) -> list[np.ndarray]:
    """Normalised (N, 3, H, W) float32 batches of the profile's opt shape; a last partial batch is dropped."""
    from PIL import Image

    from fastwsss.data.transforms import normalize

    batch, _, height, width = shape
    if len(images) < batch:
        raise ConfigError(f"--calib: {len(images)} calibration images cannot fill one batch of {batch} (--opt)")
    arrays = []
    for image in images[: len(images) // batch * batch]:
        resized = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
        arrays.append(normalize(resized).transpose(2, 0, 1))
    stacked = np.ascontiguousarray(np.stack(arrays).astype(np.float32))
    return [stacked[i : i + batch] for i in range(0, len(stacked), batch)]


def _parser_errors(parser: Any) -> list[str]:
    errors = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node = error.node_name() if hasattr(error, "node_name") else error.node()
        errors.append(f"[{error.code()}] node {node}: {one_line(error.desc())}")
    return errors


def _pin_tail_fp32(network: Any, trt: Any) -> None:
    """Weakly typed fp16/int8: keep the float layers after the last convolution in float32."""
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    floats = (trt.float32, trt.float16)
    for index in fp32_tail_indices([layer.type.name for layer in layers]):
        layer = layers[index]
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if outputs and all(tensor.dtype in floats for tensor in outputs):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def _make_calibrator(trt: Any, batches: list[np.ndarray], cache_path: Path) -> Any:
    """An IInt8EntropyCalibrator2 feeding `batches` from CUDA memory (torch tensors), cached in `cache_path`."""
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.index = 0
            self.current: torch.Tensor | None = None  # kept alive while TensorRT reads it

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(batches):
                return None
            self.current = torch.from_numpy(batches[self.index]).cuda().contiguous()
            self.index += 1
            return [int(self.current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            with atomic_path(cache_path) as tmp:
                tmp.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | Path,
    out_dir: str | Path,
    profile: Profile,
    precision: str = "fp32",
    calib_images: list[np.ndarray] | None = None,
    timing_cache: str | Path | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    stem: str | None = None,
) -> Path:
    """Build (or reuse from the cache) the engine of `onnx_path`; returns the engine file's path.

    The file is `out_dir/<stem>.<sm..>.<trt version>.<key8>.engine` (stem: the ONNX file's). The timing cache
    (default `out_dir/timing.<sm..>.<trt version>.cache`) is loaded when present and saved after the build.
    """
    from fastwsss.export.onnx import file_sha256, read_onnx_metadata

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise FastwsssError(reason)
    import tensorrt as trt

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    version = str(trt.__version__)
    plan = build_plan(version, precision)
    meta = read_onnx_metadata(onnx_path)
    if plan.needs_fp16_onnx and meta.get("precision") != "fp16":
        raise ConfigError(
            f"{onnx_path}: TensorRT {version} is strongly typed, so --fp16 needs an fp16 ONNX "
            f"(export with fp16=True); this file is {meta.get('precision', 'fp32')}"
        )
    if plan.needs_qdq_onnx and meta.get("precision") != "int8":
        raise ConfigError(
            f"{onnx_path}: TensorRT {version} is strongly typed, so --int8 needs the Q/DQ model_int8.onnx "
            f"(`fastwsss export --int8`); this file is {meta.get('precision', 'fp32')}"
        )
    if plan.calibrator and not calib_images:
        raise ConfigError("--calib: INT8 on TensorRT 10 needs calibration images (--calib N with N > 0)")
    cc, onnx_sha = compute_capability(), file_sha256(onnx_path)
    key = engine_cache_key(onnx_sha, version, cc, profile, precision)
    path = out_dir / engine_file_name(stem or onnx_path.stem, cc, version, key)
    if path.is_file():
        header, _ = read_engine_file(path)
        check_engine_compatible(header, version, cc, path)
        if header.get("cache_key") == key:
            return path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT >= 10; 11 is strongly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser)
        raise FastwsssError(f"{onnx_path}: TensorRT's ONNX parser reports {len(errors)} error(s): {' | '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    input_name = network.get_input(0).name
    trt_profile = builder.create_optimization_profile()
    trt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(trt_profile)
    if plan.fp32_tail:
        _pin_tail_fp32(network, trt)
    if plan.calibrator:
        batches = calibration_batches(list(calib_images or []), profile.opt)
        config.int8_calibrator = _make_calibrator(trt, batches, out_dir / f"calib.{key[:8]}.cache")
        config.set_calibration_profile(trt_profile)

    cache_path = Path(timing_cache) if timing_cache else out_dir / f"timing.{gpu_tag(cc)}.{version}.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FastwsssError(f"{onnx_path}: TensorRT {version} could not build an engine (see its log above)")
    with atomic_path(cache_path) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    header = engine_header(meta, profile, plan, cc, onnx_sha, key)
    return write_engine_file(path, header, bytes(serialized))
