"""ONNX export of the DeepLab model and the CAM classifier, with metadata and an onnxruntime parity check.

Graphs (input `images`: (N, 3, H, W) float32, RGB / 255 then ImageNet mean/std; N, H and W dynamic):
    kind "seg":        images -> logits (N, K+1, H, W) float32
    kind "seg_labels": images -> labels (N, H, W) int64, the argmax over classes computed in the graph
    kind "cam":        images -> logits (N, K) float32 and cams (N, K, ceil(H/16), ceil(W/16)) float32,
                       relu(cam) / (max_{h,w} relu(cam) + 1e-5) per (image, class)
Channel k of `logits` (seg) is `classes[k]` of the metadata; channel k of `cams` is `classes[k + 1]`.

Exporter: torch's dynamo exporter (`dynamo=True`), chosen explicitly. It is the one torch maintains and
the default since torch 2.9; the TorchScript exporter is deprecated. A model it cannot export raises a
FastwsssError: there is no silent retry with the other exporter, whose graph would be untested.
`external_data=False` writes one self-contained file (weights inside the protobuf) that can be copied,
hashed and served alone; it limits a model to 2 GB, far above DeepLab-v2 ResNet-101 (about 170 MB).

fp16 graphs (`fp16=True`, for TensorRT >= 11, which takes precision from the graph): the model runs in
half precision inside the graph, but the input and the outputs stay float32, and the CAM max-normalisation
runs in float32 (fp16 overflow there gives NaN or collapsed maps, DEPLOY.md).

Metadata (`metadata_props`, one JSON value under the key "fastwsss") makes a file self-describing:
classes (background first), palette, mean/std, kind, precision, outputs, source checkpoint sha256 and the
fastwsss version.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import fastwsss
from fastwsss.data.palette import voc_palette
from fastwsss.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from fastwsss.engine.files import atomic_path
from fastwsss.errors import CheckpointError, ConfigError, FastwsssError, one_line
from fastwsss.models import eval_mode
from fastwsss.models.cam_net import CAMNet

METADATA_KEY = "fastwsss"
METADATA_FORMAT = "fastwsss.onnx/1"
INPUT_NAME = "images"
CAM_EPS = 1e-5
DEFAULT_OPSET = 18
OUTPUTS = {"seg": ("logits",), "seg_labels": ("labels",), "cam": ("logits", "cams")}
THRESHOLDS = {"fp32": (1e-4, 99.9), "fp16": (5e-2, 99.0)}
"""Parity thresholds per graph precision: (max abs difference, min argmax agreement in %)."""
REQUIRED_METADATA = ("classes", "palette", "mean", "std")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_metadata(foreground_classes: list[str], source_checkpoint: str | Path | None = None) -> dict[str, Any]:
    """The data-set part of the metadata: classes with background first, their palette, ImageNet mean/std."""
    classes = ["background", *foreground_classes]
    meta: dict[str, Any] = {
        "classes": classes,
        "palette": voc_palette(len(classes)).tolist(),
        "mean": [round(float(v), 6) for v in IMAGENET_MEAN],
        "std": [round(float(v), 6) for v in IMAGENET_STD],
        "input_scale": "RGB uint8 / 255, then (x - mean) / std",
    }
    if source_checkpoint is not None:
        meta["source_checkpoint"] = Path(source_checkpoint).name
        meta["source_sha256"] = file_sha256(source_checkpoint)
    return meta


class SegExport(nn.Module):
    """images -> logits, or labels (argmax in the graph); optionally the model in half precision."""

    def __init__(self, model: nn.Module, with_argmax: bool = False, fp16: bool = False) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half() if fp16 else model
        self.with_argmax = with_argmax
        self.fp16 = fp16

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images.half() if self.fp16 else images)
        if self.with_argmax:
            return logits.argmax(dim=1)
        return logits.float()


class CamExport(nn.Module):
    """images -> (logits, max-normalised cams); the normalisation always in float32."""

    def __init__(self, model: CAMNet, fp16: bool = False, eps: float = CAM_EPS) -> None:
        super().__init__()
        if model.extra_channels:
            raise ConfigError(
                f"extra_channels: a CAMNet with {model.extra_channels} extra input channels (CONTA round >= 1) "
                "cannot be exported alone; export the round-0 classifier"
            )
        self.model = copy.deepcopy(model).half() if fp16 else model
        self.fp16 = fp16
        self.eps = eps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.features(images.half() if self.fp16 else images)
        logits = self.model.head(features.mean(dim=(2, 3), keepdim=True)).flatten(1).float()
        cams = torch.relu(self.model.head(features).float())
        peak = cams.amax(dim=(2, 3), keepdim=True)
        return logits, cams / (peak + self.eps)


def export_module(model: nn.Module, kind: str, fp16: bool = False) -> nn.Module:
    """The wrapper whose outputs a graph of `kind` holds (also the eager reference of `parity_report`)."""
    if kind == "cam":
        if not isinstance(model, CAMNet):
            raise ConfigError(f"kind cam: needs a CAMNet, got {type(model).__name__}")
        return CamExport(model, fp16=fp16)
    if kind in ("seg", "seg_labels"):
        return SegExport(model, with_argmax=kind == "seg_labels", fp16=fp16)
    raise ConfigError(f"kind: unknown export kind {kind!r}; valid: {', '.join(OUTPUTS)}")


def _check_metadata(metadata: dict[str, Any], num_labels: int, path: Path) -> None:
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ConfigError(f"{path}: metadata lacks {', '.join(missing)} (see export.onnx.build_metadata)")
    if len(metadata["classes"]) != num_labels:
        raise ConfigError(
            f"{path}: metadata names {len(metadata['classes'])} classes (background included) but the model "
            f"has {num_labels}"
        )


def _export(
    module: nn.Module,
    path: str | Path,
    kind: str,
    metadata: dict[str, Any],
    opset: int,
    example_hw: tuple[int, int],
    precision: str,
) -> Path:
    """Dynamo export to a temporary file, metadata written in, checker run, then renamed onto `path`."""
    from torch.export import Dim

    path = Path(path)
    if opset < DEFAULT_OPSET:
        raise ConfigError(f"opset: the dynamo exporter writes opset >= {DEFAULT_OPSET}, got {opset}")
    meta = {
        **metadata,
        "format": METADATA_FORMAT,
        "kind": kind,
        "input": INPUT_NAME,
        "outputs": list(OUTPUTS[kind]),
        "precision": precision,
        "opset": opset,
        "fastwsss_version": fastwsss.__version__,
    }
    if kind == "cam":
        meta.update(cam_eps=CAM_EPS, cam_stride=module.model.output_stride)
    # Batch 2 in the example: torch.export specialises sizes 0 and 1, which would pin the batch dimension.
    example = torch.zeros(2, 3, *example_hw, dtype=torch.float32, device=_device(module))
    dynamic = {INPUT_NAME: {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}}
    with atomic_path(path) as tmp, torch.no_grad():
        try:
            torch.onnx.export(
                module, (example,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(OUTPUTS[kind]), dynamic_shapes=dynamic,
                verbose=False, optimize=True,
            )  # fmt: skip
        except Exception as exc:
            raise FastwsssError(
                f"{path}: torch.onnx dynamo export of the {kind} model failed; no fallback to the TorchScript "
                f"exporter is tried ({type(exc).__name__}: {one_line(str(exc))[:300]})"
            ) from exc
        write_metadata(tmp, meta, path)
    return path


def write_metadata(file: Path, meta: dict[str, Any], name: str | Path | None = None) -> None:
    """Store `meta` under METADATA_KEY in the ONNX `file` (replacing an earlier value), then run onnx.checker
    with full_check; a failure names `name` (the final path when `file` is a temporary one)."""
    model_proto = onnx.load(str(file))
    props = [p for p in model_proto.metadata_props if p.key != METADATA_KEY]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(props)
    model_proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(model_proto, str(file))
    try:
        onnx.checker.check_model(str(file), full_check=True)
    except Exception as exc:
        raise FastwsssError(f"{name or file}: graph fails onnx.checker ({one_line(str(exc))[:300]})") from exc


def _device(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def export_seg_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    metadata: dict[str, Any],
    with_argmax: bool = False,
    opset: int = DEFAULT_OPSET,
    example_hw: tuple[int, int] = (321, 321),
    fp16: bool = False,
) -> Path:
    """Export a SegModel: `images` -> `logits` (N, K+1, H, W), or `labels` (N, H, W) int64 with_argmax."""
    path = Path(path)
    _check_metadata(metadata, model.num_classes, path)
    kind = "seg_labels" if with_argmax else "seg"
    with eval_mode(model):
        module = export_module(model, kind, fp16=fp16).eval()
        return _export(module, path, kind, metadata, opset, example_hw, "fp16" if fp16 else "fp32")


def export_cam_onnx(
    model: CAMNet,
    path: str | Path,
    *,
    metadata: dict[str, Any],
    opset: int = DEFAULT_OPSET,
    example_hw: tuple[int, int] = (321, 321),
    fp16: bool = False,
) -> Path:
    """Export a CAMNet: `images` -> `logits` (N, K) and `cams` (N, K, h, w) max-normalised in float32."""
    path = Path(path)
    _check_metadata(metadata, model.num_classes + 1, path)
    with eval_mode(model):
        module = export_module(model, "cam", fp16=fp16).eval()
        return _export(module, path, "cam", metadata, opset, example_hw, "fp16" if fp16 else "fp32")


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata that `export_*_onnx` stored in `path` (weights are not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: ONNX file not found")
    try:
        model_proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from exc
    for prop in model_proto.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path}: metadata {METADATA_KEY!r} is not valid JSON ({exc})") from None
            except RecursionError:
                raise CheckpointError(f"{path}: metadata {METADATA_KEY!r} is nested too deeply") from None
    raise CheckpointError(f"{path}: no {METADATA_KEY!r} metadata; not exported by fastwsss")


def _image_tensor(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"parity images must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    return np.ascontiguousarray(normalize(image).transpose(2, 0, 1)[None])


def _compare(kind: str, ref: list[np.ndarray], got: list[np.ndarray], max_abs: float) -> dict[str, Any]:
    """One image: max abs difference, the tolerance it is held to, and argmax agreement over classes.

    The tolerance of an output is `max_abs * max(1, max |eager output|)`: fp32 rounding differences between
    two conv implementations grow with the values (a realistic DeepLab with logits up to ~25 differs by
    ~1.3e-4 on 500x375 VOC images while agreeing on > 99.999% of pixels), so a fixed 1e-4 applies to
    outputs of magnitude <= 1 (normalised CAMs) and scales above.
    """
    if kind == "seg_labels":
        labels = ref[0].argmax(axis=1)
        return {"max_abs_diff": None, "ref_max_abs": None, "tolerance": None, "within": True,
                "agree": int((labels == got[0]).sum()), "pixels": int(labels.size)}  # fmt: skip
    diffs, scales, within = [], [], True
    for r, g in zip(ref, got, strict=True):
        if r.shape != g.shape:
            raise FastwsssError(f"parity: onnxruntime output shape {g.shape} differs from eager {r.shape}")
        diff = float(np.abs(r.astype(np.float64) - g).max()) if r.size else 0.0
        scale = max(1.0, float(np.abs(r).max())) if r.size else 1.0
        within = within and diff <= max_abs * scale
        diffs.append(diff)
        scales.append(scale)
    agree = ref[-1].argmax(axis=1) == got[-1].argmax(axis=1)  # seg: logits; cam: cams
    return {"max_abs_diff": max(diffs), "ref_max_abs": max(scales), "tolerance": max_abs * max(scales),
            "within": within, "agree": int(agree.sum()), "pixels": int(agree.size)}  # fmt: skip


def parity_report(
    model: nn.Module,
    onnx_path: str | Path,
    images: list[np.ndarray],
    *,
    max_abs: float | None = None,
    min_agreement: float | None = None,
) -> dict[str, Any]:
    """Torch eager vs onnxruntime (CPUExecutionProvider) on each uint8 (H, W, 3) image at its own size.

    The eager reference is the same wrapper the graph was exported from (read from the metadata `kind`),
    in float32 whatever the graph's precision. For `seg_labels` the reference is argmax(eager logits) and
    only agreement is scored. Passing needs every image within tolerance (`_compare`: `max_abs`, scaled by
    the output's magnitude above 1) and overall argmax agreement >= `min_agreement` %; both default by the
    graph's precision (THRESHOLDS). `providers` is what onnxruntime actually used.
    """
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    meta = read_onnx_metadata(onnx_path)
    kind, precision = meta.get("kind"), meta.get("precision", "fp32")
    default_abs, default_agree = THRESHOLDS.get(precision, THRESHOLDS["fp32"])
    max_abs = default_abs if max_abs is None else max_abs
    min_agreement = default_agree if min_agreement is None else min_agreement
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows = []
    with eval_mode(model), torch.inference_mode():
        reference = export_module(model, "seg" if kind == "seg_labels" else kind).eval()
        device = _device(reference)
        for index, image in enumerate(images):
            x = _image_tensor(image)
            eager = reference(torch.from_numpy(x).to(device))
            ref = [t.float().cpu().numpy() for t in (eager if isinstance(eager, tuple) else (eager,))]
            got = session.run(list(OUTPUTS[kind]), {INPUT_NAME: x})
            row = _compare(kind, ref, got, max_abs)
            row["agreement_pct"] = 100.0 * row["agree"] / max(row["pixels"], 1)
            rows.append({"index": index, "height": int(image.shape[0]), "width": int(image.shape[1]), **row})
    diffs = [row["max_abs_diff"] for row in rows if row["max_abs_diff"] is not None]
    agreement = 100.0 * sum(row["agree"] for row in rows) / max(sum(row["pixels"] for row in rows), 1)
    passed = bool(rows) and agreement >= min_agreement and all(row["within"] for row in rows)
    return {
        "onnx": onnx_path.name,
        "kind": kind,
        "precision": precision,
        "providers": session.get_providers(),
        "images": rows,
        "max_abs_diff": max(diffs) if diffs else None,
        "agreement_pct": agreement,
        "thresholds": {
            "max_abs_diff": max_abs,
            "max_abs_diff_scaled_by": "max(1, max |eager output|) per image and output",
            "min_agreement_pct": min_agreement,
        },
        "passed": passed,
    }
