"""Pair geometry: half-disc directions, paths, path-max affinity against a direct loop, pair indices."""

from __future__ import annotations

import pytest
import torch

from fastwsss.algorithms.affinity import (
    half_disc_directions,
    pair_indices,
    pair_valid_mask,
    path_max_affinity,
    path_max_affinity_reference,
    path_offsets,
)


def direct_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """1 - max edge on the path, pixel by pixel; 0 when the destination leaves the image."""
    batch, height, width = edge.shape
    directions = half_disc_directions(radius)
    out = torch.zeros(batch, len(directions), height, width, dtype=edge.dtype)
    for b in range(batch):
        for d, (dy, dx) in enumerate(directions):
            for y in range(height):
                for x in range(width):
                    if not (0 <= y + dy < height and 0 <= x + dx < width):
                        continue
                    peak = max(edge[b, y + oy, x + ox].item() for oy, ox in path_offsets((dy, dx)))
                    out[b, d, y, x] = 1.0 - peak
    return out


class TestDirections:
    @pytest.mark.parametrize(("radius", "count"), [(1, 0), (2, 4), (5, 34), (10, 152)])
    def test_counts(self, radius: int, count: int) -> None:
        assert len(half_disc_directions(radius)) == count

    def test_order_and_small_radius(self) -> None:
        assert half_disc_directions(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]
        assert half_disc_directions(5)[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
        assert half_disc_directions(5)[4] == (1, -4)

    @pytest.mark.parametrize("radius", [3, 5, 10])
    def test_with_negations_tile_the_disc(self, radius: int) -> None:
        half = set(half_disc_directions(radius))
        negated = {(-dy, -dx) for dy, dx in half}
        disc = {
            (y, x)
            for y in range(-radius, radius + 1)
            for x in range(-radius, radius + 1)
            if 0 < y * y + x * x < radius**2
        }
        assert not half & negated
        assert half | negated == disc

    def test_bad_radius(self) -> None:
        with pytest.raises(ValueError, match="radius"):
            half_disc_directions(0)


class TestPaths:
    def test_hand_computed(self) -> None:
        assert path_offsets((0, 3)) == [(0, 0), (0, 1), (0, 2), (0, 3)]
        assert path_offsets((3, 0)) == [(0, 0), (1, 0), (2, 0), (3, 0)]
        # The diagonal neighbours of a diagonal step are at distance 1/sqrt(2) < 1 from the line.
        assert sorted(path_offsets((1, 1))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
        assert sorted(path_offsets((2, 2))) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 1), (2, 2)]
        assert sorted(path_offsets((1, -1))) == [(0, -1), (0, 0), (1, -1), (1, 0)]
        # (1, 2): (x - 2y)^2 < 5 holds on the whole 2 x 3 box (the corners (0, 2), (1, 0) are 2/sqrt(5) away).
        assert sorted(path_offsets((1, 2))) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        # (4, 3): |4x - 3y| <= 4; (1, 2) and (3, 1) sit at distance exactly 1 and are left out.
        assert sorted(path_offsets((4, 3))) == [
            (0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 3), (4, 2), (4, 3),
        ]  # fmt: skip
        # (2, 5): (2x - 5y)^2 < 29 keeps x <= 2 on row 0, the whole row 1 and x >= 3 on row 2.
        assert sorted(path_offsets((2, 5))) == [(0, 0), (0, 1), (0, 2)] + [(1, x) for x in range(6)] + [
            (2, 3),
            (2, 4),
            (2, 5),
        ]

    @pytest.mark.parametrize("direction", half_disc_directions(10))
    def test_endpoints_symmetry_and_box(self, direction: tuple[int, int]) -> None:
        dy, dx = direction
        path = path_offsets(direction)
        assert path[0] == (0, 0) and path[-1] == (dy, dx)
        assert len(set(path)) == len(path)
        assert all(0 <= y <= dy and min(0, dx) <= x <= max(0, dx) for y, x in path)
        assert sorted(path_offsets((-dy, -dx))) == sorted((-y, -x) for y, x in path)
        assert sorted(path_offsets((dy, -dx))) == sorted((y, -x) for y, x in path)
        assert sorted(path_offsets((dx, dy))) == sorted((x, y) for y, x in path)

    def test_zero_direction(self) -> None:
        with pytest.raises(ValueError, match="non-zero"):
            path_offsets((0, 0))


