"""``frx decode``: the seed's decoder on an embedding file, a decoder trained for a model, the figures, the report, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.commands.cli import main
from frx_plugin.commands.decode import principal_directions
from frx_plugin.embedding_set import write_embedding_set
from frx_plugin.two_stage.stylegan import (
    load_latent_transformer,
    load_mean_wplus,
    load_rosinality_generator,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stylegan"
SEED_SPEC = (f"stylegan2:{FIXTURES / 'generator_a.pt'},encoder={FIXTURES / 'latent_transformer.pth'},"
             f"mean_latent={FIXTURES / 'mean_wplus.pth'}")
TRAINED_SPEC = f"stylegan2:{FIXTURES / 'generator_b.pt'},lr=0.003"
MODEL = ("--backbone", "resnet-small,embedding_dim=16,input_size=32", "--probe", "synthetic,n_identities=8,images_per_identity=3,size=32")


@pytest.fixture
def frx(capsys):
    def run(*args):
        code = main([str(a) for a in args])
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> tuple[Path, torch.Tensor]:
    """8 unit embeddings of width 64 (the fixture encoder's), the first three the reference's inputs."""
    reference = load_file(str(FIXTURES / "reference_outputs.safetensors"))
    z = torch.cat([reference["encoder.z"], torch.randn(5, 64, generator=torch.Generator().manual_seed(0))])
    z = F.normalize(z, dim=1)
    path = tmp_path_factory.mktemp("embeddings") / "z.safetensors"
    write_embedding_set(path, z, torch.arange(8) // 2, {"a": torch.arange(8) % 2}, AttributeSchema([Attribute("a", "binary")]))
    return path, z


def _seed_decode(z: torch.Tensor) -> torch.Tensor:
    """G(mean_wplus + T(z)) as the seed's ReconModel.decode computes it, scaled to [0, 1] as its lfw_recon.py does."""
    g = load_rosinality_generator(FIXTURES / "generator_a.pt")
    transformer = load_latent_transformer(FIXTURES / "latent_transformer.pth")
    mean = load_mean_wplus(FIXTURES / "mean_wplus.pth", g.n_latent, g.style_dim)
    with torch.no_grad():
        return ((g(mean + transformer(z), noise="buffers") + 1) * 0.5).clamp(0, 1)


def test_frx_decode_decodes_an_embedding_file_with_the_seeds_encoder(frx, embeddings, tmp_path):
    path, z = embeddings
    out = tmp_path / "decoded"
    result = frx("decode", "--decoder", SEED_SPEC, "--embeddings", path, "--out", out, "--directions", 3, "--random", 4)
    assert result.returncode == 0, result.stderr
    tensors = load_file(str(out / "decoded.safetensors"))
    images = tensors["images"]
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert (images - _seed_decode(z)).abs().max() < 1e-4
    reference = load_file(str(FIXTURES / "reference_outputs.safetensors"))  # the reference code's own images
    assert (images[:3] - ((reference["encoder.image"] + 1) * 0.5).clamp(0, 1)).abs().max() < 1e-4
    with safe_open(str(out / "decoded.safetensors"), "pt") as handle:
        assert handle.metadata()["frx.decoder"] == SEED_SPEC
    document = json.loads((out / "decoding.json").read_text())
    assert document["format"] == "frx.decoding/1" and document["mode"] == "as saved" and document["n"] == 8
    assert document["identity_similarity"] is None  # no model to embed the decodings with
    for name in ("faces.png", "directions.png", "random.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    section = page[page.index('<section id="decoding">'):]
    section = section[: section.index("</section>")]
    assert "<h2>Decoding</h2>" in section and section.count("<img ") == 3 and "used as saved" in section
    # deterministic: a second run writes the same images
    again = frx("decode", "--decoder", SEED_SPEC, "--embeddings", path, "--out", out, "--overwrite", "--directions", 0, "--random", 0)
    assert again.returncode == 0 and torch.equal(load_file(str(out / "decoded.safetensors"))["images"], images)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (benchmarks/report_screenshot.py is the check)")
def test_the_decoding_report_loads_every_figure_in_headless_chromium(frx, embeddings, tmp_path):
    from benchmarks.report_screenshot import browser_check

    result = frx("decode", "--decoder", SEED_SPEC, "--embeddings", embeddings[0], "--out", tmp_path, "--directions", 2, "--random", 2)
    assert result.returncode == 0, result.stderr
    passed, message = browser_check(tmp_path / "report.html", tmp_path / "shot.png")
    assert passed and "data-figures 3/3" in message, message


def test_frx_decode_trains_the_decoder_for_a_model_on_identity_disjoint_folds(frx, tmp_path):
    torch.manual_seed(0)  # the untrained backbone's weights come from the global generator
    result = frx("decode", "--decoder", TRAINED_SPEC, *MODEL, "--steps", 6, "--out", tmp_path, "--limit", 20, "--directions", 2,
                 "--random", 2)
    assert result.returncode == 0, result.stderr
    document = json.loads((tmp_path / "decoding.json").read_text())
    assert document["mode"] == "trained" and document["folds"] == 2 and document["steps"] == 6
    assert document["n"] == 20 and document["n_embeddings"] == 24
    for fit in document["fits"].values():
        assert fit["steps"] == 6 and fit["identity_loss_end"] < fit["identity_loss_start"]
    assert -1 <= document["identity_similarity"]["min"] <= document["identity_similarity"]["mean"] <= 1
    images = load_file(str(tmp_path / "decoded.safetensors"))["images"]
    assert images.shape == (20, 3, 32, 32) and torch.isfinite(images).all()
    assert "Training of the decoder" in (tmp_path / "report.html").read_text()


def test_principal_directions_are_the_scatter_matrix_eigenvectors():
    z = F.normalize(torch.randn(50, 6, generator=torch.Generator().manual_seed(1)) * torch.tensor([5.0, 3, 2, 1, 1, 1]), dim=1)
    mean, top, share = principal_directions(z, 2)
    centred = (z - z.mean(0)).double()
    _, singular, right = torch.linalg.svd(centred, full_matrices=False)
    for k in range(2):
        assert abs(float(top[k].double() @ right[k])) == pytest.approx(1.0, abs=1e-5)
        assert float(top[k][top[k].abs().argmax()]) > 0
    assert share[0] == pytest.approx(float(singular[0] ** 2 / (singular**2).sum()), rel=1e-4)
    assert torch.allclose(mean, z.mean(0))


def test_bad_input_is_one_line(frx, embeddings, tmp_path):
    path, _ = embeddings
    cases = [
        (("--decoder", f"stylegan2:{tmp_path / 'missing.pt'}", "--embeddings", path), r"missing\.pt: no such file"),
        (("--decoder", TRAINED_SPEC, "--embeddings", path), "an embedding file has no model"),
        (("--decoder", SEED_SPEC), "pass --embeddings FILE or --backbone SPEC"),
        (("--decoder", f"{SEED_SPEC},colour=1", "--embeddings", path), "unknown option 'colour'"),
        (("--decoder", SEED_SPEC, *MODEL), "maps 64-d embeddings, the model analysed gives 16-d"),
        (("--decoder", SEED_SPEC, "--embeddings", path, "--steps", 0), "--steps must be"),
    ]
    for args, message in cases:
        result = frx("decode", *args, "--out", tmp_path / "out")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and re.search(message, lines[-1]), (args, result.stderr)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "decoded.safetensors").write_text("another run's")
    result = frx("decode", "--decoder", SEED_SPEC, "--embeddings", path, "--out", tmp_path / "taken")
    assert result.returncode == 2 and "already holds results (decoded.safetensors)" in result.stderr
