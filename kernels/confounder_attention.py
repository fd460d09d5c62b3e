"""confounder_attention: CONTA's context adjustment M(x) over the confounder set (ALGORITHMS.md s. 7, Eq. 3).

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
is plain differentiable torch (autograd gives gradients for xm, W1, W2, C and the prior). A fused kernel
must come with its own backward (a torch.autograd.Function) before it can replace it in training.

Layout of the op module (as `cam_norm`): `confounder_attention_reference` (pure torch, the specification)
and `confounder_attention_weights_reference` (alpha alone, for diagnostics), both built on the same private
maths; the kernels (a fused Triton kernel is planned; add it as `_confounder_attention_triton` and list it in
`_IMPLEMENTATIONS`); the public `confounder_attention`, which asks `kernel_backend` which one runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from fastwsss.kernels.dispatch import kernel_backend, register_backends

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

_IMPLEMENTATIONS: dict[str, _ConfounderAttention] = {
    "reference": confounder_attention_reference,
}
register_backends(OP, _IMPLEMENTATIONS)


def confounder_attention(
    xm: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    confounders: torch.Tensor,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Public entry point: same result as `confounder_attention_reference`, on the backend `kernel_backend` picks."""
    _check(xm, w1, w2, confounders, prior)
    return _IMPLEMENTATIONS[kernel_backend(xm, OP)](xm, w1, w2, confounders, prior)
