"""frx's collectives over a Lightning strategy: what a pass sends goes where the strategy's processes talk.

Tensors travel on ``strategy.root_device`` (the process's GPU under NCCL, the CPU under gloo), the
any-rank decision is the strategy's ``reduce_boolean_decision``, the barrier the strategy's.
"""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer


class LightningCollectives:
    """:class:`frx_plugin.collectives.Collectives` over ``trainer.strategy`` (every rank calls every method alike)."""

    def __init__(self, trainer: Trainer) -> None:
        self.strategy = trainer.strategy
        self.rank = trainer.global_rank
        self.world_size = trainer.world_size
        self.device = torch.device(self.strategy.root_device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        local = tensor.detach().to(self.device)
        if self.world_size == 1:
            return local.unsqueeze(0)
        return self.strategy.all_gather(local)

    def any(self, flag: bool) -> bool:
        if self.world_size == 1:
            return bool(flag)
        return bool(self.strategy.reduce_boolean_decision(bool(flag), all=False))

    def barrier(self) -> None:
        self.strategy.barrier("frx")

    def __repr__(self) -> str:
        return f"LightningCollectives({type(self.strategy).__name__}, rank={self.rank}, world_size={self.world_size}, device={str(self.device)!r})"
