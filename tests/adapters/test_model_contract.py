"""The model contract: which output is the embedding, the input range, the dtype — said, never guessed silently."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from frx_insightface.arcface_torch import ArcFaceTorchCallback
from frx_plugin.model import ModelAdapter, embed_probe_set
from frx_plugin.passes import AnalysisConfig, PassPlan, run_pass
from tests.lightning_helpers import make_probe
from tests.records import assert_same_measures

PLAN = PassPlan(config=AnalysisConfig(n_bootstrap=0))


class Net(torch.nn.Module):
    """A [0, 1] model: the embedding z."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                                            torch.nn.Flatten(), torch.nn.Linear(128, dim))

    def forward(self, x):
        return self.features(x)


class TrainedOnMinusOneToOne(torch.nn.Module):
    """The same network as trained on (x − 0.5) / 0.5, as arcface_torch trains: it undoes the map first."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net()

    def forward(self, x):
        return self.net(x * 0.5 + 0.5)


class LogitsAndZ(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net, self.head = Net(), torch.nn.Linear(16, 40)

    def forward(self, x):
        z = self.net(x)
        return self.head(z), z


class BackboneAndHead(torch.nn.Module):
    """A LightningModule-style forward: the backbone, then the classification head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = Net(), torch.nn.Linear(16, 40)

    def forward(self, x):
        return self.head(self.backbone(x))


def _record(model, probe, **options):
    report = run_pass(ModelAdapter(model, **options), probe, PLAN).report
    return json.loads(json.dumps(report.to_record()))


@pytest.fixture(scope="module")
def probe():
    return make_probe()


@pytest.fixture(scope="module")
def reference(probe):
    return _record(Net(), probe, transform="unit")


def test_the_arcface_torch_callback_feeds_a_minus_one_to_one_model_its_range_by_default(probe, reference, tmp_path):
    model = TrainedOnMinusOneToOne()
    callback = ArcFaceTorchCallback(probe, out_dir=tmp_path, config=AnalysisConfig(n_bootstrap=0), counterfactuals="off")
    callback.run(0, model)
    got = json.loads((tmp_path / "history.json").read_text())["records"][0]
    for key in ("epoch", "global_step", "counterfactuals"):
        got[key] = reference[key]
    assert_same_measures(reference, got)
    # fed [0, 1] as it is, the same model reads other numbers: the range matters
    wrong = _record(model, probe, transform="unit")
    assert max(abs(a["value"] - b["value"]) for a, b in zip(wrong["attributes"], reference["attributes"])) > 1e-3


def test_a_transform_that_is_not_given_is_a_warning_naming_the_option(probe):
    with pytest.warns(UserWarning, match=r"RGB in \[0, 1\].*pass transform="):
        embed_probe_set(ModelAdapter(Net()), probe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        embed_probe_set(ModelAdapter(Net(), transform="unit"), probe)  # said: no warning


def test_a_tuple_output_embeds_what_embed_names_and_warns_without_it(probe, reference):
    assert_same_measures(reference, _record(LogitsAndZ(), probe, transform="unit", embed=1))
    assert_same_measures(reference, _record(LogitsAndZ(), probe, transform="unit", embed=lambda module, x: module(x)[1]))
    with pytest.warns(UserWarning, match=r"2-tuple of a tensor of shape \(\d+, 40\), a tensor of shape \(\d+, 16\).*took "
                                         r"element 0.*pass embed="):
        guessed = _record(LogitsAndZ(), probe, transform="unit")
    assert guessed["attributes"] != reference["attributes"]


def test_a_forward_through_a_classifier_embeds_the_backbone_with_embed_and_warns_without(probe, reference):
    assert_same_measures(reference, _record(BackboneAndHead(), probe, transform="unit", embed="backbone"))
    with pytest.warns(UserWarning, match=r"forward gives D = 40, its 'backbone' D = 16.*pass embed='backbone'"):
        _record(BackboneAndHead(), probe, transform="unit")


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="transform='minus-one' is not a preset"):
        ModelAdapter(Net(), transform="minus-one")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['offset'\]"):
        ModelAdapter(Net(), transform={"offset": 1})
    with pytest.raises(TypeError, match="embed=1: the model gave a tensor"):
        ModelAdapter(Net(), embed=1, transform="unit").embed(torch.rand(2, 3, 16, 16))
    with pytest.raises(TypeError, match="the model's attribute 'head' is not callable"):
        model = Net()
        model.head = 3
        ModelAdapter(model, embed="head")


