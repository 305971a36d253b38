"""Where a classification model keeps its embedding: the conventions frx recognises when ``embed=`` is not given.

A model trained as a classifier (a timm or torchvision network, a LightningModule around one as
``self.model``/``self.net``/``self.backbone``) returns class scores from its forward; what it knows
of a face is the input of its final classifier layer. :func:`examine_forward` runs the forward
once, watching its layers: when the last layer with parameters it calls is a ``Linear`` named as
classifiers are (``fc``, ``classifier``, ``head``, ``last_linear``, ``logits`` …) and the output is
as wide as that layer's ``out_features``, the output is class scores, and frx embeds instead

- timm's ``forward_head(forward_features(x), pre_logits=True)`` of the module holding the layer, where it has them;
- else the module's ``backbone`` (a backbone and a head), where its output is the layer's input;
- else the input of the layer as the forward computes it (torchvision's ``fc``/``classifier``): :func:`input_of`.

Each is checked on the batch against the layer's recorded input. A model whose forward ends in
another layer (arcface_torch's iresnet: ``fc``, then the BatchNorm ``features``), or whose classifier is
used only in its training step, is embedded as its forward gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: the names of a classifier layer (or of the module holding it, as timm's ``head.fc``)
CLASSIFIER_NAMES = frozenset({"fc", "classifier", "classif", "head", "heads", "cls_head", "last_linear", "logits", "linear_head"})


def input_of(path: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """An ``embed=`` option: the input of the submodule ``path`` (e.g. ``"fc"``, ``"model.classifier"``) as the
    module's forward computes it: the features before a classifier, without changing the model."""

    def embed(module: Any, images: torch.Tensor) -> torch.Tensor:
        layer = module.get_submodule(path)
        seen: list[torch.Tensor] = []
        handle = layer.register_forward_pre_hook(lambda _layer, args: seen.append(args[0]))
        try:
            module(images)
        finally:
            handle.remove()
        if not seen:
            raise TypeError(f"embed=input_of({path!r}): the model's forward does not call {path!r}")
        return seen[-1]

    embed.__qualname__ = f"input_of({path!r})"
    return embed


@dataclass
class Guess:
    """What frx embeds instead of a forward's class scores: ``embed(module, images)``, the ``features`` of the
    examined batch, and the one-time warning naming the option that removes the guess."""

    embed: Callable[[Any, torch.Tensor], torch.Tensor]
    features: torch.Tensor
    message: str


def _own_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _classifier_named(path: str) -> bool:
    words = [part for part in path.split(".") if not part.isdigit()]
    return any(word in CLASSIFIER_NAMES for word in words[-2:])


def _close(a: Any, b: torch.Tensor) -> bool:
    if not isinstance(a, torch.Tensor) or a.shape != b.shape:
        return False
    a, b = a.detach().float(), b.detach().float()
    return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, float(b.abs().max()))))


def examine_forward(module: Any, images: torch.Tensor) -> tuple[Any, Guess | None]:
    """The forward's output on ``images``, and what to embed instead when it is a classifier's scores (else ``None``)."""
    if not isinstance(module, torch.nn.Module):
        return module(images), None
    last: list[tuple[str, torch.nn.Module, Any]] = []

    def record(path: str) -> Callable:
        def hook(layer: torch.nn.Module, args: tuple, _output: Any) -> None:
            last[:] = [(path, layer, args[0] if args else None)]
        return hook

    handles = [m.register_forward_hook(record(path)) for path, m in module.named_modules()
               if path and not any(True for _ in m.children()) and _own_parameters(m)]
    try:
        out = module(images)
    finally:
        for handle in handles:
            handle.remove()
    if not last or not isinstance(out, torch.Tensor) or out.ndim != 2:
        return out, None
    path, layer, features = last[0]
    if not (isinstance(layer, torch.nn.Linear) and _classifier_named(path) and layer.out_features == out.shape[1]
            and isinstance(features, torch.Tensor) and features.ndim == 2):
        return out, None
    return out, _guess(module, images, out, path, layer, features)


def _guess(module: torch.nn.Module, images: torch.Tensor, out: torch.Tensor, path: str, layer: torch.nn.Linear,
           features: torch.Tensor) -> Guess:
    scores = f"the model's forward gives its {out.shape[1]} class scores (from {path!r}, Linear {layer.in_features} → {layer.out_features})"
    choose = "to say so, or embed='forward' for the class scores"
    parts = path.split(".")
    for cut in range(len(parts) - 1, -1, -1):  # the modules holding the layer, innermost first
        prefix = ".".join(parts[:cut])
        owner = module.get_submodule(prefix)
        dotted = f"{prefix}." if prefix else ""
        pre_logits = _timm_pre_logits(owner, images)
        if _close(pre_logits, features):
            m = f"m.{dotted}"
            return Guess(
                _timm_embed_at(prefix), pre_logits,
                f"{scores}; frx embeds {dotted}forward_head({dotted}forward_features(x), pre_logits=True) instead, "
                f"D = {features.shape[1]}: pass embed=lambda m, x: {m}forward_head({m}forward_features(x), pre_logits=True) {choose}")
        backbone = getattr(owner, "backbone", None)
        if isinstance(backbone, torch.nn.Module) and backbone is not layer:
            inner = backbone(images)
            if _close(inner, features):
                name = f"{dotted}backbone"
                return Guess(_output_of(name), inner,
                             f"the model's forward gives D = {out.shape[1]}, its {name!r} D = {inner.shape[1]}: {scores}; frx "
                             f"embeds {name!r} instead: pass embed={name!r} {choose}")
    return Guess(input_of(path), features,
                 f"{scores}; frx embeds the input of {path!r} instead, D = {features.shape[1]}: "
                 f"pass embed=frx_plugin.model.input_of({path!r}) {choose}")


def _timm_embed(owner: Any, images: torch.Tensor) -> torch.Tensor:
    return owner.forward_head(owner.forward_features(images), pre_logits=True)


def _timm_embed_at(path: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``embed(module, images)``: timm's pre-logits features of the submodule ``path`` ("" the module)."""
    return lambda module, images: _timm_embed(module.get_submodule(path), images)


def _output_of(path: str) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """``embed(module, images)``: the output of the submodule ``path`` on the images."""
    return lambda module, images: module.get_submodule(path)(images)


def _timm_pre_logits(owner: Any, images: torch.Tensor) -> Any:
    """timm's pre-logits features of ``owner`` (``None`` where it has no ``forward_features``/``forward_head(pre_logits=)``)."""
    if not (callable(getattr(owner, "forward_features", None)) and callable(getattr(owner, "forward_head", None))):
        return None
    try:
        return _timm_embed(owner, images)
    except TypeError:  # a forward_head without pre_logits=: not timm's
        return None
