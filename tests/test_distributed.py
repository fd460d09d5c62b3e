"""Multi-process runs ("Scale and trust", item 1): `fastwsss train --nproc 2` (torchrun, gloo on the CPU)
against a single-process run of the same settings, and kill -9 + --resume of the 2-process run.

What must match, and why the tolerances are what they are:

* cls, irn (DistributedDataParallel): each step's global batch is split over the 2 ranks and the losses
  average over the global batch (`global_batch_mean`), so the gradients equal the single-process ones up
  to float rounding: convolutions of half batches differ from those of the whole batch by about 3e-7 of
  their output. The runs here freeze the classifier's BatchNorm (`--set cls.freeze_bn=true`, with a lr of
  0.002, at which its CAMs are not flat): BatchNorm in training mode normalises with each rank's own
  images on the CPU, because SyncBatchNorm exists only for GPUs. Tolerance, relative to each tensor's
  largest entry: classifier 1e-4 (seen: 2.4e-7); IRN 1e-3 (seen: 2.2e-4: its loss, -log(a + 1e-5) on
  affinities near 0 at lr 0.1, amplifies that rounding over 8 steps; its training losses still agree
  to 6 digits).
* cam, ir_label, pseudo (each rank writes its shard): CAMs are stored as float16, so 2e-3 absolute
  (one float16 step near 1 is 4.9e-4; seen: 4.9e-4); masks agree on >= 99.9% of pixels (seen: IR labels
  100%, pseudo masks 99.999%). Both are checked to be more than blank maps.
* seg: DeepLab trains BatchNorm in training mode (the config has no switch to freeze it), so on the CPU
  its statistics are per rank and its weights legitimately differ; checked: it runs, its predictions
  cover every image, and its val mIoU is within 5 points of the single-process run's (seen: 0.4 points,
  91% of the predicted pixels equal).
* Only rank 0 writes shared files: metrics.jsonl has exactly the single-process run's rows, with the
  same image counts (eval and seg score their shards and sum the confusion matrices).
* kill -9 of the whole 2-process job (every process at once, as when a machine dies) during cls and again
  during pseudo, each followed by `--resume --nproc 2`, gives outputs bit-identical to the uninterrupted
  2-process run: with one thread per process and a 2-way sum, every step repeats exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastwsss.algorithms.cam_inference import load_cam_npz
from fastwsss.engine.rundir import open_run_dir

pytestmark = pytest.mark.slow

SETTINGS = [
    "--preset", "tiny", "--set", "cls.freeze_bn=true", "--set", "cls.lr=0.002", "--set", "data.synth.num_train=64",
    "--set", "data.synth.num_val=16", "--set", "data.synth.num_debiased=16", "--set", "cls.epochs=2",
    "--set", "seg.epochs=2", "--set", "pseudo.exp_times=6",
]  # fmt: skip
NUM_IMAGES = 64
TIMEOUT_S = 300


def _env(data_dir: Path) -> dict[str, str]:
    return {**os.environ, "FASTWSSS_DATA_DIR": str(data_dir), "FASTWSSS_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}


def train(out: Path, data_dir: Path, *extra: str, log: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fastwsss", "train", *SETTINGS, "--out", str(out), *extra]
    result = subprocess.run(command, env=_env(data_dir), capture_output=True, text=True, timeout=TIMEOUT_S)
    if log is not None:
        log.write_text(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    single = train(root / "single", data, log=root / "single.log")
    assert single.returncode == 0, single.stderr[-2000:]
    double = train(root / "double", data, "--nproc", "2", log=root / "double.log")
    assert double.returncode == 0, double.stderr[-3000:]
    return {"single": root / "single", "double": root / "double", "data": data, "root": root}


def _state(path: Path, key: str | None) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state[key] if key else state["state_dict"] if "state_dict" in state else state["model"]


def _max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    worst = 0.0
    for name, tensor in a.items():
        if tensor.is_floating_point():
            scale = max(float(tensor.abs().max()), 1e-12)
            worst = max(worst, float((tensor - b[name]).abs().max()) / scale)
    return worst


def _pixel_agreement(a: Path, b: Path) -> float:
    files = sorted(a.glob("*.png"))
    assert len(files) == NUM_IMAGES and sorted(p.name for p in b.glob("*.png")) == [p.name for p in files]
    equal = total = 0
    for path in files:
        x, y = np.asarray(Image.open(path)), np.asarray(Image.open(b / path.name))
        equal += int((x == y).sum())
        total += x.size
    return equal / total


def _checkpoint_files(run: Path) -> dict[str, tuple[Path, str | None]]:
    return {"cls": (run / "cls" / "ckpt.pt", None), "irn": (run / "irn" / "ckpt.pt", "head"),
            "seg": (run / "seg" / "ckpt.pt", None)}  # fmt: skip


def test_two_processes_train_like_one(runs: dict[str, Path]) -> None:
    single, double = runs["single"], runs["double"]
    files = _checkpoint_files(single)
    for stage, tolerance in (("cls", 1e-4), ("irn", 1e-3)):
        path, key = files[stage]
        other = _checkpoint_files(double)[stage][0]
        assert _max_relative_difference(_state(path, key), _state(other, key)) <= tolerance, stage
    cam_diff = 0.0
    for path in sorted((single / "cams").glob("*.npz")):
        a, b = load_cam_npz(path), load_cam_npz(double / "cams" / path.name)
        assert np.array_equal(a.keys, b.keys)
        cam_diff = max(cam_diff, float(np.abs(a.high_res.astype(np.float32) - b.high_res.astype(np.float32)).max()))
    assert len(list((double / "cams").glob("*.npz"))) == NUM_IMAGES and cam_diff <= 2e-3
    # Not a comparison of two blank outputs: the frozen-BatchNorm classifier (lr 0.002, at 0.05 its CAMs are
    # flat) gives CAMs that vary, and the walk gives masks with foreground.
    spread = np.mean([load_cam_npz(p).high_res.astype(np.float32).std() for p in (single / "cams").glob("*.npz")])
    foreground = np.mean([(np.asarray(Image.open(p)) > 0).mean() for p in (single / "pseudo").glob("*.png")])
    assert spread > 0.05 and foreground > 0.05, (spread, foreground)
    assert _pixel_agreement(single / "ir_labels", double / "ir_labels") >= 0.999
    assert _pixel_agreement(single / "pseudo", double / "pseudo") >= 0.999
    assert len(list((double / "seg" / "pred").glob("*.png"))) == NUM_IMAGES


def test_two_processes_log_like_one(runs: dict[str, Path]) -> None:
    """Rank 0 alone writes metrics rows: the same rows, the same training losses (within 1e-4 relative)."""
    rows = {name: open_run_dir(runs[name]).metrics() for name in ("single", "double")}
    keys = [[(r["stage"], r["split"], r.get("epoch")) for r in rows[name]] for name in ("single", "double")]
    assert keys[0] == keys[1]
    for a, b in zip(rows["single"], rows["double"], strict=True):
        assert b.get("images") == a.get("images")  # eval and seg score their shards and sum the counts
        if a["stage"] == "cam":
            assert b["context_leakage"] == pytest.approx(a["context_leakage"], abs=1e-3)
        if a["stage"] in ("cls", "irn"):
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        if a["stage"] in ("cam", "ir_label", "pseudo"):
            assert b["miou"] == pytest.approx(a["miou"], abs=2e-3)
        if a["stage"] == "seg" and a["split"] == "val":
            assert abs(b["miou"] - a["miou"]) <= 0.05  # per-rank BatchNorm statistics on the CPU (see above)
    log = (runs["root"] / "double.log").read_text()
    assert "2 processes" in log and log.count("run directory:") == 1  # rank 0 alone reports progress


def _start(out: Path, data_dir: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "fastwsss", "train", *SETTINGS, "--out", str(out), "--nproc", "2", *extra]
    return subprocess.Popen(command, env=_env(data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


def _processes_of(out: Path) -> list[int]:
    """Pids of the live processes whose command line names `out` (the launcher and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
            state = (entry / "stat").read_text().split(") ")[-1][:1] if words else ""
        except OSError:
            continue
        if str(out).encode() in words and state != "Z":
            pids.append(int(entry.name))
    return pids


def _kill_when(proc: subprocess.Popen, ready, what: str, out: Path) -> None:  # noqa: ANN001
    """SIGKILL the launcher's process group as soon as `ready()` is true, as a dying machine would, and
    check that the workers die with it: torchrun puts each worker in a session of its own, out of reach
    of the group's signal, so they go only because fastwsss.engine.distributed.die_with_launcher asked the kernel."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        assert proc.poll() is None, f"the run ended before the kill point ({what}): {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no kill point reached: {what}"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    gone = time.monotonic() + 20
    while (left := _processes_of(out)) and time.monotonic() < gone:
        time.sleep(0.1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # do not leak them into the rest of the suite
    assert not left, f"{len(left)} worker(s) outlived the killed launcher ({what})"


def test_kill_minus_nine_then_resume_equals_straight_run(runs: dict[str, Path]) -> None:
    rng = random.Random(7)
    out = runs["root"] / "killed"
    cls_last = out / "cls" / "last.pt"
    _kill_when(_start(out, runs["data"]), cls_last.is_file, "cls finished epoch 1", out)
    assert not (out / "cls" / "DONE").exists()
    threshold = rng.randint(2, NUM_IMAGES // 2)
    pseudo = out / "pseudo"
    proc = _start(out, runs["data"], "--resume")
    _kill_when(proc, lambda: pseudo.is_dir() and len(list(pseudo.glob("*.png"))) >= threshold, f"{threshold} masks", out)
    assert not (pseudo / "DONE").exists() and len(list(pseudo.glob("*.png"))) < NUM_IMAGES
    resumed = train(out, runs["data"], "--resume", "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = runs["double"]
    for stage, (path, key) in _checkpoint_files(straight).items():
        a, b = _state(path, key), _state(_checkpoint_files(out)[stage][0], key)
        assert all(torch.equal(a[name], b[name]) for name in a), stage
    for folder in ("ir_labels", "pseudo", "seg/pred"):
        for path in sorted((straight / folder).glob("*.png")):
            assert path.read_bytes() == (out / folder / path.name).read_bytes(), f"{folder}/{path.name}"
    assert not list(out.rglob(".*.tmp*"))


def test_global_cam_is_summed_over_the_shards(runs: dict[str, Path]) -> None:
    """C2AM's global CAM: each process sums the CAMs of its shard, rank 0 writes G (within 1e-4 of one process)."""
    maps = []
    for name, extra in (("c2am-single", ()), ("c2am-double", ("--nproc", "2"))):
        out = runs["root"] / name
        result = train(out, runs["data"], "--method", "c2am", "--stages", "cls,global_cam", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        maps.append(np.load(out / "global_cam" / "global_cam.npy"))
    assert maps[0].shape == maps[1].shape and float(maps[0].max()) > 0
    assert float(np.abs(maps[0] - maps[1]).max()) <= 1e-4


def test_confounder_predictions_are_sharded(runs: dict[str, Path]) -> None:
    """CONTA's confounder stage predicts the images round 0 did not, split over the ranks; rank 0 then builds
    C and X_m from every mask. Two processes give the single process's predictions, C and X_m."""
    stages = ["--method", "conta", "--rounds", "1", "--stages", "confounder"]
    folders, removed = [], []
    for name, extra in (("conta-single", ()), ("conta-double", ("--nproc", "2"))):
        out = runs["root"] / name
        first = train(out, runs["data"], *stages, *extra)
        assert first.returncode == 2 and "rounds/0/seg/ckpt.pt" in first.stderr, first.stderr[-2000:]
        seg = out / "rounds" / "0" / "seg"
        shutil.copytree(runs["single"] / "seg", seg)
        removed = sorted(path.name for path in (seg / "pred").glob("*.png"))[::3]  # as if round 0 skipped them
        for name_ in removed:
            (seg / "pred" / name_).unlink()
        result = train(out, runs["data"], *stages, "--resume", *extra)
        assert result.returncode == 0, result.stderr[-3000:]
        folders.append(out / "rounds" / "1" / "confounder")
    single, double = folders
    for folder in folders:
        assert sorted(path.name for path in (folder / "pred").glob("*.png")) == removed
        assert json.loads((folder / "DONE").read_text())["predicted_here"] == len(removed)
    for name_ in removed:
        np.testing.assert_array_equal(np.asarray(Image.open(single / "pred" / name_)), np.asarray(Image.open(double / "pred" / name_)))
    c_single, c_double = np.load(single / "confounders.npy"), np.load(double / "confounders.npy")
    assert float(c_single.max()) > 0
    np.testing.assert_allclose(c_single, c_double, rtol=0, atol=1e-6)
    xm_single, xm_double = np.load(single / "xm.npz"), np.load(double / "xm.npz")
    assert set(xm_single.files) == set(xm_double.files)
    for key in xm_single.files:
        np.testing.assert_array_equal(xm_single[key], xm_double[key])
