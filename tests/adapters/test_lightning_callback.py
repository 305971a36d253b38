import csv
import json

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from frx_lightning import AttributeRecoveryCallback
from frx_plugin.history import read_history
from frx_plugin.model import embed_probe_set
from frx_plugin.passes import AnalysisConfig, analyze_probe
from tests.lightning_helpers import TinyFaceModule, make_probe, make_train_loader


def _trainer(tmp_path, callbacks, max_epochs, **kw):
    return Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=kw.pop("logger", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=kw.pop("enable_checkpointing", False),
        default_root_dir=tmp_path,
        **kw,
    )


def test_constructor_rejects_bad_arguments():
    probe = make_probe()
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer"):
        AttributeRecoveryCallback(probe, every_n_epochs=0)
    with pytest.raises(ValueError, match="on_error must be one of"):
        AttributeRecoveryCallback(probe, on_error="ignore")
    with pytest.raises(TypeError, match="probe must be a frx_plugin.probe.ProbeSet"):
        AttributeRecoveryCallback([1, 2, 3])
    with pytest.raises(ValueError, match="n_folds must be an integer of at least 2"):
        AttributeRecoveryCallback(probe, n_folds=1)


def test_callback_logs_every_pass_and_matches_an_independent_analysis(tmp_path):
    probe = make_probe()
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "frx", n_bootstrap=50)
    model = TinyFaceModule()
    trainer = _trainer(tmp_path, [callback], 2, logger=CSVLogger(tmp_path, name="logs"))
    trainer.fit(model, make_train_loader())

    schema, records, tensors = read_history(tmp_path / "frx")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[-1]["global_step"] == trainer.global_step
    assert schema == probe.schema
    assert tensors["pass2.probe_directions"].shape[1] == 16

    # the last pass equals an analysis of the final model's embeddings made without Lightning
    reference = analyze_probe(embed_probe_set(model, probe), probe, AnalysisConfig(n_bootstrap=50))
    for got, want in zip(records[-1]["attributes"], reference.leakage):
        assert got["name"] == want.name
        assert got["value"] == pytest.approx(want.value, abs=1e-9)
        assert got["leakage_low"] == pytest.approx(want.leakage_low, abs=1e-9)
    assert records[-1]["verification"]["tar"] == pytest.approx(reference.verification.tar)

    # every logger received frx/leakage/<attribute> with its bounds, at each pass's global step
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("frx/leakage/bright")]
    assert [int(r["step"]) for r in rows] == [r["global_step"] for r in records]
    last = rows[-1]
    bright = next(a for a in records[-1]["attributes"] if a["name"] == "bright")
    assert float(last["frx/leakage/bright"]) == pytest.approx(bright["leakage"], rel=1e-6)
    assert float(last["frx/leakage/bright/low"]) <= float(last["frx/leakage/bright"]) <= float(last["frx/leakage/bright/high"])
    assert "frx/verification/tar_at_fmr_0.001" in last


def test_every_n_epochs(tmp_path):
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path, every_n_epochs=2, n_bootstrap=0)
    _trainer(tmp_path, [callback], 5).fit(TinyFaceModule(), make_train_loader())
    assert callback.history.epochs == [0, 2, 4]


