"""confounder_attention: CONTA's context adjustment M(x) over the confounder set (docs/algorithms.md section 7, Eq. 3).

For an image whose predicted mask, flattened to hw values, is x_m, and the confounder set C = {c_1..c_n}
(c_i: the average mask of class i at the same hw resolution) with prior P(c_i):

    alpha_i = softmax_i( (W1 x_m)^T (W2 c_i) / sqrt(n) )
    M(x)    = sum_i alpha_i c_i P(c_i)                              (P(c_i) = 1/n by default)

Shapes, batched over B images: xm (B, hw), W1 and W2 (n, hw), C (n, hw) with row i = c_i, prior (n,).
With q = xm W1^T (B, n) and k = C W2^T (n, n), row i = W2 c_i, the scores are q k^T / sqrt(n) (B, n),
alpha is their row softmax and M = (alpha * prior) C (B, hw).

Cost: one (B, hw) x (hw, n) product (q), one (n, hw) x (hw, n) product (k, shared by the batch), one
(B, n) x (n, n) product (scores) and one (B, n) x (n, hw) product (M): 2 n hw (2B + n) + 2 B n^2 FLOPs,
O(n^2 + B n) intermediates besides the (B, hw) output. hw is large (64 x 64 by default, 513^2 in the CONTA
port) and n small (the classes), so the three hw-long products dominate.

W1 and W2 are learnable and trained together with the classifier, so the op needs a backward: the reference
is plain differentiable torch (autograd gives gradients for xm, W1, W2, C and the prior); the Triton backend
is a torch.autograd.Function with its own Triton backward (gradients for every input too).

Layout of the op module (as `cam_norm`): `confounder_attention_reference` (pure torch, the specification)
and `confounder_attention_weights_reference` (alpha alone, for diagnostics), both built on the same private
maths; the Triton kernels and `_confounder_attention_triton` (registered as "triton" when triton imports; fp16,
bf16 and fp32 inputs, fp32 accumulation, no fp64); the public `confounder_attention`, which asks
`kernel_backend` which one runs.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import torch

from fastwsss.kernels.dispatch import forced_backend, kernel_backend, register_backends
from fastwsss.kernels.launch import pow2_block, sm_count

OP = "confounder_attention"

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(
    xm: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    confounders: torch.Tensor,
    prior: torch.Tensor | None = None,
) -> None:
    """Shapes, dtypes and devices of the arguments; ValueError/TypeError naming the argument."""
    if xm.dim() != 2 or xm.shape[1] < 1:
        raise ValueError(f"xm must be (B, hw) with hw >= 1 (predicted masks, flattened), got {tuple(xm.shape)}")
    hw = xm.shape[1]
    if confounders.dim() != 2 or confounders.shape[0] < 1 or confounders.shape[1] != hw:
        raise ValueError(
            f"confounders must be (n, hw) with n >= 1 and hw = {hw} (from xm), got {tuple(confounders.shape)}"
        )
    n = confounders.shape[0]
    for name, weight in (("w1", w1), ("w2", w2)):
        if tuple(weight.shape) != (n, hw):
            raise ValueError(f"{name} must be (n, hw) = {(n, hw)}, got {tuple(weight.shape)}")
    named = [("xm", xm), ("w1", w1), ("w2", w2), ("confounders", confounders)]
    if prior is not None:
        if tuple(prior.shape) != (n,):
            raise ValueError(f"prior must be (n,) = {(n,)}, got {tuple(prior.shape)}")
        named.append(("prior", prior))
    for name, tensor in named:
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {tensor.dtype}")
        if tensor.device != xm.device:
            raise ValueError(f"{name} is on {tensor.device} but xm is on {xm.device}; all inputs must share a device")


def _compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 inputs, fp64 as soon as one input is fp64."""
    dtype = torch.float32
    for tensor in tensors:
        if tensor is not None:
            dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _weights(xm: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, confounders: torch.Tensor) -> torch.Tensor:
    """alpha = softmax((xm W1^T) (C W2^T)^T / sqrt(n)) on already cast, already checked inputs: (B, n)."""
    n = confounders.shape[0]
    q = xm @ w1.T  # (B, n): W1 x_m per image
    k = confounders @ w2.T  # (n, n): row i = W2 c_i
    return torch.softmax((q @ k.T) / math.sqrt(n), dim=-1)


