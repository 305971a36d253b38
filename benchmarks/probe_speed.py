"""Probe speed against the usual practice: scikit-learn logistic regression per attribute and fold.

    python benchmarks/probe_speed.py [--n 50000 --dim 512 --attributes 40 --repeats 3]

Data: N embeddings in D dimensions (N(0, I) noise), K binary attributes drawn per image, each with
a planted signal of its own strength (μ from 0.02 to 0.6) on its own direction; identities of 10
images each. Every method uses the same identity-disjoint folds (5) and pools the held-out scores
into one AUROC per attribute.

- scikit-learn: ``LogisticRegression()`` (lbfgs, C = 1, default tolerance) fitted per attribute and
  fold, as studies usually do: the speed baseline.
- frx ridge heads: ``analyze_embeddings(head="ridge")``, the every-epoch engine (all heads at once
  from per-fold statistics, nested penalty choice). Its AUROCs are compared with scikit-learn's.
- frx logistic heads: ``analyze_embeddings(head="logistic")`` (same objective as scikit-learn's
  C = 1, all heads at once by preconditioned L-BFGS). Compared with the *converged* logistic
  optimum: scikit-learn refitted with ``tol=1e-10``; both scored without the training prior's
  log-odds (frx's convention, see ``frx_plugin.leakage.logistic``), so the AUROCs are of the same heads.

frx timings: best of ``--repeats`` after a warm-up on small data; scikit-learn: one run (after a
warm-up fit). No bootstrap anywhere.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.leakage import analyze_embeddings, auroc_columns, identity_folds


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


def sklearn_scores(z: np.ndarray, y: np.ndarray, folds: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
    """Held-out decision values (N, K) of per-attribute, per-fold fits, and the same less the training prior's log-odds."""
    raw = np.empty(y.shape)
    centred = np.empty(y.shape)
    for j in range(y.shape[1]):
        for f in np.unique(folds):
            held = folds == f
            model = LogisticRegression(**options).fit(z[~held], y[~held, j])
            raw[held, j] = model.decision_function(z[held])
            prior = y[~held, j].mean()
            centred[held, j] = raw[held, j] - np.log(prior / (1 - prior))
    return raw, centred


def aurocs(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    return auroc_columns(torch.from_numpy(scores), torch.from_numpy(y) > 0).numpy()


def best_of(repeats: int, run):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--attributes", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    z, identity, labels, schema = planted(args.n, args.dim, args.attributes)
    folds = identity_folds(identity, 5, seed=0)
    y = torch.stack([labels[name] for name in schema.names], 1).numpy()
    zn, fn = z.numpy().astype(np.float64), folds.numpy()

    # warm-up (thread pools, allocator) on small data
    small = planted(2_000, 32, 3)
    for head in ("ridge", "logistic"):
        analyze_embeddings(*small, n_bootstrap=0, head=head)
    LogisticRegression().fit(small[0].numpy(), small[2]["a00"].numpy())

    def frx(head: str):
        return analyze_embeddings(z, identity, labels, schema, n_bootstrap=0, folds=folds, head=head)

    ridge_seconds, ridge = best_of(args.repeats, lambda: frx("ridge"))
    logistic_seconds, logistic = best_of(args.repeats, lambda: frx("logistic"))

    start = time.perf_counter()
    default_raw, default_centred = sklearn_scores(zn, y, fn, max_iter=1000)
    sklearn_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, converged_centred = sklearn_scores(zn, y, fn, tol=1e-10, max_iter=100_000)
    converged_seconds = time.perf_counter() - start

    ridge_auc = np.array([a.value for a in ridge.leakage])
    logistic_auc = np.array([a.value for a in logistic.leakage])
    sklearn_auc = aurocs(default_raw, y)
    sklearn_centred_auc = aurocs(default_centred, y)
    optimum_auc = aurocs(converged_centred, y)

    def gap(a, b):
        d = np.abs(a - b)
        return f"{d.mean():.1e} | {d.max():.1e}"

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"N={args.n:,}, D={args.dim}, K={args.attributes} binary attributes, 5 identity-disjoint folds"
    )
    print()
    print("| method | seconds | speed-up vs scikit-learn loop | compared with | mean abs ΔAUROC | max abs ΔAUROC |")
    print("|---|---|---|---|---|---|")
    print(f"| scikit-learn `LogisticRegression()` per attribute and fold | {sklearn_seconds:.1f} | 1× | – | – | – |")
    print(f"| frx ridge heads (`head=\"ridge\"`) | {ridge_seconds:.2f} | {sklearn_seconds / ridge_seconds:.0f}× | scikit-learn loop "
          f"| {gap(ridge_auc, sklearn_auc)} |")
    print(
        f"| frx logistic heads (`head=\"logistic\"`, C = 1) | {logistic_seconds:.2f} | {sklearn_seconds / logistic_seconds:.0f}× "
        f"| converged optimum | {gap(logistic_auc, optimum_auc)} |"
    )
    print(
        f"| scikit-learn loop, default tolerance (same prior convention) | {sklearn_seconds:.1f} | 1× "
        f"| converged optimum | {gap(sklearn_centred_auc, optimum_auc)} |"
    )
    print(f"| scikit-learn converged (`tol=1e-10`): the reference | {converged_seconds:.1f} | – | – | – | – |")
    print()
    print("Side by side (every fifth attribute): held-out AUROC")
    print()
    print("| attribute | planted μ | frx ridge | scikit-learn loop | frx logistic | logistic optimum |")
    print("|---|---|---|---|---|---|")
    strengths = torch.linspace(0.02, 0.6, args.attributes).tolist()
    for j in range(0, args.attributes, 5):
        print(
            f"| {schema.names[j]} | {strengths[j]:.3f} | {ridge_auc[j]:.4f} | {sklearn_auc[j]:.4f} "
            f"| {logistic_auc[j]:.4f} | {optimum_auc[j]:.4f} |"
        )


if __name__ == "__main__":
    main()
