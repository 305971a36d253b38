"""Do frx's heads agree with the usual logistic reference on clustered, face-like embeddings?

    python benchmarks/heads_agreement.py [--worlds 8 --identities 300 --dim 128 --bootstrap 200]
    python benchmarks/heads_agreement.py --demo frx-demo/backbone.safetensors

Data (:func:`clustered_world`): unit-norm embeddings clustered by identity as face embeddings are
(genuine cosines ≈ 0.6, impostor ≈ 0, an anisotropic spectrum), with binary attributes of the
identity (prevalence 50%, 20%, 5%, 3%; planted along their own directions at several strengths, and
two without any signal) and of the image (a nuisance attribute at 30% and a rare one at 5%).

Reference: scikit-learn's ``LogisticRegression()`` (lbfgs, C = 1), fitted per attribute on each
training part of the same identity-disjoint folds frx uses (5, ``identity_folds``), its held-out
decision values less the training prior's log-odds, pooled into one AUROC per attribute.
Compared: frx's default ridge heads and ``head="logistic"`` (``analyze_embeddings``): the largest
|AUROC − reference| over attributes and worlds, and how many 95% identity-bootstrap intervals hold
the reference. Also the spread of the ridge penalty across the 5 folds of the rare attributes
(log10 of the largest over the smallest λ/mean eigenvalue), and how many of their fold heads left C = 1.

``--demo BACKBONE``: instead, the other side of the default's choice of C. A backbone that ``frx demo``
trained keeps nuisance attributes (glasses, background) in directions of z with about 10⁻⁴ of the
identity directions' variance, which C = 1 does not reach. The backbone's own synthetic probe set
(recorded in its header) is embedded, and the held-out AUROC and leakage ℓ of every binary and
categorical attribute printed for the default heads, ``head="logistic"`` (C = 1) and the reference,
with the C that the default heads chose in each fold.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.leakage import (
    analyze_embeddings,
    auroc_columns,
    fit_probe_heads,
    fold_statistics,
    identity_folds,
)
from frx_plugin.leakage.penalty import fisher_weight, inner_fold_penalty

#: identity attributes: (name, prevalence, strength of the planted shift of the identity's centre)
IDENTITY_ATTRIBUTES = [("common", 0.5, 0.25), ("frequent", 0.2, 0.2), ("rare", 0.05, 0.3), ("very_rare", 0.03, 0.35),
                       ("rare_faint", 0.05, 0.12), ("null", 0.2, 0.0), ("rare_null", 0.05, 0.0)]
#: image attributes (nuisance): (name, prevalence, strength of the shift of the image)
IMAGE_ATTRIBUTES = [("lighting", 0.3, 0.15), ("rare_glare", 0.05, 0.2)]


def clustered_world(seed: int, n_identities: int = 300, dim: int = 128, per_identity: tuple[int, int] = (2, 9)):
    """(embeddings (N, D) float32 unit-norm, identity (N,), labels, schema): see the module docstring."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.linspace(1.6, 0.4, dim)  # anisotropic: real embeddings spread unevenly over directions
    basis = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0].float()
    names = [a[0] for a in IDENTITY_ATTRIBUTES + IMAGE_ATTRIBUTES]
    directions = torch.linalg.qr(torch.randn(dim, len(names), generator=g))[0].T  # orthonormal, one per attribute
    centre = (torch.randn(n_identities, dim, generator=g) * spectrum) @ basis / math.sqrt(dim)
    counts = torch.randint(per_identity[0], per_identity[1] + 1, (n_identities,), generator=g)
    identity = torch.repeat_interleave(torch.arange(n_identities), counts)
    labels = {}
    for k, (name, prevalence, strength) in enumerate(IDENTITY_ATTRIBUTES):
        value = (torch.rand(n_identities, generator=g) < prevalence).long()
        centre = centre + strength * (2 * value[:, None] - 1).float() * directions[k]
        labels[name] = value[identity]
    z = centre[identity] + 0.8 * (torch.randn(identity.numel(), dim, generator=g) * spectrum) @ basis / math.sqrt(dim)
    for j, (name, prevalence, strength) in enumerate(IMAGE_ATTRIBUTES, len(IDENTITY_ATTRIBUTES)):
        value = (torch.rand(identity.numel(), generator=g) < prevalence).long()
        z = z + strength * value[:, None].float() * directions[j]
        labels[name] = value
    identity_names = {a[0] for a in IDENTITY_ATTRIBUTES}
    schema = AttributeSchema([Attribute(n, "binary", group="identity" if n in identity_names else "nuisance") for n in names])
    return torch.nn.functional.normalize(z, dim=1), identity + 1000 * seed, labels, schema


