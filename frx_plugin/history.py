"""Training history: ``history.json`` (one record per analysis pass) beside ``history.safetensors``.

Both files are written atomically (a temporary file in the same folder, then
``os.replace``), so a crash mid-write leaves the previous history intact.
Records already written are kept exactly as they were; each pass adds one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from frx_plugin.attributes import AttributeSchema, SchemaError

HISTORY_FORMAT = "frx.history/1"
HISTORY_JSON = "history.json"
HISTORY_TENSORS = "history.safetensors"


def _system_error(exc: Exception, path: Path, tmp: str) -> Exception:
    """A writer's failed system call as the ``OSError`` naming ``path`` (not its temporary file): also one that a writer
    reports only in its text (safetensors' ``SafetensorError`` carries it as ``IoError(Os { code: 28, ... })``
    or, as safetensors 0.8 does, ``I/O error: No space left on device (os error 28)``); any other exception unchanged."""
    import errno
    import re

    if isinstance(exc, OSError):
        same = exc.errno is not None and exc.filename is not None and os.fspath(exc.filename) == tmp
        return OSError(exc.errno, exc.strerror, str(path)) if same else exc
    found = re.search(r"\bOs \{ code: (\d+)|\(os error (\d+)\)", str(exc))
    code = int(found.group(1) or found.group(2)) if found else None
    if code is None or code not in errno.errorcode:
        return exc
    return OSError(code, os.strerror(code), str(path))


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through ``write(tmp_path)`` so that readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            write(Path(tmp))
        except Exception as exc:  # noqa: BLE001 - a writer's own error for a failed system call becomes that OSError
            raise _system_error(exc, path, tmp) from None
        # the mode any new file gets (0666 less the umask), set once written: mkstemp's file is private (0600),
        # and a writer may put a file of its own in its place (safetensors' save_file renames its own 0600 file)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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
    failures: Sequence[dict[str, Any]] = (),
) -> None:
    """Write the whole history (records in pass order; tensors keyed ``pass<k>.<name>``; failed passes) atomically."""
    out_dir = Path(out_dir)
    document = {"format": HISTORY_FORMAT, "attributes": schema.to_json(), "records": list(records), "failures": list(failures)}
    text = json.dumps(document, indent=1, allow_nan=False)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(out_dir / HISTORY_TENSORS, lambda p: save_file(flat, str(p), metadata={"format": HISTORY_FORMAT}))
    atomic_write_text(out_dir / HISTORY_JSON, text)


def read_history_document(out_dir: Path) -> tuple[dict[str, Any], AttributeSchema, dict[str, torch.Tensor]]:
    """The parsed ``history.json`` of a history folder, its schema and its tensors; errors name the file and the field."""
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
    if not isinstance(document.setdefault("failures", []), list):
        raise SchemaError(f"{path}: field 'failures' must be a list")
    schema = AttributeSchema.from_json(document.get("attributes"))
    tensor_path = out_dir / HISTORY_TENSORS
    try:
        tensors = load_file(str(tensor_path)) if tensor_path.exists() else {}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise SchemaError(f"{tensor_path}: not a readable safetensors file ({exc})") from None
    return document, schema, tensors


def read_history(out_dir: Path) -> tuple[AttributeSchema, list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Read a history folder: (schema, records, tensors); errors name the file and the field that is wrong."""
    document, schema, tensors = read_history_document(out_dir)
    return schema, document["records"], tensors


def _order(record: dict[str, Any]) -> int:
    """Where a pass stands in its run: its global step (its epoch where it has none)."""
    step = record.get("global_step")
    return int(record.get("epoch") or 0) if step is None else int(step)


