"""Counterfactuals: identity significance and pair explanations against brute force and the exact renderer."""

from __future__ import annotations

import math

import pytest
import torch

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.counterfactual import (
    CounterfactualError,
    counterfactual_heads,
    error_attribution,
    exact_embedder,
    explain_errors,
    identity_significance,
    latent_embedder,
    latent_model,
    pair_errors,
)
from frx_plugin.model import embed_probe_set
from frx_plugin.models import ResidualFaceNet
from frx_plugin.passes import AnalysisConfig, analyze_probe
from frx_plugin.plugins import find_generator, require_generator
from frx_plugin.probe import TensorProbeSet
from frx_plugin.randomness import poisson_bootstrap_weights
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.verification import decision_errors


def brute_impostor_distance(z: torch.Tensor, identity: torch.Tensor, w: torch.Tensor | None = None) -> float:
    """mean over ordered impostor pairs (weights w_i·w_j) of 1 − cos."""
    z = torch.nn.functional.normalize(z.double(), dim=1)
    w = torch.ones(z.shape[0], dtype=torch.float64) if w is None else w
    total = weight = 0.0
    for i in range(z.shape[0]):
        for j in range(z.shape[0]):
            if identity[i] != identity[j]:
                total += float(w[i] * w[j] * (1 - z[i] @ z[j]))
                weight += float(w[i] * w[j])
    return total / weight


def test_identity_significance_is_the_defined_ratio_with_identity_bootstrap():
    g = torch.Generator().manual_seed(0)
    identity = torch.arange(12).repeat_interleave(4)
    z = torch.nn.functional.normalize(torch.randn(48, 6, generator=g), dim=1)
    schema = AttributeSchema([Attribute("tilt", "continuous"), Attribute("mark", "binary")])
    labels = {"tilt": torch.randn(48, generator=g), "mark": torch.randint(0, 2, (48,), generator=g)}
    labels["mark"][5] = -1  # a missing label: that sample is left out for this attribute
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]

    def embed(rows, attribute, values):  # any deterministic change will do: the formula is what is checked
        turned = z[rows] @ rotation if attribute == "tilt" else z[rows] + 0.3 * values[:, None].float()
        return torch.nn.functional.normalize(turned, dim=1)

    rows = torch.arange(0, 48, 2)
    result = identity_significance(z, identity, schema, labels, embed, rows, n_bootstrap=30, seed=4)
    denominator = brute_impostor_distance(z, identity)
    for name in ("tilt", "mark"):
        keep = rows[labels[name][rows] >= 0] if name == "mark" else rows
        values = (1 - labels["mark"][keep]) if name == "mark" else labels["tilt"][keep] + labels["tilt"].std()
        moved = 1 - (z[keep].double() * embed(keep, name, values).double()).sum(1)
        assert result[name].value == pytest.approx(float(moved.mean()) / denominator, rel=1e-6), name
        assert result[name].replicates == 30 and result[name].low <= result[name].value <= result[name].high
    # a bootstrap replicate re-weights identities in the denominator as in the numerator: brute force
    from frx_plugin.counterfactual import impostor_mean_cosine

    w_id = poisson_bootstrap_weights(torch.unique(identity), 4, 30)[7]
    assert 1 - float(impostor_mean_cosine(z, identity, w_id[None].double())[0]) == pytest.approx(
        brute_impostor_distance(z, identity, w_id[identity]), rel=1e-9
    )


@pytest.fixture(scope="module")
def synthetic():
    torch.manual_seed(0)
    probe = SyntheticProbeSet(24, 4, seed=3, size=64, first_identity=5_000)
    model = ResidualFaceNet(32, input_size=64).eval()
    z = embed_probe_set(model, probe)
    return probe, model, z


