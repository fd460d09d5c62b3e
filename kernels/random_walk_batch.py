"""Random walks of several images of different sizes in one call: padded into one batch, walked together.

The pseudo stage walks images whose stride-4 grids and class counts differ (VOC: 94 x 125 and 125 x 94 grids,
1 to 4 classes). One image per call leaves a GPU mostly idle (at K = 3 a step of the Triton walk is 92
programs for 132 SMs) and pays the 2^k launches per image; `random_walk_batch` pays them once per batch.

Padding that does not change the result: each image sits in the top-left corner of a canvas of the largest
height and width in the batch, its classes padded with zero planes. The boundary map is padded with 1.0, so
every pair with an end in the padding has affinity 1 - 1 = 0 and weight 0^beta = 0, exactly the weight of a
pair that leaves the image (paths lie inside the bounding box of their ends, so a pair of two image pixels
never crosses the padding). The column sums of the image's pixels are therefore the per-image ones, and the
padding's x = cams * (1 - 1) = 0 stays 0 (its only tap is itself). Cropping gives the per-image walk, up to
the order of floating-point operations of the backend that ran (tests/kernels/test_random_walk_batch.py).

No host synchronisation: padding, the walk and the crops are device operations; the backend's tables are
cached on the device (kernels/random_walk.py), so after a first call the whole call can be captured in a
CUDA graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastwsss.kernels.random_walk import random_walk


def pack(cams: Sequence[torch.Tensor], edges: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Kmax, H, W) cams padded with 0 and (B, 1, H, W) boundary maps padded with 1.0 (see the module doc).

    `cams[i]`: (K_i, h_i, w_i); `edges[i]`: (h_i, w_i) on the same device. Cams are promoted to a common
    floating dtype, boundary maps likewise.
    """
    if len(cams) != len(edges) or not cams:
        raise ValueError(f"random_walk_batch needs as many boundary maps as CAM stacks, at least one; got "
                         f"{len(cams)} and {len(edges)}")  # fmt: skip
    for i, (c, e) in enumerate(zip(cams, edges, strict=True)):
        if c.dim() != 3 or e.dim() != 2 or c.shape[-2:] != e.shape:
            raise ValueError(f"image {i}: cams {tuple(c.shape)} and edge {tuple(e.shape)}: expected (K, h, w) and (h, w)")
    classes = max(c.shape[0] for c in cams)
    height = max(c.shape[1] for c in cams)
    width = max(c.shape[2] for c in cams)
    cam_dtype = cams[0].dtype
    edge_dtype = edges[0].dtype
    for c, e in zip(cams, edges, strict=True):
        cam_dtype = torch.promote_types(cam_dtype, c.dtype)
        edge_dtype = torch.promote_types(edge_dtype, e.dtype)
    device = cams[0].device
    packed_cams = torch.zeros(len(cams), classes, height, width, dtype=cam_dtype, device=device)
    packed_edge = torch.ones(len(cams), 1, height, width, dtype=edge_dtype, device=device)
    for i, (c, e) in enumerate(zip(cams, edges, strict=True)):
        k, h, w = c.shape
        packed_cams[i, :k, :h, :w] = c
        packed_edge[i, 0, :h, :w] = e
    return packed_cams, packed_edge


@torch.no_grad()
def random_walk_batch(
    cams: Sequence[torch.Tensor], edges: Sequence[torch.Tensor], beta: float = 10.0, exp_times: int = 8,
    radius: int = 5,
) -> list[torch.Tensor]:  # fmt: skip
    """`random_walk(cams[i], edges[i], ...)` for every i, as one padded batch on the backend `random_walk` picks.

    Returns one (K_i, h_i, w_i) tensor per image, in the dtype of the packed cams.
    """
    packed_cams, packed_edge = pack(cams, edges)
    walked = random_walk(packed_cams, packed_edge, beta=beta, exp_times=exp_times, radius=radius)
    return [walked[i, : c.shape[0], : c.shape[1], : c.shape[2]] for i, c in enumerate(cams)]
