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
