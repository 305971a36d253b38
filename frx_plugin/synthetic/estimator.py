"""The built-in attribute estimator: a small CNN trained on renders of the synthetic world, cached on disk.

:func:`synthetic_estimator` is the factory registered through ``frx_register_estimators``: for a
:class:`~frx_plugin.synthetic.world.SyntheticProbeSet` it gives the :class:`SyntheticEstimator` for
the probe set's image size, loaded from ``cache_dir()/estimators`` (:mod:`frx_plugin.cache`) or
trained now (:func:`train_synthetic_estimator`) and written there. Every estimator reports its own
accuracy per attribute, measured on identities of its training world that it never trained on.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from frx_plugin.attributes import AttributeSchema
from frx_plugin.cache import cache_dir
from frx_plugin.errors import EstimatorError
from frx_plugin.randomness import seeded
from frx_plugin.synthetic.parameters import SYNTHETIC_SCHEMA
from frx_plugin.synthetic.world import SyntheticFaceWorld, SyntheticProbeSet, world_fingerprint

__all__ = [
    "ESTIMATOR_METADATA",
    "SYNTHETIC_ESTIMATOR_DEFAULTS",
    "SYNTHETIC_ESTIMATOR_FORMAT",
    "SYNTHETIC_ESTIMATOR_WIDTHS",
    "AttributeCNN",
    "SyntheticEstimator",
    "attribute_accuracy",
    "load_or_train_synthetic_estimator",
    "load_synthetic_estimator",
    "save_synthetic_estimator",
    "synthetic_estimator",
    "synthetic_estimator_path",
    "train_synthetic_estimator",
]

_log = logging.getLogger(__name__)

#: Version of the cached estimator files; part of the cache key, so a change of architecture,
#: training recipe or file layout that bumps it makes old files unused rather than misread.
SYNTHETIC_ESTIMATOR_FORMAT = "frx.synthetic-estimator/1"
#: safetensors metadata key holding the cached estimator's description (JSON).
ESTIMATOR_METADATA = "frx.estimator"
#: Channel widths of :class:`AttributeCNN`'s stride-2 stages in the synthetic estimator.
SYNTHETIC_ESTIMATOR_WIDTHS = (16, 32, 64, 96)


class AttributeCNN(nn.Module):
    """A small CNN reading every attribute of ``schema`` off ``(B, 3, S, S)`` images in [0, 1].

    Stages of conv(stride 2)-BN-ReLU, conv-BN-ReLU halve the resolution ``len(widths)`` times (S
    must be a multiple of ``2 ** len(widths)``); global average pooling and one linear layer give
    ``num_classes`` logits per discrete attribute (binary: 2) and one output per continuous one,
    which predicts the standardized value ``(value - target_mean) / target_std``. The buffers
    ``target_mean`` and ``target_std`` (one entry per attribute, 0 and 1 for discrete ones) travel
    with the state dict. Two constant coordinate channels are appended to the input, so pose (where
    the features sit) stays readable after pooling.
    """

    # buffers (register_buffer in __init__)
    coordinates: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, schema: AttributeSchema, size: int, widths: Sequence[int] = SYNTHETIC_ESTIMATOR_WIDTHS) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        factor = 2 ** len(widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"AttributeCNN: widths must be positive, got {widths}")
        if not isinstance(size, int) or size < factor or size % factor:
            raise ValueError(f"AttributeCNN: size must be a positive multiple of {factor}, got {size!r}")
        self.schema = schema
        self.size = size
        self.widths = widths
        self.output_sizes = tuple(a.num_classes if a.discrete else 1 for a in schema)
        layers: list[nn.Module] = []
        in_ch = 3 + 2
        for width in widths:
            layers += [
                nn.Conv2d(in_ch, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            ]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, sum(self.output_sizes))
        coords = (torch.arange(size, dtype=torch.float32) + 0.5) * (2.0 / size) - 1.0
        grid = torch.stack([coords.view(1, -1).expand(size, size), coords.view(-1, 1).expand(size, size)])
        self.register_buffer("coordinates", grid.unsqueeze(0).contiguous(), persistent=False)
        self.register_buffer("target_mean", torch.zeros(len(schema)))
        self.register_buffer("target_std", torch.ones(len(schema)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, sum(output_sizes))`` raw outputs (logits and standardized values)."""
        x = torch.cat([(images - 0.5) / 0.5, self.coordinates.expand(images.shape[0], -1, -1, -1)], 1)
        return self.head(self.features(x).mean((2, 3)))

    def split(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs → ``{name: (B, num_classes) logits or (B,) standardized values}``."""
        parts = torch.split(outputs, list(self.output_sizes), dim=1)
        return {a.name: part if a.discrete else part[:, 0] for a, part in zip(self.schema, parts)}

    def readings(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs → ``{name: int64 classes or float32 values in the attribute's units}``."""
        out = {}
        for i, (a, part) in enumerate(zip(self.schema, self.split(outputs).values())):
            if a.discrete:
                out[a.name] = part.argmax(1).to(torch.int64)
            else:
                out[a.name] = (part * self.target_std[i] + self.target_mean[i]).to(torch.float32)
        return out


class SyntheticEstimator:
    """An :class:`AttributeEstimator` for synthetic-world faces: a trained :class:`AttributeCNN`.

    ``config``: the keyword arguments of :func:`train_synthetic_estimator` it was trained with;
    ``accuracy``: measured on the held-out identities ``held_out_identities`` (absolute ids) of
    its training world (:attr:`training_world`), never on the identities it was trained on.
    """

    batch_size = 256

    def __init__(self, module: AttributeCNN, config: Mapping[str, Any], accuracy: Mapping[str, Mapping[str, float]],
                 held_out_identities: Sequence[int] = ()) -> None:
        self.module = module.eval()
        self.schema: AttributeSchema = module.schema
        self.attributes: tuple[str, ...] = tuple(self.schema.names)
        self.input_shape: tuple[int, int, int] = (3, module.size, module.size)
        self.config: dict[str, Any] = dict(config)
        self.accuracy: dict[str, dict[str, float]] = {k: dict(v) for k, v in accuracy.items()}
        self.held_out_identities: tuple[int, ...] = tuple(int(i) for i in held_out_identities)

    def __repr__(self) -> str:
        return f"SyntheticEstimator(input_shape={self.input_shape}, config={self.config})"

    def to(self, device) -> SyntheticEstimator:
        """Run on ``device`` (images are moved there batch by batch)."""
        self.module.to(device)
        return self

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: (B,) readings}``: int64 classes for discrete attributes, float32 values in their units."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise EstimatorError(
                f"the synthetic estimator takes images (B, C, H, W) with (C, H, W) = {self.input_shape}, got {got}"
            )
        device = self.module.target_mean.device
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.attributes}
        self.module.eval()
        with torch.inference_mode():
            for start in range(0, images.shape[0], self.batch_size):
                chunk = images[start : start + self.batch_size].to(device=device, dtype=torch.float32)
                for name, value in self.module.readings(self.module(chunk)).items():
                    parts[name].append(value)
        out = {}
        for a in self.schema:
            dtype = torch.int64 if a.discrete else torch.float32
            out[a.name] = torch.cat(parts[a.name]) if parts[a.name] else torch.empty(0, dtype=dtype, device=device)
        return out

    @property
    def training_world(self):
        """The synthetic world it was trained on (its held-out identities included)."""
        c = self.config
        return SyntheticFaceWorld(c["n_identities"], c["images_per_identity"], seed=c["seed"], size=c["size"],
                                  first_identity=c["first_identity"])

    def held_out_indices(self) -> torch.Tensor:
        """Sample indices in :attr:`training_world` of the held-out identities (what ``accuracy`` is measured on)."""
        world = self.training_world
        identity = world.identity(torch.arange(len(world)))
        return torch.nonzero(torch.isin(identity, torch.tensor(self.held_out_identities, dtype=torch.int64))).view(-1)


