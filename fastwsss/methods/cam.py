"""The baseline method `cam`: IRNet's pipeline unchanged (cls -> cam -> ir_label -> irn -> pseudo -> seg -> eval)."""

from __future__ import annotations

from fastwsss.methods.base import Method
from fastwsss.stages import BASELINE

METHOD = Method(
    name="cam",
    description="IRNet baseline: CAMs, inter-pixel relations, random walk, DeepLab",
    links=("https://arxiv.org/abs/1904.05044", "https://github.com/jiwoon-ahn/irn"),
    stages=BASELINE,
)