def confounder_attention_weights_reference(
    xm: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, confounders: torch.Tensor
) -> torch.Tensor:
    """The attention alpha (B, n) of Eq. 3 over the n confounders; rows sum to 1.

    Computed in fp32 (fp64 when an input is fp64) and returned in xm's dtype; differentiable.
    """
    _check(xm, w1, w2, confounders)
    dtype = _compute_dtype(xm, w1, w2, confounders)
    alpha = _weights(xm.to(dtype), w1.to(dtype), w2.to(dtype), confounders.to(dtype))
    return alpha.to(xm.dtype)


def confounder_attention_reference(
    xm: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    confounders: torch.Tensor,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """M = sum_i alpha_i c_i P(c_i) per image: (B, hw), in xm's dtype (see the module docstring).

    `xm` (B, hw), `w1`/`w2`/`confounders` (n, hw), `prior` (n,) or None for the uniform 1/n. Accepts
    fp16/bf16/fp32/fp64 (mixed is fine); computes in fp32, or fp64 when an input is fp64 (so
    `torch.autograd.gradcheck` applies). Differentiable in every input. The prior is used as given
    (not renormalised or checked for sign: that would need a device sync).
    """
    _check(xm, w1, w2, confounders, prior)
    dtype = _compute_dtype(xm, w1, w2, confounders, prior)
    c = confounders.to(dtype)
    alpha = _weights(xm.to(dtype), w1.to(dtype), w2.to(dtype), c)
    if prior is None:
        weighted = alpha / c.shape[0]
    else:
        weighted = alpha * prior.to(dtype)
    return (weighted @ c).to(xm.dtype)


_ConfounderAttention = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor
]

# --------------------------------------------------------------------------------------------------------------
# Triton kernels (forward and backward).
#
# Every hw-long product of the op and of its backward is one of two shapes, so two kernels cover them all:
#
#   `_gram_kernel`  G = A B^T over hw: A (R, hw), B (N, hw) -> (R, N) in fp32 (q, k, and dM C^T in backward).
#                   The hw axis is split over a 1-D set of programs ("splits", x row and column tiles when R or N
#                   exceed one tile); each program streams its hw span in BLOCK_HW chunks, accumulates its
#                   (BLOCK_R, BLOCK_N) tile in fp32 registers and writes it to a (splits, R, N) fp32 buffer that
#                   torch sums over the splits: a deterministic two-stage reduction, no atomics.
#   `_mix_kernel`   Y = S X (+ S2 X2): S (R, K) small fp32, X (K, hw) -> Y (R, hw) in Y's dtype (M in forward;
#                   dxm, dW1, dW2 and dC = dk W2 + w^T dM in backward). One program per (hw block, row tile)
#                   loops over K in BLOCK_K chunks; each X element is read once per row tile (one tile when
#                   R <= 64) and each output element written once.
#
# Loads are masked and converted to fp32 (fp16/bf16/fp32 inputs, mixed allowed); products use tl.dot on fp32
# operands with input_precision="ieee" (no TF32: the reference's fp32 matmuls are IEEE, and the Triton
# interpreter mishandles bf16 dots). The tiny (B, n) / (n, n) parts (scores, softmax and its backward, dq, dk)
# are torch ops on fp32 tensors. fp64 is not offered (the kernels accumulate in fp32): see `confounder_attention`.
# --------------------------------------------------------------------------------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:  # the module, its reference and the dispatch work without triton
    triton = None
    tl = None

_HAS_TRITON = triton is not None

