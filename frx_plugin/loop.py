"""What a training-loop adapter keeps from pass to pass, whatever the loop: one object for every adapter.

The history, the two stages' warm start (their decoders' weights) and the model contract of the module
being trained. Its :meth:`LoopState.state_dict` goes into the loop's checkpoints (Lightning's, or
arcface_torch's checkpoint dict), so a resumed run continues where the checkpoint was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from frx_plugin.history import HistoryRecorder
from frx_plugin.model import ModelAdapter
from frx_plugin.probe import ProbeSet

#: The scalar the adapters log (1.0, at the pass's step) when a pass's history files could not be written.
HISTORY_WRITE_FAILED = "frx/history_write_failed"


class LoopState:
    """The adapters' state across passes: ``history``, ``two_stage`` and the module's :class:`ModelAdapter`."""

    def __init__(self, probe: ProbeSet, out_dir: Path | str, model_options: dict[str, Any]) -> None:
        self.history = HistoryRecorder(Path(out_dir), probe.schema)
        self.model_options = dict(model_options)
        #: the two-stage path (estimator, decoders), once the adapter has made it
        self.two_stage: Any = None
        self._two_stage_state: dict[str, Any] = {}
        self._adapter: ModelAdapter | None = None
        self._unwritten = 0  # passes written late: the next write that succeeds says so

    def model(self, module: Any, warn: Callable[[str], Any]) -> ModelAdapter:
        """``module`` with its contract: one adapter per module, so a guess warns once per run."""
        if self._adapter is None or self._adapter.module is not module:
            self._adapter = ModelAdapter(module, warn=warn, **self.model_options)
        return self._adapter

    def attach_two_stage(self, two_stage: Any) -> None:
        """Keep the two-stage path, warm-started from a checkpoint's decoders when one was loaded."""
        self.two_stage = two_stage
        if self._two_stage_state:
            two_stage.load_state_dict(self._two_stage_state)

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only, so ``torch.load(..., weights_only=True)`` reads it."""
        state: dict[str, Any] = {"history": self.history.state_dict()}
        if self.two_stage is not None:
            state["two_stage"] = self.two_stage.state_dict()  # the decoders' warm start survives a resume
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: its passes stand, the ones after it are re-run."""
        self.history.load_state_dict(state["history"])
        self._two_stage_state = dict(state.get("two_stage", {}))
        if self.two_stage is not None and self._two_stage_state:
            self.two_stage.load_state_dict(self._two_stage_state)

    def write_history(self, warn: Callable[[str], Any], raising: bool = False) -> OSError | None:
        """Write the history, after the loggers have the pass; returns the ``OSError`` of a write that failed.

        A folder that cannot be written costs no pass: the warning names the folder and the error, the
        pass's entry in memory gets ``write_error``, and the next pass writes the files again (every pass,
        the late ones with their ``write_error``). The adapter applies its ``on_error`` to the result;
        ``raising`` (``on_error="raise"``: the error it raises says it all) leaves out the warning.
        """
        try:
            self.history.write()
        except OSError as exc:
            message = f"the history could not be written to {self.history.out_dir}: {type(exc).__name__}: {exc}"
            self.history.mark_write_error(message)
            self._unwritten += 1
            if not raising:
                warn(f"frx: {message}; the pass is kept (in memory, in checkpoints and in the loggers, which get "
                     f"{HISTORY_WRITE_FAILED}) and the files are written again at the next pass")
            return exc
        if self._unwritten:
            warn(f"frx: the history is written again to {self.history.out_dir}: it holds every pass, the {self._unwritten} "
                 "written late with their write_error")
            self._unwritten = 0
        return None

    def history_error(self, exc: OSError | None) -> OSError:
        """What ``on_error="raise"`` raises for a history that could not be written (``None``: on another process)."""
        where = f"the history could not be written to {self.history.out_dir}"
        if exc is None:
            return OSError(f"{where} by the process that writes it (on_error='raise'; the loggers have the pass)")
        return OSError(f"{where}: {type(exc).__name__}: {exc} (on_error='raise'; the loggers have the pass)")
