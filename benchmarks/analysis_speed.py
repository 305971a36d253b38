"""Time one direct-recovery analysis pass (folds, heads for every attribute, bootstrap intervals).

    python benchmarks/analysis_speed.py

Embeddings are random with a planted signal per attribute; 19 attributes mixing the three
kinds, a third with 10% missing labels, 5 folds, 200 bootstrap replicates over identities.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.leakage import analyze_embeddings


def world(n: int, dim: int, per_identity: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g)
    identity = torch.arange(n) // per_identity
    attributes, labels = [], {}
    for k in range(19):
        kind = ("binary", "categorical", "continuous")[k % 3]
        if kind == "binary":
            value = torch.randint(0, 2, (n,), generator=g)
            attributes.append(Attribute(f"a{k}", kind))
        elif kind == "categorical":
            value = torch.randint(0, 5, (n,), generator=g)
            attributes.append(Attribute(f"a{k}", kind, classes=tuple("abcde")))
        else:
            value = torch.randn(n, generator=g)
            attributes.append(Attribute(f"a{k}", kind))
        z[:, k] += 0.5 * value.float()
        if k % 3 == 0:
            gaps = torch.rand(n, generator=g) < 0.1
            value = torch.where(gaps, -1 if kind != "continuous" else math.nan, value)
        labels[f"a{k}"] = value
    return z, identity, labels, AttributeSchema(attributes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2000x128,20000x512", help="comma-separated NxD")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print(f"| N | D | attributes | seconds per pass (best of {args.repeats}) |")
    print("|---|---|---|---|")
    for size in args.sizes.split(","):
        n, dim = (int(v) for v in size.split("x"))
        data = world(n, dim)
        analyze_embeddings(*data)  # warm-up
        best = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            analyze_embeddings(*data)
            best = min(best, time.perf_counter() - start)
        print(f"| {n:,} | {dim} | 19 | {best:.2f} |")


if __name__ == "__main__":
    main()
