"""Probe speed against the usual practice: scikit-learn logistic regression per attribute and fold.

    python benchmarks/probe_speed.py [--n 50000 --dim 512 --attributes 40]

Data: N embeddings in D dimensions (N(0, I) noise), K binary attributes drawn per image, each with
a planted signal of its own strength (μ from 0.02 to 0.6) on its own direction; identities of 10
images each. Both methods use the same identity-disjoint folds (5) and pool held-out scores into
one AUROC per attribute. scikit-learn: ``LogisticRegression`` (lbfgs, default C and tolerance)
fitted per attribute and per fold, as studies usually do. frx: ``analyze_embeddings`` (all ridge
heads at once from per-fold statistics, penalty on held-out identities, no bootstrap).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.recovery import analyze_embeddings, identity_folds


def planted(n: int, dim: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g)
    directions = torch.linalg.qr(torch.randn(dim, k, generator=g))[0].T  # (k, D) orthonormal
    strengths = torch.linspace(0.02, 0.6, k)
    labels = torch.randint(0, 2, (n, k), generator=g)
    z += ((2 * labels - 1) * strengths).float() @ directions
    identity = torch.arange(n) // 10
    schema = AttributeSchema([Attribute(f"a{i:02d}", "binary") for i in range(k)])
    return z, identity, {f"a{i:02d}": labels[:, i] for i in range(k)}, schema


def sklearn_aurocs(z: np.ndarray, y: np.ndarray, folds: np.ndarray) -> list[float]:
    out = []
    for j in range(y.shape[1]):
        scores = np.empty(len(z))
        for f in np.unique(folds):
            held = folds == f
            model = LogisticRegression(max_iter=1000).fit(z[~held], y[~held, j])
            scores[held] = model.decision_function(z[held])
        out.append(roc_auc_score(y[:, j], scores))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--attributes", type=int, default=40)
    args = parser.parse_args()
    z, identity, labels, schema = planted(args.n, args.dim, args.attributes)
    folds = identity_folds(identity, 5, seed=0)

    start = time.perf_counter()
    report = analyze_embeddings(z, identity, labels, schema, n_bootstrap=0, folds=folds)
    frx_seconds = time.perf_counter() - start

    y = torch.stack([labels[name] for name in schema.names], 1).numpy()
    start = time.perf_counter()
    reference = sklearn_aurocs(z.numpy().astype(np.float64), y, folds.numpy())
    sklearn_seconds = time.perf_counter() - start

    delta = np.abs(np.array([a.value for a in report.leakage]) - np.array(reference))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; N={args.n:,}, D={args.dim}, K={args.attributes}, 5 folds")
    print("| method | seconds | speed-up | mean abs ΔAUROC | max abs ΔAUROC |")
    print("|---|---|---|---|---|")
    print(f"| scikit-learn LogisticRegression per attribute and fold | {sklearn_seconds:.1f} | 1× | – | – |")
    print(f"| frx ridge heads (analyze_embeddings, no bootstrap) | {frx_seconds:.2f} | {sklearn_seconds / frx_seconds:.0f}× | {delta.mean():.4f} | {delta.max():.4f} |")


if __name__ == "__main__":
    main()
