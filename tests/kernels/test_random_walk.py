"""random_walk: the sparse steps against IRNet's dense T^(2^k), properties of T, dispatch.

Tolerances. In fp64 the sparse path equals the dense oracle to ~1e-13: that is the exactness check. In fp32
both paths drift from the exact value by rounding that grows linearly with the number of steps 2^exp_times
(the walk averages, so errors neither cancel nor blow up; measured on these inputs with beta = 10: about
1e-6 * 2^exp_times relative to the result's maximum, for IRNet's fp32 dense as well as for the sparse path).
So fp32 is compared within max(1e-5, 2e-6 * 2^exp_times): 1e-5 up to 4 steps, 5.1e-4 at 256 steps.
"""

from __future__ import annotations

import pytest
import torch

from fastwsss.kernels.dispatch import registered_backends
from fastwsss.kernels.random_walk import (
    DENSE_MAX_PIXELS,
    dense_transition_matrix,
    random_walk,
    random_walk_reference,
    random_walk_reference_dense,
    transition_taps,
)

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
    def test_only_reference_registered(self) -> None:
        assert registered_backends("random_walk") == ("reference",)

    def test_forcing_reference_works(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "reference")
        cams, edge = inputs(6, 7, 2, seed=4)
        torch.testing.assert_close(random_walk(cams, edge, exp_times=3), random_walk_reference(cams, edge, exp_times=3))

    def test_forcing_triton_errors_clearly(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("FASTWSSS_KERNELS", "triton")
        with pytest.raises(RuntimeError, match="random_walk.*no triton implementation"):
            random_walk(torch.rand(1, 3, 3), torch.rand(3, 3))
