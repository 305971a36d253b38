"""The stage-2 estimator trained on a probe set's own faces: an image folder with a CSV written here, a square
planted in the pixels (readable), a label that is noise (unreadable), a brightness (continuous); its held-out
accuracy equals scikit-learn's StandardScaler + Ridge on the same folds, features and penalties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import Ridge, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from frx_insightface.readers import ImageFolderProbeSet
from frx_plugin.leakage import identity_folds
from frx_plugin.two_stage import TwoStage, TwoStageConfig
from frx_plugin.two_stage.measures import READABLE_MIN
from frx_plugin.two_stage.probe_estimator import load_or_train_probe_estimator, probe_features, train_probe_estimator

N_IDS, PER_ID, SIZE = 30, 5, 32


def write_face_folder(root, n_ids=N_IDS, per_id=PER_ID, size=SIZE):
    """PNG faces and labels.csv: ``square`` (a white square top left, 1 in 2 faces), ``coin`` (a label drawn
    independently of the pixels) and ``shade`` (the brightness of the bottom half, continuous)."""
    folder = root / "faces"
    folder.mkdir()
    rng = np.random.default_rng(7)
    rows = ["path,identity,square,coin,shade"]
    for i in range(n_ids):
        tone = rng.uniform(0.2, 0.8, 3)  # an identity's colour
        for j in range(per_id):
            square, coin, shade = int(rng.integers(2)), int(rng.integers(2)), float(rng.uniform(0, 1))
            pixels = np.clip(tone + rng.normal(0, 0.15, (size, size, 3)), 0, 1)
            pixels[size // 2 :, :, :] = shade
            if square:
                pixels[2:12, 2:12, :] = 1.0
            name = f"{i}_{j}.png"
            Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / name)
            rows.append(f"{name},id{i},{square},{coin},{shade:.4f}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def probe(tmp_path, monkeypatch):
    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_face_folder(tmp_path)
    return ImageFolderProbeSet(folder, align="none", size=SIZE, kinds="square:binary;coin:binary;shade:continuous")


def test_planted_attribute_readable_noise_unreadable(probe):
    folds = identity_folds(probe.identity, 2, 0)
    estimator = train_probe_estimator(probe, folds, seed=0)
    assert estimator.readable["square"] and estimator.ceiling["square"] > 0.8
    assert estimator.readable["shade"] and estimator.accuracy["shade"]["r2"] > 0.8
    assert not estimator.readable["coin"] and estimator.ceiling["coin"] <= READABLE_MIN
    assert estimator.accuracy["square"]["accuracy"] > 0.9


def test_held_out_accuracy_equals_sklearn_on_the_same_folds_and_features(probe):
    folds = identity_folds(probe.identity, 3, 1)
    estimator = train_probe_estimator(probe, folds, seed=1)
    x = probe_features(probe).double().numpy()
    labels = {name: probe.labels[name].numpy() for name in ("square", "coin", "shade")}
    predicted = {name: np.zeros(len(probe)) for name in labels}
    for f in range(3):
        train, test = (folds != f).numpy(), (folds == f).numpy()
        for name in ("square", "coin"):
            alpha = estimator.penalties[str(f)][name]
            if math.isinf(alpha):  # the intercept alone: the training majority (ties: class 0, the first largest output)
                predicted[name][test] = float(labels[name][train].mean() > 0.5)
                continue
            model = make_pipeline(StandardScaler(), RidgeClassifier(alpha=alpha))
            predicted[name][test] = model.fit(x[train], labels[name][train]).predict(x[test])
        model = make_pipeline(StandardScaler(), Ridge(alpha=estimator.penalties[str(f)]["shade"]))
        # a reading stays within the labelled values (the lowest and highest shade of the probe set)
        predicted["shade"][test] = np.clip(model.fit(x[train], labels["shade"][train]).predict(x[test]),
                                           labels["shade"].min(), labels["shade"].max())
    for name in ("square", "coin"):
        assert estimator.accuracy[name]["accuracy"] == pytest.approx(float((predicted[name] == labels[name]).mean()), abs=1e-12)
    y = labels["shade"].astype(np.float64)
    r2 = 1 - ((y - predicted["shade"]) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert estimator.accuracy["shade"]["r2"] == pytest.approx(r2, abs=1e-6)
    # each fold's faces are read by the heads trained without them
    readings = estimator.estimate_fold(probe.images(torch.nonzero(folds == 2).view(-1)), 2)
    assert np.array_equal(readings["square"].numpy(), predicted["square"][(folds == 2).numpy()])


def test_cached_per_probe_set_and_deterministic(probe, tmp_path):
    folds = identity_folds(probe.identity, 2, 0)
    first = load_or_train_probe_estimator(probe, folds, 0)
    files = list((tmp_path / "cache" / "estimators").glob("probe-*.safetensors"))
    assert len(files) == 1
    again = load_or_train_probe_estimator(probe, folds, 0)  # loaded
    fresh = train_probe_estimator(probe, folds, 0)  # trained again: the same heads
    for other in (again, fresh):
        assert other.ceiling == pytest.approx(first.ceiling) and other.penalties == first.penalties
        for a, b in zip(first.weights, other.weights):
            torch.testing.assert_close(a, b)
    load_or_train_probe_estimator(probe, identity_folds(probe.identity, 3, 0), 0)  # other folds: another file
    assert len(list((tmp_path / "cache" / "estimators").glob("probe-*.safetensors"))) == 2


def test_two_stage_reads_an_image_folder_with_the_trained_estimator(probe):
    """Before: "no estimator can read the attributes of image folder …"."""
    two_stage = TwoStage(probe, TwoStageConfig(n_folds=2, seed=0))
    assert two_stage.estimator_name == "trained"
    assert two_stage.attributes == ["square", "coin", "shade"]
    # the real faces are read fold by fold with held-out heads: their R is the estimator's ceiling
    reference = train_probe_estimator(probe, two_stage.folds, seed=0)
    real = two_stage.real_readings()
    from frx_plugin.two_stage.measures import recovery_significance

    pairs = two_stage.pairs
    for a in probe.schema:
        target = torch.where(pairs >= 0, probe.labels[a.name], torch.full_like(probe.labels[a.name], -1 if a.discrete else math.nan))
        value = float(recovery_significance(a, target, real[a.name], real[a.name][pairs.clamp_min(0)]))
        assert value == pytest.approx(reference.ceiling[a.name], abs=1e-6)


def test_a_named_plugin_estimator_takes_precedence_and_trained_reads_the_rest(probe):
    import frx_plugin
    from frx_plugin.plugins import get_plugin_manager, reset_plugin_manager

    class Squares:
        attributes, accuracy, input_shape = ("square",), {"square": {"accuracy": 1.0}}, (3, SIZE, SIZE)

        def estimate(self, images):
            return {"square": (images[:, :, 2:12, 2:12].mean((1, 2, 3)) > 0.95).long()}

    class SquarePlugin:
        @frx_plugin.hookimpl
        def frx_register_estimators(self, register):
            register("squares", lambda probe: Squares(), "reads the planted square")

    reset_plugin_manager()
    try:
        get_plugin_manager().register(SquarePlugin(), name="squares")
        two_stage = TwoStage(probe, TwoStageConfig(estimator=("squares", "trained")))
        assert two_stage.estimator_name == "squares+trained"
        assert two_stage.estimator.estimators[1].attributes == ("coin", "shade")
        assert two_stage.real_readings()["square"].tolist() == probe.labels["square"].double().tolist()
        only = TwoStage(probe, TwoStageConfig(estimator="squares"))  # named alone: no trained heads
        assert only.attributes == ["square"] and only.warnings
    finally:
        reset_plugin_manager()
