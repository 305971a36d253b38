"""Demographic differentials (frx_plugin.differentials) against brute force, a planted world and the bootstrap's definition."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.differentials import attribute_groups, demographic_differentials, group_score_curves
from frx_plugin.model import ModelAdapter, embed_probe_set
from frx_plugin.models import ResidualFaceNet
from frx_plugin.randomness import poisson_bootstrap_weights
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.verification import verification

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SCHEMA = AttributeSchema([
    Attribute("sex", "binary", classes=("f", "m"), group="identity"),
    Attribute("hair", "categorical", classes=("dark", "fair", "red"), group="identity"),
    Attribute("lighting", "categorical", classes=("dim", "bright"), group="nuisance"),
    Attribute("age", "continuous", group="identity"),
])


def planted_world(n_identities: int, images: int, sigma=(0.9, 1.1), dim: int = 32, seed: int = 0):
    """Unit identity centres plus N(0, σ²/D) noise per image, σ set by a binary identity attribute ``sex``.

    Also a categorical identity attribute, a nuisance one and a continuous one, with missing labels.
    Returns float64 embeddings, identities and the labels (torch, CPU).
    """
    rng = np.random.default_rng(seed)
    identity = np.repeat(np.arange(n_identities), images)
    centres = rng.normal(size=(n_identities, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sex = np.arange(n_identities) % 2
    scale = np.asarray(sigma)[sex][identity] / math.sqrt(dim)
    z = centres[identity] + rng.normal(size=(len(identity), dim)) * scale[:, None]
    hair = rng.integers(0, 3, n_identities)[identity]
    lighting = rng.integers(0, 2, len(identity))
    age = (rng.uniform(18, 80, n_identities)[identity] + rng.normal(size=len(identity))).astype(np.float32)
    hair[5::17], lighting[3::11], age[7::13] = -1, -1, np.nan
    labels = {"sex": torch.tensor(sex[identity]), "hair": torch.tensor(hair), "lighting": torch.tensor(lighting),
              "age": torch.tensor(age)}
    return torch.tensor(z), torch.tensor(identity), labels


# --------------------------------------------------------------------------- the independent reference


def reference_groups(labels, schema, bands=4):
    """Group codes per attribute (-1 missing) in numpy: classes, or quantile bands [q_b, q_b+1)."""
    out = {}
    for attribute in schema:
        values = labels[attribute.name].numpy()
        if attribute.discrete:
            out[attribute.name] = values.astype(np.int64)
            continue
        values = values.astype(np.float64)
        known = ~np.isnan(values)
        edges = np.unique(np.quantile(values[known], np.linspace(0, 1, bands + 1)))
        codes = np.full(len(values), -1)
        codes[known] = np.searchsorted(edges[1:-1], values[known], side="right")
        out[attribute.name] = codes
    return out


def all_pairs(z, identity):
    """Every pair i < j by brute force: scores, first, second, same identity."""
    z = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    i, j = np.triu_indices(len(z), 1)
    scores = (z @ z.T)[i, j]
    return scores, i, j, identity.numpy()[i] == identity.numpy()[j]


def reference_tau(scores, same, fmr):
    impostor = np.sort(scores[~same])[::-1]
    return float(impostor[int(math.floor(fmr * len(impostor)))])


def reference_rates(scores, genuine, impostor, codes_i, codes_j, n_groups, tau):
    """Per group (FNMR, FMR) among the pairs flagged ``genuine`` / ``impostor`` with both images in the group."""
    fnmr, fmr = [], []
    for g in range(n_groups):
        both = (codes_i == g) & (codes_j == g)
        fnmr.append(np.mean(scores[both & genuine] <= tau) if (both & genuine).any() else math.nan)
        fmr.append(np.mean(scores[both & impostor] > tau) if (both & impostor).any() else math.nan)
    return fnmr, fmr


def reference_summaries(fnmr, fmr, alpha=0.5):
    """max/min ratios, FDR and GARBE of lists of rates, by the definitions' double sums."""

    def gini(x):
        n = len(x)
        total = sum(abs(a - b) for a in x for b in x)
        return n / (n - 1) * total / (2 * n * n * np.mean(x))

    def spread(x):
        return max(abs(a - b) for a in x for b in x)

    return {"fnmr_ratio": max(fnmr) / min(fnmr), "fmr_ratio": max(fmr) / min(fmr),
            "fdr": 1 - (alpha * spread(fmr) + (1 - alpha) * spread(fnmr)), "garbe": alpha * gini(fmr) + (1 - alpha) * gini(fnmr)}


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_point_estimates_equal_brute_force(alpha):
    z, identity, labels = planted_world(60, 4)
    fmr = 1e-2
    scores, i, j, same = all_pairs(z, identity)
    tau = reference_tau(scores, same, fmr)
    result = demographic_differentials(z, identity, labels, SCHEMA, verification(z, identity, fmr), n_bootstrap=20,
                                       min_pairs=10, min_identities=3, alpha=alpha)
    assert result.tau == pytest.approx(tau, abs=1e-12)
    codes = reference_groups(labels, SCHEMA)
    for item in result.attributes:
        c = codes[item.name]
        fnmr, fmr_g = reference_rates(scores, same, ~same, c[i], c[j], len(item.groups), tau)
        for g, group in enumerate(item.groups):
            both = (c[i] == g) & (c[j] == g)
            assert group.images == int((c == g).sum())
            assert group.genuine_pairs == int((both & same).sum()) and group.impostor_pairs == int((both & ~same).sum())
            assert group.fnmr.value == pytest.approx(fnmr[g], abs=1e-12), (item.name, g)
            assert group.fmr.value == pytest.approx(fmr_g[g], abs=1e-12), (item.name, g)
        for name, value in reference_summaries(fnmr, fmr_g, alpha).items():
            assert item.summary(name).value == pytest.approx(value, abs=1e-12), (item.name, name)
    assert len(result.scalars()) == 4 * len(SCHEMA)
    assert set(result.scalars()) >= {"frx/differential/sex/fnmr_ratio", "frx/differential/age/garbe"}


