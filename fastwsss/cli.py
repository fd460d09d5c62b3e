"""The `fastwsss` command line. Each command is thin: it parses options and calls a typed function."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from fastwsss.commands.method_options import (
    LiveHelpOption,
    method_choice_help,
    method_help,
    rounds_help,
    rounds_settings,
    stages_help,
)
from fastwsss.config import PRESETS, RunConfig, apply_options, get_preset, parse_setting, validate
from fastwsss.engine.distributed import PeerStopped
from fastwsss.engine.progress import console, rank_prefix
from fastwsss.errors import ConfigError, FastwsssError, one_line

app = typer.Typer(
    help="Weakly-supervised semantic segmentation: image tags in, pixel masks out.\n\n"
    "Start with [bold]fastwsss train[/bold]: it generates the built-in synthetic data set and runs the "
    "default job on the CPU in minutes.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Make and convert data sets.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(help="Micro-benchmarks (JSON plus a table).", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(bench_app, name="bench")



def _print_version(value: bool) -> None:
    if value:
        from fastwsss import __version__

        console.print(f"fastwsss {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


F = TypeVar("F", bound=Callable[..., Any])

RESUME_HINTS = {
    "train": "rerun the same command with --resume to continue",
    "segment": "the masks written so far are kept; rerun the same command to do the rest (existing masks are skipped)",
}
"""What Ctrl-C tells the user, per command: only `train` has --resume."""


def friendly_errors(func: F) -> F:
    """Turn fastwsss errors into one red line and exit code 2, and Ctrl-C into a resume hint."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PeerStopped:
            # Rank 0 prints the error and exits 2; exiting 0 here lets torchrun name rank 0 as the root cause
            # instead of killing it while it reports.
            raise typer.Exit(0) from None
        except FastwsssError as exc:
            console.print(f"[red]error:[/red] {escape(rank_prefix() + one_line(str(exc)))}", markup=True, highlight=False,
                          soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            hint = RESUME_HINTS.get(func.__name__, "what was finished is kept")
            console.print(f"[yellow]interrupted:[/yellow] {hint}")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def absolute(path: Path | None) -> str | None:
    """A path option as stored in config.json: absolute, so that eval, report and export of the run work
    from any folder."""
    return str(path.absolute()) if path is not None else None


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


@app.command()
@friendly_errors
def train(
    method: Annotated[str | None, LiveHelpOption(method_help)] = None,
    rounds: Annotated[int | None, LiveHelpOption(rounds_help)] = None,
    data: Annotated[str | None, typer.Option(help="synthetic (built in, no download), voc or coco")] = None,
    root: Annotated[Path | None, typer.Option(help="Data set folder (VOC: VOCdevkit/VOC2012)")] = None,
    preset: Annotated[str, typer.Option(help=f"Settings bundle: {', '.join(PRESETS)}")] = "synthetic",
    out: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<method>-<preset>-<time>)")] = None,
    stages: Annotated[str | None, LiveHelpOption(stages_help)] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out where it stopped")] = False,
    seed: Annotated[int | None, typer.Option(help="Random seed of the run")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local torchvision ImageNet state dict for the classifier and, "
        "when irn.backbone_from is imagenet, the IRN backbone (ResNet-50 for voc/coco)")] = None,
    seg_weights: Annotated[Path | None, typer.Option(help="Local torchvision ImageNet state dict for DeepLab's "
        "backbone (ResNet-101 for voc/coco)")] = None,
    backbone: Annotated[str | None, typer.Option(help="resnet18/34/50/101, resnet18_half, resnet18_quarter")] = None,
    epochs: Annotated[int | None, typer.Option(help="Classifier epochs")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Classifier batch size")] = None,
    lr: Annotated[float | None, typer.Option(help="Classifier backbone learning rate (head x10)")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda[:N]")] = None,
    num_workers: Annotated[int | None, typer.Option(help="Data loader worker processes")] = None,
    cls_labels: Annotated[Path | None, typer.Option(help="IRNet-style cls_labels.npy (else labels from masks)")] = None,
    settings: Annotated[list[str] | None, typer.Option("--set", metavar="SECTION.NAME=VALUE",
        help="Any setting of `fastwsss presets NAME`, e.g. --set seg.epochs=4 --set cam.scales=1.0,0.5 "
        "(repeatable)")] = None,
    nproc: Annotated[int, typer.Option(help="Processes to start with torchrun (one per GPU; gloo on the CPU); "
        "same as `torchrun --nproc-per-node N -m fastwsss train ...`")] = 1,
    dry_run: Annotated[bool, typer.Option(help="Print each stage's split, images, steps, batch, lr schedule and "
        "weights, then stop without doing any work")] = False,
) -> None:
    """Train a method end to end (or the --stages you name). With no options: the default synthetic job.

    Examples:

      fastwsss train                                   # built-in synthetic set, minutes on a CPU

      fastwsss train --preset tiny --out runs/tiny     # a smoke run of every stage in under a minute

      fastwsss train --method conta --rounds 3         # CONTA: baseline round 0, then 3 rounds

      fastwsss train --method c2am                     # C2AM: baseline, global CAM, fine-tune, rest

      fastwsss train --data voc --root ~/VOCdevkit/VOC2012 --weights resnet50.pth --seg-weights resnet101.pth

      fastwsss train --data voc --root ... --weights ... --seg-weights ... --dry-run   # the plan, no work

      fastwsss train --data voc --preset voc --root ... --weights ... --nproc 4   # 4 GPUs, DistributedDataParallel
    """
    from fastwsss.engine.distributed import launched_world, shutdown
    from fastwsss.engine.pipeline import preflight, run_pipeline
    from fastwsss.engine.rundir import RunDir
    from fastwsss.stages import stages_for

    options = {
        "method": method, "seed": seed, "device": device, **rounds_settings(rounds),
        "data.name": data, "data.root": absolute(root), "data.num_workers": num_workers,
        "data.cls_labels": absolute(cls_labels),
        "cls.weights": absolute(weights), "cls.backbone": backbone, "cls.epochs": epochs,
        "cls.batch_size": batch_size, "cls.lr": lr, "seg.weights": absolute(seg_weights),
    }
    if data in ("voc", "coco") and preset == "synthetic":
        preset = data
    base = get_preset(preset, method or "cam")
    if base.irn.backbone_from == "imagenet":
        options["irn.weights"] = options["cls.weights"]
    options.update(parse_setting(base, text) for text in settings or [])
    config = validate(apply_options(base, options))
    if dry_run:
        print_dry_run(config, stages)
        return
    if resume and out is not None and RunDir(out).config_path.is_file():
        saved = RunDir(out).load_config()
        check_resume_options(saved, options, out)
    if nproc != 1 and not launched_world().distributed:  # settings are checked before any process starts
        preflight(config, [stage.name for stage in stages_for(config.method, stages)], max(nproc, 1))
        start_processes(nproc, config.device)
    try:
        run = run_pipeline(config, out=out, stages=stages, resume=resume)
        if launched_world().is_main:
            _print_metrics(run.path, verbose=False)
    finally:
        shutdown()


def print_dry_run(config: RunConfig, stages: str | None) -> None:
    """The plan of `train --dry-run`, then the weights check a real run would make before its first stage."""
    from fastwsss.engine.dry_run import dry_run_rows, format_rows
    from fastwsss.engine.weights import check_pretrained
    from fastwsss.stages import stages_for

    console.print(f"dry run: method {config.method}, preset {config.preset}, data {config.data.name}; nothing is "
                  "trained or written", soft_wrap=True, highlight=False)
    rows, problems = dry_run_rows(config, stages)
    for line in format_rows(rows) + problems:
        console.print(escape(line), soft_wrap=True, highlight=False)
    check_pretrained(config, [stage.name for stage in stages_for(config.method, stages)])


def start_processes(nproc: int, device: str | None) -> None:
    """--nproc N: nothing for 1 or inside torchrun; else check the GPUs, run N processes and exit with their code."""
    import torch

    from fastwsss.engine.distributed import launched_world

    if nproc < 1:
        raise ConfigError(f"--nproc: must be >= 1, got {nproc}")
    if nproc == 1 or launched_world().distributed:
        return
    from fastwsss.engine.device import resolve_device

    if resolve_device(device).type == "cuda":
        visible = torch.cuda.device_count()
        if nproc > visible:
            raise ConfigError(f"--nproc {nproc}: {visible} GPU(s) visible; start at most one process per GPU "
                              "(or pass --device cpu for gloo processes on the CPU)")  # fmt: skip
    raise typer.Exit(launch_torchrun(nproc, without_option(sys.argv[1:], "--nproc")))


def without_option(argv: list[str], name: str) -> list[str]:
    """`argv` with `name VALUE` and `name=VALUE` removed."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == name:
            skip = True
        elif not item.startswith(f"{name}="):
            out.append(item)
    return out


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Start `python -m fastwsss ARGV` in `nproc` processes with torchrun on this machine; their exit code.

    Every process prints its own one-line errors; this adds one line saying which ranks failed.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    console.print(f"starting {nproc} processes: torchrun --standalone --nproc-per-node {nproc} -m fastwsss", soft_wrap=True)
    args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "fastwsss", *argv])
    try:
        run(args)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        listed = ", ".join(f"rank {rank}: exit code {code}" for rank, code in sorted(codes.items()))
        console.print(f"[red]error:[/red] {len(codes)} of {nproc} processes failed ({listed}); their messages are above",
                      soft_wrap=True)
        return max((c for c in codes.values() if c and c > 0), default=1)
    return 0


def _print_metrics(rundir: Path, verbose: bool) -> None:
    from fastwsss.engine.rundir import open_run_dir
    from fastwsss.reporting.summary import latest_rows, metrics_table, per_class_table

    rows = open_run_dir(rundir).metrics()
    if not latest_rows(rows):
        console.print(escape(f"{rundir}: no scored outputs yet"), soft_wrap=True)
        return
    console.print(metrics_table(rows, title=f"{rundir}: mIoU (%)"))
    if verbose:
        for row in latest_rows(rows):
            console.print(per_class_table(row))


@app.command("eval")
@friendly_errors
def eval_command(
    rundir: Annotated[Path, typer.Argument(help="A run directory made by fastwsss train")],
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Also print IoU per class")] = False,
    rescore: Annotated[bool, typer.Option(help="Recompute the scores from the stored outputs first")] = True,
) -> None:
    """Score a run's outputs (CAM seeds, ...) against the ground truth and print a table."""
    from fastwsss.engine.device import resolve_device
    from fastwsss.engine.rundir import open_run_dir
    from fastwsss.stages.context import StageContext
    from fastwsss.stages.evaluate import run_eval

    run = open_run_dir(rundir)
    if rescore:
        config = run.load_config()
        run.lock()
        try:
            device = resolve_device(config.device)
            for view, round_ in run.views(config):
                run_eval(StageContext(config=config, run=view, device=device, round=round_))
        finally:
            run.unlock()
    _print_metrics(run.path, verbose)


@app.command()
@friendly_errors
def presets(
    name: Annotated[str | None, typer.Argument(help="Show this preset's full settings")] = None,
    method: Annotated[str, LiveHelpOption(method_choice_help)] = "cam",
    as_json: Annotated[bool, typer.Option("--json", help="Print the resolved settings as JSON instead")] = False,
) -> None:
    """List the presets, or print one preset's settings, each with the released file and line (or paper
    section) its value comes from."""
    import json

    from fastwsss.engine.environment import flatten
    from fastwsss.engine.provenance import sources

    if name is None:
        for key, factory in PRESETS.items():
            console.print(f"[bold]{key}[/bold]: {(factory.__doc__ or '').strip().splitlines()[0]}")
        return
    config = get_preset(name, method)
    if as_json:
        sys.stdout.write(json.dumps(config.to_dict(), indent=2) + "\n")
        return
    origin = sources(name, method)
    values = flatten(config.to_dict())
    width = max(len(key) for key in values)
    for key, value in values.items():
        text = json.dumps(value) if not isinstance(value, str) else value
        note = f"  # {origin[key]}" if key in origin else ""
        sys.stdout.write(f"{key.ljust(width)} = {text}{note}\n")


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write (VOC layout); must not exist or be empty")],
    seed: Annotated[int, typer.Option(help="Generator seed: same seed, same bytes")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels")] = 96,
    num_train: Annotated[int, typer.Option(help="Training images")] = 1500,
    num_val: Annotated[int, typer.Option(help="Validation images")] = 300,
    num_debiased: Annotated[int, typer.Option(help="Validation images with contexts shuffled")] = 300,
    context_prob: Annotated[float, typer.Option(help="P(object sits on its class's preferred scene)")] = 0.8,
    cooccur_prob: Annotated[float, typer.Option(help="P(a class brings its partner class along)")] = 0.5,
    part_context_prob: Annotated[float, typer.Option(help="P(an object part takes its colour from the scene)")] = 0.8,
    max_objects: Annotated[int, typer.Option(help="Most objects per image")] = 3,
    preview: Annotated[bool, typer.Option(help="Also write OUT/preview.png, a contact sheet of images and masks")] = True,
) -> None:
    """Generate the synthetic confounded-scenes data set (train, val and a debiased split)."""
    from fastwsss.config import DataConfig, SynthConfig
    from fastwsss.data.synthetic import generate_synthetic, write_preview

    synth = SynthConfig(size=size, num_train=num_train, num_val=num_val, num_debiased=num_debiased,
                        context_prob=context_prob, cooccur_prob=cooccur_prob, part_context_prob=part_context_prob,
                        max_objects=max_objects, seed=seed)
    validate(RunConfig(data=DataConfig(synth=synth)))
    root = generate_synthetic(out, synth)
    console.print(escape(f"wrote {root}"), soft_wrap=True)
    if preview:
        console.print(escape(f"preview: {write_preview(root, root / 'preview.png')}"), soft_wrap=True)


@data_app.command("coco-masks")
@friendly_errors
def data_coco_masks(
    instances: Annotated[Path, typer.Argument(help="COCO instances JSON, e.g. annotations/instances_train2014.json")],
    out: Annotated[Path, typer.Option(help="Mask folder, e.g. ROOT/SegmentationClass/train2014")],
) -> None:
    """Convert COCO instance annotations to class-index PNG masks (needs pycocotools)."""
    from fastwsss.data.coco import convert_instances_to_masks

    written = convert_instances_to_masks(instances, out)
    console.print(escape(f"wrote {written} masks to {out}"), soft_wrap=True)


@app.command("export")
@friendly_errors
def export(
    rundir: Annotated[Path, typer.Argument(help="A finished run directory (its final DeepLab and classifier)")],
    trt: Annotated[bool, typer.Option(help="Also build a TensorRT engine (needs TensorRT and a GPU)")] = False,
    fp16: Annotated[bool, typer.Option(help="TensorRT in half precision")] = False,
    int8: Annotated[bool, typer.Option(help="Also write model_int8.onnx (static int8, Q/DQ) for CPU serving, "
        "calibrated on --calib training images; with --trt, an INT8 engine")] = False,
    calib: Annotated[int, typer.Option(help="Calibration images for --int8 (the first N readable training images)")] = 64,
    eval_images: Annotated[int, typer.Option(help="--int8: val images the calibration methods are scored on "
        "(0: the whole val split)")] = 0,
    min_shape: Annotated[str, typer.Option("--min", help="Smallest input of the TensorRT profile, NxCxHxW")] = "1x3x256x256",
    opt_shape: Annotated[str, typer.Option("--opt", help="Input TensorRT optimises for")] = "1x3x512x512",
    max_shape: Annotated[str, typer.Option("--max", help="Largest input of the TensorRT profile")] = "8x3x1024x1024",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUNDIR/export)")] = None,
) -> None:
    """Export the run's models to ONNX (always, with an onnxruntime parity report) and, with --trt, TensorRT.

    Example:

      fastwsss export runs/conta-voc --trt --fp16 --opt 1x3x512x512

      fastwsss export runs/synthetic --int8 --calib 64     # + model_int8.onnx for the CPU
    """
    from fastwsss.commands.export import export_command

    result = export_command(rundir, trt, fp16, int8, calib, min_shape, opt_shape, max_shape, out, eval_images=eval_images)
    if not result["ok"]:  # e.g. --trt without TensorRT: the ONNX files are kept, the exit code says it failed
        raise typer.Exit(1)


