"""Launch a script as a real 2-process torch.distributed job (RANK/WORLD_SIZE env, gloo on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

#: The one wall-clock limit of the tests that start processes: against a real hang, never against a slow,
#: busy machine (a 2-core machine at load 8 must still pass).
HANG_LIMIT_S = 1800


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(script: Path, *args: str, timeout: float = HANG_LIMIT_S, env: dict | None = None) -> None:
    """Run ``script`` as ranks 0 and 1 (in ``env``, default this process's) and assert that both exit cleanly."""
    env = dict(env or os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen([sys.executable, str(script), *args], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        assert p.returncode == 0, err[-3000:]
