"""How the processes of a distributed run exchange what an analysis pass needs.

A pass runs on every process of a run. Each embeds its own disjoint shard of the probe set, the
leakage statistics are summed across processes and the embeddings gathered for verification. The
:class:`Collectives` protocol is all a pass asks of the run: its rank and world size, the device
collective tensors must live on, an all-gather, an any-rank flag and a barrier. Every process
must call every collective, in the same order, also when a pass fails on one of them.

Implementations: :class:`SingleProcess` and :class:`TorchDistributed` (a ``torch.distributed``
process group) here, and one over a Lightning strategy in the Lightning adapter.

Which device. A process group only takes tensors on the devices its backend supports: NCCL
refuses CPU tensors. :class:`TorchDistributed` therefore sends every tensor on a device the
group's backend supports (the CPU under gloo, the current CUDA device under NCCL). Only where
the backend supports no device this process has does it make a gloo group of its own, once, on
every rank, and send CPU tensors through that.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "Collectives", "SingleProcess", "TorchDistributed", "default_collectives", "gather_rows", "merge_ranks", "metric_sync",
    "shard_indices",
]


@runtime_checkable
class Collectives(Protocol):
    """What an analysis pass needs of a (possibly distributed) run; every process calls every method alike."""

    #: this process's rank, 0 … world_size − 1
    rank: int
    #: the number of processes
    world_size: int
    #: the device tensors sent through :meth:`all_gather` must live on
    device: torch.device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(world_size, *tensor.shape)``: every rank's tensor (of the same shape on every rank), on :attr:`device`."""
        ...

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any rank."""
        ...

    def barrier(self) -> None:
        """Wait until every rank has arrived."""
        ...


class SingleProcess:
    """One process: the collectives are the identity."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device).unsqueeze(0)

    def any(self, flag: bool) -> bool:
        return bool(flag)

    def barrier(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"SingleProcess(device={str(self.device)!r})"


def _backend_devices(group: Any) -> list[str]:
    """The device types the backend of ``group`` supports (``"cpu:gloo,cuda:nccl"`` style names included)."""
    import torch.distributed as dist

    name = str(dist.get_backend(group)).lower()
    if ":" in name:  # a per-device backend string: "cpu:gloo,cuda:nccl"
        return [part.split(":", 1)[0].strip() for part in name.split(",") if ":" in part]
    return list(dist.Backend.backend_capability.get(name, []))


def _usable_device(device_types: list[str]) -> torch.device | None:
    """The first of ``device_types`` this process can put tensors on (the current device of an accelerator)."""
    for kind in device_types:
        if kind == "cpu":
            return torch.device("cpu")
        module = getattr(torch, kind, None)
        available = getattr(module, "is_available", None)
        if callable(available) and available():
            current = getattr(module, "current_device", None)
            return torch.device(kind, current()) if callable(current) else torch.device(kind)
    return None


class TorchDistributed:
    """``torch.distributed`` (an initialised default group, or ``group``).

    Tensors travel on a device the group's backend supports: the CPU under gloo, the current
    CUDA device under NCCL (set it with ``torch.cuda.set_device(local_rank)``, as every NCCL loop
    does). A backend that supports no device of this process gets a gloo group of frx's own,
    made here (every rank must construct this object at the same point of the run).
    """

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("torch.distributed is not initialised; use SingleProcess for a run of one process")
        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        device = _usable_device(_backend_devices(group))
        #: whether frx made a gloo group of its own (the backend supports no device this process has)
        self.own_group = device is None
        if device is None:
            self.group = dist.new_group(ranks=None if group is None else dist.get_process_group_ranks(group), backend="gloo")
            device = torch.device("cpu")
            # frx's group is frx's to destroy: at close(), else at exit while the interpreter still runs (a
            # gloo group left to the interpreter's teardown can abort the process: "terminate called …")
            self._finalizer = weakref.finalize(self, _destroy_group, dist, self.group)
        self.device = device

    def close(self) -> None:
        """Destroy the gloo group frx made of its own, if any (nothing else: the user's groups stay)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
            self.group = None

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        local = tensor.detach().to(self.device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        self._dist.all_gather(parts, local, group=self.group)
        return torch.stack(parts)

    def any(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self._dist.all_reduce(value, op=self._dist.ReduceOp.MAX, group=self.group)
        return bool(value.item() > 0)

    def barrier(self) -> None:
        # an all-reduce on the collective device: portable across backends (NCCL's barrier guesses a device)
        self.any(False)

    def __repr__(self) -> str:
        own = ", frx's own gloo group" if self.own_group else ""
        return f"TorchDistributed(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r}, device={str(self.device)!r}{own})"


def _destroy_group(dist: Any, group: Any) -> None:
    """Destroy ``group`` unless the run's groups are already gone (``destroy_process_group()`` destroys them all)."""
    try:
        if dist.is_initialized():
            dist.destroy_process_group(group)
    except (RuntimeError, ValueError):  # already destroyed with the others
        pass


def default_collectives(device: torch.device | str = "cpu") -> Collectives:
    """:class:`TorchDistributed` when ``torch.distributed`` is initialised with more than one process, else :class:`SingleProcess`."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchDistributed()
    return SingleProcess(device)


# --------------------------------------------------------------------------- helpers over any Collectives


def shard_indices(collectives: Collectives, n: int) -> torch.Tensor:
    """This rank's disjoint share of ``n`` samples: ``rank, rank + W, …`` (no padding, no repeats), on the CPU (they index the probe set)."""
    return torch.arange(collectives.rank, n, collectives.world_size, device="cpu")


def gather_rows(collectives: Collectives, local: torch.Tensor, n: int) -> torch.Tensor:
    """All ``n`` rows in order, on every rank, from each rank's :func:`shard_indices` share: float32 on the device of ``local``.

    The rows travel on :attr:`Collectives.device`. A rank with no rows may pass an empty tensor of
    any width; the padding added for the collective is cut off again, so no sample appears twice.
    """
    world = collectives.world_size
    if world == 1:
        return local.to(torch.float32)
    per_rank = math.ceil(n / world)
    device = collectives.device
    width = torch.tensor([local.shape[1] if local.numel() else 0], dtype=torch.float32, device=device)
    dim = int(collectives.all_gather(width).max())
    padded = torch.zeros(per_rank, dim, dtype=torch.float32, device=device)
    padded[: local.shape[0]] = local.to(device, torch.float32)
    gathered = collectives.all_gather(padded).to(device)  # (W, per_rank, D)
    full = torch.empty(n, dim, dtype=torch.float32, device=device)
    for r in range(world):
        full[r::world] = gathered[r, : len(range(r, n, world))]
    return full.to(local.device)


def merge_ranks(collectives: Collectives, local: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor of the same shape, NaN where the rank has nothing; the ranks' entries merged.

    The result has the dtype and device of ``local``; the tensors travel on :attr:`Collectives.device`.
    """
    if collectives.world_size == 1:
        return local
    gathered = collectives.all_gather(local)  # (W, ...) on the collective device
    merged = gathered[0].clone()
    for part in gathered[1:]:
        merged = torch.where(torch.isnan(merged), part, merged)
    return merged.to(local.device)


def metric_sync(collectives: Collectives) -> Callable[..., list[torch.Tensor]]:
    """A torchmetrics ``dist_sync_fn`` that gathers a metric state through ``collectives``.

    Each state travels on :attr:`Collectives.device` and comes back on the device it had, so a
    metric kept on the CPU syncs under NCCL too.
    """

    def sync(tensor: torch.Tensor, group: Any = None) -> list[torch.Tensor]:
        gathered = collectives.all_gather(tensor)
        return [part.to(tensor.device) for part in gathered]

    return sync
