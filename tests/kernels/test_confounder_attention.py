"""confounder_attention (CONTA Eq. 3) against hand-computed values, a direct loop and autograd; dispatch."""

from __future__ import annotations

import math

import pytest
import torch

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


class TestDispatch:
    def test_default_on_cpu_is_reference(self) -> None:
        assert OP == "confounder_attention"
        assert registered_backends(OP) == ("reference",)
        assert kernel_backend(torch.zeros(1), OP) == "reference"

    def test_forcing_reference_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "reference")
        args = make_inputs(2, 3, 8, seed=2)
        torch.testing.assert_close(confounder_attention(*args), confounder_attention_reference(*args))

    @pytest.mark.parametrize("backend", ["triton", "cuda"])
    def test_forcing_a_missing_backend_errors(self, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", backend)
        with pytest.raises(
            RuntimeError, match=f"FASTWSSS_KERNELS={backend}: op 'confounder_attention' has no {backend} implementation"
        ):
            confounder_attention(*make_inputs(1, 2, 4, seed=0))
