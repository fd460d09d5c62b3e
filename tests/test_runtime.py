"""Serving runtimes (export/runtime.py): torch and onnxruntime agree, `auto` explains itself, TensorRT is
refused with a clear message where it is not installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastwsss.config import get_preset
from fastwsss.engine.rundir import RunDir
from fastwsss.errors import ConfigError, FastwsssError
from fastwsss.export.onnx import build_metadata, export_seg_onnx
from fastwsss.export.runtime import OnnxRuntimeSegmenter, TorchSegmenter, argmax_labels, load_segmenter
from fastwsss.export.tensorrt import tensorrt_unavailable_reason
from fastwsss.models.deeplab import build_seg_model, save_seg_checkpoint

NAMES = [f"thing{i}" for i in range(1, 10)]


def make_run_dir(path: Path) -> Path:
    """A run directory holding only what serving needs: config.json and seg/ckpt.pt (9 classes + background)."""
    torch.manual_seed(0)
    model = build_seg_model("deeplabv2", "resnet18_quarter", 10).eval()
    RunDir(path).save_config(get_preset("tiny"))
    save_seg_checkpoint(path / "seg" / "ckpt.pt", model, {"class_names": NAMES})
    return path


def export_onnx(model: torch.nn.Module, path: Path, with_argmax: bool = False, source: Path | None = None) -> Path:
    metadata = build_metadata(NAMES, source)
    return export_seg_onnx(model, path, metadata=metadata, with_argmax=with_argmax, example_hw=(64, 64))


def images() -> list[np.ndarray]:
    """Two images of different sizes (one odd) with smooth structure, so argmax is not decided by noise."""
    rng = np.random.default_rng(0)
    out = []
    for height, width in ((72, 96), (61, 47)):
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (height + width)], axis=-1)
        out.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run directory, its ONNX exports (logits, labels), and copies of the run with a fresh / stale export."""
    root = tmp_path_factory.mktemp("served")
    run = make_run_dir(root / "run")
    torch_model = load_segmenter(run, "torch", "cpu").model
    onnx = export_onnx(torch_model, root / "model.onnx", source=run / "seg" / "ckpt.pt")
    exported = root / "exported_run"
    shutil.copytree(run, exported)
    (exported / "export").mkdir(exist_ok=True)
    shutil.copy(onnx, exported / "export" / "model.onnx")
    stale = root / "stale_run"
    shutil.copytree(exported, stale)
    save_seg_checkpoint(stale / "seg" / "ckpt.pt", torch_model, {"class_names": NAMES, "trained": "further"})
    return {
        "run": run,
        "onnx": onnx,
        "labels_onnx": export_onnx(torch_model, root / "labels.onnx", with_argmax=True),
        "exported_run": exported,
        "stale_run": stale,
    }


def test_torch_and_onnxruntime_agree(served: dict[str, Path]) -> None:
    reference = load_segmenter(served["run"], "torch", "cpu")
    assert isinstance(reference, TorchSegmenter) and reference.detail.startswith("cpu")
    pictures = images()
    expected = reference.segment(pictures)
    assert [m.shape for m in expected] == [p.shape[:2] for p in pictures]
    assert all(m.dtype == np.uint8 for m in expected)
    for key in ("onnx", "labels_onnx"):
        segmenter = load_segmenter(served[key], "onnxruntime")
        assert segmenter.provider == "CPUExecutionProvider" and "CPUExecutionProvider" in segmenter.detail
        got = segmenter.segment(pictures)
        agreement = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(expected, got, strict=True)]))
        assert agreement >= 0.999, (key, agreement)
    ort = load_segmenter(served["onnx"], "onnxruntime")
    batch = reference.normalize(np.stack([pictures[1]] * 2))
    diff = (reference.logits(batch) - ort.logits(batch)).abs().max().item()
    assert diff < 1e-3
    assert ort.logits(batch).shape == (2, 10, 61, 47)


def test_metadata_and_class_names(served: dict[str, Path]) -> None:
    for key in ("run", "onnx"):
        segmenter = load_segmenter(served[key])
        assert segmenter.class_names == ["background", *NAMES]
        assert segmenter.palette.shape[1] == 3 and len(segmenter.palette) >= 10
        assert segmenter.mean == pytest.approx([0.485, 0.456, 0.406], abs=1e-6)


