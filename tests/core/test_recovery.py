"""Direct recovery (frx_plugin.leakage: functional, statistics, ridge, estimate) against independent references.

References: scikit-learn metrics; a brute-force ridge/GCV on explicit hat matrices; Bayes
values of planted Gaussian signals; the identity trap (identity-disjoint vs image-level folds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, r2_score as sk_r2_score, roc_auc_score

from benchmarks.analysis_speed import world as mixed_world
from frx_plugin.attributes import Attribute, AttributeSchema, SchemaError
from frx_plugin.errors import AnalysisError
from frx_plugin.leakage import (
    analyze_embeddings,
    auroc,
    balanced_accuracy,
    fit_ridge_heads,
    fold_statistics,
    identity_folds,
    r2_score,
)
from frx_plugin.leakage.ridge import PENALTY_EXPONENTS


def Phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------- metrics vs scikit-learn


def test_auroc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    for _trial in range(5):
        n = 300
        scores = rng.integers(0, 12, n).astype(float)  # many ties
        positive = rng.random(n) < 0.3
        weights = rng.random((4, n)) * 3
        weights[0, :5] = 0.0  # zero weights are allowed
        expected = roc_auc_score(positive, scores)
        assert float(auroc(torch.tensor(scores), torch.tensor(positive))) == pytest.approx(expected, abs=1e-12)
        batched = auroc(torch.tensor(scores), torch.tensor(positive), torch.tensor(weights))
        assert batched.shape == (4,)
        for b in range(4):
            reference = roc_auc_score(positive, scores, sample_weight=weights[b])
            assert float(batched[b]) == pytest.approx(reference, abs=1e-12)
            single = auroc(torch.tensor(scores), torch.tensor(positive), torch.tensor(weights[b]))
            assert float(single) == pytest.approx(reference, abs=1e-12)
    # continuous scores without ties take the fast path
    scores = rng.normal(size=500)
    positive = rng.random(500) < 0.5
    weights = rng.integers(0, 4, (3, 500)).astype(float)
    got = auroc(torch.tensor(scores), torch.tensor(positive), torch.tensor(weights, dtype=torch.float32))
    for b in range(3):
        assert float(got[b]) == pytest.approx(roc_auc_score(positive, scores, sample_weight=weights[b]), abs=1e-6)


def test_auroc_undefined_when_a_class_has_no_weight():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    positive = torch.tensor([True, False, True, False])
    assert math.isnan(float(auroc(scores, torch.zeros(4, dtype=torch.bool))))
    got = auroc(scores, positive, torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    assert math.isnan(float(got[0])) and float(got[1]) == pytest.approx(roc_auc_score(positive, scores))


def test_balanced_accuracy_matches_sklearn():
    rng = np.random.default_rng(1)
    for classes in (2, 5):
        target = rng.integers(0, classes, 400)
        predicted = np.where(rng.random(400) < 0.6, target, rng.integers(0, classes, 400))
        weights = rng.random((3, 400))
        got = balanced_accuracy(torch.tensor(predicted), torch.tensor(target))
        assert float(got) == pytest.approx(balanced_accuracy_score(target, predicted), abs=1e-12)
        batched = balanced_accuracy(torch.tensor(predicted), torch.tensor(target), torch.tensor(weights), classes)
        for b in range(3):
            reference = balanced_accuracy_score(target, predicted, sample_weight=weights[b])
            assert float(batched[b]) == pytest.approx(reference, abs=1e-12)


def test_r2_matches_sklearn():
    rng = np.random.default_rng(2)
    target = rng.normal(3.0, 2.0, 500)
    predicted = target + rng.normal(0, 1.5, 500)
    weights = rng.random((3, 500)) * 2
    assert float(r2_score(torch.tensor(predicted), torch.tensor(target))) == pytest.approx(sk_r2_score(target, predicted), abs=1e-12)
    batched = r2_score(torch.tensor(predicted), torch.tensor(target), torch.tensor(weights))
    for b in range(3):
        assert float(batched[b]) == pytest.approx(sk_r2_score(target, predicted, sample_weight=weights[b]), abs=1e-12)
    assert math.isnan(float(r2_score(torch.ones(4), torch.full((4,), 2.0))))


# --------------------------------------------------------------------------- folds


def test_identity_folds_are_identity_disjoint_balanced_and_seeded():
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 20, (103,), generator=g)
    identity = torch.repeat_interleave(torch.arange(103) * 7 + 1000, sizes)  # arbitrary labels
    identity = identity[torch.randperm(identity.numel(), generator=g)]
    folds = identity_folds(identity, 5, seed=3)
    assert folds.dtype == torch.int64 and folds.shape == identity.shape
    assert set(folds.tolist()) == set(range(5))
    for ident in torch.unique(identity):
        assert torch.unique(folds[identity == ident]).numel() == 1
    counts = torch.bincount(folds, minlength=5)
    assert int(counts.max() - counts.min()) <= int(sizes.max())  # greedy largest-first bound
    assert torch.equal(folds, identity_folds(identity, 5, seed=3))
    assert not torch.equal(folds, identity_folds(identity, 5, seed=4))


@pytest.mark.parametrize(
    "identity, n_folds, words",
    [
        (torch.zeros(10, dtype=torch.long), 2, "at least 2 identities"),
        (torch.tensor([0, 0, 1, 1, 2, 2]), 5, "3 identities are fewer than n_folds=5"),
        (torch.tensor([0, 1, 2]), 5, "3 samples are fewer than n_folds=5"),
        (torch.tensor([0, 1, 2, 3]), 1, "n_folds must be an integer of at least 2"),
    ],
)
def test_identity_folds_errors(identity, n_folds, words):
    with pytest.raises(AnalysisError, match=words):
        identity_folds(identity, n_folds)


# --------------------------------------------------------------------------- ridge heads vs brute force


def test_fit_heads_is_ridge_with_the_gcv_penalty():
    """Heads from fold statistics equal explicit centred ridge at the λ minimising explicit GCV."""
    rng = np.random.default_rng(3)
    n, d = 90, 6
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    y = np.stack([x @ rng.normal(size=d) + rng.normal(size=n) * s for s in (0.3, 3.0, 30.0)], 1)
    folds = torch.tensor(rng.integers(0, 3, n))
    stats = fold_statistics(torch.tensor(x), torch.tensor(y), folds, 3).training_sets()
    heads = fit_ridge_heads(stats)
    for s in range(4):  # training sets of folds 0..2, then all data
        rows = np.arange(n) if s == 3 else np.flatnonzero(folds.numpy() != s)
        xs, ys = x[rows], y[rows]
        xc = xs - xs.mean(0)
        scale = np.trace(xc.T @ xc) / d
        for t in range(y.shape[1]):
            yc = ys[:, t] - ys[:, t].mean()
            best = None
            for lam in scale * 10.0 ** PENALTY_EXPONENTS.numpy():
                hat = xc @ np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T)
                residual = yc - hat @ yc
                dof = 1 + np.trace(hat)
                gcv = len(rows) * (residual @ residual) / (len(rows) - dof) ** 2
                if best is None or gcv < best[0]:
                    best = (gcv, lam)
            lam = best[1]
            w = np.linalg.solve(xc.T @ xc + lam * np.eye(d), xc.T @ yc)
            b = ys[:, t].mean() - xs.mean(0) @ w
            assert float(heads.penalty[s, t]) == pytest.approx(lam, rel=1e-9)
            np.testing.assert_allclose(heads.weight[s, :, t].numpy(), w, rtol=1e-7, atol=1e-10)
            assert float(heads.bias[s, t]) == pytest.approx(b, rel=1e-7, abs=1e-9)
    # the noisier the target, the larger the penalty GCV picks (on all data)
    assert heads.penalty[3, 0] <= heads.penalty[3, 1] <= heads.penalty[3, 2]


# --------------------------------------------------------------------------- planted signals


MU = 0.75  # binary: z₀ = μ·(2a−1) + N(0,1)
BETA = 1.5  # continuous: z₁ = β·a + N(0,1), a ~ N(0,1)
CATEGORICAL_SHIFT = 0.6  # categorical with 4 classes: z_{2+c} += m for class c
CLASSES = ("w", "x", "y", "z")


def planted_world(seed: int, dim: int, n_identities: int = 2000, per_identity: int = 10):
    """Signals drawn per image (not per identity), each on its own coordinates, plus N(0, I_D) noise."""
    g = torch.Generator().manual_seed(seed)
    n = n_identities * per_identity
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    binary = torch.randint(0, 2, (n,), generator=g)
    z[:, 0] += MU * (2 * binary - 1)
    value = torch.randn(n, generator=g, dtype=torch.float64)
    z[:, 1] += BETA * value
    category = torch.randint(0, 4, (n,), generator=g)
    z[torch.arange(n), 2 + category] += CATEGORICAL_SHIFT
    schema = AttributeSchema(
        [Attribute("smile", "binary"), Attribute("yaw", "continuous"), Attribute("hair", "categorical", classes=CLASSES)]
    )
    labels = {"smile": binary, "yaw": value.float(), "hair": category}
    identity = torch.arange(n) // per_identity
    return z.float(), identity, labels, schema


def bayes_binary() -> float:
    # Along the signal coordinate the classes are N(±μ, 1); the Bayes score is that coordinate,
    # and P(X₊ > X₋) with X₊ − X₋ ~ N(2μ, 2) is Φ(2μ/√2) = Φ(√2·μ).
    return Phi(math.sqrt(2.0) * MU)


def bayes_continuous() -> float:
    # E[a | z] = β z₁ / (1 + β²) explains β²/(1 + β²) of Var(a) = 1.
    return BETA**2 / (1.0 + BETA**2)


def bayes_categorical(n: int = 400_000, seed: int = 123) -> float:
    """Macro one-vs-rest AUROC of the true posterior p(c | z) ∝ exp(m·z_{2+c}), by Monte Carlo."""
    g = torch.Generator().manual_seed(seed)
    category = torch.randint(0, 4, (n,), generator=g)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    z[torch.arange(n), category] += CATEGORICAL_SHIFT
    posterior = torch.softmax(CATEGORICAL_SHIFT * z, 1).numpy()
    return float(np.mean([roc_auc_score(category.numpy() == c, posterior[:, c]) for c in range(4)]))


def test_planted_signals_reach_bayes_at_d64():
    """N = 20,000 (2,000 identities × 10), D = 64: within 0.01 of Bayes; intervals cover Bayes in most seeds."""
    bayes = {"smile": bayes_binary(), "yaw": bayes_continuous(), "hair": bayes_categorical()}
    covered = {"smile": 0, "yaw": 0}
    for seed in range(3):
        report = analyze_embeddings(*planted_world(seed, 64), n_bootstrap=200, seed=seed)
        assert report.n_samples == 20_000 and report.n_identities == 2000 and report.n_folds == 5
        assert [a.name for a in report.leakage] == ["smile", "yaw", "hair"]
        for name, target in bayes.items():
            item = report[name]
            assert item.reason is None
            assert abs(item.value - target) < 0.01, (name, item.value, target)
            assert item.low < item.value < item.high
            if name in covered:
                covered[name] += item.low <= target <= item.high
        assert report["smile"].metric == "auroc" and report["yaw"].metric == "r2"
        assert report["smile"].leakage == pytest.approx(2 * report["smile"].value - 1)
        assert report["smile"].leakage_low == pytest.approx(2 * report["smile"].low - 1)
        assert report["yaw"].leakage == pytest.approx(report["yaw"].value)
        # balanced accuracy of the midpoint threshold: Bayes accuracy is Φ(μ) for balanced classes
        assert report["smile"].extra["balanced_accuracy"] == pytest.approx(Phi(MU), abs=0.015)
        assert 0.25 < report["hair"].extra["balanced_accuracy"] < 1.0
    # the linear probe is Bayes-optimal for these two, so a 95% interval should cover Bayes
    assert covered["smile"] >= 2 and covered["yaw"] >= 2, covered

    directions = report.tensors["probe_directions"]
    assert directions.dtype == torch.float32 and directions.shape == (1 + 1 + 4, 64)
    assert report.tensors["probe_bias"].shape == (6,)
    smile = directions[0] / directions[0].norm()
    assert float(smile[0]) > 0.99  # the head found the planted direction


def test_planted_signals_at_d512_fall_short_by_the_estimation_error():
    """D = 512: a fitted probe falls short of Bayes by its estimation error, which we derive.

    Binary. Regress y ∈ {0, 1} on x with x₀ = μ·s + ε, s = 2y − 1, other coordinates pure
    noise. The population coefficient on x₀ is a = cov(x₀, y)/var(x₀) = μ / (2(1 + μ²)), the
    residual variance σ² = ¼ − μ²/(4(1 + μ²)) = 1 / (4(1 + μ²)). With n training samples
    each of the ≈D noise coordinates gets an estimation error of variance σ²/n, so the
    fitted direction is a·e₀ + δ with ρ = |δ|²/a² ≈ D(1 + μ²)/(n μ²). Along it the class
    means are 2μa apart in units of √(a² + |δ|²), i.e. the separation shrinks from 2μ to
    2μ/√(1 + ρ), and AUROC = Φ(√2 μ/√(1 + ρ)) ≈ Φ(√2 μ) − φ(√2 μ)·√2 μ·ρ/2. (For μ = 0.5
    this is 0.55·D/n, the "0.5·D/N" rule of thumb.)

    Continuous. OLS with D regressors has expected out-of-sample error σ²(1 + D/(n − D − 1)),
    so R² falls short by (1 − R²*)·D/(n − D − 1).

    Ridge with GCV can only do better than OLS on average, so these are upper bounds on the
    shortfall to first order; we accept the predicted value ± 0.01 (three standard errors at
    N = 20,000) and check the shortfall is really there.
    """
    dim = 512
    n_train = 20_000 * 4 / 5
    rho = dim * (1 + MU**2) / (n_train * MU**2)
    binary_shortfall = phi(math.sqrt(2) * MU) * math.sqrt(2) * MU * rho / 2
    continuous_shortfall = (1 - bayes_continuous()) * dim / (n_train - dim - 1)
    report = analyze_embeddings(*planted_world(11, dim), n_bootstrap=50)
    smile, yaw = report["smile"], report["yaw"]
    assert abs(smile.value - (bayes_binary() - binary_shortfall)) < 0.01, (smile.value, bayes_binary(), binary_shortfall)
    assert abs(yaw.value - (bayes_continuous() - continuous_shortfall)) < 0.01, (yaw.value, continuous_shortfall)
    assert smile.value < bayes_binary() and yaw.value < bayes_continuous()
    # the categorical one is worse than at D = 64 but far above chance
    assert 0.62 < report["hair"].value < bayes_categorical()


# --------------------------------------------------------------------------- identity trap


def identity_trap_world(seed: int):
    """60 identities × 30 images in D = 64: large identity clusters, tiny within-identity noise,
    and a binary attribute drawn per identity independently of the cluster centres."""
    g = torch.Generator().manual_seed(seed)
    n_identities, per_identity, dim = 60, 30, 64
    centres = 5.0 * torch.randn(n_identities, dim, generator=g)
    identity = torch.arange(n_identities).repeat_interleave(per_identity)
    z = centres[identity] + 0.3 * torch.randn(n_identities * per_identity, dim, generator=g)
    trait = torch.randint(0, 2, (n_identities,), generator=g)[identity]
    schema = AttributeSchema([Attribute("trait", "binary", group="identity")])
    image_folds = torch.randperm(identity.numel(), generator=g) % 5
    return z, identity, {"trait": trait}, schema, image_folds


@pytest.mark.parametrize("seed", [0, 2])
def test_identity_trap(seed):
    z, identity, labels, schema, image_folds = identity_trap_world(seed)
    honest = analyze_embeddings(z, identity, labels, schema)["trait"]
    assert honest.low <= 0.5 <= honest.high
    assert honest.leakage_low == 0.0 and honest.value < 0.7
    leaky_report = analyze_embeddings(z, identity, labels, schema, folds=image_folds)
    leaky = leaky_report["trait"]
    assert leaky.value > 0.9 and leaky.low > 0.9  # the identity split prevents this
    assert any("both sides of a split" in w for w in leaky_report.warnings)


# --------------------------------------------------------------------------- bad input


def small_world(n_identities: int = 20, per_identity: int = 5, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = n_identities * per_identity
    identity = torch.arange(n) // per_identity
    z = torch.randn(n, dim, generator=g)
    labels = {
        "glasses": torch.randint(0, 2, (n,), generator=g),
        "hair": torch.randint(0, 3, (n,), generator=g),
        "age": torch.randn(n, generator=g),
    }
    z[:, 0] += 2.0 * labels["glasses"]
    z[:, 1] += labels["age"]
    schema = AttributeSchema(
        [Attribute("glasses", "binary"), Attribute("hair", "categorical", classes=("dark", "fair", "red")), Attribute("age", "continuous")]
    )
    return z, identity, labels, schema


def test_nan_embeddings_are_reported_with_the_row_count():
    z, identity, labels, schema = small_world()
    z[3, 2] = math.nan
    z[7, 0] = math.inf
    with pytest.raises(AnalysisError, match=r"embeddings contain NaN or infinity in 2 of 100 rows — did the training diverge\?"):
        analyze_embeddings(z, identity, labels, schema)


def test_shape_errors_name_the_tensor():
    z, identity, labels, schema = small_world()
    with pytest.raises(AnalysisError, match="identity has 99 entries but embeddings have 100 rows"):
        analyze_embeddings(z, identity[:99], labels, schema)
    with pytest.raises(AnalysisError, match=r"embeddings must be 2-D"):
        analyze_embeddings(z[:, 0], identity, labels, schema)
    with pytest.raises(AnalysisError, match="identity must be an integer tensor"):
        analyze_embeddings(z, identity.float(), labels, schema)
    with pytest.raises(AnalysisError, match="folds has 50 entries but embeddings have 100 rows"):
        analyze_embeddings(z, identity, labels, schema, folds=torch.zeros(50, dtype=torch.long))
    bad = dict(labels, age=labels["age"][:90])
    with pytest.raises(SchemaError, match="'age' has 90 labels for 100 samples"):
        analyze_embeddings(z, identity, bad, schema)
    with pytest.raises(SchemaError, match="no labels for attribute 'hair'"):
        analyze_embeddings(z, identity, {k: v for k, v in labels.items() if k != "hair"}, schema)
    with pytest.raises(SchemaError, match="'hair': label 3 out of range"):
        analyze_embeddings(z, identity, dict(labels, hair=labels["hair"] + 1), schema)


def test_identity_and_fold_count_errors():
    z, identity, labels, schema = small_world()
    with pytest.raises(AnalysisError, match="at least 2 identities"):
        analyze_embeddings(z, torch.zeros(100, dtype=torch.long), labels, schema)
    with pytest.raises(AnalysisError, match="identities are fewer than n_folds"):
        analyze_embeddings(z, identity % 3, labels, schema, n_folds=5)
    tiny = {k: v[:3] for k, v in labels.items()}
    with pytest.raises(AnalysisError, match="3 samples are fewer than n_folds=5"):
        analyze_embeddings(z[:3], identity[:3], tiny, schema)


def test_one_class_and_unlabelled_attributes_are_nan_with_a_reason():
    z, identity, labels, schema = small_world()
    schema = AttributeSchema(list(schema) + [Attribute("beard", "binary"), Attribute("tattoo", "binary"), Attribute("height", "continuous")])
    labels = dict(labels)
    labels["beard"] = torch.zeros(100, dtype=torch.long)  # only "no"
    labels["beard"][:10] = -1
    labels["tattoo"] = torch.full((100,), -1, dtype=torch.long)  # all missing
    labels["height"] = torch.full((100,), 1.75)  # constant
    report = analyze_embeddings(z, identity, labels, schema, n_bootstrap=20)
    beard = report["beard"]
    assert math.isnan(beard.value) and math.isnan(beard.low) and math.isnan(beard.leakage)
    assert beard.reason == "only one class ('no') among labelled samples; AUROC undefined"
    assert beard.n == 90 and math.isnan(beard.extra["balanced_accuracy"])
    assert "all 100 labels missing" in report["tattoo"].reason and report["tattoo"].n == 0
    assert "all labelled values are equal" in report["height"].reason
    for name in ("beard", "tattoo", "height"):
        assert any(w.startswith(f"attribute {name!r}") for w in report.warnings)
    # the other attributes are unaffected
    assert report["glasses"].value > 0.8 and report["glasses"].reason is None
    assert not math.isnan(report["age"].value)
    # undefined heads are NaN rows of probe_directions (rows: glasses 1, hair 3, age 1, beard, tattoo, height)
    directions = report.tensors["probe_directions"]
    assert directions.shape == (8, 8)
    assert torch.isnan(directions[5:]).all() and not torch.isnan(directions[:5]).any()


def test_training_part_with_one_class_is_nan_with_a_reason():
    z, identity, labels, schema = small_world()
    rare = torch.zeros(100, dtype=torch.long)
    rare[identity == 4] = 1  # all positives belong to one identity, hence one fold
    schema = AttributeSchema(list(schema) + [Attribute("rare", "binary")])
    report = analyze_embeddings(z, identity, dict(labels, rare=rare), schema, n_bootstrap=10)
    fold = int(identity_folds(identity, 5)[identity == 4][0])
    assert report["rare"].reason == (
        f"the training part of fold {fold} has only one class ('no'); its head and the held-out AUROC are undefined"
    )
    assert math.isnan(report["rare"].value)


def test_missing_labels_are_excluded():
    """An attribute with missing labels gives exactly what its labelled subset alone gives."""
    z, identity, labels, schema = small_world(n_identities=40, per_identity=6, dim=6)
    n = z.shape[0]
    g = torch.Generator().manual_seed(5)
    for fraction in (0.2, 0.7):  # the subtracting and the direct path of the masked statistics
        missing = torch.rand(n, generator=g) < fraction
        missing[torch.arange(0, n, 6)] = False  # every identity keeps a labelled sample
        masked = {
            "glasses": torch.where(missing, -1, labels["glasses"]),
            "hair": torch.where(missing, -1, labels["hair"]),
            "age": torch.where(missing, math.nan, labels["age"]),
        }
        folds = identity_folds(identity, 5, seed=0)
        full = analyze_embeddings(z, identity, masked, schema, n_bootstrap=100, folds=folds)
        keep = ~missing
        subset = analyze_embeddings(
            z[keep], identity[keep], {k: v[keep] for k, v in labels.items()}, schema, n_bootstrap=100, folds=folds[keep]
        )
        for name in schema.names:
            a, b = full[name], subset[name]
            assert a.n == b.n == int(keep.sum())
            for key in ("value", "low", "high", "leakage"):
                assert getattr(a, key) == pytest.approx(getattr(b, key), abs=1e-9), (name, key)
            for key in b.extra:
                assert a.extra[key] == pytest.approx(b.extra[key], abs=1e-9)
        torch.testing.assert_close(full.tensors["probe_directions"], subset.tensors["probe_directions"], rtol=1e-4, atol=1e-5)


def test_mixed_complete_and_missing_attributes_share_nothing_wrongly():
    """Complete attributes share one Gram matrix; their numbers do not depend on other attributes' gaps."""
    z, identity, labels, schema = small_world()
    alone = analyze_embeddings(z, identity, {"glasses": labels["glasses"]}, schema.select(["glasses"]), n_bootstrap=30)
    gappy = dict(labels, age=torch.where(torch.arange(100) % 3 == 0, math.nan, labels["age"]))
    together = analyze_embeddings(z, identity, gappy, schema, n_bootstrap=30)
    assert together["glasses"].value == pytest.approx(alone["glasses"].value, abs=1e-12)
    assert together["glasses"].low == pytest.approx(alone["glasses"].low, abs=1e-12)
    assert together["age"].n == 66


