"""Pair geometry of inter-pixel relations (docs/algorithms.md sections 4 and 5).

IRN training (radius 10) and the random walk (radius 5) look at the same pairs: every pixel p and p + d for
each direction d of the half disc, so each unordered pair within the radius appears exactly once. The
affinity of a pair is 1 - (the largest boundary probability on the path between the two pixels).

Layout shared by the callers: directions are indexed in the order of `half_disc_directions`; a per-pair
tensor has shape (B, D, H, W) and entry [b, d, y, x] belongs to the pair (y, x) -> (y + dy, x + dx).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F


@functools.cache
def _half_disc(radius: int) -> tuple[tuple[int, int], ...]:
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")
    directions = [(0, dx) for dx in range(1, radius)]
    directions += [
        (dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius * radius
    ]
    return tuple(directions)


def half_disc_directions(radius: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of the half disc: (0, dx) for 1 <= dx < r, then (dy, dx) for 1 <= dy < r,
    |dx| < r, dx^2 + dy^2 < r^2, in that order. Their negations complete the disc without the origin.

    Radius 5 gives 34 directions, radius 10 gives 152.
    """
    return list(_half_disc(radius))


@functools.cache
def _path(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    if dy == 0 and dx == 0:
        raise ValueError("a path needs a non-zero direction, got (0, 0)")
    norm2 = dy * dy + dx * dx
    points = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < norm2
    ]
    # Order from source to destination (projection on the direction), which reads naturally in tests.
    points.sort(key=lambda p: (p[0] * dy + p[1] * dx, p))
    return tuple(points)


def path_offsets(direction: tuple[int, int]) -> list[tuple[int, int]]:
    """Lattice points (y, x) of the path from (0, 0) to `direction` = (dy, dx), both endpoints included.

    A point belongs to the path when it lies in the closed bounding box of the two endpoints and its
    perpendicular distance to the line through them is below 1: (dy*x - dx*y)^2 < dy^2 + dx^2, computed
    in integers so the membership is exact. Ordered by their projection on the direction.
    """
    dy, dx = direction
    return list(_path(int(dy), int(dx)))


def _as_bchw(edge: torch.Tensor) -> torch.Tensor:
    if edge.dim() == 3:
        return edge.unsqueeze(1)
    if edge.dim() == 4 and edge.shape[1] == 1:
        return edge
    raise ValueError(f"expected a boundary map of shape (B, 1, H, W) or (B, H, W), got {tuple(edge.shape)}")


