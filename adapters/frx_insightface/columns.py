"""The kinds of an image folder's CSV columns: declared by a schema, or inferred, printed and held to.

Each attribute column is ``binary``, ``categorical`` or ``continuous`` (:data:`frx_plugin.attributes.KINDS`).
Its kind comes from the first of these that names the column:

1. the ``kinds`` option: ``kinds=age:continuous;glasses:binary`` in the probe spec (or ``--kinds`` on
   the command line), one ``NAME:KIND`` per column, joined by ``;``;
2. a JSON sidecar next to the CSV, ``<csv file name>.schema.json`` (``labels.csv.schema.json``) or
   ``frx-schema.json`` in the CSV's folder (not both): an object of column → kind, where a kind is
   ``"continuous"`` or ``{"kind": "categorical", "classes": [...], "group": "identity"}``;
3. a kinds row: the row right after the header whose ``path`` cell is ``#kinds``, each attribute
   column's cell its kind (cells of the path, identity and landmark columns are ignored; an empty
   cell leaves the column to the inference).

A kind given as text may name the classes of a discrete attribute, in order, joined by ``|``:
``categorical:black|brown|red``, ``binary:absent|present`` (the second class is label 1). A
categorical column declared without classes takes its values' classes in sorted order.

A column no schema names gets the kind most of its values fit: 0/1 or true/false binary, numbers
continuous, anything else categorical; the inferred schema is printed in one warning that names
each such column, its kind and the option that fixes it. A value that does not fit its column's
kind (``abc`` among ages, ``yes`` among 0/1) is a :class:`DataFormatError` naming the file, the line,
the column and the value: a typo never changes a column's kind. An empty cell is a missing label
(-1 for a discrete attribute, NaN for a continuous one).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from frx_insightface.errors import DataFormatError
from frx_plugin.attributes import GROUPS, KINDS, Attribute, AttributeSchema, SchemaError

__all__ = ["FOLDER_SCHEMA", "KINDS_MARKER", "SCHEMA_SUFFIX", "Declared", "column_schema", "parse_kinds", "read_utf8"]

#: the ``path`` cell that marks a CSV's kinds row
KINDS_MARKER = "#kinds"
#: a sidecar next to the CSV is named after it plus this suffix (``labels.csv.schema.json``) ...
SCHEMA_SUFFIX = ".schema.json"
#: ... or this, in the CSV's folder
FOLDER_SCHEMA = "frx-schema.json"
BINARY_TOKENS = frozenset({"0", "1", "true", "false"})


def read_utf8(path: str | Path) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped); another encoding is a one-line error naming the file, line and byte."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise DataFormatError(
            f"{path}: line {line}, column {column}: byte 0x{data[exc.start]:02x} (offset {exc.start}) is not UTF-8; "
            "frx reads text files as UTF-8: save the file as UTF-8 (it looks like Latin-1 or Windows-1252)"
        ) from None


@dataclass(frozen=True)
class Declared:
    """A column's kind as a schema declares it: ``classes`` may wait for the data (a categorical column); ``source`` says where."""

    kind: str
    classes: tuple[str, ...] | None
    group: str | None
    source: str


def _declared(name: str, text: Any, source: str, group: Any = None, classes: Any = None) -> Declared:
    """``KIND[:CLASS|CLASS...]`` (or a kind and a list of classes) checked; errors name ``source`` and the column."""
    if not isinstance(text, str):
        raise DataFormatError(f"{source}: the kind of column {name!r} must be text (one of {', '.join(KINDS)}), got {text!r}")
    kind, colon, listed = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DataFormatError(f"{source}: column {name!r}: kind {text.strip()!r} is not one of {', '.join(KINDS)}")
    if colon:
        if classes is not None:
            raise DataFormatError(f"{source}: column {name!r}: classes given twice (in the kind and in 'classes')")
        classes = [c.strip() for c in listed.split("|")]
    if classes is not None:
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) and c for c in classes):
            raise DataFormatError(f"{source}: column {name!r}: the classes must be non-empty names, got {classes!r}")
        classes = tuple(classes)
    if group is not None and group not in GROUPS:
        raise DataFormatError(f"{source}: column {name!r}: group must be one of {', '.join(GROUPS)}, got {group!r}")
    try:  # the kind's own rules on its classes (a binary attribute has two, a continuous one none)
        Attribute(name, kind, classes=classes if kind != "categorical" or classes else ("a", "b"), group=group)
    except SchemaError as exc:
        raise DataFormatError(f"{source}: {exc}") from None
    return Declared(kind, classes, group, source)


