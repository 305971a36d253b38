"""Probe sets: labelled faces that an analysis pass embeds and analyses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from frx_plugin.attributes import AttributeSchema, SchemaError


class ProbeSet:
    """N faces with identities and attribute labels; images come in batches by index.

    Subclasses implement :meth:`images`. Labels follow the schema's kinds
    (int64 with -1 for missing, float32 with NaN for missing).
    """

    def __init__(
        self,
        schema: AttributeSchema,
        identity: torch.Tensor,
        labels: Mapping[str, torch.Tensor],
        source: str = "probe set",
    ) -> None:
        if identity.ndim != 1 or identity.dtype.is_floating_point:
            raise SchemaError(f"{source}: identity must be a 1-D integer tensor, got {identity.dtype} {tuple(identity.shape)}")
        n = identity.shape[0]
        schema.validate(labels, n, source)
        if n == 0:
            raise SchemaError(f"{source}: the probe set is empty")
        self.schema = schema
        self.identity = identity.long()
        self.labels = {name: labels[name] for name in schema.names}
        self.source = source

    def __len__(self) -> int:
        return int(self.identity.shape[0])

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` float in [0, 1] for the given sample indices."""
        raise NotImplementedError

    def batches(self, indices: torch.Tensor, batch_size: int):
        """Yield ``(indices, images)`` batches over ``indices`` in order."""
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield chunk, self.images(chunk)


class TensorProbeSet(ProbeSet):
    """A probe set whose images are held in one tensor ``(N, 3, H, W)``."""

    def __init__(self, images: torch.Tensor, schema, identity, labels, source: str = "probe set") -> None:
        super().__init__(schema, identity, labels, source)
        if images.ndim != 4 or images.shape[0] != len(self):
            raise SchemaError(f"{source}: images must be (N, C, H, W) with N={len(self)}, got {tuple(images.shape)}")
        self._images = images

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self._images[indices]


class RelabelledProbeSet(ProbeSet):
    """Another probe set's faces and identities with other labels: a subset of its attributes, or
    attributes that estimators read off its images (:func:`frx_plugin.estimators.label_probe_set`).

    Everything else (``images``, ``pairs``, ``issame``, ``counterfactual``, ...) is the wrapped
    probe set's. ``estimated``: attribute → what read it, for the estimated ones.
    """

    def __init__(self, probe: ProbeSet, schema: AttributeSchema, labels: Mapping[str, torch.Tensor],
                 estimated: Mapping[str, str] | None = None) -> None:
        self._probe = probe
        super().__init__(schema, probe.identity, labels, source=probe.source)
        self.estimated = dict(estimated or {})

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self._probe.images(indices)

    def batches(self, indices: torch.Tensor, batch_size: int):
        return self._probe.batches(indices, batch_size)

    def select(self, names) -> RelabelledProbeSet:
        schema = self.schema.select(names)
        return RelabelledProbeSet(self._probe, schema, {n: self.labels[n] for n in schema.names},
                                  {n: w for n, w in self.estimated.items() if n in schema.names})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_probe":
            raise AttributeError(name)
        return getattr(self._probe, name)


def select_attributes(probe: ProbeSet, names) -> ProbeSet:
    """``probe`` with only the attributes ``names`` (an unknown one is a ``KeyError`` listing the known)."""
    if isinstance(probe, RelabelledProbeSet):
        return probe.select(names)
    schema = probe.schema.select(names)
    return RelabelledProbeSet(probe, schema, {n: probe.labels[n] for n in schema.names})
