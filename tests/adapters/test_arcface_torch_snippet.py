"""The README's arcface_torch lines in their real places, in a script shaped like train_v2.py, through a crash and a resume."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.ddp_launch import HANG_LIMIT_S

SCRIPT = Path(__file__).with_name("train_v2_script.py")
README = Path(__file__).resolve().parents[2] / "README.md"


def _run(out: Path, epochs: int, *extra: str, crash_at: int | None = None) -> int:
    env = dict(os.environ, WORLD_SIZE="1", RANK="0", OMP_NUM_THREADS="1")
    if crash_at is not None:
        env["FRX_TEST_CRASH_AT_STEP"] = str(crash_at)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), str(epochs), *extra], env=env, capture_output=True, text=True,
                          timeout=HANG_LIMIT_S)
    assert proc.returncode in (0, 3), proc.stderr[-3000:]
    return proc.returncode


def shown_steps(log_dir: Path) -> dict[str, list[int]]:
    """Tag → steps as TensorBoard shows them: event files in order, and a session start at step S purges
    what was read before it at steps ≥ S (TensorBoard's purge of orphaned data, ``purge_step``)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog

    shown: dict[str, list[int]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                shown = {tag: [s for s in steps if s < event.step] for tag, steps in shown.items()}
            for value in event.summary.value:
                shown.setdefault(value.tag, []).append(event.step)
    return shown


def test_the_readme_lines_sit_where_train_v2_can_take_them():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"In arcface_torch's `train_v2.py`.*?```python\n(.*?)```", text, re.S).group(1)
    lines = [line.strip() for line in block.splitlines()]
    made = next(i for i, line in enumerate(lines) if "ArcFaceTorchCallback(" in line)
    resume = next(i for i, line in enumerate(lines) if line.startswith("if cfg.resume"))
    loaded = next(i for i, line in enumerate(lines) if "frx_callback.load_state_dict(dict_checkpoint" in line)
    deleted = next(i for i, line in enumerate(lines) if line.startswith("del dict_checkpoint"))
    assert made < resume < loaded < deleted  # made before the resume block, loaded before train_v2's del
    script = SCRIPT.read_text(encoding="utf-8")
    for needle in ("frx_callback = ArcFaceTorchCallback(", 'frx_callback.load_state_dict(dict_checkpoint["state_frx"])',
                   "frx_callback(global_step, backbone, epoch=epoch)", '"state_frx": frx_callback.state_dict()'):
        assert needle in block and needle in script, needle


def test_a_crash_and_a_resume_keep_every_pass_once_in_the_history_and_in_tensorboard(tmp_path):
    # epoch 1 (steps 1-15, a pass every 5) and its checkpoint; epoch 2 crashes after step 26 (passes 20, 25 kept in the
    # history and the writer, no checkpoint); the resume from step 15 re-runs steps 16-30
    assert _run(tmp_path, 1) == 0
    assert _run(tmp_path, 2, "resume", crash_at=26) == 3
    crashed = json.loads((tmp_path / "frx" / "history.json").read_text())["records"]
    assert [r["global_step"] for r in crashed] == [5, 10, 15, 20, 25]
    assert _run(tmp_path, 2, "resume") == 0
    records = json.loads((tmp_path / "frx" / "history.json").read_text())["records"]
    assert [r["global_step"] for r in records] == [5, 10, 15, 20, 25, 30]
    assert [r["pass_index"] for r in records] == list(range(6))
    assert records[:3] == crashed[:3]  # the passes before the checkpoint stand as written
    shown = shown_steps(tmp_path / "tensorboard")
    assert shown["frx/leakage/skin_tone"] == [5, 10, 15, 20, 25, 30]  # the crashed run's 20 and 25 are not shown twice
    assert shown["loss"] == list(range(1, 31))