def reference_auroc(z: torch.Tensor, folds: torch.Tensor, label: torch.Tensor, C: float = 1.0) -> float:
    """scikit-learn's logistic heads on the same folds, scored without the training prior; one pooled AUROC."""
    x, y, f = z.double().numpy(), label.numpy(), folds.numpy()
    scores = np.empty(len(x))
    for k in np.unique(f):
        train, held = f != k, f == k
        model = LogisticRegression(C=C, max_iter=10_000).fit(x[train], y[train])
        prior = y[train].mean()
        scores[held] = model.decision_function(x[held]) - math.log(prior / (1 - prior))
    return float(auroc_columns(torch.tensor(scores)[:, None], torch.tensor(y == 1)[:, None])[0])


def chosen_c(z: torch.Tensor, folds: torch.Tensor, targets: torch.Tensor, n_folds: int = 5) -> torch.Tensor:
    """(F, T) the C of every fold head of 0/1 columns ``targets`` (N, T): their λ = 1/(C·p(1 − p))."""
    stats = fold_statistics(z.double(), targets.double(), folds, n_folds)
    schema = AttributeSchema([Attribute(f"c{t}", "binary") for t in range(targets.shape[1])])
    train = stats.training_sets()
    return (1.0 / (fit_probe_heads(stats, {}, schema).penalty * fisher_weight(train.count, train.sum_y)))[:n_folds]


def penalty_spread(z: torch.Tensor, folds: torch.Tensor, label: torch.Tensor, n_folds: int = 5) -> tuple[float, float, int]:
    """log10(largest / smallest) ridge λ per unit of training scatter over the 5 outer folds' heads of one 0/1
    column: the heads' own (``fit_probe_heads``), and the inner-fold search every column used before; and
    how many of the heads' own folds took a C other than 1."""
    stats = fold_statistics(z.double(), label.double()[:, None], folds, n_folds)
    schema = AttributeSchema([Attribute("a", "binary")])
    used = fit_probe_heads(stats, {}, schema).penalty[:n_folds, 0]
    searched = inner_fold_penalty(stats)[:n_folds, 0]  # the former choice, for comparison
    trace = torch.stack([stats.gram[[g for g in range(n_folds) if g != f]].sum(0).diagonal().sum() for f in range(n_folds)])
    used_spread, searched_spread = (float(torch.log10((lam / trace).max() / (lam / trace).min())) for lam in (used, searched))
    moved = int((chosen_c(z, folds, label[:, None], n_folds) > 1.0 + 1e-9).sum())
    return used_spread, searched_spread, moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worlds", type=int, default=8)
    parser.add_argument("--identities", type=int, default=300)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--demo", metavar="BACKBONE", help="a backbone.safetensors that frx demo wrote: its probe set instead")
    args = parser.parse_args()
    if args.demo:
        demo_backbone(args.demo, args.bootstrap)
        return
    rows, spreads, started = [], [], time.perf_counter()
    for seed in range(args.worlds):
        z, identity, labels, schema = clustered_world(seed, args.identities, args.dim)
        folds = identity_folds(identity, 5, seed=0)
        reports = {head: analyze_embeddings(z, identity, labels, schema, folds=folds, n_bootstrap=args.bootstrap, head=head,
                                            min_class_samples=5) for head in ("ridge", "logistic")}
        for a in schema:
            if any(math.isnan(report[a.name].value) for report in reports.values()):
                continue  # undefined (a training part without a positive): no head to compare
            ref = reference_auroc(z, folds, labels[a.name])
            row = {"world": seed, "attribute": a.name, "reference": ref}
            for head, report in reports.items():
                item = report[a.name]
                row[head] = item.value
                row[f"{head}_covers"] = item.low <= ref <= item.high
                row[f"{head}_low"], row[f"{head}_high"] = item.low, item.high
            rows.append(row)
            if "rare" in a.name:
                spreads.append(penalty_spread(z, folds, labels[a.name]))
    n = len(rows)
    print(f"{args.worlds} worlds, {n} defined binary attributes, {args.identities} identities, D = {args.dim}, "
          f"{args.bootstrap} bootstrap replicates ({time.perf_counter() - started:.0f} s)")
    print(f"{'attribute':<12} {'reference':>9} {'ridge':>7} {'logistic':>8}   (mean over worlds; max |d| per head)")
    for name in dict.fromkeys(r["attribute"] for r in rows):
        mine = [r for r in rows if r["attribute"] == name]
        mean = {k: np.mean([r[k] for r in mine]) for k in ("reference", "ridge", "logistic")}
        worst = {k: max(abs(r[k] - r["reference"]) for r in mine) for k in ("ridge", "logistic")}
        print(f"{name:<12} {mean['reference']:9.3f} {mean['ridge']:7.3f} {mean['logistic']:8.3f}   "
              f"max |d| ridge {worst['ridge']:.3f}, logistic {worst['logistic']:.3f}")
    for r in rows:
        if not r["ridge_covers"]:
            print(f"  ridge interval misses the reference: world {r['world']}, {r['attribute']}: "
                  f"ridge {r['ridge']:.4f} [{r['ridge_low']:.4f}, {r['ridge_high']:.4f}], reference {r['reference']:.4f}")
    for head in ("ridge", "logistic"):
        d = [abs(r[head] - r["reference"]) for r in rows]
        covered = sum(r[f"{head}_covers"] for r in rows)
        print(f"{head:<9}: max |AUROC − reference| {max(d):.3f}, mean {np.mean(d):.3f}; intervals holding the reference {covered}/{n}")
    used, searched, moved = zip(*spreads)
    print(f"ridge λ across the 5 folds of the rare attributes, log10(max/min): {np.median(used):.2f} median, "
          f"{max(used):.2f} max (the inner-fold search of before: {np.median(searched):.2f} median, {max(searched):.2f} max); "
          f"fold heads with C > 1: {sum(moved)} of {5 * len(moved)}")