def test_group_score_curves_equal_brute_force():
    z, identity, labels = planted_world(60, 4)
    scores, i, j, same = all_pairs(z, identity)
    for name in ("hair", "age"):
        curves = group_score_curves(z, identity, labels[name], SCHEMA[name], thresholds=41)
        c = reference_groups(labels, SCHEMA)[name]
        result = demographic_differentials(z, identity, labels, SCHEMA, 0.3, fmr=0.01, n_bootstrap=0, min_pairs=1, min_identities=1)
        assert curves.genuine_pairs.tolist() == [g.genuine_pairs for g in result[name].groups]
        assert curves.impostor_pairs.tolist() == [g.impostor_pairs for g in result[name].groups]
        for g in range(len(curves.groups)):
            both = (c[i] == g) & (c[j] == g)
            for t in (3, 20, 30, 38):
                threshold = float(curves.thresholds[t])
                assert curves.fnmr()[g, t] == pytest.approx(np.mean(scores[both & same] <= threshold), abs=1e-12)
                assert curves.fmr()[g, t] == pytest.approx(np.mean(scores[both & ~same] > threshold), abs=1e-12)
    assert curves.to_record()["attribute"] == "age"


# --------------------------------------------------------------------------- a planted world


def monte_carlo_fnmr(sigma: float, tau: float, dim: int = 32, n: int = 200_000, seed: int = 1) -> float:
    """P(cos(c + e₁, c + e₂) ≤ τ), e ~ N(0, σ²/D): the genuine pairs of the planted world (c fixed by symmetry)."""
    rng = np.random.default_rng(seed)
    centre = np.zeros(dim)
    centre[0] = 1.0
    x = centre + rng.normal(size=(n, dim)) * sigma / math.sqrt(dim)
    y = centre + rng.normal(size=(n, dim)) * sigma / math.sqrt(dim)
    cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    return float(np.mean(cos <= tau))


