"""How frx calls the user's model: which device it is on, and how a batch of probe images becomes embeddings.

Embedding goes through the ``frx_embed`` hook (a plugin may say how its models embed; the built-in
answer calls the model and L2-normalises), without gradients and in eval mode, restoring the mode after.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from frx_plugin.plugins import get_plugin_manager
from frx_plugin.probe import ProbeSet

#: ``progress(done, total, stage)``, called after each batch when given.
Progress = Callable[[int, int, str], None]


def unwrap(model: Any) -> Any:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (any wrapper with ``.module``), else the model."""
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, parallel) else model


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without torch parameters)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def hook_embedder(model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """images → L2-normalised embeddings float32 on the CPU through the ``frx_embed`` hook, without gradients.

    The model is put in eval mode for each call and restored afterwards.
    """
    model = unwrap(model)
    hook = get_plugin_manager().hook.frx_embed
    device = model_device(model)

    @torch.no_grad()
    def embed(images: torch.Tensor) -> torch.Tensor:
        was_training = getattr(model, "training", False)
        if was_training:
            model.eval()
        try:
            return hook(model=model, images=images.to(device)).detach().to("cpu", torch.float32)
        finally:
            if was_training:
                model.train()

    return embed


def embed_probe_set(model: Any, probe: ProbeSet, indices: torch.Tensor | None = None, batch_size: int = 256,
                    progress: Progress | None = None) -> torch.Tensor:
    """Embeddings ``(len(indices), D)`` float32 on the CPU, through the ``frx_embed`` hook (:func:`hook_embedder`).

    ``progress(done, total, "embedding")`` after each batch when given.
    """
    if indices is None:
        indices = torch.arange(len(probe))
    embed = hook_embedder(model)
    chunks, done = [], 0
    for chunk, images in probe.batches(indices, batch_size):
        chunks.append(embed(images))
        done += chunk.numel()
        if progress is not None:
            progress(done, indices.numel(), "embedding")
    return torch.cat(chunks) if chunks else torch.empty(0, 0)
