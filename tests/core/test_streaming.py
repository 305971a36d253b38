"""Streaming direct recovery (frx_plugin.leakage.streaming) against the in-memory pass, and its parts.

AUROC tolerance. The streaming AUROC counts a (positive, negative) pair whose scores share a
histogram bin as ½, and orders every other pair exactly (bins are monotone in the score, the
edge bins included). So |binned − exact| ≤ ½ Σ_b h⁺_b h⁻_b / (n⁺ n⁻), the weighted share of
same-bin pairs (``histogram_auroc_tie_bound``), per replicate; a percentile of B replicates
moves by at most the largest replicate bound (order statistics are 1-Lipschitz in the sup
norm). We assert those hard bounds, computed from the metric's own histograms, and that the
actual differences are below 2e-3 (the bound is ≈ ½·width·∫f⁺f⁻ ≈ 2e-3 for a signal-free
column over mean ± 8 sd in 1024 bins; the realised error is much smaller because within a bin
the exact order is nearly a coin toss).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.leakage import analyze_embeddings, fit_probe_heads, histogram_auroc_tie_bound
from frx_plugin.leakage.metrics import HeldOutLeakage, ProbeStatistics
from frx_plugin.leakage.streaming import FoldLookup, analyze_stream
from frx_plugin.randomness import poisson_bootstrap_weights
from tests.core.test_recovery import MU, Phi, bayes_binary, bayes_categorical, bayes_continuous, planted_world
from tests.ddp_launch import run_two_ranks

SCHEMA = AttributeSchema(
    [
        Attribute("glasses", "binary"),
        Attribute("hair", "categorical", classes=("dark", "fair", "red")),
        Attribute("age", "continuous"),
        Attribute("smile", "binary"),  # missing labels
        Attribute("eyes", "categorical", classes=("brown", "blue", "green", "grey")),  # missing labels
        Attribute("yaw", "continuous"),  # missing labels
        Attribute("beard", "binary"),  # one class (and missing labels): undefined
        Attribute("height", "continuous"),  # constant: undefined
    ]
)


def mixed_world(n: int = 2400, dim: int = 12, seed: int = 0):
    """Rows of uneven identities in shuffled order, arbitrary identity labels, signals and gaps."""
    g = torch.Generator().manual_seed(seed)
    identity = (torch.randint(0, max(n // 8, 10), (n,), generator=g) * 7 + 1000)
    z = torch.randn(n, dim, generator=g)
    glasses = torch.randint(0, 2, (n,), generator=g)
    hair = torch.randint(0, 3, (n,), generator=g)
    age = 40 + 10 * torch.randn(n, generator=g)
    smile = torch.randint(0, 2, (n,), generator=g)
    eyes = torch.randint(0, 4, (n,), generator=g)
    yaw = torch.randn(n, generator=g)
    z[:, 0] += 1.5 * glasses
    z[:, 1] += 0.1 * (age - 40)
    z[:, 2] += 0.8 * smile
    z[torch.arange(n), 3 + eyes] += 0.7
    z[:, 7] += yaw  # dim >= 8
    gap = lambda p: torch.rand(n, generator=g) < p  # noqa: E731
    labels = {
        "glasses": glasses,
        "hair": hair,
        "age": age,
        "smile": torch.where(gap(0.15), -1, smile),
        "eyes": torch.where(gap(0.3), -1, eyes),
        "yaw": torch.where(gap(0.1), math.nan, yaw),
        "beard": torch.where(gap(0.2), -1, torch.zeros(n, dtype=torch.long)),
        "height": torch.full((n,), 1.75),
    }
    return z, identity, labels


def chunked(z, identity, labels, size, order=None):
    order = torch.arange(z.shape[0]) if order is None else order

    def chunks():
        for start in range(0, order.numel(), size):
            rows = order[start : start + size]
            yield z[rows], identity[rows], {k: v[rows] for k, v in labels.items()}

    return chunks


def _tie_bounds(z, identity, labels, schema, n_folds=5, n_bootstrap=50, seed=0):
    """Per discrete attribute: (bound on the point AUROC, largest bound over replicates)."""
    folds = FoldLookup(identity, n_folds, seed)(identity)
    masked = [a.name for a in schema if bool(a.missing_mask(labels[a.name]).any())]
    stats = ProbeStatistics(schema, z.shape[1], n_folds, masked)
    stats.update(z, folds, labels)
    heads = fit_probe_heads(*stats.compute(), schema)
    metric = HeldOutLeakage(heads, schema, n_bootstrap, seed)
    metric.update(z, identity, folds, labels)
    out = {}
    for i, attribute in enumerate(schema):
        if attribute.discrete and not heads.reason[attribute.name]:
            h = getattr(metric, f"histogram_{i}")
            classes = [0] if attribute.kind == "binary" else heads.present[attribute.name]
            bound = torch.stack([histogram_auroc_tie_bound(h[:, c, 0], h[:, c, 1]) for c in classes], -1).mean(-1)
            out[attribute.name] = (float(bound[0]), float(bound[1:].max()))
    return out


def test_stream_equals_in_memory_pass():
    z, identity, labels = mixed_world()
    exact = analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=50, seed=0)
    stream = analyze_stream(chunked(z, identity, labels, 333), identity, SCHEMA, n_bootstrap=50, seed=0)
    bounds = _tie_bounds(z, identity, labels, SCHEMA)
    assert stream.n_samples == exact.n_samples and stream.n_identities == exact.n_identities
    assert stream.warnings == exact.warnings
    for a, b in zip(exact.leakage, stream.leakage):
        assert (a.name, a.metric, a.n, a.reason) == (b.name, b.metric, b.n, b.reason)
        if a.reason:
            assert math.isnan(b.value) and math.isnan(b.low) and math.isnan(b.extra.get("balanced_accuracy", math.nan))
            continue
        if a.metric == "r2":
            for key in ("value", "low", "high", "leakage"):
                assert getattr(b, key) == pytest.approx(getattr(a, key), abs=1e-9), (a.name, key)
        else:
            assert b.extra["balanced_accuracy"] == pytest.approx(a.extra["balanced_accuracy"], abs=1e-9), a.name
            point_bound, replicate_bound = bounds[a.name]
            assert abs(b.value - a.value) <= point_bound + 1e-12, (a.name, b.value - a.value, point_bound)
            assert abs(b.low - a.low) <= replicate_bound + 1e-12 and abs(b.high - a.high) <= replicate_bound + 1e-12
            assert max(abs(b.value - a.value), abs(b.low - a.low), abs(b.high - a.high)) < 2e-3, a.name
    assert {a.name for a in exact.leakage if a.reason} == {"beard", "height"}
    assert exact["beard"].reason == "only one class ('no') among labelled samples; AUROC undefined"
    for key in ("probe_directions", "probe_bias", "probe_penalty"):
        torch.testing.assert_close(stream.tensors[key], exact.tensors[key], rtol=1e-5, atol=1e-6, equal_nan=True)


def _records(report):
    return [(a.name, a.value, a.low, a.high, a.extra.get("balanced_accuracy", 0.0), a.reason) for a in report.leakage]


def _assert_same(one, two, tol=1e-9):
    for a, b in zip(_records(one), _records(two)):
        assert a[0] == b[0] and a[5] == b[5]
        for x, y in zip(a[1:5], b[1:5]):
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol, (a, b)


def test_chunk_size_order_and_scan_invariance():
    z, identity, labels = mixed_world(n=1500, dim=8, seed=1)
    runs = [analyze_stream(chunked(z, identity, labels, size), identity, SCHEMA, n_bootstrap=30) for size in (1000, 333, 7)]
    shuffled = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(3))
    runs.append(analyze_stream(chunked(z, identity, labels, 250, shuffled), identity[shuffled], SCHEMA, n_bootstrap=30))
    # naming every attribute as possibly missing (no label scan) gives the same heads and numbers
    runs.append(analyze_stream(chunked(z, identity, labels, 500), identity, SCHEMA, n_bootstrap=30, masked_attributes=SCHEMA.names))
    for other in runs[1:]:
        _assert_same(runs[0], other)
        assert other.warnings == runs[0].warnings


def test_poisson_weights_are_keyed_on_identity_only():
    identity = torch.randint(0, 50_000, (200_000,), generator=torch.Generator().manual_seed(0)) * 3 - 7
    w = poisson_bootstrap_weights(identity, seed=5, n_replicates=8)
    assert w.shape == (8, 200_000) and w.dtype == torch.float64
    assert torch.equal(w, poisson_bootstrap_weights(identity, seed=5, n_replicates=8))  # deterministic
    assert not torch.equal(w, poisson_bootstrap_weights(identity, seed=6, n_replicates=8))
    # order, chunking and replicate offset do not matter
    order = torch.randperm(identity.numel())
    assert torch.equal(poisson_bootstrap_weights(identity[order], 5, 8), w[:, order])
    parts = [poisson_bootstrap_weights(identity[s : s + 777], 5, 8) for s in range(0, 200_000, 777)]
    assert torch.equal(torch.cat(parts, 1), w)
    assert torch.equal(poisson_bootstrap_weights(identity, 5, 3, first_replicate=5), w[5:])
    # one weight per identity, Poisson(1) over identities
    uniq, first = torch.unique(identity, return_inverse=True)
    per_identity = torch.zeros(8, uniq.numel(), dtype=torch.float64).scatter_(1, first.expand(8, -1), w)
    assert torch.equal(per_identity[:, first], w)
    assert torch.equal(w, w.round()) and float(w.min()) == 0.0
    values = per_identity.flatten()  # ≈ 8 × 50,000 independent draws
    assert float(values.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(values.var()) == pytest.approx(1.0, abs=0.015)
    assert float((values == 0).double().mean()) == pytest.approx(math.exp(-1), abs=0.005)
    assert poisson_bootstrap_weights(identity, 5, 0).shape == (0, 200_000)


def test_remembered_poisson_draws_are_the_fresh_ones_and_stay_unchanged():
    """A training's passes draw the same identities' weights every pass: the remembered draw equals a fresh
    one, and a caller that changes the weights it got changes no later caller's."""
    import frx_plugin.randomness as randomness

    identity = torch.arange(4_000) // 4
    randomness._DRAWS.clear()
    first = poisson_bootstrap_weights(identity, seed=3, n_replicates=50)
    assert len(randomness._DRAWS) == 1
    first.mul_(0.0)  # the caller's own copy
    again = poisson_bootstrap_weights(identity, seed=3, n_replicates=50)
    randomness._DRAWS.clear()
    fresh = poisson_bootstrap_weights(identity, seed=3, n_replicates=50)
    assert torch.equal(again, fresh) and float(fresh.sum()) > 0
    assert not torch.equal(poisson_bootstrap_weights(identity + 1, seed=3, n_replicates=50), fresh)  # other identities, other draw
    randomness._DRAWS.clear()
    monkey_limit, randomness._DRAWS_KEPT = randomness._DRAWS_KEPT, 100
    try:  # a draw larger than the memory kept is not remembered
        poisson_bootstrap_weights(identity, seed=3, n_replicates=50)
        assert len(randomness._DRAWS) == 0
    finally:
        randomness._DRAWS_KEPT = monkey_limit


