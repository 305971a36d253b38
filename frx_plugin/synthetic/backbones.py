"""Built-in backbones trained on the synthetic world on demand, and cached (``--backbone synthetic:NAME``).

Each name in :data:`BUILTIN_BACKBONES` is a recipe: an architecture of :mod:`frx_plugin.models`
with its constructor arguments, a training world (identities 0 .. ``identities`` - 1 of the
synthetic world, rendered at ``size``) and an ArcFace training schedule. :func:`train_synthetic_backbone`
trains one in plain torch (frx's core does not depend on Lightning), deterministically on the CPU;
:func:`load_or_train_synthetic_backbone` keeps the result in ``cache_dir()/backbones``
(:mod:`frx_plugin.cache`) under a file name holding the name and a digest of the full recipe, so a
changed setting never reuses a stale file. Every backbone comes with the held-out probe set it should be judged on: identities
from 1 000 000 on, which no recipe trains on (:data:`PROBE_FIRST_IDENTITY`).

Example::

    model, facts = load_or_train_synthetic_backbone("mobilefacenet-like", epochs=4)
    probe = SyntheticProbeSet(**facts["probe"])
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from frx_plugin.cache import cache_dir
from frx_plugin.synthetic.world import SyntheticFaceWorld, world_fingerprint

if TYPE_CHECKING:
    from frx_plugin.models import MobileFaceNetLike, ResidualFaceNet

__all__ = [
    "BUILTIN_BACKBONES",
    "PROBE_FIRST_IDENTITY",
    "resolve_recipe",
    "build_synthetic_backbone",
    "probe_facts",
    "train_synthetic_backbone",
    "synthetic_backbone_path",
    "load_or_train_synthetic_backbone",
    "open_synthetic_backbone",
]

#: Version of the cached backbone files; part of the cache key, so a change of the training loop
#: or of the file layout that bumps it makes old files unused rather than misread.
SYNTHETIC_BACKBONE_FORMAT = "frx.synthetic-backbone/1"
#: First identity of every backbone's held-out probe set (training worlds start at identity 0).
PROBE_FIRST_IDENTITY = 1_000_000
#: Size of the held-out probe set named in the facts (as in ``frx demo``): identities × images each.
PROBE_IDENTITIES, PROBE_IMAGES_PER_IDENTITY = 400, 4

_SCHEDULE = {"momentum": 0.9, "weight_decay": 5e-4, "margin": 0.3, "scale": 32.0}

#: name → recipe. ``architecture``: a key of :data:`frx_plugin.models.BACKBONE_ARCHITECTURES`;
#: ``model``: its constructor arguments but ``input_size`` (which is ``size``); the training world
#: has ``identities`` × ``images_per_identity`` faces of ``size`` × ``size``; SGD (``momentum``,
#: ``weight_decay``) with ``lr`` warmed up over the first 5% of the steps, then a cosine decay to 0,
#: ``epochs`` passes of ``batch_size``; ArcFace with ``margin`` and ``scale``; ``seed`` seeds the
#: world, the initial weights and the batch order. Any of these but ``architecture`` and ``model``,
#: and any entry of ``model``, can be overridden by name.
BUILTIN_BACKBONES: dict[str, dict[str, Any]] = {
    # frx demo's recipe: TAR 0.96 at FMR 1e-3 on the held-out probe set, about a minute on a 2-core CPU
    "resnet-small": {
        "architecture": "resnet-small",
        "model": {"embedding_dim": 128, "widths": [16, 32, 64, 128], "blocks_per_stage": 1, "dropout": 0.0},
        "identities": 500, "images_per_identity": 20, "size": 64,
        "epochs": 12, "lr": 0.1, "batch_size": 64, "seed": 0, **_SCHEDULE,
    },
    # the same training, so that a comparison shows the architecture: TAR 0.97, under two minutes
    "mobilefacenet-like": {
        "architecture": "mobilefacenet-like",
        "model": {"embedding_dim": 128, "stem_width": 16, "widths": [32, 64, 96], "blocks": [1, 2, 2], "expansion": 2,
                  "last_width": 256},
        "identities": 500, "images_per_identity": 20, "size": 64,
        "epochs": 12, "lr": 0.1, "batch_size": 64, "seed": 0, **_SCHEDULE,
    },
}

#: Rough cost on a 2-core CPU, seconds per training image and epoch at 64×64 (for the expected-duration line).
_SECONDS_PER_IMAGE_EPOCH = {"resnet-small": 0.4e-3, "mobilefacenet-like": 1.0e-3}
_SECONDS_PER_RENDER = 1.4e-3

#: integer settings and their least values
_INTEGERS = {"identities": 2, "images_per_identity": 1, "size": 8, "epochs": 1, "batch_size": 2}
#: number settings: which values are allowed, in words
_NUMBERS: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "a positive number"),
    "scale": (lambda v: v > 0, "a positive number"),
    "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "margin": (lambda v: 0 <= v < math.pi / 2, "a number in [0, pi/2)"),
}


def _known(name: str) -> dict[str, Any]:
    if name not in BUILTIN_BACKBONES:
        raise ValueError(f"unknown synthetic backbone {name!r}; known: {', '.join(BUILTIN_BACKBONES)}")
    return BUILTIN_BACKBONES[name]


def resolve_recipe(name: str, **overrides: Any) -> dict[str, Any]:
    """The full recipe of backbone ``name`` with ``overrides`` applied and checked (a JSON-ready copy).

    An unknown name, an unknown setting or a bad value is a ``ValueError`` that names it.
    """
    from frx_plugin.models import BACKBONE_ARCHITECTURES

    recipe = copy.deepcopy(_known(name))
    settable = sorted(k for k in recipe if k not in ("architecture", "model"))
    for key, value in overrides.items():
        if isinstance(value, tuple):
            value = list(value)
        if key in recipe["model"]:
            recipe["model"][key] = value
        elif key in settable:
            recipe[key] = value
        else:
            raise ValueError(f"synthetic backbone {name}: unknown setting {key!r}; it takes {', '.join(settable + sorted(recipe['model']))}")
    for key, minimum in _INTEGERS.items():
        value = recipe[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"synthetic backbone {name}: {key} must be an integer >= {minimum}, got {value!r}")
    if not isinstance(recipe["seed"], int) or isinstance(recipe["seed"], bool):
        raise ValueError(f"synthetic backbone {name}: seed must be an integer, got {recipe['seed']!r}")
    for key, (allowed, what) in _NUMBERS.items():
        value = recipe[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not allowed(value):
            raise ValueError(f"synthetic backbone {name}: {key} must be {what}, got {value!r}")
        recipe[key] = float(value)  # lr=1 and lr=1.0 are one recipe (and one cache file)
    if recipe["identities"] >= PROBE_FIRST_IDENTITY:
        raise ValueError(f"synthetic backbone {name}: identities must stay below {PROBE_FIRST_IDENTITY} (the held-out probe set starts there)")
    if recipe["identities"] * recipe["images_per_identity"] < recipe["batch_size"]:
        raise ValueError(
            f"synthetic backbone {name}: {recipe['identities']} identities × {recipe['images_per_identity']} images give fewer "
            f"than one batch of {recipe['batch_size']}")
    if recipe["architecture"] not in BACKBONE_ARCHITECTURES:
        raise ValueError(f"synthetic backbone {name}: unknown architecture {recipe['architecture']!r}")
    _arguments(name, recipe)  # the architecture's own checks (input size, widths)
    return recipe


def _arguments(name: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments the architecture records for the recipe (built once, global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        return _construct(name, recipe).constructor_arguments()


def _construct(name: str, recipe: dict[str, Any]) -> ResidualFaceNet | MobileFaceNetLike:
    from frx_plugin.models import BACKBONE_ARCHITECTURES

    cls = BACKBONE_ARCHITECTURES[recipe["architecture"]]
    kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recipe["model"].items()}
    try:
        return cls(input_size=recipe["size"], **kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"synthetic backbone {name}: {exc}") from None


def _initial(name: str, recipe: dict[str, Any]) -> tuple[ResidualFaceNet | MobileFaceNetLike, nn.Module]:
    """The backbone and its ArcFace head with their initial weights, seeded by the recipe (global RNG untouched)."""
    from frx_plugin.models import ArcFaceHead

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        module = _construct(name, recipe)
        head = ArcFaceHead(module.embedding_dim, recipe["identities"], scale=recipe["scale"], margin=recipe["margin"])
    return module, head


def build_synthetic_backbone(name: str, **overrides: Any) -> nn.Module:
    """Backbone ``name`` untrained, with the initial weights its training starts from (eval mode)."""
    return _initial(name, resolve_recipe(name, **overrides))[0].eval()


def probe_facts(recipe: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`~frx_plugin.synthetic.world.SyntheticProbeSet` for held-out identities at the recipe's size."""
    return {"n_identities": PROBE_IDENTITIES, "images_per_identity": PROBE_IMAGES_PER_IDENTITY, "seed": recipe["seed"],
            "size": recipe["size"], "first_identity": PROBE_FIRST_IDENTITY}


