"""`fastwsss export` and `fastwsss segment`: the options of the serving commands (their work is in
commands/export.py and commands/segment.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fastwsss.commands.launch import start_processes
from fastwsss.commands.options import choice, device_option
from fastwsss.engine.device import DEFAULT_DEVICE


def backend_names() -> tuple[str, ...]:
    from fastwsss.export.runtime import BACKENDS

    return BACKENDS


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


def segment(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs")],
    model: Annotated[Path, typer.Option(help="A run directory, a model.onnx or a .engine file")],
    out: Annotated[Path, typer.Option(help="Folder for the masks (never inside an input folder)")],
    backend: Annotated[str, choice("auto: the fastest this machine and the model's exports allow (docs/deploy.md)",
                                   backend_names)] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per batch")] = 8,
    recursive: Annotated[bool, typer.Option(help="Descend into sub-folders of folder inputs")] = False,
    overlay: Annotated[bool, typer.Option(help="Also write mask-over-image pictures")] = False,
    cam: Annotated[bool, typer.Option(help="Also write CAM heat maps (needs a run directory)")] = False,
    device: Annotated[str, device_option()] = DEFAULT_DEVICE,
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
