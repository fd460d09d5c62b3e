"""The pseudo stage with batched walks (its GPU path, forced on the CPU here) gives the masks of the per-image
path, still skips a bad image alone, and the CPU default stays the per-image path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from small_runs import fast_config

import fastwsss.stages.pseudo as pseudo_stage
from fastwsss.algorithms.cam_inference import load_cam_npz
from fastwsss.engine.pipeline import run_pipeline


def test_cpu_walks_one_image_per_call() -> None:
    assert pseudo_stage.walk_batch_size(torch.device("cpu")) == 1
    assert pseudo_stage.walk_batch_size(torch.device("cuda")) == pseudo_stage.CUDA_WALK_BATCH > 1


def test_boundaries_of_same_size_images_go_through_the_irn_together() -> None:
    from fastwsss.algorithms.cam_inference import normalize_image
    from fastwsss.models.irn import BoundaryNet

    torch.manual_seed(0)
    model = BoundaryNet.from_imagenet("resnet18_quarter", None).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size, dtype=np.uint8) for size in ((40, 56, 3), (56, 40, 3), (40, 56, 3))]
    calls: list[int] = []
    real = model.boundary_with_flip
    model.boundary_with_flip = lambda x: (calls.append(x.shape[0]), real(x))[1]
    with torch.inference_mode():
        edges = pseudo_stage._boundaries(model, images, torch.device("cpu"))
        singles = [real(normalize_image(image))[0, 0] for image in images]
    assert sorted(calls) == [1, 2]  # the two 40 x 56 images together
    for edge, single in zip(edges, singles, strict=True):
        torch.testing.assert_close(edge, single, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_batched_stage_equals_the_per_image_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = fast_config(num_train=24)
    straight = run_pipeline(config, tmp_path / "straight", stages="cls,cam,ir_label,irn,pseudo")
    batched = tmp_path / "batched"
    shutil.copytree(straight.path, batched, ignore=shutil.ignore_patterns("pseudo", ".lock"))
    cams = sorted((batched / pseudo_stage.CAM_FOLDER).glob("*.npz"))
    bad = next(p for p in cams if len(load_cam_npz(p).keys))
    data = dict(np.load(bad))
    np.savez(bad, **{**data, "cam4": data["cam4"][:, :-1]})  # a CAM grid that does not match its image

    calls: list[int] = []
    real_batch = pseudo_stage.random_walk_batch

    def counting(cams, edges, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(len(cams))
        return real_batch(cams, edges, **kwargs)

    monkeypatch.setattr(pseudo_stage, "walk_batch_size", lambda device: 5)
    monkeypatch.setattr(pseudo_stage, "random_walk_batch", counting)
    run_pipeline(config, batched, stages="pseudo", resume=True)
    assert calls and max(calls) > 1  # the walks really ran in batches
    failed = (batched / "pseudo" / "failed.txt").read_text()
    assert bad.stem in failed and "does not match the boundary grid" in failed and failed.count("\n") == 1
    masks = sorted((straight.path / "pseudo").glob("*.png"))
    assert len(masks) == len(cams)
    for path in masks:
        if path.stem == bad.stem:
            assert not (batched / "pseudo" / path.name).exists()
            continue
        a = np.asarray(Image.open(path))
        b = np.asarray(Image.open(batched / "pseudo" / path.name))
        np.testing.assert_array_equal(a, b, err_msg=path.name)
