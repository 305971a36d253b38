"""frx's StyleGAN2 generator and the seed's latent transformer against the reference code's outputs.

The fixtures (``tests/fixtures/stylegan``, made by its ``make_fixtures.py`` from rosinality's
stylegan2-pytorch and the seed's ``models.py``) hold checkpoints in their real formats, inputs and
what the reference code computed from them; nothing here needs the network or the reference code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from frx_plugin.checkpoints import key_shapes
from frx_plugin.errors import CheckpointError, DecoderError
from frx_plugin.two_stage.stylegan import (
    LatentTransformer,
    StyleGAN2Generator,
    generator_config,
    load_latent_transformer,
    load_mean_wplus,
    load_rosinality_generator,
)
from frx_plugin.two_stage.stylegan.ops import fir_filter, fir_kernel
from tests.fixtures.stylegan.weights import stylegan_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stylegan"
TOLERANCE = 1e-4


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name,config", [
    ("generator_a", {"size": 64, "style_dim": 64, "n_mlp": 3, "channels": {4: 32, 8: 32, 16: 32, 32: 32, 64: 32}}),
    ("generator_b", {"size": 32, "style_dim": 32, "n_mlp": 2, "channels": {4: 16, 8: 16, 16: 16, 32: 16}}),
])
def test_the_generator_reproduces_rosinality(reference, name, config):
    g = load_rosinality_generator(FIXTURES / f"{name}.pt")
    assert {k: getattr(g, k) for k in ("size", "style_dim", "n_mlp", "channels")} == config
    assert g.n_latent == reference[f"{name}.w_plus"].shape[1]
    with torch.no_grad():
        w_plus = reference[f"{name}.w_plus"]
        assert _max_diff(g(w_plus), reference[f"{name}.image_buffers"]) < TOLERANCE  # the default: fixed noise
        noise = [reference[f"{name}.noise_{i}"] for i in range(g.num_layers)]
        assert _max_diff(g(w_plus, noise=noise), reference[f"{name}.image_noise"]) < TOLERANCE
        w = g.mapping(reference[f"{name}.z"])
        assert _max_diff(w, reference[f"{name}.w"]) < TOLERANCE
        assert _max_diff(g(w), reference[f"{name}.image_z"]) < TOLERANCE  # one w for every layer
        # the noise matters: without it, or with other noise, the image is another one
        assert _max_diff(g(w_plus, noise=None), reference[f"{name}.image_buffers"]) > 1e-2
        assert _max_diff(g(w_plus, noise="random"), reference[f"{name}.image_buffers"]) > 1e-2


def test_the_full_size_generator_has_rosinalitys_layout_and_output(reference, layouts):
    expected = {k: tuple(v) for k, v in layouts["generator_256"].items()}
    g = StyleGAN2Generator(256, 512, 8, channel_multiplier=2)
    assert key_shapes(g) == expected
    state = stylegan_state(expected)
    assert generator_config(state) == {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2}
    g.load_state_dict(state, strict=False)  # the FIR kernels stay frx's own
    with torch.no_grad():
        image = g.eval()(reference["generator_256.w_plus"])
    assert image.shape == (1, 3, 256, 256)
    assert _max_diff(image[:, :, ::8, ::8], reference["generator_256.image_grid"]) < TOLERANCE
    assert _max_diff(image[:, :, 96:160, 96:160], reference["generator_256.image_crop"]) < TOLERANCE


def test_the_full_size_latent_transformer_has_the_seeds_layout(layouts):
    expected = {k: tuple(v) for k, v in layouts["iddencoder_14_8"].items()}
    assert key_shapes(LatentTransformer(14, 8)) == expected


def test_the_seeds_decoder_reproduces_the_seed(reference, tmp_path):
    """G(mean_wplus + T(z)), as the seed's ReconModel.decode computes it (with the checkpoint's noise)."""
    transformer = load_latent_transformer(FIXTURES / "latent_transformer.pth")
    g = load_rosinality_generator(FIXTURES / "generator_a.pt")
    mean = load_mean_wplus(FIXTURES / "mean_wplus.pth", g.n_latent, g.style_dim)
    assert (transformer.n_latents, transformer.n_mlp, transformer.width) == (10, 5, 64)
    with torch.no_grad():
        offsets = transformer(reference["encoder.z"])
        assert _max_diff(offsets, reference["encoder.offsets"]) < TOLERANCE
        assert _max_diff(g(mean + offsets), reference["encoder.image"]) < TOLERANCE
    # DataParallel's module. prefix loads the same
    state = torch.load(FIXTURES / "latent_transformer.pth", weights_only=True)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pth")
    with torch.no_grad():
        assert torch.equal(load_latent_transformer(tmp_path / "prefixed.pth")(reference["encoder.z"]), offsets)


def test_mean_wplus_shapes(tmp_path):
    for shape in [(8, 32), (1, 8, 32), (32,), (1, 32)]:
        torch.save(torch.ones(shape), tmp_path / "mean.pth")
        assert load_mean_wplus(tmp_path / "mean.pth", 8, 32).shape == (1, 8, 32)
    torch.save(torch.ones(14, 512), tmp_path / "mean.pth")
    with pytest.raises(CheckpointError, match=r"mean\.pth: shape \(14, 512\) does not fit 8×32"):
        load_mean_wplus(tmp_path / "mean.pth", 8, 32)


def test_fir_filter_is_upfirdn():
    """Against the definition: zero insertion, padding, a true (flipped) convolution, striding."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    kernel = torch.rand(4, 3)
    up, pad = 2, (2, 1)
    spread = torch.zeros(2, 3, 10, 12)
    spread[:, :, ::2, ::2] = x
    padded = torch.nn.functional.pad(spread, [pad[0], pad[1], pad[0], pad[1]])
    direct = torch.nn.functional.conv2d(padded.reshape(6, 1, 13, 15), kernel.flip(0, 1)[None, None]).reshape(2, 3, 10, 13)
    assert _max_diff(fir_filter(x, kernel, up=up, pad=pad), direct) < 1e-5
    assert _max_diff(fir_filter(x, kernel, down=2, pad=(-1, 0)), torch.nn.functional.conv2d(
        x[:, :, 1:, 1:].reshape(6, 1, 4, 5), kernel.flip(0, 1)[None, None], stride=2).reshape(2, 3, 1, 2)) < 1e-5
    assert torch.allclose(fir_kernel([1, 3, 3, 1], 4.0).sum(), torch.tensor(4.0))


