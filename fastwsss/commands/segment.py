"""`fastwsss segment IMAGES... --model RUNDIR|file.onnx|file.engine --out DIR`: masks for arbitrary images.

Inputs: files, folders (their images; sub-folders with --recursive) and quoted globs ("photos/**/*.jpg").
Outputs, all under --out and named after the input (a folder's or a glob's sub-folders are kept):
    <name>.png          palette PNG of class ids (the model's palette, background = 0)
    <name>_overlay.jpg  image and mask blended (--overlay)
    <name>_cam.png      CAM heat maps of the predicted classes, one panel each (--cam, run directories only)
Two inputs that would get the same name (a.jpg and a.png, or the same name in two input folders) get
`<stem>_<ext>` names, then `-2`, `-3` suffixes. Nothing is ever written into an input folder: --out equal
to or inside a folder input, or equal to the folder of an input file, is refused before any work; nor
outside --out; nor over a file that exists already, unless --overwrite is given (fastwsss.commands.segment_inputs).
Batches are sized to a memory budget from the images' pixel counts (fastwsss.commands.segment_memory), after
the images are ordered by size (read from the file headers), so that same-size images share a batch and a
batch runs as one model call per size instead of one call per image.

Images are read like the data sets read them (EXIF orientation applied, CMYK / RGBA / grayscale / 16-bit
converted to 8-bit RGB; --verbose says so per file). A file that cannot be read (corrupt, truncated, not an
image, above `max_pixels`) gets one line naming it; the others are still processed; the exit code is 1
when any failed. Setup problems (no model, no images, --out inside an input) raise a FastwsssError.
Under torchrun (or --nproc N) each process segments its shard of the images on its own GPU (LOCAL_RANK) and
rank 0 prints the summary for all of them.
"""

from __future__ import annotations

import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps, UnidentifiedImageError
from rich.markup import escape

from fastwsss.benchmarking.benchtools import percentile
from fastwsss.commands.segment_inputs import (
    IMAGE_SUFFIXES,
    Item,
    check_out,
    collect_inputs,
    keep_existing,
    plan_outputs,
)
from fastwsss.commands.segment_memory import bytes_per_pixel, default_budget, image_size, plan_batches
from fastwsss.data.palette import save_mask_png, voc_palette
from fastwsss.engine.device import DEFAULT_DEVICE, resolve_device
from fastwsss.engine.distributed import all_gather, init_from_env, is_main, launched_world, shard, shutdown, world
from fastwsss.engine.files import atomic_path
from fastwsss.engine.progress import console, make_progress
from fastwsss.errors import ConfigError, DataError, FastwsssError, one_line
from fastwsss.export.runtime import Segmenter, load_segmenter
from fastwsss.models.cam_net import CAMNet, load_cam_net
from fastwsss.reporting.visual import heat_colors

MAX_PIXELS = 50_000_000
"""Larger images are refused before decoding: 50 MP of float32 activations would exhaust most machines."""
OVERLAY_ALPHA = 0.5
CAM_PANEL_SIDE = 384
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _say(message: str) -> None:
    console.print(escape(message), soft_wrap=True, highlight=False)