def demo_backbone(path: str, bootstrap: int) -> None:
    """The default heads, the logistic heads and the reference on a trained ``frx demo`` backbone (``--demo``)."""
    from frx_plugin.models import load_backbone
    from frx_plugin.synthetic import SyntheticProbeSet

    started = time.perf_counter()
    module, description = load_backbone(path)
    probe = SyntheticProbeSet(**description["probe"])
    rows = torch.arange(len(probe.identity))
    with torch.no_grad():
        z = torch.nn.functional.normalize(torch.cat([module(probe.images(rows[i:i + 256])) for i in range(0, len(rows), 256)]), dim=1)
    folds = identity_folds(probe.identity, 5, seed=0)
    reports = {head: analyze_embeddings(z, probe.identity, probe.labels, probe.schema, folds=folds, n_bootstrap=bootstrap,
                                        head=head) for head in ("ridge", "logistic")}
    print(f"{path}: {len(rows)} probe images of {len(torch.unique(probe.identity))} identities, D = {z.shape[1]} "
          f"({time.perf_counter() - started:.0f} s)")
    print(f"{'attribute':<12} {'ridge (default)':>22} {'logistic (C = 1)':>17} {'reference':>10}   C of the default's fold heads")
    for a in probe.schema:
        if not a.discrete:
            continue
        raw = probe.labels[a.name]
        targets = raw[:, None] if a.kind == "binary" else torch.stack([(raw == c).long() for c in range(a.num_classes)], 1)
        reference = float(np.mean([reference_auroc(z, folds, targets[:, t]) for t in range(targets.shape[1])]))
        ridge, logistic = reports["ridge"][a.name], reports["logistic"][a.name]
        c = chosen_c(z, folds, targets)
        print(f"{a.name:<12} {ridge.value:6.3f} (ℓ {ridge.leakage:.3f} [{ridge.leakage_low:.3f}, {ridge.leakage_high:.3f}])"
              f" {logistic.value:7.3f} (ℓ {logistic.leakage:.3f}) {reference:10.3f}   "
              f"10^{float(torch.log10(c).min()):.1f} … 10^{float(torch.log10(c).max()):.1f}")

if __name__ == "__main__":
    main()
