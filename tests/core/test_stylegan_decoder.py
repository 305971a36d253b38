"""The ``stylegan2`` decoder: the seed's decode reproduced, a latent transformer trained for a model, warm start, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from frx_plugin.errors import CheckpointError, DecoderError
from frx_plugin.interfaces import DecoderTask, FaceDecoder
from frx_plugin.plugins import create_decoder
from frx_plugin.two_stage.stylegan import StyleGANFaceDecoder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stylegan"
GENERATOR_A, GENERATOR_B = FIXTURES / "generator_a.pt", FIXTURES / "generator_b.pt"
SEED_FILES = {"encoder": str(FIXTURES / "latent_transformer.pth"), "mean_latent": str(FIXTURES / "mean_wplus.pth")}


def _face_model(dim: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                               torch.nn.Flatten(), torch.nn.Linear(128, dim)).eval()


def _task(model: torch.nn.Module, n: int = 24, size: int = 16, steps: int = 12) -> DecoderTask:
    images = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(3))

    def embed(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(model(x), dim=1)

    with torch.no_grad():
        z = embed(images)
    return DecoderTask(z, images, embed, steps=steps, seed=0)


def test_the_seeds_encoder_decodes_as_the_seeds_recon_model(reference):
    """decode(z) is the seed's ReconModel.decode(z) (reference code's output) scaled to [0, 1] as its lfw_recon.py does."""
    decoder = create_decoder("stylegan2", 64, (3, 64, 64), generator=str(GENERATOR_A), **SEED_FILES)
    assert isinstance(decoder, FaceDecoder) and decoder.uses_seed_encoder
    z = reference["encoder.z"]
    seed_images = ((reference["encoder.image"] + 1.0) * 0.5).clamp(0, 1)
    decoded = decoder.decode(z, samples=2)
    assert decoded.shape == (3, 2, 3, 64, 64)
    assert (decoded[:, 0] - seed_images).abs().max() < 1e-4
    # the checkpoint's noise: every sample is the same face, every call the same images
    assert (decoded[:, 0] - decoded[:, 1]).abs().max() < 1e-5 and torch.equal(decoder.decode(z, samples=2), decoded)
    # at a probe's size: the same faces, resized
    small = create_decoder("stylegan2", 64, (3, 16, 16), generator=str(GENERATOR_A), **SEED_FILES).decode(z)[:, 0]
    assert (small - F.interpolate(seed_images, size=(16, 16), mode="bilinear", antialias=True)).abs().max() < 1e-4
    # nothing to train: the fit changes nothing and there is no state to keep
    task = _task(_face_model(64), size=64)
    fit = decoder.fit(task)
    assert fit.steps == 0 and decoder.state_dict() == {}
    # its losses on the first faces, measured, not trained
    x = task.images[:8]
    want = F.mse_loss(decoder.decode(task.embeddings[:8])[:, 0], x)
    assert fit.pixel_loss_start == fit.pixel_loss_end == pytest.approx(float(want), rel=1e-4)
    assert fit.identity_loss_start is not None and 0 <= fit.identity_loss_start <= 2
    assert torch.equal(decoder.decode(z, samples=2), decoded)


def test_a_latent_transformer_trained_for_a_model_lowers_its_identity_loss():
    model = _face_model(16)  # 16-d embeddings: projected to the generator's 32-d style width
    before = {k: v.clone() for k, v in model.state_dict().items()}
    decoder = StyleGANFaceDecoder(16, (3, 16, 16), GENERATOR_B, lr=3e-3)
    task = _task(model)
    untrained = decoder.decode(task.embeddings[:4])[:, 0]
    assert torch.equal(untrained[0], untrained[3])  # the zero-initialised heads decode the mean face for every z
    fit = decoder.fit(task)
    assert fit.steps == 12 and fit.identity_loss_end < 0.8 * fit.identity_loss_start
    trained = decoder.decode(task.embeddings[:4])[:, 0]
    assert not torch.equal(trained[0], trained[3]) and 0 <= float(trained.min()) and float(trained.max()) <= 1
    # only T learned: the recognition model's weights and gradients are untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert set(decoder.state_dict()) >= {"project.weight", "transformer.heads.0.3.weight"}


def test_warm_start_restores_the_transformer_and_continues_from_it():
    model = _face_model(16)
    task = _task(model)
    decoder = StyleGANFaceDecoder(16, (3, 16, 16), GENERATOR_B, lr=3e-3)
    first = decoder.fit(task)
    second = decoder.fit(task)
    assert second.identity_loss_start < first.identity_loss_start  # the second fit starts where the first ended
    restored = StyleGANFaceDecoder(16, (3, 16, 16), str(GENERATOR_B))
    assert not torch.equal(restored.decode(task.embeddings[:3]), decoder.decode(task.embeddings[:3]))
    restored.load_state_dict(decoder.state_dict())
    assert torch.equal(restored.decode(task.embeddings[:3]), decoder.decode(task.embeddings[:3]))
    with pytest.raises(DecoderError, match="does not fit"):
        StyleGANFaceDecoder(24, (3, 16, 16), GENERATOR_B).load_state_dict(decoder.state_dict())


def test_random_noise_draws_samples_from_the_seed():
    decoder = StyleGANFaceDecoder(32, None, GENERATOR_B, noise="random")
    z = F.normalize(torch.randn(2, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    a = decoder.decode(z, samples=2, seed=5)
    assert a.shape == (2, 2, 3, 32, 32) and not torch.equal(a[:, 0], a[:, 1])
    assert torch.equal(decoder.decode(z, samples=2, seed=5), a)


def test_bad_files_and_options_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such file"):
        StyleGANFaceDecoder(64, None, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"nope\.pth: no such file"):
        StyleGANFaceDecoder(64, None, GENERATOR_A, encoder=tmp_path / "nope.pth", mean_latent=SEED_FILES["mean_latent"])
    with pytest.raises(DecoderError, match="needs the mean W\\+ latent"):
        StyleGANFaceDecoder(64, None, GENERATOR_A, encoder=SEED_FILES["encoder"])
    with pytest.raises(DecoderError, match="maps 64-d embeddings, the model analysed gives 16-d"):
        StyleGANFaceDecoder(16, None, GENERATOR_A, **SEED_FILES)
    with pytest.raises(DecoderError, match="generator takes 8×32"):
        StyleGANFaceDecoder(64, None, GENERATOR_B, **SEED_FILES)
    with pytest.raises(DecoderError, match="no generator checkpoint"):
        StyleGANFaceDecoder(64, (3, 16, 16))
    for options, text in (({"noise": "fresh"}, "noise must be"), ({"steps": 0}, "steps must be"), ({"lr": 0}, "lr must be")):
        with pytest.raises(DecoderError, match=text):
            StyleGANFaceDecoder(64, None, GENERATOR_B, **options)
    with pytest.raises(DecoderError, match=r"\(3, H, W\)"):
        StyleGANFaceDecoder(64, (1, 16, 16), GENERATOR_B)


def test_the_latent_space_of_the_decoded_counterfactuals_is_w_plus_and_renders_as_decode_does():
    """``latent(z)`` is the W+ code mean + T(z), flattened; ``render_latent`` of it is the decoding itself (fixed
    noise), and a moved code renders another face: the decoded counterfactual path edits here."""
    model = _face_model()
    decoder = StyleGANFaceDecoder(16, (3, 16, 16), GENERATOR_B, lr=3e-3)
    decoder.fit(_task(model, steps=3))
    z = torch.nn.functional.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(2)), dim=1)
    codes = decoder.latent(z)
    g = decoder.generator
    assert codes.shape == (5, g.n_latent * g.style_dim)
    with torch.no_grad():
        expected = (decoder.mean + decoder.mapper(z)).flatten(1)
    assert torch.allclose(codes, expected)
    assert torch.allclose(decoder.render_latent(codes), decoder.decode(z, 1)[:, 0], atol=1e-6)
    moved = decoder.render_latent(codes + 0.5 * torch.randn(codes.shape, generator=torch.Generator().manual_seed(3)))
    assert (moved - decoder.render_latent(codes)).abs().mean() > 1e-3
    with pytest.raises(DecoderError, match="flattened W\\+"):
        decoder.render_latent(codes[:, :10])
