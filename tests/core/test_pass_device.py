"""A whole pass on the model's device: CUDA gives the CPU's record (skipped without a GPU; CI has none)."""

from __future__ import annotations

import copy

import pytest
import torch

from frx_plugin.models import ResidualFaceNet
from frx_plugin.passes import AnalysisConfig, plan_pass, run_pass
from frx_plugin.synthetic import SyntheticProbeSet
from tests.records import assert_same_measures

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def full_float32():
    """The model's own forward in full float32 on the GPU too (no TF32), so the two devices embed alike."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@cuda
@pytest.mark.parametrize("head", ["ridge", "logistic"])
def test_a_cuda_pass_gives_the_cpu_record_within_1e_5(head, full_float32):
    probe = SyntheticProbeSet(n_identities=60, images_per_identity=4, seed=0, size=32, first_identity=9_000)
    torch.manual_seed(0)
    model = ResidualFaceNet(embedding_dim=32, widths=(8, 16, 16, 32), input_size=32).eval()
    plan = plan_pass(probe, AnalysisConfig(n_bootstrap=50, head=head), counterfactuals="exact",
                              significance_samples=32, max_error_pairs=4, on_error="raise")
    on_cpu = run_pass(model, probe, plan).report
    on_cuda = run_pass(copy.deepcopy(model).cuda(), probe, plan).report
    assert_same_measures(on_cpu.to_record(), on_cuda.to_record(), tol=1e-5)
    assert on_cuda.counterfactuals == "exact"


@cuda
def test_a_cuda_pass_holds_no_gpu_memory_afterwards_and_computes_on_the_gpu():
    probe = SyntheticProbeSet(n_identities=60, images_per_identity=4, seed=0, size=32, first_identity=9_000)
    torch.manual_seed(0)
    model = ResidualFaceNet(embedding_dim=32, widths=(8, 16, 16, 32), input_size=32).cuda().eval()
    plan = plan_pass(probe, AnalysisConfig(n_bootstrap=50), counterfactuals="latent", on_error="raise")
    run_pass(model, probe, plan)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    for _ in range(5):
        run_pass(model, probe, plan)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= held
