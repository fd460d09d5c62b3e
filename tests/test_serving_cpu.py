"""CPU serving (export/runtime*.py, fastwsss segment, bench/serving_quality.py): the int8 export is picked and
named, thread settings follow the physical cores and --nproc, same-size images share a batch, OpenVINO
(optional) matches onnxruntime, and the benchmark's targets are judged from its rows."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_runtime import NAMES, export_onnx, images, make_run_dir

from bench.serving import parse_sizes
from bench.serving_quality import add_speedups, targets
from fastwsss.commands.segment import segment_command
from fastwsss.engine.progress import console
from fastwsss.errors import ConfigError
from fastwsss.export.quantize import CalibrationSet, quantize_seg_onnx
from fastwsss.export.runtime import Segmenter, cpu_threads, load_segmenter, physical_cores
from fastwsss.models.deeplab import save_seg_checkpoint


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory whose export holds model.onnx and a minmax-calibrated model_int8.onnx."""
    run = make_run_dir(tmp_path_factory.mktemp("int8") / "run")
    model = load_segmenter(run, "torch", "cpu").model
    fp32 = export_onnx(model, run / "export" / "model.onnx", source=run / "seg" / "ckpt.pt")
    calibration = CalibrationSet(images(), ["a", "b"], [])
    quantize_seg_onnx(fp32, run / "export" / "model_int8.onnx", calibration, "minmax")
    return run


def test_onnxruntime_picks_the_int8_export_and_says_so(int8_run: Path, tmp_path: Path) -> None:
    chosen = load_segmenter(int8_run, "onnxruntime", "cpu")
    assert chosen.source.name == "model_int8.onnx" and "int8" in chosen.reason and "int8" in chosen.detail
    auto = load_segmenter(int8_run, "auto", "cpu")
    assert auto.backend == "onnxruntime" and auto.source.name == "model_int8.onnx" and "int8" in auto.reason
    stale = tmp_path / "stale"
    shutil.copytree(int8_run, stale)
    save_seg_checkpoint(stale / "seg" / "ckpt.pt", chosen_model(int8_run), {"class_names": NAMES, "more": 1})
    with pytest.raises(ConfigError, match="stale"):  # neither file was exported from this checkpoint
        load_segmenter(stale, "onnxruntime", "cpu")

    photos = tmp_path / "photos"
    photos.mkdir()
    for index, image in enumerate(images()):
        Image.fromarray(image).save(photos / f"p{index}.png")
    with console.capture() as captured:
        code = segment_command([str(photos)], int8_run, tmp_path / "masks", backend="onnxruntime", device="cpu")
    assert code == 0 and "model_int8.onnx" in captured.get() and len(list((tmp_path / "masks").glob("*.png"))) == 2


def chosen_model(run: Path) -> torch.nn.Module:
    return load_segmenter(run, "torch", "cpu").model


def test_threads_follow_physical_cores_and_processes(int8_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cores = physical_cores()
    assert 1 <= cores <= (os.cpu_count() or cores)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))  # more processes than cores: one thread each
    assert cpu_threads() == 1
    segmenter = load_segmenter(int8_run, "onnxruntime", "cpu")
    options = segmenter.session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.execution_mode.name == "ORT_SEQUENTIAL" and "1 intra-op thread, sequential" in segmenter.detail
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert load_segmenter(int8_run, "onnxruntime", "cpu").session.get_session_options().intra_op_num_threads == cores


class CountingSegmenter(Segmenter):
    """A real Segmenter whose model is a fixed per-pixel rule (class 1 where the normalised red channel is
    positive); it records the shape of every model call."""

    backend = "counting"

    def __init__(self) -> None:
        super().__init__(Path("counting"), {}, 2)
        self.calls: list[tuple[int, ...]] = []

    def logits(self, batch: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(batch)
        self.calls.append(tuple(x.shape))
        red = x[:, :1]
        return torch.cat([-red, red], dim=1)


def test_same_size_images_share_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastwsss.commands.segment as segment

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):  # sizes alternate in name order: a b a b a b
        height, width = (20, 30) if index % 2 == 0 else (24, 16)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(photos / f"{index}.png")
    counting = CountingSegmenter()
    monkeypatch.setattr(segment, "load_segmenter", lambda *args, **kwargs: counting)
    assert segment_command([str(photos)], Path("unused"), tmp_path / "masks", batch_size=3) == 0
    assert sorted(counting.calls) == [(3, 3, 20, 30), (3, 3, 24, 16)]  # two full batches, one call each
    for index in range(6):
        mask = np.asarray(Image.open(tmp_path / "masks" / f"{index}.png"))
        image = np.array(Image.open(photos / f"{index}.png"))
        assert np.array_equal(mask, (counting.normalize(image[None])[0, 0] > 0).numpy().astype(np.uint8))


