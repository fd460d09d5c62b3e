"""cam_norm: ReLU, then divide each (image, class) map by its spatial maximum + eps (docs/algorithms.md section 2).

relu(cams) / (max_{h,w} relu(cams) + eps) per (image, class), dispatched by `kernel_backend` (op "cam_norm").

Layout: `cam_norm_reference` (pure torch, the specification), the Triton kernels (`_cam_norm_triton`,
registered only when triton imports), and the public function.

Triton scheme. Planes are (b, k) maps of n = H * W pixels, read through the input strides (no copy for a
cropped or otherwise non-contiguous view); all maths is fp32 whatever the input dtype (fp16, bf16, fp32 and
fp64, like the reference, which also computes fp64 input in fp32), the division is IEEE-rounded
(`tl.math.div_rn`) so fp32 results equal the reference's bit for bit. A program owns a tile of ROWS planes
x BLOCK pixels (ROWS > 1 packs many small planes into one program) and loops over the pixels in BLOCK
steps; ROWS, BLOCK and num_warps are fixed by a small heuristic on n, no autotuning.
* Few planes or small planes (one "chunk" per plane): one fused launch, two passes per program (max, then
  scale; the second pass mostly hits L2).
* Big planes and too few planes to fill the GPU: each plane is split into C chunks; a first launch writes
  the partial maxima (P, C), a second one reduces the C partials of its planes and scales its chunk. On a
  GPU the two launches run per group of planes that fits in a third of the L2 (contiguous inputs), so the
  second read hits the cache: ~2N bytes from memory instead of 3N (target: 80% of copy bandwidth, docs/gpu.md).
NaN and inf follow the reference: a plane holding a NaN normalises to NaN (the maxima propagate NaN, which
`tl.max` and `tl.maximum` drop by default).
The output of `cam_norm` is contiguous (the reference keeps the input's memory format; values are equal).
Empty inputs (a zero-size dimension) give empty outputs without a launch.
Under TRITON_INTERPRET=1 the fp32 -> bf16 store truncates instead of rounding to nearest (an interpreter
limitation; on a GPU the cast rounds to nearest even like torch), so bf16 may differ by one ulp there.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fastwsss.kernels.cuda_ext import cam_norm_cuda
from fastwsss.kernels.dispatch import kernel_backend, register_backends
from fastwsss.kernels.launch import l2_bytes, next_pow2, on_device, pow2_block, sm_count

try:  # triton is optional (Linux only): without it only the reference backends are registered.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

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


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------

_MAX_BLOCK = 1024  # pixels per loop step of one plane
_MIN_BLOCK = 16
_TILE = 2048  # ROWS * BLOCK elements per loop step
_SPLIT_MIN_PIXELS = 16384  # planes up to this size are never split into chunks
_CHUNK_MIN_PIXELS = 4096  # the smallest chunk worth its own program
_PROGRAMS_PER_SM = 4

if triton is not None:

    @triton.jit
    def _nan_max(values, axis: tl.constexpr):
        """tl.max over `axis` that returns NaN where a NaN is among the values, like torch.amax (tl.max drops
        NaN: the reference turns a plane holding a NaN into NaN, and so must the kernels)."""
        has_nan = tl.max((values != values).to(tl.int32), axis=axis) > 0
        return tl.where(has_nan, float("nan"), tl.max(values, axis=axis))

    @triton.jit
    def _plane_offsets(rows, cols, K, W, stride_b, stride_k, stride_h, stride_w, PLANE_CONTIGUOUS: tl.constexpr):
        """Element offsets of pixels `cols` (flat h * W + w) of planes `rows` (flat b * K + k): [ROWS, BLOCK]."""
        row_base = (rows // K).to(tl.int64) * stride_b + (rows % K).to(tl.int64) * stride_k
        if PLANE_CONTIGUOUS:
            col_off = cols.to(tl.int64)
        else:
            col_off = (cols // W).to(tl.int64) * stride_h + (cols % W).to(tl.int64) * stride_w
        return row_base[:, None] + col_off[None, :]

    @triton.jit
    def _relu_max(
        x_ptr,
        rows,
        row_mask,
        start,
        stop,
        n_pixels,
        K,
        W,
        stride_b,
        stride_k,
        stride_h,
        stride_w,
        PLANE_CONTIGUOUS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """max(0, max of x) over pixels [start, min(stop, n_pixels)) of each plane in `rows`, fp32 [ROWS]."""
        acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
        for i0 in range(start, stop, BLOCK):
            cols = i0 + tl.arange(0, BLOCK)
            mask = row_mask[:, None] & (cols < n_pixels)[None, :]
            offs = _plane_offsets(rows, cols, K, W, stride_b, stride_k, stride_h, stride_w, PLANE_CONTIGUOUS)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc = tl.maximum(acc, x, propagate_nan=tl.PropagateNan.ALL)
        return _nan_max(acc, 1)

    @triton.jit
    def _relu_scale(
        x_ptr,
        out_ptr,
        denom,
        rows,
        row_mask,
        start,
        stop,
        n_pixels,
        K,
        W,
        stride_b,
        stride_k,
        stride_h,
        stride_w,
        PLANE_CONTIGUOUS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """out = relu(x) / denom (per row) over pixels [start, min(stop, n_pixels)); out is contiguous."""
        denom_tile = tl.broadcast_to(denom[:, None], (ROWS, BLOCK))
        out_base = rows.to(tl.int64) * n_pixels
        for i0 in range(start, stop, BLOCK):
            cols = i0 + tl.arange(0, BLOCK)
            mask = row_mask[:, None] & (cols < n_pixels)[None, :]
            offs = _plane_offsets(rows, cols, K, W, stride_b, stride_k, stride_h, stride_w, PLANE_CONTIGUOUS)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.math.div_rn(tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL), denom_tile)
            out_offs = out_base[:, None] + cols[None, :]
            tl.store(out_ptr + out_offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _cam_norm_fused_kernel(
        x_ptr,
        out_ptr,
        n_planes,
        n_pixels,
        K,
        W,
        stride_b,
        stride_k,
        stride_h,
        stride_w,
        eps,
        PLANE_CONTIGUOUS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One program per ROWS whole planes: pass 1 the maxima, pass 2 the scaled maps."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_planes
        peak = _relu_max(
            x_ptr, rows, row_mask, 0, n_pixels, n_pixels, K, W, stride_b, stride_k, stride_h, stride_w,
            PLANE_CONTIGUOUS, ROWS, BLOCK,
        )  # fmt: skip
        _relu_scale(
            x_ptr, out_ptr, peak + eps, rows, row_mask, 0, n_pixels, n_pixels, K, W,
            stride_b, stride_k, stride_h, stride_w, PLANE_CONTIGUOUS, ROWS, BLOCK,
        )  # fmt: skip

    @triton.jit
    def _partial_max_kernel(
        x_ptr,
        partial_ptr,
        n_planes,
        n_pixels,
        K,
        W,
        stride_b,
        stride_k,
        stride_h,
        stride_w,
        chunk,
        n_chunks,
        PLANE_CONTIGUOUS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """Grid (plane tiles, chunks): partial[p, c] = max(0, max of chunk c of plane p); chunk % BLOCK == 0."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_planes
        start = tl.program_id(1) * chunk
        peak = _relu_max(
            x_ptr, rows, row_mask, start, start + chunk, n_pixels, K, W, stride_b, stride_k, stride_h, stride_w,
            PLANE_CONTIGUOUS, ROWS, BLOCK,
        )  # fmt: skip
        tl.store(partial_ptr + rows.to(tl.int64) * n_chunks + tl.program_id(1), peak, mask=row_mask)

    @triton.jit
    def _cam_norm_scale_kernel(
        x_ptr,
        partial_ptr,
        out_ptr,
        n_planes,
        n_pixels,
        K,
        W,
        stride_b,
        stride_k,
        stride_h,
        stride_w,
        chunk,
        n_chunks,
        eps,
        PLANE_CONTIGUOUS: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK: tl.constexpr,
        CHUNKS_BLOCK: tl.constexpr,
    ):
        """Grid (plane tiles, chunks): reduce the partial maxima of the tile's planes, scale chunk c."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        row_mask = rows < n_planes
        c = tl.arange(0, CHUNKS_BLOCK)
        partial = tl.load(
            partial_ptr + rows.to(tl.int64)[:, None] * n_chunks + c[None, :],
            mask=row_mask[:, None] & (c < n_chunks)[None, :],
            other=0.0,
        )
        peak = _nan_max(partial, 1)
        start = tl.program_id(1) * chunk
        _relu_scale(
            x_ptr, out_ptr, peak + eps, rows, row_mask, start, start + chunk, n_pixels, K, W,
            stride_b, stride_k, stride_h, stride_w, PLANE_CONTIGUOUS, ROWS, BLOCK,
        )  # fmt: skip

def _plane_groups(n_planes: int, plane_bytes: int, budget_bytes: int) -> list[tuple[int, int]]:
    """Consecutive plane ranges of at most `budget_bytes` each (at least one plane), or one range without a budget.

    The split scheme reads every plane twice (maxima, then scaling): run on groups that fit in the L2, the second
    read hits the cache and the kernel moves ~2N bytes from memory instead of 3N.
    """
    if budget_bytes <= 0 or n_planes * plane_bytes <= budget_bytes:
        return [(0, n_planes)]
    per_group = max(1, budget_bytes // max(1, plane_bytes))
    return [(start, min(start + per_group, n_planes)) for start in range(0, n_planes, per_group)]


def _target_programs(cams: torch.Tensor) -> int:
    """Programs that fill the device: a few per SM on a GPU; 1 under the CPU interpreter (fewest programs)."""
    if not cams.is_cuda:
        return 1
    return _PROGRAMS_PER_SM * sm_count(cams.device)


def _plane_config(n_planes: int, n_pixels: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK, num_warps) for tiles of ROWS planes x BLOCK pixels."""
    block = pow2_block(n_pixels, _MIN_BLOCK, _MAX_BLOCK)
    rows = max(1, min(_TILE // block, next_pow2(n_planes)))
    num_warps = 4 if rows * block <= 1024 else 8
    return rows, block, num_warps


def _num_chunks(cams: torch.Tensor, n_plane_tiles: int, n_pixels: int) -> int:
    if n_pixels <= _SPLIT_MIN_PIXELS:
        return 1
    wanted = math.ceil(_target_programs(cams) / n_plane_tiles)
    return max(1, min(wanted, n_pixels // _CHUNK_MIN_PIXELS))


def _chunking(n_pixels: int, n_chunks: int, block: int) -> tuple[int, int]:
    """(chunk, n_chunks): chunk a multiple of BLOCK, no empty chunk."""
    chunk = math.ceil(math.ceil(n_pixels / max(1, n_chunks)) / block) * block
    return chunk, math.ceil(n_pixels / chunk)


def _launch_args(cams: torch.Tensor) -> tuple[int, int, int, int, int, int, bool]:
    """(K, W, stride_b, stride_k, stride_h, stride_w, plane_contiguous) of a (B, K, H, W) tensor."""
    _, k, h, w = cams.shape
    sb, sk, sh, sw = cams.stride()
    plane_contiguous = (sw == 1 or w == 1) and (sh == w or h == 1)
    return k, w, sb, sk, sh, sw, plane_contiguous


def _partial_maxima(cams: torch.Tensor, n_chunks: int | None) -> tuple[torch.Tensor, int, int, int, int, int]:
    """Launch `_partial_max_kernel`: (partial (P, C) fp32, chunk, C, ROWS, BLOCK, num_warps)."""
    batch, k, h, w = cams.shape
    n_planes, n_pixels = batch * k, h * w
    rows, block, num_warps = _plane_config(n_planes, n_pixels)
    tiles = math.ceil(n_planes / rows)
    chunk, n_chunks = _chunking(n_pixels, n_chunks or _num_chunks(cams, tiles, n_pixels), block)
    partial = torch.empty((n_planes, n_chunks), dtype=torch.float32, device=cams.device)
    k_, w_, sb, sk, sh, sw, contiguous = _launch_args(cams)
    _partial_max_kernel[(tiles, n_chunks)](
        cams, partial, n_planes, n_pixels, k_, w_, sb, sk, sh, sw, chunk, n_chunks,
        PLANE_CONTIGUOUS=contiguous, ROWS=rows, BLOCK=block, num_warps=num_warps,
    )  # fmt: skip
    return partial, chunk, n_chunks, rows, block, num_warps


def _cam_norm_triton(
    cams: torch.Tensor, eps: float = 1e-5, *, n_chunks: int | None = None, group_bytes: int | None = None
) -> torch.Tensor:
    """Triton `cam_norm` (see the module docstring); `n_chunks` forces the per-plane split and `group_bytes` the
    plane groups of the split scheme (tests; by default a third of the GPU's L2, no groups on the CPU)."""
    _check(cams)
    out = torch.empty(cams.shape, dtype=cams.dtype, device=cams.device)
    if out.numel() == 0:
        return out
    batch, k, h, w = cams.shape
    n_planes, n_pixels = batch * k, h * w
    k_, w_, sb, sk, sh, sw, contiguous = _launch_args(cams)
    with on_device(cams):
        rows, block, num_warps = _plane_config(n_planes, n_pixels)
        tiles = math.ceil(n_planes / rows)
        wanted = n_chunks or _num_chunks(cams, tiles, n_pixels)
        if _chunking(n_pixels, wanted, block)[1] == 1:
            _cam_norm_fused_kernel[(tiles,)](
                cams, out, n_planes, n_pixels, k_, w_, sb, sk, sh, sw, float(eps),
                PLANE_CONTIGUOUS=contiguous, ROWS=rows, BLOCK=block, num_warps=num_warps,
            )  # fmt: skip
            return out
        budget = group_bytes if group_bytes is not None else _l2_budget(cams)
        groups = _plane_groups(n_planes, n_pixels * cams.element_size(), budget)
        if len(groups) > 1 and cams.is_contiguous():  # planes as (P, 1, H, W) rows that slice into groups
            flat_in, flat_out = cams.view(n_planes, 1, h, w), out.view(n_planes, 1, h, w)
            for start, stop in groups:
                _split_scale(flat_in[start:stop], flat_out[start:stop], eps, None if n_chunks is None else wanted)
        else:
            _split_scale(cams, out, eps, wanted)
    return out


def _l2_budget(cams: torch.Tensor) -> int:
    """Bytes of input per group of the split scheme: a third of the L2 (0, no grouping, off the GPU)."""
    if not cams.is_cuda:
        return 0
    return l2_bytes(cams.device) // 3


def _split_scale(cams: torch.Tensor, out: torch.Tensor, eps: float, n_chunks: int | None) -> None:
    """The split scheme on `cams` (contiguous `out`): partial maxima per chunk, then scaling per chunk."""
    batch, k, h, w = cams.shape
    n_planes, n_pixels = batch * k, h * w
    k_, w_, sb, sk, sh, sw, contiguous = _launch_args(cams)
    partial, chunk, n_chunks, rows, block, num_warps = _partial_maxima(cams, n_chunks)
    _cam_norm_scale_kernel[(math.ceil(n_planes / rows), n_chunks)](
        cams, partial, out, n_planes, n_pixels, k_, w_, sb, sk, sh, sw, chunk, n_chunks, float(eps),
        PLANE_CONTIGUOUS=contiguous, ROWS=rows, BLOCK=block, CHUNKS_BLOCK=max(2, next_pow2(n_chunks)),
        num_warps=num_warps,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Registration and public entry points
# ----------------------------------------------------------------------------------------------------------

_IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "reference": cam_norm_reference,
}
if triton is not None:
    _IMPLEMENTATIONS["triton"] = _cam_norm_triton
_IMPLEMENTATIONS["cuda"] = cam_norm_cuda  # runs only where fastwsss._C is built (see kernels/dispatch.py)
register_backends(OP, _IMPLEMENTATIONS)


def cam_norm(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Public entry point: same result as `cam_norm_reference`, on the backend `kernel_backend` picks."""
    _check(cams)
    return _IMPLEMENTATIONS[kernel_backend(cams, OP)](cams, eps)

