"""Phase 2 of bench.methods: score the trained runs and summarise them over seeds (see bench/methods.py)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import torch

from bench.common import print_table
from bench.methods_setup import ABLATIONS, BENCH_SCALE, bench_config, run_dir
from fastwsss.data import build_source
from fastwsss.engine.rundir import CAMS, CLS, SEG, RunDir, open_run_dir, round_folder
from fastwsss.models.deeplab import load_seg_model
from fastwsss.stages.context import StageContext
from fastwsss.stages.evaluate import evaluate_cam_seeds
from fastwsss.stages.seg import evaluate_split

METRICS = ("cam_seed", "cam_seed_best", "leakage", "pseudo", "seg_val", "seg_debiased")
LABELS = {
    "cam_seed": "CAM seed mIoU (bg 0.15)", "cam_seed_best": "CAM seed mIoU (best bg)", "leakage": "context leakage (%)",
    "pseudo": "pseudo-mask mIoU", "seg_val": "DeepLab val mIoU", "seg_debiased": "DeepLab debiased mIoU",
}


def _latest(rows: list[dict[str, Any]], stage: str, split: str, round_: int | None) -> dict[str, Any] | None:
    found = None
    for row in rows:
        if row.get("stage") == stage and row.get("split") == split and row.get("round") == round_ and row.get("miou") is not None:
            found = row
    return found


def score_view(run: RunDir, round_: int | None) -> dict[str, float | None] | None:
    """The metrics of one run (or one CONTA round); None when its cam stage has not finished, the pseudo-mask
    and DeepLab ones None when the run stopped before them (the placement ablation stops at the CAMs)."""
    view = run if round_ is None else run.round_view(round_)
    if not view.is_done(CAMS):  # the cam stage writes cams/DONE
        return None
    config = run.load_config()
    ctx = StageContext(config=config, run=view, device=torch.device("cpu"), round=round_)
    cam_row = evaluate_cam_seeds(ctx, build_source(config.data, config.data.cam_split))
    rows = run.metrics()
    if view.is_done(SEG) and _latest(rows, "seg", "debiased", round_) is None:
        model, _ = load_seg_model(view.checkpoint(SEG), "cpu")
        model.eval()
        evaluate_split(ctx, model, build_source(config.data, "debiased"))
        rows = run.metrics()

    def miou(stage: str, split: str) -> float | None:
        row = _latest(rows, stage, split, round_)
        return None if row is None else 100 * row["miou"]

    leak = None if cam_row is None else cam_row.get("context_leakage")
    return {
        "cam_seed": None if cam_row is None else 100 * cam_row["miou"],
        "cam_seed_best": None if cam_row is None else 100 * cam_row["best_miou"],
        "leakage": None if leak is None else 100 * leak,
        "pseudo": miou("pseudo", "train"),
        "seg_val": miou("seg", "val"),
        "seg_debiased": miou("seg", "debiased"),
    }


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def paired_bases(methods: list[str]) -> list[tuple[str, str]]:
    """Each method against the baseline; C2AM against its plain fine-tune control; the attention-lr control
    against the round it changes."""
    pairs = [(m, "conta_round1" if m == "conta_attlr100" else "cam") for m in methods if m != "cam"]
    if "c2am_plain" in methods:
        pairs.append(("c2am", "c2am_plain"))
    return pairs


def _cell(s: dict[str, Any] | None) -> str:
    return "-" if not s else f"{s['mean']:+.1f} ± {s['std']:.1f} (n={s['n']})"


def paired_differences(per_run: dict[str, dict[str, Any]], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per metric, the mean and sd over seeds of (method - base) on the same seed; see paired_bases."""
    by_key = {(r["method"], r["seed"]): r for r in per_run.values()}
    result: dict[str, dict[str, Any]] = {}
    for method, base in paired_bases(methods):
        entry: dict[str, Any] = {"method": method, "base": base}
        result[f"{method} - {base}"] = entry
        for metric in METRICS:
            deltas = [
                r[metric] - by_key[(base, r["seed"])][metric]
                for (m, _), r in by_key.items()
                if m == method and r.get(metric) is not None and by_key.get((base, r["seed"]), {}).get(metric) is not None
            ]
            if deltas:
                entry[metric] = _summary(deltas)
    return result