def test_absent_categorical_class_warns_and_averages_the_others():
    z, identity, labels, schema = small_world()
    hair = labels["hair"].clamp(max=1)  # no "red"
    report = analyze_embeddings(z, identity, dict(labels, hair=hair), schema, n_bootstrap=10)
    assert not math.isnan(report["hair"].value)
    assert any("'red'" in w and "other 2 classes" in w for w in report.warnings)


def test_no_bootstrap_gives_values_without_intervals_and_runs_are_deterministic():
    z, identity, labels, schema = small_world()
    report = analyze_embeddings(z, identity, labels, schema, n_bootstrap=0)
    assert not math.isnan(report["glasses"].value) and math.isnan(report["glasses"].low)
    one = analyze_embeddings(z, identity, labels, schema, seed=7)
    two = analyze_embeddings(z, identity, labels, schema, seed=7)
    assert [a.to_record() for a in one.leakage] == [a.to_record() for a in two.leakage]


def test_embeddings_that_require_grad_and_float64_are_accepted():
    z, identity, labels, schema = small_world()
    a = analyze_embeddings(z.double().requires_grad_(), identity, labels, schema, n_bootstrap=10)
    b = analyze_embeddings(z, identity, labels, schema, n_bootstrap=10)
    assert a["glasses"].value == pytest.approx(b["glasses"].value, abs=1e-6)


