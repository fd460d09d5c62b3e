"""Hostile input through the real command: a crafted cls_labels.npy, id lists that are paths, settings that
would leave a run directory no command can finish. Each attack must end in one line naming the file or
setting, with nothing executed and nothing written outside the output (docs/security.md).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_voc import copy_tree
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.config import get_preset
from fastwsss.data.base import check_image_id
from fastwsss.data.voc import read_cls_labels
from fastwsss.engine.rundir import id_file
from fastwsss.errors import DataError

VOC_SPLITS = ["--set", "data.val_split=train", "--set", "data.cam_split=train", "--set", "data.test_splits="]
QUICK = ["--preset", "tiny", "--set", "cls.epochs=1", "--set", "cls.batch_size=4", "--set", "cam.scales=1.0"]


class Payload:
    """Pickles as a call of os.system: what a crafted cls_labels.npy would run on np.load(allow_pickle=True)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def one_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def crafted_cls_labels(path: Path, marker: Path) -> Path:
    np.save(path, np.array({2007000063: Payload(marker)}, dtype=object), allow_pickle=True)
    return path


# ------------------------------------------------------------------------------------ cls_labels.npy


def test_crafted_cls_labels_runs_nothing_on_train(voc_mini: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = crafted_cls_labels(tmp_path / "cls_labels.npy", marker)
    out = tmp_path / "run"
    code, output = cli("train", *QUICK, "--data", "voc", "--root", voc_mini, "--cls-labels", evil, *VOC_SPLITS,
                       "--stages", "cls", "--out", out)
    line = one_error_line(output)
    assert code == 2 and str(evil) in line and "posix.system" in line, output
    assert not marker.exists()
    assert not out.exists()  # refused before the run directory was written


def test_shared_run_naming_a_crafted_cls_labels_runs_nothing(voc_mini: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = crafted_cls_labels(tmp_path / "cls_labels.npy", marker)
    run = tmp_path / "shared-run"
    run.mkdir()
    config = get_preset("tiny").to_dict()
    config["data"].update(name="voc", root=str(voc_mini), cls_labels=str(evil), val_split="train", test_splits=[])
    (run / "config.json").write_text(json.dumps(config))
    for command in (["eval", run], ["train", "--resume", "--out", run, "--stages", "cls"]):
        code, output = cli(*command)
        line = one_error_line(output)
        assert code == 2 and str(evil) in line, output
    assert not marker.exists()
    assert sorted(p.name for p in run.iterdir()) in (["config.json"], [".lock", "config.json"])


def test_real_cls_labels_read_as_before(voc_mini: Path) -> None:
    path = voc_mini.parents[1] / "cls_labels.npy"
    if not path.is_file():
        pytest.skip("voc-mini has no cls_labels.npy")
    expected = np.load(path, allow_pickle=True).item()  # the trusted shared file, read the old way
    table = read_cls_labels(path)
    assert table.keys() == expected.keys()
    for key, vector in expected.items():
        assert table[key].dtype == np.float32 and np.array_equal(table[key], vector)


def test_cls_labels_with_numpy_int_keys_and_bad_contents(tmp_path: Path) -> None:
    good = tmp_path / "good.npy"
    np.save(good, np.array({np.int32(2007000063): np.ones(20, np.float32)}, dtype=object), allow_pickle=True)
    assert list(read_cls_labels(good)) == [2007000063]
    for name, content in [("list", [1, 2]), ("objkey", {(1, 2): np.ones(20)}), ("strval", {1: "abc"})]:
        path = tmp_path / f"{name}.npy"
        np.save(path, np.array(content, dtype=object) if name != "list" else np.array([1.0, 2.0]), allow_pickle=True)
        with pytest.raises(DataError, match=str(path)):
            read_cls_labels(path)


# ----------------------------------------------------------------------------------- ids as names


@pytest.mark.parametrize("bad", ["../../victim/v1", "/tmp/abs", "..", ".hidden", "a\\b", "nul\0x", ""])
def test_ids_that_are_paths_are_refused(bad: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="list.txt"):
        check_image_id(bad, "list.txt")
    with pytest.raises(DataError):
        id_file(tmp_path, bad, ".png")
    assert id_file(tmp_path, "2007_000063", ".png") == tmp_path / "2007_000063.png"


def test_hostile_id_list_writes_nothing_outside_the_run(voc_mini: Path, tmp_path: Path) -> None:
    root = copy_tree(voc_mini, tmp_path / "deep" / "VOC2012")
    listing = root / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text(listing.read_text() + "../../victim/v1\n")
    out = tmp_path / "deep" / "run"
    code, output = cli("train", *QUICK, "--data", "voc", "--root", root, *VOC_SPLITS, "--out", out)
    line = one_error_line(output)
    assert code == 2 and str(listing) in line and "../../victim/v1" in line, output
    assert not (tmp_path / "victim").exists() and not (tmp_path / "deep" / "victim").exists()
    assert not out.exists()


# ------------------------------------------------------- settings checked before the run directory


def test_run_directories_that_could_never_finish_are_not_written(voc_mini: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    cases = [
        (["--data", "voc", "--root", voc_mini, "--set", "data.val_split=train"], "debiased"),  # tiny's test split
        (["--data", "voc", "--root", empty, *VOC_SPLITS], str(empty)),
        (["--seed", "-1"], "seed"),
        (["--weights", weights], "cls.weights"),
        (["--set", "irn.radius=60"], "irn.radius"),
        (["--set", "cam.scales=0.001"], "cam.scales"),
    ]
    for index, (extra, named) in enumerate(cases):
        out = tmp_path / f"run{index}"
        code, output = cli("train", *QUICK, *extra, "--out", out)
        line = one_error_line(output)
        assert code == 2 and named in line, (extra, output)
        assert not out.exists(), extra


def test_launch_and_device_settings_that_cannot_work_here(tmp_path: Path) -> None:
    cases: list[tuple[list[str], dict[str, str], str]] = [
        ([], {"WORLD_SIZE": "2"}, "WORLD_SIZE"),
        ([], {"FASTWSSS_KERNELS": "cuda"}, "FASTWSSS_KERNELS"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], {}, "device"))
    for index, (extra, env, named) in enumerate(cases):
        out = tmp_path / f"run{index}"
        code, output = cli("train", *QUICK, *extra, "--out", out, env=env)
        line = one_error_line(output)
        assert code == 2 and named in line, (extra, env, output)
        assert not out.exists()


def test_out_that_is_a_file_and_resume_of_a_mistyped_out(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    code, output = cli("train", *QUICK, "--out", target)
    assert code == 2 and str(target) in one_error_line(output)
    assert target.read_text() == "mine"
    code, output = cli("train", *QUICK, "--resume", "--out", tmp_path / "typo")
    assert code == 2 and "no run to resume" in one_error_line(output)
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "edit, setting",
    [
        (lambda c: c["cls"].update(epochs="3"), "cls.epochs"),
        (lambda c: c["cam"].update(scales=[[1.0]]), "cam.scales"),
        (lambda c: c.update(seed=-5), "seed"),
        (lambda c: c.update(data=[1, 2]), "data"),
        (lambda c: c["cls"].update(bogus=1), "cls.bogus"),
        (lambda c: c["irn"].update(radius=60), "irn.radius"),
    ],
)
def test_wrong_typed_config_json_on_resume_is_one_line(edit, setting: str, tmp_path: Path) -> None:  # noqa: ANN001
    run = tmp_path / "run"
    run.mkdir()
    config = get_preset("tiny").to_dict()
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    code, output = cli("train", "--resume", "--out", run, "--stages", "cls")
    line = one_error_line(output)
    assert code == 2 and setting in line and str(run / "config.json") in line, output


def test_checks_run_from_any_folder(tmp_path: Path) -> None:
    """The installed command, started outside the repository (where `kernels` is no top-level module)."""
    import subprocess
    import sys

    env = {**os.environ, "FASTWSSS_KERNELS": "cuda", "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-m", "fastwsss", "train", *QUICK, "--device", "cpu", "--out", "run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "FASTWSSS_KERNELS=cuda" in one_error_line(output), output
    assert not (tmp_path / "run").exists()