def test_exact_significance_re_renders_and_re_embeds(synthetic):
    probe, model, z = synthetic
    name, generator = require_generator(probe)
    assert name == "synthetic"
    rows = torch.arange(0, len(probe), 3)
    result = identity_significance(z, probe.identity, probe.schema, probe.labels, exact_embedder(model, generator), rows, n_bootstrap=0)
    assert set(result) == set(probe.schema.names)
    # brute force for glasses (flip) and yaw (+1 sd of the probe's yaw labels)
    denominator = brute_impostor_distance(z, probe.identity)
    changes = (("glasses", 1 - probe.labels["glasses"][rows]), ("yaw", probe.labels["yaw"][rows] + probe.labels["yaw"].double().std()))
    for attribute, values in changes:
        images = probe.world.counterfactual(rows, attribute, values)
        with torch.no_grad():
            changed = torch.nn.functional.normalize(model(images), dim=1)
        expected = float((1 - (z[rows].double() * changed.double()).sum(1)).mean()) / denominator
        assert result[attribute].value == pytest.approx(expected, rel=1e-5), attribute
        assert math.isnan(result[attribute].low)  # no bootstrap asked for


@pytest.mark.parametrize("rtol, tolerance", [(1e-12, 1e-6), (None, 5e-2)])
def test_latent_move_changes_one_head_by_the_calibrated_amount_and_holds_the_others(synthetic, monkeypatch, rtol, tolerance):
    """Exactly without truncation; within 5% (here: 29 heads in 32 dimensions) with the default truncation."""
    import frx_plugin.counterfactual.latent as counterfactual_module

    if rtol is not None:
        monkeypatch.setattr(counterfactual_module, "LATENT_RTOL", rtol)
    probe, _, z = synthetic
    directions, bias, _ = counterfactual_heads(z, probe.identity, probe.labels, probe.schema)  # the heads a pass moves along
    for mode in ("least_norm", "conditional"):
        model = latent_model(z, probe.labels, probe.schema, directions, bias, mode=mode)
        rows = torch.arange(10)
        old = probe.labels["glasses"][rows]
        new = 1 - old
        moved = model.move(z[rows], "glasses", old, new).double()
        # before normalisation the heads move exactly as asked; normalising rescales all scores alike
        raw = z[rows].double() + (torch.zeros(10, model.weight.shape[0], dtype=torch.float64).index_put_(
            (torch.arange(10)[:, None], model.cols["glasses"][None, :]),
            model.class_means["glasses"][new.long()] - model.class_means["glasses"][old.long()],
        ) @ model.solve)
        change = (raw - z[rows].double()) @ model.weight.T
        target = model.class_means["glasses"][new.long()] - model.class_means["glasses"][old.long()]
        glasses = model.cols["glasses"]
        others = torch.ones(model.weight.shape[0], dtype=torch.bool)
        others[glasses] = False
        scale = float(target.abs().max())
        assert float((change[:, glasses] - target).abs().max()) <= tolerance * scale, mode
        assert float(change[:, others].abs().max()) <= tolerance * scale, mode
        torch.testing.assert_close(moved, torch.nn.functional.normalize(raw, dim=1))


def test_pair_explanations_against_brute_force(synthetic):
    probe, model, z = synthetic
    _, generator = require_generator(probe)
    errors = decision_errors(z, probe.identity, fmr=0.02)
    explanations = explain_errors(errors, z, probe.schema, probe.labels, exact_embedder(model, generator), max_pairs=4)
    kinds = {e.kind for e in explanations}
    assert kinds <= {"false_non_match", "false_match"} and explanations
    tau = errors.tau
    for e in explanations:
        same = bool(probe.identity[e.first] == probe.identity[e.second])
        assert (e.kind == "false_non_match") == same
        assert (e.score <= tau) if same else (e.score > tau)
        flips = {k for k, d in e.delta.items() if math.isfinite(d) and ((e.score + d > tau) if same else (e.score + d <= tau))}
        assert set(e.deciding) == flips
        ranked = [d for _, d in e.ranked()]
        assert ranked == sorted(ranked, reverse=same)
    # one δ by brute force: the second face takes the first's age (align) or moves away (false match)
    e = explanations[0]
    first, second = torch.tensor([e.first]), torch.tensor([e.second])
    if e.kind == "false_non_match":
        value = probe.labels["age"][first]
    else:
        sd = probe.labels["age"].double().std().float()
        value = probe.labels["age"][second] + torch.where(probe.labels["age"][second] >= probe.labels["age"][first], sd, -sd)
    with torch.no_grad():
        changed = torch.nn.functional.normalize(model(probe.world.counterfactual(second, "age", value)), dim=1)
    expected = float((z[e.first].double() * changed[0].double()).sum()) - e.score
    assert e.delta["age"] == pytest.approx(expected, abs=1e-5)
    shares = error_attribution(explanations, probe.schema.names)
    for kind in ("all", "false_non_match", "false_match"):
        chosen = [x for x in explanations if kind == "all" or x.kind == kind]
        if chosen:
            assert shares[kind]["age"] == pytest.approx(sum("age" in x.deciding for x in chosen) / len(chosen))