def test_planted_fnmr_ratio_is_recovered_within_the_interval():
    sigma = (0.9, 1.1)
    z, identity, labels = planted_world(400, 4, sigma=sigma, seed=3)
    result = demographic_differentials(z, identity, labels, SCHEMA, verification(z, identity, 1e-2), n_bootstrap=200)
    sex = result["sex"]
    truth = [monte_carlo_fnmr(s, result.tau) for s in sigma]
    assert truth[1] > 3 * truth[0] > 0  # a planted differential, large against the sampling error
    for group, rate in zip(sex.groups, truth):
        assert group.fnmr.low <= rate <= group.fnmr.high, (group.label, rate, group.fnmr)
    ratio = truth[1] / truth[0]
    assert sex.fnmr_ratio.low <= ratio <= sex.fnmr_ratio.high, (ratio, sex.fnmr_ratio)
    assert sex.garbe.value > result["lighting"].garbe.value  # the nuisance attribute carries no planted differential


# --------------------------------------------------------------------------- the bootstrap


def test_intervals_hold_the_point_and_shrink_with_more_identities():
    widths = []
    for n_identities in (100, 800):
        z, identity, labels = planted_world(n_identities, 4, seed=5)
        result = demographic_differentials(z, identity, labels, SCHEMA, verification(z, identity, 1e-2), n_bootstrap=100)
        sex = result["sex"]
        for estimate in [g.fnmr for g in sex.groups] + [g.fmr for g in sex.groups] + [sex.fnmr_ratio, sex.fdr, sex.garbe]:
            assert estimate.low <= estimate.value <= estimate.high and estimate.undefined == 0
        widths.append([g.fnmr.high - g.fnmr.low for g in sex.groups] + [sex.fnmr_ratio.high - sex.fnmr_ratio.low])
    assert all(wide > 1.8 * narrow for wide, narrow in zip(*widths)), widths  # √8 ≈ 2.8 expected


def test_one_replicate_equals_the_resampled_probe_set():
    """Replicate r against the probe set rebuilt with m_k copies of identity k (pairs across copies of a person left out)."""
    z, identity, labels = planted_world(40, 4, seed=7)
    fmr, seed, r = 0.02, 11, 3
    result = demographic_differentials(z, identity, labels, SCHEMA, verification(z, identity, fmr), n_bootstrap=8, seed=seed,
                                       min_pairs=5, min_identities=2)
    multiplicity = poisson_bootstrap_weights(identity, seed, 8)[r].long().numpy()
    original = np.repeat(np.arange(len(identity)), multiplicity)  # every sample once per copy of its identity
    copy = np.concatenate([np.arange(m) for m in multiplicity])
    i, j = np.triu_indices(len(original), 1)
    zn = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    scores = (zn @ zn.T)[original[i], original[j]]
    person = identity.numpy()[original]
    genuine = (person[i] == person[j]) & (copy[i] == copy[j])
    impostor = person[i] != person[j]
    codes = reference_groups(labels, SCHEMA)
    for item in result.attributes:
        c = codes[item.name][original]
        fnmr, fmr_g = reference_rates(scores, genuine, impostor, c[i], c[j], len(item.groups), result.tau)
        np.testing.assert_allclose(item.replicates["fnmr"][r].numpy(), fnmr, rtol=0, atol=1e-12)
        np.testing.assert_allclose(item.replicates["fmr"][r].numpy(), fmr_g, rtol=0, atol=1e-12)
        measured = [g for g, group in enumerate(item.groups) if group.fnmr is not None and group.fmr is not None]
        assert len(measured) == len(item.groups)
        for name, value in reference_summaries(fnmr, fmr_g).items():
            assert float(item.replicates[name][r]) == pytest.approx(value, abs=1e-12), (item.name, name)


# --------------------------------------------------------------------------- too small, bands, missing