def parse_kinds(kinds: str | Mapping[str, str], source: str = "kinds=") -> dict[str, Declared]:
    """The ``kinds`` option: ``"age:continuous;hair:categorical:black|brown"`` or ``{"age": "continuous"}``."""
    if isinstance(kinds, Mapping):
        return {str(name): _declared(str(name), text, source) for name, text in kinds.items()}
    if not isinstance(kinds, str):
        raise TypeError(f"{source}: expected NAME:KIND[;NAME:KIND...], got {kinds!r}")
    out: dict[str, Declared] = {}
    for item in kinds.split(";"):
        if not item.strip():
            continue
        name, colon, text = item.strip().partition(":")
        name = name.strip()
        if not colon or not name:
            raise DataFormatError(f"{source}{kinds}: {item.strip()!r} is not NAME:KIND (kinds are {', '.join(KINDS)}; "
                                  "columns are joined by ';')")
        if name in out:
            raise DataFormatError(f"{source}{kinds}: column {name!r} is given twice")
        out[name] = _declared(name, text, f"{source}{kinds}")
    return out


def schema_file(csv_path: Path) -> Path | None:
    """The JSON sidecar of ``csv_path``, if there is one (both names at once is an error)."""
    found = [p for p in (csv_path.with_name(csv_path.name + SCHEMA_SUFFIX), csv_path.parent / FOLDER_SCHEMA) if p.is_file()]
    if len(found) == 2:
        raise DataFormatError(f"{csv_path}: both {found[0].name} and {found[1].name} give the kinds of its columns; keep one")
    return found[0] if found else None


def read_schema_file(path: Path) -> dict[str, Declared]:
    """A sidecar: ``{"age": "continuous", "hair": {"kind": "categorical", "classes": [...], "group": "nuisance"}}``."""
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object of column → kind, got {type(data).__name__}")
    out = {}
    for name, entry in data.items():
        if isinstance(entry, dict):
            unknown = sorted(set(entry) - {"kind", "classes", "group"})
            if unknown or "kind" not in entry:
                raise DataFormatError(f"{path}: column {name!r}: expected {{\"kind\": ..., \"classes\"?: [...], \"group\"?: ...}}, "
                                      f"got the keys {sorted(entry)}")
            out[name] = _declared(name, entry["kind"], str(path), entry.get("group"), entry.get("classes"))
        else:
            out[name] = _declared(name, entry, str(path))
    return out


def kinds_row(csv_path: Path, line: int, header: Sequence[str], row: Sequence[str], attributes: Sequence[str]) -> dict[str, Declared]:
    """The kinds row's declarations: each attribute column's non-empty cell."""
    source = f"{csv_path}: line {line} (the {KINDS_MARKER} row)"
    return {name: _declared(name, cell.strip(), source) for name, cell in zip(header, row) if name in attributes and cell.strip()}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _Inferred:
    attribute: Attribute
    misfits: tuple[int, ...]  # positions of the values that do not fit
    fits: int
    present: int


def infer_column(name: str, values: Sequence[str]) -> _Inferred:
    """The kind most of a column's non-empty values fit: 0/1 or true/false binary, numbers continuous, else categorical."""
    present = [(i, v) for i, v in enumerate(values) if v != ""]
    if not present:
        return _Inferred(Attribute(name, "continuous"), (), 0, 0)  # every label missing
    binary = {i for i, v in present if v.lower() in BINARY_TOKENS}
    numbers = {i for i, v in present if _is_number(v)}
    if len(binary) >= len(numbers) and 2 * len(binary) > len(present):
        kind, fit = "binary", binary
    elif 2 * len(numbers) > len(present):
        kind, fit = "continuous", numbers
    else:
        classes = tuple(sorted({v for _, v in present}))
        if len(classes) == 1:  # a text column with one value: binary, everything present in its "yes" class
            return _Inferred(Attribute(name, "binary", classes=(f"not {classes[0]}", classes[0])), (), len(present), len(present))
        return _Inferred(Attribute(name, "categorical", classes=classes), (), len(present), len(present))
    misfits = tuple(i for i, _ in present if i not in fit)
    return _Inferred(Attribute(name, kind), misfits, len(fit), len(present))


