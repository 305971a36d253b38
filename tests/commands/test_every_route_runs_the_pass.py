"""Every command that analyses embeddings goes through ``run_pass``: each route fires ``frx_analysis_completed``
and refuses NaN embeddings in one line (in-process: the plugin manager is the point, not the process)."""

from __future__ import annotations

import pytest
import torch

from frx_plugin.hookspecs import hookimpl
from frx_plugin.plugins import get_plugin_manager
from tests.commands.test_cli_reliability import embedding_file

PROBE = "synthetic,n_identities=12,images_per_identity=3,size=32"


class _Net(torch.nn.Module):
    """A tiny backbone: a linear map of a few pixels; ``nan`` makes every embedding NaN (a diverged model's output)."""

    def __init__(self, nan: bool = False) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(48, 16)
        self.nan = nan

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.linear(images.flatten(1)[:, :48])
        return out * float("nan") if self.nan else out


class _Recorder:
    def __init__(self) -> None:
        self.contexts: list[dict] = []

    @hookimpl
    def frx_register_backbones(self, register) -> None:
        register("tiny-net", lambda **options: _Net(), "a tiny test backbone")
        register("nan-net", lambda **options: _Net(nan=True), "a tiny test backbone that outputs NaN")

    @hookimpl
    def frx_analysis_completed(self, report, context) -> None:
        self.contexts.append(dict(context))


@pytest.fixture
def recorder(fresh_plugins):
    plugin = _Recorder()
    get_plugin_manager().register(plugin, name="test.recorder")
    return plugin



@pytest.mark.parametrize("route", [
    ("analyze", "--embeddings", "{file}", "--bootstrap", "5"),
    ("analyze", "--embeddings", "{file}", "--bootstrap", "5", "--no-verification"),  # streamed in constant memory
    ("analyze", "--backbone", "tiny-net", "--probe", PROBE, "--bootstrap", "5", "--no-verification"),
    ("explain", "--embeddings", "{file}"),
    ("explain", "--backbone", "tiny-net", "--probe", PROBE, "--max-pairs", "2", "--fmr", "0.01"),
    ("benchmark", "--embeddings", "{file}", "--bootstrap", "5", "--no-report"),
    ("benchmark", "--backbone", "tiny-net", "--probe", PROBE, "--bootstrap", "5", "--no-report"),
], ids=lambda r: " ".join(r[:3]))
def test_every_route_fires_frx_analysis_completed(tmp_path, recorder, frx, route):
    file = embedding_file(tmp_path / "set.safetensors")
    args = [a.format(file=file) for a in route]
    result = frx(*args, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [c.get("framework") for c in recorder.contexts] == [f"frx {route[0]}"]


@pytest.mark.parametrize("route", [
    ("analyze", "--backbone", "nan-net", "--probe", PROBE, "--bootstrap", "5", "--no-verification"),
    ("analyze", "--backbone", "nan-net", "--probe", PROBE, "--bootstrap", "5"),
    ("explain", "--backbone", "nan-net", "--probe", PROBE),
], ids=lambda r: " ".join(r[:3]))
def test_every_model_route_refuses_nan_embeddings_in_one_line(tmp_path, recorder, frx, route):
    result = frx(*route, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith(f"frx {route[0]}: warning: ")]
    assert len(lines) == 1 and lines[0].startswith(f"frx {route[0]}: error: ") and "NaN" in lines[0], result.stderr[-3000:]
    assert recorder.contexts == []


def test_benchmark_refuses_nan_embeddings_in_the_backbone_row(tmp_path, recorder, frx):
    result = frx("benchmark", "--backbone", "nan-net", "--probe", PROBE, "--bootstrap", "5", "--no-report", "--out", tmp_path / "out")
    assert result.returncode == 1  # a failed backbone is its row's error; the table is still written
    assert "nan-net failed: AnalysisError: the embeddings of synthetic probe set contain NaN or infinity" in result.stderr
    assert recorder.contexts == []


def test_run_pass_refuses_given_rows_of_the_wrong_shape_or_with_nan():
    from frx_plugin.errors import AnalysisError
    from frx_plugin.passes import PassPlan, run_pass
    from frx_plugin.probe import ProbeSet
    from frx_plugin.synthetic import SYNTHETIC_SCHEMA, SyntheticProbeSet

    probe = SyntheticProbeSet(n_identities=6, images_per_identity=2, size=32)
    as_rows = ProbeSet(SYNTHETIC_SCHEMA, probe.identity, probe.labels, source="rows.safetensors")
    rows = torch.randn(len(probe), 8)
    rows[3, 1] = float("nan")
    with pytest.raises(AnalysisError, match=r"the embeddings of rows.safetensors contain NaN or infinity in 1 of 12 rows \(first: row 3\)"):
        run_pass(None, as_rows, PassPlan(on_error="raise"), embeddings=rows)
    with pytest.raises(AnalysisError, match=r"one row per probe sample \(12\) and at least one column, got \(12, 0\)"):
        run_pass(None, as_rows, PassPlan(on_error="raise"), embeddings=torch.zeros(12, 0))
    failed = run_pass(None, as_rows, PassPlan(), embeddings=rows)
    assert failed.report is None and "NaN" in failed.failure