def test_epoch_sized_pass_with_mixed_kinds_and_missing_labels():
    """N = 2,000, D = 128, 19 attributes (a third with missing labels), 5 folds, 200 replicates.

    Every attribute carries a planted signal, so every one must come out leaked. (Its speed is
    measured in benchmarks/analysis_speed.py, not here.)
    """
    z, identity, labels, schema = mixed_world(2000, 128)
    report = analyze_embeddings(z, identity, labels, schema)
    assert all(a.reason is None for a in report.leakage)
    assert all(a.leakage_low > 0.05 for a in report.leakage), [(a.name, a.leakage_low) for a in report.leakage]


def test_categorical_class_seen_in_one_fold_only_warns():
    z, identity, labels, schema = small_world()
    hair = labels["hair"].clamp(max=1)
    hair[identity == 4] = 2  # "red" only in identity 4
    # five samples of "red": reported only with the minimum class size off (by default too few for a stable AUROC)
    report = analyze_embeddings(z, identity, dict(labels, hair=hair), schema, n_bootstrap=10, min_class_samples=0)
    fold = int(identity_folds(identity, 5)[identity == 4][0])
    assert not math.isnan(report["hair"].value)
    assert any(f"'red' occur only in fold {fold}" in w for w in report.warnings), report.warnings
