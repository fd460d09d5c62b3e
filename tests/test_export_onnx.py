"""ONNX export (export/onnx.py) and `fastwsss export` (fastwsss/commands/export.py) on tiny models.

The dynamo exporter takes seconds per model, so the exported files are module-scoped fixtures.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fastwsss.commands.export import MANIFEST, check_options, claim_out_dir, export_command, odd_size
from fastwsss.config import SynthConfig, get_preset
from fastwsss.data.base import read_rgb
from fastwsss.data.palette import voc_palette
from fastwsss.data.synthetic import class_names as synthetic_class_names
from fastwsss.data.transforms import normalize
from fastwsss.engine.rundir import RunDir
from fastwsss.errors import CheckpointError, ConfigError, FastwsssError, RunDirError
from fastwsss.export.onnx import (
    CAM_EPS,
    METADATA_KEY,
    build_metadata,
    export_cam_onnx,
    export_seg_onnx,
    file_sha256,
    parity_report,
    read_onnx_metadata,
)
from fastwsss.models.cam_net import CAMNet, save_checkpoint
from fastwsss.models.deeplab import build_seg_model, save_seg_checkpoint

NUM_LABELS = 10  # background + 9
EXPORT_HW = (64, 64)
ODD_HW = (45, 61)


def trained_looking_seg() -> torch.nn.Module:
    """A tiny DeepLab-v2 in eval mode with BatchNorm statistics of image batches (as after training) and a
    head giving logits of a few units, not the init's ~1e-2 (near-ties would make argmax agreement moot)."""
    torch.manual_seed(0)
    model = build_seg_model("deeplabv2", "resnet18_quarter", num_classes=NUM_LABELS)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the batches below
    with torch.no_grad():
        model.train()
        for seed in range(2):
            model(torch.from_numpy(batch(random_images(*[(96, 96)] * 4, seed=100 + seed))))
        for conv in model.head.branches:
            conv.weight.normal_(0.0, 0.05)
            conv.bias.normal_(0.0, 0.5)
    return model.eval()