def test_resume_from_checkpoint_continues_the_history(tmp_path):
    probe = make_probe()
    loader = make_train_loader()
    # uninterrupted reference run
    ref = AttributeRecoveryCallback(probe, out_dir=tmp_path / "ref", n_bootstrap=20)
    _trainer(tmp_path / "a", [ref], 4).fit(TinyFaceModule(), loader)

    # interrupted run: 2 epochs with checkpoints, then a new Trainer resumes to 4
    out = tmp_path / "run"
    first = AttributeRecoveryCallback(probe, out_dir=out, n_bootstrap=20)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _trainer(tmp_path / "b", [first, ckpt], 2, enable_checkpointing=True).fit(TinyFaceModule(), loader)
    written_before = json.loads((out / "history.json").read_text())["records"]

    second = AttributeRecoveryCallback(probe, out_dir=out, n_bootstrap=20)
    ckpt2 = ModelCheckpoint(dirpath=tmp_path / "ckpt2")
    _trainer(tmp_path / "c", [second, ckpt2], 4, enable_checkpointing=True).fit(
        TinyFaceModule(), loader, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    _, records, tensors = read_history(out)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert records[:3] == written_before  # kept exactly, not re-run
    assert set(k.split(".")[0] for k in tensors) == {f"pass{i}" for i in range(5)}
    # and the continued passes equal the uninterrupted run's
    for got, want in zip(records[3:], ref.history.records[3:]):
        for a, b in zip(got["attributes"], want["attributes"]):
            if a["value"] is not None:
                assert a["value"] == pytest.approx(b["value"], abs=1e-5), a["name"]


def test_a_failing_pass_warns_and_training_goes_on(tmp_path):
    probe = make_probe()
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path, n_bootstrap=0)
    model = TinyFaceModule(nan_after_epoch=1)  # embeddings turn NaN from epoch 1: a "diverged" model
    with pytest.warns(UserWarning, match=r"epoch 2 failed.*NaN"):
        trainer = _trainer(tmp_path, [callback], 3, logger=CSVLogger(tmp_path, name="logs"))
        trainer.fit(model, make_train_loader())
    assert trainer.current_epoch == 3  # training finished
    assert callback.history.epochs == [0, 1]
    assert [f["epoch"] for f in callback.failures] == [2, 3]
    assert "NaN" in callback.failures[0]["error"]
    # said where the user looks: the history file's failures and the logger, at the failed passes' steps
    failures = json.loads((tmp_path / "history.json").read_text())["failures"]
    assert [f["epoch"] for f in failures] == [2, 3] and all("NaN" in f["error"] for f in failures)
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        failed = [int(r["step"]) for r in csv.DictReader(fh) if r.get("frx/pass_failed")]
    assert failed == [f["global_step"] for f in failures]


def test_on_error_raise_stops_the_run(tmp_path):
    callback = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path, n_bootstrap=0, on_error="raise")
    with pytest.raises(Exception, match="NaN"):
        _trainer(tmp_path, [callback], 3).fit(TinyFaceModule(nan_after_epoch=1), make_train_loader())


def test_an_unwritable_history_folder_does_not_stop_training_and_the_loggers_still_get_every_pass(tmp_path):
    import csv

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the history folder should be")
    callback = AttributeRecoveryCallback(make_probe(), out_dir=blocker, n_bootstrap=0)
    with pytest.warns(UserWarning, match="history could not be written to .*not-a-folder"):
        trainer = _trainer(tmp_path, [callback], 1, logger=CSVLogger(tmp_path, name="logs"))
        trainer.fit(TinyFaceModule(), make_train_loader())
    assert trainer.current_epoch == 1
    # nothing computed is lost: the passes stay in the callback's state (and so in checkpoints) ...
    assert callback.history.epochs == [0, 1]
    # ... they are not described as failed passes, since they were kept ...
    assert callback.failures == []
    # ... and the loggers got their scalars although the files could not be written
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("frx/leakage/bright")]
    assert [float(r["frx/epoch"]) for r in rows] == [0.0, 1.0]


def test_counterfactuals_are_logged_exact_on_the_synthetic_world_and_latent_elsewhere(tmp_path):
    import torch

    from frx_plugin.counterfactual import CounterfactualError
    from frx_plugin.counterfactual.measures import counterfactual_rows
    from frx_plugin.synthetic import SyntheticProbeSet

    probe = SyntheticProbeSet(20, 4, seed=1, size=32, first_identity=7_000)
    callback = AttributeRecoveryCallback(probe, out_dir=tmp_path / "frx", n_bootstrap=20, significance_samples=24, max_error_pairs=4)
    assert callback.counterfactual_path is None  # decided in setup, where the Trainer is known
    model = TinyFaceModule()
    trainer = _trainer(tmp_path, [callback], 1, logger=CSVLogger(tmp_path, name="logs"))
    trainer.fit(model, make_train_loader())
    assert callback.counterfactual_path == "exact"
    report = callback.last_report
    assert report.counterfactuals == "exact" and set(report.significance) == set(probe.schema.names)

    # identity significance of glasses by brute force with the trained model: re-render, re-embed, cosines
    rows = counterfactual_rows(len(probe), 24)
    model.eval()
    with torch.no_grad():
        z = torch.nn.functional.normalize(model(probe.images(torch.arange(len(probe)))), dim=1).double()
        changed = torch.nn.functional.normalize(model(probe.world.counterfactual(rows, "glasses", 1 - probe.labels["glasses"][rows])), dim=1).double()
    different = probe.identity[:, None] != probe.identity[None, :]
    impostor = (1 - z @ z.T)[different].mean()
    expected = float((1 - (z[rows] * changed).sum(1)).mean() / impostor)
    assert report.significance["glasses"]["value"] == pytest.approx(expected, rel=1e-4)

    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows_logged = [r for r in csv.DictReader(fh) if r.get("frx/significance/glasses")]
    assert len(rows_logged) == 2  # epoch 0 and epoch 1
    assert float(rows_logged[-1]["frx/significance/glasses"]) == pytest.approx(expected, rel=1e-4)
    shares = report.error_attribution["all"]
    assert all(0.0 <= v <= 1.0 for v in shares.values() if v == v)
    _, records, _ = read_history(tmp_path / "frx")
    assert records[-1]["counterfactuals"] == "exact" and "glasses" in records[-1]["significance"]

    # a probe set no generator can render: latent by default, an error at once when exact is demanded
    latent = AttributeRecoveryCallback(make_probe(), out_dir=tmp_path / "latent", n_bootstrap=0)
    _trainer(tmp_path / "b", [latent], 1).fit(TinyFaceModule(), make_train_loader())
    assert latent.counterfactual_path == "latent"
    assert latent.last_report.counterfactuals == "latent" and latent.last_report.significance
    with pytest.raises(CounterfactualError, match="frx_register_generators"):
        AttributeRecoveryCallback(make_probe(), counterfactuals="exact")
    with pytest.raises(ValueError, match="counterfactuals must be one of"):
        AttributeRecoveryCallback(make_probe(), counterfactuals="maybe")


