"""random_walk: the sparse steps against IRNet's dense T^(2^k), properties of T, dispatch.

Tolerances. In fp64 the sparse path equals the dense oracle to ~1e-13: that is the exactness check. In fp32
both paths drift from the exact value by rounding that grows linearly with the number of steps 2^exp_times
(the walk averages, so errors neither cancel nor blow up; measured on these inputs with beta = 10: about
1e-6 * 2^exp_times relative to the result's maximum, for IRNet's fp32 dense as well as for the sparse path).
So fp32 is compared within max(1e-5, 2e-6 * 2^exp_times): 1e-5 up to 4 steps, 5.1e-4 at 256 steps.

The Triton backend (run by the interpreter: conftest sets TRITON_INTERPRET=1) is compared with the reference:
its taps (kernel 1) within rtol 1e-5 / atol 1e-6 in fp32 (exp2(beta log2 A) vs torch.pow, another summation
order of the column sums) and 1e-12 in fp64, with exactly the same zeros; the whole walk within the fp32
tolerance above (measured: <= 2e-6 at 8 steps); fp16/bf16 within about one output ulp (1e-3 / 8e-3).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from fastwsss.kernels import random_walk as random_walk_module
from fastwsss.kernels.dispatch import kernel_backend, registered_backends
from fastwsss.kernels.random_walk import (
    DENSE_MAX_PIXELS,
    _random_walk_triton,
    _transition_taps_triton,
    dense_transition_matrix,
    random_walk,
    random_walk_reference,
    random_walk_reference_dense,
    transition_taps,
)

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

# (height, width, classes, beta, exp_times, radius)
CASES = [
    (7, 13, 1, 10.0, 8, 5),
    (23, 40, 3, 10.0, 8, 5),
    (40, 17, 21, 10.0, 3, 5),
    (40, 40, 2, 10.0, 8, 5),
    (1, 1, 3, 10.0, 8, 5),
    (1, 19, 2, 10.0, 8, 5),
    (19, 1, 1, 10.0, 1, 5),
    (4, 3, 21, 10.0, 8, 5),
    (12, 9, 3, 1.0, 0, 5),
    (12, 9, 3, 1.0, 1, 5),
    (16, 20, 1, 1.0, 8, 5),
    (11, 14, 3, 10.0, 3, 3),
    (9, 10, 21, 10.0, 0, 5),
]


def fp32_tolerance(exp_times: int) -> float:
    return max(1e-5, 2e-6 * 2**exp_times)


def boundary_map(height: int, width: int, seed: int) -> torch.Tensor:
    """Low boundary noise with scattered strong boundary pixels: a walk that is neither trivial nor frozen."""
    generator = torch.Generator().manual_seed(seed)
    edge = torch.rand(height, width, generator=generator) * 0.3
    strong = torch.rand(height, width, generator=generator) < 0.15
    edge[strong] = 0.5 + 0.5 * torch.rand(int(strong.sum()), generator=generator)
    return edge


def inputs(height: int, width: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.rand(classes, height, width, generator=generator), boundary_map(height, width, seed)


def relative_error(result: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp(min=1e-30)
    return ((result.double() - expected.double()).abs().max() / scale).item()


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTWSSS_KERNELS", raising=False)


@pytest.mark.parametrize(("height", "width", "classes", "beta", "exp_times", "radius"), CASES)
def test_sparse_equals_dense(height: int, width: int, classes: int, beta: float, exp_times: int, radius: int) -> None:
    cams, edge = inputs(height, width, classes, seed=height * 100 + width)
    out = random_walk(cams, edge, beta, exp_times, radius)
    assert out.shape == cams.shape and out.dtype == torch.float32
    dense32 = random_walk_reference_dense(cams, edge, beta, exp_times, radius)
    assert relative_error(out, dense32) <= fp32_tolerance(exp_times)
    exact = random_walk_reference_dense(cams.double(), edge.double(), beta, exp_times, radius, dtype=torch.float64)
    assert relative_error(random_walk(cams.double(), edge.double(), beta, exp_times, radius), exact) <= 1e-10


def test_batched_equals_per_image_and_edge_layouts() -> None:
    cams = torch.rand(3, 4, 9, 11, generator=torch.Generator().manual_seed(5))
    edges = torch.stack([boundary_map(9, 11, seed) for seed in range(3)])
    out = random_walk(cams, edges, exp_times=4)
    assert out.shape == cams.shape
    for b in range(3):
        torch.testing.assert_close(out[b], random_walk(cams[b], edges[b], exp_times=4), rtol=0, atol=1e-6)
    torch.testing.assert_close(random_walk(cams, edges.unsqueeze(1), exp_times=4), out, rtol=0, atol=0)
    torch.testing.assert_close(random_walk(cams[0], edges[:1], exp_times=4), out[0], rtol=0, atol=1e-6)


def test_half_precision_input_accumulates_in_fp32() -> None:
    cams, edge = inputs(10, 12, 3, seed=7)
    out = random_walk(cams.half(), edge.half(), exp_times=5)
    assert out.dtype == torch.float16
    expected = random_walk(cams.half().float(), edge.half().float(), exp_times=5)
    assert relative_error(out, expected) <= 1e-3


class TestTransition:
    @pytest.mark.parametrize(("height", "width", "radius"), [(8, 11, 5), (5, 3, 5), (1, 7, 5), (9, 9, 3)])
    def test_taps_are_the_columns_of_the_dense_matrix(self, height: int, width: int, radius: int) -> None:
        edge = boundary_map(height, width, seed=height + width)
        dense = dense_transition_matrix(edge.double(), 10.0, radius, torch.float64)
        offsets, weights = transition_taps(edge.double().view(1, 1, height, width), 10.0, radius)
        directions = len(offsets) // 2
        assert weights.shape == (1, 2 * directions + 1, height, width) and offsets[0] == (0, 0)
        rebuilt = torch.zeros_like(dense)
        for t, (dy, dx) in enumerate(offsets):
            for y in range(height):
                for x in range(width):
                    if 0 <= y + dy < height and 0 <= x + dx < width:
                        rebuilt[(y + dy) * width + x + dx, y * width + x] = weights[0, t, y, x]
                    else:
                        assert weights[0, t, y, x] == 0
        torch.testing.assert_close(rebuilt, dense, rtol=1e-12, atol=1e-15)

    def test_column_stochastic_with_at_most_69_nonzeros(self) -> None:
        edge = boundary_map(13, 15, seed=3)
        dense = dense_transition_matrix(edge, 10.0, 5)
        torch.testing.assert_close(dense.sum(dim=0), torch.ones(13 * 15), rtol=0, atol=1e-6)
        assert int((dense != 0).sum(dim=0).max()) <= 69
        assert torch.equal(dense != 0, (dense != 0).T)
        _, weights = transition_taps(edge.view(1, 13, 15), 10.0, 5)
        assert weights.shape[1] == 69
        torch.testing.assert_close(weights.sum(dim=1), torch.ones(1, 13, 15), rtol=0, atol=1e-6)


class TestProperties:
    def test_mass_follows_the_row_sums(self) -> None:
        """T is column-stochastic, not row-stochastic: x T keeps sum_i x_i (T 1)_i, not sum_i x_i."""
        cams, edge = inputs(10, 13, 3, seed=11)
        trans = dense_transition_matrix(edge.double(), 10.0, 5, torch.float64)
        x = (cams.double() * (1 - edge.double())).view(3, -1)
        out = random_walk(cams.double(), edge.double(), exp_times=0).view(3, -1)
        torch.testing.assert_close(out.sum(dim=1), x @ trans.sum(dim=1), rtol=1e-12, atol=0)
        assert not torch.allclose(out.sum(dim=1), x.sum(dim=1), rtol=1e-3)

    def test_constant_is_a_fixed_point_and_values_stay_in_range(self) -> None:
        edge = torch.full((9, 14), 0.2)
        out = random_walk(torch.full((2, 9, 14), 3.0), edge, exp_times=6)
        torch.testing.assert_close(out, torch.full((2, 9, 14), 2.4), rtol=1e-5, atol=0)
        cams, edge = inputs(17, 12, 4, seed=2)
        x = cams * (1 - edge)
        out = random_walk(cams, edge, exp_times=5)
        low, high = x.amin(dim=(1, 2)), x.amax(dim=(1, 2))
        assert (out.amin(dim=(1, 2)) >= low - 1e-6).all() and (out.amax(dim=(1, 2)) <= high + 1e-6).all()

    def test_zero_edge_smooths_to_a_constant(self) -> None:
        cams = torch.zeros(1, 12, 12)
        cams[0, 6, 5] = 1.0
        out = random_walk(cams, torch.zeros(12, 12), exp_times=8)[0]
        assert (out > 0).all()
        assert (out.max() - out.min()) / out.max() < 1e-3
        one_step = random_walk(cams, torch.zeros(12, 12), exp_times=0)[0]
        assert one_step.max() < 0.05 and int((one_step > 0).sum()) == 69

    def test_equivariant_under_flips_and_transpose(self) -> None:
        cams, edge = inputs(13, 10, 2, seed=9)
        out = random_walk(cams, edge, exp_times=5)
        tol = fp32_tolerance(5)
        assert relative_error(random_walk(cams.flip(-1), edge.flip(-1), exp_times=5), out.flip(-1)) <= tol
        assert relative_error(random_walk(cams.flip(-2), edge.flip(-2), exp_times=5), out.flip(-2)) <= tol
        transposed = random_walk(cams.transpose(-1, -2), edge.T, exp_times=5)
        assert relative_error(transposed, out.transpose(-1, -2)) <= tol

    @pytest.mark.parametrize("wall", [1.0, 0.7])
    def test_closed_ring_keeps_mass_inside(self, wall: float) -> None:
        ys, xs = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
        dist = ((ys - 19.5) ** 2 + (xs - 19.5) ** 2).sqrt()
        edge = torch.rand(40, 40, generator=torch.Generator().manual_seed(0)) * 0.1
        edge[(dist >= 10) & (dist < 12)] = wall
        inside = dist < 10
        cams = inside.float().unsqueeze(0)
        out = random_walk(cams, edge, beta=10.0, exp_times=8)[0]
        assert out[inside].sum() > 0.95 * out.sum()
        assert out[inside].min() > 0.5
        free = random_walk(cams, torch.zeros(40, 40), beta=10.0, exp_times=8)[0]
        assert free[inside].sum() < 0.5 * free.sum()

    def test_radius_one_is_the_identity(self) -> None:
        cams, edge = inputs(5, 6, 2, seed=1)
        torch.testing.assert_close(random_walk(cams, edge, radius=1), cams * (1 - edge), rtol=0, atol=0)


class TestChecks:
    def test_dense_refuses_large_grids(self) -> None:
        with pytest.raises(ValueError, match=r"65x64 = 4160 pixels exceeds max_pixels=4096"):
            random_walk_reference_dense(torch.rand(1, 65, 64), torch.rand(65, 64))
        assert DENSE_MAX_PIXELS == 4096
        small = random_walk_reference_dense(torch.rand(1, 3, 4), torch.rand(3, 4), max_pixels=12)
        assert small.shape == (1, 3, 4)

    @pytest.mark.parametrize(
        ("cams", "edge", "kwargs", "match"),
        [
            (torch.rand(4, 4), torch.rand(4, 4), {}, r"\(K, h, w\)"),
            (torch.rand(2, 4, 4), torch.rand(4, 5), {}, "does not match"),
            (torch.rand(2, 2, 4, 4), torch.rand(4, 4), {}, "does not match"),
            (torch.rand(2, 4, 4), torch.rand(4, 4), {"beta": 0.0}, "beta"),
            (torch.rand(2, 4, 4), torch.rand(4, 4), {"exp_times": -1}, "exp_times"),
            (torch.rand(2, 4, 4), torch.rand(4, 4), {"exp_times": 2.0}, "exp_times"),
            (torch.rand(2, 4, 4), torch.rand(4, 4), {"radius": 0}, "radius"),
        ],
    )
    def test_rejects_bad_input(self, cams: torch.Tensor, edge: torch.Tensor, kwargs: dict, match: str) -> None:
        with pytest.raises(ValueError, match=match):
            random_walk(cams, edge, **kwargs)

    def test_edge_from_a_graph_is_fine(self) -> None:
        cams, edge = inputs(6, 5, 2, seed=8)
        out = random_walk(cams, edge.clone().requires_grad_(True), exp_times=2)
        assert not out.requires_grad
        torch.testing.assert_close(out, random_walk(cams, edge, exp_times=2), rtol=0, atol=0)

    def test_rejects_integer_maps(self) -> None:
        with pytest.raises(TypeError, match="floating"):
            random_walk(torch.ones(1, 3, 3, dtype=torch.int64), torch.zeros(3, 3))


class TestDispatch:
    def test_registered_backends(self) -> None:
        expected = ("reference", "triton") if HAS_TRITON else ("reference",)
        assert registered_backends("random_walk") == (*expected, "cuda")

    def test_cpu_default_is_the_reference(self) -> None:
        assert kernel_backend(torch.rand(1, 3, 3), "random_walk") == "reference"

    def test_forcing_reference_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "reference")
        cams, edge = inputs(6, 7, 2, seed=4)
        torch.testing.assert_close(random_walk(cams, edge, exp_times=3), random_walk_reference(cams, edge, exp_times=3))

    @needs_triton
    def test_forcing_triton_runs_the_kernel(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """FASTWSSS_KERNELS=triton through the public function (the interpreter: conftest sets TRITON_INTERPRET)."""
        calls = []

        def spy(*args: object) -> torch.Tensor:
            calls.append(args)
            return _random_walk_triton(*args)

        monkeypatch.setitem(random_walk_module._IMPLEMENTATIONS, "triton", spy)
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        cams, edge = inputs(6, 7, 2, seed=4)
        out = random_walk(cams, edge, exp_times=1)
        assert len(calls) == 1
        assert out.shape == cams.shape and out.dtype == cams.dtype
        assert relative_error(out, random_walk_reference(cams, edge, exp_times=1)) <= fp32_tolerance(1)

    @needs_triton
    def test_forcing_triton_without_a_gpu_or_interpreter_errors(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(RuntimeError, match="cannot run op 'random_walk' with triton.*TRITON_INTERPRET=1"):
            random_walk(torch.rand(1, 3, 3), torch.rand(3, 3))


def walled_boundary_map(height: int, width: int, seed: int) -> torch.Tensor:
    """`boundary_map` with exact 0.0 and 1.0 pixels: A = 0 (A^beta = 0, no log of 0) and A = 1 must both be exact."""
    edge = boundary_map(height, width, seed)
    generator = torch.Generator().manual_seed(seed + 2)
    pick = torch.rand(height, width, generator=generator)
    edge[pick < 0.1] = 1.0
    edge[pick > 0.9] = 0.0
    return edge


@needs_triton
class TestTritonTaps:
    """Kernel 1 alone: the fused path-max / pow / normalisation against `transition_taps` (same layout)."""

    @pytest.mark.parametrize(
        ("batch", "height", "width", "radius"),
        [
            (1, 1, 1, 5),  # every neighbour outside the grid: only the self tap
            (2, 7, 5, 5),  # a different edge per image
            (1, 13, 17, 5),  # 221 pixels: several pixel blocks, the last partial
            (1, 1, 19, 5),
            (1, 19, 1, 5),
            (1, 5, 3, 3),
            (1, 6, 4, 2),
            (1, 4, 5, 1),  # no directions: the self tap only
        ],
    )
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_matches_transition_taps(
        self, batch: int, height: int, width: int, radius: int, dtype: torch.dtype
    ) -> None:
        edge = torch.stack([walled_boundary_map(height, width, seed=10 * b + height) for b in range(batch)])
        edge = edge.to(dtype).unsqueeze(1)
        offsets, expected = transition_taps(edge, 10.0, radius)
        got_offsets, got = _transition_taps_triton(edge, 10.0, radius)
        assert got_offsets == offsets
        assert got.shape == expected.shape and got.dtype == expected.dtype
        # The same zeros: pairs leaving the grid and pairs across a 1.0 wall (A^beta = 0 exactly).
        assert torch.equal(got == 0, expected == 0)
        if dtype == torch.float32:  # exp2(beta * log2 A) vs torch.pow, another summation order of the column
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)

    def test_accepts_the_unbatched_edge_layout_and_other_beta(self) -> None:
        edge = walled_boundary_map(8, 6, seed=3)
        _, expected = transition_taps(edge.unsqueeze(0), 2.5, 5)
        _, got = _transition_taps_triton(edge.unsqueeze(0), 2.5, 5)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# (batch or None for (K, h, w) cams, classes, height, width, exp_times, radius). Every step is a launch and the
# interpreter costs milliseconds per program, so grids stay at a few programs and step counts low.
TRITON_CASES = [
    (None, 3, 1, 1, 1, 5),  # 1 x 1 grid
    (None, 1, 7, 5, 3, 5),  # 1 class, odd sizes
    (None, 2, 13, 17, 3, 5),  # 221 pixels: two pixel blocks, the last partial
    (None, 20, 6, 9, 1, 5),  # 20 classes on a small grid: three class blocks, the last partial
    (2, 3, 9, 11, 3, 5),  # B > 1 with a different edge per image
    (3, 2, 5, 7, 0, 5),  # exp_times 0: a single step
    (None, 2, 1, 19, 1, 5),
    (None, 1, 19, 1, 1, 5),
    (None, 3, 11, 14, 1, 3),
    (None, 2, 5, 6, 1, 1),  # radius 1: the identity
]


def triton_inputs(batch: int | None, classes: int, height: int, width: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    if batch is None:
        return torch.rand(classes, height, width, generator=generator), walled_boundary_map(height, width, seed)
    cams = torch.rand(batch, classes, height, width, generator=generator)
    edges = torch.stack([walled_boundary_map(height, width, seed + 7 * b) for b in range(batch)])
    return cams, edges


@needs_triton
class TestTritonWalk:
    """The whole Triton walk (kernel 1 + the per-step kernel 2) against `random_walk_reference`."""

    @pytest.mark.parametrize(("batch", "classes", "height", "width", "exp_times", "radius"), TRITON_CASES)
    def test_matches_reference(
        self, batch: int | None, classes: int, height: int, width: int, exp_times: int, radius: int
    ) -> None:
        cams, edge = triton_inputs(batch, classes, height, width, seed=height * 100 + width)
        out = _random_walk_triton(cams, edge, 10.0, exp_times, radius)
        expected = random_walk_reference(cams, edge, 10.0, exp_times, radius)
        assert out.shape == cams.shape and out.dtype == torch.float32
        assert relative_error(out, expected) <= fp32_tolerance(exp_times)

    def test_batched_edge_layouts_and_per_image_edges(self) -> None:
        cams, edges = triton_inputs(2, 3, 9, 11, seed=5)
        out = _random_walk_triton(cams, edges, 10.0, 1, 5)
        torch.testing.assert_close(_random_walk_triton(cams, edges.unsqueeze(1), 10.0, 1, 5), out, rtol=0, atol=0)
        for b in range(2):  # image b walks on its own edge map, not on image 0's
            single = random_walk_reference(cams[b], edges[b], 10.0, 1, 5)
            assert relative_error(out[b], single) <= fp32_tolerance(1)
        assert not torch.allclose(out[1], random_walk_reference(cams[1], edges[0], 10.0, 1, 5), rtol=1e-3)

    def test_non_contiguous_inputs_and_an_edge_from_a_graph(self) -> None:
        cams, edge = triton_inputs(None, 2, 7, 6, seed=12)
        cams_t, edge_t = cams.transpose(-1, -2), edge.T.clone().requires_grad_(True)
        out = _random_walk_triton(cams_t, edge_t, 10.0, 1, 5)
        assert not out.requires_grad
        expected = random_walk_reference(cams_t.contiguous(), edge_t.detach().contiguous(), 10.0, 1, 5)
        assert relative_error(out, expected) <= fp32_tolerance(1)

    def test_fp64_is_exact(self) -> None:
        cams, edge = triton_inputs(None, 2, 7, 9, seed=3)
        cams, edge = cams.double(), edge.double()
        out = _random_walk_triton(cams, edge, 10.0, 2, 5)
        assert out.dtype == torch.float64
        assert relative_error(out, random_walk_reference(cams, edge, 10.0, 2, 5)) <= 1e-12
        exact = random_walk_reference_dense(cams, edge, 10.0, 2, 5, dtype=torch.float64)
        assert relative_error(out, exact) <= 1e-10

    @pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
    def test_half_precision_inputs_accumulate_in_fp32(self, dtype: torch.dtype, tolerance: float) -> None:
        """fp16/bf16 in and out, fp32 inside: both backends round the same fp32 result to the output dtype, so
        they differ by at most about one output ulp (fp16: 2^-11, bf16: 2^-8 relative to the maximum)."""
        cams, edge = triton_inputs(2, 3, 10, 12, seed=7)
        cams, edge = cams.to(dtype), edge.to(dtype)
        out = _random_walk_triton(cams, edge, 10.0, 2, 5)
        assert out.dtype == dtype and out.shape == cams.shape
        assert relative_error(out, random_walk_reference(cams, edge, 10.0, 2, 5)) <= tolerance
        fp32 = random_walk_reference(cams.float(), edge.float(), 10.0, 2, 5)
        assert relative_error(out, fp32) <= tolerance