def random_images(*sizes: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def batch(images: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack([normalize(image).transpose(2, 0, 1) for image in images]))


@pytest.fixture(scope="module")
def seg_model() -> torch.nn.Module:
    return trained_looking_seg()


@pytest.fixture(scope="module")
def cam_model() -> CAMNet:
    torch.manual_seed(1)
    return CAMNet("resnet18_quarter", NUM_LABELS - 1).eval()


@pytest.fixture(scope="module")
def metadata() -> dict:
    return build_metadata([f"class{i}" for i in range(1, NUM_LABELS)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory, seg_model, cam_model, metadata) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    return {
        "seg": export_seg_onnx(seg_model, folder / "model.onnx", metadata=metadata, example_hw=EXPORT_HW),
        "labels": export_seg_onnx(
            seg_model, folder / "model_labels.onnx", metadata=metadata, with_argmax=True, example_hw=EXPORT_HW
        ),
        "cam": export_cam_onnx(cam_model, folder / "cam.onnx", metadata=metadata, example_hw=EXPORT_HW),
    }


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------ graphs


def test_seg_parity_at_export_and_odd_shape(seg_model, exported):
    report = parity_report(seg_model, exported["seg"], random_images(EXPORT_HW, ODD_HW))
    assert report["passed"], report
    assert report["providers"] == ["CPUExecutionProvider"]
    assert [(r["height"], r["width"]) for r in report["images"]] == [EXPORT_HW, ODD_HW]
    assert report["max_abs_diff"] <= 1e-4 and report["agreement_pct"] >= 99.9
    for row in report["images"]:
        assert row["max_abs_diff"] <= 1e-4 and row["agreement_pct"] >= 99.9
        assert row["pixels"] == row["height"] * row["width"]


def test_real_images_parity(voc_mini, seg_model, exported):
    paths = sorted((voc_mini / "JPEGImages").glob("*.jpg"))[:2]
    images = [read_rgb(path) for path in paths]
    report = parity_report(seg_model, exported["seg"], images)
    assert report["passed"], report
    assert [(r["height"], r["width"]) for r in report["images"]] == [i.shape[:2] for i in images]
    for row in report["images"]:  # logits of ~25 here: the 1e-4 tolerance scales with their magnitude
        assert row["ref_max_abs"] > 1.0 and row["max_abs_diff"] <= 1e-4 * row["ref_max_abs"]
        assert row["agreement_pct"] >= 99.9


def test_dynamic_batch_of_two(seg_model, exported):
    x = batch(random_images(ODD_HW, ODD_HW, seed=3))
    (logits,) = session(exported["seg"]).run(["logits"], {"images": x})
    with torch.inference_mode():
        eager = seg_model(torch.from_numpy(x)).numpy()
    assert logits.shape == (2, NUM_LABELS, *ODD_HW)
    assert np.abs(logits - eager).max() <= 1e-4


def test_graph_inputs_are_dynamic_and_checked(exported):
    for path in exported.values():
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) >= 18
        (image_input,) = model.graph.input
        dims = image_input.type.tensor_type.shape.dim
        assert image_input.name == "images" and dims[1].dim_value == 3
        assert all(dims[i].dim_param for i in (0, 2, 3))  # batch, height, width symbolic
    assert not list(exported["seg"].parent.glob("*.data"))  # one self-contained file


def test_argmax_variant_equals_argmax_of_logits(exported):
    x = batch(random_images(ODD_HW, ODD_HW, seed=5))
    (logits,) = session(exported["seg"]).run(["logits"], {"images": x})
    (labels,) = session(exported["labels"]).run(["labels"], {"images": x})
    assert labels.dtype == np.int64 and labels.shape == (2, *ODD_HW)
    assert (labels == logits.argmax(axis=1)).mean() >= 0.999


def test_labels_parity_report(seg_model, exported):
    report = parity_report(seg_model, exported["labels"], random_images(ODD_HW, seed=6))
    assert report["kind"] == "seg_labels" and report["passed"] and report["max_abs_diff"] is None


def test_cam_outputs_are_max_normalised(cam_model, exported):
    images = random_images(EXPORT_HW, ODD_HW, seed=7)
    report = parity_report(cam_model, exported["cam"], images)
    assert report["passed"], report
    sess = session(exported["cam"])
    for image in images:
        x = batch([image])
        logits, cams = sess.run(["logits", "cams"], {"images": x})
        h, w = math.ceil(image.shape[0] / 16), math.ceil(image.shape[1] / 16)
        assert logits.shape == (1, NUM_LABELS - 1) and cams.shape == (1, NUM_LABELS - 1, h, w)
        assert cams.dtype == np.float32 and cams.min() >= 0.0
        with torch.inference_mode():
            raw = cam_model.cam(torch.from_numpy(x)).numpy()
            eager_logits = cam_model(torch.from_numpy(x)).numpy()
        assert np.abs(logits - eager_logits).max() <= 1e-4
        peak = raw.reshape(1, NUM_LABELS - 1, -1).max(axis=2)
        got = cams.reshape(1, NUM_LABELS - 1, -1).max(axis=2)
        present = peak > 0
        assert present.any()
        np.testing.assert_allclose(got[present], peak[present] / (peak[present] + CAM_EPS), rtol=1e-5)
        assert (got[present] > 1.0 / (1.0 + 1e-3)).all()  # ~1 for every class whose map is not all zero
        assert np.all(got[~present] == 0.0)


def test_metadata_round_trip(tmp_path, exported, metadata):
    meta = read_onnx_metadata(exported["seg"])
    assert meta["classes"] == ["background", *[f"class{i}" for i in range(1, NUM_LABELS)]]
    assert meta["palette"] == voc_palette(NUM_LABELS).tolist()
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["kind"] == "seg" and meta["outputs"] == ["logits"] and meta["precision"] == "fp32"
    assert meta["fastwsss_version"] and meta["opset"] == 18
    assert read_onnx_metadata(exported["labels"])["kind"] == "seg_labels"
    cam_meta = read_onnx_metadata(exported["cam"])
    assert cam_meta["kind"] == "cam" and cam_meta["outputs"] == ["logits", "cams"] and cam_meta["cam_eps"] == CAM_EPS
    keys = [p.key for p in onnx.load(str(exported["seg"]), load_external_data=False).metadata_props]
    assert keys.count(METADATA_KEY) == 1

    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"weights")
    with_source = build_metadata(["a"], ckpt)
    assert with_source["source_sha256"] == file_sha256(ckpt) and with_source["source_checkpoint"] == "ckpt.pt"

    plain = tmp_path / "plain.onnx"
    model = onnx.load(str(exported["seg"]))
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    with pytest.raises(CheckpointError, match="no 'fastwsss' metadata"):
        read_onnx_metadata(plain)
    with pytest.raises(CheckpointError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")


def test_fp16_cam_graph_keeps_fp32_io_and_normalisation(tmp_path, cam_model, metadata):
    path = export_cam_onnx(cam_model, tmp_path / "cam_fp16.onnx", metadata=metadata, example_hw=EXPORT_HW, fp16=True)
    meta = read_onnx_metadata(path)
    assert meta["precision"] == "fp16"
    model = onnx.load(str(path))
    float32 = onnx.TensorProto.FLOAT
    assert model.graph.input[0].type.tensor_type.elem_type == float32
    assert all(out.type.tensor_type.elem_type == float32 for out in model.graph.output)
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
    report = parity_report(cam_model, path, random_images(ODD_HW, seed=8))
    assert report["passed"] and report["thresholds"]["max_abs_diff"] == 5e-2
    (cams,) = session(path).run(["cams"], {"images": batch(random_images(ODD_HW, seed=8))})
    assert np.isfinite(cams).all() and cams.max() <= 1.0


def test_export_leaves_the_model_mode_alone(tmp_path, metadata):
    model = CAMNet("resnet18_quarter", NUM_LABELS - 1)
    assert model.training
    calls = []

    def fake_export(*args, **kwargs):  # the real one is slow; only the mode around it matters here
        calls.append(args[0].training)
        raise RuntimeError("stop")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.onnx, "export", fake_export)
        with pytest.raises(FastwsssError):
            export_cam_onnx(model, tmp_path / "cam.onnx", metadata=metadata)
    assert calls == [False] and model.training


