"""The command line teaches its vocabulary: every fixed-choice option shows its choices in `--help`,
completes them in the shell and refuses a wrong value with one `error:` line listing the valid names; one
device vocabulary and default across the commands; `--data voc` says which preset it picks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import typer
from test_methods_registry import TOY
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.engine.device import DEVICE_NAMES, requested_device, resolve_device
from fastwsss.errors import ConfigError
from fastwsss.methods import METHODS, register_method, unregister_method
from fastwsss.stages import parse_stages

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
DEVICE_CHOICES = "<auto|cpu|cuda|cuda:N>"


def flat(text: str) -> str:
    """Help text with rich's box and line wrapping removed."""
    return re.sub(r"[\s│]+", " ", text)


def help_of(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return flat(result.output)


def error_line(args: list[str]) -> str:
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output and "╭" not in result.output, result.output
    return lines[0]


def completions(command: str, option: str, incomplete: str) -> list[str]:
    group = typer.main.get_command(app)
    sub = group.commands[command]  # type: ignore[attr-defined]
    ctx = sub.make_context(command, [], resilient_parsing=True)
    param = next(p for p in sub.params if option in p.opts)
    return [item.value for item in param.shell_complete(ctx, incomplete)]


def test_train_help_shows_every_choice() -> None:
    text = help_of("train")
    assert f"--method <{'|'.join(METHODS)}>" in text
    assert "--data <synthetic|voc|coco>" in text
    assert "--preset <tiny|synthetic|voc|coco>" in text
    assert f"--device {DEVICE_CHOICES}" in text


@pytest.mark.parametrize("command", [("train",), ("segment",), ("diagnose",), ("bench", "kernels")])
def test_every_device_option_has_one_vocabulary(command: tuple[str, ...]) -> None:
    assert f"--device {DEVICE_CHOICES}" in help_of(*command)


def test_segment_help_shows_the_backends() -> None:
    assert "--backend <auto|torch|onnxruntime|tensorrt|openvino>" in help_of("segment")


def test_preset_defaults_are_shown_in_help() -> None:
    text = help_of("train")
    assert "default: the preset's cls.epochs: tiny 3, synthetic 8, voc 5, coco 5" in text
    assert "`fastwsss presets NAME`" in text


@pytest.mark.parametrize(
    "args, valid",
    [
        (["train", "--method", "seam"], "cam, c2am, conta"),
        (["train", "--data", "cityscapes"], "synthetic, voc, coco"),
        (["train", "--preset", "huge"], "tiny, synthetic, voc, coco"),
        (["train", "--device", "gpu"], "auto, cpu, cuda, cuda:N"),
        (["presets", "tiny", "--method", "seam"], "cam, c2am, conta"),
        (["segment", "x.png", "--model", "m", "--out", "o", "--backend", "tflite"], "auto, torch, onnxruntime"),
        (["segment", "x.png", "--model", "m", "--out", "o", "--device", "cuda:x"], "auto, cpu, cuda, cuda:N"),
        (["diagnose", "run", "--device", "tpu"], "auto, cpu, cuda, cuda:N"),
        (["bench", "kernels", "--device", "mps"], "auto, cpu, cuda, cuda:N"),
    ],
)
def test_a_wrong_choice_is_one_line_listing_the_valid_names(args: list[str], valid: str) -> None:
    line = error_line(args)
    assert valid in line and args[-1] in line and "--help" in line


def test_choices_complete_in_the_shell() -> None:
    assert completions("train", "--method", "c") == [name for name in METHODS if name.startswith("c")]
    assert completions("train", "--data", "") == ["synthetic", "voc", "coco"]
    assert completions("train", "--preset", "t") == ["tiny"]
    assert completions("train", "--device", "c") == ["cpu", "cuda"]
    assert completions("segment", "--backend", "o") == ["onnxruntime", "openvino"]


def test_method_choices_are_read_when_the_command_runs() -> None:
    register_method(TOY)
    try:
        assert f"--method <{'|'.join(METHODS)}>" in help_of("train") and "|toy>" in help_of("train")
        assert "toy" in completions("train", "--method", "t")
    finally:
        unregister_method(TOY.name)
    assert "toy" not in help_of("train")
    assert "toy" in error_line(["train", "--method", "toy"])


def test_one_device_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == resolve_device() == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert requested_device("auto") is None and requested_device(None) is None and requested_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match=r"device: cuda:1 requested but 0 CUDA device\(s\) are visible"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="valid: " + ", ".join(DEVICE_NAMES)):
        resolve_device("gpu")


def test_stages_are_parsed_once_into_names() -> None:
    assert parse_stages("cam", "eval, cls") == ("cls", "eval")  # the method's order, whatever the order given
    assert parse_stages("cam", ("eval", "cls")) == ("cls", "eval")
    assert parse_stages("cam", None) == parse_stages("cam", "") == tuple(METHODS["cam"].stages)
    with pytest.raises(ConfigError, match="global_cam"):
        parse_stages("cam", "global_cam")


def test_data_voc_says_which_preset_it_uses(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", "voc", "--root", str(tmp_path), "--dry-run"])
    lines = result.output.splitlines()
    assert "preset voc: --data voc without --preset uses the voc preset" in lines[0], result.output
    assert any(line.startswith("dry run: method cam, preset voc, data voc") for line in lines), result.output


def test_an_explicit_preset_wins_over_data(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", "voc", "--preset", "tiny", "--root", str(tmp_path), "--dry-run"])
    assert "without --preset" not in result.output
    assert "dry run: method cam, preset tiny, data voc" in result.output, result.output
    synthetic = runner.invoke(app, ["train", "--dry-run", "--out", str(tmp_path / "run")])
    assert "without --preset" not in synthetic.output and "preset synthetic, data synthetic" in synthetic.output
