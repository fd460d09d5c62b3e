"""random_walk: propagate CAMs along the boundary map (docs/algorithms.md section 5).

On the h x w grid (n = h * w pixels), IRNet builds the symmetric affinity A (path-max affinity of every
pair of the radius-r half disc, A_ii = 1, zero elsewhere), the column-stochastic T = A^beta / colsum(A^beta),
squares it `exp_times` times and returns x @ T^(2^exp_times) with x = cams * (1 - edge). Column j of T has
at most 2D + 1 non-zeros (D half-disc directions: the pairs j -> j + d, j - d -> j, and j itself), so the
same result is 2^exp_times sparse steps x <- x T with O((2D + 1) n) memory, never an n x n matrix.

Layout of the op module: `random_walk_reference_dense` is IRNet's dense computation, a test oracle for small
grids only. `random_walk_reference` is the production PyTorch path and the "reference" backend: it calls
`transition_taps` (the sparse T) and `apply_taps` (the steps). `_random_walk_triton` (the "triton" backend,
registered when triton imports) mirrors both on the same tap layout: `_transition_taps_triton` (kernel 1, the
fused taps) and `_apply_taps_triton` (kernel 2, one launch per step); see the comment above them for the
design. A CUDA kernel would be `_random_walk_cuda`, listed in `_IMPLEMENTATIONS`. The public `random_walk`
asks `kernel_backend` which one runs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from fastwsss.algorithms.affinity import (
    half_disc_directions,
    pair_indices,
    pair_valid_mask,
    path_max_affinity,
    path_offsets,
)
from fastwsss.kernels.cuda_ext import random_walk_steps_cuda
from fastwsss.kernels.dispatch import forced_backend, kernel_backend, register_backends, triton_runs_on
from fastwsss.kernels.launch import next_pow2, on_device, pow2_block

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


# --------------------------------------------------------------------------------------------------------------
# Triton backend. Design (explicit): two kernels, never an n x n matrix, O((2D + 1) n + 2 B K n) memory.
#
# Kernel 1 `_taps_kernel`, grid (pixel blocks, B), one launch: the whole `transition_taps`. The edge map is
#   padded by r - 1 with 1.0 (as `path_max_affinity` reads outside the image), so every path point of every pair
#   touching an in-image pixel has an address inside the buffer. A program owns BLOCK_P pixels and holds two
#   (BLOCK_D directions, BLOCK_P pixels) register tiles: the forward pairs j -> j + d and the backward pairs
#   j - d -> j. Each is the running maximum of the edge along the direction's lattice path (`path_offsets`, as a
#   (D, L) table of flat offsets padded with the source point: max is idempotent); then A^beta = exp2(beta *
#   log2(1 - max)) (0 where 1 - max <= 0), zeroed where the pair leaves the image (the reference's
#   `pair_valid_mask` and zero-padded backward shift; redundant with the 1.0 padding, which then lies on the
#   path, but kept to mirror the reference); the column sum 1 + sum fwd + sum bwd is reduced in
#   registers and the normalised weights are stored in `transition_taps`' (B, 2D + 1, h, w) layout.
# Kernel 2 `_step_kernel`: ONE LAUNCH PER STEP, grid (pixel blocks, class blocks, B), ping-pong between two
#   (B, K, h + 2(r-1), w + 2(r-1)) buffers whose zero border stands for "outside the image" (as in `apply_taps`),
#   so a tap is one flat offset and one gather. A program computes a (BLOCK_K classes, BLOCK_P pixels) tile as
#   sum_t weights[t] * x[pixel + offset_t], reading each tap's weights once for its BLOCK_K classes. Chosen over
#   a persistent program per (image, class block) because one step's grid already fills a GPU on real grids
#   (94 x 125, 21 classes: ~280 programs) and it needs no synchronisation through global memory inside a
#   program; the price is 2^exp_times launches (256 by default, vs the reference's 69 torch ops per step), paid
#   once per batch when the pseudo stage walks several images per call (kernels/random_walk_batch.py). The
#   launch path makes no host synchronisation (its small tables are cached on the device), so a caller may
#   capture the walk in a CUDA graph and replay it for inputs of the same shape. The CUDA backend
#   (csrc/random_walk.cu) removes the launches instead: one cooperative launch loops over the steps with a
#   grid barrier between them.
# Every load and store is masked (pixel < n, class < K, direction < D); masked-in addresses are in bounds by
# the padding above. Trip counts (taps, directions, path length) are constexpr: one compilation per radius, and
# the triton 3.6 interpreter cannot take a runtime loop bound under numpy 2.
# --------------------------------------------------------------------------------------------------------------

try:  # the module must import (and the reference run) without triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is installed wherever the tests run
    triton = None
    tl = None

TAPS_TILE = 4096  # kernel 1: BLOCK_D * BLOCK_P, the (directions x pixels) register tile of one program
STEP_BLOCK_K = 8  # kernel 2: classes per program (fewer when K is smaller)
STEP_BLOCK_P = 128  # kernel 2: pixels per program (fewer on tiny grids)
TAPS_NUM_WARPS = 8
STEP_NUM_WARPS = 4


@functools.cache
def _direction_tables(radius: int, padded_width: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """(dy, dx) per direction, and per direction its L path points as flat offsets in a row of `padded_width`.

    Paths shorter than L are padded with offset 0 (the source, which every path contains). At least one row
    each, so that the kernels never receive an empty table (radius 1 has no directions).
    """
    directions = half_disc_directions(radius)
    paths = [path_offsets(d) for d in directions]
    length = max((len(path) for path in paths), default=1)
    flat_dirs: list[int] = []
    flat_paths: list[int] = []
    for direction, path in zip(directions, paths, strict=True):
        flat_dirs += list(direction)
        flat_paths += [y * padded_width + x for y, x in path] + [0] * (length - len(path))
    if not directions:
        flat_dirs, flat_paths = [0, 0], [0] * length
    return tuple(flat_dirs), tuple(flat_paths), length


@functools.lru_cache(maxsize=64)
def _device_table(values: tuple[int | float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant table on `device`, made once per (values, dtype, device) and reused: a host-to-device
    copy is a synchronisation, which the walk must not make on every call (it would break CUDA graph capture
    and stall the launch queue). Callers never write into it."""
    return torch.tensor(values, dtype=dtype, device=device)