class HistoryRecorder:
    """Holds the passes of one history folder in memory and writes them there.

    Framework-free: the adapters keep one each and put :meth:`state_dict` into their
    checkpoints. A history is never lost:

    - a run **resumed** from a checkpoint (:meth:`load_state_dict`) continues the checkpoint's
      history and replaces only the passes after it;
    - a **new** run pointed at a folder that already holds a history continues it
      (:meth:`continue_existing`): its passes follow the old ones, with the next ``run`` number.

    Every record names its pass number (``pass_index``, over the whole file) and its ``run`` apart
    from its ``epoch`` and ``global_step``; failed passes are kept in ``failures``.
    """

    def __init__(self, out_dir: Path | str, schema: AttributeSchema) -> None:
        self.out_dir = Path(out_dir)
        self.schema = schema
        self.records: list[dict[str, Any]] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.failures: list[dict[str, Any]] = []
        #: this run's number in the folder's history (0 for the first run)
        self.run = 0
        self._restored = False
        self._opened = False
        #: the entry (record or failure) of the newest pass, which a failed write marks
        self._newest: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.out_dir / HISTORY_JSON

    @property
    def epochs(self) -> list[int]:
        return [r["epoch"] for r in self.records]

    def has_epoch(self, epoch: int) -> bool:
        """Whether this run already has a pass at ``epoch``."""
        return any(r["epoch"] == epoch and r.get("run", 0) == self.run for r in self.records)

    def check_folder(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """Refuse a folder whose history is of another probe set (different attributes), naming the file.

        Returns the folder's history document and tensors (``None`` when it holds none).
        """
        if not self.path.exists():
            return None
        document, schema, tensors = read_history_document(self.out_dir)
        if schema != self.schema:
            raise SchemaError(
                f"{self.path} holds the history of a probe set with other attributes ({list(schema.names)}); "
                f"this run's probe set has {list(self.schema.names)}: pass another out_dir"
            )
        return document, tensors

    def continue_existing(self) -> list[str]:
        """Once, before this run's first pass: take up the history already in the folder. Returns notices.

        After a resume the checkpoint's history stands, and the folder's passes after it are
        replaced (the notice says how many). Otherwise the folder's passes are kept and this run
        follows them as run ``max(run) + 1``.
        """
        if self._opened:
            return []
        self._opened = True
        folder = self.check_folder()
        if folder is None:  # no history in the folder yet
            return []
        document, tensors = folder
        if self._restored:
            later = len(document["records"]) - len(self.records)
            return [f"resumed from a checkpoint: the {later} pass(es) of {self.path} after it are replaced by this run's"] if later > 0 else []
        if self.records or not (document["records"] or document["failures"]):
            return []
        self.records, self.failures = list(document["records"]), list(document["failures"])
        self.tensors = dict(tensors)
        self.run = 1 + max(int(r.get("run", 0)) for r in self.records + self.failures)
        return [f"continuing the history in {self.path}: {len(self.records)} pass(es) of earlier runs are kept; this is run {self.run}"]

    def _drop_from(self, order: int) -> None:
        """Drop this run's passes (and failures) at or after ``order`` — a resumed run re-running them."""
        def later(r: dict[str, Any]) -> bool:
            return int(r.get("run", 0)) == self.run and _order(r) >= order

        keep = [r for r in self.records if not later(r)]
        if len(keep) != len(self.records):
            self.records = keep
            self.tensors = {k: v for k, v in self.tensors.items() if int(k.split(".", 1)[0][4:]) < len(keep)}
        self.failures = [f for f in self.failures if not later(f)]

    def add(self, record: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
        """Append one pass; a pass of this run at or before its last one replaces it and drops what followed.

        (That happens only when a run is resumed from a checkpoint older than its newest pass:
        the passes after the checkpoint are re-run.) Returns the pass index.
        """
        self._drop_from(_order(record))
        index = len(self.records)
        self._newest = dict(record, pass_index=index, run=self.run)
        self.records.append(self._newest)
        for name, value in tensors.items():
            self.tensors[tensor_key(index, name)] = value.detach().to("cpu", torch.float32).contiguous()
        return index

    def add_failure(self, failure: dict[str, Any]) -> None:
        """Keep a pass that failed (its ``epoch``, ``global_step`` and ``error``) in the history's ``failures``."""
        self._drop_from(_order(failure))
        self._newest = dict(failure, run=self.run)
        self.failures.append(self._newest)

    def write(self) -> None:
        write_history(self.out_dir, self.schema, self.records, self.tensors, self.failures)

    def mark_write_error(self, message: str) -> None:
        """Say in the newest pass's entry (record or failure) that its files could not be written: ``write_error``.

        The pass stays; the next write holds it with that field, so the history tells which passes were late.
        """
        if self._newest is not None:
            self._newest["write_error"] = message

    def state_dict(self) -> dict[str, Any]:
        # plain containers and tensors only: loadable with torch.load(weights_only=True)
        return {
            "format": HISTORY_FORMAT, "records": json.dumps(self.records, allow_nan=False), "tensors": dict(self.tensors),
            "failures": json.dumps(self.failures, allow_nan=False), "run": self.run,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != HISTORY_FORMAT:
            raise SchemaError(f"checkpoint state of the frx history has format {state.get('format')!r}, expected {HISTORY_FORMAT!r}")
        self.records = json.loads(state["records"])
        self.tensors = dict(state["tensors"])
        self.failures = json.loads(state.get("failures", "[]"))
        self.run = int(state.get("run", 0))
        self._restored = True