def attribute_accuracy(schema: AttributeSchema, predicted: Mapping[str, torch.Tensor],
                       truth: Mapping[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per attribute: ``accuracy`` and ``balanced_accuracy`` (discrete) or ``r2`` and ``mae`` (continuous).

    Missing labels (-1, NaN) are left out; an attribute without labels gets NaN.
    """
    out: dict[str, dict[str, float]] = {}
    for a in schema:
        if a.name not in predicted or a.name not in truth:
            continue
        y = truth[a.name].reshape(-1).cpu()
        p = predicted[a.name].reshape(-1).cpu()
        keep = ~a.missing_mask(y)
        y, p = y[keep], p[keep]
        if a.discrete:
            if y.numel() == 0:
                out[a.name] = {"accuracy": math.nan, "balanced_accuracy": math.nan}
                continue
            y, p = y.long(), p.long()
            recalls = [float((p[y == c] == c).double().mean()) for c in range(a.num_classes) if bool((y == c).any())]
            out[a.name] = {"accuracy": float((p == y).double().mean()), "balanced_accuracy": sum(recalls) / len(recalls)}
        else:
            if y.numel() == 0:
                out[a.name] = {"r2": math.nan, "mae": math.nan}
                continue
            y, p = y.double(), p.double()
            total = float(((y - y.mean()) ** 2).sum())
            r2 = 1.0 - float(((y - p) ** 2).sum()) / total if total > 0 else math.nan
            out[a.name] = {"r2": r2, "mae": float((y - p).abs().mean())}
    return out


def _check_config(config: Mapping[str, Any]) -> None:
    factor = 2 ** len(SYNTHETIC_ESTIMATOR_WIDTHS)
    for key in ("size", "n_identities", "images_per_identity", "epochs", "batch_size"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise EstimatorError(f"synthetic estimator: {key} must be a positive integer, got {value!r}")
    for key in ("seed", "first_identity"):
        if not isinstance(config[key], int) or isinstance(config[key], bool):
            raise EstimatorError(f"synthetic estimator: {key} must be an integer, got {config[key]!r}")
    if config["size"] % factor:
        raise EstimatorError(f"synthetic estimator: size must be a multiple of {factor}, got {config['size']}")
    if config["n_identities"] < 2:
        raise EstimatorError(f"synthetic estimator: n_identities must be at least 2 (train and held out), got {config['n_identities']}")
    if not (isinstance(config["lr"], (int, float)) and math.isfinite(config["lr"]) and config["lr"] > 0):
        raise EstimatorError(f"synthetic estimator: lr must be a positive number, got {config['lr']!r}")
    fraction = config["held_out_fraction"]
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise EstimatorError(f"synthetic estimator: held_out_fraction must lie in (0, 1), got {fraction!r}")


def train_synthetic_estimator(size: int = 64, n_identities: int = 1000, images_per_identity: int = 8, epochs: int = 12,
                              seed: int = 0, first_identity: int = 3_000_000, batch_size: int = 64, lr: float = 2e-3,
                              held_out_fraction: float = 0.2,
                              say: Callable[[str], Any] | None = None) -> SyntheticEstimator:
    """Train an :class:`AttributeCNN` on renders of a synthetic world and measure it on held-out identities.

    The world has identities ``first_identity .. first_identity + n_identities - 1`` (far from the
    probe sets' defaults, 100 000 and 1 000 000); a seeded permutation holds out
    ``held_out_fraction`` of the identities (all their images) for the reported accuracy. Adam with
    a light cosine decay of ``lr`` minimises cross-entropy of the discrete heads plus the squared
    error of the standardized continuous ones (summed over attributes). Deterministic in its
    arguments; ``say`` receives progress lines.
    """
    config = dict(size=size, n_identities=n_identities, images_per_identity=images_per_identity, epochs=epochs,
                  seed=seed, first_identity=first_identity, batch_size=batch_size, lr=float(lr),
                  held_out_fraction=float(held_out_fraction))
    _check_config(config)
    say = say or (lambda line: None)
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    world = SyntheticFaceWorld(n_identities, images_per_identity, seed=seed, size=size, first_identity=first_identity)
    train_idx, held_idx, n_held = _identity_split(world, held_out_fraction, generator)
    images = _render_uint8(world)
    labels = world.labels(torch.arange(len(world)))
    say(f"synthetic estimator: rendered {len(world)} faces of {size}x{size} in {time.perf_counter() - started:.1f}s "
        f"({len(train_idx)} for training, {len(held_idx)} of {n_held} held-out identities)")
    module = _initial_module(size, seed, labels, train_idx)
    _fit(module, images, _standardized_targets(module, labels), train_idx, config, generator,
         lambda line: say(f"{line} ({time.perf_counter() - started:.0f}s)"))
    module.eval()
    estimator = SyntheticEstimator(module, config, {}, (world.identity(held_idx[::images_per_identity])).tolist())
    estimator.accuracy = _held_out_accuracy(estimator, images, labels, held_idx)
    say(f"synthetic estimator: trained in {time.perf_counter() - started:.0f}s; held out: " + ", ".join(
        f"{name} {next(iter(m.values())):.2f}" for name, m in estimator.accuracy.items()))
    return estimator


def _identity_split(world: SyntheticFaceWorld, held_out_fraction: float,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sample indices of the training and the held-out identities (a seeded permutation), and how many are held out."""
    n_identities, images_per_identity = world.n_identities, world.images_per_identity
    n_held = min(n_identities - 1, max(1, round(held_out_fraction * n_identities)))
    order = torch.randperm(n_identities, generator=generator)
    held = torch.zeros(n_identities, dtype=torch.bool)
    held[order[:n_held]] = True
    everything = torch.arange(len(world))
    is_held = held[everything // images_per_identity]
    return everything[~is_held], everything[is_held], n_held


def _render_uint8(world: SyntheticFaceWorld) -> torch.Tensor:
    """Every face of ``world``, rendered once and kept as uint8 (N, 3, S, S)."""
    everything = torch.arange(len(world))
    images = torch.empty(len(world), 3, world.size, world.size, dtype=torch.uint8)
    for start in range(0, len(world), 512):
        chunk = everything[start : start + 512]
        images[chunk] = world.render(chunk).mul_(255).round_().to(torch.uint8)
    return images


def _initial_module(size: int, seed: int, labels: Mapping[str, torch.Tensor], train_idx: torch.Tensor) -> AttributeCNN:
    """A seeded :class:`AttributeCNN` (global RNG untouched) standardizing by the training faces' label statistics."""
    with seeded(seed):
        module = AttributeCNN(SYNTHETIC_SCHEMA, size)
    for i, a in enumerate(SYNTHETIC_SCHEMA):
        if not a.discrete:
            values = labels[a.name][train_idx].double()
            module.target_mean[i] = float(values.mean())
            module.target_std[i] = max(float(values.std()), 1e-6)
    return module


def _standardized_targets(module: AttributeCNN, labels: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Training targets: class indices of the discrete attributes, standardized values of the continuous ones."""
    targets = {}
    for i, a in enumerate(module.schema):
        y = labels[a.name]
        targets[a.name] = y.long() if a.discrete else ((y - module.target_mean[i]) / module.target_std[i]).float()
    return targets


def _fit(module: AttributeCNN, images: torch.Tensor, targets: Mapping[str, torch.Tensor], train_idx: torch.Tensor,
         config: Mapping[str, Any], generator: torch.Generator, say: Callable[[str], Any]) -> None:
    """Adam with a light cosine decay over ``config["epochs"]`` passes; ``say`` gets one line per epoch."""
    epochs, batch_size, lr = config["epochs"], config["batch_size"], config["lr"]
    steps_per_epoch = math.ceil(len(train_idx) / batch_size)
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch, eta_min=lr * 0.05)
    module.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        permutation = train_idx[torch.randperm(len(train_idx), generator=generator)]
        for start in range(0, len(permutation), batch_size):
            batch = permutation[start : start + batch_size]
            if batch.numel() < 2:  # BatchNorm needs two samples
                continue
            heads = module.split(module(images[batch].float().div_(255)))
            loss = torch.zeros(())
            for a in module.schema:
                target = targets[a.name][batch]
                loss = loss + (F.cross_entropy(heads[a.name], target) if a.discrete else F.mse_loss(heads[a.name], target))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * batch.numel()
            count += batch.numel()
        if not math.isfinite(total):
            raise EstimatorError(f"synthetic estimator: training diverged in epoch {epoch + 1} (loss {total})")
        say(f"synthetic estimator: epoch {epoch + 1}/{epochs}, loss {total / max(count, 1):.3f}")


def _held_out_accuracy(estimator: SyntheticEstimator, images: torch.Tensor, labels: Mapping[str, torch.Tensor],
                       held_idx: torch.Tensor) -> dict[str, dict[str, float]]:
    """:func:`attribute_accuracy` of ``estimator`` on the held-out faces."""
    predicted: dict[str, list[torch.Tensor]] = {name: [] for name in estimator.schema.names}
    for start in range(0, len(held_idx), 512):
        chunk = held_idx[start : start + 512]
        for name, value in estimator.estimate(images[chunk].float().div_(255)).items():
            predicted[name].append(value)
    return attribute_accuracy(
        estimator.schema, {k: torch.cat(v) for k, v in predicted.items()}, {k: v[held_idx] for k, v in labels.items()})


# --------------------------------------------------------------------------- the on-disk cache


_TRAIN_PARAMETERS = inspect.signature(train_synthetic_estimator).parameters
#: Default configuration of the built-in synthetic estimator (keyword arguments of
#: :func:`train_synthetic_estimator`); :func:`synthetic_estimator` reads it at call time and
#: replaces ``size`` by the probe set's image size.
SYNTHETIC_ESTIMATOR_DEFAULTS: dict[str, Any] = {
    name: p.default for name, p in _TRAIN_PARAMETERS.items() if name != "say"
}


def _full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(config) - set(SYNTHETIC_ESTIMATOR_DEFAULTS))
    if unknown:
        raise TypeError(f"synthetic estimator: unknown settings {unknown}; known: {sorted(SYNTHETIC_ESTIMATOR_DEFAULTS)}")
    # the training function's own defaults complete the key, so omitted and explicit defaults share one file
    full = {name: config.get(name, p.default) for name, p in _TRAIN_PARAMETERS.items() if name != "say"}
    for key in ("lr", "held_out_fraction"):
        if isinstance(full[key], int) and not isinstance(full[key], bool):
            full[key] = float(full[key])
    _check_config(full)
    return full


def _cache_key(config: Mapping[str, Any]) -> dict[str, Any]:
    return {"format": SYNTHETIC_ESTIMATOR_FORMAT, "widths": list(SYNTHETIC_ESTIMATOR_WIDTHS),
            "world": world_fingerprint(), "config": dict(config)}


def synthetic_estimator_path(**config) -> Path:
    """Where :func:`load_or_train_synthetic_estimator` keeps the estimator of ``config``."""
    key = json.dumps(_cache_key(_full_config(config)), sort_keys=True, separators=(",", ":"))
    return cache_dir() / "estimators" / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def save_synthetic_estimator(estimator: SyntheticEstimator, path) -> None:
    """Write ``estimator`` as safetensors (weights and standardization buffers) with its description, atomically."""
    from safetensors.torch import save_file

    from frx_plugin.history import atomic_write

    description = {
        "key": _cache_key(_full_config(estimator.config)),
        "schema": estimator.schema.to_json(),
        "accuracy": estimator.accuracy,
        "held_out_identities": list(estimator.held_out_identities),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in estimator.module.state_dict().items()}
    metadata = {ESTIMATOR_METADATA: json.dumps(description, sort_keys=True)}
    atomic_write(Path(path), lambda tmp: save_file(state, str(tmp), metadata=metadata))


def load_synthetic_estimator(path, config: Mapping[str, Any] | None = None) -> SyntheticEstimator:
    """A synthetic estimator saved by :func:`save_synthetic_estimator` (read without pickle).

    A file that is not readable, was not written by it, or (given ``config``) holds another
    configuration, world or format is an :class:`EstimatorError` naming the file.
    """
    from frx_plugin.history import read_tagged_safetensors

    path = Path(path)
    if not path.is_file():
        raise EstimatorError(f"no cached estimator at {path}")
    header, state = read_tagged_safetensors(path, ESTIMATOR_METADATA, "frx's save_synthetic_estimator", EstimatorError)
    try:
        description = json.loads(header)
        key, schema = description["key"], AttributeSchema.from_json(description["schema"])
        accuracy, held_out = description["accuracy"], description["held_out_identities"]
        stored = dict(key["config"])
    except Exception as exc:
        raise EstimatorError(f"{path}: damaged {ESTIMATOR_METADATA!r} header ({type(exc).__name__}: {exc})") from None
    if key.get("format") != SYNTHETIC_ESTIMATOR_FORMAT:
        raise EstimatorError(f"{path}: format {key.get('format')!r}, expected {SYNTHETIC_ESTIMATOR_FORMAT!r}")
    try:
        expected = _cache_key(_full_config(config if config is not None else stored))
    except (TypeError, EstimatorError) as exc:
        raise EstimatorError(f"{path}: unusable configuration in the header ({exc})") from None
    if key != expected:
        differ = sorted(k for k in set(key) | set(expected) if key.get(k) != expected.get(k))
        raise EstimatorError(f"{path}: made for another {', '.join(differ)} ({key} instead of {expected})")
    if schema != SYNTHETIC_SCHEMA:
        raise EstimatorError(f"{path}: its attributes {list(schema.names)} are not the synthetic world's {list(SYNTHETIC_SCHEMA.names)}")
    module = AttributeCNN(schema, stored["size"], tuple(key["widths"]))
    try:
        module.load_state_dict(state)
    except Exception as exc:
        raise EstimatorError(f"{path}: weights do not fit the estimator ({str(exc).splitlines()[0]})") from None
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise EstimatorError(f"{path}: weights are not finite")
    return SyntheticEstimator(module, stored, accuracy, held_out)


def load_or_train_synthetic_estimator(*, say: Callable[[str], Any] | None = None, **config) -> SyntheticEstimator:
    """The synthetic estimator for ``config`` (keyword arguments of :func:`train_synthetic_estimator`).

    Cached in ``cache_dir()/estimators/synthetic-<key>.safetensors``, the key a digest of the full
    configuration, the file format and the renderer. A cached file is loaded; a damaged or
    mismatching one is retrained (with a warning naming it) and replaced. A new estimator is written
    atomically; if the cache folder is not writable it is still returned, with a warning.
    """
    full = _full_config(config)
    path = synthetic_estimator_path(**full)
    if path.exists():
        try:
            return load_synthetic_estimator(path, full)
        except EstimatorError as exc:
            warnings.warn(f"cached synthetic estimator {path} is unusable and is retrained: {exc}", RuntimeWarning, stacklevel=2)
    estimator = train_synthetic_estimator(**full, say=say)
    try:
        save_synthetic_estimator(estimator, path)
    except OSError as exc:
        warnings.warn(f"could not cache the synthetic estimator at {path}: {exc}", RuntimeWarning, stacklevel=2)
    return estimator


def synthetic_estimator(probe: Any) -> SyntheticEstimator | None:
    """The built-in estimator factory: for a :class:`~frx_plugin.synthetic.world.SyntheticProbeSet`, the cached
    (or newly trained) estimator for its image size with :data:`SYNTHETIC_ESTIMATOR_DEFAULTS` otherwise;
    ``None`` for any other probe set."""
    if not isinstance(probe, SyntheticProbeSet):
        return None
    config = dict(SYNTHETIC_ESTIMATOR_DEFAULTS)
    config["size"] = int(probe.world.size)
    return load_or_train_synthetic_estimator(say=_log.info, **config)
