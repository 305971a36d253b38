"""Run by test_plain_loop_ddp.py: a plain PyTorch (or Accelerate) training loop with frx's loop object, 1 or 2 processes.

``python plain_loop_script.py OUT torch|accelerate``. torch: ``torch.distributed`` (gloo) from RANK/WORLD_SIZE, the
model in ``DistributedDataParallel``, a ``DistributedSampler``. accelerate: ``Accelerator(cpu=True)`` prepares the
model, optimizer and loader. Both call ``frx_loop.train_start`` once and ``frx_loop.step`` after every optimizer
step, on every process; rank 0 saves the model's weights at the last pass (``OUT/model.safetensors``).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402

from frx_plugin.config import AnalysisConfig  # noqa: E402
from frx_plugin.loop import AnalysisLoop  # noqa: E402
from frx_plugin.models import ArcFaceHead, ResidualFaceNet  # noqa: E402
from frx_plugin.synthetic import SyntheticFaceDataset, SyntheticFaceWorld, SyntheticProbeSet  # noqa: E402

PROBE = dict(n_identities=21, images_per_identity=3, seed=0, size=32, first_identity=600_000)  # 63 images: odd
CONFIG = AnalysisConfig(n_bootstrap=20, fmr=0.01)
STEPS = 6


def model_and_head():
    torch.manual_seed(0)
    return ResidualFaceNet(embedding_dim=32, widths=(8, 16, 16, 32), input_size=32), ArcFaceHead(32, 30)


def main(out: Path, kind: str) -> None:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    model, head = model_and_head()
    train = SyntheticFaceDataset(SyntheticFaceWorld(30, 8, seed=0, size=32))
    optimizer = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.05, momentum=0.9)
    if kind == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        loader = DataLoader(train, batch_size=16, shuffle=True, drop_last=True)
        model, head, optimizer, loader = accelerator.prepare(model, head, optimizer, loader)
        backward, rank = accelerator.backward, accelerator.process_index
    else:
        if world > 1:
            torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
            model = torch.nn.parallel.DistributedDataParallel(model)
        sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0) if world > 1 else None
        loader = DataLoader(train, batch_size=16, sampler=sampler, shuffle=sampler is None, drop_last=True)

        def backward(loss):
            loss.backward()

    # the README's lines: the probe set, the loop object, one call before training and one after each step
    frx_loop = AnalysisLoop(SyntheticProbeSet(**PROBE), out_dir=out / "frx", config=CONFIG, transform="unit", every_n_steps=3)
    frx_loop.train_start(model)
    step = 0
    while step < STEPS:
        for images, labels in loader:
            loss = F.cross_entropy(head(model(images), labels), labels)
            optimizer.zero_grad()
            backward(loss)
            optimizer.step()
            step += 1
            frx_loop.step(model, step)
            if step == STEPS:
                break
    if rank == 0:
        inner = getattr(model, "module", model)
        save_file({k: v.detach().contiguous() for k, v in inner.state_dict().items()}, str(out / "model.safetensors"))
    assert not frx_loop.failures, frx_loop.failures
    (out / f"world{rank}.txt").write_text(f"{world} {repr(frx_loop.collectives)}")
    frx_loop.close()
    if kind == "torch" and world > 1:
        torch.distributed.barrier()
        del model, optimizer
        torch.distributed.destroy_process_group()
    if kind == "accelerate":
        accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
