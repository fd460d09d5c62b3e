"""cam_norm: ReLU, then divide each (image, class) map by its spatial maximum + eps (ALGORITHMS.md s. 2).

Layout of a kernel op module: `cam_norm_reference` (pure torch, the specification), the kernels (a Triton
kernel is planned; add it as `_cam_norm_triton` and list it in `_IMPLEMENTATIONS`), and the public
`cam_norm`, which asks `kernel_backend` which implementation to run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastwsss.kernels.dispatch import kernel_backend, register_backends

OP = "cam_norm"


def _check(cams: torch.Tensor) -> None:
    if cams.dim() != 4:
        raise ValueError(f"cam_norm expects (B, K, H, W) maps, got shape {tuple(cams.shape)}")
    if not cams.is_floating_point():
        raise TypeError(f"cam_norm expects floating-point maps, got {cams.dtype}")


def cam_norm_reference(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """relu(cams) / (max_{h,w} relu(cams) + eps) per (image, class), in fp32, returned in the input dtype.

    eps keeps an all-zero (or all-negative) map at zero instead of NaN.
    """
    _check(cams)
    x = cams.float().relu()
    peak = x.amax(dim=(2, 3), keepdim=True)
    return (x / (peak + eps)).to(cams.dtype)


_IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "reference": cam_norm_reference,
}
register_backends(OP, _IMPLEMENTATIONS)


def cam_norm(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Public entry point: same result as `cam_norm_reference`, on the backend `kernel_backend` picks."""
    _check(cams)
    return _IMPLEMENTATIONS[kernel_backend(cams, OP)](cams, eps)
