"""Specs of the command line (frx_plugin.specs): parsing, the built-in backbone kinds, probe sets by name or suffix,
and estimators that label a probe set."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.errors import EstimatorError
from frx_plugin.estimators import CombinedEstimator, label_probe_set
from frx_plugin.models import ResidualFaceNet, save_backbone
from frx_plugin.plugins import PluginError
from frx_plugin.probe import select_attributes
from frx_plugin.specs import open_backbone, open_probe, parse_spec
from frx_plugin.synthetic import SyntheticProbeSet


def test_parse_spec():
    spec = parse_spec("insightface:models/a,b.onnx,flip=true,size=112,scale=0.5,name=x")
    assert (spec.kind, spec.argument) == ("insightface", "models/a,b.onnx")  # a comma inside a path survives
    assert spec.options == {"flip": True, "size": 112, "scale": 0.5, "name": "x"}
    assert parse_spec("synthetic,n_identities=20").kind == "synthetic"
    assert parse_spec("synthetic,n_identities=20").options == {"n_identities": 20}
    assert parse_spec("torch:pkg.mod:make@w.safetensors").argument == "pkg.mod:make@w.safetensors"
    assert parse_spec("synthetic").argument is None
    with pytest.raises(ValueError, match=r"no kind before ':'"):
        parse_spec(":x.onnx", "backbone")
    with pytest.raises(ValueError, match=r"option 'flip' is given twice"):
        parse_spec("insightface:x.onnx,flip=1,flip=0")
    with pytest.raises(ValueError, match=r"'y' after the options"):
        parse_spec("insightface:x.onnx,flip=1,y")


def test_torch_backbone_loads_safetensors_weights_strictly(tmp_path):
    torch.manual_seed(0)
    net = ResidualFaceNet(embedding_dim=16, widths=(8, 8, 8, 8), input_size=32).eval()
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    spec = f"torch:frx_plugin.models:ResidualFaceNet@{weights},embedding_dim=16,input_size=32"
    with pytest.raises(ValueError, match=r"do not fit frx_plugin\.models:ResidualFaceNet: .*missing|mis-shaped"):
        open_backbone(spec)  # default widths: the tensors have other shapes and names
    small = ResidualFaceNet(embedding_dim=16, input_size=32)
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(weights))
    model, facts = open_backbone(spec)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), small.eval()(images)) and not model.training and facts == {}
    # the factory's options are checked by name (the opener itself takes **options)
    with pytest.raises(ValueError, match=r"torch backbone .*: unknown option 'std'; frx_plugin\.models:ResidualFaceNet backbones "
                                         r"take the options embedding_dim, widths, blocks_per_stage, input_size, dropout$"):
        open_backbone(spec + ",std=128")
    with pytest.raises(ValueError, match=r"expected package\.module:factory@weights\.safetensors"):
        open_backbone("torch:frx_plugin.models:ResidualFaceNet")
    with pytest.raises(ValueError, match=r"cannot import 'no_such_module'"):
        open_backbone(f"torch:no_such_module:make@{weights}")
    with pytest.raises(FileNotFoundError, match=r"no weights file .*absent\.safetensors"):
        open_backbone("torch:frx_plugin.models:ResidualFaceNet@absent.safetensors")
    (tmp_path / "w.pt").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"must be a \.safetensors file \(frx never unpickles"):
        open_backbone(f"torch:frx_plugin.models:ResidualFaceNet@{tmp_path / 'w.pt'}")


def test_frx_backbone_names_its_probe_set(tmp_path):
    net = ResidualFaceNet(embedding_dim=16, widths=(8, 8, 8, 8), input_size=32).eval()
    save_backbone(net, tmp_path / "backbone.safetensors", probe={"n_identities": 5, "images_per_identity": 2, "size": 32})
    model, facts = open_backbone(f"frx:{tmp_path}")  # the folder is enough
    assert facts["probe"] == {"n_identities": 5, "images_per_identity": 2, "size": 32}
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(images), net(images))
    with pytest.raises(PluginError, match=r"unknown kind 'frxx'; the installed plugins offer: frx \("):
        open_backbone("frxx:x")


def test_probe_sets_by_name_and_options():
    probe = open_probe("synthetic,n_identities=4,images_per_identity=3,size=32")
    assert len(probe) == 12 and probe.images(torch.arange(1)).shape == (1, 3, 32, 32)
    with pytest.raises(PluginError, match=r"probe set 'nope.xyz': unknown kind 'nope.xyz'; the installed plugins offer: .*synthetic \("):
        open_probe("nope.xyz")
    with pytest.raises(FileNotFoundError, match=r"probe set 'missing.bin': no such file"):
        open_probe("missing.bin")  # a suffix a probe set reads (the InsightFace adapter's .bin), but no file
    with pytest.raises(ValueError, match=r"probe set 'synthetic:x': synthetic takes no argument"):
        open_probe("synthetic:x")


class _Means:
    """Reads 'brightness' (continuous) and 'reddish' (binary) off images: an estimator with a schema."""

    schema = AttributeSchema([Attribute("brightness", "continuous"), Attribute("reddish", "binary")])
    attributes = ("brightness", "reddish")
    accuracy: dict = {}

    def __init__(self, shape):
        self.input_shape = shape
        self.path = "means"

    def estimate(self, images):
        channel = images.mean((2, 3))
        return {"brightness": images.mean((1, 2, 3)), "reddish": (channel[:, 0] > channel[:, 2]).long()}


class _Skin(_Means):
    schema = AttributeSchema([Attribute("skin_tone", "continuous"), Attribute("green", "continuous")])
    attributes = ("skin_tone", "green")

    def estimate(self, images):
        return {"skin_tone": torch.full((images.shape[0],), 99.0), "green": images[:, 1].mean((1, 2))}


def test_estimators_label_a_probe_set():
    probe = SyntheticProbeSet(3, 2, size=32)
    images = probe.images(torch.arange(6))
    labelled = label_probe_set(probe, [_Means((3, 32, 32)), _Skin((3, 32, 32))], batch_size=4)
    assert labelled.schema.names == (*probe.schema.names, "brightness", "reddish", "green")
    assert torch.allclose(labelled.labels["brightness"], images.mean((1, 2, 3)))
    assert labelled.labels["reddish"].dtype == torch.int64
    # an attribute the probe set labels keeps its ground truth
    assert torch.equal(labelled.labels["skin_tone"], probe.labels["skin_tone"])
    assert labelled.estimated == {"brightness": "means", "reddish": "means", "green": "means"}
    assert torch.equal(labelled.images(torch.tensor([1])), probe.images(torch.tensor([1])))
    assert labelled.counterfactual is not None  # the wrapped probe set's other members pass through
    chosen = select_attributes(labelled, ["green", "age"])
    assert chosen.schema.names == ("green", "age") and chosen.estimated == {"green": "means"}
    with pytest.raises(EstimatorError, match=r"attribute 'brightness' is read by two estimators"):
        label_probe_set(probe, [_Means((3, 32, 32)), _Means((3, 32, 32))])
    combined = CombinedEstimator([_Means((3, 32, 32)), _Skin((3, 32, 32))])
    assert combined.attributes == ("brightness", "reddish", "skin_tone", "green")
    assert set(combined.estimate(images)) == set(combined.attributes)
    with pytest.raises(EstimatorError, match=r"different image shapes"):
        CombinedEstimator([_Means((3, 32, 32)), _Skin((3, 64, 64))])