def _checkpoint(tmp_path: Path, state: dict, name: str = "g.pt") -> Path:
    path = tmp_path / name
    torch.save({"g_ema": state}, path)
    return path


def test_generator_checkpoint_errors_are_one_line(tmp_path):
    state = torch.load(FIXTURES / "generator_b.pt", weights_only=True)["g_ema"]
    with pytest.raises(CheckpointError, match=r"nothing\.pt: no such file"):
        load_rosinality_generator(tmp_path / "nothing.pt")
    torch.save({"d": state}, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match=r"d\.pt: no 'g_ema' entry \(found \['d'\]\)"):
        load_rosinality_generator(tmp_path / "d.pt")
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(CheckpointError, match=r"text\.pt: not a readable PyTorch weights file"):
        load_rosinality_generator(tmp_path / "text.pt")
    broken = {k: v for k, v in state.items() if k != "noises.noise_3"}
    broken["convs.0.noise.weight"] = torch.zeros(2)
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as caught:
        load_rosinality_generator(_checkpoint(tmp_path, broken))
    message = str(caught.value)
    assert "\n" not in message and "g.pt" in message
    assert "missing noises.noise_3" in message and "unexpected extra.weight" in message
    assert "mis-shaped convs.0.noise.weight (2,) (expected (1,))" in message
    no_kernels = {k: v for k, v in state.items() if not k.endswith("kernel")}
    g = load_rosinality_generator(_checkpoint(tmp_path, no_kernels, "k.pt"))  # the kernels are architecture constants
    assert torch.equal(g.convs[0].conv.blur.kernel, state["convs.0.conv.blur.kernel"])
    with pytest.raises(CheckpointError, match="not a rosinality StyleGAN2 generator"):
        load_rosinality_generator(_checkpoint(tmp_path, {"style.1.weight": torch.zeros(2, 2)}, "s.pt"))


def test_generator_input_errors():
    g = StyleGAN2Generator(8, 16, 1, channels={4: 4, 8: 4})
    with pytest.raises(DecoderError, match=r"W\+ latents must be N×4×16, got \(2, 3, 16\)"):
        g(torch.zeros(2, 3, 16))
    with pytest.raises(DecoderError, match="noise must be"):
        g(torch.zeros(2, 4, 16), noise="fixed")
    with pytest.raises(DecoderError, match="size must be a power of two"):
        StyleGAN2Generator(48, 16, 1)
    assert g.mean_latent(64, torch.Generator().manual_seed(0)).shape == (1, 16)


def test_latent_transformer_errors(tmp_path):
    torch.save({"mapping.0.weight": torch.zeros(4, 4)}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match=r"t\.pth: not an IDDEncoder state dict"):
        load_latent_transformer(tmp_path / "t.pth")
    state = LatentTransformer(2, 5, 8).state_dict()
    state["heads.1.3.bias"] = torch.zeros(9)
    torch.save(state, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match=r"mis-shaped heads\.1\.3\.bias \(9,\) \(expected \(8,\)\)"):
        load_latent_transformer(tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match="github.com/RenMin1991/Facial-Attribute-Recovery"):
        load_latent_transformer(tmp_path / "absent.pth")
    with pytest.raises(DecoderError, match=r"embeddings must be N×8, got \(3, 7\)"):
        LatentTransformer(2, 5, 8)(torch.zeros(3, 7))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_generator_runs_on_cuda(reference):
    g = load_rosinality_generator(FIXTURES / "generator_a.pt").cuda()
    with torch.no_grad():
        image = g(reference["generator_a.w_plus"].cuda()).cpu()
    assert _max_diff(image, reference["generator_a.image_buffers"]) < 1e-3
