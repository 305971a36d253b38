"""The two-stage path: the decoder, recovery significance R_k, spread, and the pass on the synthetic world."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frx_plugin.attributes import Attribute
from frx_plugin.errors import DecoderDiverged, DecoderError
from frx_plugin.interfaces import DecoderTask
from frx_plugin.two_stage import (
    direct_readings,
    reading_errors,
    recovery_significance,
    sample_spread,
    within_fold_pairs,
)
from frx_plugin.two_stage.decoders import ConvFaceDecoder


def _known_world(n: int, generator: torch.Generator, dim: int = 6, side: int = 16):
    """Embeddings z on the sphere and images x = sigmoid(Σ_j 2 z_j B_j) for fixed smooth basis images B_j."""
    basis = F.avg_pool2d(torch.randn(dim, 3, side, side, generator=torch.Generator().manual_seed(99)), 5, 1, 2) * 3
    z = F.normalize(torch.randn(n, dim, generator=generator), dim=1)
    return z, torch.sigmoid(torch.einsum("nd,dchw->nchw", 2 * z, basis))


# --------------------------------------------------------------------------- the decoder


def test_decoder_learns_a_known_map_on_held_out_embeddings():
    g = torch.Generator().manual_seed(0)
    z, x = _known_world(500, g)
    z_test, x_test = _known_world(200, g)
    decoder = ConvFaceDecoder(6, (3, 16, 16), candidates=1, lr=3e-3)
    fit = decoder.fit(DecoderTask(z, x, steps=400, seed=0))
    assert fit.pixel_loss_end < 0.25 * fit.pixel_loss_start
    decoded = decoder.decode(z_test, samples=1)[:, 0]
    mse = float((decoded - x_test).pow(2).mean())
    baseline = float((x_test - x.mean(0)).pow(2).mean())  # the best image that ignores z
    assert mse < 0.1 * baseline


def test_whitened_inputs_reach_an_attribute_kept_in_a_direction_of_small_variance():
    # a trained recogniser keeps nuisance attributes in directions of tiny variance (what the probes read);
    # the decoder whitens its input so that such a direction drives the image as strongly as the others
    g = torch.Generator().manual_seed(0)

    def world(n):
        c = torch.randn(n, 6, generator=g)
        z = torch.cat([c[:, :5], 3e-2 * c[:, 5:]], 1)
        x = torch.sigmoid(2 * c[:, 5]).view(-1, 1, 1, 1).expand(n, 3, 16, 16).clone()
        return z, x, c[:, 5]

    z, x, _ = world(400)
    z_test, _, attribute = world(200)
    correlation = {}
    for whiten in (True, False):
        decoder = ConvFaceDecoder(6, (3, 16, 16), candidates=1, whiten_inputs=whiten)
        decoder.fit(DecoderTask(z, x, steps=200))
        brightness = decoder.decode(z_test, 1)[:, 0].mean((1, 2, 3))
        correlation[whiten] = float(torch.corrcoef(torch.stack([brightness, attribute]))[0, 1])
    assert correlation[True] > 0.9
    assert correlation[True] > correlation[False] + 0.1


def test_decoder_samples_are_deterministic_in_the_seed_and_differ_between_draws():
    g = torch.Generator().manual_seed(1)
    z, x = _known_world(64, g)
    decoder = ConvFaceDecoder(6, (3, 16, 16), candidates=4)
    decoder.fit(DecoderTask(z, x, steps=20))
    a, b, c = decoder.decode(z[:5], 3, seed=7), decoder.decode(z[:5], 3, seed=7), decoder.decode(z[:5], 3, seed=8)
    assert a.shape == (5, 3, 3, 16, 16) and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float((a[:, 0] - a[:, 1]).abs().max()) > 0  # the noise input reaches the image


def test_identity_loss_pulls_decodings_towards_z_and_never_touches_the_models_gradients():
    # faces whose identity signal is faint beside pixel noise: the pixel loss alone learns it slowly
    g = torch.Generator().manual_seed(2)
    basis = F.avg_pool2d(torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(99)), 5, 1, 2) * 3
    code = F.normalize(torch.randn(300, 6, generator=g), dim=1)
    x = (0.5 + 0.03 * torch.einsum("nd,dchw->nchw", code, basis) + 0.15 * torch.randn(300, 3, 16, 16, generator=g)).clamp(0, 1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 6, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(basis.reshape(6, -1))

    def embed(images):
        return F.normalize(model(images - 0.5), dim=1)

    with torch.no_grad():
        z = embed(x)  # the recognition model's embeddings of the faces
    plain = ConvFaceDecoder(6, (3, 16, 16), candidates=1, identity_weight=0.0)
    with_identity = ConvFaceDecoder(6, (3, 16, 16), candidates=1, identity_weight=5.0)
    with_identity.load_state_dict(plain.state_dict())
    plain.fit(DecoderTask(z, x, None, steps=50, seed=3))
    fit = with_identity.fit(DecoderTask(z, x, embed, steps=50, seed=3))
    assert fit.identity_loss_end < 0.5 * fit.identity_loss_start
    assert all(p.grad is None for p in model.parameters())

    def cosine(decoder):
        with torch.no_grad():
            return float(F.cosine_similarity(embed(decoder.decode(z, 1)[:, 0]), z).mean())

    assert cosine(with_identity) > cosine(plain) + 0.05


def test_second_fit_warm_starts_from_the_first():
    g = torch.Generator().manual_seed(3)
    z, x = _known_world(300, g)
    decoder = ConvFaceDecoder(6, (3, 16, 16), candidates=1)
    first = decoder.fit(DecoderTask(z, x, steps=150))
    second = decoder.fit(DecoderTask(z, x, steps=10))
    assert second.pixel_loss_start < 0.5 * first.pixel_loss_start
    fresh = ConvFaceDecoder(6, (3, 16, 16), candidates=1)
    fresh.load_state_dict(decoder.state_dict())
    assert torch.equal(fresh.decode(z[:4], 2, seed=1), decoder.decode(z[:4], 2, seed=1))


def test_diverging_fit_raises_and_puts_the_weights_back():
    g = torch.Generator().manual_seed(4)
    z, x = _known_world(40, g)
    decoder = ConvFaceDecoder(6, (3, 16, 16))
    before = decoder.state_dict()
    bad = x.clone()
    bad[:] = math.nan
    with pytest.raises(DecoderDiverged, match="NaN|nan"):
        decoder.fit(DecoderTask(z, bad, steps=5))
    after = decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_decoder_rejects_shapes_it_cannot_make_or_take():
    with pytest.raises(DecoderError, match="multiple of 16"):
        ConvFaceDecoder(8, (3, 40, 40))
    decoder = ConvFaceDecoder(8, (3, 16, 16))
    with pytest.raises(DecoderError, match=r"\(B, 8\)"):
        decoder.decode(torch.zeros(2, 5))
    with pytest.raises(DecoderError, match="output_shape"):
        decoder.fit(DecoderTask(torch.zeros(4, 8), torch.zeros(4, 3, 32, 32)))


def test_conv_decoder_makes_the_face_sizes():
    for side in (64, 112):
        decoder = ConvFaceDecoder(16, (3, side, side))
        assert decoder.decode(F.normalize(torch.randn(2, 16), dim=1), 2).shape == (2, 2, 3, side, side)


# --------------------------------------------------------------------------- R_k, spread, pairs


def _reference_r(kind: str, target, readings, baseline, weights):
    """R from a plain loop (numpy), the definition in docs/architecture.md."""
    num = den = total = 0.0
    for i in range(len(target)):
        if (kind != "continuous" and target[i] < 0) or (kind == "continuous" and np.isnan(target[i])):
            continue
        if kind == "continuous":
            e, b = np.mean(np.abs(readings[i] - target[i])), np.mean(np.abs(baseline[i] - target[i]))
        else:
            e, b = np.mean(readings[i] != target[i]), np.mean(baseline[i] != target[i])
        num += weights[i] * e
        den += weights[i] * b
        total += weights[i]
    return 1 - (num / total) / (den / total)


@pytest.mark.parametrize("kind", ["binary", "categorical", "continuous"])
def test_recovery_significance_matches_the_definition(kind):
    g = torch.Generator().manual_seed(5)
    n, s = 300, 3
    attribute = Attribute("a", kind, classes=("x", "y", "z") if kind == "categorical" else None)
    if kind == "continuous":
        target = torch.randn(n, generator=g)
        target[::17] = math.nan
        readings = target[:, None] + 0.5 * torch.randn(n, s, generator=g)
        baseline = torch.randn(n, s, generator=g)
    else:
        classes = 2 if kind == "binary" else 3
        target = torch.randint(0, classes, (n,), generator=g)
        target[::17] = -1
        readings = torch.where(torch.rand(n, s, generator=g) < 0.8, target.clamp_min(0)[:, None], torch.randint(0, classes, (n, s), generator=g))
        baseline = torch.randint(0, classes, (n, s), generator=g)
    weights = torch.poisson(torch.ones(4, n), generator=g).double()
    got = recovery_significance(attribute, target, readings, baseline, weights)
    for r in range(4):
        want = _reference_r(kind, target.numpy(), readings.double().numpy(), baseline.double().numpy(), weights[r].numpy())
        assert float(got[r]) == pytest.approx(want, rel=1e-9, abs=1e-12)
    point = recovery_significance(attribute, target, readings, baseline)
    assert float(point) == pytest.approx(_reference_r(kind, target.numpy(), readings.double().numpy(), baseline.double().numpy(), np.ones(n)))


def test_recovery_significance_limits():
    attribute = Attribute("g", "binary")
    target = torch.tensor([0, 1, 1, 0, 1, 0])
    assert float(recovery_significance(attribute, target, target, 1 - target)) == 1.0  # perfect against always wrong
    assert float(recovery_significance(attribute, target, 1 - target, 1 - target)) == 0.0  # no better than the other face
    assert math.isnan(float(recovery_significance(attribute, target, target, target)))  # the baseline never errs
    readings = torch.tensor([[0.0, math.nan]] * 6)  # a missing reading (a failed fold) leaves the face out
    assert torch.isnan(reading_errors(attribute, target, readings)).all()


def test_sample_spread():
    binary = Attribute("g", "binary")
    readings = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    assert sample_spread(binary, readings) == pytest.approx((0.5 + 0.0 + 0.25) / 3)
    continuous = Attribute("c", "continuous")
    values = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert sample_spread(continuous, values, scale=2.0) == pytest.approx(float(torch.tensor([1.0, 3.0]).std()) / 2 / 2)


def test_within_fold_pairs_pair_another_identity_of_the_same_fold():
    identity = torch.arange(40).repeat_interleave(5)
    folds = identity % 2
    pairs = within_fold_pairs(identity, folds, seed=3)
    assert torch.equal(folds[pairs], folds)
    assert bool((identity[pairs] != identity).all())
    assert torch.equal(pairs, within_fold_pairs(identity, folds, seed=3))
    lonely = within_fold_pairs(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 1]))
    assert lonely[:2].tolist() == [-1, -1]


def test_direct_readings_recover_a_linear_attribute_and_not_a_random_one():
    from frx_plugin.attributes import AttributeSchema
    from frx_plugin.leakage import identity_folds

    g = torch.Generator().manual_seed(6)
    identity = torch.arange(200).repeat_interleave(4)
    z = F.normalize(torch.randn(800, 16, generator=g), dim=1)
    labels = {
        "linear": (z[:, 0] * 10).float(),
        "signed": (z[:, 1] > 0).long(),
        "noise": torch.randint(0, 2, (800,), generator=g),
    }
    schema = AttributeSchema([Attribute("linear", "continuous"), Attribute("signed", "binary"), Attribute("noise", "binary")])
    folds = identity_folds(identity, 2, seed=0)
    readings = direct_readings(z, labels, schema, folds)
    pairs = within_fold_pairs(identity, folds)
    r = {name: float(recovery_significance(schema[name], labels[name], readings[name], readings[name][pairs])) for name in labels}
    assert r["linear"] > 0.95 and r["signed"] > 0.8
    assert abs(r["noise"]) < 0.15
