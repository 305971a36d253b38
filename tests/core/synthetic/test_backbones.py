"""Built-in synthetic backbones (frx_plugin.synthetic.backbones): real training on small worlds, the cache, the spec kind."""

import re

import pytest
import torch

from frx_plugin.model import embed_probe_set
from frx_plugin.models import load_backbone, save_backbone
from frx_plugin.synthetic.backbones import (
    BUILTIN_BACKBONES,
    PROBE_FIRST_IDENTITY,
    build_synthetic_backbone,
    load_or_train_synthetic_backbone,
    open_synthetic_backbone,
    resolve_recipe,
    synthetic_backbone_path,
    train_synthetic_backbone,
)
from frx_plugin.synthetic.world import SyntheticProbeSet
from frx_plugin.verification import verification

#: about 100 SGD steps at 32x32: a few seconds per architecture, enough to beat the untrained net clearly
SMALL = dict(identities=100, images_per_identity=8, size=32, epochs=4, batch_size=32)
#: a few steps: for what only needs some training to have happened
TINY = dict(identities=20, images_per_identity=4, size=32, epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        folder = tmp_path_factory.mktemp("frx-cache")
        monkeypatch.setenv("FRX_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def trained(cache):
    """name → (model, facts, lines said) of the first, training call."""
    out = {}
    for name in BUILTIN_BACKBONES:
        said = []
        model, facts = load_or_train_synthetic_backbone(name, say=said.append, **SMALL)
        out[name] = (model, facts, said)
    return out


def _images(size=32, n=6):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["resnet-small", "mobilefacenet-like"])
def test_trained_backbones_beat_their_untrained_selves_on_held_out_identities(trained, name):
    model, facts, said = trained[name]
    assert not model.training
    assert facts["training_seconds"] > 0 and facts["recipe"] == resolve_recipe(name, **SMALL)
    assert len(said) == 2 and "about" in said[0] and facts["path"] in said[0] and "trained" in said[1]
    probe_spec = facts["probe"]
    assert probe_spec["size"] == 32 and probe_spec["first_identity"] == PROBE_FIRST_IDENTITY > SMALL["identities"]
    probe = SyntheticProbeSet(**probe_spec)

    def tar(backbone):
        return verification(embed_probe_set(backbone, probe), probe.identity, fmr=1e-2).tar

    before, after = tar(build_synthetic_backbone(name, **SMALL)), tar(model)
    assert after > 2 * before and after > before + 0.1, (before, after)  # about 0.06 → 0.3 on a 2-core CPU


def test_a_cached_backbone_is_loaded_without_training_and_other_settings_make_another_file(trained, cache):
    model, facts, _ = trained["resnet-small"]
    said = []
    again, facts_again = load_or_train_synthetic_backbone("resnet-small", say=said.append, **SMALL)
    assert said == [] and facts_again["training_seconds"] is None and facts_again["path"] == facts["path"]
    assert facts_again["probe"] == facts["probe"] and facts_again["recipe"] == facts["recipe"]
    assert not again.training
    with torch.no_grad():
        assert torch.equal(again(_images()), model(_images()))
    path = synthetic_backbone_path("resnet-small", **SMALL)
    assert str(path) == facts["path"] and path.parent == cache / "backbones" and path.name.startswith("resnet-small-")
    # the explicit default and the omitted one are one recipe; lr=1 and lr=1.0 too
    assert synthetic_backbone_path("resnet-small", **SMALL, momentum=0.9) == path
    assert synthetic_backbone_path("resnet-small", **TINY, lr=1) == synthetic_backbone_path("resnet-small", **TINY, lr=1.0)

    changed = dict(SMALL, epochs=1)
    _, other = load_or_train_synthetic_backbone("resnet-small", say=said.append, **changed)
    assert other["training_seconds"] is not None and other["path"] != facts["path"]
    assert sorted(p.name for p in (cache / "backbones").glob("resnet-small-*")) == sorted(
        {path.name, synthetic_backbone_path("resnet-small", **changed).name})
    _, description = load_backbone(other["path"])  # an ordinary saved backbone: frx:PATH opens it too
    assert description["architecture"] == "resnet-small" and description["probe"] == other["probe"]


def test_a_damaged_or_foreign_cache_file_is_retrained_with_a_warning_naming_it(cache):
    path = synthetic_backbone_path("mobilefacenet-like", **TINY)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(RuntimeWarning, match=re.escape(str(path))):
        model, facts = load_or_train_synthetic_backbone("mobilefacenet-like", say=lambda line: None, **TINY)
    assert facts["training_seconds"] is not None
    loaded, _ = load_backbone(path)  # replaced by a good file
    with torch.no_grad():
        assert torch.equal(loaded(_images()), model(_images()))

    save_backbone(build_synthetic_backbone("mobilefacenet-like", **TINY), path)  # a backbone, but not this recipe's
    with pytest.warns(RuntimeWarning, match=re.escape(str(path)) + ".*another recipe"):
        _, facts = load_or_train_synthetic_backbone("mobilefacenet-like", say=lambda line: None, **TINY)
    assert facts["training_seconds"] is not None
    _, facts = load_or_train_synthetic_backbone("mobilefacenet-like", say=lambda line: None, **TINY)
    assert facts["training_seconds"] is None


def test_training_is_deterministic_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    first = train_synthetic_backbone("mobilefacenet-like", say=lambda line: None, **TINY).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    second = train_synthetic_backbone("mobilefacenet-like", say=lambda line: None, **TINY).state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    untrained = build_synthetic_backbone("mobilefacenet-like", **TINY).state_dict()
    assert not all(torch.equal(first[k], untrained[k]) for k in first)
    other_seed = train_synthetic_backbone("mobilefacenet-like", say=lambda line: None, **TINY, seed=1).state_dict()
    assert not all(torch.equal(first[k], other_seed[k]) for k in first)


def test_the_synthetic_spec_kind_names_the_backbones_and_rejects_bad_settings(cache, fresh_plugins):
    from frx_plugin.plugins import backbones
    from frx_plugin.specs import open_backbone

    with pytest.raises(ValueError, match="unknown synthetic backbone 'nope'; known: resnet-small, mobilefacenet-like"):
        open_synthetic_backbone("nope")
    with pytest.raises(ValueError, match="unknown setting 'epoch'.*epochs"):
        open_synthetic_backbone("resnet-small", epoch=2)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        open_synthetic_backbone("resnet-small", epochs=2.5)
    with pytest.raises(ValueError, match="input_size must be a positive multiple of 16"):
        open_synthetic_backbone("mobilefacenet-like", size=40)
    assert "mobilefacenet-like" in backbones()["synthetic"].description
    assert "mobilefacenet-like" in backbones()
    spec = "synthetic:resnet-small," + ",".join(f"{k}={v}" for k, v in TINY.items())
    model, facts = open_backbone(spec)
    assert facts["probe"]["size"] == 32 and facts["recipe"]["epochs"] == 1
    assert embed_probe_set(model, SyntheticProbeSet(n_identities=3, images_per_identity=2, size=32)).shape == (6, 128)