def test_segment_mixed_sizes_matches_one_at_a_time(served: dict[str, Path]) -> None:
    segmenter = load_segmenter(served["onnx"])
    a, b = images()
    together = segmenter.segment([a, b, a])
    assert np.array_equal(together[0], segmenter.segment([a])[0])
    assert np.array_equal(together[1], segmenter.segment([b])[0])
    assert np.array_equal(together[0], together[2])
    with pytest.raises(ValueError, match="image 1"):
        segmenter.segment([a, a.astype(np.float32)])


def test_auto_reports_its_choice(served: dict[str, Path]) -> None:
    onnx = load_segmenter(served["onnx"], "auto")
    assert isinstance(onnx, OnnxRuntimeSegmenter)
    assert onnx.reason.startswith("auto:") and "onnxruntime" in onnx.reason
    run = load_segmenter(served["run"], "auto", "cpu")
    assert run.backend == "torch" and "CPU" in run.reason and "fp32" in run.detail
    assert load_segmenter(served["run"], "torch").reason == ""
    assert "no model.onnx" in run.reason


def test_run_directory_export_is_used_only_when_up_to_date(served: dict[str, Path]) -> None:
    fresh = load_segmenter(served["exported_run"], "auto", "cpu")
    assert fresh.backend == "onnxruntime" and fresh.source == served["exported_run"] / "export" / "model.onnx"
    assert "export/model.onnx" in fresh.reason
    assert load_segmenter(served["exported_run"], "onnxruntime").backend == "onnxruntime"
    stale = load_segmenter(served["stale_run"], "auto", "cpu")
    assert stale.backend == "torch" and "stale" in stale.reason
    with pytest.raises(ConfigError, match="stale"):
        load_segmenter(served["stale_run"], "onnxruntime")


def test_wrong_backend_for_the_file(served: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--backend torch"):
        load_segmenter(served["onnx"], "torch")
    with pytest.raises(ConfigError, match="--backend onnxruntime: no model.onnx"):
        load_segmenter(served["run"], "onnxruntime")
    with pytest.raises(ConfigError, match="unknown backend"):
        load_segmenter(served["run"], "tflite")
    with pytest.raises(FastwsssError, match="model not found"):
        load_segmenter(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(FastwsssError, match="broken.onnx"):
        load_segmenter(broken)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            load_segmenter(served["run"], "torch", "cuda")


def test_tensorrt_missing_is_a_clear_error(served: dict[str, Path], tmp_path: Path) -> None:
    why = tensorrt_unavailable_reason()
    if why is None:
        pytest.skip("TensorRT is installed here")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    for backend in ("tensorrt", "auto"):
        with pytest.raises(FastwsssError, match="TensorRT") as info:
            load_segmenter(engine, backend)
        assert "model.engine" in str(info.value) and why in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(FastwsssError, match="TensorRT"):
        load_segmenter(served["onnx"], "tensorrt")


@pytest.mark.parametrize("block", [1, 120, 1 << 20])  # one row per block, a few rows (a short last block), one
@pytest.mark.parametrize("shape", [(1, 11, 7, 5), (3, 21, 16, 9), (2, 2, 1, 1)])
def test_argmax_labels_equals_torch_argmax_ties_and_nan_included(shape: tuple[int, ...], block: int) -> None:
    generator = torch.Generator().manual_seed(sum(shape))
    logits = torch.randint(-2, 3, shape, generator=generator).float()  # many ties
    logits.view(-1)[:: 13] = float("nan")
    got = argmax_labels(logits, block)
    assert got.dtype == torch.uint8 and got.shape == (shape[0], *shape[2:])
    torch.testing.assert_close(got, logits.argmax(dim=1).to(torch.uint8), rtol=0, atol=0)
    strided = torch.randn(shape[0], shape[2], shape[3], shape[1], generator=generator).permute(0, 3, 1, 2)
    torch.testing.assert_close(argmax_labels(strided, block), strided.argmax(dim=1).to(torch.uint8), rtol=0, atol=0)
