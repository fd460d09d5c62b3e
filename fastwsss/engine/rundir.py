"""The run directory: every stage reads its inputs from it and writes its outputs to it (docs/design.md).

    RUNDIR/config.json  metrics.jsonl  cls/ckpt.pt  cams/<id>.npz  ...

`RunDir` alone knows this layout: stages, commands and reports ask it for a path by what the path holds
(`run.checkpoint("irn")`, `run.cam_file(image_id)`, `run.pseudo_dir`) instead of joining folder names.

A run directory belongs to one run at a time (an exclusive lock), is never silently reused (an existing
run needs --resume), and every file in it is written atomically. Under torchrun only rank 0 writes the
shared files (config.json, metrics.jsonl, DONE markers) and holds the lock; the other ranks' calls of those
writers do nothing (fastwsss.engine.distributed).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastwsss.config import RunConfig, config_from_dict
from fastwsss.data.base import check_image_id
from fastwsss.engine.distributed import is_main
from fastwsss.engine.files import append_jsonl, read_jsonl, remove_orphan_temps, write_json
from fastwsss.errors import ConfigError, RunDirError

ENVIRONMENT_FILE = "environment.jsonl"
"""One row per start of the run (fastwsss.engine.environment)."""

# The folder of each stage's outputs, under the run directory (or under a CONTA round's folder).
CLS = "cls"
GLOBAL_CAM = "global_cam"
C2AM = "c2am"
CAMS = "cams"
IR_LABELS = "ir_labels"
IRN = "irn"
PSEUDO = "pseudo"
SEG = "seg"
CONFOUNDER = "confounder"
ROUNDS = "rounds"
"""CONTA's rounds: RUNDIR/rounds/<t> holds round t's stage folders."""

IMAGE_SUFFIX = {CAMS: ".npz", IR_LABELS: ".png", PSEUDO: ".png"}
"""The per-image stages' folders and the suffix of each image's file in them."""


def id_file(folder: Path, image_id: str, suffix: str) -> Path:
    """The file `folder/<image_id><suffix>` of a per-image output (cams/<id>.npz, pseudo/<id>.png, ...).

    Every stage turns ids into paths here, so an id that is a path ("../../victim/x", "/etc/x") can never
    place a file outside `folder`, whichever data set it came from (fastwsss.data.base.check_image_id).
    """
    return folder / f"{check_image_id(image_id, folder)}{suffix}"


def round_folder(round_: int) -> str:
    """Where CONTA's round `round_` keeps its stage outputs, relative to the run directory."""
    return f"{ROUNDS}/{round_}"


