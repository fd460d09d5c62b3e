"""random_walk: propagate CAMs along the boundary map (ALGORITHMS.md section 5).

On the h x w grid (n = h * w pixels), IRNet builds the symmetric affinity A (path-max affinity of every
pair of the radius-r half disc, A_ii = 1, zero elsewhere), the column-stochastic T = A^beta / colsum(A^beta),
squares it `exp_times` times and returns x @ T^(2^exp_times) with x = cams * (1 - edge). Column j of T has
at most 2D + 1 non-zeros (D half-disc directions: the pairs j -> j + d, j - d -> j, and j itself), so the
same result is 2^exp_times sparse steps x <- x T with O((2D + 1) n) memory, never an n x n matrix.

Layout of the op module: `random_walk_reference_dense` is IRNet's dense computation, a test oracle for small
grids only. `random_walk_reference` is the production PyTorch path and the "reference" backend: it calls
`transition_taps` (the sparse T) and `apply_taps` (the steps). A Triton or CUDA kernel mirrors `apply_taps`
on the same tap layout; add it as `_random_walk_triton` / `_random_walk_cuda` and list it in
`_IMPLEMENTATIONS`. The public `random_walk` asks `kernel_backend` which one runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fastwsss.affinity import half_disc_directions, pair_indices, pair_valid_mask, path_max_affinity
from fastwsss.kernels.dispatch import kernel_backend, register_backends

OP = "random_walk"
DENSE_MAX_PIXELS = 4096

Offsets = list[tuple[int, int]]


def _check(cams: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: int, radius: int) -> None:
    if cams.dim() not in (3, 4):
        raise ValueError(f"random_walk expects cams of shape (K, h, w) or (B, K, h, w), got {tuple(cams.shape)}")
    if not cams.is_floating_point() or not edge.is_floating_point():
        raise TypeError(f"random_walk expects floating-point cams and edge, got {cams.dtype} and {edge.dtype}")
    batch = cams.shape[0] if cams.dim() == 4 else 1
    if edge.dim() < 2 or edge.shape[-2:] != cams.shape[-2:] or edge.numel() != batch * cams.shape[-2] * cams.shape[-1]:
        raise ValueError(
            f"edge of shape {tuple(edge.shape)} does not match cams of shape {tuple(cams.shape)}: "
            "expected (h, w) for (K, h, w) cams, (B, h, w) or (B, 1, h, w) for (B, K, h, w) cams"
        )
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0, got {beta}")
    if isinstance(exp_times, bool) or not isinstance(exp_times, int) or exp_times < 0:
        raise ValueError(f"exp_times must be an integer >= 0, got {exp_times!r}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 1:
        raise ValueError(f"radius must be an integer >= 1, got {radius!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 accumulation for fp16/bf16/fp32 inputs; fp64 inputs stay fp64."""
    return torch.promote_types(dtype, torch.float32)


def transition_taps(edge: torch.Tensor, beta: float, radius: int) -> tuple[Offsets, torch.Tensor]:
    """The sparse column-stochastic transition T in gather form: (offsets, weights).

    `edge`: (B, 1, h, w) or (B, h, w) boundary probabilities in [0, 1]. Returns `offsets`, a list of
    2D + 1 (dy, dx) taps, and `weights` of shape (B, 2D + 1, h, w) such that one step is
        (x T)[j] = sum_t weights[:, t, j] * x[j + offsets[t]]        (x read as 0 outside the image)
    i.e. weights[:, t, j] = T[j + offsets[t], j], column j of T. Tap order: t = 0 is the pixel itself
    (offset (0, 0)); t = 1..D the forward pairs j -> j + d_t in `half_disc_directions` order; t = D+1..2D
    the backward pairs j - d_t -> j (offset -d_t). Weights are zero where the neighbour is outside the
    image, and sum to 1 over t at every pixel. Computed in fp32 (fp64 for fp64 edges).
    """
    edge = edge if edge.dim() == 4 else edge.unsqueeze(1)
    edge = edge.to(_compute_dtype(edge.dtype))
    height, width = edge.shape[-2:]
    directions = half_disc_directions(radius)
    valid = pair_valid_mask(height, width, radius, edge.device)
    forward = torch.where(valid, path_max_affinity(edge, radius).pow(beta), 0.0)
    pad = radius - 1
    padded = F.pad(forward, (pad, pad, pad, pad))
    # backward[:, d, j] = forward[:, d, j - d]: the pair (j - d) -> j seen from its destination j.
    backward = [
        padded[:, t : t + 1, pad - dy : pad - dy + height, pad - dx : pad - dx + width]
        for t, (dy, dx) in enumerate(directions)
    ]
    self_tap = torch.ones_like(edge)
    weights = torch.cat([self_tap, forward, *backward], dim=1)
    weights = weights / weights.sum(dim=1, keepdim=True)
    offsets = [(0, 0)] + list(directions) + [(-dy, -dx) for dy, dx in directions]
    return offsets, weights