def test_dynamo_failure_raises_without_fallback(tmp_path, monkeypatch, seg_model, metadata):
    seen = {}

    def broken(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("unsupported operator\nsecond line")

    monkeypatch.setattr(torch.onnx, "export", broken)
    target = tmp_path / "model.onnx"
    with pytest.raises(FastwsssError, match="dynamo export of the seg model failed; no fallback") as info:
        export_seg_onnx(seg_model, target, metadata=metadata)
    assert "\n" not in str(info.value) and "unsupported operator second line" in str(info.value)
    assert seen["dynamo"] is True and seen["external_data"] is False and seen["opset_version"] == 18
    assert set(seen["dynamic_shapes"]["images"]) == {0, 2, 3}
    assert not target.exists() and not list(tmp_path.iterdir())


def test_export_rejects_bad_settings(tmp_path, seg_model, metadata):
    with pytest.raises(ConfigError, match="metadata lacks palette"):
        export_seg_onnx(seg_model, tmp_path / "a.onnx", metadata={"classes": [], "mean": [], "std": []})
    with pytest.raises(ConfigError, match="names 3 classes"):
        export_seg_onnx(seg_model, tmp_path / "a.onnx", metadata=build_metadata(["a", "b"]))
    with pytest.raises(ConfigError, match="opset"):
        export_seg_onnx(seg_model, tmp_path / "a.onnx", metadata=metadata, opset=17)
    conta = CAMNet("resnet18_quarter", NUM_LABELS - 1, extra_channels=2)
    with pytest.raises(ConfigError, match="extra_channels"):
        export_cam_onnx(conta, tmp_path / "a.onnx", metadata=metadata)
    assert not list(tmp_path.iterdir())


def test_parity_report_fails_when_outputs_differ(seg_model, exported):
    other = trained_looking_seg()
    with torch.no_grad():
        other.head.branches[0].bias.add_(torch.linspace(-3, 3, NUM_LABELS))
    report = parity_report(other, exported["seg"], random_images(ODD_HW, seed=9))
    assert not report["passed"] and report["max_abs_diff"] > 1e-4
    strict = parity_report(seg_model, exported["seg"], random_images(ODD_HW, seed=9), max_abs=0.0)
    assert not strict["passed"] and strict["thresholds"]["max_abs_diff"] == 0.0
    with pytest.raises(ValueError, match="uint8"):
        parity_report(seg_model, exported["seg"], [np.zeros((8, 8, 3), dtype=np.float32)])


# ------------------------------------------------------------------------------------------------ command


def make_run_dir(path: Path) -> Path:
    """A run directory written by hand: config, an untrained DeepLab and classifier at the final paths."""
    config = get_preset("tiny")
    synth = SynthConfig(size=64, num_train=6, num_val=6, num_debiased=2, seed=3)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, synth=synth))
    run = RunDir(path)
    path.mkdir(parents=True)
    run.save_config(config)
    k = len(synthetic_class_names())
    torch.manual_seed(2)
    save_seg_checkpoint(path / "seg" / "ckpt.pt", build_seg_model("deeplabv2", "resnet18_quarter", k + 1))
    save_checkpoint(path / "cls" / "ckpt.pt", CAMNet("resnet18_quarter", k))
    return path


