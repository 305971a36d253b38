"""Training history: ``history.json`` (one record per analysis pass) beside ``history.safetensors``.

Both files are written atomically (a temporary file in the same folder, then
``os.replace``), so a crash mid-write leaves the previous history intact.
Records already written are kept exactly as they were; each pass adds one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from frx_plugin.attributes import AttributeSchema, SchemaError

HISTORY_FORMAT = "frx.history/1"
HISTORY_JSON = "history.json"
HISTORY_TENSORS = "history.safetensors"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp_path)`` so that readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # mkstemp makes the file private (0600); the result gets the mode any new file would (0666 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_tagged_safetensors(path, tag: str, writer: str, error: type[Exception] = ValueError) -> tuple[str, dict[str, torch.Tensor]]:
    """The header entry ``tag`` and every tensor of a safetensors file that frx wrote (no pickle).

    A missing file is a ``FileNotFoundError``; a damaged one, or one without ``tag`` in its header
    (not written by ``writer``), is ``error`` naming the path.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path} (expected one written by {writer})")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise error(f"{path}: not a readable safetensors file ({exc})") from None
    if tag not in metadata:
        raise error(f"{path}: the header has no {tag!r} entry; it was not written by {writer}")
    return metadata[tag], state


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def tensor_key(pass_index: int, name: str) -> str:
    return f"pass{pass_index}.{name}"


def write_history(
    out_dir: Path,
    schema: AttributeSchema,
    records: Sequence[dict[str, Any]],
    tensors: dict[str, torch.Tensor],
) -> None:
    """Write the whole history (records in pass order; tensors keyed ``pass<k>.<name>``) atomically."""
    out_dir = Path(out_dir)
    document = {"format": HISTORY_FORMAT, "attributes": schema.to_json(), "records": list(records)}
    text = json.dumps(document, indent=1, allow_nan=False)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(out_dir / HISTORY_TENSORS, lambda p: save_file(flat, str(p), metadata={"format": HISTORY_FORMAT}))
    atomic_write_text(out_dir / HISTORY_JSON, text)


def read_history(out_dir: Path) -> tuple[AttributeSchema, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Read a history folder; errors name the file and the field that is wrong."""
    out_dir = Path(out_dir)
    path = out_dir / HISTORY_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no frx history at {path}") from None
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != HISTORY_FORMAT:
        raise SchemaError(f"{path}: field 'format' must be {HISTORY_FORMAT!r}")
    if not isinstance(document.get("records"), list):
        raise SchemaError(f"{path}: field 'records' must be a list")
    schema = AttributeSchema.from_json(document.get("attributes"))
    tensor_path = out_dir / HISTORY_TENSORS
    tensors = load_file(str(tensor_path)) if tensor_path.exists() else {}
    return schema, document["records"], tensors


class HistoryRecorder:
    """Holds the passes of one run in memory and writes them as a history folder.

    Framework-free: the Lightning and InsightFace adapters keep one each and
    put :meth:`state_dict` into their checkpoints, so a resumed run continues
    the history without repeating or losing a pass.
    """

    def __init__(self, out_dir: Path | str, schema: AttributeSchema) -> None:
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.records: list[dict[str, Any]] = []
        self.tensors: dict[str, torch.Tensor] = {}

    @property
    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.records]

    def has_epoch(self, epoch: int) -> bool:
        return any(r["epoch"] == epoch for r in self.records)

    def add(self, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
        """Append one pass; a pass for an epoch at or before the last one replaces it and drops what followed.

        (That happens only when a run is resumed from a checkpoint older than
        its newest pass: the passes after the checkpoint are re-run.)
        Returns the pass index.
        """
        epoch = record["epoch"]
        keep = [r for r in self.records if r["epoch"] < epoch]
        if len(keep) != len(self.records):
            self.records = keep
            self.tensors = {k: v for k, v in self.tensors.items() if int(k.split(".", 1)[0][4:]) < len(keep)}
        index = len(self.records)
        self.records.append(dict(record, pass_index=index))
        for name, value in tensors.items():
            self.tensors[tensor_key(index, name)] = value.detach().to("cpu", torch.float32).contiguous()
        return index

    def write(self) -> None:
        write_history(self.out_dir, self.schema, self.records, self.tensors)

    def state_dict(self) -> dict[str, Any]:
        # plain containers and tensors only: loadable with torch.load(weights_only=True)
        return {"format": HISTORY_FORMAT, "records": json.dumps(self.records, allow_nan=False), "tensors": dict(self.tensors)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != HISTORY_FORMAT:
            raise SchemaError(f"checkpoint state of the frx history has format {state.get('format')!r}, expected {HISTORY_FORMAT!r}")
        self.records = json.loads(state["records"])
        self.tensors = dict(state["tensors"])
