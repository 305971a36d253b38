"""The analysis runs on the device of the embeddings it is given.

The explicit-device check: every call runs once as it is and once inside ``with torch.device("meta")``.
The default device then is meta, so a tensor factory without an explicit device makes a meta tensor,
which fails when it meets the real (CPU) tensors or when its value is read; the two results must be
equal. With CUDA, the same analysis on ``embeddings.cuda()`` must give the CPU record within 1e-5.

Where the results live: the report's numbers are Python scalars, ``report.tensors`` are on the CPU
(small, for the record and the history) whatever the embeddings' device; the tensors of
:class:`~frx_plugin.verification.DecisionErrors` stay on the embeddings' device.
"""

from __future__ import annotations

import math

import pytest
import torch

from frx_plugin.collectives import SingleProcess, gather_rows, merge_ranks
from frx_plugin.counterfactual.measures import counterfactual_embedder, counterfactual_measures
from frx_plugin.leakage import analyze_embeddings
from frx_plugin.leakage.streaming import analyze_stream
from frx_plugin.model import ModelAdapter, embed_probe_set
from frx_plugin.models import ResidualFaceNet
from frx_plugin.passes import AnalysisConfig, analyze_probe, probe_leakage
from frx_plugin.probe import RelabelledProbeSet, select_attributes
from frx_plugin.randomness import poisson_bootstrap_weights
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.verification import (
    decision_errors,
    listed_pair_verification,
    verification,
)

ATTRIBUTES = ("face_shape", "hair_colour", "age", "yaw", "smile", "glasses")
RIDGE = AnalysisConfig(n_folds=4, n_bootstrap=16, min_class_samples=0)
LOGISTIC = AnalysisConfig(n_folds=4, n_bootstrap=16, min_class_samples=0, head="logistic")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def world():
    """A small synthetic probe set with missing labels (one attribute of each kind), and its embeddings."""
    probe = select_attributes(SyntheticProbeSet(n_identities=60, images_per_identity=4, seed=0, size=32), ATTRIBUTES)
    labels = {name: value.clone() for name, value in probe.labels.items()}
    labels["smile"][::7] = -1
    labels["hair_colour"][3::11] = -1
    labels["age"][5::9] = math.nan
    probe = RelabelledProbeSet(probe, probe.schema, labels)
    torch.manual_seed(0)
    model = ResidualFaceNet(embedding_dim=32, widths=(8, 16, 16, 32), input_size=32).eval()
    embeddings = embed_probe_set(ModelAdapter(model, transform="unit"), probe)
    return probe, embeddings


def on_meta_default(function, *args, **kwargs):
    """``function(*args, **kwargs)`` on the meta default device: a factory without an explicit device makes a meta tensor."""
    with torch.device("meta"):
        return function(*args, **kwargs)


def both(function, *args, **kwargs):
    """``function(*args, **kwargs)`` on the meta default device and as it is."""
    return on_meta_default(function, *args, **kwargs), function(*args, **kwargs)


def assert_same_report(one, two):
    assert one.to_record() == two.to_record()
    assert one.tensors.keys() == two.tensors.keys()
    for name, tensor in one.tensors.items():
        assert tensor.device == two.tensors[name].device == torch.device("cpu")
        torch.testing.assert_close(tensor, two.tensors[name], rtol=0, atol=0, equal_nan=True)


# --------------------------------------------------------------------------- the explicit-device check


@pytest.mark.parametrize("head", ["ridge", "logistic"])
def test_analyze_embeddings_makes_no_tensor_on_the_default_device(world, head):
    probe, z = world
    got, expected = both(analyze_embeddings, z, probe.identity, probe.labels, probe.schema, n_folds=4, n_bootstrap=16, head=head,
                         min_class_samples=0)
    assert any(math.isfinite(a.value) for a in expected.leakage)
    assert_same_report(got, expected)


def test_analyze_embeddings_with_given_folds_on_the_meta_default(world):
    probe, z = world
    folds = (probe.identity % 3).flip(0)  # unsorted rows: the rows are grouped by fold first
    assert_same_report(*both(analyze_embeddings, z, probe.identity, probe.labels, probe.schema, folds=folds, n_bootstrap=8))


def test_streaming_probe_leakage_on_the_meta_default(world):
    probe, z = world
    indices = torch.arange(1, len(probe), 2)  # one shard: the streaming path with indices
    got, expected = both(probe_leakage, z[indices], probe, RIDGE, indices=indices)
    assert any(math.isfinite(a.value) for a in expected.leakage)
    assert_same_report(got, expected)


def test_analyze_stream_in_chunks_on_the_meta_default(world):
    probe, z = world

    def chunks():
        return [(z[i : i + 50], probe.identity[i : i + 50], {k: v[i : i + 50] for k, v in probe.labels.items()})
                for i in range(0, len(probe), 50)]

    assert_same_report(*both(analyze_stream, chunks, probe.identity, probe.schema, n_folds=4, n_bootstrap=8, n_bins=64))


