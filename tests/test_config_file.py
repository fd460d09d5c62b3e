"""`fastwsss train --config FILE` reads back what `fastwsss presets NAME [--json]` prints and a run's
config.json; the file, then the options, then --set; a bad file is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.commands.config_file import read_config_file
from fastwsss.commands.train import build_config
from fastwsss.config import PRESETS, apply_options, get_preset
from fastwsss.methods import METHODS

runner = CliRunner()
NO_OPTIONS = {"method": None, "data.name": None, "cls.weights": None, "cls.epochs": None}


def printed(tmp_path: Path, *args: str) -> Path:
    """The standard output of `fastwsss presets ARGS`, as a file."""
    result = runner.invoke(app, ["presets", *args])
    assert result.exit_code == 0, result.output
    path = tmp_path / f"{'-'.join(args)}.txt"
    path.write_text(result.stdout)
    return path


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("preset", list(PRESETS))
def test_the_presets_listing_and_its_json_read_back_as_the_preset(tmp_path: Path, preset: str, method: str) -> None:
    expected = get_preset(preset, method)
    assert read_config_file(printed(tmp_path, preset, "--method", method)) == expected
    assert read_config_file(printed(tmp_path, preset, "--method", method, "--json")) == expected


def test_train_config_gives_the_same_settings_as_the_preset(tmp_path: Path) -> None:
    listing = printed(tmp_path, "synthetic").rename(tmp_path / "x.json")  # `fastwsss presets synthetic > x.json`
    assert build_config(dict(NO_OPTIONS), None, listing, []) == build_config(dict(NO_OPTIONS), "synthetic", None, [])
    by_file = runner.invoke(app, ["train", "--config", str(listing), "--dry-run"])
    by_preset = runner.invoke(app, ["train", "--preset", "synthetic", "--dry-run"])
    assert by_file.exit_code == by_preset.exit_code == 0, by_file.output
    assert by_file.output == by_preset.output


def test_a_run_config_json_reads_back(tmp_path: Path) -> None:
    config = apply_options(get_preset("tiny", "c2am"), {"seed": 3, "data.root": "/data/synth", "cam.scales": (1.0,)})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict(), indent=2))
    assert read_config_file(path) == config


def test_the_file_then_the_options_then_set(tmp_path: Path) -> None:
    listing = printed(tmp_path, "tiny")
    edited = tmp_path / "edited.txt"
    edited.write_text(listing.read_text().replace("cls.epochs                   = 3", "cls.epochs = 5"))
    assert build_config(dict(NO_OPTIONS), None, edited, []).cls.epochs == 5
    assert build_config({**NO_OPTIONS, "cls.epochs": 7}, None, edited, []).cls.epochs == 7
    assert build_config({**NO_OPTIONS, "cls.epochs": 7}, None, edited, ["cls.epochs=9"]).cls.epochs == 9
    switched = build_config({**NO_OPTIONS, "data.name": "voc", "data.root": "/data/voc"}, None, edited, [])
    assert switched.preset == "tiny" and switched.data.name == "voc"  # the file names its preset: no switch


@pytest.mark.parametrize(
    "text, words",
    [
        (None, "cannot read it"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected `section.name = value`"),
        ('{"preset": "tiny", "cls": {"epochz": 3}}', "unknown name 'epochz'"),
        ("preset = tiny\ncls.epochs = many\n", "cls.epochs: cannot read 'many'"),
        ("preset = tiny\ncls.epochs = 0\n", "cls.epochs"),
        ("preset = huge\n", "valid presets: tiny"),
        ("cls.epochs = 3\n", "no preset setting"),
        ("preset = tiny\ncls.epochs = 3\ncls.epochs = 4\n", "line 3: cls.epochs is set twice"),
    ],
)
def test_a_bad_file_is_one_line_naming_it(tmp_path: Path, text: str | None, words: str) -> None:
    path = tmp_path / "settings.txt"
    if text is not None:
        path.write_text(text)
    result = runner.invoke(app, ["train", "--config", str(path), "--dry-run"])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"--config {path}" in lines[0] and words in lines[0], lines[0]


def test_config_and_preset_together_are_refused(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--config", str(printed(tmp_path, "tiny")), "--preset", "tiny", "--dry-run"])
    assert result.exit_code == 2 and "pass one" in result.output, result.output


def test_resume_refuses_a_config_file_that_disagrees_with_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(get_preset("tiny").to_dict()))
    edited = tmp_path / "edited.txt"
    edited.write_text(printed(tmp_path, "tiny").read_text().replace("cls.epochs                   = 3", "cls.epochs = 5"))
    result = runner.invoke(app, ["train", "--config", str(edited), "--resume", "--out", str(run)])
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "cls.epochs: --resume uses" in lines[0], result.output