def test_too_small_groups_are_flagged_and_left_out_of_the_summaries():
    z, identity, labels = planted_world(60, 5, seed=2)
    per_identity = np.zeros(60, dtype=np.int64)
    per_identity[52:58], per_identity[58], per_identity[59] = 1, 2, -1  # rare: 6 people; lonely: 1; one unlabelled
    schema = AttributeSchema([Attribute("rarity", "categorical", classes=("common", "rare", "lonely", "empty"))])
    labels = {"rarity": torch.tensor(per_identity)[identity]}
    result = demographic_differentials(z, identity, labels, schema, verification(z, identity, 1e-3), n_bootstrap=50,
                                       min_pairs=50, min_identities=5)
    common, rare, lonely, empty = result["rarity"].groups
    assert common.fnmr is not None and common.fmr is not None and common.fnmr_too_small is common.fmr_too_small is None
    assert rare.fnmr is not None and rare.genuine_pairs == 60
    assert rare.fmr is None and rare.impostor_pairs == 375 and "1/FMR = 1000" in rare.fmr_too_small
    assert lonely.fnmr is None and "10 genuine pairs" in lonely.fnmr_too_small
    assert lonely.impostor_pairs == 0 and lonely.fmr is None and lonely.fmr_too_small  # no impostors: no rate, not a 0
    assert empty.images == 0 and empty.fnmr is None and empty.fmr is None
    item = result["rarity"]
    assert item.fnmr_ratio.value == pytest.approx(max(common.fnmr.value, rare.fnmr.value) / min(common.fnmr.value, rare.fnmr.value))
    record = item.to_record()
    assert record["groups"][2]["fnmr"] is None and record["groups"][2]["fmr"] is None
    assert record["fmr_ratio"]["value"] is None and record["fdr"]["value"] is None and record["garbe"]["value"] is None
    assert set(result.scalars()) == {"frx/differential/rarity/fnmr_ratio"}
    json.dumps(result.to_record(), allow_nan=False)  # plain JSON: no NaN, no infinity


def test_continuous_bands_and_missing_labels():
    values = torch.tensor([float(v) for v in range(40)] + [math.nan] * 5, dtype=torch.float32)
    codes, names, spans = attribute_groups(Attribute("age", "continuous"), values)
    edges = np.quantile(np.arange(40.0), [0, 0.25, 0.5, 0.75, 1])
    assert spans == [(edges[b], edges[b + 1]) for b in range(4)]
    assert names == ["[0, 9.75)", "[9.75, 19.5)", "[19.5, 29.25)", "[29.25, 39]"]
    assert (codes[40:] == -1).all() and torch.bincount(codes[:40]).tolist() == [10, 10, 10, 10]
    for b, (low, high) in enumerate(spans):
        inside = (values >= low) & ((values < high) if b < 3 else (values <= high))
        assert torch.equal(codes == b, inside)
    two_values = torch.tensor([0.0] * 6 + [1.0] * 6)  # tied quantiles merge bands
    assert attribute_groups(Attribute("x", "continuous"), two_values, bands=4)[1] == ["[0, 0.5)", "[0.5, 1]"]
    assert len(attribute_groups(Attribute("x", "continuous"), values, bands=3)[1]) == 3
    z, identity, labels = planted_world(60, 4)
    result = demographic_differentials(z, identity, labels, SCHEMA, 0.4, fmr=0.01, n_bootstrap=0, min_pairs=1, min_identities=1)
    for name in ("hair", "lighting", "age"):
        labelled = int((~SCHEMA[name].missing_mask(labels[name])).sum())
        assert 0 < sum(g.images for g in result[name].groups) == labelled < len(identity)  # missing labels in no group
    assert [g.low for g in result["age"].groups][1:] == [g.high for g in result["age"].groups][:-1]


# --------------------------------------------------------------------------- devices


def test_differentials_make_no_tensor_on_the_default_device():
    z, identity, labels = planted_world(50, 4)
    ver = verification(z.float(), identity, 1e-2)
    def call():
        return demographic_differentials(z.float(), identity, labels, SCHEMA, ver, n_bootstrap=16, min_pairs=5)
    with torch.device("meta"):
        on_meta = call()
    assert on_meta.to_record() == call().to_record()
    def curves():
        return group_score_curves(z.float(), identity, labels["hair"], SCHEMA["hair"]).to_record()
    with torch.device("meta"):
        curves_on_meta = curves()
    assert curves_on_meta == curves()


@needs_cuda
def test_cuda_differentials_equal_the_cpu():
    z, identity, labels = planted_world(200, 4)
    cpu = demographic_differentials(z, identity, labels, SCHEMA, verification(z, identity, 1e-2), n_bootstrap=50).to_record()
    zc = z.cuda()
    cuda = demographic_differentials(zc, identity, labels, SCHEMA, verification(zc, identity, 1e-2), n_bootstrap=50).to_record()
    assert _close(cuda, cpu)


