"""Python side of the optional CUDA extension fastwsss._C (csrc/): wrappers the op modules register as
their "cuda" backend. The dispatcher (kernels/dispatch.py) only picks them for CUDA tensors when the
extension is built (`FASTWSSS_BUILD_CUDA=1 pip install -e .`), so importing this module never needs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _extension():  # noqa: ANN202 - a compiled module
    from fastwsss import _C

    return _C


def cam_norm_cuda(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """csrc/cam_norm.cu: fp32, fp16 and bf16 read and written in their own dtype, fp32 inside (the contract of
    cam_norm_reference); fp64 goes through fp32 like the reference computes it."""
    if cams.dtype == torch.float64:
        return _extension().cam_norm(cams.float().contiguous(), float(eps)).double()
    return _extension().cam_norm(cams.contiguous(), float(eps))


WALK_LAUNCHES = {"auto": 0, "steps": 1, "persistent": 2}
"""csrc/random_walk.cu's launch schemes: "persistent" (one cooperative launch, a grid barrier between steps),
"steps" (one launch per step), "auto" (persistent where the cooperative launch succeeds, else per step)."""


def random_walk_steps_cuda(
    x: torch.Tensor, offsets: Sequence[tuple[int, int]], weights: torch.Tensor, steps: int, launch: str = "auto"
) -> torch.Tensor:
    """csrc/random_walk.cu: `apply_taps` (kernels/random_walk.py) for fp32 CUDA tensors."""
    if launch not in WALK_LAUNCHES:
        raise ValueError(f"launch must be one of {', '.join(WALK_LAUNCHES)}, got {launch!r}")
    dy = [int(o[0]) for o in offsets]
    dx = [int(o[1]) for o in offsets]
    x, weights = x.float().contiguous(), weights.float().contiguous()
    return _extension().random_walk_steps(x, weights, dy, dx, int(steps), WALK_LAUNCHES[launch])