@pytest.fixture(scope="module")
def command_run(tmp_path_factory) -> tuple[Path, dict]:
    rundir = make_run_dir(tmp_path_factory.mktemp("cmd") / "run")
    result = export_command(rundir, trt=True, what="all")
    return rundir, result


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_command_writes_onnx_and_says_why_there_is_no_engine(command_run):
    rundir, result = command_run
    out = rundir / "export"
    assert result["out"] == str(out)
    for name in ("model.onnx", "model_labels.onnx", "cam.onnx", "parity.json", MANIFEST):
        assert (out / name).is_file(), name
    trt = result["tensorrt"]
    assert trt["requested"] and not trt["built"] and trt["reason"].startswith("TensorRT is not installed")
    assert not result["ok"] and result["parity_passed"]
    assert result["providers"] == ["CPUExecutionProvider"]


def test_command_parity_metadata_and_manifest(command_run):
    rundir, result = command_run
    out = rundir / "export"
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and set(parity["reports"]) == {"model.onnx", "model_labels.onnx", "cam.onnx"}
    sizes = [(i["height"], i["width"]) for i in parity["images"]]
    assert len(sizes) == 5 and sizes[-1] == odd_size(*sizes[0]) and all(s % 2 == 1 for s in sizes[-1])
    for report in parity["reports"].values():
        assert report["passed"] and len(report["images"]) == 5
    meta = read_onnx_metadata(out / "model.onnx")
    assert meta["classes"] == ["background", *synthetic_class_names()]
    assert meta["source_checkpoint"] == "seg/ckpt.pt"
    assert meta["source_sha256"] == file_sha256(rundir / "seg" / "ckpt.pt")
    assert read_onnx_metadata(out / "cam.onnx")["source_sha256"] == file_sha256(rundir / "cls" / "ckpt.pt")
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.onnx", "model_labels.onnx", "cam.onnx", "parity.json"}
    assert claim_out_dir(out, rundir) == manifest["files"]  # a rerun may overwrite exactly these


def test_out_dir_with_foreign_files_is_refused(tmp_path, command_run):
    rundir, _ = command_run
    assert claim_out_dir(tmp_path / "new", rundir) == []
    (tmp_path / "empty").mkdir()
    assert claim_out_dir(tmp_path / "empty", rundir) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="has no manifest.json"):
        claim_out_dir(mine, rundir)
    with pytest.raises(RunDirError, match="has no manifest.json"):
        export_command(rundir, out=mine)  # refused before anything is written
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / MANIFEST).write_text((rundir / "export" / MANIFEST).read_text())
    (copy / "model.onnx").write_bytes(b"old")
    (copy / "extra.bin").write_bytes(b"user file")
    with pytest.raises(RunDirError, match="holds extra.bin, which fastwsss export did not write"):
        claim_out_dir(copy, rundir)
    with pytest.raises(RunDirError, match="export of another run"):
        claim_out_dir(copy, tmp_path)


def test_command_option_errors(tmp_path):
    assert check_options(False, False, False, 0, "seg") == "fp32"
    assert check_options(True, True, False, 0, "all") == "fp16"
    assert check_options(True, False, True, 8, "cam") == "int8"
    with pytest.raises(ConfigError, match="choose one"):
        check_options(True, True, True, 8, "seg")
    with pytest.raises(ConfigError, match="add --trt"):
        check_options(False, True, False, 0, "seg")
    with pytest.raises(ConfigError, match="--calib"):
        check_options(True, False, True, 0, "seg")
    with pytest.raises(ConfigError, match="--what"):
        check_options(False, False, False, 0, "everything")
    with pytest.raises(ConfigError, match="--opt"):
        export_command(tmp_path, min_shape="1x3x64x64", opt_shape="1x3x32x64", max_shape="1x3x128x128")
    with pytest.raises(RunDirError, match="no config.json"):
        export_command(tmp_path)


def test_odd_size_differs_and_is_odd():
    for h, w in [(64, 64), (375, 500), (21, 21), (17, 17)]:
        nh, nw = odd_size(h, w)
        assert nh % 2 == 1 and nw % 2 == 1 and (nh, nw) != (h, w)