def test_a_failing_generator_skips_the_counterfactuals_but_keeps_the_pass(tmp_path):
    import frx_plugin
    from frx_plugin.plugins import get_plugin_manager
    from frx_plugin.synthetic import SyntheticProbeSet

    class BrokenGenerator:
        attributes = ("glasses", "yaw", "age")

        def counterfactual(self, indices, attribute, values):
            raise RuntimeError("the renderer ran out of memory")

    class Plugin:
        @frx_plugin.hookimpl(tryfirst=True)
        def frx_register_generators(self, register):
            register("broken", lambda probe: BrokenGenerator())

    plugin = Plugin()
    get_plugin_manager().register(plugin)
    try:
        probe = SyntheticProbeSet(12, 3, seed=2, size=32, first_identity=9_000)
        callback = AttributeRecoveryCallback(probe, out_dir=tmp_path, n_bootstrap=0, significance_samples=6, max_error_pairs=2)
        with pytest.warns(UserWarning, match="counterfactuals skipped: RuntimeError: the renderer ran out of memory"):
            _trainer(tmp_path, [callback], 1).fit(TinyFaceModule(), make_train_loader())
        assert callback.history.epochs == [0, 1] and not callback.failures  # leakage and verification kept
        assert callback.last_report.significance == {} and callback.last_report.leakage
        assert any("the generator cannot change ['face_shape'" in w for w in callback.last_report.warnings)
        strict = AttributeRecoveryCallback(probe, out_dir=tmp_path / "strict", n_bootstrap=0, on_error="raise")
        with pytest.raises(RuntimeError, match="ran out of memory"):
            _trainer(tmp_path / "s", [strict], 1).fit(TinyFaceModule(), make_train_loader())
    finally:
        get_plugin_manager().unregister(plugin)


def test_a_generator_for_some_attributes_measures_those_and_names_the_rest(tmp_path):
    import frx_plugin
    from frx_plugin.plugins import get_plugin_manager
    from frx_plugin.synthetic import SyntheticProbeSet

    class PoseOnly:
        attributes = ("yaw", "roll")

        def __init__(self, world):
            self.world = world

        def counterfactual(self, indices, attribute, values):
            return self.world.counterfactual(indices, attribute, values)

    class Plugin:
        @frx_plugin.hookimpl(tryfirst=True)
        def frx_register_generators(self, register):
            register("pose-only", lambda probe: PoseOnly(probe.world) if isinstance(probe, SyntheticProbeSet) else None)

    plugin = Plugin()
    get_plugin_manager().register(plugin)
    try:
        probe = SyntheticProbeSet(12, 3, seed=2, size=32, first_identity=9_000)
        callback = AttributeRecoveryCallback(probe, out_dir=tmp_path, n_bootstrap=0, significance_samples=6, max_error_pairs=2, fmr=0.01)
        _trainer(tmp_path, [callback], 1).fit(TinyFaceModule(), make_train_loader())
        report = callback.last_report
        assert set(report.significance) == {"yaw", "roll"}
        assert set(report.error_attribution["all"]) == {"yaw", "roll"}
        assert any("the generator cannot change ['face_shape'" in w and "'glasses'" in w for w in report.warnings)
    finally:
        get_plugin_manager().unregister(plugin)