def path_max_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinity 1 - max(edge on the path) of every pair (p, p + d), shape (B, D, H, W).

    `edge`: boundary probabilities in [0, 1], (B, 1, H, W) or (B, H, W). Pixels outside the image count
    as boundary 1.0, so a pair whose destination leaves the image gets affinity 0 (such pairs do not
    exist; callers may also mask them with `pair_valid_mask`). Differentiable in `edge`: the gradient of a
    pair goes to its path's arg-max pixel (the one nearest the source among equal maxima), as IRN training
    needs.
    """
    edge = _as_bchw(edge)
    if not _half_disc(radius):
        return edge.new_zeros(edge.shape[0], 0, *edge.shape[-2:])
    if torch.is_grad_enabled() and edge.requires_grad:
        return _PathMax.apply(edge, radius)
    return 1.0 - torch.cat(list(_path_peaks(edge, radius, with_index=False)), dim=1)


def path_max_affinity_reference(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """`path_max_affinity` as a running torch.maximum that autograd differentiates step by step (tests and
    bench/training_step.py compare the two; at equal maxima this one splits the gradient between them)."""
    edge = _as_bchw(edge)
    peaks = list(_path_peaks(edge, radius, with_index=False))
    return 1.0 - torch.cat(peaks, dim=1) if peaks else edge.new_zeros(edge.shape[0], 0, *edge.shape[-2:])


def _path_peaks(edge: torch.Tensor, radius: int, with_index: bool) -> Iterator:
    """Per direction of the half disc: the (B, 1, H, W) path maximum, or (maximum, uint8 index of the path
    point that holds it)."""
    _, _, height, width = edge.shape
    pad = radius - 1
    # Paths reach rows 0..r-1 below the source and columns -(r-1)..r-1 beside it.
    padded = F.pad(edge, (pad, pad, 0, pad), mode="constant", value=1.0)
    for direction in _half_disc(radius):
        views = [padded[:, :, y : y + height, pad + x : pad + x + width] for y, x in _path(*direction)]
        if with_index:
            # One stacked reduction per direction (1.3x as fast on a 2-core CPU as a running maximum that
            # updates a running index); max over a dim returns the first of equal maxima.
            peak, index = torch.stack(views).max(dim=0)
            yield peak, index.to(torch.uint8)
        else:
            peak = views[0]
            for view in views[1:]:
                peak = torch.maximum(peak, view)
            yield peak


@functools.cache
def _path_table(radius: int) -> torch.Tensor:
    """(D, L, 2) int64: the (y, x) path points of every direction, each path padded with its last point."""
    paths = [_path(*direction) for direction in _half_disc(radius)]
    length = max(len(path) for path in paths)
    return torch.tensor([list(path) + [path[-1]] * (length - len(path)) for path in paths], dtype=torch.long)


class _PathMax(torch.autograd.Function):
    """`path_max_affinity` with a one-scatter backward.

    Autograd through the running maximum keeps one node per path point (about 1,500 at radius 10), whose
    backward dominated an IRN training step on the CPU (0.56 s of 0.85 s at batch 32 on a 24 x 24 grid).
    Here the forward keeps the index of each pair's arg-max point and the backward adds every pair's
    gradient to that pixel in one scatter: forward and backward together 3x as fast on a 2-core CPU
    (`python -m bench.training_step`).
    """

    @staticmethod
    def forward(ctx, edge: torch.Tensor, radius: int) -> torch.Tensor:  # type: ignore[override]
        peaks, indices = zip(*_path_peaks(edge, radius, with_index=True), strict=True)
        ctx.save_for_backward(torch.cat(indices, dim=1))
        ctx.radius, ctx.shape = radius, edge.shape
        return 1.0 - torch.cat(peaks, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (index,) = ctx.saved_tensors
        batch, _, height, width = ctx.shape
        pad = ctx.radius - 1
        padded_width = width + 2 * pad
        table = _path_table(ctx.radius).to(grad.device)
        directions = torch.arange(table.shape[0], device=grad.device).view(1, -1, 1, 1)
        point = table[directions, index.long()]  # (B, D, H, W, 2): the arg-max point's offset
        rows = torch.arange(height, device=grad.device).view(-1, 1) + point[..., 0]
        cols = torch.arange(width, device=grad.device) + pad + point[..., 1]
        padded_grad = grad.new_zeros(batch, (height + pad) * padded_width)
        padded_grad.scatter_add_(1, (rows * padded_width + cols).view(batch, -1), grad.reshape(batch, -1).neg())
        return padded_grad.view(batch, 1, height + pad, padded_width)[..., :height, pad : pad + width], None


def pair_valid_mask(height: int, width: int, radius: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (D, H, W): True where the pair (y, x) -> (y + dy, x + dx) has both pixels in the image."""
    directions = torch.tensor(_half_disc(radius), dtype=torch.long, device=device).view(-1, 2)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    dst_y = ys + directions[:, 0].view(-1, 1, 1)
    dst_x = xs + directions[:, 1].view(-1, 1, 1)
    return (dst_y < height) & (dst_x >= 0) & (dst_x < width)


def pair_indices(
    height: int, width: int, radius: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices (source, destination) of the in-image pairs, each of shape (P,).

    Pairs are enumerated direction-major, then row, then column: exactly the order of
    `affinity[b][pair_valid_mask(h, w, radius)]` for a (B, D, H, W) affinity, so the two line up.
    """
    mask = pair_valid_mask(height, width, radius, device)
    d, y, x = mask.nonzero(as_tuple=True)
    directions = torch.tensor(_half_disc(radius), dtype=torch.long, device=device).view(-1, 2)
    src = y * width + x
    dst = (y + directions[d, 0]) * width + (x + directions[d, 1])
    return src, dst
