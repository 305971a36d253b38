"""Run by tests/test_arcface_torch.py: a training loop in the manner of arcface_torch's train_v2.py, with frx attached.

torch.distributed from RANK/WORLD_SIZE (gloo), the backbone wrapped in DistributedDataParallel, a
DistributedSampler, an ArcFace margin head (no partial FC), SGD, and the callbacks called as
``callback(global_step, backbone)`` on every rank. Argument: the output folder.

With ``FRX_TEST_BACKEND=refusecpu`` the default process group is a backend registered for CUDA
devices only that refuses every collective on a CPU tensor, as NCCL does; training syncs its
gradients through a gloo group of its own (``DistributedDataParallel(process_group=...)``), so
only frx meets the refusing default group, and must not send it a CPU tensor.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from frx_insightface.arcface_torch import ArcFaceTorchCallback  # noqa: E402
from frx_plugin.models import ArcFaceHead, ResidualFaceNet  # noqa: E402
from frx_plugin.passes import AnalysisConfig  # noqa: E402
from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet  # noqa: E402


class RefuseCPU(dist.ProcessGroup):
    """A process group for CUDA tensors only: every collective on a CPU tensor fails, as under NCCL."""

    def getBackendName(self):
        return "refusecpu"

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("refusecpu: no CPU tensors in a collective of this backend (as NCCL)")

    allreduce = allgather = broadcast = barrier = reduce_scatter = _allgather_base = allgather_into_tensor_coalesced = _refuse


def init_refusing_default_group(rank: int, world: int):
    dist.Backend.register_backend("refusecpu", lambda store, r, w, timeout: RefuseCPU(r, w), devices=["cuda"])
    dist.init_process_group("refusecpu", rank=rank, world_size=world)
    try:
        dist.all_reduce(torch.ones(1))
    except RuntimeError as exc:
        assert "refusecpu" in str(exc), exc
    else:
        raise AssertionError("the refusing backend took a CPU tensor")
    return dist.new_group(backend="gloo")  # the training's own group


if __name__ == "__main__":
    out = Path(sys.argv[1])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    refuse = os.environ.get("FRX_TEST_BACKEND") == "refusecpu"
    group = None
    if world > 1:
        if refuse:
            group = init_refusing_default_group(rank, world)
        else:
            dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    backbone = ResidualFaceNet(embedding_dim=32, widths=(8, 16, 16, 32), input_size=32)
    if world > 1:
        backbone = torch.nn.parallel.DistributedDataParallel(backbone, process_group=group)
    head = ArcFaceHead(32, 30)
    train = SyntheticFaceDataset(SyntheticFaceWorld(30, 8, seed=0, size=32))
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0) if world > 1 else None
    loader = DataLoader(train, batch_size=16, sampler=sampler, shuffle=sampler is None, drop_last=True)
    probe = SyntheticProbeSet(n_identities=25, images_per_identity=3, seed=0, size=32, first_identity=500_000)  # 75: odd
    writer = SummaryWriter(str(out / "tb")) if rank == 0 else None
    frx = ArcFaceTorchCallback(probe, out_dir=out / "frx", every_n_steps=5, writer=writer, config=AnalysisConfig(n_bootstrap=30))
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    global_step = 0
    for epoch in range(2):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for images, labels in loader:
            frx(global_step, backbone)  # as train_v2 calls callback_verification(global_step, backbone)
            loss = F.cross_entropy(head(backbone(images), labels), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            global_step += 1
    if writer is not None:
        writer.close()
    assert not frx.failures, frx.failures
    if rank == 0:
        (out / "collectives.txt").write_text(repr(frx.loop.collectives))
    own_group = getattr(frx.loop.collectives, "group", None) if refuse else None
    if world > 1:
        # an orderly teardown: both ranks done, the DDP reducer (which holds the process group) gone first;
        # tearing down with the reducer alive let a rank abort at exit ("terminate called without an active exception")
        dist.barrier(group=group)
        frx.close()  # frx's own gloo group (the refusing run) goes first, while the interpreter is whole
        if own_group is not None:
            try:
                dist.get_rank(own_group)
            except ValueError:  # "not registered": destroyed
                pass
            else:
                raise AssertionError("close() left frx's own gloo group alive")
        del backbone, optimizer, frx, group, own_group
        dist.destroy_process_group()