def parse_label(attribute: Attribute, text: str, where: str) -> float | int:
    """One cell as a label of ``attribute`` (-1 or NaN when empty); a value that does not fit is an error naming ``where``."""
    if text == "":
        return -1 if attribute.discrete else math.nan
    if attribute.kind == "binary":
        if text in attribute.class_names:
            return attribute.class_names.index(text)
        lowered = text.lower()
        if lowered in ("1", "true"):
            return 1
        if lowered in ("0", "false"):
            return 0
        raise DataFormatError(
            f"{where}: {text!r} is not 0/1, true/false or one of the classes {list(attribute.class_names)} (binary attribute {attribute.name!r})"
        )
    if attribute.kind == "categorical":
        if text not in attribute.class_names:
            raise DataFormatError(f"{where}: {text!r} is not one of the classes {list(attribute.class_names)} of {attribute.name!r}")
        return attribute.class_names.index(text)
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(f"{where}: {text!r} is not a number (continuous attribute {attribute.name!r})") from None
    if not math.isfinite(value):
        raise DataFormatError(f"{where}: {text!r} is not a finite number (continuous attribute {attribute.name!r})")
    return value


def _fixes(csv_path: Path) -> str:
    return f"as the probe spec's kinds= option or --kinds, in a {KINDS_MARKER} row, or in {csv_path.name}{SCHEMA_SUFFIX}"


def _build(name: str, declared: Declared, values: Sequence[str], csv_path: Path) -> Attribute:
    classes = declared.classes
    if declared.kind == "categorical" and classes is None:
        classes = tuple(sorted({v for v in values if v != ""}))
        if len(classes) < 2:
            raise DataFormatError(f"{csv_path}: column {name!r} is categorical ({declared.source}) but holds "
                                  f"{len(classes)} distinct value(s); name its classes: {name}:categorical:A|B|...")
    return Attribute(name, declared.kind, classes=classes, group=declared.group)


def _refuse(inferred: _Inferred, text: str, where: str, csv_path: Path) -> DataFormatError:
    attribute = inferred.attribute
    name, kind = attribute.name, attribute.kind
    what, fit = ("a number", "numbers") if kind == "continuous" else ("0/1 or true/false", "0/1 or true/false")
    more = len(inferred.misfits) - 1
    others = f" (and {more} more value(s) that do not fit)" if more else ""
    return DataFormatError(
        f"{where}: {text!r} is not {what}{others}; no schema names the kind of column {name!r}, and {inferred.fits} of its "
        f"{inferred.present} values are {fit}, so it is {kind}. A typo? If {name!r} is categorical, declare it: "
        f"kinds={name}:categorical, {_fixes(csv_path)}"
    )


def column_schema(csv_path: Path, names: Sequence[str], columns: Mapping[str, Sequence[str]], lines: Sequence[int],
                  declared: Mapping[str, Declared], stacklevel: int = 3) -> tuple[AttributeSchema, dict[str, torch.Tensor]]:
    """The schema and labels of the attribute columns ``names``: declared kinds where given, else inferred (one warning).

    ``declared``: the columns' kinds, merged from the kinds option, the sidecar and the kinds row;
    ``lines``: each row's line in the CSV, for the errors.
    """
    attributes, labels, guessed = [], {}, []
    for name in names:
        values = columns[name]
        wheres = (f"{csv_path}: line {line}, column {name!r}" for line in lines)
        if name in declared:
            attribute = _build(name, declared[name], values, csv_path)
            parsed = [parse_label(attribute, text, where) for text, where in zip(values, wheres)]
        else:
            inferred = infer_column(name, values)
            attribute = inferred.attribute
            if inferred.misfits:
                first = inferred.misfits[0]
                raise _refuse(inferred, values[first], f"{csv_path}: line {lines[first]}, column {name!r}", csv_path)
            parsed = [parse_label(attribute, text, where) for text, where in zip(values, wheres)]
            guessed.append(attribute)
        attributes.append(attribute)
        labels[name] = torch.tensor(parsed, dtype=torch.int64 if attribute.discrete else torch.float32)
    if guessed:
        warnings.warn(_inferred_message(csv_path, guessed), UserWarning, stacklevel=stacklevel)
    return AttributeSchema(attributes), labels


def _describe(attribute: Attribute) -> str:
    if attribute.kind != "categorical":
        return f"{attribute.name} {attribute.kind}"
    shown = ", ".join(attribute.class_names[:5]) + (", …" if attribute.num_classes > 5 else "")
    return f"{attribute.name} categorical ({attribute.num_classes} classes: {shown})"


def _inferred_message(csv_path: Path, guessed: Sequence[Attribute]) -> str:
    option = ";".join(f"{a.name}:{a.kind}" for a in guessed)
    return (f"{csv_path}: no schema names the kinds of {len(guessed)} column(s), so frx inferred them from their values: "
            f"{'; '.join(_describe(a) for a in guessed)}. To fix them (and silence this), declare kinds={option}, "
            f"{_fixes(csv_path)}")
