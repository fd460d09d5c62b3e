"""`fastwsss report`: one self-contained HTML file, built from hand-written run directories and one tiny real run."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from small_runs import fast_config

from fastwsss.algorithms.cam_inference import CamResult, save_cam_npz, stride4_size
from fastwsss.commands.report import report_command
from fastwsss.config import SynthConfig, get_preset
from fastwsss.data import build_source
from fastwsss.data.palette import save_mask_png
from fastwsss.engine.files import append_jsonl
from fastwsss.engine.pipeline import run_pipeline
from fastwsss.engine.rundir import RunDir
from fastwsss.errors import ConfigError, RunDirError
from fastwsss.reporting.charts import bar_chart, line_chart, nice_ticks
from fastwsss.reporting.report import THUMB, write_report
from fastwsss.reporting.visual import heatmap_sheet

VOID = {"meta", "img", "br", "hr", "input", "link"}


class PageChecker(HTMLParser):
    """Collects <img> sources, data-* of chart points and any unbalanced tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[dict[str, str]] = []
        self.points: list[dict[str, str]] = []
        self.tags: dict[str, int] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.images.append(values)
        if tag == "circle" and "pt" in values.get("class", ""):
            self.points.append(values)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()


def check_page(path: Path) -> PageChecker:
    """Parse a report and check what every report must satisfy; return the parser for more checks."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", text), "the report must hold no URL"
    assert "<script" not in text and "@import" not in text and "url(" not in text
    checker = PageChecker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    for tag in ("html", "head", "body", "header", "main", "footer"):
        assert checker.tags.get(tag) == 1, tag
    for img in checker.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix), img["src"][:40]
        with Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix) :], validate=True))) as picture:
            picture.load()
            assert picture.format == "PNG"
            if img.get("alt", "").split(" ")[0] in ("image", "ground", "CAM", "pseudo", "seg"):
                assert max(picture.size) <= THUMB
    return checker


def tiny_config(method: str = "cam", rounds: int = 0):
    config = get_preset("tiny", method)
    synth = SynthConfig(size=64, num_train=12, num_val=4, num_debiased=4, seed=3)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, synth=synth),
        conta=dataclasses.replace(config.conta, rounds=rounds),
    )


def write_outputs(folder: Path, source) -> None:
    """CAMs, pseudo masks and seg predictions of every image, made from the ground truth."""
    for image_id in source.ids:
        gt = source.load_mask(image_id)
        keys = np.flatnonzero(source.labels(image_id)).astype(np.int64)
        high = np.array([(gt == k + 1) * 0.9 + 0.05 for k in keys], np.float32).reshape(len(keys), *gt.shape)
        cam4 = np.zeros((len(keys), *stride4_size(*gt.shape)), np.float32)
        save_cam_npz(folder / "cams" / f"{image_id}.npz", CamResult(keys, cam4, high))
        save_mask_png(gt, folder / "pseudo" / f"{image_id}.png")
        save_mask_png(np.where(gt == 255, 0, gt).astype(np.uint8), folder / "seg" / "pred" / f"{image_id}.png")


def scored_row(stage: str, split: str, miou: float, names: list[str], **extra) -> dict:
    ious = [0.9, 0.1234, None, *([0.5] * (len(names) - 3))]
    return {
        "stage": stage,
        "split": split,
        "method": "cam",
        "miou": miou,
        "per_class_iou": ious,
        "class_names": names,
        "images": 12,
        **extra,
    }


def make_run(path: Path, method: str = "cam", rounds: int = 0) -> Path:
    """A run directory written by hand: config, outputs of every image, metrics rows with known numbers."""
    config = tiny_config(method, rounds)
    RunDir(path).save_config(config)
    source = build_source(config.data, config.data.cam_split)
    names = ["background", *source.class_names]
    folders = [path] if method != "conta" else [path / "rounds" / str(t) for t in range(rounds + 1)]
    for t, folder in enumerate(folders):
        write_outputs(folder, source)
        tag = {} if method != "conta" else {"round": t}
        for epoch, loss in enumerate((2.5, 1.75, 1.25), start=1):
            append_jsonl(
                path / "metrics.jsonl",
                {
                    **tag,
                    "stage": "cls",
                    "split": "train",
                    "method": method,
                    "epoch": epoch,
                    "loss": loss,
                    "miou": None,
                    "per_class_iou": None,
                },
            )
        rows = [
            scored_row(
                "cam", "train", 0.4321 + 0.1 * t, names, best_bg_threshold=0.2, best_miou=0.4567, context_leakage=0.25
            ),
            scored_row("pseudo", "train", 0.5556 + 0.1 * t, names, confident_fraction=0.75),
            scored_row("seg", "val", 0.3333 + 0.1 * t, names),
        ]
        for row in rows:
            append_jsonl(path / "metrics.jsonl", {**tag, **row, "method": method})
    return path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real, very small cam run of every stage (~30 s on 2 cores), shared by the tests that need realism."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FASTWSSS_DATA_DIR", str(tmp_path_factory.getbasetemp() / "fastwsss-data-cache"))
        config = fast_config("cam", num_train=32, seed=4)
        return run_pipeline(config, tmp_path_factory.mktemp("report") / "run").path


def test_charts_show_their_numbers() -> None:
    svg = bar_chart(["background", "cat", "dog"], [0.5, None, 0.125], "IoU")
    assert ">50.0<" in svg and ">12.5<" in svg and ">n/a<" in svg and "xmlns" not in svg
    line = line_chart({"a": [(0, 1.0), (1, 2.0)], "b": [(1, 0.5)]}, "t", "x", "y")
    assert line.count('class="pt"') == 3 and 'data-series="b" data-x="1"' in line
    assert "no data points" in line_chart({}, "t", "x", "y")
    assert nice_ticks(0, 47) == [0, 10, 20, 30, 40, 50]


def test_cam_report_is_self_contained_and_shows_the_numbers(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    path = write_report(run, sample=4)
    assert path == run / "report.html" and not list(run.glob(".report.html.tmp*"))
    page = check_page(path)
    text = path.read_text()
    table = text[text.index('id="miou-table"') : text.index("</table>", text.index('id="miou-table"'))]
    for number in ("43.2", "0.20 / 45.7", "25.0", "55.6", "75.0", "33.3"):
        assert f">{number}<" in table, number
    charts = text[text.index('id="per-class"') : text.index('id="losses"')]
    assert charts.count("<svg") == 3 and ">12.3<" in charts and ">n/a<" in charts and ">90.0<" in charts
    assert [p["data-y"] for p in page.points if p["data-series"] == "loss"] == ["2.5", "1.75", "1.25"]
    overlays = text[text.index('id="overlays"') :]
    assert overlays.count("<tr>") == 5 and overlays.count("<img") == 4 * 5 and "not run" not in overlays
    assert "not available" not in text
    assert '"method": "cam"' in text and "<details>" in text  # the resolved config, collapsible


def test_conta_report_has_one_point_per_round(tmp_path: Path) -> None:
    run = make_run(tmp_path / "conta", method="conta", rounds=2)
    heatmap_sheet(
        np.random.default_rng(0).random((3, 8, 8)), ["a", "b", "c"], run / "rounds/1/confounder/confounders.png"
    )
    page = check_page(write_report(run, sample=2))
    text = (run / "report.html").read_text()
    for series in ("CAM seeds (train)", "pseudo masks (train)", "segmentation (val)"):
        points = [p for p in page.points if p["data-series"] == series]
        assert [p["data-x"] for p in points] == ["0", "1", "2"], series
    cam = [float(p["data-y"]) for p in page.points if p["data-series"] == "CAM seeds (train)"]
    assert cam == pytest.approx([43.21, 53.21, 63.21], abs=0.01)
    assert "rounds/1/confounder/confounders.png" in text and any("confounders" in i["alt"] for i in page.images)
    assert re.search(r"not available: \S*rounds/2/confounder/confounders.png: not found", text)
    assert "outputs from rounds/2" in text and "round 2 (round" not in text
    assert len([p for p in page.points if p["data-series"] == "round 1"]) == 3  # cls loss of round 1


def test_c2am_report_embeds_the_global_cam(tmp_path: Path) -> None:
    run = make_run(tmp_path / "c2am", method="c2am")
    heatmap_sheet(np.ones((2, 8, 8)), ["a", "b"], run / "global_cam" / "global_cam.png")
    page = check_page(write_report(run, sample=1))
    assert any(img["alt"].startswith("global_cam") for img in page.images)


def test_voc_images_become_small_thumbnails(tmp_path: Path, voc_mini: Path) -> None:
    config = get_preset("voc")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(voc_mini), cam_split="train"))
    run = tmp_path / "voc"
    RunDir(run).save_config(config)
    source = build_source(config.data, config.data.cam_split)
    write_outputs(run, source)
    page = check_page(write_report(run, sample=8))
    assert len(page.images) == 5 * len(source.ids)
    assert all(max(int(i["width"]), int(i["height"])) <= THUMB for i in page.images)
    assert (run / "report.html").stat().st_size < 80_000 * len(source.ids)  # ~13 kB a thumbnail


def test_a_run_without_metrics_or_outputs_still_gets_a_report(tmp_path: Path) -> None:
    run = tmp_path / "fresh"
    RunDir(run).save_config(tiny_config())
    check_page(write_report(run, sample=3))
    text = (run / "report.html").read_text()
    assert "No metrics yet" in text and "No training epochs logged yet" in text
    overlays = text[text.index('id="overlays"') :]
    assert overlays.count(">not run<") == 3 * 3 and overlays.count("<img") == 3 * 2  # image and ground truth


def test_corrupt_pieces_become_notes(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    config = tiny_config()
    first = build_source(config.data, config.data.cam_split).ids[0]
    (run / "cams" / f"{first}.npz").write_bytes(b"not a zip file")
    (run / "pseudo" / f"{first}.png").write_bytes(b"\x89PNG broken")
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"torn": \n[1, 2]\n')
    check_page(write_report(run, sample=2))
    text = (run / "report.html").read_text()
    assert f"not available: {run / 'cams' / first}.npz: corrupt CAM file" in text
    assert f"not available: {run / 'pseudo' / first}.png" in text
    assert ">43.2<" in text  # the good rows are still there

    (run / "config.json").write_text("[1, 2]")
    check_page(write_report(run, sample=2))
    text = (run / "report.html").read_text()
    assert "not available: resolved config" in text and ">43.2<" in text
    assert "not available: needs the run&#x27;s config" in text


def test_report_command(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = report_command(run, sample=0, out=tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html" and not (run / "report.html").exists()
    check_page(out)
    assert "No sample images requested" in out.read_text()
    with pytest.raises(ConfigError, match="--sample"):
        report_command(run, sample=-1, out=None)
    with pytest.raises(RunDirError, match="not a fastwsss run directory"):
        write_report(tmp_path / "nothing")


@pytest.mark.slow
def test_report_of_a_real_tiny_run(real_run: Path) -> None:
    page = check_page(write_report(real_run, sample=3))
    text = (real_run / "report.html").read_text()
    rows = [json.loads(line) for line in (real_run / "metrics.jsonl").read_text().splitlines()]
    for stage in ("cam", "pseudo", "seg"):
        row = [r for r in rows if r["stage"] == stage and r.get("miou") is not None][-1]
        assert f">{100 * row['miou']:.1f}<" in text, stage
    assert {p["data-series"] for p in page.points} == {"loss"}
    assert "not run" not in text and "not available" not in text
    assert text.count("<img") == 3 * 5
    assert (real_run / "report.html").stat().st_size < 400_000
    env = text[text.index("environment (latest of 1 start(s))") :]
    fingerprint = json.loads((real_run / "environment.jsonl").read_text())["data"]["fingerprint"]
    assert f"<td>data.fingerprint</td><td>{fingerprint}</td>" in env and "<td>packages.torch</td>" in env


def test_chromium_renders_the_report(tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium or chromium-browser on PATH")
    run = make_run(tmp_path / "run")
    report = write_report(run, sample=2)
    shot = tmp_path / "shot.png"
    command = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        report.resolve().as_uri(),
    ]
    result = subprocess.run(["nice", "-n", "19", *command], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("L"))
    assert pixels.shape == (2000, 1200) and pixels.std() > 5 and (pixels < 128).mean() > 0.005
