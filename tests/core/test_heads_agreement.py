"""The default ridge heads agree with the usual logistic reference on clustered, face-like embeddings.

Reference: scikit-learn's ``LogisticRegression()`` (C = 1) per attribute on the training part of each
identity-disjoint fold, its held-out decision values less the training prior's log-odds, pooled into
one AUROC. The data cluster by identity as face embeddings do, with rare attributes (4-6% of the
identities), where the penalty searched on held-out squared error jumped between the ends of its grid.
The heads' C leaves 1 only where C = 1 hides an attribute outright (kept in directions of tiny variance).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.leakage import analyze_embeddings, auroc_columns, fit_probe_heads, fold_statistics, identity_folds
from frx_plugin.leakage.penalty import fisher_weight

#: (name, prevalence among identities, shift of the identity's centre along its own direction)
IDENTITY = [("common", 0.5, 0.2), ("rare", 0.06, 0.3), ("very_rare", 0.04, 0.35), ("rare_faint", 0.06, 0.12),
            ("rare_null", 0.06, 0.0)]
N_IDENTITIES, DIM = 240, 64


def clustered_world(seed: int):
    """Unit-norm embeddings clustered by identity (genuine cosine ≈ 0.6), an uneven spectrum, binary identity
    attributes and a three-class image attribute; identities are arbitrary large integers."""
    g = torch.Generator().manual_seed(seed)
    spectrum = torch.linspace(1.6, 0.4, DIM)
    basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=g, dtype=torch.float64))[0].float()
    directions = torch.linalg.qr(torch.randn(DIM, len(IDENTITY) + 2, generator=g))[0].T
    centre = (torch.randn(N_IDENTITIES, DIM, generator=g) * spectrum) @ basis / math.sqrt(DIM)
    identity = torch.repeat_interleave(torch.arange(N_IDENTITIES), torch.randint(2, 9, (N_IDENTITIES,), generator=g))
    labels = {}
    for k, (name, prevalence, shift) in enumerate(IDENTITY):
        value = (torch.rand(N_IDENTITIES, generator=g) < prevalence).long()
        centre = centre + shift * (2 * value[:, None] - 1).float() * directions[k]
        labels[name] = value[identity]
    z = centre[identity] + 0.8 * (torch.randn(identity.numel(), DIM, generator=g) * spectrum) @ basis / math.sqrt(DIM)
    light = torch.multinomial(torch.tensor([0.7, 0.2, 0.1]), identity.numel(), replacement=True, generator=g)
    z = z + 0.15 * (light == 1).float()[:, None] * directions[-2] + 0.2 * (light == 2).float()[:, None] * directions[-1]
    labels["light"] = light
    schema = AttributeSchema([*(Attribute(name, "binary") for name, _, _ in IDENTITY),
                              Attribute("light", "categorical", classes=("even", "side", "glare"))])
    return torch.nn.functional.normalize(z, dim=1), identity * 7919 + 10**9, labels, schema


def reference_auroc(z: torch.Tensor, folds: torch.Tensor, target: np.ndarray) -> float:
    x, f = z.double().numpy(), folds.numpy()
    scores = np.empty(len(x))
    for k in np.unique(f):
        train, held = f != k, f == k
        model = LogisticRegression(C=1.0, max_iter=10_000).fit(x[train], target[train])
        prior = target[train].mean()
        scores[held] = model.decision_function(x[held]) - math.log(prior / (1 - prior))
    return float(auroc_columns(torch.tensor(scores)[:, None], torch.tensor(target == 1)[:, None])[0])


def chosen_c(z: torch.Tensor, folds: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The C of each of the 5 fold heads and the all-data head of one binary column: λ = 1/(C·p(1 − p))."""
    stats = fold_statistics(z.double(), label.double()[:, None], folds, 5)
    heads = fit_probe_heads(stats, {}, AttributeSchema([Attribute("a", "binary")]))
    train = stats.training_sets()
    return 1.0 / (heads.penalty[:, 0] * fisher_weight(train.count, train.sum_y)[:, 0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_heads_are_within_005_of_the_logistic_reference_and_their_intervals_hold_it(seed):
    z, identity, labels, schema = clustered_world(seed)
    folds = identity_folds(identity, 5, seed=0)
    report = analyze_embeddings(z, identity, labels, schema, folds=folds, n_bootstrap=200, min_class_samples=5)
    assert report.head == "ridge"
    for attribute in schema:
        raw = labels[attribute.name].numpy()
        if attribute.kind == "binary":
            reference = reference_auroc(z, folds, raw)
        else:  # macro one-vs-rest, as frx reports a categorical attribute
            reference = float(np.mean([reference_auroc(z, folds, (raw == c).astype(int)) for c in range(attribute.num_classes)]))
        item = report[attribute.name]
        assert abs(item.value - reference) <= 0.05, (attribute.name, item.value, reference)
        assert item.low <= reference <= item.high, (attribute.name, item.low, item.high, reference)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_rare_attribute_gets_the_same_penalty_in_every_fold(seed):
    """C = 1 in every fold head of the rare attributes (the squared-error search put one fold at 10⁻⁵ and the next at 10²)."""
    z, identity, labels, _ = clustered_world(seed)
    folds = identity_folds(identity, 5, seed=0)
    for name in ("rare", "very_rare", "rare_faint", "rare_null"):
        torch.testing.assert_close(chosen_c(z, folds, labels[name]), torch.ones(6, dtype=torch.float64), rtol=1e-9, atol=0.0,
                                   msg=name)


def test_an_attribute_kept_in_directions_of_tiny_variance_is_still_read():
    """As on the ``frx demo`` backbone: a nuisance attribute lives in directions with 1e-4 of the identity
    directions' variance. C = 1 shrinks it away (the reference reads chance); the heads take a larger C, in every fold."""
    g = torch.Generator().manual_seed(5)
    n_identities, dim, per_identity = 200, 32, 4
    identity = torch.arange(n_identities).repeat_interleave(per_identity)
    centre = torch.randn(n_identities, dim, generator=g)
    centre[:, -4:] *= 0.0
    glasses = (torch.rand(identity.numel(), generator=g) < 0.3).long()
    z = centre[identity] + 0.5 * torch.randn(identity.numel(), dim, generator=g)
    z[:, -4:] = 0.01 * torch.randn(identity.numel(), 4, generator=g)
    z[:, -1] += 0.02 * glasses.float()
    z = torch.nn.functional.normalize(z, dim=1)
    schema = AttributeSchema([Attribute("glasses", "binary", group="nuisance")])
    folds = identity_folds(identity, 5, seed=0)
    reference = reference_auroc(z, folds, glasses.numpy())
    assert reference < 0.6  # the reference's C = 1 does not reach it
    report = analyze_embeddings(z, identity, {"glasses": glasses}, schema, folds=folds, n_bootstrap=0)
    assert report["glasses"].value > 0.9
    assert bool((chosen_c(z, folds, glasses) >= 1e3).all())


def test_a_binary_head_at_c_1_is_the_first_newton_step_with_the_logistic_intercept():
    """λ = 1/(p(1 − p)), weights divided by p(1 − p), scored without the prior's log-odds but with the
    intercept's second-order shift −½(1 − 2p)·v: checked with numpy, and against scikit-learn's converged head."""
    z, identity, labels, _ = clustered_world(3)
    folds = identity_folds(identity, 5, seed=0)
    y = labels["very_rare"].double()
    stats = fold_statistics(z.double(), y[:, None], folds, 5)
    heads = fit_probe_heads(stats, {}, AttributeSchema([Attribute("very_rare", "binary")]))
    x = z.double().numpy()
    for s in range(6):  # the 5 training parts, then all rows
        rows = np.ones(len(x), dtype=bool) if s == 5 else (folds != s).numpy()
        xs, ys = x[rows], y.numpy()[rows]
        p = ys.mean()
        xc = xs - xs.mean(0)
        w = np.linalg.solve(xc.T @ xc + np.eye(DIM) / (p * (1 - p)), xc.T @ (ys - p)) / (p * (1 - p))
        shift = -0.5 * (1 - 2 * p) * float(np.mean((xc @ w) ** 2))
        assert float(heads.penalty[s, 0]) == pytest.approx(1 / (p * (1 - p)), rel=1e-12)
        np.testing.assert_allclose(heads.weight[s, :, 0].numpy(), w, rtol=1e-8, atol=1e-10)
        assert float(heads.bias[s, 0]) == pytest.approx(shift - xs.mean(0) @ w, rel=1e-8, abs=1e-10)
        model = LogisticRegression(C=1.0, tol=1e-10, max_iter=100_000).fit(xs, ys)
        coef = model.coef_[0]
        assert coef @ w / (np.linalg.norm(coef) * np.linalg.norm(w)) > 0.99
        # the converged intercept beyond the prior's log-odds, at the training mean: the shift is nearer to it than 0 is
        converged = model.intercept_[0] + xs.mean(0) @ coef - math.log(p / (1 - p))
        assert abs(shift - converged) < 0.5 * abs(converged)
