"""The embedding-set file: the interchange format of ``frx analyze``.

A ``.safetensors`` file with tensors ``embeddings`` (float32, N×D), ``identity`` (int64, N) and
one ``attr.<name>`` per attribute (int64 with -1 for missing, or float32 with NaN for missing),
and header metadata ``frx.attributes``: a JSON list of ``{"name", "kind", "classes"?, "group"?}``.

The reader validates the header first (shapes, dtypes, metadata) without loading data, then
streams rows in chunks, validating each chunk, so files larger than memory can be read.
"""

from __future__ import annotations

import json
import math
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from frx_plugin.attributes import AttributeSchema, SchemaError
from frx_plugin.errors import EmbeddingSetError
from frx_plugin.history import atomic_write

EMBEDDINGS = "embeddings"
IDENTITY = "identity"
ATTRIBUTE_PREFIX = "attr."
METADATA_KEY = "frx.attributes"

_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
_INT_DTYPES = {"I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "U8": torch.uint8}


def write_embedding_set(
    path: str | Path,
    embeddings: torch.Tensor,
    identity: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    schema: AttributeSchema,
) -> Path:
    """Write an embedding set atomically; inputs are validated as the reader would."""
    path = Path(path)
    if embeddings.ndim != 2:
        raise EmbeddingSetError(f"{path}: embeddings must be N×D, got shape {tuple(embeddings.shape)}")
    n = embeddings.shape[0]
    if identity.ndim != 1 or identity.shape[0] != n or identity.dtype.is_floating_point:
        raise EmbeddingSetError(f"{path}: identity must be {n} integers, got {identity.dtype} {tuple(identity.shape)}")
    schema.validate(labels, n, source=str(path))
    tensors = {EMBEDDINGS: embeddings.detach().to("cpu", torch.float32).contiguous(), IDENTITY: identity.detach().to("cpu", torch.int64).contiguous()}
    for attribute in schema:
        dtype = torch.int64 if attribute.discrete else torch.float32
        tensors[ATTRIBUTE_PREFIX + attribute.name] = labels[attribute.name].detach().to("cpu", dtype).contiguous()
    metadata = {METADATA_KEY: json.dumps(schema.to_json())}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


_TORCH_DTYPES = {**_FLOAT_DTYPES, **_INT_DTYPES}


class _RowReader:
    """Reads row ranges of safetensors tensors with ordinary file reads.

    ``safe_open`` memory-maps the file, and the pages a pass touches stay in the process's
    resident memory; reading each chunk into a fresh buffer keeps memory flat in N.
    """

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")
        (length,) = struct.unpack("<Q", self._file.read(8))
        self._header = json.loads(self._file.read(length))
        self._data_start = 8 + length

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        entry = self._header[key]
        dtype = _TORCH_DTYPES[entry["dtype"]]
        shape = entry["shape"]
        row_items = math.prod(shape[1:])
        itemsize = torch.empty((), dtype=dtype).element_size()
        begin = entry["data_offsets"][0] + start * row_items * itemsize
        count = (stop - start) * row_items
        self._file.seek(self._data_start + begin)
        buffer = bytearray(count * itemsize)
        if self._file.readinto(buffer) != len(buffer):
            raise EmbeddingSetError(f"{self._file.name}: tensor {key!r} ends before row {stop} (truncated file)")
        return torch.frombuffer(buffer, dtype=dtype).reshape([stop - start, *shape[1:]])

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _RowReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EmbeddingSet:
    """An open embedding-set file: header validated on open, rows streamed by :meth:`chunks`."""

    def __init__(self, path: str | Path, attributes: list[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no embedding set at {self.path}")
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                shapes = {key: (handle.get_slice(key).get_dtype(), handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as exc:  # safetensors raises its own error type for a truncated or corrupted file
            raise EmbeddingSetError(f"{self.path}: not a readable safetensors file ({exc})") from None
        self.schema = self._schema(metadata, attributes)
        self.n, self.dim = self._check_shapes(shapes)
        #: rows whose embedding is all zero, counted by the last full pass of :meth:`chunks` (None before one),
        #: and the notice about them (``None`` without such rows); a caller that records the notice itself
        #: sets ``warn_zero_rows = False`` (else it is a ``UserWarning``, once per file opened)
        self.zero_rows: int | None = None
        self.zero_rows_notice: str | None = None
        self.warn_zero_rows = True
        self._zero_warned = False

    # -- header ---------------------------------------------------------------------
    def _schema(self, metadata: dict[str, str], attributes: list[str] | None) -> AttributeSchema:
        if METADATA_KEY not in metadata:
            raise EmbeddingSetError(f"{self.path}: header metadata has no {METADATA_KEY!r} (the JSON list of attributes)")
        try:
            schema = AttributeSchema.from_json(json.loads(metadata[METADATA_KEY]))
        except (json.JSONDecodeError, SchemaError) as exc:
            raise EmbeddingSetError(f"{self.path}: header field {METADATA_KEY!r} is invalid: {exc}") from None
        if attributes is not None:
            unknown = [a for a in attributes if a not in schema]
            if unknown:
                raise EmbeddingSetError(f"{self.path}: no attribute(s) {unknown}; the file has {list(schema.names)}")
            schema = schema.select(attributes)
        return schema

    def _check_shapes(self, shapes: dict[str, tuple[str, list[int]]]) -> tuple[int, int]:
        where = str(self.path)
        if EMBEDDINGS not in shapes:
            raise EmbeddingSetError(f"{where}: no tensor {EMBEDDINGS!r}")
        dtype, shape = shapes[EMBEDDINGS]
        if len(shape) != 2 or dtype not in _FLOAT_DTYPES:
            raise EmbeddingSetError(f"{where}: tensor {EMBEDDINGS!r} must be a float N×D matrix, got {dtype} {shape}")
        n, dim = shape
        shape_of_embeddings = list(shape)
        if IDENTITY not in shapes:
            raise EmbeddingSetError(f"{where}: no tensor {IDENTITY!r}")
        dtype, shape = shapes[IDENTITY]
        if shape != [n] or dtype not in _INT_DTYPES:
            raise EmbeddingSetError(f"{where}: tensor {IDENTITY!r} must be {n} integers, got {dtype} {shape}")
        for attribute in self.schema:
            key = ATTRIBUTE_PREFIX + attribute.name
            if key not in shapes:
                raise EmbeddingSetError(f"{where}: attribute {attribute.name!r} is declared but tensor {key!r} is missing")
            dtype, shape = shapes[key]
            if shape != [n]:
                raise EmbeddingSetError(f"{where}: tensor {key!r} has shape {shape}, expected [{n}] (one label per embedding)")
            allowed = _INT_DTYPES if attribute.discrete else _FLOAT_DTYPES
            if dtype not in allowed:
                want = "an integer dtype (-1 for missing)" if attribute.discrete else "a float dtype (NaN for missing)"
                raise EmbeddingSetError(f"{where}: tensor {key!r} is {dtype}; a {attribute.kind} attribute needs {want}")
        if n == 0:
            raise EmbeddingSetError(f"{where}: the embedding set is empty")
        if dim == 0:
            raise EmbeddingSetError(f"{where}: tensor {EMBEDDINGS!r} has shape {shape_of_embeddings}: its {n} rows have no "
                                    "columns (an embedding needs at least one dimension)")
        return n, dim

    # -- rows -----------------------------------------------------------------------
    def chunks(self, chunk_size: int = 65536) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]:
        """Yield ``(embeddings, identity, labels)`` for consecutive row ranges, each chunk validated."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        zero, first_zero = 0, 0
        with _RowReader(self.path) as reader:
            for start in range(0, self.n, chunk_size):
                stop = min(self.n, start + chunk_size)
                z = reader.rows(EMBEDDINGS, start, stop).to(torch.float32)
                bad = ~torch.isfinite(z).all(1)
                if bool(bad.any()):
                    row = start + int(bad.nonzero()[0])
                    raise EmbeddingSetError(
                        f"{self.path}: tensor {EMBEDDINGS!r} has NaN or infinite values in {int(bad.sum())} rows of "
                        f"{start}..{stop - 1} (first: row {row}); a diverged model?"
                    )
                empty = (z == 0).all(1)
                if bool(empty.any()):
                    first_zero = start + int(empty.nonzero()[0]) if zero == 0 else first_zero
                    zero += int(empty.sum())
                identity = reader.rows(IDENTITY, start, stop).to(torch.int64)
                labels = {}
                for attribute in self.schema:
                    raw = reader.rows(ATTRIBUTE_PREFIX + attribute.name, start, stop)
                    labels[attribute.name] = raw.to(torch.int64 if attribute.discrete else torch.float32)
                try:
                    self.schema.validate(labels, stop - start, source=str(self.path), first_row=start)
                except SchemaError as exc:
                    raise EmbeddingSetError(str(exc)) from None
                yield z, identity, labels
        self.zero_rows = zero
        self.zero_rows_notice = zero_rows_notice(zero, self.n, first_zero, str(self.path)) if zero else None
        if self.zero_rows_notice and self.warn_zero_rows and not self._zero_warned:  # once per file opened, after the first full pass found them
            self._zero_warned = True
            warnings.warn(self.zero_rows_notice, UserWarning, stacklevel=2)

    def identity(self) -> torch.Tensor:
        """The identity column alone (N int64), without reading the embeddings."""
        with _RowReader(self.path) as reader:
            return reader.rows(IDENTITY, 0, self.n).to(torch.int64)

    def attributes_with_missing_labels(self, chunk_size: int = 1 << 20) -> list[str]:
        """Names of the attributes with at least one missing label (reads the label columns only)."""
        found = []
        with _RowReader(self.path) as reader:
            for attribute in self.schema:
                for start in range(0, self.n, chunk_size):
                    values = reader.rows(ATTRIBUTE_PREFIX + attribute.name, start, min(self.n, start + chunk_size))
                    if bool(attribute.missing_mask(values if attribute.discrete else values.float()).any()):
                        found.append(attribute.name)
                        break
        return found

    def read(self, chunk_size: int = 65536) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """All rows at once (validated chunk by chunk)."""
        parts = list(self.chunks(chunk_size))
        z = torch.cat([p[0] for p in parts])
        identity = torch.cat([p[1] for p in parts])
        labels = {name: torch.cat([p[2][name] for p in parts]) for name in self.schema.names}
        return z, identity, labels


def zero_rows_notice(count: int, total: int, first: int, what: str) -> str:
    """The warning for ``count`` of ``total`` embeddings that are all zero (``first`` the first such row) in ``what``."""
    return (f"{what}: {count:,} of {total:,} embeddings are all zero (first: row {first}); a zero vector has no direction, so "
            "its cosine scores are undefined. frx keeps these rows as they are: verification scores each of their pairs 0 "
            "and the leakage heads see the zero vector (a broken export, or a model that outputs nothing for these faces?)")


def read_embedding_set(path: str | Path, attributes: list[str] | None = None):
    """``(embeddings, identity, labels, schema)`` of a validated embedding-set file."""
    dataset = EmbeddingSet(path, attributes)
    z, identity, labels = dataset.read()
    return z, identity, labels, dataset.schema