def _int_table(values: Sequence[int], device: torch.device) -> torch.Tensor:
    return _device_table(tuple(int(v) for v in values), torch.int32, device)


if triton is not None:

    @triton.jit
    def _taps_kernel(
        edge_ptr,  # (B, h + 2 pad, w + 2 pad) boundary map padded with 1.0, compute dtype, contiguous
        beta_ptr,  # (1,) beta in the compute dtype
        dir_ptr,  # (D, 2) int32 half-disc directions (dy, dx)
        path_ptr,  # (D, L) int32 path points as flat offsets in the padded map, padded with 0
        w_ptr,  # (B, 2D + 1, h, w) output weights, compute dtype, contiguous
        height,
        width,
        pad,
        N_DIRS: tl.constexpr,
        PATH_LEN: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        n = height * width
        padded_width = width + 2 * pad
        pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = pix < n
        y = pix // width
        x = pix % width
        d = tl.arange(0, BLOCK_D)
        dmask = d < N_DIRS
        dy = tl.load(dir_ptr + 2 * d, mask=dmask, other=0)
        dx = tl.load(dir_ptr + 2 * d + 1, mask=dmask, other=0)
        tile_mask = dmask[:, None] & pmask[None, :]
        # The pair (j, j + d) is in the image iff j + d is; the pair (j - d, j) iff j - d is (dy >= 0).
        fwd_valid = tile_mask & ((y[None, :] + dy[:, None]) < height)
        fwd_valid = fwd_valid & ((x[None, :] + dx[:, None]) >= 0) & ((x[None, :] + dx[:, None]) < width)
        bwd_valid = tile_mask & ((y[None, :] - dy[:, None]) >= 0)
        bwd_valid = bwd_valid & ((x[None, :] - dx[:, None]) >= 0) & ((x[None, :] - dx[:, None]) < width)

        # Running maximum of the edge along each path, from the pair's source: j for forward pairs, j - d for
        # backward pairs. Masked-in addresses stay inside the padded map (paths span at most r - 1 each way).
        edge_base = edge_ptr + b * (height + 2 * pad) * padded_width
        center = (y + pad) * padded_width + (x + pad)
        fwd_src = center[None, :] + 0 * d[:, None]
        bwd_src = fwd_src - (dy * padded_width + dx)[:, None]
        fwd_peak = tl.load(edge_base + fwd_src, mask=tile_mask, other=1.0)
        bwd_peak = tl.load(edge_base + bwd_src, mask=tile_mask, other=1.0)
        for i in range(0, PATH_LEN):
            step = tl.load(path_ptr + d * PATH_LEN + i, mask=dmask, other=0)[:, None]
            fwd_peak = tl.maximum(fwd_peak, tl.load(edge_base + (fwd_src + step), mask=tile_mask, other=1.0))
            bwd_peak = tl.maximum(bwd_peak, tl.load(edge_base + (bwd_src + step), mask=tile_mask, other=1.0))

        # A^beta = exp2(beta * log2(1 - max)) where 1 - max > 0, else 0; zero for pairs leaving the image.
        beta = tl.load(beta_ptr)
        fwd_aff = 1.0 - fwd_peak
        fwd_pos = fwd_valid & (fwd_aff > 0)
        fwd = tl.where(fwd_pos, tl.exp2(beta * tl.log2(tl.where(fwd_pos, fwd_aff, 1.0))), 0.0)
        bwd_aff = 1.0 - bwd_peak
        bwd_pos = bwd_valid & (bwd_aff > 0)
        bwd = tl.where(bwd_pos, tl.exp2(beta * tl.log2(tl.where(bwd_pos, bwd_aff, 1.0))), 0.0)

        colsum = 1.0 + tl.sum(fwd, axis=0) + tl.sum(bwd, axis=0)
        w_base = w_ptr + b * (2 * N_DIRS + 1) * n
        tl.store(w_base + pix, 1.0 / colsum, mask=pmask)
        rows = (1 + d)[:, None] * n + pix[None, :]
        tl.store(w_base + rows, fwd / colsum[None, :], mask=tile_mask)
        tl.store(w_base + N_DIRS * n + rows, bwd / colsum[None, :], mask=tile_mask)

    @triton.jit
    def _step_kernel(
        src_ptr,  # (B, K, h + 2 pad, w + 2 pad) x with a zero border, compute dtype, contiguous
        dst_ptr,  # the same shape, a different buffer: its interior receives x T
        w_ptr,  # (B, taps, h, w) weights of transition_taps, compute dtype, contiguous
        off_ptr,  # (taps,) int32 tap offsets dy * (w + 2 pad) + dx; tap 0 is the pixel itself
        classes,
        height,
        width,
        pad,
        N_TAPS: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_k = tl.program_id(1)
        b = tl.program_id(2).to(tl.int64)
        n = height * width
        padded_width = width + 2 * pad
        plane = (height + 2 * pad) * padded_width
        pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        pmask = pix < n
        center = (pix // width + pad) * padded_width + (pix % width + pad)
        k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        kmask = k < classes
        tile_mask = kmask[:, None] & pmask[None, :]
        offsets = ((b * classes + k.to(tl.int64)) * plane)[:, None] + center[None, :]
        src_ptrs = src_ptr + offsets
        w_ptrs = w_ptr + b * N_TAPS * n + pix

        acc = tl.load(w_ptrs, mask=pmask, other=0.0)[None, :] * tl.load(src_ptrs, mask=tile_mask, other=0.0)
        for t in range(1, N_TAPS):
            shift = tl.load(off_ptr + t)
            weight = tl.load(w_ptrs + t * n, mask=pmask, other=0.0)
            acc += weight[None, :] * tl.load(src_ptrs + shift, mask=tile_mask, other=0.0)
        tl.store(dst_ptr + offsets, acc, mask=tile_mask)


def _require_triton() -> None:
    if triton is None:
        raise RuntimeError("the triton backend of random_walk needs triton, which is not installed")


@torch.no_grad()
def _transition_taps_triton(edge: torch.Tensor, beta: float, radius: int) -> tuple[Offsets, torch.Tensor]:
    """Kernel 1: `transition_taps` in one Triton launch, with its (offsets, weights) contract and layout.

    Weights are computed in `_compute_dtype(edge.dtype)`. A^beta is exp2(beta * log2(A)): torch's pow up to
    rounding (on a GPU the fp32 exp2 is the fast approximation, ~1e-6 relative). Boundary probabilities are
    in [0, 1]; an edge above 1 (A < 0) gives weight 0 here, where torch.pow gives |A|^beta or NaN.
    """
    _require_triton()
    edge = edge if edge.dim() == 4 else edge.unsqueeze(1)
    dtype = _compute_dtype(edge.dtype)
    batch, _, height, width = edge.shape
    directions = half_disc_directions(radius)
    offsets = [(0, 0)] + list(directions) + [(-dy, -dx) for dy, dx in directions]
    weights = torch.empty(batch, len(offsets), height, width, dtype=dtype, device=edge.device)
    if weights.numel() == 0:
        return offsets, weights
    pad = radius - 1
    padded = F.pad(edge.detach().to(dtype), (pad, pad, pad, pad), mode="constant", value=1.0).contiguous()
    flat_dirs, flat_paths, path_len = _direction_tables(radius, width + 2 * pad)
    n = height * width
    block_d = next_pow2(max(1, len(directions)))
    block_p = pow2_block(n, 16, TAPS_TILE // block_d)
    with on_device(padded):
        _taps_kernel[(triton.cdiv(n, block_p), batch)](
            padded,
            _device_table((float(beta),), dtype, edge.device),
            _int_table(flat_dirs, edge.device),
            _int_table(flat_paths, edge.device),
            weights,
            height,
            width,
            pad,
            N_DIRS=len(directions),
            PATH_LEN=path_len,
            BLOCK_D=block_d,
            BLOCK_P=block_p,
            num_warps=TAPS_NUM_WARPS,
        )
    return offsets, weights


@torch.no_grad()
def _apply_taps_triton(
    x: torch.Tensor, offsets: Sequence[tuple[int, int]], weights: torch.Tensor, steps: int
) -> torch.Tensor:
    """Kernel 2: `apply_taps` as one `_step_kernel` launch per step, ping-pong between two zero-bordered buffers.

    `x`: (B, K, h, w); `weights`: (B, taps, h, w), cast to x's dtype; offsets[0] must be (0, 0). Returns a new
    contiguous tensor (x is not modified).
    """
    _require_triton()
    if tuple(offsets[0]) != (0, 0):
        raise ValueError(f"tap 0 must be the pixel itself (0, 0), got {offsets[0]}")
    batch, classes, height, width = x.shape
    if steps == 0 or x.numel() == 0:
        return x.clone(memory_format=torch.contiguous_format)
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    padded_width = width + 2 * pad
    buffers = [x.new_zeros(batch, classes, height + 2 * pad, padded_width) for _ in range(2)]
    buffers[0][:, :, pad : pad + height, pad : pad + width] = x
    weights = weights.to(x.dtype).contiguous()
    table = _int_table([dy * padded_width + dx for dy, dx in offsets], x.device)
    n = height * width
    block_k = min(STEP_BLOCK_K, next_pow2(classes))
    block_p = pow2_block(n, 16, STEP_BLOCK_P)
    grid = (triton.cdiv(n, block_p), triton.cdiv(classes, block_k), batch)
    src, dst = buffers
    with on_device(x):
        for _ in range(steps):
            _step_kernel[grid](
                src,
                dst,
                weights,
                table,
                classes,
                height,
                width,
                pad,
                N_TAPS=len(offsets),
                BLOCK_K=block_k,
                BLOCK_P=block_p,
                num_warps=STEP_NUM_WARPS,
            )
            src, dst = dst, src
    return src[:, :, pad : pad + height, pad : pad + width].contiguous()


@torch.no_grad()
def _random_walk_triton(
    cams: torch.Tensor, edge: torch.Tensor, beta: float = 10.0, exp_times: int = 8, radius: int = 5
) -> torch.Tensor:
    """The "triton" backend: `random_walk_reference`'s contract (shapes, dtypes, fp32 accumulation), two kernels.

    Kernel 1 (`_transition_taps_triton`) builds the column-normalised A^beta taps from the boundary map in one
    launch; x = cams * (1 - edge) is one torch op; kernel 2 (`_apply_taps_triton`) runs the 2^exp_times steps,
    ONE LAUNCH PER STEP with ping-pong buffers (see the design comment above `_taps_kernel`), no host
    synchronisation (capturable in a CUDA graph). Runs on CUDA tensors, or on CPU tensors under
    TRITON_INTERPRET=1 (the tests).
    """
    _check(cams, edge, beta, exp_times, radius)
    _require_triton()
    squeeze = cams.dim() == 3
    x = cams.unsqueeze(0) if squeeze else cams
    batch, _, height, width = x.shape
    dtype = _compute_dtype(cams.dtype)
    edge4 = edge.detach().reshape(batch, 1, height, width).to(dtype)
    offsets, weights = _transition_taps_triton(edge4, beta, radius)
    out = _apply_taps_triton(x.detach().to(dtype) * (1.0 - edge4), offsets, weights, 2**exp_times)
    out = out.to(cams.dtype)
    return out.squeeze(0) if squeeze else out


@torch.no_grad()
def _random_walk_cuda(
    cams: torch.Tensor,
    edge: torch.Tensor,
    beta: float = 10.0,
    exp_times: int = 8,
    radius: int = 5,
    launch: str = "auto",
) -> torch.Tensor:
    """The "cuda" backend (csrc/random_walk.cu via fastwsss._C): the taps from Triton's kernel 1 where triton
    can run compiled (else `transition_taps`), then the 2^exp_times steps in hand-written CUDA, fp32: by default
    in one persistent cooperative launch (`launch`: see `cuda_ext.WALK_LAUNCHES`)."""
    _check(cams, edge, beta, exp_times, radius)
    squeeze = cams.dim() == 3
    x = cams.unsqueeze(0) if squeeze else cams
    batch, _, height, width = x.shape
    edge4 = edge.detach().reshape(batch, 1, height, width).float()
    taps = _transition_taps_triton if triton is not None and triton_runs_on(edge4) else transition_taps
    offsets, weights = taps(edge4, beta, radius)
    x = x.detach().float() * (1.0 - edge4)
    out = random_walk_steps_cuda(x, offsets, weights, 2**exp_times, launch).to(cams.dtype)
    return out.squeeze(0) if squeeze else out


_IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float, int, int], torch.Tensor]] = {
    "reference": random_walk_reference,
}
if triton is not None:
    _IMPLEMENTATIONS["triton"] = _random_walk_triton
_IMPLEMENTATIONS["cuda"] = _random_walk_cuda  # runs only where fastwsss._C is built (see kernels/dispatch.py)
register_backends(OP, _IMPLEMENTATIONS)


def random_walk(
    cams: torch.Tensor, edge: torch.Tensor, beta: float = 10.0, exp_times: int = 8, radius: int = 5
) -> torch.Tensor:
    """Public entry point: same result as `random_walk_reference`, on the backend `kernel_backend` picks.

    The CUDA extension computes in fp32, so float64 inputs go to the next backend when the choice is
    automatic (Triton keeps fp64); forcing FASTWSSS_KERNELS=cuda with float64 inputs is a TypeError.
    """
    _check(cams, edge, beta, exp_times, radius)
    backend = kernel_backend(cams, OP)
    if backend == "cuda" and torch.float64 in (cams.dtype, edge.dtype):
        if forced_backend(OP) == "cuda":
            raise TypeError("FASTWSSS_KERNELS=cuda: the CUDA random walk computes in float32; got float64 inputs")
        backend = "triton" if "triton" in _IMPLEMENTATIONS else "reference"
    return _IMPLEMENTATIONS[backend](cams, edge, beta, exp_times, radius)
