"""Run by tests/test_streaming.py as two processes (RANK 0 and 1, gloo): each rank streams its own
shard (uneven sizes) through analyze_stream with syncing on; rank 0 writes the report."""

import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from frx_plugin.leakage.streaming import analyze_stream  # noqa: E402
from tests.core.test_streaming import DDP_BOOTSTRAP, DDP_N, SCHEMA, _records, chunked, mixed_world  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    z, identity, labels = mixed_world(n=DDP_N, dim=8, seed=2)
    rows = torch.arange(rank, DDP_N, world)  # disjoint shards of uneven size (151, 150), no padding
    report = analyze_stream(
        chunked(z, identity, labels, 50, rows), identity, SCHEMA, n_bootstrap=DDP_BOOTSTRAP, sync_on_compute=True
    )  # every rank runs every collective
    if rank == 0:
        clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
        payload = {
            "n_samples": report.n_samples,
            "warnings": report.warnings,
            "leakage": [[clean(v) for v in record] for record in _records(report)],
        }
        Path(out).write_text(json.dumps(payload))
    dist.barrier()
    dist.destroy_process_group()