def test_analyze_probe_logistic_on_the_meta_default(world):
    probe, z = world
    got, expected = both(analyze_probe, z, probe, LOGISTIC)
    assert expected.head == "logistic" and expected.verification is not None
    assert_same_report(got, expected)


def test_analyze_probe_ridge_on_the_meta_default(world):
    probe, z = world
    assert_same_report(*both(analyze_probe, z, probe, RIDGE))


def test_verification_on_the_meta_default(world):
    probe, z = world
    for fmr in (1e-3, 1e-2, 0.2):
        got, expected = both(verification, z, probe.identity, fmr)
        assert got == expected
    pairs = torch.stack([torch.arange(0, 200, 2), torch.arange(1, 201, 2).flip(0)], 1)
    pairs[::5, 1] = pairs[::5, 0] + 1  # some genuine pairs (images of an identity are neighbours)
    got, expected = both(listed_pair_verification, z, probe.identity, pairs, 0.1)
    assert got == expected and expected.genuine_pairs > 0


def test_decision_errors_on_the_meta_default(world):
    probe, z = world
    got, expected = both(decision_errors, z, probe.identity, 1e-2)
    assert got.verification == expected.verification
    assert expected.false_match.numel() and expected.false_non_match.numel()
    for name in ("false_non_match", "false_non_match_score", "false_match", "false_match_score"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name


def _counterfactual_study(probe, z, config):
    """Significance and error attribution on the latent path, as a pass makes them after its leakage."""
    report = analyze_probe(z, probe, config)
    embed, attributes, _ = counterfactual_embedder(None, z, probe.labels, probe.schema, report, "latent", identity=probe.identity)
    counterfactual_measures(z, probe, report, AnalysisConfig(n_bootstrap=16, fmr=1e-2), embed, path="latent",
                            significance_samples=24, max_error_pairs=4, attributes=attributes)
    return report


def test_counterfactual_scoring_on_the_meta_default(world):
    probe, z = world
    got, expected = both(_counterfactual_study, probe, z, RIDGE)
    assert expected.significance and any(expected.error_attribution["all"].values())
    assert got.significance == expected.significance
    assert got.error_attribution == expected.error_attribution


def test_bootstrap_weights_on_a_device_are_the_cpu_draw():
    identity = torch.tensor([5, 3, 5, 9, 3, 3])
    cpu = poisson_bootstrap_weights(identity, 7, 12, first_replicate=3)
    moved = on_meta_default(poisson_bootstrap_weights, identity, 7, 12, first_replicate=3, device="cpu")
    assert moved.device == torch.device("cpu") and torch.equal(moved, cpu)
    meta = poisson_bootstrap_weights(identity, 7, 12, first_replicate=3, device="meta")
    assert meta.device == torch.device("meta") and meta.shape == cpu.shape and meta.dtype == torch.float64


# --------------------------------------------------------------------------- collectives keep the device


def test_single_process_gather_rows_is_float32_on_the_input_device():
    rows = torch.randn(5, 3, dtype=torch.float64)
    gathered = gather_rows(SingleProcess(), rows, 5)
    assert gathered.dtype == torch.float32 and gathered.device == rows.device
    torch.testing.assert_close(gathered, rows.float(), rtol=0, atol=0)
    # a device other than the collectives' own stays where it is
    meta = gather_rows(SingleProcess("cpu"), torch.empty(5, 3, dtype=torch.float16, device="meta"), 5)
    assert meta.device == torch.device("meta") and meta.dtype == torch.float32 and meta.shape == (5, 3)


def test_single_process_merge_ranks_keeps_dtype_and_device():
    local = torch.tensor([[1.0, math.nan], [math.nan, 4.0]], dtype=torch.float64)
    merged = merge_ranks(SingleProcess(), local)
    assert merged.dtype == torch.float64 and merged.device == local.device
    torch.testing.assert_close(merged, local, equal_nan=True)
    meta = merge_ranks(SingleProcess("cpu"), torch.empty(2, 2, device="meta"))
    assert meta.device == torch.device("meta") and meta.dtype == torch.float32


class _TwoRanks:
    """Rank 0 of two; the other rank's tensors are given in the order of the collectives."""

    rank, world_size, device = 0, 2, torch.device("cpu")

    def __init__(self, *peer: torch.Tensor) -> None:
        self.peer = list(peer)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([tensor.to(self.device), self.peer.pop(0).to(self.device, tensor.dtype)])

    def any(self, flag: bool) -> bool:
        return flag

    def barrier(self) -> None:
        return None


def test_gather_rows_and_merge_ranks_across_ranks():
    full = torch.arange(15, dtype=torch.float64).view(5, 3)
    peer = torch.zeros(3, 3)
    peer[:2] = full[1::2].float()
    gathered = gather_rows(_TwoRanks(torch.tensor([3.0]), peer), full[0::2], 5)
    assert gathered.dtype == torch.float32 and gathered.device == full.device
    assert torch.equal(gathered, full.float())
    mine = torch.tensor([1.0, math.nan, math.nan], dtype=torch.float64)
    merged = merge_ranks(_TwoRanks(torch.tensor([math.nan, 2.0, math.nan])), mine)
    assert merged.dtype == torch.float64
    torch.testing.assert_close(merged, torch.tensor([1.0, 2.0, math.nan], dtype=torch.float64), equal_nan=True)


# --------------------------------------------------------------------------- CUDA against the CPU


def assert_close_record(one, two, tol=1e-5):
    """Every measure of two reports within ``tol`` (NaN where the other is NaN), the rest equal."""
    a, b = one.to_record(), two.to_record()
    numbers = ("value", "low", "high", "leakage", "leakage_low", "leakage_high")

    def close(u, v, where):  # a record writes NaN as None
        assert (u is None) == (v is None), where
        if u is not None:
            assert u == pytest.approx(v, abs=tol), where

    for x, y in zip(a.pop("attributes"), b.pop("attributes"), strict=True):
        for key in numbers:
            close(x.pop(key), y.pop(key), (x["name"], key))
        extra_x, extra_y = x.pop("extra"), y.pop("extra")
        assert extra_x.keys() == extra_y.keys()
        for key in extra_x:
            close(extra_x[key], extra_y[key], (x["name"], key))
        assert x == y
    va, vb = a.pop("verification"), b.pop("verification")
    assert (va is None) == (vb is None)
    if va is not None:
        for key in ("tar", "threshold"):
            assert va.pop(key) == pytest.approx(vb.pop(key), abs=tol)
        assert va == vb
    a.pop("timing"), b.pop("timing")
    assert a == b
    for name, tensor in one.tensors.items():
        assert tensor.device == torch.device("cpu") and two.tensors[name].device == torch.device("cpu")
        torch.testing.assert_close(tensor, two.tensors[name], rtol=tol, atol=tol, equal_nan=True)


@needs_cuda
@pytest.mark.parametrize("config", [RIDGE, LOGISTIC], ids=["ridge", "logistic"])
def test_cuda_analysis_equals_the_cpu_record(world, config):
    probe, z = world
    cpu = analyze_probe(z, probe, config)
    cuda = analyze_probe(z.cuda(), probe, config)
    assert_close_record(cuda, cpu)


@needs_cuda
def test_cuda_streaming_and_in_memory_paths_equal_the_cpu_record(world):
    probe, z = world
    indices = torch.arange(0, len(probe), 2)
    assert_close_record(probe_leakage(z[indices].cuda(), probe, RIDGE, indices=indices),
                        probe_leakage(z[indices], probe, RIDGE, indices=indices))

    def analysis(x):
        return analyze_embeddings(x, probe.identity, probe.labels, probe.schema, n_folds=4, n_bootstrap=16)

    assert_close_record(analysis(z.cuda()), analysis(z))


@needs_cuda
def test_cuda_decision_errors_stay_on_the_device(world):
    probe, z = world
    cpu = decision_errors(z, probe.identity, 1e-2)
    cuda = decision_errors(z.cuda(), probe.identity, 1e-2)
    assert cuda.verification.tar == pytest.approx(cpu.verification.tar, abs=1e-5)
    assert cuda.tau == pytest.approx(cpu.tau, abs=1e-5)
    assert cuda.false_match.device.type == "cuda" and cuda.false_non_match.device.type == "cuda"
    # the same pairs (their order follows scores that may round differently on the device)
    assert sorted(map(tuple, cuda.false_match.tolist())) == sorted(map(tuple, cpu.false_match.tolist()))
    assert sorted(map(tuple, cuda.false_non_match.tolist())) == sorted(map(tuple, cpu.false_non_match.tolist()))


@needs_cuda
def test_cuda_collectives_keep_the_device():
    rows = torch.randn(4, 3, device="cuda", dtype=torch.float64)
    gathered = gather_rows(SingleProcess("cuda"), rows, 4)
    assert gathered.device == rows.device and gathered.dtype == torch.float32
    assert merge_ranks(SingleProcess("cpu"), rows).device == rows.device


@needs_cuda
def test_cuda_counterfactual_scoring_equals_the_cpu_record(world):
    probe, z = world
    on_cpu, on_cuda = _counterfactual_study(probe, z, RIDGE), _counterfactual_study(probe, z.cuda(), RIDGE)
    for name, estimate in on_cpu.significance.items():
        for key, value in estimate.items():
            assert on_cuda.significance[name][key] == pytest.approx(value, abs=1e-5), (name, key)
    assert on_cuda.error_attribution == on_cpu.error_attribution
