"""Resume after a real SIGKILL of a separate training process ("Scale and trust", item 2).

Unlike the Ctrl-C tests of test_pipeline.py (KeyboardInterrupt inside this process, where `finally` blocks
and the lock release run), here a child process runs the pipeline and is killed with SIGKILL at a point
drawn from a seeded RNG: nothing of it runs after the signal. The run is then resumed with
`run_pipeline(..., resume=True)` in this process and must equal an uninterrupted run:

* cls: the final classifier weights are bit for bit those of the straight run (`torch.equal`, not a
  tolerance: every run here is on the CPU with one intra-op thread, so the same ops on the same data in the
  same order give the same bits; a resumed run that differs at all has restored something wrong, such as
  the RNG state, the optimiser's momentum or the step count of the lr schedule);
* cam: every CAM file holds exactly the straight run's arrays (npz files carry zip timestamps, so they are
  compared by content); pseudo: every mask PNG is byte-identical to the straight run's;
* irn and seg (killed in training, and seg also while it writes its predictions): the boundary head and
  DeepLab are bit-identical to an uninterrupted run's, with the same epoch losses and prediction PNGs;
* no half-written output is ever visible, finished images are not redone, the run directory's lock (flock)
  is released by the kernel when the holder dies, and a second run on a directory in use is refused with
  one line naming the holder's pid.

The kill point is either "after the child reported step/image k, plus a random fraction of one step's
measured duration" (anywhere in compute, checkpointing or writing), or, to hit the narrow windows on
purpose, "the child is parked inside an atomic write" (just before or just after its rename).

All runs use one torch thread: the straight run and the killed run in child processes, the resume here.
"""

from __future__ import annotations

import dataclasses
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
from typer.testing import CliRunner

from fastwsss.algorithms.cam_inference import load_cam_npz
from fastwsss.cli import app
from fastwsss.config import RunConfig, SynthConfig, get_preset
from fastwsss.engine.pipeline import run_pipeline
from fastwsss.engine.rundir import open_run_dir
from fastwsss.errors import RunDirError
from fastwsss.stages.cam import FOLDER as CAM_FOLDER
from fastwsss.stages.irn import FOLDER as IRN_FOLDER
from fastwsss.stages.irn import IR_LABEL_FOLDER
from fastwsss.stages.pseudo import FOLDER as PSEUDO_FOLDER

pytestmark = pytest.mark.slow

STAGES_TO_PSEUDO = "cls,cam,ir_label,irn,pseudo"
TIMEOUT_S = 240.0


def kill_config() -> RunConfig:
    """The tiny preset on 32 images of 64 px: 2 cls, IRN and seg epochs of 4 steps each, one CAM scale."""
    config = get_preset("tiny")
    synth = SynthConfig(size=64, num_train=32, num_val=8, num_debiased=8, seed=1)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, synth=synth),
        cls=dataclasses.replace(config.cls, epochs=2, batch_size=8),
        cam=dataclasses.replace(config.cam, scales=(1.0,)),
        irn=dataclasses.replace(config.irn, epochs=2, batch_size=8),
        seg=dataclasses.replace(config.seg, epochs=2, batch_size=8),
    )


