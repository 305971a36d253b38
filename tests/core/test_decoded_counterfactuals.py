"""The decoded counterfactual path: directions fitted on identity-disjoint folds in the decoder's latent space,
an unedited code giving δ = 0, a failed fold left out, and the pass choosing the path where a decoder trains."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.counterfactual import explain_errors, identity_significance
from frx_plugin.counterfactual.budget import counterfactual_budget
from frx_plugin.counterfactual.decoded import DecodedEmbedder, fit_directions
from frx_plugin.errors import CounterfactualError
from frx_plugin.interfaces import DecoderTask
from frx_plugin.leakage import identity_folds
from frx_plugin.passes import AnalysisConfig, plan_pass, run_pass
from frx_plugin.probe import TensorProbeSet
from frx_plugin.two_stage import TwoStage, TwoStageConfig
from frx_plugin.two_stage.decoders import ConvFaceDecoder
from frx_plugin.verification import decision_errors

SCHEMA = AttributeSchema([Attribute("mark", "binary"), Attribute("tilt", "continuous"), Attribute("noise", "binary")])
DIM, SIDE = 16, 16


def _world(n_ids: int = 60, per_id: int = 4, seed: int = 0):
    """Embeddings (N, DIM) of identities with a binary 'mark' along u, a continuous 'tilt' along t, and a
    'noise' label that nothing in z carries."""
    g = torch.Generator().manual_seed(seed)
    identity = torch.arange(n_ids).repeat_interleave(per_id)
    n = identity.numel()
    basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))[0]
    u, t = basis[:, 0], basis[:, 1]
    centres = torch.randn(n_ids, DIM - 2, generator=g) @ basis[:, 2:].T  # identities differ outside the attributes' directions
    mark = torch.randint(0, 2, (n,), generator=g)
    tilt = torch.randn(n, generator=g)
    z = centres[identity] + 0.3 * torch.randn(n, DIM, generator=g) + 1.5 * mark[:, None] * u + 0.8 * tilt[:, None] * t
    labels = {"mark": mark, "tilt": tilt, "noise": torch.randint(0, 2, (n,), generator=g)}
    return torch.nn.functional.normalize(z, dim=1), identity, labels, u, t


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIDE * SIDE, DIM)).eval()


@functools.lru_cache(maxsize=1)
def _decoders():
    """Conv decoders (made once; nothing here changes them) trained briefly to draw faces that a fixed map makes of the world's embeddings."""
    torch.manual_seed(1)
    z = _world()[0]
    faces = torch.sigmoid(3.0 * z @ torch.randn(DIM, 3 * SIDE * SIDE, generator=torch.Generator().manual_seed(5))).view(-1, 3, SIDE, SIDE)
    decoders = {fold: ConvFaceDecoder(DIM, (3, SIDE, SIDE)) for fold in (0, 1)}
    for fold, decoder in decoders.items():
        decoder.fit(DecoderTask(z, faces, None, steps=40, seed=fold))
    return decoders


def _embedder(labels, decoders=None):
    z, identity, _, _, _ = _world()
    folds = identity_folds(identity, 2, 0)
    return DecodedEmbedder(_model(), decoders or _decoders(), folds, z, identity, labels, SCHEMA), folds, identity


