"""Stage `seg` on a tiny synthetic run: training on (stand-in) pseudo masks, evaluation, predictions, resume."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastwsss.algorithms.seg_inference import predict_mask
from fastwsss.config import RunConfig, SegConfig, SynthConfig, get_preset
from fastwsss.data import build_source
from fastwsss.engine.rundir import RunDir, create_or_resume
from fastwsss.errors import FastwsssError
from fastwsss.models.deeplab import load_seg_model
from fastwsss.stages import seg as seg_stage
from fastwsss.stages.context import StageContext
from fastwsss.stages.seg import PseudoMaskSource, ScaledSegmentationDataset, run_seg

EPOCHS = 3
STEPS_PER_EPOCH = 4  # 16 train images, batch 4


def tiny_config() -> RunConfig:
    cfg = get_preset("tiny")
    data = dataclasses.replace(cfg.data, synth=SynthConfig(size=64, num_train=16, num_val=8, num_debiased=4))
    seg = SegConfig(
        model="deeplabv2",
        backbone="resnet18_quarter",
        epochs=EPOCHS,
        batch_size=4,
        lr=0.01,
        head_lr_mult=1.0,  # stable from scratch at this size (x10 makes the loss climb to ~7)
        crop=48,
        scale_range=(0.75, 1.25),
    )
    return dataclasses.replace(cfg, data=data, seg=seg)


def new_run(path: Path, pseudo: bool = True) -> tuple[RunDir, RunConfig]:
    """A fresh run directory whose pseudo/ holds the ground-truth train masks (the pseudo stage's stand-in)."""
    run, cfg = create_or_resume(path, tiny_config(), resume=False)
    if pseudo:
        source = build_source(cfg.data, cfg.data.cam_split)
        (run.path / "pseudo").mkdir()
        for image_id in source.ids:
            shutil.copy(source.mask_path(image_id), run.path / "pseudo" / f"{image_id}.png")
    return run, cfg


def interrupt_at(stage: str, count: int):
    def hook(name: str, value: int) -> None:
        if name == stage and value == count:
            raise KeyboardInterrupt

    return hook


def resume(run: RunDir, hook=None) -> StageContext:
    run.unlock()
    run, cfg = create_or_resume(run.path, tiny_config(), resume=True)
    return StageContext(cfg, run, torch.device("cpu"), resume=True, on_step=hook)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> RunDir:
    """One uninterrupted run, shared by the tests below."""
    run, cfg = new_run(tmp_path_factory.mktemp("seg") / "run")
    run_seg(StageContext(cfg, run, torch.device("cpu")))
    run.unlock()
    return run


def state_of(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_seg_model(path)
    return model.state_dict()


def test_outputs_metrics_and_predictions(finished: RunDir) -> None:
    cfg = finished.load_config()
    train = build_source(cfg.data, cfg.data.cam_split)
    num_labels = train.num_classes + 1
    assert finished.is_done("seg")
    model, meta = load_seg_model(finished.path / "seg" / "ckpt.pt", expect_num_classes=num_labels)
    assert meta["class_names"] == train.class_names

    rows = finished.metrics()
    epochs = [r for r in rows if r["stage"] == "seg_train"]
    assert [r["epoch"] for r in epochs] == list(range(1, EPOCHS + 1))
    assert all(r["split"] == "train" and math.isfinite(r["loss"]) and r["miou"] is None for r in epochs)
    scored = {r["split"]: r for r in rows if r["stage"] == "seg"}
    assert set(scored) == {"val", "train", *cfg.data.test_splits} and cfg.data.test_splits == ("debiased",)
    assert scored["debiased"]["images"] == cfg.data.synth.num_debiased
    val = scored["val"]
    assert val["method"] == cfg.method and val["images"] == 8
    assert math.isfinite(val["miou"]) and 0.0 <= val["miou"] <= 1.0
    assert len(val["per_class_iou"]) == num_labels and val["class_names"][0] == "background"
    assert scored["train"]["images"] == 16 and math.isfinite(scored["train"]["miou"])

    for image_id in train.ids:
        path = finished.path / "seg" / "pred" / f"{image_id}.png"
        with Image.open(path) as image:
            assert image.mode == "P"
            pred = np.asarray(image)
        assert pred.shape == train.load_image(image_id).shape[:2]
        assert pred.max() < num_labels
    first = train.ids[0]
    with Image.open(finished.path / "seg" / "pred" / f"{first}.png") as image:
        np.testing.assert_array_equal(predict_mask(model, train.load_image(first), "cpu"), np.asarray(image))


def test_resume_reproduces_the_uninterrupted_run(finished: RunDir, tmp_path: Path) -> None:
    run, cfg = new_run(tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        run_seg(StageContext(cfg, run, torch.device("cpu"), on_step=interrupt_at("seg", STEPS_PER_EPOCH + 2)))
    assert (run.path / "seg" / "last.pt").is_file() and not (run.path / "seg" / "ckpt.pt").exists()
    assert [r["epoch"] for r in run.metrics() if r["stage"] == "seg_train"] == [1]

    with pytest.raises(KeyboardInterrupt):  # now stop while writing predictions
        run_seg(resume(run, interrupt_at("seg_pred", 5)))
    assert len(list((run.path / "seg" / "pred").glob("*.png"))) == 5  # the hook runs after the 5th is written
    ctx = resume(run)
    run_seg(ctx)
    ctx.run.unlock()

    assert [r["epoch"] for r in run.metrics() if r["stage"] == "seg_train"] == list(range(1, EPOCHS + 1))
    expected, got = state_of(finished.path / "seg" / "ckpt.pt"), state_of(run.path / "seg" / "ckpt.pt")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6, msg=key)
    for path in sorted((finished.path / "seg" / "pred").glob("*.png")):
        with Image.open(path) as a, Image.open(run.path / "seg" / "pred" / path.name) as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert ctx.run.is_done("seg")


def test_missing_pseudo_dir_is_named(tmp_path: Path) -> None:
    run, cfg = new_run(tmp_path / "run", pseudo=False)
    with pytest.raises(FastwsssError, match=str(run.path / "pseudo")):
        run_seg(StageContext(cfg, run, torch.device("cpu")))
    run.unlock()


def test_non_finite_loss_names_epoch_and_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, cfg = new_run(tmp_path / "run")
    monkeypatch.setattr(seg_stage, "seg_loss", lambda logits, masks, mean: logits.sum() * float("nan"))
    with pytest.raises(FastwsssError, match=r"loss is nan at epoch 1 step 1; the last good checkpoint.*none"):
        run_seg(StageContext(cfg, run, torch.device("cpu")))
    run.unlock()


def test_pseudo_source_and_scaled_dataset(tmp_path: Path) -> None:
    cfg = tiny_config()
    base = build_source(cfg.data, "train")
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    for image_id in base.ids[::2]:
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[8:20, 8:30] = 3
        Image.fromarray(mask, mode="L").save(pseudo / f"{image_id}.png")
    source = PseudoMaskSource(base, pseudo)
    assert source.ids == base.ids[::2] and source.missing == len(base.ids) - len(base.ids[::2])
    assert source.labels(source.ids[0]).nonzero()[0].tolist() == [2]

    dataset = ScaledSegmentationDataset(source, (0.5, 1.5), crop=40, seed=0)
    assert dataset.long_side_range(64, 48) == (32, 96)
    sample = dataset[0]
    assert sample["image"].shape == (3, 40, 40) and sample["mask"].shape == (40, 40)
    assert set(np.unique(sample["mask"].numpy())) <= {0, 3, 255}
    torch.testing.assert_close(dataset[0]["mask"], sample["mask"])
    first_epoch = [dataset[i]["image"] for i in range(3)]
    dataset.set_epoch(1)
    assert any(not torch.equal(dataset[i]["image"], first_epoch[i]) for i in range(3))