@app.command("segment")
@friendly_errors
def segment(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs")],
    model: Annotated[Path, typer.Option(help="A run directory, a model.onnx or a .engine file")],
    out: Annotated[Path, typer.Option(help="Folder for the masks (never inside an input folder)")],
    backend: Annotated[str, typer.Option(help="auto, torch, onnxruntime or tensorrt")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch")] = 8,
    recursive: Annotated[bool, typer.Option(help="Descend into sub-folders of folder inputs")] = False,
    overlay: Annotated[bool, typer.Option(help="Also write mask-over-image pictures")] = False,
    cam: Annotated[bool, typer.Option(help="Also write CAM heat maps (needs a run directory)")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N] (default: cuda when present)")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Also say which files were converted (CMYK, 16-bit, ...)")] = False,
    nproc: Annotated[int, typer.Option(help="Processes to start with torchrun, each segmenting a share of the images "
        "on its own GPU")] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace masks already in --out (else such images are skipped)")] = False,
    memory_budget: Annotated[str | None, typer.Option(help="Memory the images of one batch may use, e.g. 4G "
        "(default: half of the memory available at start); batches are sized from the images' pixel counts")] = None,
) -> None:
    """Segment images with a trained model: palette PNG masks named after the inputs, then images/s.

    Example:

      fastwsss segment photos/ --model runs/c2am-voc --out masks/ --overlay
    """
    from fastwsss.commands.segment import segment_command
    from fastwsss.commands.segment_memory import parse_bytes

    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    start_processes(nproc, device)
    code = segment_command(images, model, out, backend, batch_size, recursive, overlay, cam, device=device, verbose=verbose,
                           overwrite=overwrite, memory_budget=budget)
    if code:
        raise typer.Exit(code)


