"""The synthetic face world: structured cartoon faces whose parameters are sampled deterministically.

Every face is drawn from a parameter vector: identity attributes are fixed per
identity (continuous ones carry a small per-image jitter), nuisance attributes
vary per image. All randomness comes from a counter-based hash (splitmix64 on
int64 tensors), keyed on the absolute identity id and the image number within
the identity, so a sample renders the same pixels in any batch, chunk, process
or DDP rank, and changing one parameter re-renders the exact counterfactual
(same noise pattern, same everything else).

The parameters and their units are :mod:`frx_plugin.synthetic.parameters`; the renderer is
:mod:`frx_plugin.synthetic.renderer`. This module holds the world, its views as a training
dataset, a probe set and a generator, and :func:`world_fingerprint` (the cache key of everything
trained on it).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import Dataset

from frx_plugin.probe import ProbeSet
from frx_plugin.randomness import box_muller, hash_keys, uniform_from_bits
from frx_plugin.synthetic.parameters import (
    IDENTITY_STREAM,
    IMAGE_STREAM,
    N_IDENTITY_SLOTS,
    N_IMAGE_SLOTS,
    NOISE_BANK_SIZE,
    NOISE_STREAM,
    PARAMETERS,
    PARAMETERS_BY_NAME,
    SYNTHETIC_SCHEMA,
    Parameter,
)
from frx_plugin.synthetic.renderer import pixel_coordinates, render_faces

__all__ = [
    "SyntheticFaceDataset",
    "SyntheticFaceWorld",
    "SyntheticGenerator",
    "SyntheticProbeSet",
    "synthetic_generator",
    "world_fingerprint",
]


class SyntheticFaceWorld:
    """``n_identities`` × ``images_per_identity`` synthetic faces, deterministic in (seed, index).

    Sample ``i`` shows identity ``first_identity + i // images_per_identity``
    (its image number ``i % images_per_identity``). Identity parameters are
    hashed on the absolute identity id and per-image ones on (identity id,
    image number), so two worlds with the same seed agree on every identity
    they share, and worlds with disjoint identity ranges show different people.
    """

    schema = SYNTHETIC_SCHEMA

    def __init__(self, n_identities: int, images_per_identity: int, seed: int = 0, size: int = 112,
                 first_identity: int = 0, chunk_size: int = 64) -> None:
        for name, value, minimum in (("n_identities", n_identities, 1), ("images_per_identity", images_per_identity, 1),
                                     ("size", size, 8), ("chunk_size", chunk_size, 1), ("first_identity", first_identity, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"SyntheticFaceWorld: {name} must be an integer >= {minimum}, got {value!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"SyntheticFaceWorld: seed must be an integer, got {seed!r}")
        self.n_identities = n_identities
        self.images_per_identity = images_per_identity
        self.seed = seed
        self.size = size
        self.first_identity = first_identity
        self.chunk_size = chunk_size
        self._coords: dict[int, torch.Tensor] = {}
        self._noise_banks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n_identities * self.images_per_identity

    def __repr__(self) -> str:
        return (f"SyntheticFaceWorld(n_identities={self.n_identities}, images_per_identity={self.images_per_identity}, "
                f"seed={self.seed}, size={self.size}, first_identity={self.first_identity})")

    # ---- indices and parameters -------------------------------------------------

    def _indices(self, indices) -> torch.Tensor:
        index = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"sample indices must lie in [0, {len(self)}), got {int(index.min())}..{int(index.max())}")
        return index

    def identity(self, indices) -> torch.Tensor:
        """Absolute identity ids (int64) of the samples."""
        return self._indices(indices) // self.images_per_identity + self.first_identity

    def parameters(self, indices) -> dict[str, torch.Tensor]:
        """All render parameters of the samples: one tensor per parameter (schema attributes and internal ones)."""
        index = self._indices(indices)
        identity = (index // self.images_per_identity + self.first_identity).view(-1, 1)
        image = (index % self.images_per_identity).view(-1, 1)
        identity_u = uniform_from_bits(hash_keys(self.seed, IDENTITY_STREAM, identity, torch.arange(N_IDENTITY_SLOTS)))
        image_u = uniform_from_bits(hash_keys(self.seed, IMAGE_STREAM, identity, image, torch.arange(N_IMAGE_SLOTS)))
        params: dict[str, torch.Tensor] = {}
        for spec in PARAMETERS:
            u = (identity_u if spec.group == "identity" else image_u)[:, spec.slot]
            if spec.kind == "continuous":
                value = spec.low + (spec.high - spec.low) * u
                if spec.jitter > 0:
                    value = value + spec.jitter * box_muller(image_u[:, spec.jitter_slot], image_u[:, spec.jitter_slot + 1])
                params[spec.name] = value.to(torch.float32)
            elif spec.kind == "binary":
                params[spec.name] = (u < spec.probability).to(torch.int64)
            else:
                params[spec.name] = (u * spec.n_classes).to(torch.int64).clamp_(max=spec.n_classes - 1)
        return params

    def labels(self, indices) -> dict[str, torch.Tensor]:
        """Schema attribute → labels (int64 classes or float32 values in the documented units)."""
        params = self.parameters(indices)
        labels = {name: params[name] for name in SYNTHETIC_SCHEMA.names}
        SYNTHETIC_SCHEMA.validate(labels, len(params["age"]), source="synthetic world")
        return labels

    @staticmethod
    def std(attribute: str) -> float:
        """Population standard deviation of a continuous attribute (identity spread and jitter together)."""
        spec = SyntheticFaceWorld._spec(attribute)
        if spec.kind != "continuous":
            raise ValueError(f"attribute {attribute!r} is {spec.kind}; std is defined for continuous attributes")
        return spec.population_std

    @staticmethod
    def _spec(attribute: str) -> Parameter:
        if attribute not in SYNTHETIC_SCHEMA:
            raise KeyError(f"unknown attribute {attribute!r}; known: {list(SYNTHETIC_SCHEMA.names)}")
        return PARAMETERS_BY_NAME[attribute]

    # ---- counterfactuals ---------------------------------------------------------

    def edit(self, params: Mapping[str, torch.Tensor], attribute: str, value=None) -> dict[str, torch.Tensor]:
        """A copy of ``params`` with one attribute changed, everything else identical.

        Without ``value``: binary attributes flip, categorical ones move to the
        next class (cyclically), continuous ones move by +1 population standard
        deviation (:meth:`std`). With ``value`` (a number or a per-sample
        tensor): the attribute is set to it (a class index for discrete kinds,
        a value in the attribute's units for continuous ones).
        """
        spec = self._spec(attribute)
        out = {name: tensor.clone() for name, tensor in params.items()}
        if attribute not in out:
            raise KeyError(f"params has no entry for attribute {attribute!r}")
        current = out[attribute]
        if value is not None:
            new = torch.as_tensor(value, dtype=current.dtype).expand_as(current).clone()
            if spec.kind != "continuous" and bool(((new < 0) | (new >= spec.n_classes)).any()):
                raise ValueError(f"attribute {attribute!r}: class index out of range 0..{spec.n_classes - 1}")
        elif spec.kind == "binary":
            new = 1 - current
        elif spec.kind == "categorical":
            new = (current + 1) % spec.n_classes
        else:
            new = current + spec.population_std
        out[attribute] = new
        return out

    def counterfactual(self, indices, attribute: str, value=None, size: int | None = None) -> torch.Tensor:
        """Render the samples with one attribute changed (see :meth:`edit`)."""
        return self.render_parameters(self.edit(self.parameters(indices), attribute, value), size=size)

    # ---- rendering ---------------------------------------------------------------

    def render(self, indices, size: int | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) float32 in [0, 1] of the samples."""
        return self.render_parameters(self.parameters(indices), size=size)

    def render_parameters(self, params: Mapping[str, torch.Tensor], size: int | None = None,
                          _use_bands: bool = True) -> torch.Tensor:
        """Render faces from a parameter dict (as from :meth:`parameters` or :meth:`edit`)."""
        size = self.size if size is None else int(size)
        missing = [spec.name for spec in PARAMETERS if spec.name not in params]
        if missing:
            raise KeyError(f"render_parameters: missing parameters {missing}")
        n_faces = int(params["age"].shape[0])
        out = torch.empty(n_faces, 3, size, size, dtype=torch.float32)
        return render_faces(params, out, self._coordinates(size), self._noise_bank(size), self.chunk_size,
                            use_bands=_use_bands)

    def _coordinates(self, size: int) -> torch.Tensor:
        if size not in self._coords:
            self._coords[size] = pixel_coordinates(size)
        return self._coords[size]

    def _noise_bank(self, size: int) -> torch.Tensor:
        """Standard-normal textures (K, 3, S, S), made once per size from the seed."""
        if size not in self._noise_banks:
            pixel = torch.arange(3 * size * size, dtype=torch.int64).view(1, -1)
            texture = torch.arange(NOISE_BANK_SIZE, dtype=torch.int64).view(-1, 1)
            u1 = uniform_from_bits(hash_keys(self.seed, NOISE_STREAM, texture, 2 * pixel))
            u2 = uniform_from_bits(hash_keys(self.seed, NOISE_STREAM, texture, 2 * pixel + 1))
            self._noise_banks[size] = box_muller(u1, u2).to(torch.float32).view(-1, 3, size, size)
        return self._noise_banks[size]


# --------------------------------------------------------------------------- #
# Training data and the probe set
# --------------------------------------------------------------------------- #


class SyntheticFaceDataset(Dataset):
    """A world as a classification dataset: ``(image (3,H,W), identity label)``, labels 0-based in the world.

    ``__getitems__`` renders a whole batch in one vectorised call; torch's
    DataLoader uses it (with automatic batching) instead of one ``__getitem__``
    per sample.
    """

    def __init__(self, world: SyntheticFaceWorld) -> None:
        self.world = world

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        if index < 0:
            index += len(self)
        return self.world.render([index])[0], index // self.world.images_per_identity

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        index = torch.as_tensor(list(indices), dtype=torch.int64)
        images = self.world.render(index)
        labels = (index // self.world.images_per_identity).tolist()
        return list(zip(images.unbind(0), labels))


class SyntheticProbeSet(ProbeSet):
    """The synthetic world as a probe set, labelled with :data:`SYNTHETIC_SCHEMA`, rendered on demand.

    The default ``first_identity`` keeps its identities away from training worlds
    that start at identity 0.
    """

    #: a probe spec gives options only (``synthetic,n_identities=200``), no argument
    spec_argument = None

    def __init__(self, n_identities: int = 100, images_per_identity: int = 10, seed: int = 0, size: int = 112,
                 first_identity: int = 100_000) -> None:
        self.world = SyntheticFaceWorld(n_identities, images_per_identity, seed=seed, size=size, first_identity=first_identity)
        everything = torch.arange(len(self.world))
        super().__init__(SYNTHETIC_SCHEMA, self.world.identity(everything), self.world.labels(everything),
                         source="synthetic probe set")

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.world.render(indices)

    def counterfactual(self, indices: torch.Tensor, attribute: str, value=None) -> torch.Tensor:
        """The samples re-rendered with one attribute changed (see :meth:`SyntheticFaceWorld.edit`)."""
        return self.world.counterfactual(indices, attribute, value)


class SyntheticGenerator:
    """The synthetic world as a generator with attribute controls (``frx_register_generators``).

    ``counterfactual(indices, attribute, values)`` re-renders the probe samples ``indices``
    exactly, with ``attribute`` set to ``values`` and every other parameter unchanged.
    """

    def __init__(self, world: SyntheticFaceWorld) -> None:
        self.world = world
        self.attributes: Sequence[str] = tuple(SYNTHETIC_SCHEMA.names)

    def counterfactual(self, indices: torch.Tensor, attribute: str, values: torch.Tensor) -> torch.Tensor:
        return self.world.counterfactual(indices, attribute, values)

    def counterfactuals(self, edits) -> torch.Tensor:
        """The images of several edits ``(indices, attribute, values)``, in their order, in one render call."""
        world = self.world
        params = [world.edit(world.parameters(indices), attribute, values) for indices, attribute, values in edits]
        return world.render_parameters({key: torch.cat([p[key] for p in params]) for key in params[0]})

    def render(self, indices: torch.Tensor) -> torch.Tensor:
        return self.world.render(indices)


def synthetic_generator(probe: ProbeSet) -> SyntheticGenerator | None:
    """The built-in generator factory: the world behind a :class:`SyntheticProbeSet`, else ``None``."""
    return SyntheticGenerator(probe.world) if isinstance(probe, SyntheticProbeSet) else None


@functools.lru_cache(maxsize=1)
def world_fingerprint() -> str:
    """A digest of a few renders and labels of the synthetic world: a changed renderer makes a new cache key."""
    world = SyntheticFaceWorld(4, 2, seed=0, size=16, first_identity=0)
    index = torch.arange(len(world))
    digest = hashlib.sha256(json.dumps(SYNTHETIC_SCHEMA.to_json(), sort_keys=True).encode())
    digest.update(world.render(index).mul(255).round().to(torch.uint8).numpy().tobytes())
    for name, labels in world.labels(index).items():
        digest.update(name.encode())
        digest.update(labels.to(torch.float64).round(decimals=4).numpy().tobytes())
    return digest.hexdigest()[:16]