def _expected_seconds(recipe: dict[str, Any]) -> float:
    images = recipe["identities"] * recipe["images_per_identity"]
    area = (recipe["size"] / 64) ** 2
    per_image = _SECONDS_PER_IMAGE_EPOCH.get(recipe["architecture"], 2e-3)
    return images * area * (_SECONDS_PER_RENDER + per_image * recipe["epochs"])


def _duration(seconds: float) -> str:
    return f"{max(10, round(seconds, -1)):.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _train(name: str, recipe: dict[str, Any], say: Callable[[str], Any], destination: Path | None = None) -> nn.Module:
    where = f"; cached at {destination}" if destination is not None else ""
    say(f"frx: training the synthetic backbone {name} ({recipe['identities']} identities × {recipe['images_per_identity']} images, "
        f"{recipe['size']}x{recipe['size']}, {recipe['epochs']} epochs), about {_duration(_expected_seconds(recipe))} on a 2-core CPU{where}")
    started = time.perf_counter()
    world = SyntheticFaceWorld(recipe["identities"], recipe["images_per_identity"], seed=recipe["seed"], size=recipe["size"], first_identity=0)
    everything = torch.arange(len(world))
    images = torch.empty(len(world), 3, recipe["size"], recipe["size"], dtype=torch.uint8)  # rendered once, kept as 8 bits
    for start in range(0, len(world), 500):
        chunk = everything[start : start + 500]
        images[chunk] = world.render(chunk).mul_(255).round_().to(torch.uint8)
    labels = everything // recipe["images_per_identity"]

    module, head = _initial(name, recipe)
    # about a quarter faster on CPUs (depthwise convs most); nn.Module.to takes memory_format, its stubs' overloads omit it
    module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    parameters = list(module.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(parameters, lr=recipe["lr"], momentum=recipe["momentum"], weight_decay=recipe["weight_decay"])
    steps_per_epoch = len(world) // recipe["batch_size"]
    total = steps_per_epoch * recipe["epochs"]
    warmup = max(1, total // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    order = torch.Generator().manual_seed(recipe["seed"])
    module.train()
    head.train()
    loss_sum, count = 0.0, 0
    for epoch in range(recipe["epochs"]):
        permutation = torch.randperm(len(world), generator=order)
        loss_sum, count = 0.0, 0
        for step in range(steps_per_epoch):
            batch = permutation[step * recipe["batch_size"] : (step + 1) * recipe["batch_size"]]
            batch_images = images[batch].float().div_(255).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(head(module(batch_images), labels[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach())
            count += 1
        if not math.isfinite(loss_sum):
            raise RuntimeError(f"synthetic backbone {name}: training diverged in epoch {epoch + 1} (loss {loss_sum}); lower lr")
    say(f"frx: trained the synthetic backbone {name} in {time.perf_counter() - started:.0f}s (last epoch's loss {loss_sum / max(count, 1):.2f})")
    # back to the default layout, so the module computes exactly what a loaded copy computes
    return module.to(memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]  # as above


def train_synthetic_backbone(name: str, say: Callable[[str], Any] = print, **overrides: Any) -> nn.Module:
    """Train backbone ``name`` of :data:`BUILTIN_BACKBONES` (with ``overrides``) and return it in eval mode.

    Plain torch on the CPU: the training world is rendered once (8 bits per channel), then SGD with an
    :class:`~frx_plugin.models.ArcFaceHead` on its identities. Deterministic in the recipe (the seed
    fixes the world, the initial weights and the batch order; the global RNG is left as it was).
    ``say`` gets one line when training starts, with the expected duration, and one when it is done.
    """
    return _train(name, resolve_recipe(name, **overrides), say)


def _cache_key(name: str, recipe: dict[str, Any]) -> dict[str, Any]:
    return {"format": SYNTHETIC_BACKBONE_FORMAT, "name": name, "recipe": recipe,
            "arguments": _arguments(name, recipe), "world": world_fingerprint()}


def _path(name: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]
    return cache_dir() / "backbones" / f"{name}-{digest}.safetensors"


def synthetic_backbone_path(name: str, **overrides: Any) -> Path:
    """Where :func:`load_or_train_synthetic_backbone` keeps backbone ``name`` trained with ``overrides``."""
    recipe = resolve_recipe(name, **overrides)
    return _path(name, _cache_key(name, recipe))


def _load_cached(path: Path, key: dict[str, Any]) -> nn.Module:
    from frx_plugin.models import load_backbone

    module, description = load_backbone(path)
    # "zoo": the header entry of the cached files (the module's name before it moved; files keep it)
    stored = description.get("zoo", {}).get("key") if isinstance(description.get("zoo"), dict) else None
    if stored != key:
        raise ValueError(f"{path}: made for another recipe, world or format than {key}")
    if not all(bool(torch.isfinite(t).all()) for t in module.state_dict().values() if t.is_floating_point()):
        raise ValueError(f"{path}: weights are not finite")
    return module


def load_or_train_synthetic_backbone(name: str, say: Callable[[str], Any] = print, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """Backbone ``name`` (with ``overrides``) in eval mode, from the cache or trained now and cached, and its facts.

    The cache file is ``cache_dir()/backbones/NAME-DIGEST.safetensors`` (written by
    :func:`~frx_plugin.models.save_backbone`, atomically), the digest over the full recipe, the
    architecture's arguments, the file format and the synthetic renderer. A valid cached file is
    loaded without training; a damaged or mismatching one is retrained with a warning naming it and
    replaced. If the cache folder is not writable the trained backbone is still returned, with a
    warning. ``facts``: ``name``, ``probe`` (keyword arguments of
    :class:`~frx_plugin.synthetic.world.SyntheticProbeSet` for held-out identities it never saw, at its
    input size), ``recipe``, ``path`` and ``training_seconds`` (``None`` when loaded from the cache).
    """
    from frx_plugin.models import save_backbone

    recipe = resolve_recipe(name, **overrides)
    key = _cache_key(name, recipe)
    path = _path(name, key)
    facts: dict[str, Any] = {"name": name, "probe": probe_facts(recipe), "recipe": copy.deepcopy(recipe), "path": str(path),
                             "training_seconds": None}
    if path.exists():
        try:
            return _load_cached(path, key), facts
        except (ValueError, OSError) as exc:
            warnings.warn(f"cached synthetic backbone {path} is unusable and is retrained: {exc}", RuntimeWarning, stacklevel=2)
    started = time.perf_counter()
    module = _train(name, recipe, say, destination=path)
    facts["training_seconds"] = time.perf_counter() - started
    try:
        save_backbone(module, path, probe=facts["probe"], extra={"zoo": {"key": key, "training_seconds": facts["training_seconds"]}})
    except OSError as exc:
        warnings.warn(f"could not cache the synthetic backbone {name} at {path}: {exc}", RuntimeWarning, stacklevel=2)
    return module, facts


def _say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def open_synthetic_backbone(argument: str, say: Callable[[str], Any] = _say_on_stderr, **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """``synthetic:NAME[,KEY=VALUE...]``: backbone NAME of :data:`BUILTIN_BACKBONES`, trained on first use and cached.

    The options override recipe settings (``synthetic:resnet-small,epochs=4``). Returns ``(model, facts)``
    as :func:`load_or_train_synthetic_backbone`; training progress goes to stderr.
    """
    name = (argument or "").strip()
    _known(name)
    return load_or_train_synthetic_backbone(name, say=say, **overrides)
