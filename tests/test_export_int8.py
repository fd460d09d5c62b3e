"""`fastwsss export --int8` (export/quantize.py, export/int8_eval.py) on a trained tiny-preset run.

One run is trained for the module (the tiny preset cut down by tests/small_runs.py, on a private copy of
its synthetic data so that one training image can be corrupted after training) and exported once with
--int8; the tests read that export. A second export of a copy whose config names no val split covers the
fallback scoring.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from small_runs import fast_config
from typer.testing import CliRunner

from fastwsss.algorithms.metrics import ConfusionMeter
from fastwsss.cli import app
from fastwsss.commands.export import INT8_ONNX, MANIFEST, check_options, export_command
from fastwsss.data import build_source
from fastwsss.data.synthetic import generate_synthetic
from fastwsss.engine.pipeline import run_pipeline
from fastwsss.engine.progress import console
from fastwsss.engine.rundir import RunDir
from fastwsss.errors import ConfigError
from fastwsss.export.int8_eval import MAX_MIOU_DROP, MIN_AGREEMENT_PCT
from fastwsss.export.onnx import _image_tensor, read_onnx_metadata
from fastwsss.export.quantize import METHODS, load_calibration_images, qdq_counts

pytestmark = pytest.mark.slow
CALIB = 8
CORRUPT_INDEX = 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("int8")
    config = fast_config()
    root = generate_synthetic(base / "data", config.data.synth, progress=False)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(root)))
    run = run_pipeline(config, base / "run")
    train = build_source(config.data, config.data.train_split)
    train.image_path(train.ids[CORRUPT_INDEX]).write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # after training
    return run.path


@pytest.fixture(scope="module")
def exported(tiny_run) -> tuple[dict, str]:
    with console.capture() as captured:
        result = export_command(tiny_run, int8=True, calib=CALIB)
    return result, captured.get()


def int8_report(rundir: Path, out: str = "export") -> dict:
    return json.loads((rundir / out / "parity.json").read_text())["reports"][INT8_ONNX]


def test_int8_model_is_a_checked_qdq_graph_that_loads_anywhere(tiny_run, exported):
    result, _ = exported
    out = tiny_run / "export"
    assert INT8_ONNX in result["files"] and INT8_ONNX in json.loads((out / MANIFEST).read_text())["files"]
    meta = read_onnx_metadata(out / INT8_ONNX)
    assert meta["precision"] == "int8" and meta["kind"] == "seg" and meta["outputs"] == ["logits"]
    assert meta["source_sha256"] == read_onnx_metadata(out / "model.onnx")["source_sha256"]
    assert meta["quantization"]["format"] == "QDQ" and meta["quantization"]["calibration_images"] == CALIB
    counts = qdq_counts(out / INT8_ONNX)
    assert counts["QuantizeLinear"] > 10 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    assert counts["non_standard_ops"] == 0  # saved at ORT_ENABLE_BASIC: no CPU-only fused ops in the file
    graph = onnx.load(str(out / INT8_ONNX)).graph
    weights = {t.name: t for t in graph.initializer}
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear" and weights.get(n.input[0]) is not None
                   and weights[n.input[0]].data_type == onnx.TensorProto.INT8 and len(weights[n.input[0]].dims) == 4]  # fmt: skip
    assert per_channel and all(np.prod(weights[n.input[1]].dims) > 1 for n in per_channel)  # one scale per channel
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # a plain ONNX runtime's view
    session = ort.InferenceSession(str(out / INT8_ONNX), options, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": np.zeros((2, 3, 37, 45), dtype=np.float32)})[0]
    assert logits.shape == (2, len(meta["classes"]), 37, 45) and np.isfinite(logits).all()


def test_int8_report_scores_every_method_and_keeps_the_best_by_val_miou(tiny_run, exported):
    result, _ = exported
    report = int8_report(tiny_run)
    assert [row["method"] for row in report["candidates"]] == list(METHODS)
    assert all(row["miou"] is not None for row in report["candidates"])
    best = max(report["candidates"], key=lambda row: (row["miou"], row["agreement_pct"]))
    assert (
        report["method"]
        == best["method"]
        == read_onnx_metadata(tiny_run / "export" / INT8_ONNX)["quantization"]["method"]
    )
    assert report["selected_by"] == "val mIoU" and report["split"] == "val" and "miou_absent" not in report
    assert report["miou"] == best["miou"] and report["agreement_pct"] == best["agreement_pct"]
    assert report["miou_drop"] == pytest.approx(report["fp32_miou"] - report["miou"])
    expect_pass = report["agreement_pct"] >= MIN_AGREEMENT_PCT and report["miou_drop"] <= MAX_MIOU_DROP
    assert report["passed"] is expect_pass and result["parity"][INT8_ONNX]["passed"] is expect_pass

    # fp32 mIoU recomputed here, independently of the export, on the whole val split
    val = build_source(RunDir(tiny_run).load_config().data, "val")
    session = ort.InferenceSession(str(tiny_run / "export" / "model.onnx"), providers=["CPUExecutionProvider"])
    meter = ConfusionMeter(val.num_classes + 1)
    for image_id in val.ids:
        image, mask = val.load_pair(image_id)
        meter.update(session.run(["logits"], {"images": _image_tensor(image)})[0].argmax(1)[0], mask)
    assert report["images"] == len(val.ids)
    assert report["fp32_miou"] == pytest.approx(100 * meter.miou(), abs=1e-3)


def test_corrupt_calibration_image_is_skipped_with_one_line(tiny_run, exported):
    _, output = exported
    train = build_source(RunDir(tiny_run).load_config().data, "train")
    bad = train.ids[CORRUPT_INDEX]
    lines = [line for line in output.splitlines() if "skipped calibration image" in line]
    assert len(lines) == 1 and bad in lines[0] and "\n" not in lines[0]
    calibration = int8_report(tiny_run)["calibration"]
    assert calibration["skipped"] == [bad] and calibration["images"] == CALIB
    assert calibration["last_id"] == train.ids[CALIB]  # the next readable image took its place


def test_fewer_usable_images_than_asked_is_a_clear_error(tiny_run):
    train = build_source(RunDir(tiny_run).load_config().data, "train")
    said: list[str] = []
    with pytest.raises(ConfigError, match=rf"--calib 1000: the 'train' split has only {len(train.ids) - 1} usable"):
        load_calibration_images(train, 1000, say=said.append)
    assert len(said) == 1  # the corrupt one, named once
    with pytest.raises(ConfigError, match="--calib"):
        load_calibration_images(train, 0)


def test_calib_zero_with_int8_is_an_error_naming_calib(tiny_run):
    with pytest.raises(ConfigError, match="--calib"):
        check_options(False, False, True, 0, "seg")
    with pytest.raises(ConfigError, match="--what seg"):
        check_options(False, False, True, 8, "cam")
    assert check_options(True, False, True, 8, "cam") == "int8"  # a TensorRT 10 engine of the classifier
    assert check_options(False, False, True, 8, "all") == "int8"  # --int8 alone: no --trt needed
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--int8", "--calib", "0", "--out", str(tiny_run / "x")])
    assert result.exit_code != 0 and "--calib" in result.output
    assert not (tiny_run / "x").exists()


def test_run_without_val_split_exports_with_miou_marked_absent(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("export"))
    run = RunDir(copy)
    config = run.load_config()
    run.save_config(dataclasses.replace(config, data=dataclasses.replace(config.data, val_split="")))
    with console.capture() as captured:
        result = export_command(copy, int8=True, calib=CALIB)
    report = int8_report(copy)
    assert report["fp32_miou"] is None and report["miou"] is None and report["miou_drop"] is None
    assert "no val split" in report["miou_absent"] and report["selected_by"] == "pseudo-mask mIoU"
    assert report["split"] == "train" and all(row["miou"] is not None for row in report["candidates"])
    assert "mIoU absent" in captured.get()
    assert (copy / "export" / INT8_ONNX).is_file() and result["parity"]["model.onnx"]["passed"]
    parity = json.loads((copy / "export" / "parity.json").read_text())
    assert parity["images"][0]["id"].startswith("train_")  # fp32 parity on training images
