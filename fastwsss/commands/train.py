"""`fastwsss train`: the settings from a preset or a --config file, the explicit options and --set, then
the pipeline (or, with --dry-run, its plan)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from fastwsss.commands.common import absolute, print_metrics
from fastwsss.commands.launch import start_processes
from fastwsss.commands.options import (
    LiveOption,
    choice,
    dataset_names,
    device_option,
    method_help,
    method_names,
    preset_default,
    preset_names,
    rounds_help,
    rounds_settings,
    stages_help,
)
from fastwsss.config import PRESETS, RunConfig, apply_options, get_preset, parse_setting, validate
from fastwsss.engine.progress import console
from fastwsss.errors import ConfigError

DEFAULT_PRESET = "synthetic"
PATH_SETTINGS = ("data.root", "data.cls_labels", "cls.weights", "irn.weights", "seg.weights")


def check_resume_options(saved: RunConfig, options: dict[str, Any], rundir: Path) -> None:
    """With --resume the saved config wins; an explicit option that disagrees with it is an error, not ignored."""
    for dotted, value in options.items():
        if value is None:
            continue
        current: Any = saved
        for name in dotted.split("."):
            current = getattr(current, name)
        if dotted in PATH_SETTINGS and isinstance(current, str) and Path(current).absolute() == Path(value).absolute():
            continue  # a run saved with a relative path, resumed from the same folder
        if current != value:
            raise ConfigError(
                f"{dotted}: --resume uses {rundir / 'config.json'} where it is {current!r}, but you passed "
                f"{value!r}; drop the option or start a new run with another --out"
            )


def settings_of(config: RunConfig) -> dict[str, Any]:
    """Every setting of `config` by dotted name."""
    from fastwsss.engine.environment import flatten

    return flatten(config.to_dict())


def choose_preset(preset: str | None, data: str | None) -> str:
    """--preset, else the preset named like --data (voc, coco) with one line saying so, else synthetic."""
    if preset is not None:
        return preset
    if data is not None and data != DEFAULT_PRESET and data in PRESETS:
        console.print(f"preset {data}: --data {data} without --preset uses the {data} preset (the released "
                      f"settings); pass --preset to choose another", soft_wrap=True, highlight=False)
        return data
    return DEFAULT_PRESET


def build_config(options: dict[str, Any], preset: str | None, config_file: Path | None,
                 settings: list[str]) -> RunConfig:
    """The run's settings: the --config file or the preset, then the explicit `options` (dotted names; None
    left alone), then --set. Fills `options` in place with irn.weights and the --set values."""
    from fastwsss.commands.config_file import read_config_file

    if config_file is not None:
        if preset is not None:
            raise ConfigError(f"--preset {preset} and --config {config_file} both give every setting; pass one "
                              "(the file names its preset on its `preset` line)")
        base = read_config_file(config_file)
    else:
        base = get_preset(choose_preset(preset, options.get("data.name")), options.get("method") or "cam")
    if base.irn.backbone_from == "imagenet":
        options["irn.weights"] = options.get("cls.weights")
    options.update(parse_setting(base, text) for text in settings)
    try:
        return validate(apply_options(base, options))
    except ConfigError as exc:
        if config_file is None:
            raise
        raise ConfigError(f"{exc} (the settings of --config {config_file} with the options)") from None


def train(
    method: Annotated[str | None, choice(method_help, method_names)] = None,
    rounds: Annotated[int | None, LiveOption(rounds_help)] = None,
    data: Annotated[str | None, choice("synthetic: built in, no download; voc, coco: --root (default: the "
                                       "preset's data.name)", dataset_names)] = None,
    root: Annotated[Path | None, typer.Option(help="Data set folder (VOC: VOCdevkit/VOC2012)")] = None,
    preset: Annotated[str | None, choice("Settings bundle (`fastwsss presets` describes each). Default: synthetic, "
                                         "or voc / coco with --data voc / coco", preset_names)] = None,
    config_file: Annotated[Path | None, typer.Option("--config", help="Settings file: what `fastwsss presets NAME "
        "[--json]` prints (edited or not), or a run's config.json; explicit options and --set override it")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<method>-<preset>-<time>)")] = None,
    stages: Annotated[str | None, LiveOption(stages_help)] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out where it stopped")] = False,
    seed: Annotated[int | None, LiveOption(preset_default("seed", "Random seed of the run"))] = None,
    weights: Annotated[Path | None, typer.Option(help="Local torchvision ImageNet state dict for the classifier and, "
        "when irn.backbone_from is imagenet, the IRN backbone (ResNet-50 for voc/coco)")] = None,
    seg_weights: Annotated[Path | None, typer.Option(help="Local torchvision ImageNet state dict for DeepLab's "
        "backbone (ResNet-101 for voc/coco)")] = None,
    backbone: Annotated[str | None, LiveOption(preset_default("cls.backbone", "Classifier backbone: "
        "resnet18/34/50/101, resnet18_half, resnet18_quarter"))] = None,
    epochs: Annotated[int | None, LiveOption(preset_default("cls.epochs", "Classifier epochs"))] = None,
    batch_size: Annotated[int | None, LiveOption(preset_default("cls.batch_size", "Classifier batch size"))] = None,
    lr: Annotated[float | None, LiveOption(preset_default("cls.lr", "Classifier backbone learning rate "
        "(head x10)"))] = None,
    device: Annotated[str | None, device_option("auto: the first CUDA GPU when torch sees one, else the CPU "
        "(default: the preset's device, auto in every preset)")] = None,
    num_workers: Annotated[int | None, LiveOption(preset_default("data.num_workers",
        "Data loader worker processes"))] = None,
    cls_labels: Annotated[Path | None, typer.Option(help="IRNet-style cls_labels.npy (else labels from masks)")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", metavar="SECTION.NAME=VALUE",
        help="Any setting of `fastwsss presets NAME`, e.g. --set seg.epochs=4 --set cam.scales=1.0,0.5 "
        "(repeatable; wins over the options above)")] = None,
    nproc: Annotated[int, typer.Option(help="Processes to start with torchrun (one per GPU; gloo on the CPU); "
        "same as `torchrun --nproc-per-node N -m fastwsss train ...`")] = 1,
    dry_run: Annotated[bool, typer.Option(help="Print each stage's split, images, steps, batch, lr schedule and "
        "weights, then stop without doing any work")] = False,
) -> None:
    """Train a method end to end (or the --stages you name). With no options: the default synthetic job.

    Settings come from the preset (or the --config file), then the options, then --set.

    Examples:

      fastwsss train                                   # built-in synthetic set, minutes on a CPU

      fastwsss train --preset tiny --out runs/tiny     # a smoke run of every stage in under a minute

      fastwsss train --method conta --rounds 3         # CONTA: baseline round 0, then 3 rounds

      fastwsss train --method c2am                     # C2AM: baseline, global CAM, fine-tune, rest

      fastwsss presets synthetic > my.txt; fastwsss train --config my.txt   # edit the settings in a file

      fastwsss train --data voc --root ~/VOCdevkit/VOC2012 --weights resnet50.pth --seg-weights resnet101.pth

      fastwsss train --data voc --root ... --weights ... --seg-weights ... --dry-run   # the plan, no work

      fastwsss train --data voc --preset voc --root ... --weights ... --nproc 4   # 4 GPUs, DistributedDataParallel
    """
    from fastwsss.engine.distributed import launched_world, shutdown
    from fastwsss.engine.pipeline import preflight, run_pipeline
    from fastwsss.engine.rundir import RunDir
    from fastwsss.stages import parse_stages

    options = {
        "method": method, "seed": seed, "device": device, **rounds_settings(rounds),
        "data.name": data, "data.root": absolute(root), "data.num_workers": num_workers,
        "data.cls_labels": absolute(cls_labels),
        "cls.weights": absolute(weights), "cls.backbone": backbone, "cls.epochs": epochs,
        "cls.batch_size": batch_size, "cls.lr": lr, "seg.weights": absolute(seg_weights),
    }
    config = build_config(options, preset, config_file, settings or [])
    names = parse_stages(config.method, stages)
    if dry_run:
        print_dry_run(config, names)
        return
    if resume and out is not None and RunDir(out).config_path.is_file():
        saved = RunDir(out).load_config()
        check_resume_options(saved, settings_of(config) if config_file is not None else options, out)
    if nproc != 1 and not launched_world().distributed:  # settings are checked before any process starts
        preflight(config, list(names), max(nproc, 1))
        start_processes(nproc, config.device)
    try:
        run = run_pipeline(config, out=out, stages=names, resume=resume)
        if launched_world().is_main:
            print_metrics(run.path, verbose=False)
    finally:
        shutdown()


def print_dry_run(config: RunConfig, names: tuple[str, ...]) -> None:
    """The plan of `train --dry-run`, then the weights check a real run would make before its first stage."""
    from fastwsss.engine.dry_run import dry_run_rows, format_rows
    from fastwsss.engine.weights import check_pretrained

    console.print(f"dry run: method {config.method}, preset {config.preset}, data {config.data.name}; nothing is "
                  "trained or written", soft_wrap=True, highlight=False)
    rows, problems = dry_run_rows(config, names)
    for line in format_rows(rows) + problems:
        console.print(escape(line), soft_wrap=True, highlight=False)
    check_pretrained(config, list(names))
