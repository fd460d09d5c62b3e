"""One picture of what each stage of a finished run makes: image -> CAM -> pseudo mask -> DeepLab -> truth.

    python -m bench.pipeline_figure RUNDIR --out docs/pipeline.png [--ids train_00000 train_00001 ...]

A row per image of the run's CAM split: the image, its CAMs (the largest class map per pixel, the run's
max-normalised maps), the random-walk pseudo mask, the DeepLab prediction and the ground truth (when the
data set has one; a figure, not a decision of the training path).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fastwsss.algorithms.cam_inference import load_cam_npz
from fastwsss.data import build_source
from fastwsss.data.base import read_label_png
from fastwsss.data.palette import mask_to_image
from fastwsss.engine.rundir import open_run_dir
from fastwsss.reporting.visual import heat_colors

TITLES = ("image", "CAM", "pseudo mask", "DeepLab", "ground truth")


def _cam_picture(path: Path, size: tuple[int, int]) -> Image.Image | None:
    if not path.is_file():
        return None
    maps = load_cam_npz(path).high_res
    strongest = maps.max(axis=0) if len(maps) else np.zeros(size[::-1], np.float32)
    return Image.fromarray(heat_colors(strongest))


def _mask_picture(path: Path, num_classes: int) -> Image.Image | None:
    return mask_to_image(read_label_png(path, num_classes)).convert("RGB") if path.is_file() else None


def pipeline_figure(rundir: Path, ids: list[str], out: Path, tile: int = 128) -> Path:
    top = open_run_dir(rundir)
    config = top.load_config()
    run = top.final_view(config)  # CONTA: the last round's outputs
    source = build_source(config.data, config.data.cam_split)
    k = source.num_classes + 1
    label, pad = 16, 4
    sheet = Image.new("RGB", (len(TITLES) * (tile + pad) + pad, label + len(ids) * (tile + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(TITLES):
        draw.text((pad + c * (tile + pad), 2), title, fill=(0, 0, 0))
    for r, image_id in enumerate(ids):
        image = Image.fromarray(source.load_image(image_id))
        pictures = [
            image,
            _cam_picture(run.cam_file(image_id), image.size),
            _mask_picture(run.pseudo_file(image_id), k),
            _mask_picture(run.seg_prediction_file(image_id), k),
            mask_to_image(source.load_mask(image_id)).convert("RGB") if source.has_masks() else None,
        ]
        for c, picture in enumerate(pictures):
            if picture is not None:
                sheet.paste(picture.resize((tile, tile), Image.Resampling.NEAREST),
                            (pad + c * (tile + pad), label + pad + r * (tile + pad)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rundir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/pipeline.png"))
    parser.add_argument("--ids", nargs="+", default=[f"train_{i:05d}" for i in range(4)])
    parser.add_argument("--tile", type=int, default=128)
    args = parser.parse_args(argv)
    print(pipeline_figure(args.rundir, args.ids, args.out, args.tile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