@app.command("report")
@friendly_errors
def report(
    rundir: Annotated[Path, typer.Argument(help="A run directory")],
    sample: Annotated[int, typer.Option(help="Images shown with their CAM / pseudo-mask / prediction overlays")] = 8,
    out: Annotated[Path | None, typer.Option(help="HTML file (default RUNDIR/report.html)")] = None,
) -> None:
    """Write one self-contained HTML page: mIoU per stage and round, per-class IoU, loss curves, overlays."""
    from fastwsss.commands.report import report_command

    report_command(rundir, sample, out)


@app.command("diagnose")
@friendly_errors
def diagnose(
    rundir: Annotated[Path, typer.Argument(help="A run directory with cams, ir_labels and irn (ground-truth masks needed)")],
    images: Annotated[int, typer.Option(help="First N images of the CAM split")] = 150,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N]")] = "cpu",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the numbers here")] = None,
) -> None:
    """Find where the IRNet half loses mIoU: the boundary net's map against the ground truth's, and the walk.

    Prints the boundary probability on the IR labels' borders, on the true object borders and elsewhere,
    and the pseudo-mask mIoU of the walk with the IRN map, with a ground-truth map and with no walk.
    """
    from fastwsss.commands.diagnose import diagnose_command

    diagnose_command(rundir, images, device, json_path)