class TestPathMaxAffinity:
    def wall_map(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(3)
        edge = torch.rand(2, 5, 6, generator=generator) * 0.5
        edge[:, :, 3] = 1.0
        return edge

    def test_matches_direct_loop(self) -> None:
        edge = self.wall_map()
        out = path_max_affinity(edge.unsqueeze(1), 5)
        assert out.shape == (2, 34, 5, 6)
        torch.testing.assert_close(out, direct_affinity(edge, 5), rtol=0, atol=0)
        torch.testing.assert_close(path_max_affinity(edge, 5), out, rtol=0, atol=0)

    def test_wall_cuts_pairs_and_one_side_keeps_its_path_max(self) -> None:
        edge = self.wall_map()
        out = path_max_affinity(edge, 5)
        for d, (dy, dx) in enumerate(half_disc_directions(5)):
            for y in range(5 - dy):
                for x in range(max(0, -dx), min(6, 6 - dx)):
                    lo, hi = min(x, x + dx), max(x, x + dx)
                    if lo <= 3 <= hi:
                        assert out[:, d, y, x].eq(0).all(), (dy, dx, y, x)
                    else:
                        assert out[:, d, y, x].gt(0.49).all(), (dy, dx, y, x)
        # A horizontal pair left of the wall: 1 - max of the three pixels it spans.
        d = half_disc_directions(5).index((0, 2))
        assert out[0, d, 1, 0].item() == pytest.approx(1 - edge[0, 1, 0:3].max().item(), abs=0)

    def test_out_of_image_destinations_are_zero(self) -> None:
        edge = torch.zeros(1, 4, 7)
        out = path_max_affinity(edge, 5)
        valid = pair_valid_mask(4, 7, 5)
        assert out[0][~valid].eq(0).all()
        assert out[0][valid].eq(1).all()

    def test_radius_10_and_gradient_reaches_the_path_max(self) -> None:
        edge = torch.full((1, 1, 12, 13), 0.1)
        edge[0, 0, 3, 5] = 0.7
        edge.requires_grad_(True)
        out = path_max_affinity(edge, 10)
        assert out.shape == (1, 152, 12, 13)
        d = half_disc_directions(10).index((0, 4))
        out[0, d, 3, 2].backward()
        expected = torch.zeros_like(edge)
        expected[0, 0, 3, 5] = -1.0
        torch.testing.assert_close(edge.grad, expected)

    @pytest.mark.parametrize(("shape", "radius"), [((2, 1, 7, 9), 5), ((3, 1, 1, 5), 5), ((2, 1, 12, 13), 10)])
    def test_gradient_matches_autograd_of_a_running_maximum(self, shape: tuple[int, ...], radius: int) -> None:
        # Random maps have no ties, so the one-scatter backward must equal autograd through torch.maximum
        # (float64: the two sum the same terms in a different order).
        generator = torch.Generator().manual_seed(5)
        edge = torch.rand(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(shape[0], len(half_disc_directions(radius)), *shape[2:], generator=generator,
                              dtype=torch.float64)  # fmt: skip
        fast = path_max_affinity(edge, radius)
        (fast * weights).sum().backward()
        fast_grad = edge.grad.clone()
        edge.grad = None
        reference = path_max_affinity_reference(edge, radius)
        (reference * weights).sum().backward()
        torch.testing.assert_close(fast, reference, rtol=0, atol=0)
        torch.testing.assert_close(fast_grad, edge.grad, rtol=1e-12, atol=1e-12)

    def test_tied_maxima_send_the_gradient_to_the_point_nearest_the_source(self) -> None:
        edge = torch.full((1, 1, 3, 8), 0.1)
        edge[0, 0, 1, 2] = edge[0, 0, 1, 4] = 0.6
        edge.requires_grad_(True)
        d = half_disc_directions(5).index((0, 4))
        path_max_affinity(edge, 5)[0, d, 1, 1].backward()
        expected = torch.zeros_like(edge)
        expected[0, 0, 1, 2] = -1.0
        torch.testing.assert_close(edge.grad, expected, rtol=0, atol=0)

    def test_rejects_multichannel(self) -> None:
        with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
            path_max_affinity(torch.rand(1, 2, 4, 4), 5)


@pytest.mark.parametrize(("height", "width", "radius"), [(5, 6, 5), (1, 9, 5), (8, 3, 3), (1, 1, 5)])
def test_pair_indices_match_mask_order_and_a_loop(height: int, width: int, radius: int) -> None:
    src, dst = pair_indices(height, width, radius)
    expected = [
        (y * width + x, (y + dy) * width + x + dx)
        for dy, dx in half_disc_directions(radius)
        for y in range(height)
        for x in range(width)
        if 0 <= y + dy < height and 0 <= x + dx < width
    ]
    assert list(zip(src.tolist(), dst.tolist(), strict=True)) == expected
    assert int(pair_valid_mask(height, width, radius).sum()) == len(expected)
