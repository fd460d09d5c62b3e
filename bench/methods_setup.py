"""The runs of the confounding benchmark (bench/methods.py): their scale, settings, folders and ablations,
shared by its train, ablate and score phases (bench/methods_score.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastwsss.config import RunConfig, apply_options, get_preset, validate

BENCH_SCALE: dict[str, Any] = {
    "data.synth.num_train": 400,
    "data.synth.num_val": 200,
    "data.synth.num_debiased": 200,
    "seg.epochs": 6,
}
METHODS = ("conta", "c2am")


def bench_config(method: str, seed: int, rounds: int) -> RunConfig:
    options = {**BENCH_SCALE, "seed": seed, "conta.rounds": rounds, "device": "cpu"}
    return validate(apply_options(get_preset("synthetic", method), options))


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / f"{method}-seed{seed}"


PLACEMENT_STAGES = "confounder,cls,cam"
ABLATIONS: dict[str, tuple[str, str, dict[str, Any], str | None]] = {
    # name: (method, folder copied from the seed's run of that method, option changes, stages (None = all))
    "c2am_plain": ("c2am", "cls", {"c2am.scale_logits": False}, None),
    "conta_attlr100": ("conta", "rounds/0", {"conta.rounds": 1, "conta.attention_lr_mult": 100.0}, None),
    **{
        f"conta_{block}": ("conta", "rounds/0", {"conta.rounds": 1, "conta.extra_at": block}, PLACEMENT_STAGES)
        for block in ("block2", "block3", "block4")
    },
}
"""Controls run after the main benchmark. c2am_plain: the same fine-tune with plain logits (is C2AM's gain the
scaling or the extra epochs?). conta_attlr100: round 1 with W1, W2 at 100x the head's lr (does a sharper
attention make M image-specific?). Each starts from a finished stage of the seed's main run (copied, so
it is not trained again); the copied stages do not depend on the changed settings. conta_block2..4: CONTA's
placement ablation, M concatenated after block 2, 3 or 4 instead of block 5 (round 1, up to the CAM seeds:
the question is whether M reaches the classifier, which the CAMs answer); the score phase
reports for every CONTA round whether M reaches the logits through more than its spatial mean and how much
gradient W1, W2 get (`placement` in the JSON)."""
