"""confounder_attention (CONTA Eq. 3) against hand-computed values, a direct loop and autograd; the Triton
kernels (forward and backward, in the interpreter on CPU) against the reference; dispatch."""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

from fastwsss.kernels import confounder_attention as ca_module
from fastwsss.kernels import dispatch
from fastwsss.kernels.confounder_attention import (
    OP,
    confounder_attention,
    confounder_attention_reference,
    confounder_attention_weights_reference,
)
from fastwsss.kernels.dispatch import kernel_backend, registered_backends

# (B, n, hw): single everything, tiny, VOC's 20 classes, COCO's 80 classes on an odd grid, a 64 x 64 grid.
SHAPES = [(1, 1, 1), (2, 2, 5), (3, 20, 64), (2, 80, 7), (1, 3, 4096)]
# Output tolerance relative to the output scale max|M|: fp32 computation rounding, then for fp16/bf16 one
# rounding of the fp32 result to the dtype (unit roundoff 2^-11 and 2^-8), with a factor 2 margin.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def make_inputs(
    batch: int, n: int, hw: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks and confounders in [0, 1]; projections scaled so that the scores spread over a few units."""
    generator = torch.Generator().manual_seed(seed)
    xm = torch.rand(batch, hw, generator=generator)
    confounders = torch.rand(n, hw, generator=generator)
    w1 = torch.randn(n, hw, generator=generator) * 3.0 / math.sqrt(hw)
    w2 = torch.randn(n, hw, generator=generator) * 3.0 / math.sqrt(hw)
    return xm.to(dtype), w1.to(dtype), w2.to(dtype), confounders.to(dtype)


def direct_loop(
    xm: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    confounders: torch.Tensor,
    prior: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, alpha) in float64, one image and one confounder at a time with dot products."""
    xm, w1, w2, c = (t.double() for t in (xm, w1, w2, confounders))
    batch, hw = xm.shape
    n = c.shape[0]
    p = [1.0 / n] * n if prior is None else [float(v) for v in prior.double()]
    # k_i = W2 c_i: component j is <w2_j, c_i>.
    k = [torch.stack([torch.dot(w2[j], c[i]) for j in range(n)]) for i in range(n)]
    out = torch.zeros(batch, hw, dtype=torch.float64)
    alphas = torch.zeros(batch, n, dtype=torch.float64)
    for b in range(batch):
        q = torch.stack([torch.dot(w1[j], xm[b]) for j in range(n)])  # W1 x_m
        scores = [float(torch.dot(q, k[i])) / math.sqrt(n) for i in range(n)]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        total = sum(exps)
        for i in range(n):
            alpha = exps[i] / total
            alphas[b, i] = alpha
            out[b] += alpha * p[i] * c[i]
    return out, alphas


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTWSSS_KERNELS", raising=False)


