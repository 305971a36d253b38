"""Verification (frx_plugin.verification) against brute force over all pairs, and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import frx_plugin.verification as verification_module
from frx_plugin.errors import AnalysisError
from frx_plugin.verification import equal_error_rate, pair_scores, verification


def brute_force(z: np.ndarray, identity: np.ndarray, fmr: float):
    """All pairs i < j; τ = the smallest impostor score with at most a fraction fmr of impostors above it."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    genuine, impostor = [], []
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            (genuine if identity[i] == identity[j] else impostor).append(float(z[i] @ z[j]))
    genuine, impostor = np.array(genuine), np.array(impostor)
    candidates = np.sort(impostor)
    threshold = next(t for t in candidates if np.mean(impostor > t) <= fmr)
    return genuine, impostor, threshold, float(np.mean(genuine > threshold))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fmr", [1e-3, 0.01, 0.05, 0.3])
def test_matches_brute_force(fmr, dtype):
    rng = np.random.default_rng(0)
    identity = rng.integers(0, 9, 70)
    centres = rng.normal(size=(9, 16))
    z = (centres[identity] + rng.normal(size=(70, 16)) * 1.2).astype(np.float32)
    genuine, impostor, threshold, tar = brute_force(z.astype(np.float64), identity, fmr)
    result = verification(torch.tensor(z).to(dtype), torch.tensor(identity), fmr=fmr)
    assert result.genuine_pairs == len(genuine) and result.impostor_pairs == len(impostor)
    # float32 embeddings are scored in float32 (cosines to ~1e-7)
    assert result.threshold == pytest.approx(threshold, abs=1e-12 if dtype == torch.float64 else 1e-6)
    assert result.tar == pytest.approx(tar, abs=1e-12)
    assert result.fmr == fmr
    assert np.mean(impostor > threshold) <= fmr < np.mean(impostor >= threshold)
    assert 0 < result.tar < 1


def test_ties_at_the_threshold_follow_the_convention():
    # quantised embeddings: many equal scores; accept strictly above τ
    rng = np.random.default_rng(1)
    identity = np.repeat(np.arange(6), 5)
    z = np.eye(4)[rng.integers(0, 4, 30)] + np.eye(4)[identity % 4]
    genuine, impostor, threshold, tar = brute_force(z, identity, 0.2)
    result = verification(torch.tensor(z), torch.tensor(identity), fmr=0.2)
    assert result.threshold == pytest.approx(threshold, abs=1e-12)
    assert result.tar == pytest.approx(tar, abs=1e-12)


def test_blocks_give_the_same_answer(monkeypatch):
    rng = np.random.default_rng(2)
    identity = torch.tensor(rng.integers(0, 12, 150))
    z = torch.tensor(rng.normal(size=(150, 8)))
    whole = verification(z, identity, fmr=0.01)
    monkeypatch.setattr(verification_module, "_BLOCK_ENTRIES", 7 * 150)  # 7 rows per block
    blocked = verification(z, identity, fmr=0.01)
    assert blocked.tar == whole.tar and blocked.threshold == pytest.approx(whole.threshold, abs=1e-12)
    genuine, impostor = pair_scores(z, identity)
    assert genuine.numel() == whole.genuine_pairs and impostor.numel() == whole.impostor_pairs


def test_perfectly_separated_identities_have_tar_one():
    identity = torch.arange(8).repeat_interleave(6)
    g = torch.Generator().manual_seed(0)
    z = torch.eye(8)[identity] + 0.01 * torch.randn(48, 8, generator=g)
    result = verification(torch.nn.functional.normalize(z, dim=1), identity, fmr=1e-3)
    assert result.tar == 1.0
    assert result.genuine_pairs == 8 * 15 and result.impostor_pairs == 48 * 47 // 2 - 8 * 15
    assert abs(result.threshold) < 0.1


def test_identical_embeddings_have_tar_zero():
    identity = torch.arange(5).repeat_interleave(3)
    result = verification(torch.ones(15, 4), identity)
    assert result.tar == 0.0 and result.threshold == pytest.approx(1.0)


def test_the_one_pass_bound_and_its_fallback_give_the_exact_threshold(monkeypatch):
    rng = np.random.default_rng(4)
    identity = rng.integers(0, 40, 400)
    z = rng.normal(size=(40, 12))[identity] + rng.normal(size=(400, 12))
    genuine, impostor, threshold, tar = brute_force(z, identity, 1e-3)
    fast = verification(torch.tensor(z), torch.tensor(identity), fmr=1e-3)
    # a bound above τ (as a bad estimate would give) keeps too few scores: the fallback pass decides
    monkeypatch.setattr(verification_module, "_lower_bound", lambda *args: 0.999)
    slow = verification(torch.tensor(z), torch.tensor(identity), fmr=1e-3)
    for result in (fast, slow):
        assert result.threshold == pytest.approx(threshold, abs=1e-12) and result.tar == pytest.approx(tar, abs=1e-12)


def test_five_thousand_images_fit():
    g = torch.Generator().manual_seed(0)
    identity = torch.arange(5000) // 10
    z = torch.nn.functional.normalize(torch.randn(5000, 64, generator=g), dim=1)
    result = verification(z, identity, fmr=1e-3)
    assert result.impostor_pairs == 5000 * 4999 // 2 - 500 * 45
    assert result.tar == pytest.approx(1e-3, abs=1e-3)  # random embeddings: genuine look like impostors


def test_errors():
    z = torch.randn(6, 4)
    with pytest.raises(AnalysisError, match="no genuine pairs"):
        verification(z, torch.arange(6))
    with pytest.raises(AnalysisError, match="no impostor pairs"):
        verification(z, torch.zeros(6, dtype=torch.long))
    with pytest.raises(AnalysisError, match="identity has 5 entries but embeddings have 6 rows"):
        verification(z, torch.tensor([0, 0, 1, 1, 2]))
    bad = z.clone()
    bad[2, 1] = math.nan
    with pytest.raises(AnalysisError, match="NaN or infinity in 1 of 6 rows"):
        verification(bad, torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.raises(AnalysisError, match="fmr must be a number in"):
        verification(z, torch.tensor([0, 0, 1, 1, 2, 2]), fmr=1.5)


def test_equal_error_rate_against_brute_force():
    rng = np.random.default_rng(3)
    genuine = rng.normal(1.0, 1.0, 200)
    impostor = rng.normal(-1.0, 1.0, 300)
    eer, threshold = equal_error_rate(torch.tensor(genuine), torch.tensor(impostor))
    best = min(
        (abs(np.mean(impostor > t) - np.mean(genuine <= t)), 0.5 * (np.mean(impostor > t) + np.mean(genuine <= t)), t)
        for t in np.concatenate([genuine, impostor])
    )
    assert eer == pytest.approx(best[1]) and threshold == pytest.approx(best[2])
    # two unit Gaussians 2 apart: EER = Φ(−1)
    assert eer == pytest.approx(0.5 * (1 + math.erf(-1 / math.sqrt(2))), abs=0.04)