if _HAS_TRITON:

    @triton.jit
    def _gram_kernel(
        a_ptr,
        b_ptr,
        part_ptr,
        R,
        N,
        HW,
        blocks_per_split,
        BLOCK_R: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):
        """part[split, r, j] = sum over this split's hw span of a[r, h] * b[j, h], in fp32."""
        split = tl.program_id(0)
        rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < R
        col_ok = cols < N
        a_rows = a_ptr + rows.to(tl.int64)[:, None] * HW
        b_rows = b_ptr + cols.to(tl.int64)[:, None] * HW
        offs = tl.arange(0, BLOCK_HW)
        start = split.to(tl.int64) * blocks_per_split * BLOCK_HW
        acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
        for blk in range(0, blocks_per_split):
            h = start + blk * BLOCK_HW + offs
            h_ok = h < HW
            a = tl.load(a_rows + h[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)
            b = tl.load(b_rows + h[None, :], mask=col_ok[:, None] & h_ok[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(a, tl.trans(b), input_precision="ieee")
        out = part_ptr + split.to(tl.int64) * R * N + rows[:, None] * N + cols[None, :]
        tl.store(out, acc, mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit
    def _mix_kernel(
        s_ptr,
        x_ptr,
        s2_ptr,
        x2_ptr,
        y_ptr,
        R,
        K,
        K2,
        HW,
        HAS_SECOND: tl.constexpr,
        BLOCK_R: tl.constexpr,
        BLOCK_K: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):
        """y[r, h] = sum_k s[r, k] x[k, h] (+ sum_k s2[r, k] x2[k, h]): s, s2 fp32 (R, K), (R, K2) contiguous."""
        h = tl.program_id(0).to(tl.int64) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
        h_ok = h < HW
        row_ok = rows < R
        ks = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_R, BLOCK_HW), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + ks
            k_ok = k < K
            s = tl.load(s_ptr + rows[:, None] * K + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(
                x_ptr + k.to(tl.int64)[:, None] * HW + h[None, :], mask=k_ok[:, None] & h_ok[None, :], other=0.0
            )
            acc += tl.dot(s.to(tl.float32), x.to(tl.float32), input_precision="ieee")
        if HAS_SECOND:
            for k0 in range(0, K2, BLOCK_K):
                k = k0 + ks
                k_ok = k < K2
                s = tl.load(s2_ptr + rows[:, None] * K2 + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                x = tl.load(
                    x2_ptr + k.to(tl.int64)[:, None] * HW + h[None, :], mask=k_ok[:, None] & h_ok[None, :], other=0.0
                )
                acc += tl.dot(s.to(tl.float32), x.to(tl.float32), input_precision="ieee")
        y = y_ptr + rows.to(tl.int64)[:, None] * HW + h[None, :]
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=row_ok[:, None] & h_ok[None, :])


def _interpreted(tensor: torch.Tensor) -> bool:
    """True when the kernels run in the Triton interpreter (CPU tensors, or TRITON_INTERPRET=1)."""
    return not tensor.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (R, hw) @ b (N, hw)^T in fp32, both contiguous: (R, N) fp32."""
    rows, hw = a.shape
    cols = b.shape[0]
    if rows == 0 or cols == 0:
        return torch.zeros(rows, cols, dtype=torch.float32, device=a.device)
    if _interpreted(a):
        # Few, large programs: the interpreter costs ~1 ms per program instance, not per element.
        block_r, block_n, block_hw, num_warps = pow2_block(rows, 16, 128), pow2_block(cols, 16, 128), pow2_block(hw, 16, 1024), 4
        target = 4
    else:
        # fp32 FMA dots hold both operand tiles in registers: these tiles and warp counts compile for sm_90 with
        # <= 168 registers and no spills (ptxas -v, triton 3.8).
        block_r, block_n, block_hw = pow2_block(rows, 16, 64), pow2_block(cols, 16, 64), 32
        num_warps = 8 if block_r * block_n >= 2048 else 4
        target = 2 * sm_count(a.device)  # about two programs per SM, split over the hw axis
    tiles = triton.cdiv(rows, block_r) * triton.cdiv(cols, block_n)
    blocks = triton.cdiv(hw, block_hw)
    splits = max(1, min(blocks, target // tiles))
    blocks_per_split = triton.cdiv(blocks, splits)
    splits = triton.cdiv(blocks, blocks_per_split)  # no empty split
    partial = torch.empty(splits, rows, cols, dtype=torch.float32, device=a.device)
    grid = (splits, triton.cdiv(rows, block_r), triton.cdiv(cols, block_n))
    _gram_kernel[grid](
        a,
        b,
        partial,
        rows,
        cols,
        hw,
        blocks_per_split,
        BLOCK_R=block_r,
        BLOCK_N=block_n,
        BLOCK_HW=block_hw,
        num_warps=num_warps,
    )
    return partial[0] if splits == 1 else partial.sum(dim=0)


def _mix(
    s: torch.Tensor,
    x: torch.Tensor,
    dtype: torch.dtype,
    s2: torch.Tensor | None = None,
    x2: torch.Tensor | None = None,
) -> torch.Tensor:
    """s (R, K) @ x (K, hw) (+ s2 (R, K2) @ x2 (K2, hw)) in fp32, returned in `dtype`; x, x2 contiguous."""
    if dtype == torch.bfloat16 and _interpreted(x):
        # The Triton interpreter rounds fp32 -> bf16 towards zero (compiled Triton rounds to nearest even):
        # store fp32 there and let torch round, so that results match the reference's single rounding.
        return _mix(s, x, torch.float32, s2, x2).to(dtype)
    rows, inner = s.shape
    hw = x.shape[1]
    y = torch.empty(rows, hw, dtype=dtype, device=x.device)
    if rows == 0:
        return y
    s = s.to(torch.float32).contiguous()
    has_second = s2 is not None and x2 is not None and s2.shape[1] > 0
    if has_second:
        s2 = s2.to(torch.float32).contiguous()
        inner2 = s2.shape[1]
        widest = max(inner, inner2)
    else:
        s2, x2, inner2, widest = s, x, 0, inner
    if inner == 0 and not has_second:
        return y.zero_()
    if _interpreted(x):
        block_r, block_k, block_hw = pow2_block(rows, 16, 128), pow2_block(widest, 16, 128), pow2_block(hw, 16, 1024)
        num_warps = 4
    else:
        # As in `_gram`: <= 128 registers, no spills on sm_90 for these tiles.
        block_r, block_k = pow2_block(rows, 16, 64), 16
        block_hw = 128 if block_r <= 32 else 64
        num_warps = 8 if block_r * block_hw >= 4096 else 4
    grid = (triton.cdiv(hw, block_hw), triton.cdiv(rows, block_r))
    _mix_kernel[grid](
        s,
        x,
        s2,
        x2,
        y,
        rows,
        inner,
        inner2,
        hw,
        HAS_SECOND=has_second,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        BLOCK_HW=block_hw,
        num_warps=num_warps,
    )
    return y


class _ConfounderAttentionFunction(torch.autograd.Function):
    """Eq. 3 with Triton kernels for every hw-long product, forward and backward.

    Saves only what the requested gradients need: of the inputs (references, no copies) xm for dW1, W1 for
    dxm, W2 for dC and C for all, and of the small fp32 intermediates k (n, n) for dxm/dW1, q (B, n) for
    dW2/dC, alpha (B, n) always; never M. Gradients come back in each input's dtype.
    """

    @staticmethod
    def forward(ctx, xm, w1, w2, confounders, prior):  # type: ignore[override]
        n = confounders.shape[0]
        xm_c, w1_c, w2_c, c_c = (t.contiguous() for t in (xm, w1, w2, confounders))
        q = _gram(xm_c, w1_c)  # (B, n) = xm W1^T
        k = _gram(c_c, w2_c)  # (n, n) = C W2^T, row i = W2 c_i
        alpha = torch.softmax((q @ k.T) / math.sqrt(n), dim=-1)
        weighted = alpha / n if prior is None else alpha * prior.to(torch.float32)
        out = _mix(weighted, c_c, xm.dtype)  # M = (alpha * prior) C
        need_xm, need_w1, need_w2, need_c, _ = ctx.needs_input_grad
        ctx.dtypes = (xm.dtype, w1.dtype, w2.dtype)
        ctx.save_for_backward(
            xm if need_w1 else None,
            w1 if need_xm else None,
            w2 if need_c else None,
            confounders,
            prior,
            q if need_w2 or need_c else None,
            k if need_xm or need_w1 else None,
            alpha,
        )
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        xm, w1, w2, confounders, prior, q, k, alpha = ctx.saved_tensors
        need_xm, need_w1, need_w2, need_c, need_prior = ctx.needs_input_grad
        xm_dtype, w1_dtype, w2_dtype = ctx.dtypes
        grads: list[torch.Tensor | None] = [None] * 5
        if not any(ctx.needs_input_grad):
            return tuple(grads)
        n = confounders.shape[0]
        c_c = confounders.contiguous()
        grad_out = grad_out.contiguous()
        d_weighted = _gram(grad_out, c_c)  # (B, n) = dM C^T
        if prior is None:
            weighted, d_alpha = alpha / n, d_weighted / n
        else:
            p = prior.to(torch.float32)
            weighted, d_alpha = alpha * p, d_weighted * p
            if need_prior:
                grads[4] = (d_weighted * alpha).sum(dim=0).to(prior.dtype)
        # Softmax backward, with the 1/sqrt(n) of the scores folded in.
        d_scores = alpha * (d_alpha - (d_alpha * alpha).sum(dim=-1, keepdim=True)) / math.sqrt(n)
        if need_xm or need_w1:
            dq = d_scores @ k  # (B, n)
            if need_xm:
                grads[0] = _mix(dq, w1.contiguous(), xm_dtype)  # dq W1
            if need_w1:
                grads[1] = _mix(dq.T, xm.contiguous(), w1_dtype)  # dq^T xm
        if need_w2 or need_c:
            dk = d_scores.T @ q  # (n, n)
            if need_w2:
                grads[2] = _mix(dk.T, c_c, w2_dtype)  # dk^T C
            if need_c:
                grads[3] = _mix(dk, w2.contiguous(), confounders.dtype, weighted.T, grad_out)  # dk W2 + w^T dM
        return tuple(grads)


def _confounder_attention_triton(
    xm: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    confounders: torch.Tensor,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same result as `confounder_attention_reference` (fp32 accumulation), with Triton kernels forward and
    backward. fp16/bf16/fp32 inputs (mixed allowed); fp64 raises TypeError (use the reference)."""
    _check(xm, w1, w2, confounders, prior)
    if _has_float64(xm, w1, w2, confounders, prior):
        raise TypeError(
            "the triton confounder_attention computes in fp32 and does not take float64 inputs; "
            "use the reference (FASTWSSS_KERNELS=reference, or leave FASTWSSS_KERNELS unset)"
        )
    return _ConfounderAttentionFunction.apply(xm, w1, w2, confounders, prior)


def _has_float64(*tensors: torch.Tensor | None) -> bool:
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


_IMPLEMENTATIONS: dict[str, _ConfounderAttention] = {
    "reference": confounder_attention_reference,
}
if _HAS_TRITON:
    _IMPLEMENTATIONS["triton"] = _confounder_attention_triton
register_backends(OP, _IMPLEMENTATIONS)


def confounder_attention(
    xm: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    confounders: torch.Tensor,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Public entry point: same result as `confounder_attention_reference`, on the backend `kernel_backend` picks.

    The Triton kernels accumulate in fp32, so float64 inputs (gradcheck, verification) run the reference when
    the backend is chosen automatically; forcing FASTWSSS_KERNELS=triton with float64 inputs is a TypeError.
    """
    _check(xm, w1, w2, confounders, prior)
    backend = kernel_backend(xm, OP)
    if backend == "triton" and forced_backend(OP) is None and _has_float64(xm, w1, w2, confounders, prior):
        backend = "reference"
    return _IMPLEMENTATIONS[backend](xm, w1, w2, confounders, prior)
