"""The example plugin (examples/frx_example_plugin) installed for real, through pip and its ``frx`` entry point.

It is built offline (no build isolation, no index: setuptools comes from this environment) into a
temporary ``--target`` folder that the test puts on ``sys.path``.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from frx_plugin import plugins
from frx_plugin.plugins import find_estimator, get_plugin_manager
from frx_plugin.specs import open_estimator, open_probe, probe_for
from tests.ddp_launch import HANG_LIMIT_S

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "frx_example_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin pip-installed into a temporary folder (a copy is built, so the source tree stays clean)."""
    work = tmp_path_factory.mktemp("example-plugin")
    source = work / "src"
    shutil.copytree(EXAMPLE, source)
    target = work / "site"
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        capture_output=True, text=True, env=env, cwd=work, timeout=HANG_LIMIT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(target.glob("frx_example_plugin-0.1.0.dist-info/entry_points.txt"))
    return target


@pytest.fixture
def on_path(installed, monkeypatch, fresh_plugins):
    monkeypatch.syspath_prepend(str(installed))
    importlib.invalidate_caches()
    plugins.reset_plugin_manager()
    yield installed
    for name in [m for m in sys.modules if m == "frx_example_plugin" or m.startswith("frx_example_plugin.")]:
        sys.modules.pop(name)


def test_the_example_plugin_registers_a_probe_set_and_an_estimator(on_path, monkeypatch):
    monkeypatch.delenv(plugins.DISABLE_AUTOLOAD_ENV, raising=False)
    pm = get_plugin_manager()
    assert pm.get_plugin("example") is not None
    assert Path(sys.modules["frx_example_plugin"].__file__).parent.parent == on_path  # the installed copy, not the source
    assert plugins.probe_sets()["stripes"].plugin == "example"
    assert plugins.estimators()["stripes"].plugin == "example"

    probe = open_probe("stripes,n_identities=3,images_per_identity=4,size=32")
    assert len(probe) == 12 and probe.images(torch.arange(2)).shape == (2, 3, 32, 32)
    estimator = open_estimator("stripes", probe)
    readings = estimator.estimate(probe.images(torch.arange(len(probe))))
    assert torch.equal(readings["striped"], probe.labels["striped"])
    torch.testing.assert_close(readings["brightness"], probe.labels["brightness"])
    # looked up for the probe set without a name, as the two-stage path does
    assert find_estimator(probe)[0] == "stripes"
    # and as the command line uses both
    labelled = probe_for(probe="stripes,size=32", estimators=["stripes"])
    assert set(labelled.schema.names) >= {"striped", "brightness"}
    with pytest.raises(ValueError, match=r"probe set 'stripes:x': stripes takes no argument"):
        open_probe("stripes:x")


def test_autoload_disabled_keeps_the_example_plugin_out(on_path, monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_AUTOLOAD_ENV, "1")
    plugins.reset_plugin_manager()
    assert get_plugin_manager().get_plugin("example") is None
    assert "stripes" not in plugins.probe_sets() and "stripes" not in plugins.estimators()
    assert "frx_example_plugin" not in sys.modules
