"""Time `frx demo` end to end (training, every analysis pass, figure, table) and report what it learned.

    python benchmarks/demo_time.py --out /tmp/frx-demo-bench [-- extra frx demo options]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/frx-demo-bench")
    parser.add_argument("extra", nargs="*", help="further options passed to frx demo")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "frx_plugin", "demo", "--out", str(out), *args.extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:], sep="\n")
        return proc.returncode
    records = json.loads((out / "history.json").read_text())["records"]
    first, last = records[0], records[-1]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"command: {' '.join(cmd[2:])}")
    print(f"machine: {machine}")
    print(f"wall time: {wall:.1f} s for {last['epoch']} epochs and {len(records)} analysis passes")
    print(f"TAR@FMR={last['verification']['fmr']:g}: {first['verification']['tar']:.3f} before training -> {last['verification']['tar']:.3f} after")
    print(f"| frx demo {' '.join(args.extra)} | {wall:.0f} s | {len(records)} | "
          f"{first['verification']['tar']:.3f} → {last['verification']['tar']:.3f} | {machine} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