def test_planted_signals_reach_bayes_through_the_stream():
    z, identity, labels, schema = planted_world(0, 64)
    report = analyze_stream(chunked(z, identity, labels, 2500), identity, schema, n_bootstrap=200)
    assert report.n_samples == 20_000 and report.n_identities == 2000 and not report.warnings
    assert abs(report["smile"].value - bayes_binary()) < 0.01
    assert abs(report["yaw"].value - bayes_continuous()) < 0.01
    assert abs(report["hair"].value - bayes_categorical(n=100_000)) < 0.01
    assert report["smile"].extra["balanced_accuracy"] == pytest.approx(Phi(MU), abs=0.015)
    for name in ("smile", "yaw", "hair"):
        assert report[name].low < report[name].value < report[name].high


def test_two_process_stream_equals_one_process(tmp_path):
    script = Path(__file__).parents[1] / "ddp_streaming_script.py"
    out = tmp_path / "report.json"
    run_two_ranks(script, str(out))
    reduced = json.loads(out.read_text())
    z, identity, labels = mixed_world(n=DDP_N, dim=8, seed=2)
    single = analyze_stream(chunked(z, identity, labels, 50), identity, SCHEMA, n_bootstrap=DDP_BOOTSTRAP)
    assert reduced["n_samples"] == DDP_N and reduced["warnings"] == single.warnings
    for record, (name, *numbers, reason) in zip(reduced["leakage"], _records(single)):
        assert record[0] == name and record[-1] == reason
        for x, y in zip(record[1:-1], numbers):
            assert (x is None and math.isnan(y)) or abs(x - y) <= 1e-6, (name, x, y)


