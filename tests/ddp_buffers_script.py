"""Run by tests/core/test_rank_buffers.py as two processes (RANK 0 and 1, gloo): a pass over a model whose ranks' BatchNorm statistics differ.

The model trains three steps under ``DistributedDataParallel(broadcast_buffers=False)``, as arcface_torch
wraps its backbone, each rank on other images: the weights stay equal (the gradients are averaged), the
running statistics drift apart. Then two frx passes (exact counterfactuals: every rank re-embeds its share
of the re-rendered faces). Argument: the output folder. Each rank writes ``rank<r>.pt``: its buffers before
the first pass and after each pass, its state dict before the passes, the messages frx warned; rank 0 also
``records.json`` (the two passes' records).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from frx_plugin.collectives import TorchDistributed  # noqa: E402
from frx_plugin.model import ModelAdapter  # noqa: E402
from frx_plugin.passes import AnalysisConfig, PassPlan, plan_pass, run_pass  # noqa: E402
from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet  # noqa: E402


class BatchNormNet(torch.nn.Module):
    """A small embedding network with BatchNorm in its trunk and on its embedding (as iresnet's ``features``)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                         torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten())
        self.fc = torch.nn.Linear(128, dim)
        self.features = torch.nn.BatchNorm1d(dim)

    def forward(self, x):
        return self.features(self.fc(self.trunk(x)))


def make_probe() -> SyntheticProbeSet:
    return SyntheticProbeSet(n_identities=20, images_per_identity=3, seed=0, size=32, first_identity=500_000)


def make_plan(probe) -> PassPlan:
    return plan_pass(probe, AnalysisConfig(n_bootstrap=20), counterfactuals="exact", significance_samples=16,
                     max_error_pairs=4)


def buffers(module) -> dict:
    return {name: b.detach().clone() for name, b in module.named_buffers()}


if __name__ == "__main__":
    out = Path(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = BatchNormNet()
    ddp = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    head = torch.nn.Linear(16, 10)
    optimizer = torch.optim.SGD(list(ddp.parameters()) + list(head.parameters()), lr=0.1)
    train = SyntheticFaceDataset(SyntheticFaceWorld(10, 4, seed=0, size=32))
    for step in range(3):  # each rank its own images: other running statistics
        images, labels = zip(*(train[(8 * step + 4 * rank + i) % len(train)] for i in range(4)))
        images = torch.stack(images) * (1.0 + rank)  # and rank 1's twice as bright
        loss = F.cross_entropy(head(ddp(images)), torch.as_tensor(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    before, state = buffers(model), {k: v.clone() for k, v in model.state_dict().items()}
    warned: list[str] = []
    adapter = ModelAdapter(ddp, transform="unit", warn=warned.append)
    probe = make_probe()
    collectives = TorchDistributed()
    records, after = [], []
    for _ in range(2):
        result = run_pass(adapter, probe, make_plan(probe), collectives)
        assert result.report is not None, result.failure
        records.append(json.loads(json.dumps(result.report.to_record())))
        after.append(buffers(model))
    torch.save({"before": before, "after": after, "state": state, "warned": warned}, out / f"rank{rank}.pt")
    if rank == 0:
        (out / "records.json").write_text(json.dumps(records))
    dist.barrier()
    del ddp
    dist.destroy_process_group()
