"""The synthetic confounded scenes: determinism, layout, the confounding statistics, caching, preview."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastwsss.config import SynthConfig
from fastwsss.data import synthetic
from fastwsss.data.base import labels_from_mask
from fastwsss.data.synthetic import (
    SyntheticSource,
    ensure_synthetic,
    generate_synthetic,
    load_meta,
    partners,
    preferred_scenes,
    scene_names,
    write_preview,
)
from fastwsss.data.synthetic_draw import SCENES
from fastwsss.errors import DataError

TINY = SynthConfig(size=48, num_train=24, num_val=8, num_debiased=8, seed=3)
# Many small images for the rate statistics: about 1000 objects per split.
STATS = SynthConfig(size=24, num_train=500, num_val=1, num_debiased=500, context_prob=0.7, part_context_prob=0.7)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(meta: dict[str, dict], split: str) -> list[dict]:
    return [o for r in meta.values() if r["split"] == split for o in r["objects"]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("tiny") / "set", TINY, progress=False)


@pytest.fixture(scope="module")
def stats_meta(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    return load_meta(generate_synthetic(tmp_path_factory.mktemp("stats") / "set", STATS, progress=False))


def test_same_settings_give_identical_bytes_and_another_seed_differs(tiny: Path, tmp_path: Path) -> None:
    again = _files(generate_synthetic(tmp_path / "again", TINY, progress=False))
    first = _files(tiny)
    assert set(again) == set(first)
    assert all(again[name] == first[name] for name in first)
    other = _files(generate_synthetic(tmp_path / "other", SynthConfig(**{**TINY.__dict__, "seed": 4}), progress=False))
    images = [name for name in first if name.startswith("JPEGImages")]
    assert len(images) == 40
    assert sum(other[name] != first[name] for name in images) >= 38


def test_layout_is_read_by_the_source(tiny: Path) -> None:
    names = (tiny / "class_names.txt").read_text().split()
    assert len(names) >= 8 and len(set(names)) == len(names)
    assert (tiny / "scene_names.txt").read_text().split() == scene_names()
    meta = load_meta(tiny)
    for split, count, prefix in (("train", 24, "train_"), ("val", 8, "val_"), ("debiased", 8, "deb_")):
        source = SyntheticSource(tiny, split)
        assert source.name == "synthetic" and source.num_classes == len(names)
        assert len(source) == count
        assert all(isinstance(i, str) and i.startswith(prefix) for i in source.ids)
        for image_id in source.ids:
            with Image.open(source.mask_path(image_id)) as png:
                assert png.mode == "P"
            image, mask = source.load_pair(image_id)
            assert image.shape == (48, 48, 3) and mask.shape == (48, 48)
            assert mask.max() <= source.num_classes
            context = source.load_context(image_id)
            assert context.dtype == np.uint8 and context.shape == (48, 48)
            labels = source.labels(image_id)
            visible = {o["class"] for o in meta[image_id]["objects"] if o["visible_px"] > 0}
            assert visible and set(np.flatnonzero(labels)) == visible


def test_source_errors_name_the_file(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test.txt"):
        SyntheticSource(tiny, "test")
    with pytest.raises(DataError, match="class_names.txt"):
        SyntheticSource(tmp_path, "train")


def test_context_pixels_are_background_and_show_their_scene(tiny: Path) -> None:
    source = SyntheticSource(tiny, "train")
    meta = load_meta(tiny)
    sums = np.zeros((len(SCENES), 3))
    counts = np.zeros(len(SCENES))
    for image_id in source.ids:
        image, mask = source.load_pair(image_id)
        context = source.load_context(image_id)
        assert (context > 0).any() and (mask > 0).any()
        assert not (mask[context > 0]).any()
        scenes = {o["scene"] + 1 for o in meta[image_id]["objects"]}
        assert set(np.unique(context)) - {0} <= scenes
        for s in range(len(SCENES)):
            sums[s] += image[context == s + 1].sum(axis=0)
            counts[s] += (context == s + 1).sum()
    signature = np.array([s.color for s in SCENES], dtype=float)
    for s in np.flatnonzero(counts > 200):
        mean = sums[s] / counts[s]
        assert np.argmin(np.linalg.norm(signature - mean, axis=1)) == s, SCENES[s].name


def test_context_prob_extremes(tmp_path: Path) -> None:
    small = dict(size=24, num_train=40, num_val=1, num_debiased=1)
    always = generate_synthetic(tmp_path / "a", SynthConfig(**small, context_prob=1.0), progress=False)
    never = generate_synthetic(tmp_path / "n", SynthConfig(**small, context_prob=0.0), progress=False)
    preferred = preferred_scenes()
    assert all(o["scene"] == preferred[o["class"]] for o in _objects(load_meta(always), "train"))
    assert not any(o["scene"] == preferred[o["class"]] for o in _objects(load_meta(never), "train"))
    source = SyntheticSource(always, "train")
    for image_id in source.ids:
        allowed = {
            preferred[k] + 1 for k in np.flatnonzero(labels_from_mask(source.load_mask(image_id), source.num_classes))
        }
        assert set(np.unique(source.load_context(image_id))) - {0} <= allowed


def test_intermediate_rates_and_debiased_split(stats_meta: dict[str, dict]) -> None:
    train, debiased = _objects(stats_meta, "train"), _objects(stats_meta, "debiased")
    assert len(train) > 800 and len(debiased) > 800
    preferred = np.mean([o["scene"] == o["preferred_scene"] for o in train])
    follows = np.mean([o["part_scene"] == o["scene"] for o in train])
    assert abs(preferred - 0.7) < 0.05  # binomial sd ~0.015
    assert abs(follows - 0.7) < 0.05
    chance = 1.0 / len(SCENES)
    assert abs(np.mean([o["scene"] == o["preferred_scene"] for o in debiased]) - chance) < 0.04
    assert abs(np.mean([o["part_scene"] == o["scene"] for o in debiased]) - chance) < 0.04
    assert not any(o["forced_partner"] for o in debiased)


def _partner_rate(meta: dict[str, dict], split: str) -> float:
    rows = [r for r in meta.values() if r["split"] == split]
    pairs = partners()
    return float(np.mean([pairs[r["objects"][0]["class"]] in {o["class"] for o in r["objects"]} for r in rows]))


def test_cooccurrence_follows_cooccur_prob(tmp_path: Path, stats_meta: dict[str, dict]) -> None:
    small = dict(size=24, num_train=150, num_val=1, num_debiased=150)
    forced = load_meta(generate_synthetic(tmp_path / "f", SynthConfig(**small, cooccur_prob=1.0), progress=False))
    free = load_meta(generate_synthetic(tmp_path / "x", SynthConfig(**small, cooccur_prob=0.0), progress=False))
    base = 1.0 / 9.0  # max_objects=3: 0, 1 or 2 extra classes drawn from the 9 others
    assert _partner_rate(forced, "train") == 1.0
    assert abs(_partner_rate(free, "train") - base) < 0.07
    assert abs(_partner_rate(stats_meta, "train") - (0.5 + 0.5 * base)) < 0.06
    assert abs(_partner_rate(forced, "debiased") - base) < 0.07


def test_part_colour_extremes(tmp_path: Path) -> None:
    small = dict(size=24, num_train=40, num_val=1, num_debiased=1)
    on = load_meta(generate_synthetic(tmp_path / "on", SynthConfig(**small, part_context_prob=1.0), progress=False))
    off = load_meta(generate_synthetic(tmp_path / "off", SynthConfig(**small, part_context_prob=0.0), progress=False))
    assert all(o["part_scene"] == o["scene"] for o in _objects(on, "train"))
    assert all(o["part_scene"] == -1 for o in _objects(off, "train"))


def test_ensure_synthetic_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTWSSS_DATA_DIR", str(tmp_path / "cache"))
    first = ensure_synthetic(TINY, progress=False)
    assert first.parent == tmp_path / "cache" and first.name.startswith("synthetic-")
    stamp = (first / "settings.json").stat().st_mtime_ns, (first / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns

    class Regenerated(Exception):
        pass

    def no_regeneration(*args: object) -> None:
        raise Regenerated

    monkeypatch.setattr(synthetic, "_write_all", no_regeneration)
    assert ensure_synthetic(TINY, progress=False) == first
    assert stamp == (
        (first / "settings.json").stat().st_mtime_ns,
        (first / "JPEGImages" / "train_00000.jpg").stat().st_mtime_ns,
    )
    other = SynthConfig(**{**TINY.__dict__, "context_prob": 0.5})
    with pytest.raises(Regenerated):
        ensure_synthetic(other, progress=False)
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]


def test_foreign_or_different_folder_is_refused(tiny: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="foreign") as caught:
        generate_synthetic(foreign, TINY, progress=False)
    assert "\n" not in str(caught.value)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(DataError, match="not empty"):
        generate_synthetic(tiny, SynthConfig(**{**TINY.__dict__, "seed": 9}), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate_synthetic(empty, TINY, progress=False) == empty
    assert (empty / "settings.json").is_file()


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = synthetic.render_image
    monkeypatch.setattr(synthetic, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "set", TINY, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_race_loser_uses_the_winners_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "set"
    real = synthetic._write_all

    def racing(tmp: Path, *args: object) -> None:
        real(tmp, *args)
        shutil.copytree(tmp, out)  # another process renames its finished copy in first

    monkeypatch.setattr(synthetic, "_write_all", racing)
    assert generate_synthetic(out, TINY, progress=False) == out
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    assert SyntheticSource(out, "val").ids[0] == "val_00000"


def test_progress_bar_does_not_change_the_data(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTWSSS_NO_PROGRESS", raising=False)
    shown = generate_synthetic(tmp_path / "shown", TINY, progress=True)
    assert _files(shown) == _files(tiny)


def test_write_preview(tiny: Path, tmp_path: Path) -> None:
    path = write_preview(tiny, tmp_path / "sheet" / "preview.png", split="debiased", n=4)
    with Image.open(path) as png:
        png.load()
        assert png.format == "PNG" and png.mode == "RGB"
        sheet = np.asarray(png)
    assert sheet.shape[0] >= 2 * 48 and sheet.shape[1] >= 4 * 48
    assert len(np.unique(sheet.reshape(-1, 3), axis=0)) > 50
    assert not [p for p in os.listdir(path.parent) if p != "preview.png"]