@pytest.mark.parametrize("prior", [None, (0.25, 0.75)])
def test_hand_computed_two_confounders(prior: tuple[float, float] | None) -> None:
    x = [1.0, 2.0]
    w1 = [[0.5, -1.0], [1.5, 0.25]]
    w2 = [[1.0, 0.0], [-0.5, 2.0]]
    c = [[0.2, 0.8], [0.6, 0.4]]
    p = [0.5, 0.5] if prior is None else list(prior)
    # q = W1 x
    q = [0.5 * 1.0 + -1.0 * 2.0, 1.5 * 1.0 + 0.25 * 2.0]
    assert q == [-1.5, 2.0]
    # k_i = W2 c_i
    k0 = [1.0 * 0.2 + 0.0 * 0.8, -0.5 * 0.2 + 2.0 * 0.8]
    k1 = [1.0 * 0.6 + 0.0 * 0.4, -0.5 * 0.6 + 2.0 * 0.4]
    assert k0 == pytest.approx([0.2, 1.5]) and k1 == pytest.approx([0.6, 0.5])
    # scores_i = q . k_i / sqrt(2): 2.7 / sqrt(2) and 0.1 / sqrt(2)
    s0 = (q[0] * k0[0] + q[1] * k0[1]) / math.sqrt(2.0)
    s1 = (q[0] * k1[0] + q[1] * k1[1]) / math.sqrt(2.0)
    a0 = math.exp(s0) / (math.exp(s0) + math.exp(s1))
    a1 = math.exp(s1) / (math.exp(s0) + math.exp(s1))
    assert 0.86 < a0 < 0.87  # far from uniform and from one-hot: the softmax is really exercised
    expected = [a0 * p[0] * c[0][h] + a1 * p[1] * c[1][h] for h in range(2)]

    prior_t = None if prior is None else torch.tensor(prior)
    args = (torch.tensor([x]), torch.tensor(w1), torch.tensor(w2), torch.tensor(c))
    out = confounder_attention(*args, prior_t)
    assert out.shape == (1, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([expected]), rtol=0, atol=1e-6)
    alpha = confounder_attention_weights_reference(*args)
    torch.testing.assert_close(alpha, torch.tensor([[a0, a1]]), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_direct_loop(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    batch, n, hw = shape
    xm, w1, w2, confounders = make_inputs(batch, n, hw, seed=sum(shape), dtype=dtype)
    out = confounder_attention(xm, w1, w2, confounders)
    assert out.dtype == dtype and out.shape == (batch, hw)
    torch.testing.assert_close(out, confounder_attention_reference(xm, w1, w2, confounders), rtol=0, atol=0)
    # The oracle reads the same (rounded) inputs exactly, in float64: what remains is the computation and
    # the final rounding to `dtype`.
    expected, alpha = direct_loop(xm, w1, w2, confounders)
    scale = expected.abs().max().item()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=TOLERANCE[dtype] * scale)
    weights = confounder_attention_weights_reference(xm, w1, w2, confounders)
    assert weights.dtype == dtype and weights.shape == (batch, n)
    torch.testing.assert_close(weights.double(), alpha, rtol=0, atol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_fp32_and_rounded_once(dtype: torch.dtype) -> None:
    xm, w1, w2, confounders = make_inputs(3, 20, 64, seed=7, dtype=dtype)
    prior = torch.softmax(torch.arange(20.0), dim=0).to(dtype)
    out = confounder_attention(xm, w1, w2, confounders, prior)
    in_fp32 = confounder_attention(xm.float(), w1.float(), w2.float(), confounders.float(), prior.float())
    torch.testing.assert_close(out, in_fp32.to(dtype), rtol=0, atol=0)


def test_float64_stays_float64() -> None:
    xm, w1, w2, confounders = (t.double() for t in make_inputs(2, 5, 9, seed=3))
    out = confounder_attention(xm, w1, w2, confounders)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, direct_loop(xm, w1, w2, confounders)[0], rtol=0, atol=1e-13)


def test_gradcheck_float64() -> None:
    xm, w1, w2, confounders = (t.double().requires_grad_() for t in make_inputs(2, 3, 5, seed=11))
    prior = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(confounder_attention, (xm, w1, w2, confounders, prior))
    assert torch.autograd.gradcheck(confounder_attention, (xm, w1, w2, confounders))
    assert torch.autograd.gradcheck(confounder_attention_weights_reference, (xm, w1, w2, confounders))


def test_fp32_parameters_get_fp32_gradients_through_bf16_masks() -> None:
    """The training setting: learnable fp32 W1/W2, masks in a low-precision dtype."""
    xm, w1, w2, confounders = make_inputs(2, 4, 16, seed=5)
    xm = xm.bfloat16()
    w1.requires_grad_()
    w2.requires_grad_()
    confounder_attention(xm, w1, w2, confounders).sum().backward()
    assert w1.grad is not None and w2.grad is not None and w1.grad.dtype == torch.float32
    w1_64, w2_64 = w1.detach().double().requires_grad_(), w2.detach().double().requires_grad_()
    confounder_attention(xm.double(), w1_64, w2_64, confounders.double()).sum().backward()
    torch.testing.assert_close(w1.grad.double(), w1_64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w2.grad.double(), w2_64.grad, rtol=1e-4, atol=1e-6)
    assert w1_64.grad.abs().max() > 1e-3  # the gradient is not trivially zero


def test_prior_weights_the_confounders() -> None:
    xm, w1, w2, confounders = make_inputs(3, 6, 10, seed=13)
    alpha = confounder_attention_weights_reference(xm, w1, w2, confounders)
    torch.testing.assert_close(alpha.sum(dim=-1), torch.ones(3), rtol=0, atol=1e-6)
    assert (alpha >= 0).all() and alpha.std() > 0.05  # non-degenerate attention

    prior = torch.tensor([0.05, 0.4, 0.1, 0.2, 0.15, 0.1])
    expected = sum(alpha[:, i : i + 1] * confounders[i] * prior[i] for i in range(6))
    out = confounder_attention(xm, w1, w2, confounders, prior)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.double(), direct_loop(xm, w1, w2, confounders, prior)[0], rtol=0, atol=1e-6)

    uniform = confounder_attention(xm, w1, w2, confounders)
    torch.testing.assert_close(uniform, (alpha @ confounders) / 6, rtol=0, atol=1e-6)
    torch.testing.assert_close(uniform, confounder_attention(xm, w1, w2, confounders, torch.full((6,), 1 / 6)))
    assert (out - uniform).abs().max() > 1e-3  # the prior changes the result

    one_hot = torch.zeros(6)
    one_hot[4] = 1.0
    torch.testing.assert_close(
        confounder_attention(xm, w1, w2, confounders, one_hot), alpha[:, 4:5] * confounders[4], rtol=0, atol=1e-6
    )


