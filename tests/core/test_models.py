import math

import pytest
import torch
import torch.nn.functional as F

from frx_plugin.models import ArcFaceHead, ResidualFaceNet


def test_arcface_logits_follow_the_additive_angular_margin():
    head = ArcFaceHead(embedding_dim=3, num_classes=2, scale=10.0, margin=0.4)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    angle = 0.7  # embedding at 0.7 rad from class 0, π/2 − 0.7 from class 1
    z = torch.tensor([[math.cos(angle), math.sin(angle), 0.0]]) * 3.0  # the scale of z must not matter
    logits = head(z, torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(10 * math.cos(angle + 0.4), abs=1e-5)
    assert logits[0, 1].item() == pytest.approx(10 * math.cos(math.pi / 2 - angle), abs=1e-5)


def test_arcface_margin_never_raises_the_target_logit_past_pi():
    head = ArcFaceHead(embedding_dim=2, num_classes=2, scale=1.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    z = torch.tensor([[-1.0, 0.01]])  # almost π from class 0: cos(θ+m) would wrap around and rise
    target = head(z, torch.tensor([0]))[0, 0].item()
    plain = F.cosine_similarity(z, head.weight[:1]).item()
    assert target < plain


def test_backbone_shapes_and_bad_arguments():
    net = ResidualFaceNet(embedding_dim=32, input_size=64).eval()
    assert net(torch.rand(3, 3, 64, 64)).shape == (3, 32)
    assert net(torch.rand(2, 3, 112, 112)).shape == (2, 32)  # other sizes are resized to the input size
    with pytest.raises(ValueError, match="input_size must be divisible by 32"):
        ResidualFaceNet(input_size=50)
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        ArcFaceHead(8, 1)


# --------------------------------------------------------------------------- MobileFaceNetLike and saved backbones


def test_mobilefacenet_like_shapes_size_and_bad_arguments():
    from frx_plugin.models import MobileFaceNetLike

    net = MobileFaceNetLike(embedding_dim=64, input_size=64).eval()
    assert net(torch.rand(3, 3, 64, 64)).shape == (3, 64)
    assert net(torch.rand(2, 3, 112, 112)).shape == (2, 64)  # other sizes are resized to the input size
    assert MobileFaceNetLike(input_size=32).eval()(torch.rand(2, 3, 32, 32)).shape == (2, 128)
    assert sum(p.numel() for p in MobileFaceNetLike().parameters()) < 300_000  # small enough to train on a CPU
    depthwise = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1]
    assert depthwise[-1].kernel_size == (4, 4) and depthwise[-1].padding == (0, 0)  # the GDC covers the final 4x4 map
    assert isinstance(net.neck[-1], torch.nn.BatchNorm1d)
    with pytest.raises(ValueError, match="input_size must be a positive multiple of 16"):
        MobileFaceNetLike(input_size=40)
    with pytest.raises(ValueError, match="widths and blocks"):
        MobileFaceNetLike(widths=(32, 64), blocks=(1,))


def _outputs(net, seed=0):
    return net(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("architecture", ["resnet-small", "mobilefacenet-like"])
def test_saved_backbones_round_trip(tmp_path, architecture):
    from frx_plugin.models import BACKBONE_ARCHITECTURES, load_backbone, save_backbone

    torch.manual_seed(0)
    net = BACKBONE_ARCHITECTURES[architecture](embedding_dim=32, input_size=64).train()
    net(torch.rand(8, 3, 64, 64))  # move the BatchNorm statistics away from their initial values
    net.eval()
    save_backbone(net, tmp_path / "b.safetensors", probe={"n_identities": 5}, extra={"note": "kept"})
    loaded, description = load_backbone(tmp_path / "b.safetensors")
    assert type(loaded) is type(net) and not loaded.training
    assert description["architecture"] == architecture and description["probe"] == {"n_identities": 5} and description["note"] == "kept"
    with torch.no_grad():
        assert torch.equal(_outputs(loaded), _outputs(net))
    with pytest.raises(ValueError, match="would replace"):
        save_backbone(net, tmp_path / "c.safetensors", extra={"architecture": "other"})


def test_resnet_small_files_keep_their_layout_and_foreign_ones_are_named(tmp_path):
    import json

    from safetensors.torch import save_file

    from frx_plugin.models import BACKBONE_METADATA, load_backbone, save_backbone

    net = ResidualFaceNet(embedding_dim=32, input_size=64).eval()
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    # a file as frx demo wrote it before there were two architectures
    legacy = {"architecture": "resnet-small", "embedding_dim": 32, "input_size": 64, "widths": [16, 32, 64, 128],
              "blocks_per_stage": 1, "probe": {"size": 64}}
    save_file(state, str(tmp_path / "legacy.safetensors"), metadata={BACKBONE_METADATA: json.dumps(legacy)})
    loaded, description = load_backbone(tmp_path / "legacy.safetensors")
    assert description == legacy
    with torch.no_grad():
        assert torch.equal(_outputs(loaded), _outputs(net))
    save_backbone(net, tmp_path / "new.safetensors", probe={"size": 64})
    from safetensors import safe_open

    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()[BACKBONE_METADATA]) == legacy  # the same description, key for key

    save_file(state, str(tmp_path / "odd.safetensors"), metadata={BACKBONE_METADATA: json.dumps(dict(legacy, architecture="vit-huge"))})
    with pytest.raises(ValueError, match="odd.safetensors.*unknown architecture 'vit-huge'"):
        load_backbone(tmp_path / "odd.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bad.safetensors"), metadata={BACKBONE_METADATA: json.dumps(legacy)})
    with pytest.raises(ValueError, match="bad.safetensors.*cannot rebuild"):
        load_backbone(tmp_path / "bad.safetensors")
    with pytest.raises(TypeError, match="cannot save a Linear"):
        save_backbone(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