def _close(one, two, tol=1e-9):
    """Two records equal but for numbers within ``tol``."""
    if isinstance(one, dict):
        assert one.keys() == two.keys()
        return all(_close(one[k], two[k], tol) for k in one)
    if isinstance(one, list):
        assert len(one) == len(two)
        return all(_close(a, b, tol) for a, b in zip(one, two))
    if isinstance(one, float):
        assert one == pytest.approx(two, abs=tol)
        return True
    assert one == two
    return True


# --------------------------------------------------------------------------- the synthetic world


def test_synthetic_world_smoke():
    probe = SyntheticProbeSet(n_identities=250, images_per_identity=5, seed=0, size=32)
    torch.manual_seed(0)
    model = ResidualFaceNet(embedding_dim=32, widths=(8, 16, 16, 32), input_size=32).eval()
    z = embed_probe_set(ModelAdapter(model, transform="unit"), probe)
    result = demographic_differentials(z, probe.identity, probe.labels, probe.schema, verification(z, probe.identity, 1e-2))
    assert [a.name for a in result.attributes] == list(probe.schema.names)
    scalars = result.scalars()
    for item in result.attributes:
        measured = [g for g in item.groups if g.fnmr is not None and g.fmr is not None]
        if len(measured) == len(item.groups) >= 2:  # well populated: every summary finite, with an interval
            for name in ("fnmr_ratio", "fmr_ratio", "fdr", "garbe"):
                estimate = item.summary(name)
                assert math.isfinite(estimate.value) and estimate.low <= estimate.high, (item.name, name)
                assert f"frx/differential/{item.name}/{name}" in scalars
    assert len(scalars) >= 4 * 10
    assert result.most_unequal() in probe.schema.names
    json.dumps(result.to_record(), allow_nan=False)


def test_the_verification_pass_scores_serve_the_differentials_and_the_errors_unchanged():
    """scored_verification keeps every genuine score and every impostor pair above its τ (brute force), and the
    differentials and decision errors computed from them equal those that score every pair themselves."""
    from frx_plugin.verification import decision_errors, scored_verification

    z, identity, labels = planted_world(80, 4)
    fmr = 1e-2
    result, scored = scored_verification(z, identity, fmr)
    assert result == verification(z, identity, fmr) and scored is not None and scored.bound <= result.threshold
    scores, i, j, same = all_pairs(z, identity)
    accepted = {(a, b) for a, b, s, g in zip(i.tolist(), j.tolist(), scores.tolist(), same.tolist()) if not g and s > result.threshold}
    first, second, kept = scored.above(result.threshold)
    assert set(zip(first.tolist(), second.tolist())) == accepted and bool((kept > result.threshold).all())
    reference = torch.sort(torch.as_tensor(scores[same], dtype=torch.float64)).values
    assert torch.allclose(torch.sort(scored.genuine.double()).values, reference, rtol=0, atol=1e-12)
    kwargs = dict(n_bootstrap=30, min_pairs=10, min_identities=3)
    alone = demographic_differentials(z, identity, labels, SCHEMA, result, **kwargs).to_record()
    assert demographic_differentials(z, identity, labels, SCHEMA, result, scored=scored, **kwargs).to_record() == alone
    plain, reused = decision_errors(z, identity, fmr, known=result), decision_errors(z, identity, fmr, known=result, scored=scored)
    for field_name in ("false_non_match", "false_non_match_score", "false_match", "false_match_score"):
        assert torch.equal(getattr(plain, field_name), getattr(reused, field_name)), field_name
    with pytest.raises(ValueError, match="above the threshold"):
        scored.above(scored.bound - 0.1)


