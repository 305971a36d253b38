"""A pass leaves the user's model and random state as it found them: mode of every submodule,
``requires_grad``, parameters, buffers, gradients, and torch's global generators."""

from __future__ import annotations

import pytest
import torch

from frx_plugin.collectives import SingleProcess
from frx_plugin.passes import AnalysisConfig, plan_pass, prepare_two_stage, run_pass
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.synthetic import SyntheticProbeSet
from frx_plugin.two_stage import TwoStageConfig
from frx_plugin.verification import verification
from tests.lightning_helpers import PixelEstimatorPlugin, make_probe


class Backbone(torch.nn.Module):
    """Dropout and BatchNorm (state that a careless pass would change), a frozen stem kept in eval mode."""

    frx_transform = "unit"

    def __init__(self, size: int, dim: int = 16) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8))
        self.body = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                        torch.nn.Linear(128, dim), torch.nn.BatchNorm1d(dim))

    def forward(self, images):
        return self.body(self.stem(images))


def _user_state(size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    model = Backbone(size)
    model.train()
    model.stem.eval()  # a frozen stem, as a fine-tuning user keeps it
    for p in model.stem.parameters():
        p.requires_grad_(False)
    images = torch.rand(8, 3, size, size)
    model(images).pow(2).sum().backward()  # gradients of an unfinished step
    return model


def _snapshot(model: torch.nn.Module) -> dict:
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "parameters": {name: p.detach().clone() for name, p in model.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "buffers": {name: b.clone() for name, b in model.named_buffers()},
        "rng": torch.get_rng_state(),
    }


def _assert_untouched(before: dict, model: torch.nn.Module) -> None:
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    for kind in ("parameters", "buffers"):
        for name, value in before[kind].items():
            assert torch.equal(after[kind][name], value), f"{kind} {name} changed"
    for name, grad in before["grads"].items():
        assert (after["grads"][name] is None) == (grad is None) and (grad is None or torch.equal(after["grads"][name], grad)), name
    assert torch.equal(after["rng"], before["rng"]), "the global torch generator moved"


def test_an_exact_counterfactual_pass_leaves_model_and_generator_as_they_were():
    probe = SyntheticProbeSet(n_identities=30, images_per_identity=4, seed=0, size=32, first_identity=7_000)
    model = _user_state(32)
    before = _snapshot(model)
    plan = plan_pass(probe, AnalysisConfig(n_bootstrap=10), counterfactuals="exact", significance_samples=16,
                              max_error_pairs=4, on_error="raise")
    result = run_pass(model, probe, plan)
    assert result.report.counterfactuals == "exact" and result.report.significance
    _assert_untouched(before, model)
    # and the pass measured the model in eval mode: verification equals that of an eval-mode copy's embeddings
    reference = Backbone(32)
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        z = torch.nn.functional.normalize(reference.eval()(probe.images(torch.arange(len(probe)))), dim=1)
    expected = verification(z, probe.identity, fmr=plan.config.fmr)
    assert result.report.verification.threshold == pytest.approx(expected.threshold, abs=1e-6)
    assert result.report.verification.tar == pytest.approx(expected.tar, abs=1e-12)

def test_a_two_stage_pass_leaves_model_and_generator_as_they_were(fresh_plugins):
    get_plugin_manager().register(PixelEstimatorPlugin())
    probe = make_probe()
    model = _user_state(16)
    before = _snapshot(model)
    plan = plan_pass(probe, AnalysisConfig(n_bootstrap=10), counterfactuals="latent", on_error="raise")
    two_stage = prepare_two_stage(probe, TwoStageConfig(steps=5, samples=2, n_bootstrap=0), SingleProcess())
    result = run_pass(model, probe, plan, two_stage=two_stage)
    assert result.report.recovery is not None and not result.report.recovery["errors"]
    _assert_untouched(before, model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_the_pass_leaves_the_cuda_generator_and_frees_its_memory(fresh_plugins):
    get_plugin_manager().register(PixelEstimatorPlugin())
    probe = make_probe()
    model = _user_state(16).cuda()
    torch.cuda.synchronize()
    cuda_rng = torch.cuda.get_rng_state()
    plan = plan_pass(probe, AnalysisConfig(n_bootstrap=10), counterfactuals="latent", on_error="raise")
    two_stage = prepare_two_stage(probe, TwoStageConfig(steps=5, samples=2, n_bootstrap=0), SingleProcess(torch.device("cuda")))
    run_pass(model, probe, plan, two_stage=two_stage)  # the first pass makes the decoders: they stay
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    for _ in range(4):
        run_pass(model, probe, plan, two_stage=two_stage)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= held
    assert torch.equal(torch.cuda.get_rng_state(), cuda_rng)