@dataclass
class RunDir:
    """A run directory, or a view of one of its sub-folders (CONTA's rounds/<t>).

    A view keeps stage outputs under its own `path` but shares the run's config.json and metrics.jsonl;
    its `tags` (e.g. {"round": 1}) are added to every metrics row it logs.
    """

    path: Path
    root: Path | None = None
    """The run directory that holds config.json and metrics.jsonl; None means `path` itself."""
    tags: dict[str, Any] = field(default_factory=dict)
    _lock_handle: Any = field(default=None, repr=False)

    @property
    def top(self) -> Path:
        return self.root if self.root is not None else self.path

    @property
    def config_path(self) -> Path:
        return self.top / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.top / "metrics.jsonl"

    def view(self, sub: str, **tags: Any) -> RunDir:
        """The sub-folder `sub` of the run as a RunDir of its own (not locked: the run holds the lock)."""
        return RunDir(self.top / sub, root=self.top, tags={**self.tags, **tags})

    def round_view(self, round_: int) -> RunDir:
        """CONTA's round `round_`: RUNDIR/rounds/<round_>, its metrics rows tagged {"round": round_}."""
        return self.view(round_folder(round_), round=round_)

    def stage_path(self, name: str) -> Path:
        """The folder `name` of a stage's outputs and its DONE marker (not created: see stage_dir)."""
        return self.path / name

    def stage_dir(self, name: str) -> Path:
        """The folder `name` of a stage's outputs, created if it is not there yet."""
        folder = self.stage_path(name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def checkpoint(self, stage: str) -> Path:
        """The final model a training stage saves: <stage>/ckpt.pt."""
        return self.stage_path(stage) / "ckpt.pt"

    def last_checkpoint(self, stage: str) -> Path:
        """The resumable state a training stage saves after every epoch: <stage>/last.pt."""
        return self.stage_path(stage) / "last.pt"

    def classifier_checkpoint(self, method: str) -> Path:
        """The classifier whose CAMs the run uses: <the method's classifier_stage>/ckpt.pt of this run or round
        (cls/ckpt.pt; C2AM's fine-tuned c2am/ckpt.pt)."""
        from fastwsss.methods import get_method

        return self.checkpoint(get_method(method).classifier_stage)

    @property
    def attention_file(self) -> Path:
        """CONTA's Eq. 3 attention, trained with the classifier of a round >= 1: cls/attention.pt."""
        return self.path / CLS / "attention.pt"

    def image_file(self, folder: str, image_id: str) -> Path:
        """The file of `image_id` in the per-image folder `folder` (cams, ir_labels or pseudo)."""
        return id_file(self.stage_path(folder), image_id, IMAGE_SUFFIX[folder])

    @property
    def cams_dir(self) -> Path:
        """The cam stage's CAMs, one <id>.npz per image."""
        return self.path / CAMS

    def cam_file(self, image_id: str) -> Path:
        """The CAMs of one image: cams/<id>.npz."""
        return self.image_file(CAMS, image_id)

    @property
    def ir_labels_dir(self) -> Path:
        """The ir_label stage's seeds for IRN, one <id>.png per image."""
        return self.path / IR_LABELS

    def ir_label_file(self, image_id: str) -> Path:
        """The IR label of one image: ir_labels/<id>.png."""
        return self.image_file(IR_LABELS, image_id)

    @property
    def pseudo_dir(self) -> Path:
        """The pseudo stage's masks, one <id>.png per image."""
        return self.path / PSEUDO

    def pseudo_file(self, image_id: str) -> Path:
        """The pseudo mask of one image: pseudo/<id>.png."""
        return self.image_file(PSEUDO, image_id)

    @property
    def seg_predictions_dir(self) -> Path:
        """The seg stage's predictions of the CAM split, one <id>.png per image: seg/pred."""
        return self.path / SEG / "pred"

    def seg_prediction_file(self, image_id: str) -> Path:
        """The seg stage's prediction of one image: seg/pred/<id>.png."""
        return id_file(self.seg_predictions_dir, image_id, ".png")

    @property
    def global_cam_file(self) -> Path:
        """C2AM's global CAM G (K x S x S): global_cam/global_cam.npy."""
        return self.path / GLOBAL_CAM / "global_cam.npy"

    @property
    def global_cam_constants_file(self) -> Path:
        """C2AM's logit constant M_c per class: global_cam/constants.json."""
        return self.path / GLOBAL_CAM / "constants.json"

    @property
    def global_cam_picture(self) -> Path:
        """A picture of the global CAM per class: global_cam/global_cam.png."""
        return self.path / GLOBAL_CAM / "global_cam.png"

    @property
    def confounders_file(self) -> Path:
        """CONTA's confounder set C of a round (n x hw): confounder/confounders.npy."""
        return self.path / CONFOUNDER / "confounders.npy"

    @property
    def xm_file(self) -> Path:
        """CONTA's X_m of every image of a round: confounder/xm.npz."""
        return self.path / CONFOUNDER / "xm.npz"

    @property
    def confounders_picture(self) -> Path:
        """A picture of a round's confounder set: confounder/confounders.png."""
        return self.path / CONFOUNDER / "confounders.png"

    @property
    def confounder_predictions_dir(self) -> Path:
        """Masks the confounder stage predicted itself (images the previous round did not): confounder/pred."""
        return self.path / CONFOUNDER / "pred"

    @property
    def rounds_dir(self) -> Path:
        """The folder of CONTA's rounds: RUNDIR/rounds."""
        return self.top / ROUNDS

    def rounds(self) -> list[int]:
        """The CONTA rounds that have a folder, in order."""
        folder = self.rounds_dir
        return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()) if folder.is_dir() else []

    def final_view(self, config: RunConfig) -> RunDir:
        """Where the run's final stage outputs are: the last round of a method that runs in rounds (CONTA),
        else the run itself."""
        from fastwsss.methods import get_method

        last = get_method(config.method).final_round(config)
        return self if last is None else self.round_view(last)

    def views(self, config: RunConfig) -> list[tuple[RunDir, int | None]]:
        """(view, round) of every pass of the run: the run itself, or each round that has a folder."""
        from fastwsss.methods import get_method

        count = get_method(config.method).round_count(config)
        if count is None:
            return [(self, None)]
        return [(self.round_view(t), t) for t in range(count + 1) if self.round_view(t).path.is_dir()]

    def load_config(self) -> RunConfig:
        try:
            values = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{self.config_path}: not found; is {self.path} a fastwsss run directory?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunDirError(f"{self.config_path}: not valid JSON ({exc})") from None
        except RecursionError:
            raise RunDirError(f"{self.config_path}: JSON nested too deeply") from None
        except OSError as exc:
            raise RunDirError(f"{self.config_path}: cannot read ({exc.strerror or exc})") from None
        try:
            return config_from_dict(values)
        except ConfigError as exc:
            raise ConfigError(f"{self.config_path}: {exc}") from None

    def save_config(self, config: RunConfig) -> None:
        if not is_main():
            return
        write_json(self.config_path, config.to_dict())

    def log_metric(self, row: dict[str, Any]) -> dict[str, Any]:
        """Append one metrics row (with a timestamp) to metrics.jsonl and return it."""
        row = {**self.tags, **row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if is_main():
            append_jsonl(self.metrics_path, row)
        return row

    def record_environment(self, row: dict[str, Any]) -> None:
        """Append one row (fastwsss.engine.environment) to RUNDIR/environment.jsonl."""
        if is_main():
            append_jsonl(self.top / ENVIRONMENT_FILE, row)

    def environments(self) -> list[dict[str, Any]]:
        """Every start's environment row, oldest first."""
        return read_jsonl(self.top / ENVIRONMENT_FILE)

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def done_file(self, stage: str) -> Path:
        """The marker a stage writes when it has finished: <stage>/DONE."""
        return self.stage_path(stage) / "DONE"

    def is_done(self, stage: str) -> bool:
        return self.done_file(stage).exists()

    def mark_done(self, stage: str, info: dict[str, Any] | None = None) -> None:
        if not is_main():
            return
        write_json(self.done_file(stage), {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(info or {})})

    def lock(self) -> None:
        """Take the run directory's exclusive lock, or fail naming the process that holds it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / ".lock"
        try:
            handle = open(lock_path, "a+")
        except OSError as exc:
            raise RunDirError(f"cannot write {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunDirError(f"{self.path} is in use by another fastwsss run (pid {owner})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None


def open_run_dir(path: str | Path) -> RunDir:
    """An existing run directory (for eval, report, export)."""
    run = RunDir(Path(path))
    if not run.config_path.is_file():
        raise RunDirError(f"{run.path}: not a fastwsss run directory (no config.json)")
    return run


def create_or_resume(path: str | Path, config: RunConfig, resume: bool) -> tuple[RunDir, RunConfig]:
    """Lock the run directory; a new run saves `config`, a resumed run uses the saved config.

    Without --resume an existing run is refused, so nothing a user had is overwritten.
    """
    run = RunDir(Path(path))
    if run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"{run.path} is a file, not a run directory; choose another --out")
    exists = run.config_path.is_file()
    if resume and not exists:
        raise RunDirError(f"{run.path}: no run to resume here (no config.json); check --out, or drop --resume")
    if exists and not resume:
        raise RunDirError(f"{run.path} already holds a run; pass --resume to continue it, or choose another --out")
    if run.path.exists() and not exists and any(p.name != ".lock" for p in run.path.iterdir()):
        raise RunDirError(f"{run.path} exists and is not a fastwsss run directory; choose another --out")
    run.lock()
    if exists:
        remove_orphan_temps(run.path)  # left by a run killed mid-write (SIGKILL skips atomic_path's cleanup)
        config = run.load_config()
    else:
        run.save_config(config)
    return run, config
