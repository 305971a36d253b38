"""Peak resident memory of `frx analyze` on embedding files of growing size (D = 512).

    python -m benchmarks.analyze_memory --sizes 50000,1000000 --workdir /tmp/frx-memory

Each file holds planted-signal embeddings (19 attributes of the three kinds), written in
chunks; each analysis runs as its own process, and its peak RSS comes from ``wait4``.
Issue 3's target: the 1,000,000-row run adds at most 64 MiB over the 50,000-row run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.analysis_speed import world
from frx_plugin.embedding_set import write_embedding_set


def make_file(path: Path, n: int, dim: int) -> None:
    if path.exists():
        return
    z, identity, labels, schema = world(n, dim)
    write_embedding_set(path, z, identity, labels, schema)


def peak_rss_mib(cmd: list[str]) -> tuple[float, float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(proc.stderr.read().decode()[-3000:])
    return usage.ru_maxrss / 1024.0, elapsed, code


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--workdir", default="/tmp/frx-memory")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores")
    print("| N | D | file size | peak RSS of `frx analyze` | wall time |")
    print("|---|---|---|---|---|")
    rows = []
    for n in (int(v) for v in args.sizes.split(",")):
        path = work / f"planted-{n}x{args.dim}.safetensors"
        make_file(path, n, args.dim)
        cmd = [sys.executable, "-m", "frx_plugin", "analyze", "--embeddings", str(path), "--out", str(work / f"out-{n}"),
               "--format", "json", "--no-verification", "--overwrite"]
        rss, elapsed, code = peak_rss_mib(cmd)
        if code != 0:
            return code
        rows.append(rss)
        print(f"| {n:,} | {args.dim} | {path.stat().st_size / 2**20:,.0f} MiB | {rss:,.0f} MiB | {elapsed:.0f} s |", flush=True)
    if len(rows) > 1:
        print(f"growth from the smallest to the largest: {rows[-1] - rows[0]:+.0f} MiB (target: at most +64 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