def test_large_scores_stay_finite() -> None:
    """Scores in the thousands (exp overflows fp32 past 88): the softmax must pick the best confounder."""
    # W2 = I and c_i = e_i + 0.5, so score_i = (q_i + 0.5 sum(q)) / sqrt(3) and the winner is argmax_i q_i,
    # q = W1 x_m = 1e4 x_m: gaps of at least 1e4 * 0.1 / sqrt(3) ~ 577 between the scores.
    xm = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.2, 0.1, 0.9]])
    w1 = 1e4 * torch.eye(3)
    w2 = torch.eye(3)
    confounders = torch.eye(3) + 0.5
    alpha = confounder_attention_weights_reference(xm, w1, w2, confounders)
    assert torch.isfinite(alpha).all()
    torch.testing.assert_close(alpha, torch.eye(3), rtol=0, atol=0)
    out = confounder_attention(xm, w1, w2, confounders)
    torch.testing.assert_close(out, confounders / 3, rtol=0, atol=1e-7)
    torch.testing.assert_close(out.double(), direct_loop(xm, w1, w2, confounders)[0], rtol=0, atol=1e-7)


BAD_SHAPES = [
    ({"xm": (16,)}, r"xm must be \(B, hw\).*got \(16,\)"),
    ({"xm": (2, 0)}, r"xm must be \(B, hw\) with hw >= 1.*got \(2, 0\)"),
    ({"w1": (3, 15)}, r"w1 must be \(n, hw\) = \(3, 16\), got \(3, 15\)"),
    ({"w1": (48,)}, r"w1 must be \(n, hw\) = \(3, 16\), got \(48,\)"),
    ({"w2": (4, 16)}, r"w2 must be \(n, hw\) = \(3, 16\), got \(4, 16\)"),
    ({"confounders": (3, 15)}, r"confounders must be \(n, hw\).*hw = 16.*got \(3, 15\)"),
    ({"confounders": (0, 16)}, r"confounders must be \(n, hw\) with n >= 1.*got \(0, 16\)"),
    ({"confounders": (16,)}, r"confounders must be \(n, hw\).*got \(16,\)"),
    ({"prior": (4,)}, r"prior must be \(n,\) = \(3,\), got \(4,\)"),
    ({"prior": (3, 1)}, r"prior must be \(n,\) = \(3,\), got \(3, 1\)"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_SHAPES)
def test_rejects_bad_shapes(bad: dict[str, tuple[int, ...]], message: str) -> None:
    shapes = {"xm": (2, 16), "w1": (3, 16), "w2": (3, 16), "confounders": (3, 16), "prior": (3,)} | bad
    args = {name: torch.rand(shape) for name, shape in shapes.items()}
    with pytest.raises(ValueError, match=message):
        confounder_attention(**args)
    with pytest.raises(ValueError, match=message):
        confounder_attention_reference(**args)
    if "prior" not in bad:
        del args["prior"]
        with pytest.raises(ValueError, match=message):
            confounder_attention_weights_reference(**args)


def test_rejects_bad_dtypes_and_devices() -> None:
    xm, w1, w2, confounders = make_inputs(2, 3, 16, seed=1)
    with pytest.raises(TypeError, match="xm must be float16, bfloat16, float32 or float64, got torch.int64"):
        confounder_attention(xm.long(), w1, w2, confounders)
    with pytest.raises(TypeError, match="prior must be .* got torch.int32"):
        confounder_attention(xm, w1, w2, confounders, torch.ones(3, dtype=torch.int32))
    with pytest.raises(TypeError, match="confounders must be .* got torch.complex64"):
        confounder_attention(xm, w1, w2, confounders.to(torch.complex64))
    with pytest.raises(ValueError, match="w2 is on meta but xm is on cpu"):
        confounder_attention(xm, w1, w2.to("meta"), confounders)


HAS_TRITON = "triton" in ca_module._IMPLEMENTATIONS
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


class TestDispatch:
    def test_default_on_cpu_is_reference(self) -> None:
        assert OP == "confounder_attention"
        expected = ("reference", "triton") if importlib.util.find_spec("triton") is not None else ("reference",)
        assert registered_backends(OP) == expected
        assert kernel_backend(torch.zeros(1), OP) == "reference"

    def test_forcing_reference_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "reference")
        args = make_inputs(2, 3, 8, seed=2)
        torch.testing.assert_close(confounder_attention(*args), confounder_attention_reference(*args))

    def test_forcing_a_missing_backend_errors(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "cuda")
        with pytest.raises(
            RuntimeError, match="FASTWSSS_KERNELS=cuda: op 'confounder_attention' has no cuda implementation"
        ):
            confounder_attention(*make_inputs(1, 2, 4, seed=0))

    @requires_triton
    def test_forcing_triton_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        args = [t.requires_grad_() for t in make_inputs(2, 3, 8, seed=2)]
        assert kernel_backend(args[0], OP) == "triton"
        out = confounder_attention(*args)
        assert out.grad_fn is not None and "ConfounderAttentionFunction" in type(out.grad_fn).__name__
        torch.testing.assert_close(out, confounder_attention_reference(*args), rtol=0, atol=1e-6)

    @requires_triton
    def test_forcing_triton_needs_the_interpreter_on_cpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="FASTWSSS_KERNELS=triton.*confounder_attention.*TRITON_INTERPRET=1"):
            confounder_attention(*make_inputs(1, 2, 4, seed=0))