OPENVINO_CHECK = """
import sys
from pathlib import Path

import pytest
from test_runtime import images

from fastwsss.errors import ConfigError
from fastwsss.export.runtime import OnnxRuntimeSegmenter, load_segmenter

run = Path(sys.argv[1])
for name in ("model.onnx", "model_int8.onnx"):
    path = run / "export" / name
    ov = load_segmenter(path, "openvino", "cpu")
    ort = OnnxRuntimeSegmenter(path, "cpu")
    assert ov.backend == "openvino" and ov.class_names == ort.class_names
    for image in images():
        x = ov.normalize(image[None])
        a, b = ov.logits(x), ort.logits(x)
        tolerance = 1e-3 if name == "model.onnx" else 0.1 * float(b.abs().max())  # int8 kernels differ
        assert a.shape == b.shape and float((a - b).abs().max()) <= tolerance, (name, float((a - b).abs().max()))
with pytest.raises(ConfigError, match="CPU only"):
    load_segmenter(run / "export" / "model.onnx", "openvino", "cuda")
print("openvino matches")
"""


def test_openvino_matches_onnxruntime(int8_run: Path) -> None:
    """In a child process: a process that has loaded OpenVINO's threading runtime can crash later when it
    forks or collects the runtime's objects, which would take the rest of the test session with it."""
    if importlib.util.find_spec("openvino") is None:  # not imported here, for the same reason
        pytest.skip("openvino is not installed (pip install 'fastwsss[openvino]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", OPENVINO_CHECK, str(int8_run)], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0 and "openvino matches" in done.stdout, done.stderr[-3000:]


def test_openvino_missing_is_a_clear_error(int8_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # import fails as when not installed
    with pytest.raises(ConfigError, match=r"OpenVINO is not installed \(pip install 'fastwsss\[openvino\]'\)"):
        load_segmenter(int8_run, "openvino", "cpu")


def test_bench_targets_are_judged_on_the_fastest_row() -> None:
    assert parse_sizes("512x512,500x375") == [(512, 512), (500, 375)] and parse_sizes("64") == [(64, 64)]
    base = {"status": "ok", "size": "512x512", "batch": 1, "variant": "session"}
    rows = [
        {**base, "backend": "torch", "variant": "eager", "precision": "fp32", "images_per_s": 4.0, "val_miou": 58.0},
        {**base, "backend": "onnxruntime", "precision": "int8", "images_per_s": 13.0, "val_miou": 57.5,
         "val_agreement_pct": 99.0},
        {**base, "backend": "openvino", "precision": "int8", "images_per_s": 11.0, "val_miou": 58.0},
        {**base, "backend": "onnxruntime", "precision": "int8", "batch": 8, "images_per_s": 30.0},
    ]  # fmt: skip
    add_speedups(rows)
    assert rows[1]["speedup_vs_eager"] == pytest.approx(3.25) and "speedup_vs_eager" not in rows[3]
    judged = targets(rows)
    assert judged["fastest"] == "onnxruntime session int8" and judged["speedup_met"] and judged["miou_met"]
    assert judged["miou_drop"] == pytest.approx(0.5) and judged["agreement_met"]
    rows[1]["val_miou"] = 56.5
    rows[1]["val_agreement_pct"] = 97.0
    judged = targets(rows)
    assert not judged["miou_met"] and not judged["agreement_met"]
    assert targets([r for r in rows if r["backend"] != "torch"]) is None  # no eager row: nothing to judge
