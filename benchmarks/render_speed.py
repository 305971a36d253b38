"""How fast the synthetic face world renders, and what its faces look like.

    python benchmarks/render_speed.py --size 112 --n 5000
    python benchmarks/render_speed.py --grid docs/images/synthetic_faces.png

Renders a warm-up batch, then ``--n`` faces in batches of ``--batch`` (as a
DataLoader would ask for them) and prints faces/s, the machine and a markdown
table row.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from frx_plugin.synthetic import SyntheticFaceWorld  # noqa: E402


def save_grid(world: SyntheticFaceWorld, path: Path, rows: int = 8) -> None:
    """An rows×rows grid of faces of different identities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows * rows
    indices = torch.arange(n) * world.images_per_identity
    images = world.render(indices)
    size = images.shape[-1]
    grid = images.view(rows, rows, 3, size, size).permute(0, 3, 1, 4, 2).reshape(rows * size, rows * size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    plt.imsave(path, grid.numpy())
    print(f"saved {n} faces to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--n", type=int, default=5000, help="faces to time")
    parser.add_argument("--batch", type=int, default=256, help="faces per render call")
    parser.add_argument("--chunk", type=int, default=64, help="faces the renderer draws at a time inside a call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="save an 8x8 grid of sample faces to this PNG and exit")
    args = parser.parse_args(argv)
    if min(args.size, args.n, args.batch, args.chunk) < 1:
        parser.error("--size, --n, --batch and --chunk must be positive")

    world = SyntheticFaceWorld(max(1, args.n // 4 + 1), 4, seed=args.seed, size=args.size, chunk_size=args.chunk)
    if args.grid is not None:
        save_grid(SyntheticFaceWorld(64, 4, seed=args.seed, size=args.size, chunk_size=args.chunk), args.grid)
        return 0

    world.render(torch.arange(min(args.batch, len(world))))  # warm-up: noise bank, allocator
    started = time.perf_counter()
    for start in range(0, args.n, args.batch):
        world.render(torch.arange(start, min(start + args.batch, args.n)))
    elapsed = time.perf_counter() - started
    rate = args.n / elapsed

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = os.cpu_count()
    threads = torch.get_num_threads()
    print(f"rendered {args.n} faces of {args.size}x{args.size} in {elapsed:.2f} s: {rate:,.0f} faces/s")
    print(f"machine: {cpu}, {cores} cores, torch {torch.__version__} with {threads} threads, python {platform.python_version()}")
    print("| size | faces | batch | chunk | faces/s | CPU | cores | torch threads | torch |")
    print(f"| {args.size} | {args.n} | {args.batch} | {args.chunk} | {rate:,.0f} | {cpu} | {cores} | {threads} | {torch.__version__} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
