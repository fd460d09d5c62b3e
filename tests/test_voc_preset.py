"""The voc/coco presets hold the released values with their sources; the small presets keep their behaviour;
the released training schedule (steps, lr stepping, gradient accumulation); weights checks and --dry-run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fastwsss.cli import app
from fastwsss.config import RunConfig, get_preset
from fastwsss.engine.environment import flatten
from fastwsss.engine.provenance import sources
from fastwsss.engine.rundir import RunDir
from fastwsss.engine.training import TrainJob, poly_lr, run_epochs
from fastwsss.engine.weights import check_pretrained, weights_record
from fastwsss.errors import ConfigError
from fastwsss.stages.context import StageContext

runner = CliRunner()
OWN_SETTINGS = {"preset", "method", "seed", "device", "data.name", "data.num_workers", "irn.resize_long"}
"""voc settings that differ from the dataclass defaults but are this project's own (no released source)."""


@pytest.mark.parametrize("method", ["cam", "c2am", "conta"])
def test_every_released_voc_value_names_its_source(method: str) -> None:
    voc = flatten(get_preset("voc", method).to_dict())
    default = flatten(dataclasses.replace(RunConfig(), method=method).to_dict())
    origin = sources("voc", method)
    assert set(origin) <= set(voc), "a source names a setting that does not exist"
    changed = {key for key in voc if voc[key] != default[key]} - OWN_SETTINGS
    assert changed <= set(origin), f"voc values without a source: {sorted(changed - set(origin))}"


def test_voc_preset_takes_the_released_values() -> None:
    voc = get_preset("voc")
    assert voc.data.train_split == voc.data.cam_split == "train_aug" and voc.data.eval_split == "train"
    assert voc.cls.momentum == voc.irn.momentum == 1e-4 and voc.cls.train_bn_affine
    assert (voc.irn.infer_pad, voc.irn.relu_after_upsample, voc.irn.pairs, voc.irn.label_offset) == (512, True, "pathindex", 2)
    assert voc.irn.scale_range == (0.5, 1.5) and voc.irn.backbone_from == "imagenet"
    s = voc.seg
    assert (s.iterations, s.batch_size, s.iter_size, s.lr_step, s.freeze_bn) == (20_000, 10, 2, 10, True)
    assert (s.param_groups, s.loss_at, s.msc_scales, s.scales) == ("deeplab", "logits", (0.5, 0.75), (0.5, 0.75, 1.0, 1.25, 1.5))
    assert {0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.20} <= set(voc.eval.cam_bg_sweep)
    c2am = get_preset("voc", "c2am")
    assert (c2am.c2am.output_stride, c2am.c2am.freeze_stem) == (32, True)
    assert (c2am.seg.iterations, c2am.seg.batch_size, c2am.seg.scales[-1]) == (30_000, 20, 2.0)
    coco = get_preset("coco", "c2am")
    assert coco.seg.iterations == 100_000 and coco.c2am.output_stride == 32 and coco.ir_label == get_preset("coco").ir_label


@pytest.mark.parametrize("name", ["tiny", "synthetic"])
def test_small_presets_keep_the_previous_definitions(name: str) -> None:
    config = get_preset(name)
    assert (config.cls.momentum, config.irn.momentum, config.cls.train_bn_affine) == (0.9, 0.9, False)
    assert (config.irn.pairs, config.irn.label_offset, config.irn.infer_pad, config.irn.relu_after_upsample) == ("all", 0, 0, False)
    assert config.irn.scale_range == () and config.data.cam_split == "train"
    s = config.seg
    assert (s.iterations, s.iter_size, s.lr_step, s.freeze_bn, s.param_groups, s.loss_at, s.msc_scales, s.scales) == (
        0, 1, 1, False, "two", "input", (), ())
    assert (config.c2am.output_stride, config.c2am.freeze_stem) == (0, False)


def test_presets_command_prints_values_with_sources() -> None:
    result = runner.invoke(app, ["presets", "voc", "--method", "conta"])
    assert result.exit_code == 0, result.output
    lines = {line.split("=")[0].strip(): line for line in result.output.splitlines()}
    assert "train_aug" in lines["data.cam_split"] and "step/train_irn.py:17" in lines["data.cam_split"]
    assert "misc/torchutils.py:11-12" in lines["cls.momentum"]
    assert "CONTA paper, Sec. 4.3" in lines["conta.rounds"]
    as_json = runner.invoke(app, ["presets", "voc", "--json"])
    assert json.loads(as_json.output)["seg"]["iterations"] == 20_000