def test_each_folds_directions_are_fitted_on_the_other_folds_identities_only():
    _, identity, labels, _, _ = _world()
    embed, folds, identity = _embedder(labels)
    held = (folds == 0).nonzero().squeeze(1)
    directions = embed.directions(0)
    assert set(directions.rows.tolist()) == set((folds != 0).nonzero().squeeze(1).tolist())
    assert not set(identity[directions.rows].tolist()) & set(identity[held].tolist())

    rows = held[:12]
    codes = embed.codes(0)[rows]
    flipped = 1 - labels["mark"][rows]
    move = directions.shift(codes, "mark", labels["mark"][rows], flipped)
    # judged by independent heads fitted on the same training rows (scikit-learn): the edit moves the mark's
    # decision value across most of the gap between its classes, in the flip's direction, and holds the tilt
    # ("change one attribute, hold the rest"); the tilt's edit moves the tilt and holds the mark
    train_codes = embed.codes(0)[directions.rows].double().numpy()
    train_mark = labels["mark"][directions.rows].numpy()
    mark_head = LogisticRegression(C=10.0, max_iter=1000).fit(train_codes, train_mark)
    tilt_head = Ridge(alpha=1e-3).fit(train_codes, labels["tilt"][directions.rows].numpy())
    decision = mark_head.decision_function(train_codes)
    gap = decision[train_mark == 1].mean() - decision[train_mark == 0].mean()
    before, edited = codes.double().numpy(), (codes.double() + move).numpy()
    towards = (mark_head.decision_function(edited) - mark_head.decision_function(before)) * (flipped - labels["mark"][rows]).numpy()
    assert (towards > 0.5 * gap).all() and (towards < 1.2 * gap).all(), (towards, gap)
    assert abs(tilt_head.predict(edited) - tilt_head.predict(before)).max() < 0.05 * float(labels["tilt"].std())
    tilted = (codes.double() + directions.shift(codes, "tilt", labels["tilt"][rows], labels["tilt"][rows] + 1.0)).numpy()
    assert 0.6 < (tilt_head.predict(tilted) - tilt_head.predict(before)).mean() < 1.1
    assert abs(mark_head.decision_function(tilted) - mark_head.decision_function(before)).max() < 0.05 * gap

    # fold 0's own labels never enter its directions: scrambling them leaves every move as it was
    scrambled = {k: v.clone() for k, v in labels.items()}
    g = torch.Generator().manual_seed(7)
    scrambled["mark"][held] = torch.randint(0, 2, (held.numel(),), generator=g)
    scrambled["tilt"][held] = torch.randn(held.numel(), generator=g)
    other, _, _ = _embedder(scrambled)
    again = other.directions(0).shift(codes, "mark", labels["mark"][rows], flipped)
    assert torch.allclose(again, move, atol=1e-10)
    # while the other folds' labels do enter them
    train = (folds != 0).nonzero().squeeze(1)
    scrambled = {k: v.clone() for k, v in labels.items()}
    scrambled["mark"][train] = torch.randint(0, 2, (train.numel(),), generator=g)
    third, _, _ = _embedder(scrambled)
    assert not torch.allclose(third.directions(0).shift(codes, "mark", labels["mark"][rows], flipped), move, atol=1e-3)


def test_an_unedited_code_renders_the_base_face_so_delta_and_significance_are_zero():
    z, identity, labels, _, _ = _world()
    embed, folds, identity = _embedder(labels)
    rows = torch.arange(0, z.shape[0], 3)
    same = embed.many([(rows, "mark", labels["mark"][rows]), (rows, "tilt", labels["tilt"][rows])])
    base = embed.unedited(rows)
    assert base.shape == (rows.numel(), DIM) and bool(torch.isfinite(base).all())
    for edited in same:
        assert torch.equal(edited, base)

    class Unedited:  # the decoded embedder, asked for edits that keep every value
        def many(self, edits):
            return embed.many([(r, a, labels[a][r]) for r, a, _ in edits])

        def unedited(self, rows):
            return embed.unedited(rows)

    result = identity_significance(z, identity, SCHEMA, labels, Unedited(), rows, n_bootstrap=0)
    assert all(abs(e.value) < 1e-6 for e in result.values())
    errors = decision_errors(z, identity, 0.05)
    explained = explain_errors(errors, z, SCHEMA, labels, Unedited(), max_pairs=4)
    assert explained and all(abs(d) < 1e-6 for e in explained for d in e.delta.values() if math.isfinite(d))
    # and a real edit does move the re-embedded face
    moved = identity_significance(z, identity, SCHEMA, labels, embed, rows, n_bootstrap=0)
    assert moved["mark"].value > 1e-4


def test_a_fold_without_a_decoder_is_left_out_not_counted_as_unchanged():
    z, identity, labels, _, _ = _world()
    decoders = _decoders()
    full, folds, identity = _embedder(labels, decoders)
    half, _, _ = _embedder(labels, {0: decoders[0]})  # fold 1's decoder failed
    rows = torch.arange(z.shape[0])
    edited = half.many([(rows, "mark", 1 - labels["mark"])])[0]
    assert bool(torch.isnan(edited[folds == 1]).all()) and bool(torch.isfinite(edited[folds == 0]).all())
    only_fold_0 = (folds == 0).nonzero().squeeze(1)
    left_out = identity_significance(z, identity, SCHEMA, labels, half, rows, n_bootstrap=0)
    reference = identity_significance(z, identity, SCHEMA, labels, full, only_fold_0, n_bootstrap=0)
    for name in SCHEMA.names:
        assert left_out[name].value == pytest.approx(reference[name].value, rel=1e-6), name


def test_fit_directions_needs_two_identities():
    z, identity, labels, _, _ = _world()
    rows = (identity == 0).nonzero().squeeze(1)
    with pytest.raises(CounterfactualError, match="two identities"):
        fit_directions(z[rows], identity, labels, SCHEMA, rows)


