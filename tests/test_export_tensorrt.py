"""export/tensorrt.py: the pure logic, `build_engine` against a stand-in `tensorrt` module, and (where
TensorRT and a CUDA GPU exist) a real build.

TensorRT cannot be installed on this project's machines: the stand-in checks which documented API calls
`build_engine` makes and what it writes, not that TensorRT accepts them; the real test skips here.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from fastwsss.errors import CheckpointError, ConfigError, FastwsssError
from fastwsss.export import tensorrt as trt_export
from fastwsss.export.onnx import METADATA_KEY, build_metadata, file_sha256
from fastwsss.export.tensorrt import (
    MAGIC,
    BuildPlan,
    Profile,
    build_engine,
    build_plan,
    calibration_batches,
    check_engine_compatible,
    engine_cache_key,
    engine_file_name,
    fp32_tail_indices,
    gpu_tag,
    parse_shape,
    read_engine_file,
    tensorrt_unavailable_reason,
    trt_major,
    write_engine_file,
)

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
PROFILE = Profile((1, 3, 256, 256), (1, 3, 512, 512), (4, 3, 1024, 1024))


# ------------------------------------------------------------------------------------------- shapes


def test_parse_shape():
    assert parse_shape("1x3x512x512") == (1, 3, 512, 512)
    assert parse_shape(" 2X3x64x48 ") == (2, 3, 64, 48)
    assert parse_shape("1x3x512") == (1, 3, 512)  # a shape; Profile rejects the rank
    for bad in ("", "1x3xax4", "1x3x0x4", "1x3x-2x4", "1,3,4,4"):
        with pytest.raises(ConfigError, match="not a shape like 1x3x512x512"):
            parse_shape(bad, "--opt")
    with pytest.raises(ConfigError, match="^--max:"):
        parse_shape("big", "--max")


def test_profile_validation():
    profile = Profile.from_strings("1x3x256x256", "2x3x512x512", "4x3x1024x1024")
    assert profile.opt == (2, 3, 512, 512)
    assert profile.to_dict() == {"min": [1, 3, 256, 256], "opt": [2, 3, 512, 512], "max": [4, 3, 1024, 1024]}
    assert str(profile) == "min 1x3x256x256, opt 2x3x512x512, max 4x3x1024x1024"
    with pytest.raises(ConfigError, match="--min: 1x3x256 must have 4 sizes"):
        Profile.from_strings("1x3x256", "1x3x512x512", "1x3x512x512")
    with pytest.raises(ConfigError, match="--opt: 1x1x512x512 must have 3 channels"):
        Profile.from_strings("1x3x256x256", "1x1x512x512", "1x3x512x512")
    with pytest.raises(ConfigError, match="height must satisfy min <= opt <= max, got 512 / 256 / 1024"):
        Profile.from_strings("1x3x512x512", "1x3x256x512", "1x3x1024x1024")
    with pytest.raises(ConfigError, match="batch must satisfy"):
        Profile.from_strings("2x3x64x64", "1x3x64x64", "4x3x64x64")


# ------------------------------------------------------------------------------------------- plan


def test_trt_major():
    assert trt_major("10.3.0.26") == 10
    assert trt_major("11.4") == 11
    assert trt_major("8.6.1.post1") == 8
    with pytest.raises(ConfigError, match="TensorRT version 'dev'"):
        trt_major("dev")


def test_build_plan_tensorrt_10_uses_builder_flags():
    fp32 = build_plan("10.3.0", "fp32")
    assert fp32 == BuildPlan("10.3.0", "fp32", cleared_flags=("TF32",))
    fp16 = build_plan("10.3.0", "fp16")
    assert fp16.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS") and fp16.fp32_tail
    assert not fp16.needs_fp16_onnx and not fp16.calibrator and not fp16.strongly_typed
    int8 = build_plan("10.13.2.6", "int8")
    assert int8.builder_flags == ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert int8.calibrator and int8.fp32_tail and not int8.needs_fp16_onnx


def test_build_plan_tensorrt_11_is_strongly_typed():
    fp32 = build_plan("11.4.0", "fp32")
    assert fp32.strongly_typed and fp32.builder_flags == () and not fp32.needs_fp16_onnx
    fp16 = build_plan("11.4.0", "fp16")
    assert fp16.strongly_typed and fp16.needs_fp16_onnx and fp16.builder_flags == () and not fp16.calibrator
    assert not fp16.fp32_tail  # strongly typed: the fp16 ONNX already keeps the normalisation in fp32
    int8 = build_plan("11.4.0", "int8")  # explicit quantisation: the Q/DQ pairs of model_int8.onnx
    assert int8.strongly_typed and int8.needs_qdq_onnx and int8.builder_flags == () and not int8.calibrator
    assert not build_plan("10.3.0", "int8").needs_qdq_onnx
    assert build_plan("12.0", "fp16").needs_fp16_onnx


def test_build_plan_rejects_old_tensorrt_and_unknown_precision():
    with pytest.raises(ConfigError, match="needs TensorRT >= 10"):
        build_plan("8.6.1", "fp16")
    with pytest.raises(ConfigError, match="unknown precision 'bf16'"):
        build_plan("10.3.0", "bf16")


def test_fp32_tail_indices():
    types_ = ["SHUFFLE", "CONVOLUTION", "ACTIVATION", "CONVOLUTION", "ELEMENTWISE", "RESIZE", "TOPK"]
    assert fp32_tail_indices(types_) == [4, 5, 6]
    assert fp32_tail_indices(["CONVOLUTION"]) == []
    assert fp32_tail_indices(["SHUFFLE", "ELEMENTWISE"]) == []


# ------------------------------------------------------------------------------------------- cache key


def test_engine_cache_key_is_stable_and_covers_every_field():
    sha = "ab" * 32
    key = engine_cache_key(sha, "10.3.0", "8.6", PROFILE, "fp16")
    assert key == "66289bd925977b8bee43bb1537e4ba3babf34dd70b051145b6912e6cd0b7d4cc"  # fixed across runs
    assert engine_cache_key(sha, "10.3.0", (8, 6), PROFILE, "fp16") == key
    others = [
        engine_cache_key("cd" * 32, "10.3.0", "8.6", PROFILE, "fp16"),
        engine_cache_key(sha, "10.4.0", "8.6", PROFILE, "fp16"),
        engine_cache_key(sha, "10.3.0", "9.0", PROFILE, "fp16"),
        engine_cache_key(sha, "10.3.0", "8.6", Profile(PROFILE.min, PROFILE.min, PROFILE.max), "fp16"),
        engine_cache_key(sha, "10.3.0", "8.6", PROFILE, "fp32"),
    ]
    assert len({key, *others}) == 6


def test_engine_file_name():
    key = "1a2b3c4d" + "0" * 56
    assert engine_file_name("model", (8, 6), "10.3.0", key) == "model.sm86.10.3.0.1a2b3c4d.engine"
    assert engine_file_name("cam_fp16", "9.0", "11.4", key) == "cam_fp16.sm90.11.4.1a2b3c4d.engine"
    assert gpu_tag("12.0") == "sm120"


# ------------------------------------------------------------------------------------------- engine file


def header(**changes) -> dict:
    base = {"format": trt_export.HEADER_FORMAT, "classes": ["background", "cat"], "trt_version": "10.3.0",
            "compute_capability": "8.6", "profile": PROFILE.to_dict(), "precision": "fp16"}  # fmt: skip
    return {**base, **changes}


def test_engine_file_round_trip(tmp_path):
    path = write_engine_file(tmp_path / "m.engine", header(), b"\x00engine\xff" * 10)
    data = path.read_bytes()
    assert data.startswith(MAGIC)
    (length,) = struct.unpack_from("<I", data, len(MAGIC))
    assert json.loads(data[len(MAGIC) + 4 : len(MAGIC) + 4 + length]) == header()
    got_header, engine = read_engine_file(path)
    assert got_header == header() and engine == b"\x00engine\xff" * 10


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"plain trtexec engine bytes", "not a fastwsss engine file"),
        (MAGIC + b"\x01", "truncated engine file \\(no header length\\)"),
        (MAGIC + struct.pack("<I", 500) + b"{}", "header of 500 bytes"),
        (MAGIC + struct.pack("<I", 3) + b"{x}" + b"E", "not valid JSON"),
        (MAGIC + struct.pack("<I", 2) + b"{}" + b"E", "format is not"),
    ],
)
def test_read_engine_file_errors(tmp_path, content, message):
    path = tmp_path / "bad.engine"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_engine_file(path)


def test_read_engine_file_missing_or_empty(tmp_path):
    with pytest.raises(CheckpointError, match="engine file not found"):
        read_engine_file(tmp_path / "none.engine")
    write_engine_file(tmp_path / "empty.engine", header(), b"")
    with pytest.raises(CheckpointError, match="no engine"):
        read_engine_file(tmp_path / "empty.engine")


def test_check_engine_compatible():
    check_engine_compatible(header(), "10.3.0", (8, 6))
    with pytest.raises(CheckpointError) as info:
        check_engine_compatible(header(), "10.4.1", "8.6", "m.engine")
    message = str(info.value)
    assert message.startswith("m.engine: built with TensorRT 10.3.0") and "this machine has TensorRT 10.4.1" in message
    with pytest.raises(CheckpointError, match="for sm86 .* on sm90"):
        check_engine_compatible(header(), "10.3.0", (9, 0))
    assert "\n" not in message


# ------------------------------------------------------------------------------------------- availability


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_unavailable_without_tensorrt(tmp_path):
    reason = tensorrt_unavailable_reason()
    assert reason is not None and reason.startswith("TensorRT is not installed")
    with pytest.raises(FastwsssError, match="TensorRT is not installed"):
        build_engine(tmp_path / "model.onnx", tmp_path, PROFILE)


def test_unavailable_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tensorrt_unavailable_reason().startswith("no CUDA GPU is visible")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tensorrt_unavailable_reason() is None


def test_calibration_batches():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8) for i in range(5)]
    batches = calibration_batches(images, (2, 3, 32, 48))
    assert len(batches) == 2 and all(b.shape == (2, 3, 32, 48) and b.dtype == np.float32 for b in batches)
    assert abs(float(batches[0].mean())) < 3.0  # normalised, not 0..255
    with pytest.raises(ConfigError, match="3 calibration images cannot fill one batch of 4"):
        calibration_batches(images[:3], (4, 3, 32, 32))


# ------------------------------------------------------------------------------------------- stand-in build


class FakeLayer:
    def __init__(self, kind: str, dtypes: list[str]) -> None:
        self.type = SimpleNamespace(name=kind)
        self.num_outputs = len(dtypes)
        self._outputs = [SimpleNamespace(dtype=d) for d in dtypes]
        self.precision = None
        self.output_types: dict[int, str] = {}

    def get_output(self, index: int) -> SimpleNamespace:
        return self._outputs[index]

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


def fake_tensorrt(version: str, log: dict, parse_ok: bool = True, build_ok: bool = True) -> types.ModuleType:
    """A stand-in `tensorrt` with the documented names `build_engine` uses; every call lands in `log`."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.int64 = "float32", "float16", "int64"
    trt.BuilderFlag = SimpleNamespace(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY", TF32="TF32")
    trt.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    log.update(flags=[], cleared=[], builds=0, shapes=[], layers=[
        FakeLayer("CONVOLUTION", ["float32"]), FakeLayer("CONVOLUTION", ["float32"]),
        FakeLayer("ELEMENTWISE", ["float32"]), FakeLayer("RESIZE", ["float32"]), FakeLayer("TOPK", ["float32", "int64"]),
    ])  # fmt: skip

    class Logger:
        WARNING = "WARNING"

        def __init__(self, severity):
            log["severity"] = severity

    class Network:
        num_layers = len(log["layers"])

        def get_layer(self, index):
            return log["layers"][index]

        def get_input(self, index):
            return SimpleNamespace(name="images")

    class Parser:
        num_errors = 0 if parse_ok else 2

        def __init__(self, network, logger):
            pass

        def parse_from_file(self, path):
            log["parsed"] = path
            return parse_ok

        def get_error(self, index):
            return SimpleNamespace(code=lambda: "UNSUPPORTED_NODE", desc=lambda: f"bad op\n{index}",
                                   node_name=lambda: f"/head/n{index}")  # fmt: skip

    class TimingCache:
        def __init__(self, data):
            self.data = data

        def serialize(self):
            return b"TIMING" + self.data

    class Profile_:
        def set_shape(self, name, lo, mid, hi):
            log["shapes"].append((name, tuple(lo), tuple(mid), tuple(hi)))

    class Config:
        int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            log["workspace"] = (pool, size)

        def set_flag(self, flag):
            log["flags"].append(flag)

        def clear_flag(self, flag):
            log["cleared"].append(flag)

        def add_optimization_profile(self, profile):
            log["profiles"] = log.get("profiles", 0) + 1

        def set_calibration_profile(self, profile):
            log["calibration_profile"] = True

        def create_timing_cache(self, data):
            log["timing_in"] = bytes(data)
            self.cache = TimingCache(bytes(data))
            return self.cache

        def set_timing_cache(self, cache, ignore_mismatch):
            log["ignore_mismatch"] = ignore_mismatch

        def get_timing_cache(self):
            return self.cache

        def __setattr__(self, name, value):
            if name == "int8_calibrator":
                log["calibrator"] = value
            object.__setattr__(self, name, value)

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            log["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile_()

        def build_serialized_network(self, network, config):
            log["builds"] += 1
            return b"SERIALIZED-ENGINE" if build_ok else None

    class IInt8EntropyCalibrator2:
        def __init__(self):
            pass

    trt.Logger, trt.Builder, trt.OnnxParser, trt.IInt8EntropyCalibrator2 = (
        Logger,
        Builder,
        Parser,
        IInt8EntropyCalibrator2,
    )
    return trt


def tiny_onnx(path: Path, precision: str = "fp32") -> Path:
    """A one-node ONNX file with fastwsss metadata (what build_engine reads; the stand-in never parses it)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, "h", "w"])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g", [x], [y]))
    meta = {**build_metadata(["cat", "dog"]), "kind": "seg", "outputs": ["logits"], "precision": precision}
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    onnx.save(model, str(path))
    return path


@pytest.fixture
def use_fake(monkeypatch):
    def install(version: str, **kwargs) -> dict:
        log: dict = {}
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version, log, **kwargs))
        monkeypatch.setattr(trt_export, "tensorrt_unavailable_reason", lambda: None)
        monkeypatch.setattr(trt_export, "compute_capability", lambda: "8.6")
        return log

    return install


def test_build_engine_fp32_writes_a_described_engine_and_reuses_it(tmp_path, use_fake):
    log = use_fake("10.3.0")
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    path = build_engine(onnx_path, tmp_path, PROFILE, "fp32", stem="model_fp32")
    key = engine_cache_key(file_sha256(onnx_path), "10.3.0", "8.6", PROFILE, "fp32")
    assert path.name == f"model_fp32.sm86.10.3.0.{key[:8]}.engine"
    head, engine = read_engine_file(path)
    assert engine == b"SERIALIZED-ENGINE"
    assert head["classes"] == ["background", "cat", "dog"] and head["palette"][1] == [128, 0, 0]
    assert head["mean"] == [0.485, 0.456, 0.406] and head["kind"] == "seg" and head["outputs"] == ["logits"]
    assert head["profile"] == PROFILE.to_dict() and head["precision"] == "fp32"
    assert head["trt_version"] == "10.3.0" and head["compute_capability"] == "8.6"
    assert head["onnx_sha256"] == file_sha256(onnx_path) and head["cache_key"] == key
    assert log["flags"] == [] and log["cleared"] == ["TF32"] and log["network_flags"] == 0
    assert log["workspace"] == ("WORKSPACE", trt_export.DEFAULT_WORKSPACE_BYTES)
    assert log["shapes"] == [("images", PROFILE.min, PROFILE.opt, PROFILE.max)] and log["profiles"] == 1
    assert log["parsed"] == str(onnx_path) and log["ignore_mismatch"] is False and log["timing_in"] == b""
    assert (tmp_path / "timing.sm86.10.3.0.cache").read_bytes() == b"TIMING"
    assert all(layer.precision is None for layer in log["layers"])

    again = build_engine(onnx_path, tmp_path, PROFILE, "fp32", stem="model_fp32")
    assert again == path and log["builds"] == 1  # served from the cache
    assert log["timing_in"] == b""  # (no second build read the timing cache)


def test_build_engine_fp16_on_tensorrt_10_pins_the_tail_to_fp32(tmp_path, use_fake):
    log = use_fake("10.3.0")
    timing = tmp_path / "shared.cache"
    timing.write_bytes(b"OLD")
    build_engine(tiny_onnx(tmp_path / "model.onnx"), tmp_path / "out", PROFILE, "fp16", timing_cache=timing)
    assert log["flags"] == ["FP16", "OBEY"] and log["timing_in"] == b"OLD"
    assert timing.read_bytes() == b"TIMINGOLD"
    conv1, conv2, add, resize, topk = log["layers"]
    assert conv1.precision is None and conv2.precision is None
    assert add.precision == resize.precision == "float32" and add.output_types == {0: "float32"}
    assert topk.precision is None and topk.output_types == {}  # integer outputs are left alone
    assert len(list((tmp_path / "out").glob("model.sm86.10.3.0.*.engine"))) == 1


def test_build_engine_fp16_on_tensorrt_11_needs_an_fp16_onnx(tmp_path, use_fake):
    log = use_fake("11.4.0")
    with pytest.raises(ConfigError, match="strongly typed, so --fp16 needs an fp16 ONNX"):
        build_engine(tiny_onnx(tmp_path / "model.onnx"), tmp_path, PROFILE, "fp16")
    assert log["builds"] == 0
    path = build_engine(tiny_onnx(tmp_path / "model_fp16.onnx", "fp16"), tmp_path, PROFILE, "fp16")
    assert log["flags"] == [] and log["builds"] == 1 and ".11.4.0." in path.name
    with pytest.raises(ConfigError, match="Q/DQ"):
        build_engine(tmp_path / "model.onnx", tmp_path, PROFILE, "int8", calib_images=[])


def test_build_engine_int8_on_tensorrt_10_sets_a_calibrator(tmp_path, use_fake):
    log = use_fake("10.3.0")
    onnx_path = tiny_onnx(tmp_path / "model.onnx")
    with pytest.raises(ConfigError, match="needs calibration images"):
        build_engine(onnx_path, tmp_path, PROFILE, "int8")
    images = [np.full((40, 60, 3), 100 + i, dtype=np.uint8) for i in range(3)]
    small = Profile((1, 3, 16, 16), (1, 3, 32, 32), (2, 3, 64, 64))
    build_engine(onnx_path, tmp_path, small, "int8", calib_images=images)
    calibrator = log["calibrator"]
    assert log["flags"] == ["INT8", "FP16", "OBEY"] and log["calibration_profile"]
    assert calibrator.get_batch_size() == 1 and calibrator.read_calibration_cache() is None


def test_build_engine_reports_every_parser_error(tmp_path, use_fake):
    use_fake("10.3.0", parse_ok=False)
    with pytest.raises(FastwsssError, match="reports 2 error") as info:
        build_engine(tiny_onnx(tmp_path / "model.onnx"), tmp_path, PROFILE)
    message = str(info.value)
    assert "/head/n0: bad op 0" in message and "/head/n1: bad op 1" in message and "\n" not in message


def test_build_engine_failed_build(tmp_path, use_fake):
    use_fake("10.3.0", build_ok=False)
    with pytest.raises(FastwsssError, match="could not build an engine"):
        build_engine(tiny_onnx(tmp_path / "model.onnx"), tmp_path, PROFILE)
    assert not list(tmp_path.glob("*.engine"))


def test_build_engine_int8_on_tensorrt_11_builds_from_the_qdq_onnx(tmp_path, use_fake):
    log = use_fake("11.4.0")
    with pytest.raises(ConfigError, match="needs the Q/DQ model_int8.onnx"):
        build_engine(tiny_onnx(tmp_path / "model.onnx"), tmp_path, PROFILE, "int8")
    path = build_engine(tiny_onnx(tmp_path / "model_int8.onnx", "int8"), tmp_path, PROFILE, "int8")
    assert log["parsed"] == str(tmp_path / "model_int8.onnx") and log["flags"] == [] and "calibrator" not in log
    assert read_engine_file(path)[0]["precision"] == "int8" and log["builds"] == 1


@pytest.mark.slow
def test_export_command_int8_on_tensorrt_11_builds_from_model_int8(tmp_path, use_fake, monkeypatch):
    from fastwsss.commands import export as command
    from tests.test_export_onnx import make_run_dir

    log = use_fake("11.4.0")
    monkeypatch.setattr(command, "tensorrt_unavailable_reason", lambda: None)
    rundir = make_run_dir(tmp_path / "run")
    result = command.export_command(rundir, trt=True, int8=True, calib=4, what="all")
    assert log["parsed"] == str(rundir / "export" / "model_int8.onnx") and log["builds"] == 1
    assert result["tensorrt"]["built"] and len(result["tensorrt"]["engines"]) == 1  # the DeepLab only
    assert result["tensorrt"]["engines"][0].startswith("model_int8.sm86.11.4.0.")


# ------------------------------------------------------------------------------------------- real TensorRT


@pytest.mark.tensorrt
@pytest.mark.skipif(
    not HAS_TENSORRT or not torch.cuda.is_available(), reason="needs TensorRT and a CUDA GPU (not installable here)"
)
def test_real_engine_build_and_cache(tmp_path):  # pragma: no cover - runs only where TensorRT exists
    from fastwsss.export.onnx import export_seg_onnx
    from fastwsss.models.deeplab import build_seg_model

    model = build_seg_model("deeplabv2", "resnet18_quarter", num_classes=3).eval()
    onnx_path = export_seg_onnx(
        model, tmp_path / "model.onnx", metadata=build_metadata(["a", "b"]), example_hw=(64, 64)
    )
    profile = Profile((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 96, 96))
    path = build_engine(onnx_path, tmp_path, profile, "fp32")
    head, engine = read_engine_file(path)
    import tensorrt as trt

    check_engine_compatible(head, trt.__version__, trt_export.compute_capability())
    assert engine and head["classes"] == ["background", "a", "b"]
    assert build_engine(onnx_path, tmp_path, profile, "fp32") == path
