"""Run by test_arcface_torch_snippet.py: a loop in the order of arcface_torch's train_v2.py, frx placed as the README says.

train_v2.py's order: the SummaryWriter (rank 0) first; the backbone in ``DistributedDataParallel(broadcast_buffers=False)``;
``start_epoch = 0; global_step = 0``; the resume block loads ``checkpoint_gpu_{rank}.pt`` and ``del dict_checkpoint``;
the callbacks are made after it; then ``global_step += 1`` before each step, the callbacks inside ``torch.no_grad()``
after the optimizer step, and each epoch ends with the checkpoint dict and rank 0's ``model.pt``.

The README's lines sit where they can: the frx callback made *before* the resume block (it needs none of
it), its state loaded *inside* it, before ``del dict_checkpoint``. Arguments: the output folder, the
number of epochs, and ``resume`` to start from the checkpoint; ``FRX_TEST_CRASH_AT_STEP`` kills the run
after that step, as a crash would (exit code 3).
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
from frx_plugin.config import AnalysisConfig  # noqa: E402
from frx_plugin.models import ArcFaceHead, ResidualFaceNet  # noqa: E402
from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet  # noqa: E402


def main(output: Path, num_epoch: int, resume: bool) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    summary_writer = SummaryWriter(log_dir=str(output / "tensorboard")) if rank == 0 else None
    torch.manual_seed(0)
    backbone = ResidualFaceNet(embedding_dim=32, widths=(8, 16, 16, 32), input_size=32)
    if world > 1:
        backbone = torch.nn.parallel.DistributedDataParallel(module=backbone, broadcast_buffers=False)
    backbone.train()
    head = ArcFaceHead(32, 30)
    train = SyntheticFaceDataset(SyntheticFaceWorld(30, 8, seed=0, size=32))
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0) if world > 1 else None
    train_loader = DataLoader(train, batch_size=16, sampler=sampler, shuffle=sampler is None, drop_last=True)
    opt = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    probe = SyntheticProbeSet(n_identities=20, images_per_identity=3, seed=0, size=32, first_identity=500_000)

    # --- the README's line: made before the resume block ---------------------------------------------
    frx_callback = ArcFaceTorchCallback(probe, out_dir=os.path.join(output, "frx"), every_n_steps=5, writer=summary_writer,
                                        config=AnalysisConfig(n_bootstrap=10, counterfactuals="off"))
    start_epoch = 0
    global_step = 0
    if resume:
        dict_checkpoint = torch.load(os.path.join(output, f"checkpoint_gpu_{rank}.pt"), weights_only=True)
        start_epoch = dict_checkpoint["epoch"]
        global_step = dict_checkpoint["global_step"]
        (backbone.module if world > 1 else backbone).load_state_dict(dict_checkpoint["state_dict_backbone"])
        head.load_state_dict(dict_checkpoint["state_dict_softmax_fc"])
        opt.load_state_dict(dict_checkpoint["state_optimizer"])
        frx_callback.load_state_dict(dict_checkpoint["state_frx"])  # --- the README's line: before the del
        del dict_checkpoint

    for epoch in range(start_epoch, num_epoch):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for _, (img, local_labels) in enumerate(train_loader):
            global_step += 1
            loss = F.cross_entropy(head(backbone(img), local_labels), local_labels)
            loss.backward()
            opt.step()
            opt.zero_grad()
            with torch.no_grad():
                if summary_writer is not None:
                    summary_writer.add_scalar("loss", loss.item(), global_step)
                frx_callback(global_step, backbone, epoch=epoch)  # --- the README's line: every step, every rank
            if global_step == int(os.environ.get("FRX_TEST_CRASH_AT_STEP", "0")):
                if summary_writer is not None:
                    summary_writer.flush()
                os._exit(3)  # a crash: nothing after this step is saved
        checkpoint = {
            "epoch": epoch + 1,
            "global_step": global_step,
            "state_dict_backbone": (backbone.module if world > 1 else backbone).state_dict(),
            "state_dict_softmax_fc": head.state_dict(),
            "state_optimizer": opt.state_dict(),
            "state_frx": frx_callback.state_dict(),  # --- the README's line
        }
        torch.save(checkpoint, os.path.join(output, f"checkpoint_gpu_{rank}.pt"))
        if rank == 0:
            torch.save((backbone.module if world > 1 else backbone).state_dict(), os.path.join(output, "model.pt"))
    if summary_writer is not None:
        summary_writer.close()
    assert not frx_callback.failures, frx_callback.failures
    if world > 1:
        dist.barrier()
        frx_callback.close()
        del backbone, opt
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "resume")
