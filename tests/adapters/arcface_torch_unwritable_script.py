"""Run by tests/adapters/test_history_write_failures.py as 2 ranks: an unwritable history under on_error="raise".

Rank 0 writes the history and cannot (its folder lies under a file); every rank must raise, none wait
for the other. Each rank writes what it raised to ``<out>/rank<r>.txt``. Argument: the output folder.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from frx_insightface.arcface_torch import ArcFaceTorchCallback  # noqa: E402
from tests.lightning_helpers import make_probe  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", rank=rank, world_size=int(os.environ["WORLD_SIZE"]))
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    frx = ArcFaceTorchCallback(make_probe(), out_dir=out / "a-file" / "frx", every_n_steps=1, transform="unit",
                               counterfactuals="off", on_error="raise")
    try:
        with torch.no_grad():
            frx(1, backbone)
    except OSError as exc:
        (out / f"rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
    frx.close()
    dist.barrier()  # both ranks got here: neither waits for the other
    dist.destroy_process_group()
