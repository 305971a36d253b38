import importlib.metadata
import sys
import textwrap

import pytest
import torch

import frx_plugin
from frx_plugin import plugins
from frx_plugin.analysis import embed_probe_set
from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.plugins import PluginError, create_backbone, get_plugin_manager
from frx_plugin.probe import TensorProbeSet


def _probe(n=8):
    schema = AttributeSchema([Attribute("glasses", "binary", group="nuisance")])
    return TensorProbeSet(
        torch.rand(n, 3, 8, 8), schema, torch.arange(n) // 2, {"glasses": torch.arange(n) % 2}, source="test probe"
    )


def test_builtin_parts_register_through_the_hooks(fresh_plugins):
    pm = get_plugin_manager()
    assert pm.get_plugin("frx.builtin") is not None
    impls = [impl.plugin_name for impl in pm.hook.frx_register_backbones.get_hookimpls()]
    assert "frx.builtin" in impls
    model = create_backbone("resnet-small", embedding_dim=16, input_size=32)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_a_plugin_registered_at_run_time_is_used(fresh_plugins):
    calls = []

    class DoubleEmbed:
        """Embeds by flattening the image, a behaviour the built-in fallback cannot produce."""

        @frx_plugin.hookimpl
        def frx_embed(self, model, images):
            calls.append(images.shape[0])
            return torch.nn.functional.normalize(images.flatten(1)[:, :5], dim=1)

        @frx_plugin.hookimpl
        def frx_register_backbones(self, register):
            register("tiny-linear", lambda dim=4: torch.nn.Linear(3, dim), "test backbone")

    pm = get_plugin_manager()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    probe = _probe()
    default = embed_probe_set(model, probe, batch_size=3)
    assert default.shape == (8, 3)
    pm.register(DoubleEmbed(), name="double")
    custom = embed_probe_set(model, probe, batch_size=3)
    assert calls == [3, 3, 2]
    expected = torch.nn.functional.normalize(probe.images(torch.arange(8)).flatten(1)[:, :5], dim=1)
    torch.testing.assert_close(custom, expected)
    assert "tiny-linear" in plugins.backbones()
    assert create_backbone("tiny-linear", dim=6).out_features == 6


def test_unknown_and_duplicate_names_are_clear_errors(fresh_plugins):
    with pytest.raises(PluginError, match="unknown backbone 'nope'.*resnet-small"):
        create_backbone("nope")

    class Dup:
        @frx_plugin.hookimpl
        def frx_register_backbones(self, register):
            register("resnet-small", torch.nn.Identity)

    get_plugin_manager().register(Dup())
    with pytest.raises(PluginError, match="'resnet-small' is registered twice"):
        plugins.backbones()


def test_default_embed_names_a_bad_model_output(fresh_plugins):
    probe = _probe()
    with pytest.raises(TypeError, match=r"expected embeddings \(B, D\)"):
        embed_probe_set(torch.nn.Identity(), probe)


def _install_distribution(folder, monkeypatch, name, entry_point):
    """A real installed distribution (a .dist-info on sys.path) with one entry point in the frx group."""
    dist = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[frx]\n{entry_point}\n")
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()


def test_entry_points_load_once_lazily_and_can_be_disabled(fresh_plugins, tmp_path, monkeypatch):
    # a real installed distribution with an entry point in the frx group, built in a temporary folder
    pkg = tmp_path / "frx_test_plugin.py"
    pkg.write_text(
        textwrap.dedent(
            """
            import frx_plugin
            LOADS = []
            LOADS.append(1)

            @frx_plugin.hookimpl
            def frx_register_backbones(register):
                register("from-entry-point", object)
            """
        )
    )
    _install_distribution(tmp_path, monkeypatch, "frx-test-plugin", "testplugin = frx_test_plugin")

    monkeypatch.setenv("FRX_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "from-entry-point" not in plugins.backbones()
    assert "frx_test_plugin" not in sys.modules

    monkeypatch.delenv("FRX_DISABLE_PLUGIN_AUTOLOAD")
    plugins.reset_plugin_manager()
    assert "from-entry-point" in plugins.backbones()
    module = sys.modules["frx_test_plugin"]
    plugins.backbones()
    get_plugin_manager()
    assert module.LOADS == [1]
    sys.modules.pop("frx_test_plugin", None)


def test_a_broken_entry_point_is_skipped_with_a_warning(fresh_plugins, tmp_path, monkeypatch):
    _install_distribution(tmp_path, monkeypatch, "frx-broken", "broken = frx_module_that_does_not_exist")
    with pytest.warns(RuntimeWarning, match="'broken'.*could not be loaded"):
        get_plugin_manager()
    assert "broken" in plugins.failed_plugins()
    assert "resnet-small" in plugins.backbones()


def test_lightning_adapter_is_an_installed_entry_point(fresh_plugins):
    names = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="frx")}
    assert names.get("lightning") == "frx_lightning.plugin"
    pm = get_plugin_manager()
    assert pm.get_plugin("lightning") is not None
    assert "frx_lightning" not in frx_plugin.hookspecs.__dict__  # the core never imports the adapter
