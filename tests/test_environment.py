"""RUNDIR/environment.jsonl: what a run ran on, and `fastwsss env` comparing two runs."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import numpy as np
import torch
from test_pipeline import small_config
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.engine.environment import data_fingerprint, environment_differences, environment_record, git_commit
from fastwsss.engine.pipeline import run_pipeline

runner = CliRunner()


class ArraySource:
    """The part of a SegmentationSource that the fingerprint reads, over arrays held in memory."""

    def __init__(self, images: dict[str, np.ndarray], masks: dict[str, np.ndarray] | None) -> None:
        self.images, self.masks, self.split = images, masks, "train"

    @property
    def ids(self) -> list[str]:
        return list(self.images)

    def load_image(self, image_id: str) -> np.ndarray:
        return self.images[image_id]

    def mask_path(self, image_id: str):
        return None if self.masks is None else f"{image_id}.png"

    def load_mask(self, image_id: str) -> np.ndarray:
        return self.masks[image_id]


def _source(seed: int = 0, masks: bool = True) -> ArraySource:
    rng = np.random.default_rng(seed)
    ids = [f"img{i}" for i in range(6)]
    images = {i: rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for i in ids}
    return ArraySource(images, {i: rng.integers(0, 3, (5, 7), dtype=np.uint8) for i in ids} if masks else None)


def test_fingerprint_sees_one_changed_pixel_or_mask_value_in_the_first_images_only():
    base = data_fingerprint(_source())
    assert base == data_fingerprint(_source()) and len(base) == 16
    pixel = _source()
    pixel.images["img1"][2, 3, 0] ^= 1
    assert data_fingerprint(pixel) != base
    mask = _source()
    mask.masks["img3"][0, 0] = (mask.masks["img3"][0, 0] + 1) % 3
    assert data_fingerprint(mask) != base
    late = _source()
    late.images["img5"][0, 0, 0] ^= 1  # beyond the first four images
    assert data_fingerprint(late) == base
    assert data_fingerprint(_source(masks=False)) != base


def test_differences_name_nested_fields_and_skip_volatile_ones():
    a = environment_record(torch.device("cpu"), 1, _source())
    b = json.loads(json.dumps(a))
    b["time"], b["pid"], b["argv"] = "later", -1, ["other"]
    assert environment_differences(a, b) == {}
    b["packages"]["numpy"] = "0.0"
    b["cpu_isa"] = []
    b["data"]["fingerprint"] = "0" * 16
    found = environment_differences(a, b)
    assert set(found) == {"packages.numpy", "cpu_isa", "data.fingerprint"}
    assert found["packages.numpy"] == (a["packages"]["numpy"], "0.0")


def test_record_has_the_versions_cpu_and_data():
    row = environment_record(torch.device("cpu"), 2, _source())
    assert row["packages"]["torch"] and row["packages"]["numpy"] and row["python"]
    assert row["processes"] == 2 and row["device"] == "cpu" and row["torch_threads"] >= 1
    assert row["data"] == {"split": "train", "images": 6, "fingerprint": data_fingerprint(_source())}
    json.dumps(row)  # one JSON line


def test_every_start_appends_a_row_and_env_compares_two_runs(tmp_path):
    config = small_config(epochs=1)
    run_pipeline(config, tmp_path / "a", stages="cls")
    run_pipeline(config, tmp_path / "a", stages="cls", resume=True)
    rows = [json.loads(line) for line in (tmp_path / "a" / "environment.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["data"]["images"] == 48
    assert rows[0]["data"]["fingerprint"] == rows[1]["data"]["fingerprint"]

    base = small_config(epochs=1)
    other = dataclasses.replace(
        base, data=dataclasses.replace(base.data, synth=dataclasses.replace(base.data.synth, seed=2))
    )
    run_pipeline(other, tmp_path / "b", stages="cls")
    same = runner.invoke(app, ["env", str(tmp_path / "a"), str(tmp_path / "a")])
    assert same.exit_code == 0 and "same environment" in " ".join(same.output.split())
    differ = runner.invoke(app, ["env", str(tmp_path / "a"), str(tmp_path / "b")])
    assert differ.exit_code == 0 and "data.fingerprint" in differ.output, differ.output
    shown = runner.invoke(app, ["env", str(tmp_path / "a")])
    assert shown.exit_code == 0 and "packages.torch" in shown.output

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("{}")
    missing = runner.invoke(app, ["env", str(tmp_path / "old")])
    assert missing.exit_code == 2 and "no environment.jsonl" in " ".join(missing.output.split())


def _fake_run(path, mious: dict[tuple[str, str], float], config: dict, env: dict | None) -> None:
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    rows = [{"stage": stage, "split": split, "method": "cam", "miou": value} for (stage, split), value in mious.items()]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if env is not None:
        (path / "environment.jsonl").write_text(json.dumps(env) + "\n")


def test_compare_shows_differences_settings_and_environment(tmp_path):
    env = environment_record(torch.device("cpu"), 1, _source())
    other_env = {**env, "packages": {**env["packages"], "numpy": "0.0"}}
    config = {"seed": 0, "cls": {"lr": 0.01, "epochs": 8}}
    _fake_run(tmp_path / "a", {("cam", "train"): 0.345, ("seg", "val"): 0.301}, config, env)
    _fake_run(tmp_path / "b", {("cam", "train"): 0.354, ("seg", "val"): 0.289, ("pseudo", "train"): 0.3},
              {"seed": 0, "cls": {"lr": 0.002, "epochs": 8}}, other_env)
    _fake_run(tmp_path / "c", {("cam", "train"): 0.345}, config, None)
    result = runner.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "35.4 (+0.9)" in text and "28.9 (-1.2)" in text and "34.5 (+0.0)" in text
    pseudo = next(line for line in result.output.splitlines() if "pseudo" in line)
    assert "30.0" in pseudo and "(" not in pseudo  # no baseline value to compare with
    assert "cls.lr 0.01 -> 0.002" in text and "cls.epochs" not in text
    assert "packages.numpy" in text and "environment not recorded" in text
    one = runner.invoke(app, ["compare", str(tmp_path / "a")])
    assert one.exit_code == 2 and "at least two" in one.output


def test_git_commit_only_for_the_checkout_that_holds_the_package(tmp_path):
    repo = tmp_path / "repo"
    (repo / "fastwsss").mkdir(parents=True)
    (repo / "fastwsss" / "__init__.py").write_text("")
    (repo / "venv" / "lib" / "fastwsss").mkdir(parents=True)
    run = lambda *args: subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)  # noqa: E731
    run("init", "-q")
    run("-c", "user.name=t", "-c", "user.email=t@t", "add", "fastwsss")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit(repo / "fastwsss") == sha
    (repo / "fastwsss" / "__init__.py").write_text("changed = 1\n")
    assert git_commit(repo / "fastwsss") == sha + "+dirty"
    assert git_commit(repo / "venv" / "lib" / "fastwsss") is None  # inside another project's repository
    assert git_commit(tmp_path) is None
