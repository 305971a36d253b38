"""Attribute schema: what a probe set labels, of which kind, in which group.

Kinds: ``binary`` and ``categorical`` labels are int64 with
-1 for missing, ``continuous`` labels are float32 with NaN for missing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from frx_plugin.errors import SchemaError

KINDS = ("binary", "categorical", "continuous")
GROUPS = ("identity", "nuisance")


@dataclass(frozen=True)
class Attribute:
    """One facial attribute of a probe set.

    ``classes`` names the classes of a discrete attribute (binary: two names,
    default ``("no", "yes")``); ``group`` says whether the attribute belongs
    to the identity (fixed per person) or is a nuisance (varies per image).
    """

    name: str
    kind: str
    classes: tuple[str, ...] | None = None
    group: str | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise SchemaError(f"attribute name must be a non-empty string without spaces, got {self.name!r}")
        if self.kind not in KINDS:
            raise SchemaError(f"attribute {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.group is not None and self.group not in GROUPS:
            raise SchemaError(f"attribute {self.name!r}: group must be one of {GROUPS} or None, got {self.group!r}")
        classes = self.classes
        if isinstance(classes, (str, bytes)) or (classes is not None and not isinstance(classes, Iterable)):
            raise SchemaError(f"attribute {self.name!r}: classes must be a sequence of class names, got {classes!r}")
        if self.kind == "binary":
            classes = tuple(classes) if classes is not None else ("no", "yes")
            if len(classes) != 2:
                raise SchemaError(f"attribute {self.name!r}: a binary attribute has 2 classes, got {len(classes)}")
        elif self.kind == "categorical":
            if classes is None or len(classes) < 2:
                raise SchemaError(f"attribute {self.name!r}: a categorical attribute needs at least 2 classes")
            classes = tuple(classes)
        elif classes is not None:
            raise SchemaError(f"attribute {self.name!r}: a continuous attribute has no classes")
        object.__setattr__(self, "classes", classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        """``classes`` of a discrete attribute (always set, see ``__post_init__``); ``()`` for a continuous one."""
        return self.classes or ()

    @property
    def discrete(self) -> bool:
        return self.kind != "continuous"

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes is not None else 0

    def missing_mask(self, labels: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the missing entries of ``labels``."""
        return labels < 0 if self.discrete else torch.isnan(labels)

    def validate_labels(self, labels: torch.Tensor, source: str = "labels", first_row: int = 0) -> None:
        """Raise :class:`SchemaError` naming the attribute, and the row (``first_row`` is the first label's) of a bad label."""
        where = f"{source}: attribute {self.name!r}"

        def rows(bad: torch.Tensor) -> str:
            count = int(bad.sum())
            return f"at row {first_row + int(bad.nonzero()[0])}" + (f" (and {count - 1} more row{'s' if count > 2 else ''})" if count > 1 else "")

        if labels.ndim != 1:
            raise SchemaError(f"{where}: labels must be 1-D, got shape {tuple(labels.shape)}")
        if self.discrete:
            if labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise SchemaError(f"{where}: {self.kind} labels must be integers (-1 for missing), got {labels.dtype}")
            bad = (labels < -1) | (labels >= self.num_classes)
            if bool(bad.any()):
                value = int(labels[bad][0])
                raise SchemaError(
                    f"{where}: label {value} out of range {rows(bad)}; {self.kind} labels are 0..{self.num_classes - 1} or -1 for missing"
                )
        else:
            if not labels.dtype.is_floating_point:
                raise SchemaError(f"{where}: continuous labels must be floating point (NaN for missing), got {labels.dtype}")
            infinite = torch.isinf(labels)
            if bool(infinite.any()):
                raise SchemaError(f"{where}: continuous labels contain infinity {rows(infinite)}; NaN marks a missing label")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.classes is not None:
            out["classes"] = list(self.classes)
        if self.group is not None:
            out["group"] = self.group
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attribute:
        if not isinstance(data, Mapping) or "name" not in data or "kind" not in data:
            raise SchemaError(f"attribute entry must be an object with 'name' and 'kind', got {data!r}")
        return cls(
            name=data["name"],
            kind=data["kind"],
            classes=_classes_from_json(data["name"], data.get("classes")),
            group=data.get("group"),
        )


def _classes_from_json(name: Any, classes: Any) -> tuple[str, ...] | None:
    """A JSON ``classes`` field: a list of class names, or a count ≥ 2 (classes ``"0"``, ``"1"``, …); ``None`` if absent."""
    if classes is None:
        return None
    if isinstance(classes, int) and not isinstance(classes, bool):
        if classes < 2:
            raise SchemaError(f"attribute {name!r}: field 'classes' is a count of {classes}; a discrete attribute has at least 2 classes")
        return tuple(str(i) for i in range(classes))
    if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    raise SchemaError(f"attribute {name!r}: field 'classes' must be a list of class names (strings) or a count, got {classes!r}")


class AttributeSchema(Sequence[Attribute]):
    """An ordered collection of attributes with unique names."""

    def __init__(self, attributes: Iterable[Attribute]):
        self._attributes = tuple(attributes)
        names = [a.name for a in self._attributes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SchemaError(f"duplicate attribute names: {dupes}")
        self._index = {a.name: i for i, a in enumerate(self._attributes)}

    def __len__(self) -> int:
        return len(self._attributes)

    def __getitem__(self, key):
        if isinstance(key, str):
            try:
                return self._attributes[self._index[key]]
            except KeyError:
                raise KeyError(f"unknown attribute {key!r}; known: {self.names}") from None
        return self._attributes[key]

    def __iter__(self) -> Iterator[Attribute]:
        return iter(self._attributes)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AttributeSchema) and self._attributes == other._attributes

    def __repr__(self) -> str:
        return f"AttributeSchema({list(self.names)})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self._attributes)

    def select(self, names: Iterable[str]) -> AttributeSchema:
        return AttributeSchema(self[n] for n in names)

    def validate(self, labels: Mapping[str, torch.Tensor], n: int, source: str = "labels", first_row: int = 0) -> None:
        """Check that every attribute has a label tensor of length ``n`` that fits its kind (errors name the row, counting from ``first_row``)."""
        for attribute in self._attributes:
            if attribute.name not in labels:
                raise SchemaError(f"{source}: no labels for attribute {attribute.name!r}")
            tensor = labels[attribute.name]
            attribute.validate_labels(tensor, source, first_row)
            if tensor.shape[0] != n:
                raise SchemaError(
                    f"{source}: attribute {attribute.name!r} has {tensor.shape[0]} labels for {n} samples"
                )

    def to_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in self._attributes]

    @classmethod
    def from_json(cls, data: Any) -> AttributeSchema:
        if not isinstance(data, list):
            raise SchemaError(f"attribute schema must be a JSON list, got {type(data).__name__}")
        return cls(Attribute.from_json(d) for d in data)


def missing_value(attribute: Attribute) -> float:
    return -1 if attribute.discrete else math.nan
