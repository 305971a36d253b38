"""The built-in synthetic attribute estimator: what it reads, its reported accuracy, its on-disk cache, the hook."""

import json
import warnings

import pytest
import torch

import frx_plugin.synthetic.estimator as est
from frx_plugin.errors import EstimatorError
from frx_plugin.interfaces import AttributeEstimator
from frx_plugin.plugins import find_estimator
from frx_plugin.probe import TensorProbeSet
from frx_plugin.synthetic.estimator import (
    SYNTHETIC_ESTIMATOR_DEFAULTS,
    AttributeCNN,
    attribute_accuracy,
    load_or_train_synthetic_estimator,
    load_synthetic_estimator,
    synthetic_estimator,
    synthetic_estimator_path,
    train_synthetic_estimator,
)
from frx_plugin.synthetic.parameters import SYNTHETIC_SCHEMA
from frx_plugin.synthetic.world import SyntheticFaceWorld, SyntheticProbeSet

# small enough to train in ~15 s on 2 cores, large enough to read the obvious attributes at 32x32
SMALL = dict(size=32, n_identities=600, images_per_identity=4, epochs=15)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions gain little from a second thread, and on a shared, busy machine two threads
    can be ten times slower than one (they wait for each other); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("frx-cache")


@pytest.fixture(scope="module")
def trained(cache, one_thread):
    """The SMALL estimator, trained once through the cache (so the cache file exists afterwards)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRX_CACHE_DIR", str(cache))
        estimator = load_or_train_synthetic_estimator(**SMALL)
        path = synthetic_estimator_path(**SMALL)
    assert path.is_file()
    return estimator, path


@pytest.fixture
def in_cache(cache, monkeypatch):
    monkeypatch.setenv("FRX_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def no_training(monkeypatch):
    def refuse(**config):
        raise AssertionError(f"retrained {config}")

    monkeypatch.setattr(est, "train_synthetic_estimator", refuse)


def _quantized(images: torch.Tensor) -> torch.Tensor:
    """As training keeps its renders (uint8)."""
    return images.mul(255).round().to(torch.uint8).float().div(255)


# --------------------------------------------------------------------------- what it reads


def test_it_reads_the_visible_attributes_of_new_identities(trained):
    estimator, _ = trained
    assert isinstance(estimator, AttributeEstimator)
    assert estimator.input_shape == (3, 32, 32) and estimator.attributes == SYNTHETIC_SCHEMA.names
    # other identities (and another seed: other people, other noise textures) than it was trained on
    world = SyntheticProbeSet(n_identities=150, images_per_identity=4, seed=7, size=32, first_identity=1_000_000).world
    index = torch.arange(len(world))
    truth = world.labels(index)
    read = estimator.estimate(world.render(index))
    for a in SYNTHETIC_SCHEMA:
        assert read[a.name].shape == (len(world),)
        assert read[a.name].dtype == (torch.int64 if a.discrete else torch.float32)
    scores = attribute_accuracy(SYNTHETIC_SCHEMA, read, truth)

    def majority(name):
        return float(torch.bincount(truth[name]).max()) / len(world)

    assert scores["glasses"]["accuracy"] > majority("glasses") + 0.15, scores["glasses"]  # 0.7 → about 0.94
    assert scores["hair_colour"]["accuracy"] > majority("hair_colour") + 0.5, scores["hair_colour"]  # ~0.2 → ~0.97
    assert scores["background"]["accuracy"] > 0.9, scores["background"]
    assert scores["yaw"]["r2"] > 0.6, scores["yaw"]  # about 0.85
    assert scores["skin_tone"]["r2"] > 0.8, scores["skin_tone"]  # about 0.94
    # continuous readings come back in the attribute's units (degrees), not standardized
    assert scores["yaw"]["mae"] < 10.0 and float(read["yaw"].abs().max()) > 15.0


def test_reported_accuracy_is_that_of_the_held_out_identities(trained):
    estimator, _ = trained
    world = estimator.training_world
    held = estimator.held_out_indices()
    held_ids = set(estimator.held_out_identities)
    assert len(held_ids) == round(0.2 * SMALL["n_identities"]) and len(held) == len(held_ids) * SMALL["images_per_identity"]
    assert set(world.identity(held).tolist()) == held_ids
    # recomputed on exactly those faces, it agrees with what the estimator reports
    mine = attribute_accuracy(SYNTHETIC_SCHEMA, estimator.estimate(_quantized(world.render(held))), world.labels(held))
    assert set(estimator.accuracy) == set(SYNTHETIC_SCHEMA.names)
    for name, metrics in estimator.accuracy.items():
        expected = ("accuracy", "balanced_accuracy") if SYNTHETIC_SCHEMA[name].discrete else ("r2", "mae")
        assert tuple(metrics) == expected
        for metric, value in metrics.items():
            assert value == pytest.approx(mine[name][metric], abs=1e-3), (name, metric)
    # and it is not the accuracy on the training identities: those are a disjoint set
    everything = world.identity(torch.arange(len(world)))
    train_ids = set(everything.tolist()) - held_ids
    assert len(train_ids) == SMALL["n_identities"] - len(held_ids)


def test_estimate_rejects_images_of_another_shape_naming_both(trained):
    estimator, _ = trained
    with pytest.raises(EstimatorError, match=r"\(3, 32, 32\).*\(2, 3, 64, 64\)"):
        estimator.estimate(torch.rand(2, 3, 64, 64))
    with pytest.raises(EstimatorError, match=r"\(3, 32, 32\).*\(2, 1, 32, 32\)"):
        estimator.estimate(torch.rand(2, 1, 32, 32))
    with pytest.raises(EstimatorError, match=r"\(3, 32, 32\).*\(3, 32, 32\)"):
        estimator.estimate(torch.rand(3, 32, 32))  # no batch dimension
    assert estimator.estimate(torch.rand(0, 3, 32, 32))["glasses"].shape == (0,)


def test_estimate_reads_in_batches_the_same_as_at_once(trained):
    estimator, _ = trained
    images = SyntheticFaceWorld(80, 4, size=32, first_identity=100_000).render(torch.arange(300))
    whole = estimator.estimate(images)
    parts = [estimator.estimate(images[i : i + 7]) for i in range(0, 300, 7)]
    for name in estimator.attributes:
        joined = torch.cat([p[name] for p in parts])
        if SYNTHETIC_SCHEMA[name].discrete:
            assert torch.equal(whole[name], joined), name
        else:
            torch.testing.assert_close(whole[name], joined, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [16, 32, 64, 112])
def test_the_cnn_takes_any_multiple_of_16(size):
    module = AttributeCNN(SYNTHETIC_SCHEMA, size).eval()
    outputs = module(torch.rand(2, 3, size, size))
    assert outputs.shape == (2, sum(a.num_classes if a.discrete else 1 for a in SYNTHETIC_SCHEMA))
    heads = module.split(outputs)
    assert heads["hair_colour"].shape == (2, 5) and heads["glasses"].shape == (2, 2) and heads["yaw"].shape == (2,)
    with pytest.raises(ValueError, match="multiple of 16"):
        AttributeCNN(SYNTHETIC_SCHEMA, 40)


def test_training_is_deterministic_in_its_seed():
    tiny = dict(size=16, n_identities=10, images_per_identity=2, epochs=1, batch_size=8)
    a, b = train_synthetic_estimator(**tiny), train_synthetic_estimator(**tiny)
    c = train_synthetic_estimator(**tiny, seed=1)
    for key, value in a.module.state_dict().items():
        assert torch.equal(value, b.module.state_dict()[key]), key
    assert a.held_out_identities == b.held_out_identities and a.accuracy == b.accuracy
    assert not torch.equal(a.module.head.weight, c.module.head.weight)
    lines = []
    train_synthetic_estimator(**tiny, say=lines.append)
    assert any("epoch 1/1" in line for line in lines)


def test_bad_configurations_are_errors_naming_the_setting():
    with pytest.raises(EstimatorError, match="size must be a multiple of 16"):
        train_synthetic_estimator(size=40)
    with pytest.raises(EstimatorError, match="held_out_fraction"):
        train_synthetic_estimator(held_out_fraction=1.0)
    with pytest.raises(TypeError, match="unknown settings.*'epoch'"):
        load_or_train_synthetic_estimator(epoch=3)


# --------------------------------------------------------------------------- the cache


def test_a_second_call_loads_the_cached_estimator(trained, in_cache, no_training):
    estimator, path = trained
    assert path.parent == in_cache / "estimators" and path.name.startswith("synthetic-") and path.suffix == ".safetensors"
    again = load_or_train_synthetic_estimator(**SMALL)  # no_training: a retraining fails the test (no clock needed)
    assert again.config == estimator.config and again.accuracy == estimator.accuracy
    assert again.held_out_identities == estimator.held_out_identities
    images = SyntheticFaceWorld(20, 2, size=32, first_identity=100_000).render(torch.arange(40))
    first, second = estimator.estimate(images), again.estimate(images)
    for name in estimator.attributes:
        assert torch.equal(first[name], second[name]), name
    # the defaults complete the key: naming a default explicitly is the same file
    assert synthetic_estimator_path(**SMALL, lr=SYNTHETIC_ESTIMATOR_DEFAULTS["lr"]) == path
    assert synthetic_estimator_path(**SMALL, lr=1) == synthetic_estimator_path(**SMALL, lr=1.0)


def test_another_configuration_is_another_file(trained, in_cache):
    _, path = trained
    others = {synthetic_estimator_path(**{**SMALL, key: value})
              for key, value in [("epochs", 14), ("seed", 1), ("size", 64), ("lr", 1e-3), ("held_out_fraction", 0.25)]}
    assert len(others) == 5 and path not in others
    assert all(p.parent == path.parent for p in others)


def test_the_cache_file_has_no_pickle_and_a_json_description(trained):
    from safetensors import safe_open

    _, path = trained
    with safe_open(str(path), framework="pt") as handle:
        description = json.loads(handle.metadata()[est.ESTIMATOR_METADATA])
        keys = set(handle.keys())
    assert {"target_mean", "target_std", "head.weight"} <= keys
    assert description["key"]["config"]["size"] == 32 and description["key"]["format"] == est.SYNTHETIC_ESTIMATOR_FORMAT
    assert [a["name"] for a in description["schema"]] == list(SYNTHETIC_SCHEMA.names)
    assert set(description["accuracy"]) == set(SYNTHETIC_SCHEMA.names)


def _copy_cache(trained, tmp_path, monkeypatch):
    """A private cache holding a copy of the trained file (so the tests can damage it)."""
    _, path = trained
    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path))
    copy = synthetic_estimator_path(**SMALL)
    copy.parent.mkdir(parents=True)
    copy.write_bytes(path.read_bytes())
    return copy


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_corrupt_cache_file_is_retrained_with_a_warning_naming_it(trained, tmp_path, monkeypatch, damage):
    estimator = trained[0]
    path = _copy_cache(trained, tmp_path, monkeypatch)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00not a safetensors file" * 10, "empty": b""}[damage])
    with pytest.raises(EstimatorError, match=str(path).replace("\\", "\\\\")):
        load_synthetic_estimator(path)
    calls = []

    def retrain(**config):
        calls.append(config)
        return estimator

    monkeypatch.setattr(est, "train_synthetic_estimator", retrain)
    with pytest.warns(RuntimeWarning, match=f"{path.name}.*retrained"):
        again = load_or_train_synthetic_estimator(**SMALL)
    assert again is estimator and len(calls) == 1 and calls[0]["size"] == 32
    # the retrained estimator replaced the bad file (atomically: no temporary file left behind)
    assert load_synthetic_estimator(path).config == estimator.config
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_a_file_made_for_another_configuration_is_not_used(trained, tmp_path, monkeypatch, no_training):
    path = _copy_cache(trained, tmp_path, monkeypatch)
    wrong = synthetic_estimator_path(**{**SMALL, "epochs": 3})
    wrong.write_bytes(path.read_bytes())  # as if a file had been copied under another name
    with pytest.raises(EstimatorError, match=f"{wrong.name}.*another config"):
        load_synthetic_estimator(wrong, {**SMALL, "epochs": 3})
    with pytest.warns(RuntimeWarning, match=wrong.name), pytest.raises(AssertionError, match="retrained"):
        load_or_train_synthetic_estimator(**{**SMALL, "epochs": 3})
    # without a configuration to check against, a file loads as what its header says it is
    assert load_synthetic_estimator(wrong).config["epochs"] == SMALL["epochs"]


def test_an_unwritable_cache_still_gives_the_estimator(trained, tmp_path, monkeypatch):
    estimator = trained[0]
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FRX_CACHE_DIR", str(blocker))
    monkeypatch.setattr(est, "train_synthetic_estimator", lambda **config: estimator)
    with pytest.warns(RuntimeWarning, match="could not cache"):
        assert load_or_train_synthetic_estimator(**SMALL) is estimator


# --------------------------------------------------------------------------- the hook


def test_find_estimator_offers_it_for_synthetic_probe_sets(trained, in_cache, no_training, fresh_plugins, monkeypatch):
    estimator = trained[0]
    # the factory reads the defaults at call time; the probe set's image size replaces theirs
    monkeypatch.setattr(est, "SYNTHETIC_ESTIMATOR_DEFAULTS", {**SYNTHETIC_ESTIMATOR_DEFAULTS, **SMALL, "size": 64})
    probe = SyntheticProbeSet(n_identities=4, images_per_identity=2, size=32)
    found = find_estimator(probe)
    assert found is not None
    name, offered = found
    assert name == "synthetic" and isinstance(offered, est.SyntheticEstimator)
    assert offered.input_shape == (3, 32, 32) and offered.config == estimator.config
    assert find_estimator(probe, "synthetic")[0] == "synthetic"
    readings = offered.estimate(probe.images(torch.arange(len(probe))))
    assert set(readings) == set(SYNTHETIC_SCHEMA.names)


def test_no_estimator_for_other_probe_sets(fresh_plugins, no_training):
    world = SyntheticFaceWorld(3, 2, size=16)
    index = torch.arange(len(world))
    probe = TensorProbeSet(world.render(index), SYNTHETIC_SCHEMA, world.identity(index), world.labels(index))
    assert synthetic_estimator(probe) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an optional adapter that cannot load says so; not this test's business
        assert find_estimator(probe) is None


def test_the_defaults_are_the_training_functions():
    import inspect

    signature = inspect.signature(est.train_synthetic_estimator)
    assert SYNTHETIC_ESTIMATOR_DEFAULTS == {k: p.default for k, p in signature.parameters.items() if k != "say"}