def test_module_imports_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without triton the module imports, registers only the reference and still computes."""
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    monkeypatch.setattr(dispatch, "_REGISTRY", dict(dispatch._REGISTRY))
    spec = importlib.util.spec_from_file_location("_confounder_attention_without_triton", ca_module.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.triton is None
    assert set(module._IMPLEMENTATIONS) == {"reference"}
    assert registered_backends(OP) == ("reference",)
    args = make_inputs(2, 3, 8, seed=4)
    torch.testing.assert_close(module.confounder_attention(*args), confounder_attention_reference(*args))


# --------------------------------------------------------------------------------------------------------------
# The Triton kernels (Triton interpreter on CPU: tests/conftest.py sets TRITON_INTERPRET=1).
# --------------------------------------------------------------------------------------------------------------

# Awkward shapes (hw never a multiple of a block), plus shapes that exercise the tiling paths in the
# interpreter's configuration: hw = 5000 is 5 blocks of 1024 over 3 splits (a loop per split, a tail split),
# n = 150 needs two 128-wide tiles of rows and columns (and two chunks of the inner loop), B = 20 > 16.
TRITON_SHAPES = [(1, 1, 1), (2, 2, 5), (3, 20, 64), (2, 80, 7), (1, 3, 1000)]
TILING_SHAPES = [(2, 3, 5000), (3, 150, 40), (20, 5, 33)]
HALF_DTYPES = [torch.float16, torch.bfloat16]
# Triton vs reference, relative to max|M| (forward) or max|grad| (each gradient): fp32 differ only by the
# summation order (seen: <= 1.2e-6 forward, <= 6e-6 gradients); fp16/bf16 results are the fp32 ones rounded
# once to the dtype, so they may differ by one ulp of the dtype (<= 2^-10 resp. 2^-7 of the scale, within
# TOLERANCE) on top of the fp32 difference.
FP32_FORWARD, FP32_GRAD = 1e-5, 3e-5


def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    if dtype == torch.float32:
        return FP32_FORWARD, FP32_GRAD
    return TOLERANCE[dtype] + FP32_FORWARD, TOLERANCE[dtype] + FP32_GRAD


def _run_both(
    inputs: list[torch.Tensor], prior: torch.Tensor | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None], list[torch.Tensor | None]]:
    """(out_triton, out_reference, grads_triton, grads_reference) for the same random upstream gradient."""
    leaves = inputs + ([prior] if prior is not None else [])
    ours = [t.detach().clone().requires_grad_() for t in leaves]
    theirs = [t.detach().clone().requires_grad_() for t in leaves]
    out = ca_module._confounder_attention_triton(*ours[:4], ours[4] if prior is not None else None)
    expected = confounder_attention_reference(*theirs[:4], theirs[4] if prior is not None else None)
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.randn(out.shape, generator=generator).to(out.dtype)
    out.backward(upstream)
    expected.backward(upstream)
    return out, expected, [t.grad for t in ours], [t.grad for t in theirs]


def _assert_grads_close(
    grads: list[torch.Tensor | None], expected: list[torch.Tensor | None], leaves: list[torch.Tensor], atol: float
) -> None:
    names = ["xm", "w1", "w2", "confounders", "prior"]
    for name, grad, want, leaf in zip(names[: len(leaves)], grads, expected, leaves, strict=True):
        assert grad is not None and want is not None, name
        assert grad.dtype == leaf.dtype and grad.shape == leaf.shape, name
        scale = want.double().abs().max().item()
        torch.testing.assert_close(grad.double(), want.double(), rtol=0, atol=atol * scale, msg=name)


@requires_triton
@pytest.mark.parametrize(
    ("shape", "dtype"),
    [(shape, dtype) for shape in TRITON_SHAPES for dtype in (torch.float32, *HALF_DTYPES)]
    + [(shape, torch.float32) for shape in TILING_SHAPES],
)
def test_triton_matches_reference_forward_and_backward(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    batch, n, hw = shape
    inputs = list(make_inputs(batch, n, hw, seed=sum(shape), dtype=dtype))
    out, expected, grads, expected_grads = _run_both(inputs, None, seed=1)
    assert out.dtype == dtype and out.shape == (batch, hw)
    forward_tol, grad_tol = _tolerances(dtype)
    scale = expected.double().abs().max().item()
    torch.testing.assert_close(out.double(), expected.double(), rtol=0, atol=forward_tol * scale)
    # and against the float64 oracle, as the reference is tested
    torch.testing.assert_close(out.double(), direct_loop(*inputs)[0], rtol=0, atol=TOLERANCE[dtype] * scale)
    _assert_grads_close(grads, expected_grads, inputs, grad_tol)


@requires_triton
@pytest.mark.parametrize("shape", [(3, 20, 1000), (16, 80, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_gpu_tiling_in_the_interpreter(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int], dtype: torch.dtype
) -> None:
    """The tile sizes, warp counts and splits chosen for a GPU (64-wide tiles, BLOCK_HW 32 for q/k, a K loop in
    16-wide chunks), run by the interpreter: 2 x 2 tiles for k at n = 80, several splits, several hw blocks."""
    monkeypatch.setattr(ca_module, "_interpreted", lambda tensor: False)
    monkeypatch.setattr(ca_module, "sm_count", lambda device: 4)  # 8 programs per q/k product
    batch, n, hw = shape
    inputs = list(make_inputs(batch, n, hw, seed=sum(shape), dtype=dtype))
    prior = torch.softmax(torch.linspace(-1.0, 2.0, n), dim=0)
    out, expected, grads, expected_grads = _run_both(inputs, prior, seed=3)
    forward_tol, grad_tol = _tolerances(dtype)
    scale = expected.double().abs().max().item()
    torch.testing.assert_close(out.double(), expected.double(), rtol=0, atol=forward_tol * scale)
    _assert_grads_close(grads, expected_grads, inputs + [prior], grad_tol)


@requires_triton
@pytest.mark.parametrize("shape", [(3, 20, 64), (1, 3, 1000), (2, 3, 5000)])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES])
def test_triton_non_uniform_prior(shape: tuple[int, int, int], dtype: torch.dtype) -> None:
    batch, n, hw = shape
    inputs = list(make_inputs(batch, n, hw, seed=sum(shape) + 1, dtype=dtype))
    prior = torch.softmax(torch.linspace(-2.0, 3.0, n), dim=0).to(dtype)
    out, expected, grads, expected_grads = _run_both(inputs, prior, seed=2)
    forward_tol, grad_tol = _tolerances(dtype)
    scale = expected.double().abs().max().item()
    torch.testing.assert_close(out.double(), expected.double(), rtol=0, atol=forward_tol * scale)
    torch.testing.assert_close(out.double(), direct_loop(*inputs, prior)[0], rtol=0, atol=TOLERANCE[dtype] * scale)
    if n > 1:
        uniform = ca_module._confounder_attention_triton(*inputs)
        assert (out.double() - uniform.double()).abs().max() > 0.01 * scale  # the prior matters
    _assert_grads_close(grads, expected_grads, inputs + [prior], grad_tol)


@requires_triton
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_triton_half_inputs_are_computed_in_fp32_and_rounded_once(dtype: torch.dtype) -> None:
    inputs = make_inputs(3, 20, 64, seed=7, dtype=dtype)
    prior = torch.softmax(torch.arange(20.0), dim=0).to(dtype)
    out = ca_module._confounder_attention_triton(*inputs, prior)
    in_fp32 = ca_module._confounder_attention_triton(*(t.float() for t in inputs), prior.float())
    torch.testing.assert_close(out, in_fp32.to(dtype), rtol=0, atol=0)


@requires_triton
def test_triton_fp32_parameters_through_bf16_masks_and_partial_requires_grad() -> None:
    """The training setting: fp32 W1/W2 learnable, bf16 masks and confounders without gradients."""
    xm, w1, w2, confounders = make_inputs(2, 4, 300, seed=5)
    xm, confounders = xm.bfloat16(), confounders.bfloat16()
    grads = {}
    for name, fn in (("triton", ca_module._confounder_attention_triton), ("reference", confounder_attention_reference)):
        a, b = w1.clone().requires_grad_(), w2.clone().requires_grad_()
        out = fn(xm, a, b, confounders, None)
        assert out.dtype == torch.bfloat16
        (out.float() * torch.linspace(-1.0, 1.0, 300)).sum().backward()
        assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
        grads[name] = (a.grad, b.grad)
    for ours, theirs in zip(grads["triton"], grads["reference"], strict=True):
        assert theirs.abs().max() > 1e-3  # not trivially zero
        torch.testing.assert_close(ours, theirs, rtol=0, atol=FP32_GRAD * theirs.abs().max().item())


@requires_triton
@pytest.mark.parametrize("which", [0, 1, 2, 3, 4])
def test_triton_one_input_requires_grad(which: int) -> None:
    """Each gradient alone (the backward skips the others, and saves less): same as the reference."""
    leaves = [*make_inputs(2, 6, 70, seed=21), torch.softmax(torch.arange(6.0), dim=0)]
    grads = []
    for fn in (ca_module._confounder_attention_triton, confounder_attention_reference):
        args = [t.detach().clone() for t in leaves]
        args[which].requires_grad_()
        (fn(*args) * torch.linspace(0.5, -1.5, 70)).sum().backward()
        assert all((t.grad is None) == (i != which) for i, t in enumerate(args))
        grads.append(args[which].grad)
    scale = grads[1].abs().max().item()
    assert scale > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=FP32_GRAD * scale)


@requires_triton
def test_triton_saves_only_what_backward_needs() -> None:
    batch, n, hw = 3, 5, 200
    xm, w1, w2, confounders = make_inputs(batch, n, hw, seed=9)

    def saved(*requires: torch.Tensor) -> tuple[set[int], list[torch.Tensor]]:
        for tensor in requires:
            tensor.requires_grad_()
        out = ca_module._confounder_attention_triton(xm, w1, w2, confounders)
        for tensor in requires:
            tensor.requires_grad_(False)
        tensors = [t for t in out.grad_fn.saved_tensors if t is not None]
        inputs = {
            t.data_ptr(): name for t, name in zip((xm, w1, w2, confounders), ("xm", "w1", "w2", "c"), strict=True)
        }
        small = [t for t in tensors if t.data_ptr() not in inputs]
        # besides inputs (no copies), only q (B, n), k (n, n) and alpha (B, n): never M or another hw-sized tensor
        assert all(t.numel() <= max(batch, n) * n for t in small), [tuple(t.shape) for t in small]
        return {inputs[t.data_ptr()] for t in tensors if t.data_ptr() in inputs}, small

    names, small = saved(xm, w1, w2, confounders)
    assert names == {"xm", "w1", "w2", "c"} and len(small) == 3
    names, small = saved(w1, w2)  # training: the parameters only
    assert names == {"xm", "c"} and len(small) == 3
    names, small = saved(xm)
    assert names == {"w1", "c"} and len(small) == 2  # no q


@requires_triton
def test_triton_large_scores_stay_finite(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
    xm = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.2, 0.1, 0.9]])
    w1 = (1e4 * torch.eye(3)).requires_grad_()
    w2 = torch.eye(3)
    confounders = torch.eye(3) + 0.5
    out = confounder_attention(xm, w1, w2, confounders)
    torch.testing.assert_close(out, confounders / 3, rtol=0, atol=1e-7)
    out.sum().backward()
    assert torch.isfinite(w1.grad).all()


@requires_triton
def test_triton_empty_batch() -> None:
    xm, w1, w2, confounders = (t.requires_grad_() for t in make_inputs(0, 3, 10, seed=0))
    out = ca_module._confounder_attention_triton(xm, w1, w2, confounders)
    assert out.shape == (0, 10)
    out.sum().backward()
    for tensor in (w1, w2, confounders):
        torch.testing.assert_close(tensor.grad, torch.zeros_like(tensor), rtol=0, atol=0)


@requires_triton
def test_triton_float64_is_an_error_when_forced_and_the_reference_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernels accumulate in fp32: fp64 (gradcheck) runs the reference unless triton is forced."""
    xm, w1, w2, confounders = (t.double() for t in make_inputs(2, 3, 5, seed=11))
    with pytest.raises(TypeError, match="triton confounder_attention.*float64"):
        ca_module._confounder_attention_triton(xm, w1, w2, confounders)
    with pytest.raises(TypeError, match="triton confounder_attention.*float64"):
        ca_module._confounder_attention_triton(
            xm.float(), w1.float(), w2.float(), confounders.float(), torch.ones(3).double()
        )
    monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
    with pytest.raises(TypeError, match="triton confounder_attention.*float64"):
        confounder_attention(xm, w1, w2, confounders)
    # Chosen automatically (as on a CUDA device), triton hands fp64 to the reference.
    monkeypatch.delenv("FASTWSSS_KERNELS")
    monkeypatch.setattr(ca_module, "kernel_backend", lambda tensor, op: "triton")
    calls = []

    def spy(*args: torch.Tensor | None) -> torch.Tensor:
        calls.append(args[0].dtype)
        return ca_module._confounder_attention_triton(*args)

    monkeypatch.setitem(ca_module._IMPLEMENTATIONS, "triton", spy)
    torch.testing.assert_close(
        confounder_attention(xm, w1, w2, confounders), confounder_attention_reference(xm, w1, w2, confounders)
    )
    args = tuple(t.requires_grad_() for t in (xm, w1, w2, confounders))
    assert torch.autograd.gradcheck(confounder_attention, args)
    assert calls == []
    confounder_attention(*(t.detach().float() for t in args))  # fp32 inputs do take the triton path
    assert calls == [torch.float32]