def score(out: Path, seeds: list[int], rounds: int) -> dict[str, Any]:
    per_run: dict[str, dict[str, Any]] = {}
    for seed in seeds:
        conta = run_dir(out, "conta", seed)
        if (conta / "config.json").is_file():
            run = open_run_dir(conta)
            for t in range(rounds + 1):
                name = "cam" if t == 0 else ("conta" if t == rounds else f"conta_round{t}")
                per_run[f"{name}/seed{seed}"] = {"method": name, "seed": seed, "round": t, **(score_view(run, t) or {}),
                                                 "attention": attention_diagnostics(conta / round_folder(t)),
                                                 "placement": placement_diagnostics(conta, t) if t else None}
        c2am = run_dir(out, "c2am", seed)
        if (c2am / "config.json").is_file():
            per_run[f"c2am/seed{seed}"] = {"method": "c2am", "seed": seed, **(score_view(open_run_dir(c2am), None) or {})}
        for name, (method, *_) in ABLATIONS.items():
            path = out / f"{name}-seed{seed}"
            if (path / "config.json").is_file():
                run = open_run_dir(path)
                t = run.load_config().conta.rounds if method == "conta" else None
                per_run[f"{name}/seed{seed}"] = {"method": name, "seed": seed, "round": t, **(score_view(run, t) or {}),
                                                 "attention": attention_diagnostics(path / round_folder(t)) if t else None,
                                                 "placement": placement_diagnostics(path, t) if t else None}
    methods = ["cam", "c2am", *[f"conta_round{t}" for t in range(1, rounds)], "conta"]
    methods += [name for name in ABLATIONS if any(r["method"] == name for r in per_run.values())]
    summary: dict[str, dict[str, Any]] = {}
    for method in methods:
        runs = [r for r in per_run.values() if r["method"] == method]
        summary[method] = {
            metric: _summary([r[metric] for r in runs if r.get(metric) is not None])
            for metric in METRICS
            if any(r.get(metric) is not None for r in runs)
        }
    paired = paired_differences(per_run, methods)
    rows = []
    for method in methods:
        cells = [method]
        for metric in METRICS:
            s = summary[method].get(metric)
            cells.append("-" if not s else f"{s['mean']:.1f} ± {s['std']:.1f} (n={s['n']})")
        rows.append(cells)
    print_table("confounding benchmark (synthetic, mean ± sd over seeds)", ["method", *[LABELS[m] for m in METRICS]], rows)
    rows = [[name, *[_cell(entry.get(metric)) for metric in METRICS]] for name, entry in paired.items()]
    print_table("paired differences (same seed), mean ± sd", ["comparison", *[LABELS[m] for m in METRICS]], rows)
    config = bench_config("conta", seeds[0], rounds)
    return {
        "benchmark": "methods",
        "settings": {"scale": BENCH_SCALE, "seeds": seeds, "conta_rounds": rounds, "synth": config.data.synth.__dict__,
                     "note": "cam = round 0 of the seed's conta run (same stages, config and seed)"},
        "summary": summary,
        "paired_differences": paired,
        "runs": per_run,
    }


def attention_diagnostics(round_path: Path) -> dict[str, float] | None:
    """Is Eq. 3 doing anything? How image-specific M is, and how peaked the attention alpha is."""
    from fastwsss.kernels.confounder_attention import confounder_attention_weights_reference
    from fastwsss.stages.confounder import load_attention

    if not RunDir(round_path).attention_file.is_file():
        return None
    attention, table = load_attention(round_path)
    with torch.no_grad():
        xm = table.batch(table.ids)
        m = attention(xm).flatten(1)
        alpha = confounder_attention_weights_reference(xm, attention.w1, attention.w2, attention.confounders)
    n = alpha.shape[1]
    entropy = -(alpha * alpha.clamp_min(1e-12).log()).sum(dim=1) / math.log(n)
    return {
        "m_mean": float(m.mean()),
        "m_spatial_cv": float(m.mean(dim=0).std() / m.mean().clamp_min(1e-12)),
        "m_across_images_cv": float(m.std(dim=0).mean() / m.mean().clamp_min(1e-12)),
        "alpha_entropy_over_log_n": float(entropy.mean()),
        "alpha_max_mean": float(alpha.max(dim=1).values.mean()),
        "xm_foreground_mean": float(xm.mean()),
    }


def placement_diagnostics(run_path: Path, round_: int, images: int = 64) -> dict[str, float] | None:
    """Does M reach the logits through more than its spatial mean, and how much gradient do W1, W2 get?

    On `images` training images (no augmentation) with the round's trained classifier and attention:
    - `logit_change_mean_m`: largest |logit change| when M is replaced by its per-image spatial mean,
      relative to the mean |logit|. At block 5, M enters through global average pooling only, so this is
      about 0 there (up to the bilinear resize); at an inner block the spatial pattern of M can matter.
    - `logit_change_zero_m`: the same with M replaced by zeros (how much the M channel moves the logits).
    - `w_relative_gradient`: mean over W1, W2 of ||grad W|| / ||W||, divided by the head's
      ||grad|| / ||weight|| under the multilabel soft-margin loss: how fast the attention can learn compared
      with the classifier head it is trained with.
    """
    import torch.nn.functional as F

    from fastwsss.data.datasets import ClassificationDataset
    from fastwsss.methods.conta import ContextClassifier
    from fastwsss.models.cam_net import load_cam_net
    from fastwsss.stages.confounder import load_attention

    view = RunDir(run_path).round_view(round_)
    if not view.attention_file.is_file():
        return None
    config = open_run_dir(run_path).load_config()
    net, _ = load_cam_net(view.checkpoint(CLS))
    attention, table = load_attention(view.path)
    model = ContextClassifier(net, attention).eval()
    c = config.cls
    dataset = ClassificationDataset(build_source(config.data, config.data.train_split), c.resize_long, c.crop,
                                    augment=False)
    samples = [dataset[i] for i in range(min(images, len(dataset)))]
    image = torch.stack([s["image"] for s in samples])
    label = torch.stack([torch.as_tensor(s["label"]) for s in samples]).float()
    xm = table.batch([s["id"] for s in samples])

    loss = F.multilabel_soft_margin_loss(model(image, xm), label)
    loss.backward()

    def relative(p: torch.Tensor) -> float:
        return float(p.grad.norm() / p.detach().norm().clamp_min(1e-12))

    with torch.no_grad():
        m = attention(xm)
        logits = net(image, m)
        scale = float(logits.abs().mean().clamp_min(1e-12))
        mean_m = net(image, m.mean(dim=(2, 3), keepdim=True).expand_as(m))
        zero_m = net(image, torch.zeros_like(m))
    head = relative(net.head.weight)
    return {
        "logit_change_mean_m": float((logits - mean_m).abs().max()) / scale,
        "logit_change_zero_m": float((logits - zero_m).abs().max()) / scale,
        "w_relative_gradient": (relative(attention.w1) + relative(attention.w2)) / 2 / max(head, 1e-30),
        "head_relative_gradient": head,
        "images": len(samples),
    }