def test_a_ratio_whose_least_rate_is_zero_is_infinite_in_the_record_and_the_tables():
    """A group without a false non-match at τ: FNMR max/min is ∞ — "infinite" in the record, ∞ in frx analyze's
    table and benchmark.md, "inf" in benchmark.csv — not a missing value."""
    from frx_plugin.commands.analyze import format_differentials_table
    from frx_plugin.commands.benchmark_tables import _estimate
    from frx_plugin.report import Report

    z, identity, labels = planted_world(80, 4, sigma=(0.2, 1.2))  # sex 0's genuine pairs are nearly identical
    result = demographic_differentials(z, identity, labels, SCHEMA, verification(z, identity, 1e-2), n_bootstrap=20,
                                       min_pairs=10, min_identities=3)
    sex = result["sex"]
    assert sex.groups[0].false_non_matches == 0 and sex.groups[1].false_non_matches > 0
    record = result.to_record()
    entry = next(a for a in record["attributes"] if a["name"] == "sex")["fnmr_ratio"]
    assert entry["value"] is None and entry["infinite"] is True
    assert "frx/differential/sex/fnmr_ratio" not in result.scalars()
    report = Report(leakage=[], n_samples=len(identity), n_identities=80, n_folds=5)
    report.differentials = record
    line = next(row for row in format_differentials_table(report).splitlines() if row.startswith("sex "))
    assert line.split()[1] == "∞" and "a group has no false non-match at τ: the least rate is 0" in format_differentials_table(report)
    assert _estimate(entry).startswith("∞")


def test_the_float64_weight_products_give_the_float32_numbers(monkeypatch):
    """Above float32's exact range the identity pairs' weight products are summed in float64: the same record."""
    import frx_plugin.differentials.rates as differentials

    z, identity, labels = planted_world(60, 4)
    result = verification(z, identity, 1e-2)
    fast = demographic_differentials(z, identity, labels, SCHEMA, result, n_bootstrap=30, min_pairs=10, min_identities=3)
    monkeypatch.setattr(differentials, "_FLOAT32_EXACT", 0.0)
    wide = demographic_differentials(z, identity, labels, SCHEMA, result, n_bootstrap=30, min_pairs=10, min_identities=3)
    assert wide.to_record() == fast.to_record()
    assert any(g.false_matches for a in fast.attributes for g in a.groups)  # the products were summed at all


def test_remembered_groups_follow_the_labels_and_stay_on_the_cpu():
    """A training's passes reuse the probe set's groups; labels changed in place, or another probe set, are
    not served the old groups (the digest covers the labels), and what is kept lives on the CPU."""
    import frx_plugin.differentials.rates as rates

    z, identity, labels = planted_world(60, 4)
    result = verification(z, identity, 1e-2)
    options = dict(n_bootstrap=20, min_pairs=10, min_identities=3)
    rates._GROUPS.clear()
    first = demographic_differentials(z, identity, labels, SCHEMA, result, **options).to_record()
    again = demographic_differentials(z, identity, labels, SCHEMA, result, **options).to_record()
    assert again == first and len(rates._GROUPS) == 1
    labels["lighting"][:40] = 1 - labels["lighting"][:40].clamp_min(0)  # changed in place: the same tensor object
    changed = demographic_differentials(z, identity, labels, SCHEMA, result, **options).to_record()
    rates._GROUPS.clear()
    assert changed == demographic_differentials(z, identity, labels, SCHEMA, result, **options).to_record() != first
    assert all(t.device.type == "cpu" for g in rates._GROUPS.values() for t in (g.weights, g.slots, *g.static.values()))


def test_an_attribute_without_any_label_has_no_group_and_no_summary():
    z, identity, labels = planted_world(60, 4)
    labels["age"] = torch.full_like(labels["age"], float("nan"))
    labels["hair"] = torch.full_like(labels["hair"], -1)
    result = demographic_differentials(z, identity, labels, SCHEMA, verification(z, identity, 1e-2), n_bootstrap=10, min_pairs=10)
    assert result["age"].groups == []  # a continuous attribute's bands come from its labels: none
    assert [g.images for g in result["hair"].groups] == [0, 0, 0] and all(g.fnmr is None for g in result["hair"].groups)
    for name in ("age", "hair"):
        assert all(math.isnan(result[name].summary(s).value) for s in ("fnmr_ratio", "fmr_ratio", "fdr", "garbe"))
    assert result["sex"].groups and math.isfinite(result["sex"].garbe.value)