@app.command("compare")
@friendly_errors
def compare(
    rundirs: Annotated[list[Path], typer.Argument(help="Two or more run directories; the first is the baseline")],
) -> None:
    """Print several runs' mIoUs side by side with the difference to the first, and how settings and environments differ.

    Example (an ablation against its baseline):

      fastwsss compare runs/cam runs/c2am runs/conta
    """
    from fastwsss.commands.compare import compare_command

    compare_command(rundirs)


@app.command("env")
@friendly_errors
def env(
    rundir: Annotated[Path, typer.Argument(help="A run directory")],
    other: Annotated[Path | None, typer.Argument(help="A second run directory to compare with")] = None,
) -> None:
    """Show what a run ran on (versions, CPU, GPU, threads, git commit, data fingerprint), or how two runs differ.

    Two runs of the same code and seed can give different mIoUs on different machines (float rounding
    grows through training); compare them first:

      fastwsss env runs/a runs/b
    """
    from fastwsss.commands.env import env_command

    env_command(rundir, other)


@bench_app.command("kernels")
@friendly_errors
def bench_kernels(
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the results here as JSON")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda[:N] (default: cuda when present)")] = None,
    repeats: Annotated[int, typer.Option(help="Timed calls per case and backend (median, p10, p90)")] = 30,
    only: Annotated[str | None, typer.Option(help="Comma-separated ops: cam_norm,confounder_attention,random_walk")] = None,
    compile: Annotated[bool, typer.Option(help="Also time torch.compile of the reference")] = True,
    dense: Annotated[bool, typer.Option(help="Also time IRNet's dense random walk (slow: minutes on a CPU)")] = False,
    tiny: Annotated[bool, typer.Option(help="Toy sizes: checks that every path runs, times nothing useful")] = False,
) -> None:
    """Time every kernel backend that can run here next to eager PyTorch and torch.compile.

    On a CPU only eager and compile run (Triton and CUDA rows need a GPU). Example:

      fastwsss bench kernels --device cuda --json bench/results/kernels-h100.json
    """
    from fastwsss.benchmarking.kernel_bench import CASES, TINY_CASES, run_kernel_bench
    from fastwsss.engine.device import resolve_device

    ops = [o.strip() for o in only.split(",")] if only else None
    known = sorted({c.op for c in CASES + TINY_CASES})
    for op in ops or []:
        if op not in known:
            raise ConfigError(f"--only: unknown op {op!r}; valid: {', '.join(known)}")
    run_kernel_bench(resolve_device(device), repeats, ops, compile, dense, json_path, tiny)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
