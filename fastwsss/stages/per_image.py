"""What the per-image stages (cam, ir_label, pseudo) share: which images are left, and how a stage ends.

Each image's output is written atomically, so an existing file is complete and is never redone on --resume.
Under torchrun each rank takes `shard` of the split *before* the finished images are filtered out, so the
shards do not depend on what another rank has already written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastwsss.config import RunConfig
from fastwsss.data import build_source
from fastwsss.engine.distributed import all_gather, is_main, shard
from fastwsss.engine.files import atomic_path
from fastwsss.engine.progress import log, warn
from fastwsss.engine.rundir import CAMS, IMAGE_SUFFIX, RunDir
from fastwsss.stages.context import StageContext


def images_to_do(stage: str, ids: list[str], output: Callable[[str], Path]) -> list[str]:
    """This rank's images of `ids` whose output file does not exist yet (said in one line when some do)."""
    mine = shard(ids)
    todo = [i for i in mine if not output(i).is_file()]
    done = sum(all_gather(len(mine) - len(todo)))
    if done:
        log(f"{stage}: {done} of {len(ids)} images already done, {len(ids) - done} to go")
    return todo


def finish_images(ctx: StageContext, stage: str, folder: Path, failed: list[str], what: str = "skipped") -> list[str]:
    """Collect every rank's failures ("id<TAB>reason" lines) and write folder/failed.txt (rank 0).

    Runs on every rank and returns only after all ranks have finished their shard, so the DONE marker the
    stage writes next never appears while another rank is still working. Returns all ranks' failure lines.
    """
    failed = [line for lines in all_gather(failed) for line in lines]
    if failed and is_main():
        with atomic_path(folder / "failed.txt") as tmp:
            tmp.write_text("\n".join(failed) + "\n")
        warn(f"{stage}: {len(failed)} image(s) {what}; see {folder / 'failed.txt'}")
    return failed


def failed_ids(folder: Path) -> set[str]:
    """The ids that folder/failed.txt lists (images a stage could not do, so their outputs are not promised)."""
    path = folder / "failed.txt"
    if not path.is_file():
        return set()
    return {line.split("\t")[0] for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line}


def missing_outputs(run: RunDir, config: RunConfig, folder: str) -> list[str]:
    """Ids whose output a DONE marker of `folder` promises but which is not there (deleted since, or lost).

    Promised: every id of the CAM split that failed.txt does not list; for ir_labels and pseudo, only ids
    whose CAM exists (the others are counted as missing by those stages themselves). [] for other stages.
    """
    if folder not in IMAGE_SUFFIX:
        return []
    skipped = failed_ids(run.stage_path(folder))
    ids = build_source(config.data, config.data.cam_split).ids
    return [
        i for i in ids
        if i not in skipped and (folder == CAMS or run.cam_file(i).is_file()) and not run.image_file(folder, i).is_file()
    ]  # fmt: skip