def test_a_bfloat16_model_embeds_in_its_dtype_and_the_analysis_gets_float32(probe, reference):
    model = Net().to(torch.bfloat16)
    z = embed_probe_set(ModelAdapter(model, transform="unit"), probe)
    assert z.dtype == torch.float32
    exact = embed_probe_set(ModelAdapter(Net(), transform="unit"), probe)
    assert float((z - exact).abs().max()) < 0.05  # bf16 rounding, nothing worse
    assert run_pass(ModelAdapter(model, transform="unit"), probe, PLAN).report is not None


def test_a_diverged_model_is_noticed_from_its_parameters_before_any_image_is_embedded(probe):
    model = Net()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = float("nan")
    result = run_pass(ModelAdapter(model, transform="unit"), probe, PLAN)
    assert result.report is None and "'features.0.weight' holds NaN" in result.failure
    assert calls == []


def test_nan_embeddings_stop_the_embedding_at_the_first_bad_batch(probe):
    class NaNOut(Net):
        def forward(self, x):
            return super().forward(x) * float("nan")

    model = NaNOut()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    result = run_pass(ModelAdapter(model, transform="unit"), probe, PassPlan(config=AnalysisConfig(n_bootstrap=0, batch_size=10)))
    assert result.report is None and "NaN or infinity in 10 of the first 10" in result.failure
    assert len(calls) == 1  # one batch of 10, not the whole probe set


def test_backbone_specs_take_the_contract_so_frx_analyze_reads_a_minus_one_to_one_model_right(tmp_path, capsys):
    """``--backbone torch:…,transform=arcface`` gives the record of the [0, 1] network; a bad preset is named."""
    from safetensors.torch import save_file

    from frx_plugin.commands.cli import main

    probe = "synthetic,n_identities=16,images_per_identity=3,size=16,first_identity=70000"
    plain, shifted = tmp_path / "net.safetensors", tmp_path / "shifted.safetensors"
    save_file({k: v.contiguous() for k, v in Net().state_dict().items()}, str(plain))
    save_file({k: v.contiguous() for k, v in TrainedOnMinusOneToOne().state_dict().items()}, str(shifted))
    runs = {
        "reference": f"torch:tests.adapters.test_model_contract:Net@{plain},transform=unit",
        "shifted": f"torch:tests.adapters.test_model_contract:TrainedOnMinusOneToOne@{shifted},transform=arcface",
        "tuple": f"torch:tests.adapters.test_model_contract:LogitsAndZ@{tmp_path / 'lz.safetensors'},transform=unit,embed=1",
    }
    model = LogitsAndZ()
    model.net.load_state_dict(Net().state_dict())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "lz.safetensors"))
    records = {}
    for name, spec in runs.items():
        code = main(["analyze", "--backbone", spec, "--probe", probe, "--bootstrap", "0", "--out", str(tmp_path / name)])
        assert code == 0, capsys.readouterr().err
        records[name] = json.loads((tmp_path / name / "analysis.json").read_text())["attributes"]
    for name in ("shifted", "tuple"):
        for a, b in zip(records["reference"], records[name]):
            assert a["name"] == b["name"] and (a["value"] is None) == (b["value"] is None)
            if a["value"] is not None:
                assert b["value"] == pytest.approx(a["value"], abs=1e-6), (name, a["name"])
    assert main(["analyze", "--backbone", f"torch:tests.adapters.test_model_contract:Net@{plain},transform=minus-one", "--probe", probe,
                 "--out", str(tmp_path / "bad")]) == 2
    assert "transform='minus-one' is not a preset" in capsys.readouterr().err


def test_a_sink_that_fails_costs_neither_the_pass_nor_the_training(probe, fresh_plugins):
    import frx_plugin
    from frx_plugin.plugins import get_plugin_manager

    class BrokenSink:
        @frx_plugin.hookimpl
        def frx_analysis_completed(self, report, context):
            raise OSError("disk full")

    get_plugin_manager().register(BrokenSink())
    result = run_pass(ModelAdapter(Net(), transform="unit"), probe, PLAN)
    assert result.report is not None
    assert any("frx_analysis_completed hook failed: OSError: disk full" in w for w in result.report.warnings)
    with pytest.raises(OSError, match="disk full"):
        run_pass(ModelAdapter(Net(), transform="unit"), probe, PassPlan(config=AnalysisConfig(n_bootstrap=0), on_error="raise"))