def test_the_pass_takes_the_decoded_path_where_its_decoders_train_and_the_latent_one_elsewhere():
    z, identity, labels, _, _ = _world(n_ids=24, per_id=4)
    g = torch.Generator().manual_seed(3)
    images = torch.rand(z.shape[0], 3, SIDE, SIDE, generator=g)
    images[:, 0] += 0.5 * labels["mark"][:, None, None].float()  # a face feature the model and decoder can see
    probe = TensorProbeSet(images.clamp(0, 1), SCHEMA, identity, labels, source="decoded test probe")
    plan = plan_pass(probe, AnalysisConfig(n_bootstrap=0, fmr=0.05), on_error="raise", decoder=True)
    assert plan.counterfactuals == "decoded" and any("decoded counterfactuals" in n for n in plan.notices)
    stages = TwoStage(probe, TwoStageConfig(steps=5, samples=1, n_bootstrap=0, estimator="trained"))
    report = run_pass(_model(), probe, plan, two_stage=stages, announce=False).completed
    assert report.counterfactuals == "decoded" and report.recovery is not None
    assert set(report.significance) == set(SCHEMA.names)
    assert report.counterfactual_budget["scaled"]  # a rendering path: the study is scaled to the probe set
    without = run_pass(_model(), probe, plan, announce=False).completed  # a pass that trains no decoder
    assert without.counterfactuals == "latent" and not without.warnings
    with pytest.raises(CounterfactualError, match="--two-stage"):
        plan_pass(probe, AnalysisConfig(), counterfactuals="decoded")
    assert plan_pass(probe, AnalysisConfig()).counterfactuals == "latent"  # auto without a decoder


def test_the_decoded_budget_counts_the_unedited_renderings():
    exact = counterfactual_budget(1000, 19, "exact")
    decoded = counterfactual_budget(1000, 19, "decoded")
    assert decoded.scaled and decoded.rows < exact.rows
    faces = lambda b, n: n * (b.rows + 2 * b.error_pairs)  # noqa: E731 - changed faces of a study over n renderings
    assert faces(decoded, 20) <= 0.75 * 1000


def test_the_strip_shows_both_real_faces_their_decodings_and_the_edited_decodings_at_s_plus_delta():
    z, identity, labels, _, _ = _world()
    embed, folds, identity = _embedder(labels)
    images = torch.rand(z.shape[0], 3, SIDE, SIDE, generator=torch.Generator().manual_seed(9))
    probe = TensorProbeSet(images, SCHEMA, identity, labels, source="strip test probe")
    errors = decision_errors(z, identity, 0.05)
    explained = explain_errors(errors, z, SCHEMA, labels, embed, max_pairs=3)
    rows = embed.strip_rows(explained, probe, count=3, changes=2)
    assert 0 < len(rows) <= 3
    by_pair = {(e.first, e.second): e for e in explained}
    for row in rows:
        match = [e for e in explained if torch.equal(probe.images(torch.tensor([e.first]))[0], row["first"])
                 and torch.equal(probe.images(torch.tensor([e.second]))[0], row["second"])]
        assert len(match) == 1
        e = by_pair[(match[0].first, match[0].second)]
        (_, decoded_a), (_, decoded_b) = row["decoded"]
        for index, shown in ((e.first, decoded_a), (e.second, decoded_b)):
            fold = int(folds[index])
            assert torch.equal(shown, embed.decoders[fold].render_latent(embed.codes(fold)[[index]])[0])
        top = [(k, d) for k, d in e.ranked() if d != 0.0][:2]
        assert [name for name, _, _ in row["changed"]] == [k for k, _ in top]
        for (_, _, score), (_, delta) in zip(row["changed"], top):
            assert score == pytest.approx(e.score + delta)


def test_the_moves_heads_read_the_planted_mark_and_an_unknown_penalty_choice_is_refused():
    """The counterfactual heads (0/1 columns' penalty chosen by squared error) point along the planted mark and read it
    on held-out identities; a misspelled penalty choice is a one-line error, not a silent other choice. (Why these heads
    and not the leakage heads is measured by benchmarks/groundtruth.py.)"""
    from frx_plugin.counterfactual import counterfactual_heads
    from frx_plugin.errors import AnalysisError
    from frx_plugin.leakage import analyze_embeddings

    z, identity, labels, u, _ = _world()
    directions, _, held_out = counterfactual_heads(z, identity, labels, SCHEMA)
    mark = directions[0].double()
    assert held_out["mark"] > 0.9
    assert float(torch.nn.functional.cosine_similarity(mark, u.double(), dim=0)) > 0.9
    with pytest.raises(AnalysisError, match="discrete_penalty must be 'logistic' or 'squared_error', got 'squared'"):
        analyze_embeddings(z, identity, labels, SCHEMA, n_bootstrap=0, discrete_penalty="squared")
