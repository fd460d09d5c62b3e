import json
import os

import pytest

from fastwsss.config import get_preset
from fastwsss.engine.files import atomic_path, read_jsonl
from fastwsss.engine.rundir import RunDir, create_or_resume, open_run_dir
from fastwsss.errors import DataError, RunDirError


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


def test_paths_keep_the_run_directory_layout(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint("irn") == tmp_path / "irn" / "ckpt.pt"
    assert run.last_checkpoint("seg") == tmp_path / "seg" / "last.pt"
    assert run.done_file("cams") == tmp_path / "cams" / "DONE"
    assert run.classifier_checkpoint("cam") == tmp_path / "cls" / "ckpt.pt"
    assert run.classifier_checkpoint("c2am") == tmp_path / "c2am" / "ckpt.pt"
    assert run.cam_file("a") == run.cams_dir / "a.npz" == tmp_path / "cams" / "a.npz"
    assert run.ir_label_file("a") == run.ir_labels_dir / "a.png" == tmp_path / "ir_labels" / "a.png"
    assert run.pseudo_file("a") == run.pseudo_dir / "a.png" == tmp_path / "pseudo" / "a.png"
    assert run.seg_prediction_file("a") == run.seg_predictions_dir / "a.png" == tmp_path / "seg" / "pred" / "a.png"
    assert run.global_cam_file == tmp_path / "global_cam" / "global_cam.npy"
    assert run.global_cam_constants_file == tmp_path / "global_cam" / "constants.json"
    assert run.global_cam_picture == tmp_path / "global_cam" / "global_cam.png"
    assert not any(tmp_path.iterdir())  # asking for a path creates nothing


def test_round_paths_live_in_the_round_folder(tmp_path):
    round1 = RunDir(tmp_path).round_view(1)
    assert round1.classifier_checkpoint("conta") == tmp_path / "rounds" / "1" / "cls" / "ckpt.pt"
    assert round1.attention_file == tmp_path / "rounds" / "1" / "cls" / "attention.pt"
    assert round1.confounders_file == tmp_path / "rounds" / "1" / "confounder" / "confounders.npy"
    assert round1.xm_file == tmp_path / "rounds" / "1" / "confounder" / "xm.npz"
    assert round1.confounders_picture == tmp_path / "rounds" / "1" / "confounder" / "confounders.png"
    assert round1.confounder_predictions_dir == tmp_path / "rounds" / "1" / "confounder" / "pred"
    assert round1.rounds_dir == tmp_path / "rounds"
    assert round1.config_path == tmp_path / "config.json"


def test_rounds_and_final_view(tmp_path):
    run = RunDir(tmp_path)
    assert run.rounds() == []
    for name in ("2", "0", "10", "notes"):
        (tmp_path / "rounds" / name).mkdir(parents=True)
    assert run.rounds() == [0, 2, 10]
    conta = get_preset("tiny", "conta")
    assert run.final_view(conta).path == tmp_path / "rounds" / str(conta.conta.rounds)
    assert run.final_view(get_preset("tiny")) is run


@pytest.mark.parametrize("image_id", ["../x", "/etc/x", "a/b"])
def test_image_files_refuse_ids_that_are_paths(tmp_path, image_id):
    run = RunDir(tmp_path)
    for path_of in (run.cam_file, run.ir_label_file, run.pseudo_file, run.seg_prediction_file):
        with pytest.raises(DataError, match="not paths"):
            path_of(image_id)