# ------------------------------------------------------------------------------------------- reading


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, list[str]]:
    """(H, W, 3) uint8 RGB and what was converted; a one-line DataError naming the file otherwise."""
    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DataError(
                        f"{path}: {width}x{height} is {width * height / 1e6:.0f} MP, above the "
                        f"{max_pixels / 1e6:.0f} MP limit"
                    )
                image.load()
                orientation = image.getexif().get(0x0112, 1)
                if orientation not in (1, None):
                    image = ImageOps.exif_transpose(image)
                    notes.append(f"EXIF orientation {orientation} applied")
                if image.mode in SIXTEEN_BIT:  # scaled by the image's peak, as fastwsss.data.base.read_rgb does
                    notes.append(f"{image.mode} grayscale scaled to 8 bits")
                    array = np.asarray(image, dtype=np.float64)
                    image = Image.fromarray((array / max(float(array.max()), 1.0) * 255.0).astype(np.uint8))
                elif image.mode == "CMYK":
                    notes.append("CMYK converted to RGB")
                elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    notes.append("alpha channel dropped")
                elif image.mode in ("L", "1"):
                    notes.append("grayscale replicated to RGB")
                elif image.mode not in ("RGB", "P"):
                    notes.append(f"mode {image.mode} converted to RGB")
                rgb = np.array(image.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode ({one_line(str(exc))[:120]})") from exc
    except UnidentifiedImageError as exc:
        raise DataError(f"{path}: not an image file PIL can read") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated image ({one_line(str(exc))[:120]})") from exc
    return rgb, notes


def _read(item: Item, max_pixels: int) -> tuple[np.ndarray | None, list[str], str | None]:
    try:
        image, notes = read_image(item.path, max_pixels)
    except DataError as exc:
        return None, [], one_line(str(exc))
    return image, notes, None


# ------------------------------------------------------------------------------------------- writing


def full_palette(palette: np.ndarray) -> np.ndarray:
    """The model's colours for its labels, VOC colours for the remaining indices (255 = ignore)."""
    full = voc_palette(256)
    full[: len(palette)] = palette[:256]
    return full


def save_overlay(image: np.ndarray, mask: np.ndarray, palette: np.ndarray, path: Path) -> None:
    """Mask colours blended over the image; background pixels keep the image as it is."""
    blend = image.astype(np.float32)
    fore = mask > 0
    blend[fore] = (1 - OVERLAY_ALPHA) * blend[fore] + OVERLAY_ALPHA * palette[mask[fore]]
    with atomic_path(path) as tmp:
        Image.fromarray(blend.round().astype(np.uint8)).save(tmp, format="JPEG", quality=90)


def save_cam_strip(image: np.ndarray, maps: np.ndarray, titles: list[str], path: Path) -> None:
    """One panel per class: the max-normalised CAM as a heat map over the image, the class name on top."""
    scale = min(1.0, CAM_PANEL_SIDE / max(image.shape[:2]))
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    panels = []
    for plane, title in zip(maps, titles, strict=True):
        blend = 0.5 * image.astype(np.float32) + 0.5 * heat_colors(plane).astype(np.float32)
        panel = Image.fromarray(blend.astype(np.uint8)).resize(size, Image.Resampling.BILINEAR)
        ImageDraw.Draw(panel).text((4, 4), title[:24], fill=(255, 255, 255))
        panels.append(panel)
    strip = Image.new("RGB", (size[0] * len(panels), size[1]))
    for index, panel in enumerate(panels):
        strip.paste(panel, (index * size[0], 0))
    with atomic_path(path) as tmp:
        strip.save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------------- CAMs


@dataclass
class CamModel:
    """The run's final classifier, for heat maps of the classes a mask predicts."""

    net: CAMNet
    scales: tuple[float, ...]
    names: list[str]
    device: torch.device


def load_cam_model(model: Path, device: torch.device, num_foreground: int) -> CamModel:
    """The classifier of run directory `model`; a FastwsssError saying why there is none otherwise."""
    from fastwsss.engine.artifacts import final_classifier_checkpoint
    from fastwsss.engine.rundir import open_run_dir

    if not model.is_dir():
        raise FastwsssError(f"{model} is a model file; CAMs need a run directory with a trained classifier")
    checkpoint = final_classifier_checkpoint(model)
    net, meta = load_cam_net(checkpoint, map_location=device)
    if net.extra_channels:
        raise FastwsssError(f"{checkpoint}: the classifier needs CONTA's extra input maps, not an image alone")
    if net.num_classes != num_foreground:
        raise FastwsssError(f"{checkpoint}: {net.num_classes} classes, the segmentation model has {num_foreground}")
    given = meta.get("class_names")
    names = [str(n) for n in given] if isinstance(given, list) and len(given) == net.num_classes else []
    names = names or [f"class{i}" for i in range(1, net.num_classes + 1)]
    return CamModel(net.eval(), tuple(open_run_dir(model).load_config().cam.scales), names, device)


def cam_maps(cam: CamModel, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """CAMs (k, H, W) of the classes in `mask`, or of the classifier's top class when it has none."""
    from fastwsss.algorithms.cam_inference import multiscale_cam, normalize_image

    labels = np.zeros(cam.net.num_classes, dtype=np.float32)
    present = [int(c) - 1 for c in np.unique(mask) if 1 <= c <= cam.net.num_classes]
    if present:
        labels[present] = 1.0
    else:
        with torch.inference_mode():
            labels[int(cam.net(normalize_image(image, cam.device)).argmax())] = 1.0
    result = multiscale_cam(cam.net, image, labels, cam.scales, cam.device)
    return result.high_res, [cam.names[int(k)] for k in result.keys]


# -------------------------------------------------------------------------------------------- command


@dataclass
class _Timings:
    """Seconds of each `Segmenter.segment` call and its number of images (reading and writing excluded)."""

    batches: list[tuple[float, int]] = field(default_factory=list)

    def add(self, seconds: float, images: int) -> None:
        self.batches.append((seconds * 1e3, images))

    def line(self, images: int, wall_s: float) -> str:
        # The first batch holds the warm-up (CUDA graph capture, allocator growth): left out when others exist.
        timed = self.batches[1:] if len(self.batches) > 1 else self.batches
        batch = [ms for ms, _ in timed]
        per_image = [ms / n for ms, n in timed for _ in range(n)]
        model_s = sum(ms for ms, _ in self.batches) / 1e3
        return (
            f"{images / max(wall_s, 1e-9):.1f} images/s end to end, {images / max(model_s, 1e-9):.1f} images/s in "
            f"the model; latency per batch p50 {percentile(batch, 50):.1f} ms p90 {percentile(batch, 90):.1f} ms, "
            f"per image p50 {percentile(per_image, 50):.1f} ms p90 {percentile(per_image, 90):.1f} ms"
            + (" (first batch, the warm-up, left out)" if len(self.batches) > 1 else "")
        )


def _run_batch(
    segmenter: Segmenter, good: list[tuple[Item, np.ndarray]], timings: _Timings, failed: list[str]
) -> list[tuple[Item, np.ndarray, np.ndarray]]:
    """Masks of a batch; when the batch fails, each image alone, so that one bad image fails alone.

    Any exception counts (onnxruntime and TensorRT raise their own types): it becomes one line naming the
    file, and the other images go on.
    """
    done: list[tuple[Item, np.ndarray, np.ndarray]] = []
    groups = [good] if len(good) == 1 else [good, *([pair] for pair in good)]
    for group in groups:
        start = time.perf_counter()
        try:
            masks = segmenter.segment([image for _, image in group])
        except Exception as exc:  # noqa: BLE001
            if len(group) == 1:
                item = group[0][0]
                failed.append(f"{item.path}: segmentation failed ({type(exc).__name__}: {one_line(str(exc))[:200]})")
            continue
        timings.add(time.perf_counter() - start, len(group))
        if group is good:
            return [(item, image, mask) for (item, image), mask in zip(good, masks, strict=True)]
        done.append((group[0][0], group[0][1], masks[0]))
    return done


def _write(item: Item, image: np.ndarray, mask: np.ndarray, palette: np.ndarray, cam: CamModel | None) -> None:
    save_mask_png(mask, item.outputs["mask"], palette)
    if "overlay" in item.outputs:
        save_overlay(image, mask, palette, item.outputs["overlay"])
    if cam is not None:
        try:
            maps, titles = cam_maps(cam, image, mask)
        except Exception as exc:  # noqa: BLE001  (the mask is written; the heat map of this image alone fails)
            raise DataError(f"{item.path}: no CAM heat map ({type(exc).__name__}: {one_line(str(exc))[:200]})") from None
        save_cam_strip(image, maps, titles, item.outputs["cam"])


def _budget_batches(
    items: list[Item], segmenter: Segmenter, batch_size: int, budget: int | None, failed: list[str]
) -> list[list[Item]]:
    """Batches of at most `batch_size` whose estimated memory stays under `budget` (fastwsss.commands.segment_memory);
    an image that alone exceeds it is added to `failed` with one line."""
    budget = budget if budget is not None else default_budget()
    model = getattr(segmenter, "model", None)
    try:
        per_pixel = bytes_per_pixel(model if isinstance(model, torch.nn.Module) else None, len(segmenter.class_names),
                                    getattr(segmenter, "device", None))
    except Exception:  # noqa: BLE001  (a model that cannot be probed is costed like an opaque backend)
        per_pixel = bytes_per_pixel(None, len(segmenter.class_names))
    sizes = [image_size(item.path) for item in items]
    items = [items[i] for i in sorted(range(len(items)), key=lambda i: sizes[i])]  # stable: same size, input order
    pixels = [width * height for width, height in sorted(sizes)]
    planned, too_large = plan_batches(pixels, batch_size, budget, per_pixel)
    for index in too_large:
        failed.append(f"{items[index].path}: {pixels[index] / 1e6:.1f} MP need about {pixels[index] * per_pixel / 2**30:.1f} "
                      f"GiB to segment, above the memory budget of {budget / 2**30:.1f} GiB (--memory-budget)")
        _say(f"failed: {failed[-1]}")
    return [[items[i] for i in batch] for batch in planned] or [[]]


def segment_command(
    inputs: list[str],
    model: Path,
    out: Path,
    backend: str = "auto",
    batch_size: int = 8,
    recursive: bool = False,
    overlay: bool = False,
    cam: bool = False,
    *,
    device: str = DEFAULT_DEVICE,
    verbose: bool = False,
    max_pixels: int = MAX_PIXELS,
    overwrite: bool = False,
    memory_budget: int | None = None,
) -> int:
    """Segment the images of `inputs` into `out` (module docstring); 0 when all went well, 1 when any failed."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    if not inputs:
        raise ConfigError("IMAGES: give at least one image file, folder or glob")
    items, folders = collect_inputs([str(i) for i in inputs], recursive)
    if not items:
        raise DataError(f"{', '.join(map(str, inputs))}: no images found (suffixes {' '.join(IMAGE_SUFFIXES)})")
    out = Path(out)
    plan_outputs(items, out, overlay, cam)
    check_out(out, items, folders)
    total = len(items)
    if launched_world().distributed:  # under torchrun: this rank's share of the images, on its own GPU
        device = str(init_from_env(resolve_device(device)))
        items = shard(items)
    failed: list[str] = []
    if not overwrite:
        items, failed = keep_existing(items)
        for line in failed:
            _say(f"skipped: {line}")
    segmenter = load_segmenter(model, backend, device)
    _say(f"model {segmenter.source}: {segmenter.backend}, {segmenter.detail}")
    if segmenter.reason:
        _say(segmenter.reason)
    cam_model = None
    if cam:
        cam_device = getattr(segmenter, "device", None) or resolve_device(device)
        try:
            cam_model = load_cam_model(Path(model), cam_device, len(segmenter.class_names) - 1)
        except FastwsssError as exc:
            _say(f"--cam: no CAM heat maps: {one_line(str(exc))}")
    palette = full_palette(segmenter.palette)
    converted = done = 0
    timings = _Timings()
    begin = time.perf_counter()
    batches = _budget_batches(items, segmenter, batch_size, memory_budget, failed)
    with ThreadPoolExecutor(max_workers=2) as pool, make_progress() as progress:
        task = progress.add_task("segment", total=len(items), info="")

        def submit(batch: list[Item]) -> list[Future]:
            return [pool.submit(_read, item, max_pixels) for item in batch]

        pending = submit(batches[0])
        for index, batch in enumerate(batches):  # the next batch is decoded while this one runs
            current, pending = pending, (submit(batches[index + 1]) if index + 1 < len(batches) else [])
            good = []
            for item, future in zip(batch, current, strict=True):
                image, notes, error = future.result()
                if error is not None:
                    failed.append(error)
                    _say(f"failed: {error}")
                    continue
                converted += bool(notes)
                if notes and verbose:
                    _say(f"{item.path}: {'; '.join(notes)}")
                good.append((item, image))
            before = len(failed)
            results = _run_batch(segmenter, good, timings, failed) if good else []
            for error in failed[before:]:
                _say(f"failed: {error}")
            for item, image, mask in results:
                try:
                    _write(item, image, mask, palette, cam_model)
                except DataError as exc:
                    failed.append(one_line(str(exc)))
                    _say(f"failed: {failed[-1]}")
                    continue
                done += 1
            progress.advance(task, len(batch))
    wall_s = time.perf_counter() - begin
    if world().distributed:  # rank 0 reports for all ranks; wall time is the slowest rank's
        ranks = all_gather((done, failed, converted, timings.batches, wall_s))
        done, converted = sum(r[0] for r in ranks), sum(r[2] for r in ranks)
        failed = [line for r in ranks for line in r[1]]
        timings = _Timings([batch for r in ranks for batch in r[3]])
        wall_s = max(r[4] for r in ranks)
        main = is_main()
        shutdown()
        if not main:
            return 1 if failed else 0
    summary = f"{done} of {total} images segmented into {out}"
    if failed:
        summary += f"; {len(failed)} failed or skipped (listed above)"
    if converted and not verbose:
        summary += f"; {converted} converted to 8-bit RGB (--verbose says how)"
    _say(summary)
    if done:
        _say(timings.line(done, wall_s))
    return 1 if failed else 0