def test_check_pretrained_names_the_missing_setting(tmp_path: Path) -> None:
    voc = dataclasses.replace(get_preset("voc"), data=dataclasses.replace(get_preset("voc").data, root="/data"))
    with pytest.raises(ConfigError, match=r"^cls\.weights: .*--weights"):
        check_pretrained(voc, ["cls", "cam"])
    check_pretrained(voc, ["cam", "ir_label"])  # stages that load no ImageNet file
    file = tmp_path / "a.pth"
    file.write_bytes(b"")
    given = dataclasses.replace(voc, cls=dataclasses.replace(voc.cls, weights=str(file)),
                                irn=dataclasses.replace(voc.irn, weights=str(file)))
    with pytest.raises(ConfigError, match=r"^seg\.weights: .*--seg-weights"):
        check_pretrained(given, ["cls", "irn", "seg"])
    check_pretrained(get_preset("tiny"), ["cls", "irn", "seg"])
    tiny_on_voc = get_preset("tiny")  # reduced-width nets have no ImageNet weights: a smoke run on VOC trains from scratch
    check_pretrained(dataclasses.replace(tiny_on_voc, data=dataclasses.replace(tiny_on_voc.data, name="voc")), ["cls", "irn", "seg"])
    with pytest.raises(ConfigError, match=r"^seg\.weights: .*missing\.pth: weights file not found"):
        check_pretrained(dataclasses.replace(given, seg=dataclasses.replace(given.seg, weights=str(tmp_path / "missing.pth"))), ["seg"])
    path = tmp_path / "w.pth"
    path.write_bytes(b"abc")
    assert weights_record(path) == {"path": str(path.resolve()),
                                    "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert weights_record(None) is None


def test_weights_option_reaches_the_classifier_and_the_irn(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--data", "voc", "--root", str(tmp_path), "--weights", "r50.pth",
                                 "--seg-weights", "r101.pth", "--dry-run"])
    r50 = Path("r50.pth").absolute()  # path options are stored absolute
    assert result.exit_code == 2 and f"cls.weights: {r50}: weights file not found" in result.output
    lines = {line.split(":")[0]: line for line in result.output.splitlines()}
    assert "split train_aug (? images)" in lines["cls"] and lines["cls"].endswith(f"loads {r50} (MISSING)")
    r101 = Path("r101.pth").absolute()
    assert lines["irn"].endswith(f"loads {r50} (MISSING)") and lines["seg"].endswith(f"loads {r101} (MISSING)")


def test_dry_run_of_the_synthetic_preset_generates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTWSSS_DATA_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["train", "--method", "conta", "--rounds", "1", "--dry-run", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "round 1: cls: split train (1,500 images); 368 steps; batch 32" in result.output
    assert "round 0: confounder" not in result.output and "round 1: confounder" in result.output
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


class _Numbers(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def set_epoch(self, epoch: int) -> None:
        pass

    def __getitem__(self, index: int) -> dict:
        return {"x": torch.tensor([float(index + 1)])}


def _train(tmp_path: Path, **options) -> tuple[list[float], nn.Linear, int]:
    model = nn.Linear(1, 1, bias=False)
    nn.init.ones_(model.weight)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "lr": 0.1, "initial_lr": 0.1}], lr=0.1)
    rates: list[float] = []

    def loss(forward: nn.Module, sample: dict) -> torch.Tensor:
        rates.append(optimizer.param_groups[0]["lr"])
        return (forward(sample["x"]) ** 2).mean()

    config = get_preset("tiny")
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(config=config, run=run, device=torch.device("cpu"))
    job = TrainJob(stage="t", metric_stage="t", split="train", model=model, optimizer=optimizer, dataset=_Numbers(8),
                   epochs=1, batch_size=4, last_path=tmp_path / "last.pt", compute_loss=loss, hint="", **options)
    return rates, model, run_epochs(ctx, job)


def test_max_steps_and_lr_step_follow_the_released_poly_schedule(tmp_path: Path) -> None:
    rates, _, steps = _train(tmp_path, max_steps=25, lr_step=10)
    assert steps == 25
    assert rates == pytest.approx([poly_lr(0.1, 10 * (s // 10), 25) for s in range(25)])


def test_accumulated_chunks_give_the_whole_batch_gradient(tmp_path: Path) -> None:
    _, whole, _ = _train(tmp_path / "a", max_steps=1)
    rates, chunked, _ = _train(tmp_path / "b", max_steps=1, accumulate=2)
    assert len(rates) == 2  # two forward chunks, one optimiser step
    torch.testing.assert_close(whole.weight, chunked.weight)
