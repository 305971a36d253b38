"""Exact logistic heads: the same optimum as scikit-learn's converged LogisticRegression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage import analyze_embeddings, auroc_columns, fit_logistic_heads, fold_statistics, identity_folds

SCHEMA = AttributeSchema(
    [
        Attribute("smile", "binary"),
        Attribute("glasses", "binary"),
        Attribute("hair", "categorical", classes=("dark", "fair", "red")),
        Attribute("age", "continuous"),
    ]
)


def world(n: int = 1500, dim: int = 8, seed: int = 0, missing: bool = True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g)
    smile = torch.randint(0, 2, (n,), generator=g)
    glasses = (torch.rand(n, generator=g) < 0.2).long()  # unbalanced
    hair = torch.randint(0, 3, (n,), generator=g)
    age = torch.randn(n, generator=g)
    z[:, 0] += 1.2 * (2 * smile - 1)
    z[:, 1] += 0.3 * (2 * glasses - 1)
    z[:, 2] += 0.8 * (hair == 1) - 0.8 * (hair == 2)
    z[:, 3] += 0.5 * age
    z += 3.0  # an offset: the intercept and the preconditioner must handle it
    if missing:
        glasses[torch.rand(n, generator=g) < 0.1] = -1
    identity = torch.arange(n) // 5
    return z, identity, {"smile": smile, "glasses": glasses, "hair": hair, "age": age}


def sklearn_optimum(x: np.ndarray, y: np.ndarray, C: float = 1.0):
    model = LogisticRegression(C=C, tol=1e-12, max_iter=100_000).fit(x, y)
    return model.coef_[0], model.intercept_[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_head_is_the_converged_sklearn_optimum(dtype):
    z, identity, labels = world()
    folds = identity_folds(identity, 4, seed=1)
    order = torch.argsort(folds, stable=True)
    z, folds = z[order].to(dtype), folds[order]
    labels = {k: v[order] for k, v in labels.items()}
    hair = torch.nn.functional.one_hot(labels["hair"], 3)
    y = torch.cat([(labels["smile"] == 1)[:, None], (labels["glasses"] == 1)[:, None], hair], 1).double()
    labelled = torch.ones_like(y, dtype=torch.bool)
    labelled[:, 1] = labels["glasses"] >= 0
    stats = fold_statistics(z, y, folds, 4)
    C = 0.5
    heads = fit_logistic_heads(z, y, labelled, folds, stats, C=C, tol=1e-7)
    assert bool(heads.converged.all()) and heads.iterations < 40
    x = z.double().numpy()
    for s in range(5):  # 4 fold complements, then all rows
        train = (folds != s).numpy() if s < 4 else np.ones(len(x), dtype=bool)
        for t in range(y.shape[1]):
            rows = train & labelled[:, t].numpy()
            coef, intercept = sklearn_optimum(x[rows], y[rows, t].numpy(), C)
            np.testing.assert_allclose(heads.weight[s, :, t].numpy(), coef, rtol=0, atol=2e-5 * max(1.0, np.abs(coef).max()))
            assert heads.bias[s, t].item() == pytest.approx(intercept, abs=1e-4)
            assert heads.prior[s, t].item() == pytest.approx(y[rows, t].numpy().mean(), abs=1e-12)


def test_analysis_with_logistic_heads_equals_sklearn_held_out_auroc():
    z, identity, labels = world(missing=True)
    folds = identity_folds(identity, 5, seed=0)
    report = analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=20, folds=folds, head="logistic")
    ridge = analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=20, folds=folds)
    assert report.head == "logistic" and ridge.head == "ridge"
    assert report.to_record()["head"] == "logistic"
    x, f = z.double().numpy(), folds.numpy()

    def held_out_auroc(target: np.ndarray, labelled: np.ndarray) -> float:
        scores = np.full(len(x), np.nan)
        for k in range(5):
            train = (f != k) & labelled
            coef, intercept = sklearn_optimum(x[train], target[train])
            prior = target[train].mean()
            held = (f == k) & labelled
            scores[held] = x[held] @ coef + intercept - math.log(prior / (1 - prior))
        keep = labelled
        return float(auroc_columns(torch.tensor(scores[keep])[:, None], torch.tensor(target[keep] > 0)[:, None])[0])

    # the default tolerance (preconditioned gradient 1e-4 per √n) keeps AUROC within 2e-4 of the
    # optimum by design; here it is checked ten times tighter
    for name in ("smile", "glasses"):
        raw = labels[name].numpy()
        expected = held_out_auroc((raw == 1).astype(float), raw >= 0)
        assert report[name].value == pytest.approx(expected, abs=2e-5), name
    hair = labels["hair"].numpy()
    per_class = [held_out_auroc((hair == c).astype(float), np.ones(len(x), dtype=bool)) for c in range(3)]
    assert report["hair"].value == pytest.approx(np.mean(per_class), abs=2e-5)
    # continuous attributes keep their ridge head: the same numbers (to rounding)
    for key in ("value", "low", "high"):
        assert getattr(report["age"], key) == pytest.approx(getattr(ridge["age"], key), abs=1e-12)
    # a strong planted signal is found by both heads alike
    assert report["smile"].value == pytest.approx(ridge["smile"].value, abs=5e-3)
    assert report["smile"].low < report["smile"].value < report["smile"].high
    # the report's tensors are the heads that scored it: the logistic all-data head for smile
    coef, _ = sklearn_optimum(x, (labels["smile"].numpy() == 1).astype(float))
    np.testing.assert_allclose(report.tensors["probe_directions"][0].numpy(), coef, rtol=0, atol=5e-4 * np.abs(coef).max())
    assert report.tensors["probe_penalty"][0].item() == pytest.approx(1.0)


def test_separable_classes_stay_finite_and_converge():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(600, 4, generator=g)
    label = (z[:, 0] > 0).long()  # perfectly separable: only the penalty keeps w finite
    identity = torch.arange(600) // 3
    schema = AttributeSchema([Attribute("side", "binary")])
    report = analyze_embeddings(z, identity, {"side": label}, schema, n_bootstrap=0, head="logistic")
    assert report["side"].value > 0.999 and not report.warnings
    assert torch.isfinite(report.tensors["probe_directions"]).all()


def test_an_unconverged_head_is_reported():
    z, identity, labels = world(missing=False)
    folds = identity_folds(identity, 3)
    order = torch.argsort(folds, stable=True)
    z, folds = z[order], folds[order]
    y = (labels["smile"][order] == 1).double()[:, None]
    heads = fit_logistic_heads(z, y, torch.ones_like(y, dtype=torch.bool), folds, fold_statistics(z, y, folds, 3), max_iter=1, tol=1e-12)
    assert heads.iterations == 1 and not bool(heads.converged.any()) and bool((heads.gradient > 1e-12).all())


def test_bad_head_arguments_are_named():
    z, identity, labels = world(n=200)
    with pytest.raises(AnalysisError, match=r"head must be one of \['ridge', 'logistic'\], got 'lasso'"):
        analyze_embeddings(z, identity, labels, SCHEMA, head="lasso")
    with pytest.raises(AnalysisError, match=r"C \(the inverse logistic penalty\) must be a positive number, got 0"):
        analyze_embeddings(z, identity, labels, SCHEMA, head="logistic", C=0)
