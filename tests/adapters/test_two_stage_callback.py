"""The two-stage path inside a real Lightning run: logging, figures, TensorBoard images, bad input."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from frx_lightning import AttributeRecoveryCallback
from frx_plugin.errors import EstimatorError
from frx_plugin.history import read_history
from frx_plugin.hookspecs import hookimpl
from frx_plugin.leakage import identity_folds
from frx_plugin.model import embed_probe_set
from frx_plugin.plugins import get_plugin_manager
from frx_plugin.two_stage import TwoStageConfig, direct_readings, recovery_significance, within_fold_pairs
from frx_plugin.two_stage.decoders import ConvFaceDecoder
from tests.lightning_helpers import PixelEstimatorPlugin, TinyFaceModule, make_probe, make_train_loader
from tests.tensorboard_helpers import summary_tags

FAST = TwoStageConfig(steps=30, samples=3, n_bootstrap=20)


def _trainer(tmp_path, callback, max_epochs, logger=False):
    return Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=[callback], logger=logger,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )


@pytest.fixture
def pixels(fresh_plugins):
    plugin = PixelEstimatorPlugin()
    get_plugin_manager().register(plugin)
    return plugin


def test_two_stage_passes_log_recovery_write_figures_and_images(tmp_path, pixels):
    probe = make_probe()
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "frx", n_bootstrap=20, decode_every_n_epochs=2, two_stage=FAST)
    model = TinyFaceModule()
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    trainer = _trainer(tmp_path, callback, 2, loggers)
    trainer.fit(model, make_train_loader())
    assert callback.failures == []

    _, records, _ = read_history(tmp_path / "frx")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[0]["recovery"] and records[2]["recovery"] and records[1].get("recovery") is None
    recovery = records[2]["recovery"]
    assert recovery["decoder"] == "conv" and recovery["estimator"] == "pixels" and recovery["errors"] == []

    # the direct path's R_k equals one recomputed from the final model's embeddings outside Lightning
    z = embed_probe_set(model, probe)
    folds = identity_folds(probe.identity, FAST.n_folds, FAST.seed)
    pairs = within_fold_pairs(probe.identity, folds, FAST.seed)
    readings = direct_readings(z, probe.labels, probe.schema, folds)
    for attribute in probe.schema:
        want = float(recovery_significance(attribute, probe.labels[attribute.name], readings[attribute.name], readings[attribute.name][pairs]))
        assert recovery["attributes"][attribute.name]["direct"]["value"] == pytest.approx(want, abs=1e-9)
    # the estimator reads the real faces exactly (it is written from the renderer), and the decoded faces
    # keep the visible brightness the embeddings carry
    assert recovery["attributes"]["bright"]["real_images"] == pytest.approx(1.0)
    assert recovery["attributes"]["bright"]["two_stage"]["value"] > 0.5
    two = recovery["attributes"]["bright"]["two_stage"]
    assert two["low"] <= two["value"] <= two["high"]
    assert recovery["identity_similarity"]["decoded"] > recovery["identity_similarity"]["impostor"]

    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("frx/recovery/bright")]
    assert [int(r["step"]) for r in rows] == [records[0]["global_step"], records[2]["global_step"]]
    assert float(rows[-1]["frx/recovery/bright"]) == pytest.approx(two["value"])
    assert float(rows[-1]["frx/recovery_direct/tone"]) == pytest.approx(recovery["attributes"]["tone"]["direct"]["value"])
    assert "frx/recovery_spread/pattern" in rows[-1] and "frx/decoder/identity_similarity" in rows[-1]
    assert callback.last_timing["two_stage_s"] > 0

    for name in ("decoded.png", "recovery.png", "counterfactuals.png"):
        assert (tmp_path / "frx" / name).read_bytes()[:4] == b"\x89PNG"
    # no generator renders this probe set: the passes that train the decoders make decoded counterfactuals (and log
    # S_k, the error shares and the strip of explained errors from them), the pass between them the latent ones
    assert [r["counterfactuals"] for r in records] == ["decoded", "latent", "decoded"]
    decoded_steps = [records[0]["global_step"], records[2]["global_step"]]
    assert summary_tags(tmp_path / "tb", kind="image") == {"frx/decoded": decoded_steps, "frx/counterfactuals": decoded_steps}
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as fh:
        logged = {int(r["step"]): r for r in csv.DictReader(fh) if r.get("frx/significance/bright")}
    for record in (records[0], records[2]):
        row = logged[record["global_step"]]
        assert float(row["frx/significance/bright"]) == pytest.approx(record["significance"]["bright"]["value"])
        assert float(row["frx/errors/bright"]) == pytest.approx(record["error_attribution"]["all"]["bright"])


def test_decoders_warm_start_across_passes_and_resume(tmp_path, pixels):
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", n_bootstrap=0, decode_every_n_epochs=1,
                                         two_stage=TwoStageConfig(steps=30, samples=2, n_bootstrap=0))
    _trainer(tmp_path, callback, 1).fit(TinyFaceModule(), make_train_loader())
    _, records, _ = read_history(tmp_path / "frx")
    first, second = (r["recovery"]["decoder_fits"]["0"] for r in records)
    assert second["pixel_loss_start"] < first["pixel_loss_start"]  # the second pass starts where the first ended
    state = callback.state_dict()["two_stage"]
    assert {k.split(".")[0] for k in state} == {"fold0", "fold1"}
    resumed = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "again", decode_every_n_epochs=1, two_stage=FAST)
    resumed.load_state_dict(callback.state_dict())
    trainer = _trainer(tmp_path, resumed, 0)
    resumed.setup(trainer, TinyFaceModule(), "fit")
    decoder = resumed.two_stage.decoder(0, 16)
    assert all(torch.equal(decoder.state_dict()[k], state["fold0." + k]) for k in decoder.state_dict())


def test_a_named_estimator_without_an_attribute_skips_it_with_a_warning(tmp_path, fresh_plugins):
    get_plugin_manager().register(PixelEstimatorPlugin(only=("bright", "pattern")))
    named = TwoStageConfig(estimator="pixels", steps=FAST.steps, samples=FAST.samples, n_bootstrap=FAST.n_bootstrap)
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path, n_bootstrap=0, decode_every_n_epochs=1,
                                         run_before_training=False, two_stage=named)
    with pytest.warns(UserWarning, match=r"no output for \['tone'\]"):
        _trainer(tmp_path, callback, 1).fit(TinyFaceModule(), make_train_loader())
    recovery = callback.last_report.recovery
    assert "two_stage" not in recovery["attributes"]["tone"] and "no output for 'tone'" in recovery["attributes"]["tone"]["reason"]
    assert "two_stage" in recovery["attributes"]["bright"]
    assert recovery["attributes"]["tone"]["direct"]["value"] is not None  # the direct path still measures it


def test_by_default_the_trained_estimator_reads_what_the_plugin_does_not(tmp_path, fresh_plugins, monkeypatch):
    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path / "cache"))
    get_plugin_manager().register(PixelEstimatorPlugin(only=("bright", "pattern")))
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", n_bootstrap=0, decode_every_n_epochs=1,
                                         run_before_training=False, two_stage=FAST)
    _trainer(tmp_path, callback, 1).fit(TinyFaceModule(), make_train_loader())
    recovery = callback.last_report.recovery
    assert recovery["estimator"] == "pixels+trained"
    assert all("two_stage" in recovery["attributes"][name] for name in ("bright", "pattern", "tone"))
    assert recovery["attributes"]["bright"]["real_images"] == pytest.approx(1.0)  # still the plugin's exact reading


def test_an_estimator_of_another_image_size_is_an_error_naming_both(tmp_path, fresh_plugins):
    get_plugin_manager().register(PixelEstimatorPlugin(size=32))
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path, decode_every_n_epochs=1, two_stage=FAST)
    with pytest.raises(EstimatorError, match=r"decoder 'conv' makes images of shape \(3, 16, 16\).*estimator 'pixels' takes \(3, 32, 32\)"):
        _trainer(tmp_path, callback, 1).fit(TinyFaceModule(), make_train_loader())


class _ExplodingDecoder(ConvFaceDecoder):
    """A third-party decoder whose training diverges (its output layer holds NaN)."""

    def __init__(self, embedding_dim, output_shape, **options):
        super().__init__(embedding_dim, output_shape, **options)
        with torch.no_grad():
            self.net.out.weight.fill_(math.nan)


class _ExplodingPlugin:
    @hookimpl
    def frx_register_decoders(self, register):
        register("exploding", _ExplodingDecoder, "diverges")


def test_a_diverging_decoder_is_reported_and_training_goes_on(tmp_path, pixels):
    get_plugin_manager().register(_ExplodingPlugin())
    config = TwoStageConfig(decoder="exploding", steps=5, samples=2, n_bootstrap=0)
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "frx", n_bootstrap=0, decode_every_n_epochs=1, two_stage=config)
    with pytest.warns(UserWarning, match="diverged"):
        trainer = _trainer(tmp_path, callback, 1, CSVLogger(tmp_path, name="csv"))
        trainer.fit(TinyFaceModule(), make_train_loader())
    assert trainer.current_epoch == 1 and callback.failures == []
    _, records, _ = read_history(tmp_path / "frx")
    assert [r["epoch"] for r in records] == [0, 1]
    recovery = records[-1]["recovery"]
    assert len(recovery["errors"]) == 2 and all("diverged" in e for e in recovery["errors"])
    assert recovery["attributes"]["bright"]["two_stage"]["value"] is None  # no decoded face to read
    assert recovery["attributes"]["bright"]["direct"]["value"] is not None
    assert records[-1]["attributes"][0]["value"] is not None  # leakage of the same pass is kept
    # no decoder to render the decoded counterfactuals: the pass takes the latent path and says why
    assert records[-1]["counterfactuals"] == "latent" and records[-1]["significance"]
    assert any("decoded counterfactuals: every decoder of this pass failed" in w for w in records[-1]["warnings"])


def test_unknown_decoder_and_bad_period_are_rejected_at_once():
    probe = make_probe()
    with pytest.raises(ValueError, match="decode_every_n_epochs must be a positive integer"):
        AttributeRecoveryCallback(probe, decode_every_n_epochs=0)
    with pytest.raises(ValueError, match=r"decode_every_n_epochs \(3\) must be a multiple of every_n_epochs \(2\)"):
        AttributeRecoveryCallback(probe, every_n_epochs=2, decode_every_n_epochs=3)
    with pytest.raises(Exception, match="unknown decoder 'nope'; the installed plugins offer: .*conv"):
        AttributeRecoveryCallback(probe, decode_every_n_epochs=1, two_stage=TwoStageConfig(decoder="nope"))
    with pytest.raises(ValueError, match="two-stage samples must be a positive integer"):
        TwoStageConfig(samples=0)
