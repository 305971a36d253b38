"""Run by tests/test_metrics.py as two processes (RANK 0 and 1, gloo): ProbeStatistics reduced across ranks."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from frx_plugin.leakage.metrics import ProbeStatistics  # noqa: E402
from tests.core.test_metrics import SCHEMA, make_data  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    z, folds, labels = make_data()
    rows = torch.arange(rank, z.shape[0], world)  # disjoint shards of uneven size, no padding
    metric = ProbeStatistics(SCHEMA, z.shape[1], 4, masked_attributes=["yaw"])
    for start in range(0, rows.numel(), 50):
        idx = rows[start : start + 50]
        metric.update(z[idx], folds[idx], {k: v[idx] for k, v in labels.items()})
    shared, masked = metric.compute()  # every rank calls the collective
    if rank == 0:
        save_file({"gram": shared.gram, "cross": shared.cross, "count": shared.count,
                   "yaw_gram": masked["yaw"].gram, "yaw_count": masked["yaw"].count}, out)
    dist.barrier()
    dist.destroy_process_group()