CLS_STEPS_PER_EPOCH = 32 // 8
CLS_STEPS = 2 * CLS_STEPS_PER_EPOCH
IRN_STEPS = 2 * (32 // 8)
SEG_STEPS = 2 * (32 // 8)
NUM_IMAGES = 32

# The child: runs the pipeline with one torch thread and reports every step or image as a line
# "stage count time" in the progress file. With "hold", it parks itself (writing the marker file first)
# at the nth rename of a file whose name ends with `suffix`, "before" or "after" the rename, so the parent
# can kill it inside an atomic write or between a checkpoint and the next line of code.
CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(1)
from fastwsss.config import config_from_dict
from fastwsss.engine.pipeline import run_pipeline

args = json.loads(sys.argv[1])
progress = open(args["progress"], "a", buffering=1)


def on_step(stage, count):
    progress.write(f"{stage} {count} {time.perf_counter()}\n")


hold = args.get("hold")
if hold:
    real_replace = os.replace
    seen = [0]

    def park(src, dst):
        # Written whole, then renamed: the parent polls for the marker and must never read it half written.
        with open(hold["marker"] + ".part", "w") as handle:
            handle.write(json.dumps({"src": str(src), "dst": str(dst)}))
        real_replace(hold["marker"] + ".part", hold["marker"])
        while True:
            time.sleep(1)

    def replace(src, dst, *a, **k):
        hit = str(dst).endswith(hold["suffix"])
        if hit:
            seen[0] += 1
        if hit and seen[0] == hold["nth"] and hold["when"] == "before":
            park(src, dst)
        real_replace(src, dst, *a, **k)
        if hit and seen[0] == hold["nth"] and hold["when"] == "after":
            park(src, dst)

    os.replace = replace

run_pipeline(config_from_dict(args["config"]), args["out"], stages=args["stages"], resume=args["resume"], on_step=on_step)
"""


@dataclasses.dataclass
class Child:
    proc: subprocess.Popen
    progress: Path
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def steps(self, stage: str) -> list[tuple[int, float]]:
        if not self.progress.exists():
            return []
        rows = []
        for line in self.progress.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == stage:
                rows.append((int(parts[1]), float(parts[2])))
        return rows


class Children:
    """Starts pipeline child processes and kills (by pid) any that a failing test leaves running."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.started: list[subprocess.Popen] = []

    def start(self, out: Path, stages: str, resume: bool = False, hold: dict | None = None) -> Child:
        out.parent.mkdir(parents=True, exist_ok=True)
        progress, log = out.parent / f"{out.name}.progress", out.parent / f"{out.name}.log"
        args = {
            "config": kill_config().to_dict(),
            "out": str(out),
            "stages": stages,
            "resume": resume,
            "progress": str(progress),
            "hold": hold,
        }
        env = {**os.environ, "FASTWSSS_DATA_DIR": str(self.data_dir), "FASTWSSS_NO_PROGRESS": "1"}
        with open(log, "wb") as handle:
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, json.dumps(args)], env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        self.started.append(proc)
        return Child(proc, progress, log)

    def finish(self, child: Child) -> None:
        try:
            child.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()
            pytest.fail(f"child run did not finish in {TIMEOUT_S} s:\n{child.tail()}")
        assert child.proc.returncode == 0, child.tail()

    def kill_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_for(child: Child, ready, what: str) -> None:
    """Poll (every 1 ms) until `ready()`; fail if the child exits first or the wait times out."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        if child.proc.poll() is not None:
            pytest.fail(f"the child exited (rc {child.proc.returncode}) before {what}:\n{child.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{child.tail()}")
        time.sleep(0.001)


def sigkill(child: Child) -> None:
    os.kill(child.proc.pid, signal.SIGKILL)
    child.proc.wait()
    assert child.proc.returncode == -signal.SIGKILL, "the child had already finished: the kill point was too late"


def median_gap(times: list[float]) -> float:
    gaps = sorted(b - a for a, b in zip(times, times[1:], strict=False))
    return gaps[len(gaps) // 2]


def random_kill_point(seed: int, total: int, reference: Child, phase: str) -> tuple[int, float]:
    """(count, delay): kill once the child has reported `count` (1..total-2) of `phase`, plus up to 0.8 of
    the reference run's median gap, so the kill lands anywhere in compute, checkpointing or writing."""
    rng = random.Random(seed)
    at = rng.randint(1, total - 2)
    return at, rng.uniform(0.0, 0.8) * median_gap([t for _, t in reference.steps(phase)])


def kill_after(child: Child, phase: str, at: int, delay: float) -> None:
    wait_for(child, lambda: any(n >= at for n, _ in child.steps(phase)), f"{phase} {at}")
    time.sleep(delay)
    sigkill(child)


def temporaries(folder: Path) -> list[str]:
    """Leftovers of fastwsss.engine.files.atomic_path (".<name>.tmp<pid>") anywhere under `folder`."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.tmp*"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kill-resume")
    children = Children(root / "data")
    yield root, children
    children.kill_all()


@pytest.fixture(scope="module")
def straight(workspace) -> tuple[Path, Child]:
    """An uninterrupted run of cls..pseudo in a child process: the reference, and per-step timings."""
    root, children = workspace
    child = children.start(root / "straight", STAGES_TO_PSEUDO)
    children.finish(child)
    return root / "straight", child


@pytest.fixture
def one_thread(workspace, monkeypatch):
    """The in-process resume runs as the children do: one torch thread, the same data cache."""
    root, _ = workspace
    monkeypatch.setenv("FASTWSSS_DATA_DIR", str(root / "data"))
    monkeypatch.setenv("FASTWSSS_NO_PROGRESS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def resume_here(out: Path, stages: str, dead_pid: int) -> None:
    """Resume in this process. The killed child's pid is still in .lock, but its flock died with it."""
    assert (out / ".lock").read_text().strip() == str(dead_pid)
    run_pipeline(open_run_dir(out).load_config(), out, stages=stages, resume=True)
    assert (out / ".lock").read_text().strip() == str(os.getpid())


def assert_same_weights(straight_run: Path, resumed: Path, stage: str, key: str = "state_dict") -> None:
    a = torch.load(straight_run / stage / "ckpt.pt", weights_only=False)[key]
    b = torch.load(resumed / stage / "ckpt.pt", weights_only=False)[key]
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{stage}: resumed weights differ from the straight run's in {different}"
    assert (resumed / stage / "DONE").is_file()


def epoch_losses(run: Path, stage: str) -> list[tuple[int, float]]:
    return [(row["epoch"], row["loss"]) for row in open_run_dir(run).metrics() if row.get("stage") == stage]


# --- cls ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [101, 202, 303])
def test_cls_killed_at_a_random_step_resumes_to_identical_weights(workspace, straight, one_thread, seed):
    root, children = workspace
    straight_run, straight_child = straight
    at, delay = random_kill_point(seed, CLS_STEPS, straight_child, "cls")  # both epochs: before and after last.pt
    out = root / f"cls-{seed}"
    child = children.start(out, "cls")
    kill_after(child, "cls", at, delay)
    assert not (out / "cls" / "DONE").exists()
    if at < CLS_STEPS_PER_EPOCH:
        assert not (out / "cls" / "last.pt").exists()

    resume_here(out, "cls", child.proc.pid)

    assert_same_weights(straight_run, out, "cls")
    assert epoch_losses(out, "cls") == epoch_losses(straight_run, "cls"), "one metrics row per epoch, with the straight run's losses"
    assert temporaries(out) == []  # the resume removes a killed writer's temporaries too


def test_cls_killed_between_checkpoint_and_metrics_row(workspace, straight, one_thread):
    """Parked right after last.pt of epoch 1 is renamed into place, before its metrics row is appended."""
    root, children = workspace
    straight_run, _ = straight
    out = root / "cls-after-ckpt"
    marker = root / "cls-after-ckpt.marker"
    child = children.start(
        out, "cls", hold={"suffix": "/cls/last.pt", "nth": 1, "when": "after", "marker": str(marker)}
    )
    wait_for(child, marker.exists, "the child parked after writing last.pt")
    sigkill(child)
    resume_here(out, "cls", child.proc.pid)
    assert_same_weights(straight_run, out, "cls")
    assert temporaries(out) == []  # the resume removes a killed writer's temporaries too
    assert epoch_losses(out, "cls") == epoch_losses(straight_run, "cls")  # the row of the epoch saved before the kill is kept


def test_killed_inside_an_atomic_write_of_last_pt(workspace, straight, one_thread):
    """Parked after torch.save wrote .last.pt.tmp<pid> in full, before the rename: last.pt is still absent."""
    root, children = workspace
    straight_run, _ = straight
    out = root / "cls-in-ckpt"
    marker = root / "cls-in-ckpt.marker"
    child = children.start(
        out, "cls", hold={"suffix": "/cls/last.pt", "nth": 1, "when": "before", "marker": str(marker)}
    )
    wait_for(child, marker.exists, "the child parked inside the write of last.pt")
    sigkill(child)
    assert not (out / "cls" / "last.pt").exists()
    assert temporaries(out) == [f"cls/.last.pt.tmp{child.proc.pid}"]
    resume_here(out, "cls", child.proc.pid)
    assert_same_weights(straight_run, out, "cls")
    assert epoch_losses(out, "cls") == epoch_losses(straight_run, "cls")
    assert temporaries(out) == []  # the killed writer's temporary is removed on resume


# --- cam ----------------------------------------------------------------------------------------------


def copy_run(source: Path, target: Path, drop: tuple[str, ...]) -> None:
    """A copy of the run `source` without the stage folders `drop`: a run stopped before those stages."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*drop, ".lock"))


def test_cam_killed_at_a_random_image_resumes_to_identical_cams(workspace, straight, one_thread):
    root, children = workspace
    straight_run, straight_child = straight
    rng = random.Random(404)
    at = rng.randint(1, NUM_IMAGES - 4)
    delay = rng.uniform(0.0, 0.8) * median_gap([t for _, t in straight_child.steps("cam")])
    out = root / "cam-404"
    copy_run(straight_run, out, drop=(CAM_FOLDER, IR_LABEL_FOLDER, IRN_FOLDER, PSEUDO_FOLDER))
    child = children.start(out, "cam", resume=True)
    cams = out / "cams"
    wait_for(child, lambda: cams.is_dir() and len(list(cams.glob("*.npz"))) >= at, f"{at} CAM files")
    time.sleep(delay)
    sigkill(child)
    done = {p.name: p.stat().st_mtime_ns for p in cams.glob("*.npz")}
    assert at <= len(done) < NUM_IMAGES and not (cams / "DONE").exists()

    resume_here(out, "cam", child.proc.pid)

    names = sorted(p.name for p in (straight_run / "cams").glob("*.npz"))
    assert sorted(p.name for p in cams.glob("*.npz")) == names
    assert all(os.stat(cams / name).st_mtime_ns == mtime for name, mtime in done.items()), "a finished CAM was redone"
    for name in names:
        a, b = load_cam_npz(straight_run / "cams" / name), load_cam_npz(cams / name)
        for field in ("keys", "cam4", "high_res"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=f"{name} {field}")
    assert temporaries(out) == []  # the resume removes a killed writer's temporaries too


# --- pseudo -------------------------------------------------------------------------------------------


def assert_pngs_complete_and_identical(straight_run: Path, folder: Path) -> None:
    for path in folder.glob("*.png"):
        assert path.read_bytes() == (straight_run / "pseudo" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("seed", [505, 606, 707])
def test_pseudo_killed_at_a_random_image_resumes_to_identical_masks(workspace, straight, one_thread, seed):
    root, children = workspace
    straight_run, straight_child = straight
    rng = random.Random(seed)
    at = rng.randint(1, NUM_IMAGES - 4)
    delay = rng.uniform(0.0, 0.8) * median_gap([t for _, t in straight_child.steps("pseudo")])
    out = root / f"pseudo-{seed}"
    copy_run(straight_run, out, drop=(PSEUDO_FOLDER,))
    child = children.start(out, "pseudo", resume=True)
    folder = out / "pseudo"
    wait_for(child, lambda: folder.is_dir() and len(list(folder.glob("*.png"))) >= at, f"{at} pseudo masks")
    time.sleep(delay)
    sigkill(child)
    done = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}
    assert at <= len(done) < NUM_IMAGES and not (folder / "DONE").exists()
    assert_pngs_complete_and_identical(straight_run, folder)  # nothing half-written is visible

    resume_here(out, "pseudo", child.proc.pid)

    expected = sorted(p.name for p in (straight_run / "pseudo").glob("*.png"))
    assert len(expected) == NUM_IMAGES
    assert sorted(p.name for p in folder.glob("*.png")) == expected
    assert_pngs_complete_and_identical(straight_run, folder)
    assert all(os.stat(folder / name).st_mtime_ns == mtime for name, mtime in done.items()), (
        "a finished mask was redone"
    )
    assert (folder / "DONE").is_file()
    assert temporaries(out) == []  # the resume removes a killed writer's temporaries too


def test_killed_inside_an_atomic_write_of_a_mask_and_a_second_run_is_refused(workspace, straight, one_thread):
    """The child parks inside the write of its 5th mask, holding the lock: a second run is refused in one
    line naming its pid. Then SIGKILL: the 5th mask is absent (not half there), and resume completes."""
    root, children = workspace
    straight_run, _ = straight
    out = root / "pseudo-in-write"
    copy_run(straight_run, out, drop=(PSEUDO_FOLDER,))
    marker = root / "pseudo-in-write.marker"
    child = children.start(
        out, "pseudo", resume=True, hold={"suffix": ".png", "nth": 5, "when": "before", "marker": str(marker)}
    )
    wait_for(child, marker.exists, "the child parked inside the write of a mask")
    pid = child.proc.pid
    parked = Path(json.loads(marker.read_text())["dst"])

    with pytest.raises(RunDirError, match=rf"in use by another fastwsss run \(pid {pid}\)"):
        run_pipeline(kill_config(), out, stages="pseudo", resume=True)
    result = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--stages", "pseudo"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and f"pid {pid}" in lines[0], result.output

    sigkill(child)
    folder = out / "pseudo"
    assert len(list(folder.glob("*.png"))) == 4 and not parked.exists()
    assert temporaries(out) == [f"pseudo/.{parked.name}.tmp{pid}"]
    assert_pngs_complete_and_identical(straight_run, folder)

    resume_here(out, "pseudo", pid)

    assert sorted(p.name for p in folder.glob("*.png")) == sorted(
        p.name for p in (straight_run / "pseudo").glob("*.png")
    )
    assert_pngs_complete_and_identical(straight_run, folder)
    assert np.asarray(Image.open(parked)).shape == (64, 64)
    assert temporaries(out) == []  # the killed writer's temporary is removed on resume


# --- irn and seg --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [808, 909])
def test_irn_killed_at_a_random_step_resumes_to_identical_weights(workspace, straight, one_thread, seed):
    root, children = workspace
    straight_run, straight_child = straight
    at, delay = random_kill_point(seed, IRN_STEPS, straight_child, "irn")
    out = root / f"irn-{seed}"
    copy_run(straight_run, out, drop=(IRN_FOLDER, PSEUDO_FOLDER))
    child = children.start(out, "irn", resume=True)
    kill_after(child, "irn", at, delay)
    assert not (out / IRN_FOLDER / "DONE").exists()

    resume_here(out, "irn", child.proc.pid)

    assert_same_weights(straight_run, out, IRN_FOLDER, "head")
    logged = epoch_losses(straight_run, "irn")  # copied with metrics.jsonl; the resumed run appends its own
    assert epoch_losses(out, "irn") == logged + logged
    assert temporaries(out) == []


@pytest.fixture(scope="module")
def straight_seg(workspace, straight) -> tuple[Path, Child]:
    """The seg stage run uninterrupted on top of the straight run: the reference for the seg kill tests."""
    root, children = workspace
    out = root / "straight-seg"
    copy_run(straight[0], out, drop=())
    child = children.start(out, "seg", resume=True)
    children.finish(child)
    return out, child


@pytest.mark.parametrize("seed, phase", [(111, "seg"), (222, "seg"), (333, "seg_pred")])
def test_seg_killed_in_training_or_prediction_resumes_to_the_same_model_and_masks(
    workspace, straight, straight_seg, one_thread, seed, phase
):
    root, children = workspace
    reference, reference_child = straight_seg
    at, delay = random_kill_point(seed, SEG_STEPS if phase == "seg" else NUM_IMAGES, reference_child, phase)
    out = root / f"seg-{seed}"
    copy_run(straight[0], out, drop=())
    child = children.start(out, "seg", resume=True)
    kill_after(child, phase, at, delay)
    assert not (out / "seg" / "DONE").exists()

    resume_here(out, "seg", child.proc.pid)

    assert_same_weights(reference, out, "seg", "state_dict")
    assert epoch_losses(out, "seg_train") == epoch_losses(reference, "seg_train")
    predictions = sorted((reference / "seg" / "pred").glob("*.png"))
    assert len(predictions) == NUM_IMAGES
    for path in predictions:
        assert path.read_bytes() == (out / "seg" / "pred" / path.name).read_bytes(), path.name
    assert temporaries(out) == []
