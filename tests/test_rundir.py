import json
import os

import pytest

from fastwsss.config import get_preset
from fastwsss.errors import RunDirError
from fastwsss.io import atomic_path, read_jsonl
from fastwsss.rundir import create_or_resume, open_run_dir


def test_existing_run_needs_resume(tmp_path):
    run, _ = create_or_resume(tmp_path / "r", get_preset("tiny"), resume=False)
    run.unlock()
    with pytest.raises(RunDirError, match="--resume"):
        create_or_resume(tmp_path / "r", get_preset("tiny"), resume=False)
    run2, config = create_or_resume(tmp_path / "r", get_preset("synthetic"), resume=True)
    assert config.preset == "tiny"  # the saved config wins on resume
    run2.unlock()


def test_foreign_folder_is_not_taken_over(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    with pytest.raises(RunDirError, match="not a fastwsss run directory"):
        create_or_resume(tmp_path / "mine", get_preset("tiny"), resume=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "precious"


def test_lock_refuses_a_second_run(tmp_path):
    run, _ = create_or_resume(tmp_path / "r", get_preset("tiny"), resume=False)
    try:
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            create_or_resume(tmp_path / "r", get_preset("tiny"), resume=True)
    finally:
        run.unlock()


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_torn_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"stage": "cam", "miou": 0.5}) + "\n" + '{"stage": "ca')
    assert read_jsonl(path) == [{"stage": "cam", "miou": 0.5}]


def test_open_run_dir_needs_config(tmp_path):
    with pytest.raises(RunDirError, match="config.json"):
        open_run_dir(tmp_path)
