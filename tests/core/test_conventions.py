"""A classification model's forward gives class scores: frx embeds the features before its classifier, and says so once."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from frx_plugin.model import ModelAdapter, embed_probe_set, input_of
from tests.ddp_buffers_script import BatchNormNet
from tests.lightning_helpers import TinyFaceModule, make_probe


class TimmLike(torch.nn.Module):
    """The shape of a timm classifier (as timm's ResNet/ConvNeXt): ``forward_features``, ``forward_head(pre_logits=)``,
    ``get_classifier``; ``forward`` gives the class scores."""

    def __init__(self, num_classes: int = 100, dim: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, dim, 3, stride=2, padding=1), torch.nn.ReLU())
        self.global_pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc_norm = torch.nn.LayerNorm(dim)
        self.head_drop = torch.nn.Dropout(0.1)
        self.fc = torch.nn.Linear(dim, num_classes)

    def get_classifier(self):
        return self.fc

    def forward_features(self, x):
        return self.stem(x)

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(self.fc_norm(self.global_pool(x).flatten(1)))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def timm_features(model: TimmLike, images: torch.Tensor) -> torch.Tensor:
    """The pre-logits features written out by hand (eval mode: no dropout)."""
    return model.fc_norm(model.stem(images).mean(dim=(2, 3)))


class TorchvisionResNetLike(torch.nn.Module):
    """The shape of torchvision's ResNet: a trunk, ``avgpool``, ``flatten``, then the classifier ``fc``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(16)
        self.relu = torch.nn.ReLU()
        self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1, bias=False), torch.nn.BatchNorm2d(32), torch.nn.ReLU())
        self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet_features(model: TorchvisionResNetLike, images: torch.Tensor) -> torch.Tensor:
    return model.layer1(model.relu(model.bn1(model.conv1(images)))).mean(dim=(2, 3))


class BackboneAndClassifier(torch.nn.Module):
    """A LightningModule-style pair, the backbone a torchvision-shaped net without its classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                            torch.nn.Flatten())
        self.classifier = torch.nn.Linear(8, 12)

    def forward(self, x):
        return self.classifier(self.backbone(x))


@pytest.fixture(scope="module")
def images():
    probe = make_probe()
    return probe.images(torch.arange(len(probe)))


def _embed(model, images, **options):
    """The embeddings, and every warning frx gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapter = ModelAdapter(model, **options)
        z = torch.cat([adapter.embed(images[:13]), adapter.embed(images[13:])])  # two batches: one warning
    return z, [str(w.message) for w in caught if "class scores" in str(w.message)]


def _reference(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.detach(), dim=1)


@pytest.mark.parametrize("transform", ["unit", "imagenet"])
def test_a_timm_model_is_embedded_by_its_pre_logits_features_whatever_the_transform(images, transform):
    model = TimmLike().eval()
    z, said = _embed(model, images, transform=transform)
    x = ModelAdapter(model, transform=transform).transform(images)
    assert z.shape == (len(images), 64)  # not the 100 class scores
    torch.testing.assert_close(z, _reference(timm_features(model, x)), rtol=0, atol=1e-6)
    assert len(said) == 1
    assert said[0].startswith("frx: the model's forward gives its 100 class scores (from 'fc', Linear 64 → 100); frx embeds "
                              "forward_head(forward_features(x), pre_logits=True) instead, D = 64")
    assert "pass embed=lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True)" in said[0]
    assert "embed='forward'" in said[0]


def test_an_explicit_embed_silences_the_guess(images):
    model = TimmLike().eval()
    pre_logits = lambda m, x: m.forward_head(m.forward_features(x), pre_logits=True)  # noqa: E731 - as a user writes it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = ModelAdapter(model, transform="unit", embed=pre_logits).embed(images)
        scores = ModelAdapter(model, transform="unit", embed="forward").embed(images)
        fc_input = ModelAdapter(model, transform="unit", embed=input_of("fc")).embed(images)
    torch.testing.assert_close(z, _reference(timm_features(model, images)), rtol=0, atol=1e-6)
    torch.testing.assert_close(fc_input, z, rtol=0, atol=1e-6)
    torch.testing.assert_close(scores, _reference(model(images)), rtol=0, atol=1e-6)  # what was embedded before


def test_a_torchvision_resnet_is_embedded_by_the_input_of_its_fc(images):
    model = TorchvisionResNetLike().eval()
    z, said = _embed(model, images, transform="unit")
    torch.testing.assert_close(z, _reference(resnet_features(model, images)), rtol=0, atol=1e-6)
    assert len(said) == 1
    assert "its 10 class scores (from 'fc', Linear 32 → 10); frx embeds the input of 'fc' instead, D = 32" in said[0]
    assert "pass embed=frx_plugin.model.input_of('fc')" in said[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        said_so = ModelAdapter(model, transform="unit", embed=input_of("fc")).embed(images)
    torch.testing.assert_close(said_so, z, rtol=0, atol=0)


def test_a_wrapped_model_is_found_under_its_attribute(images):
    class Wrapper(torch.nn.Module):  # a LightningModule's self.net
        def __init__(self) -> None:
            super().__init__()
            self.net = TorchvisionResNetLike()

        def forward(self, x):
            return self.net(x)

    model = Wrapper().eval()
    z, said = _embed(model, images, transform="unit")
    torch.testing.assert_close(z, _reference(resnet_features(model.net, images)), rtol=0, atol=1e-6)
    assert len(said) == 1 and "input_of('net.fc')" in said[0]


def test_a_backbone_and_its_classifier_embed_the_backbone(images):
    model = BackboneAndClassifier().eval()
    z, said = _embed(model, images, transform="unit")
    torch.testing.assert_close(z, _reference(model.backbone(images)), rtol=0, atol=1e-6)
    assert len(said) == 1 and "forward gives D = 12, its 'backbone' D = 8" in said[0] and "pass embed='backbone'" in said[0]


def test_a_model_whose_forward_gives_the_embedding_is_embedded_as_it_is(images):
    # arcface_torch's iresnet ends in fc and then a BatchNorm (its embedding); a LightningModule's classifier as wide
    # as its embedding, used only in training_step: neither forward gives class scores
    probe = make_probe()
    for model in (BatchNormNet().eval(), TinyFaceModule(num_classes=16, dim=16).eval()):
        assert model(images).shape[1] == 16
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            z = embed_probe_set(ModelAdapter(model, transform="unit"), probe)
        torch.testing.assert_close(z, _reference(model(images)), rtol=0, atol=1e-6)


def test_a_classifier_sequential_is_found_by_its_name(images):
    class MobileNetLike(torch.nn.Module):  # torchvision's MobileNetV2/EfficientNet: features, then classifier = (Dropout, Linear)
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, stride=2, padding=1), torch.nn.BatchNorm2d(24), torch.nn.ReLU6())
            self.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(24, 7))

        def forward(self, x):
            return self.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))

    model = MobileNetLike().eval()
    z, said = _embed(model, images, transform="unit")
    torch.testing.assert_close(z, _reference(model.features(images).mean(dim=(2, 3))), rtol=0, atol=1e-6)
    assert len(said) == 1 and "(from 'classifier.1', Linear 24 → 7)" in said[0] and "input_of('classifier.1')" in said[0]
