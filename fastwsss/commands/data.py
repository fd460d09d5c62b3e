"""`fastwsss data synth` and `fastwsss data coco-masks`: make and convert data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fastwsss.engine.progress import console


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
    from fastwsss.config import DataConfig, RunConfig, SynthConfig, validate
    from fastwsss.data.synthetic import generate_synthetic, write_preview

    synth = SynthConfig(size=size, num_train=num_train, num_val=num_val, num_debiased=num_debiased,
                        context_prob=context_prob, cooccur_prob=cooccur_prob, part_context_prob=part_context_prob,
                        max_objects=max_objects, seed=seed)
    validate(RunConfig(data=DataConfig(synth=synth)))
    root = generate_synthetic(out, synth)
    console.print(escape(f"wrote {root}"), soft_wrap=True)
    if preview:
        console.print(escape(f"preview: {write_preview(root, root / 'preview.png')}"), soft_wrap=True)


def data_coco_masks(
    instances: Annotated[Path, typer.Argument(help="COCO instances JSON, e.g. annotations/instances_train2014.json")],
    out: Annotated[Path, typer.Option(help="Mask folder, e.g. ROOT/SegmentationClass/train2014")],
) -> None:
    """Convert COCO instance annotations to class-index PNG masks (needs pycocotools)."""
    from fastwsss.data.coco import convert_instances_to_masks

    written = convert_instances_to_masks(instances, out)
    console.print(escape(f"wrote {written} masks to {out}"), soft_wrap=True)