DDP_N = 301
DDP_BOOTSTRAP = 40


@pytest.mark.parametrize("scan", [True, False])
def test_chunks_of_different_width_or_with_nan_are_named(scan):
    from frx_plugin.errors import AnalysisError

    z, identity, labels = mixed_world(n=600)
    masked = None if scan else SCHEMA.names
    wide = torch.cat([z, torch.zeros(600, 2)], 1)  # D = 14 after 12
    parts = [(z[:300], identity[:300], {k: v[:300] for k, v in labels.items()}),
             (wide[300:], identity[300:], {k: v[300:] for k, v in labels.items()})]
    with pytest.raises(AnalysisError, match=r"chunk 1: embeddings have D = 14 columns, but the chunks before had D = 12"):
        analyze_stream(lambda: parts, identity, SCHEMA, n_bootstrap=5, masked_attributes=masked)
    bad = z.clone()
    bad[450, 3] = math.nan
    parts = [(bad[:300], identity[:300], {k: v[:300] for k, v in labels.items()}),
             (bad[300:], identity[300:], {k: v[300:] for k, v in labels.items()})]
    with pytest.raises(AnalysisError, match=r"chunk 1: embeddings contain NaN or infinity in 1 of 300 rows"):
        analyze_stream(lambda: parts, identity, SCHEMA, n_bootstrap=5, masked_attributes=masked)
