"""Attribute estimators ``E: x → a``: stage 2 of the paper's two-stage recovery.

An estimator reads attributes off face images. The two-stage path applies it to faces decoded
from embeddings (:mod:`frx_plugin.two_stage.decoders`); an estimator that cannot read an attribute from
real faces cannot read it from decoded ones either, so every estimator reports its own held-out
accuracy per attribute and the two-stage report carries it.

Estimators come through the ``frx_register_estimators`` hook: ``factory(probe)`` returns one for a
probe set, or ``None``. Built in: :func:`frx_plugin.synthetic.estimator.synthetic_estimator`, a
small CNN trained on renders of the synthetic world and cached on disk by its configuration. This
module holds what works with any estimator: :class:`CombinedEstimator` and :func:`label_probe_set`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from frx_plugin.attributes import AttributeSchema
from frx_plugin.errors import EstimatorError
from frx_plugin.probe import RelabelledProbeSet


class CombinedEstimator:
    """Several estimators of the same input shape read as one (their attributes side by side).

    Two estimators reading the same attribute is an :class:`EstimatorError` naming it.
    """

    def __init__(self, estimators: Sequence[Any]) -> None:
        if not estimators:
            raise EstimatorError("CombinedEstimator needs at least one estimator")
        shapes = {tuple(e.input_shape) for e in estimators}
        if len(shapes) != 1:
            raise EstimatorError(f"the estimators take different image shapes {sorted(shapes)}; they cannot read the same images")
        self.estimators = list(estimators)
        names = [name for e in estimators for name in e.attributes]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise EstimatorError(f"attribute(s) {twice} read by more than one of the estimators")
        self.attributes = tuple(names)
        self.input_shape = shapes.pop()
        self.accuracy = {k: v for e in estimators for k, v in dict(e.accuracy).items()}
        schemas = [s for e in estimators if isinstance(s := getattr(e, "schema", None), AttributeSchema)]
        self.schema = AttributeSchema(a for schema in schemas for a in schema) if len(schemas) == len(estimators) else None
        self.path = " + ".join(str(getattr(e, "path", type(e).__name__)) for e in estimators)

    def estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for estimator in self.estimators:
            out.update(estimator.estimate(images))
        return out

    def estimate_fold(self, images: torch.Tensor, fold: int | None) -> dict[str, torch.Tensor]:
        """As :meth:`estimate`, with the heads of ``fold`` where an estimator is trained fold by fold (``estimate_fold``)."""
        out: dict[str, torch.Tensor] = {}
        for estimator in self.estimators:
            out.update(estimator.estimate_fold(images, fold) if hasattr(estimator, "estimate_fold") else estimator.estimate(images))
        return out


def label_probe_set(probe: Any, estimators: Sequence[Any], batch_size: int = 64,
                    progress: Callable[[int, int, str], None] | None = None) -> RelabelledProbeSet:
    """``probe`` with every attribute the ``estimators`` read off its images added as a label.

    Each estimator needs a ``schema`` (the attributes it reads, with their kinds) besides the
    :class:`AttributeEstimator` members. An attribute the probe set already labels keeps the probe
    set's labels (its ground truth) and is not read; two estimators reading the same attribute
    is an :class:`EstimatorError` naming both. ``progress(done, total, stage)`` after each batch.
    """
    from frx_plugin.attributes import Attribute

    attributes: list[Attribute] = list(probe.schema)
    readers: dict[str, str] = {}
    wanted: list[tuple[Any, list[str]]] = []
    for estimator in estimators:
        schema = getattr(estimator, "schema", None)
        label = getattr(estimator, "path", None) or type(estimator).__name__
        if not isinstance(schema, AttributeSchema):
            raise EstimatorError(f"estimator {label}: it has no 'schema' saying what it reads, so it cannot label a probe set")
        names = [a.name for a in schema if a.name not in probe.schema]
        for name in names:
            if name in readers:
                raise EstimatorError(f"attribute {name!r} is read by two estimators: {readers[name]} and {label}")
            readers[name] = str(label)
            attributes.append(schema[name])
        wanted.append((estimator, names))
    n = len(probe)
    labels = dict(probe.labels)
    readings: dict[str, list[torch.Tensor]] = {name: [] for name in readers}
    done = 0
    for indices, images in probe.batches(torch.arange(n), batch_size):
        for estimator, names in wanted:
            if not names:
                continue
            out = estimator.estimate(images)
            for name in names:
                if name not in out or out[name].shape != (indices.shape[0],):
                    raise EstimatorError(f"estimator {readers[name]}: gave no reading of shape ({indices.shape[0]},) for {name!r}")
                readings[name].append(out[name])
        done += indices.shape[0]
        if progress is not None:
            progress(done, n, "estimating")
    schema = AttributeSchema(attributes)
    for name, parts in readings.items():
        values = torch.cat(parts)
        labels[name] = values.to(torch.int64) if schema[name].discrete else values.to(torch.float32)
    return RelabelledProbeSet(probe, schema, labels, estimated=readers)