def apply_taps(x: torch.Tensor, offsets: Sequence[tuple[int, int]], weights: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` sparse steps x <- x T with T given in the gather form of `transition_taps`.

    `x`: (B, K, h, w); `weights`: (B, T, h, w), broadcast over the K classes. Two zero-bordered buffers
    hold x; each step writes sum_t weights_t * shift_t(x) into the other buffer's interior, so the border
    stays zero and stands for "outside the image". Memory: O(T n + 2 B K n), never n x n.
    """
    if steps == 0:
        return x.clone()
    batch, classes, height, width = x.shape
    pad = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    buffers = [x.new_zeros(batch, classes, height + 2 * pad, width + 2 * pad) for _ in range(2)]
    interiors = [buf[:, :, pad : pad + height, pad : pad + width] for buf in buffers]
    shifted = [
        [buf[:, :, pad + dy : pad + dy + height, pad + dx : pad + dx + width] for dy, dx in offsets] for buf in buffers
    ]
    taps = [weights[:, t : t + 1] for t in range(len(offsets))]
    interiors[0].copy_(x)
    src = 0
    for _ in range(steps):
        dst = 1 - src
        out = interiors[dst]
        torch.mul(shifted[src][0], taps[0], out=out)
        for view, tap in zip(shifted[src][1:], taps[1:], strict=True):
            out.addcmul_(view, tap)
        src = dst
    return interiors[src].clone()


@torch.no_grad()
def random_walk_reference(
    cams: torch.Tensor, edge: torch.Tensor, beta: float = 10.0, exp_times: int = 8, radius: int = 5
) -> torch.Tensor:
    """x T^(2^exp_times) with x = cams * (1 - edge), as 2^exp_times sparse steps (never an n x n matrix).

    `cams`: (K, h, w) with `edge` (h, w); or (B, K, h, w) with `edge` (B, h, w) / (B, 1, h, w). Returns the
    shape and dtype of `cams`; accumulates in fp32 (fp64 for fp64 inputs). Equals
    `random_walk_reference_dense` up to rounding: repeated squaring and sequential steps sum in different
    orders. The step count is 2^exp_times, so the cost doubles with each exp_times. Not differentiable
    (inference only: the steps reuse two buffers in place), so it runs under no_grad.
    """
    _check(cams, edge, beta, exp_times, radius)
    squeeze = cams.dim() == 3
    x = cams.unsqueeze(0) if squeeze else cams
    batch, _, height, width = x.shape
    dtype = _compute_dtype(cams.dtype)
    edge4 = edge.reshape(batch, 1, height, width).to(dtype)
    offsets, weights = transition_taps(edge4, beta, radius)
    out = apply_taps(x.to(dtype) * (1.0 - edge4), offsets, weights, 2**exp_times)
    out = out.to(cams.dtype)
    return out.squeeze(0) if squeeze else out


def dense_transition_matrix(
    edge: torch.Tensor,
    beta: float = 10.0,
    radius: int = 5,
    dtype: torch.dtype = torch.float32,
    max_pixels: int = DENSE_MAX_PIXELS,
) -> torch.Tensor:
    """IRNet's dense T (n x n) for one (h, w) boundary map: A^beta / colsum(A^beta), A symmetric, A_ii = 1.

    Refuses grids of more than `max_pixels` pixels (a 94 x 125 grid needs ~2 GiB); raise it deliberately.
    """
    if edge.dim() != 2:
        raise ValueError(f"the dense random walk takes one (h, w) boundary map, got shape {tuple(edge.shape)}")
    height, width = edge.shape
    n = height * width
    if n > max_pixels:
        raise ValueError(
            f"dense random walk on {height}x{width} = {n} pixels exceeds max_pixels={max_pixels}: the n x n "
            f"matrices need ~{3 * n * n * torch.finfo(dtype).bits // 8 / 2**30:.1f} GiB; it is a test oracle for "
            "small grids (use random_walk for real sizes, or pass a larger max_pixels on purpose)"
        )
    aff = path_max_affinity(edge.to(dtype).view(1, 1, height, width), radius)[0]
    src, dst = pair_indices(height, width, radius, edge.device)
    values = aff[pair_valid_mask(height, width, radius, edge.device)]
    matrix = torch.zeros(n, n, dtype=dtype, device=edge.device)
    matrix[src, dst] = values
    matrix[dst, src] = values
    matrix.fill_diagonal_(1.0)
    matrix.pow_(beta)
    matrix.div_(matrix.sum(dim=0, keepdim=True))
    return matrix


@torch.no_grad()
def random_walk_reference_dense(
    cams: torch.Tensor,
    edge: torch.Tensor,
    beta: float = 10.0,
    exp_times: int = 8,
    radius: int = 5,
    dtype: torch.dtype = torch.float32,
    max_pixels: int = DENSE_MAX_PIXELS,
) -> torch.Tensor:
    """IRNet's dense computation: T <- T @ T `exp_times` times, then (cams * (1 - edge)) @ T.

    `cams`: (K, h, w), `edge`: (h, w). Test oracle for small grids; the result has `dtype` (IRNet: fp32).
    """
    _check(cams, edge, beta, exp_times, radius)
    if cams.dim() != 3:
        raise ValueError(f"the dense random walk takes (K, h, w) cams, got shape {tuple(cams.shape)}")
    classes, height, width = cams.shape
    edge = edge.reshape(height, width)
    trans = dense_transition_matrix(edge, beta, radius, dtype, max_pixels)
    for _ in range(exp_times):
        trans = trans @ trans
    x = (cams.to(dtype) * (1.0 - edge.to(dtype))).reshape(classes, height * width)
    return (x @ trans).view(classes, height, width)


_IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float, int, int], torch.Tensor]] = {
    "reference": random_walk_reference,
}
register_backends(OP, _IMPLEMENTATIONS)


def random_walk(
    cams: torch.Tensor, edge: torch.Tensor, beta: float = 10.0, exp_times: int = 8, radius: int = 5
) -> torch.Tensor:
    """Public entry point: same result as `random_walk_reference`, on the backend `kernel_backend` picks."""
    _check(cams, edge, beta, exp_times, radius)
    return _IMPLEMENTATIONS[kernel_backend(cams, OP)](cams, edge, beta, exp_times, radius)
