"""fastwsss.engine.distributed in a real 2-process gloo group (two child processes of this test, on the CPU).

The end-to-end runs of test_distributed.py show that 2 processes give the single-process results; these
tests show *why*, piece by piece, and that the work really is divided:

* `shard` and `split_batch` hand each rank a disjoint share that together covers everything;
* `global_batch_mean` makes DistributedDataParallel's averaged gradient equal the full-batch gradient even
  when the ranks hold different numbers of labelled pixels, where the plain per-rank mean does not;
* `on_main` runs its function on rank 0 only and turns rank 0's error into PeerStopped on the others;
* a single process (no launcher variables) gets the identity of every function.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastwsss.engine import distributed
from fastwsss.errors import ConfigError
from fastwsss.stages.seg import seg_loss

WORKER = r"""
import json, sys
import torch
from torch.nn.parallel import DistributedDataParallel
from fastwsss.engine import distributed
from fastwsss.errors import ConfigError
from fastwsss.engine.distributed import local_mean
from fastwsss.stages.seg import seg_loss

out = sys.argv[1]
torch.set_num_threads(1)
distributed.init_from_env(torch.device("cpu"))
w = distributed.world()
result = {"rank": w.rank, "size": w.size, "shard": distributed.shard(list(range(7))),
          "split": distributed.split_batch(list(range(12)), 4)}
try:
    distributed.split_batch(list(range(6)), 3, "seg.batch_size")
except ConfigError as exc:
    result["split_error"] = str(exc)
result["on_main"] = distributed.on_main(lambda: f"ran on rank {w.rank}")
try:
    distributed.on_main(lambda: (_ for _ in ()).throw(ConfigError("cls.lr: must be positive")))
except distributed.PeerStopped as exc:
    result["peer_stopped"] = str(exc)
except ConfigError as exc:
    result["raised"] = str(exc)
result["sum_array"] = distributed.sum_array(__import__("numpy").array([w.rank + 1, 10])).tolist()
result["mean_over_ranks"] = distributed.mean_over_ranks(float(w.rank), torch.device("cpu"))

batch = torch.load(out + "/batch.pt")
for name, mean in (("global", distributed.global_batch_mean), ("local", local_mean)):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    ddp = DistributedDataParallel(model)
    images, masks = batch["images"][w.rank * 2 : w.rank * 2 + 2], batch["masks"][w.rank * 2 : w.rank * 2 + 2]
    seg_loss(ddp(images), masks, mean).backward()
    torch.save({k: p.grad for k, p in model.named_parameters()}, f"{out}/grad_{name}_{w.rank}.pt")
with open(f"{out}/rank{w.rank}.json", "w") as handle:
    json.dump(result, handle)
distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("gloo")
    generator = torch.Generator().manual_seed(3)
    masks = torch.randint(0, 4, (4, 6, 5), generator=generator)
    masks[0, :, :4] = 255  # rank 0's images have far fewer labelled pixels than rank 1's
    masks[1, :5] = 255
    torch.save({"images": torch.randn(4, 3, 6, 5, generator=generator), "masks": masks}, out / "batch.pt")
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, str(out)], env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_shards_are_disjoint_and_cover_everything(two_ranks) -> None:  # noqa: ANN001
    _, results = two_ranks
    assert [r["shard"] for r in results] == [[0, 2, 4, 6], [1, 3, 5]]
    # Global batches of 4: rank 0 takes positions 0-1 of each, rank 1 positions 2-3.
    assert [r["split"] for r in results] == [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10, 11]]
    assert all("seg.batch_size" in r["split_error"] and "multiple of 2" in r["split_error"] for r in results)


def test_global_batch_mean_gives_the_full_batch_gradient(two_ranks) -> None:  # noqa: ANN001
    out, _ = two_ranks
    batch = torch.load(out / "batch.pt")
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    seg_loss(model(batch["images"]), batch["masks"]).backward()
    full = {k: p.grad for k, p in model.named_parameters()}
    for name in ("global", "local"):
        grads = [torch.load(out / f"grad_{name}_{r}.pt") for r in range(2)]
        torch.testing.assert_close(grads[0], grads[1])  # DDP gave both ranks the same averaged gradient
        if name == "global":
            torch.testing.assert_close(grads[0], full, rtol=1e-5, atol=1e-6)
        else:  # the per-rank mean weights rank 0's few pixels as much as rank 1's many: not the full batch
            assert not torch.allclose(grads[0]["weight"], full["weight"], rtol=1e-3, atol=1e-5)


def test_on_main_runs_once_and_stops_every_rank(two_ranks) -> None:  # noqa: ANN001
    _, results = two_ranks
    assert [r["on_main"] for r in results] == ["ran on rank 0", "ran on rank 0"]
    assert results[0]["raised"] == "cls.lr: must be positive" and "peer_stopped" not in results[0]
    assert results[1]["peer_stopped"] == "rank 0 stopped: cls.lr: must be positive"
    assert [r["sum_array"] for r in results] == [[3, 20], [3, 20]]
    assert [r["mean_over_ranks"] for r in results] == [0.5, 0.5]


def test_single_process_is_the_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.world() == distributed.World() and distributed.is_main()
    assert distributed.init_from_env(torch.device("cpu")) == torch.device("cpu")
    assert distributed.shard([3, 1, 2]) == [3, 1, 2] and distributed.split_batch([0, 1, 2], 3) == [0, 1, 2]
    assert distributed.all_gather({"a": 1}) == [{"a": 1}]
    total, count = torch.tensor(6.0), torch.tensor(0)
    assert float(distributed.global_batch_mean(total, count)) == 6.0  # empty set: divided by 1, never NaN
    with pytest.raises(ConfigError, match="x"):
        distributed.on_main(lambda: (_ for _ in ()).throw(ConfigError("x")))


def test_launched_world_rejects_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        distributed.launched_world()