def test_missing_generator_pairs_and_thresholds_are_named():
    g = torch.Generator().manual_seed(1)
    schema = AttributeSchema([Attribute("mark", "binary")])
    identity = torch.arange(6).repeat_interleave(2)
    probe = TensorProbeSet(torch.rand(12, 3, 8, 8, generator=g), schema, identity, {"mark": torch.randint(0, 2, (12,), generator=g)})
    assert find_generator(probe) is None
    with pytest.raises(CounterfactualError, match="frx_register_generators"):
        require_generator(probe)
    z = torch.nn.functional.normalize(torch.randn(12, 4, generator=g), dim=1)
    with pytest.raises(ValueError, match=r"too few to set a threshold at FMR 0.001: at least 1,000 are needed"):
        decision_errors(z, identity, fmr=1e-3)
    with pytest.raises(CounterfactualError, match=r"2 pair\(s\) reference samples that do not exist \(the probe set has 12 samples\): #1 \[3, 12\]"):
        pair_errors(torch.tensor([[0, 1], [3, 12], [-1, 2]]), z, identity, tau=0.5)
    errors = pair_errors(torch.tensor([[0, 1], [0, 2], [4, 5]]), z, identity, tau=-2.0)
    assert errors.false_non_match.shape[0] == 0 and errors.false_match.tolist() == [[0, 2]]


def test_latent_calibration_shrinks_by_the_held_out_separation(synthetic):
    from statistics import NormalDist

    from frx_plugin.leakage import auroc_columns

    probe, _, z = synthetic
    report = analyze_probe(z, probe, AnalysisConfig(n_bootstrap=0))
    tensors = (report.tensors["probe_directions"], report.tensors["probe_bias"])
    plain = latent_model(z, probe.labels, probe.schema, *tensors)
    held_out = {a.name: a.value for a in report.leakage}
    calibrated = latent_model(z, probe.labels, probe.schema, *tensors, held_out=held_out)
    d = lambda area: 0.0 if area <= 0.5 else 2 ** 0.5 * NormalDist().inv_cdf(area)  # noqa: E731
    head = report.tensors["probe_directions"].double()
    for name in ("glasses", "smile"):
        # the in-sample AUROC of the all-data head, from which κ = d′(held-out) / d′(in-sample)
        row = {a.name: i for i, a in enumerate(probe.schema)}[name]
        column = sum(a.num_classes if a.kind == "categorical" else 1 for a in list(probe.schema)[:row])
        s = z.double() @ head[column] + float(report.tensors["probe_bias"][column])
        inside = float(auroc_columns(s[:, None], (probe.labels[name] == 1)[:, None])[0])
        kappa = min(1.0, d(held_out[name]) / d(inside)) if d(inside) > 0 else 0.0
        gap_plain = plain.class_means[name][1] - plain.class_means[name][0]
        gap_calibrated = calibrated.class_means[name][1] - calibrated.class_means[name][0]
        torch.testing.assert_close(gap_calibrated, kappa * gap_plain, rtol=1e-6, atol=1e-12)
    # a head without held-out signal does not move z at all
    silent = {**held_out, "smile": 0.5}
    still = latent_model(z, probe.labels, probe.schema, *tensors, held_out=silent)
    rows = torch.arange(8)
    embed = latent_embedder(still, z, probe.labels)
    moved = embed(rows, "smile", 1 - probe.labels["smile"][rows])
    torch.testing.assert_close(moved, torch.nn.functional.normalize(z[rows], dim=1), atol=1e-6, rtol=0)
