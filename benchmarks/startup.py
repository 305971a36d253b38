"""How long the ``frx`` command takes to answer before it does any work, against ``python -c "import torch"``.

    python benchmarks/startup.py [--repeats 5]

Each command runs in a fresh interpreter (``python -m frx_plugin ...``), interleaved with the torch
import in the same run, so that both see the same load on the machine; the figure is the median
wall time of ``--repeats`` runs, and the ratio is frx's median over torch's (target: ≤ 0.3).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "frx --help": ["-m", "frx_plugin", "--help"],
    "frx --version": ["-m", "frx_plugin", "--version"],
    "frx analyze --no-such-option": ["-m", "frx_plugin", "analyze", "--no-such-option"],
    "frx demo --help": ["-m", "frx_plugin", "demo", "--help"],
    "frx demo --epochs many": ["-m", "frx_plugin", "demo", "--epochs", "many"],
}
TORCH = ["-c", "import torch"]


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    wall(TORCH)  # warm the file cache once for both
    wall(COMMANDS["frx --help"])
    times: dict[str, list[float]] = {name: [] for name in ["python -c 'import torch'", *COMMANDS]}
    for _ in range(args.repeats):
        times["python -c 'import torch'"].append(wall(TORCH))
        for name, command in COMMANDS.items():
            times[name].append(wall(command))
    torch_s = statistics.median(times["python -c 'import torch'"])
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}; median of {args.repeats} runs")
    print("| command | wall time | ratio to `import torch` |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `{name}` | {median * 1000:.0f} ms | {median / torch_s:.2f} |")


if __name__ == "__main__":
    main()
