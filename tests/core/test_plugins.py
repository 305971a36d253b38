import importlib.metadata
import sys
import textwrap

import pytest
import torch

import frx_plugin
from frx_plugin import plugins
from frx_plugin.attributes import Attribute, AttributeSchema
from frx_plugin.model import embed_probe_set
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


# ------------------------------------------------------------------ one registry per kind, typed factories, cache


def test_one_registry_per_kind(fresh_plugins):
    pm = get_plugin_manager()
    hooks = {name for name in dir(frx_plugin.hookspecs) if name.startswith("frx_register_")}
    assert {"frx_register_backbones", "frx_register_probe_sets", "frx_register_generators", "frx_register_decoders",
            "frx_register_estimators"} <= hooks
    assert not hooks & {"frx_register_backbone_specs", "frx_register_estimator_specs"}
    assert {kind.hook for kind in plugins.KINDS.values()} <= hooks
    backbones = plugins.backbones()
    # the spec kinds and the named architectures are one registry
    assert {"frx", "synthetic", "torch", "insightface", "resnet-small", "mobilefacenet-like"} <= set(backbones)
    assert backbones["frx"].needs_argument and backbones["frx"].argument == "argument"
    assert backbones["resnet-small"].argument is None and not backbones["resnet-small"].needs_argument
    assert backbones["insightface"].plugin == "insightface" and backbones["torch"].plugin == "frx.builtin"
    # estimators: one registry whose entries are looked up for a probe set and opened from a spec
    estimators = plugins.estimators()
    assert {"synthetic", "insightface"} <= set(estimators)
    assert estimators["insightface"].needs_argument and estimators["insightface"].argument == "path"
    assert not estimators["synthetic"].needs_argument
    assert pm.hook.frx_register_backbones.spec is not None


def test_a_factory_that_is_not_callable_is_a_one_line_error_naming_the_plugin_and_the_name(fresh_plugins):
    class Broken:
        @frx_plugin.hookimpl
        def frx_register_decoders(self, register):
            register("pixels", "not a factory", "a string, not a decoder factory")

    get_plugin_manager().register(Broken(), name="broken-decoders")
    with pytest.raises(PluginError) as info:
        plugins.decoders()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("plugin 'broken-decoders': decoder 'pixels': the factory must be callable")
    assert "DecoderFactory" in message and "got str" in message
    get_plugin_manager().unregister(name="broken-decoders")
    assert "conv" in plugins.decoders()

    class Nameless:
        @frx_plugin.hookimpl
        def frx_register_estimators(self, register):
            register("", lambda probe: None)

    get_plugin_manager().register(Nameless(), name="nameless")
    with pytest.raises(PluginError, match=r"^plugin 'nameless': estimator names must be non-empty strings, got ''$"):
        plugins.estimators()


def test_a_registry_is_built_once_per_plugin_manager_state(fresh_plugins):
    calls = []

    class Counting:
        def __init__(self, name):
            self.name = name

        @frx_plugin.hookimpl
        def frx_register_probe_sets(self, register):
            calls.append(self.name)
            register(self.name, lambda: _probe(), "counted")

    pm = get_plugin_manager()
    pm.register(Counting("first"), name="first")
    assert "first" in plugins.probe_sets() and "first" in plugins.probe_sets()
    plugins.create_probe_set("first")
    assert calls == ["first"]  # built once, cached
    plugins.backbones()
    assert calls == ["first"]  # another kind's registry does not run this hook
    pm.register(Counting("second"), name="second")  # registering invalidates
    assert {"first", "second"} <= set(plugins.probe_sets())
    assert calls == ["first", "second", "first"]  # the last registered is called first
    plugins.probe_sets()
    assert len(calls) == 3
    pm.unregister(name="first")  # unregistering invalidates
    assert "first" not in plugins.probe_sets() and "second" in plugins.probe_sets()
    assert calls[3:] == ["second"]
    pm.set_blocked("second")
    assert "second" not in plugins.probe_sets()
    plugins.reset_plugin_manager()  # a new manager, new registries
    assert "second" not in plugins.probe_sets() and "synthetic" in plugins.probe_sets()
    # the copy a caller gets is its own
    mine = plugins.probe_sets()
    mine.clear()
    assert "synthetic" in plugins.probe_sets()


def test_a_plugin_on_a_removed_hook_is_told_the_new_one(fresh_plugins):
    class Old:
        @frx_plugin.hookimpl
        def frx_register_backbone_specs(self, register):
            register("old", lambda argument: torch.nn.Identity())

    get_plugin_manager().register(Old(), name="old-plugin")
    with pytest.raises(PluginError, match=r"plugin 'old-plugin' implements frx_register_backbone_specs, which frx no longer "
                                          r"calls: implement frx_register_backbones instead"):
        plugins.backbones()
    assert "synthetic" in plugins.probe_sets()  # the other registries are unaffected


def test_estimators_that_need_an_argument_are_opened_only_by_name(fresh_plugins):
    from frx_plugin.errors import EstimatorError
    from frx_plugin.plugins import find_estimator, require_estimator
    from frx_plugin.specs import open_estimator

    opened = []

    class Reads:
        attributes, accuracy = ("glasses",), {}

        def __init__(self, path):
            self.path, self.input_shape = path, (3, 8, 8)

        def estimate(self, images):
            return {"glasses": torch.zeros(images.shape[0], dtype=torch.long)}

    def from_file(probe, path, scale=1):
        opened.append((path, scale))
        return Reads(path)

    class FilePlugin:
        @frx_plugin.hookimpl
        def frx_register_estimators(self, register):
            register("file", from_file, "file:PATH[,scale=N]")

    get_plugin_manager().register(FilePlugin(), name="files")
    probe = _probe()
    assert find_estimator(probe) is None and opened == []  # not tried without a name: it needs a file
    with pytest.raises(EstimatorError, match=r"no estimator can read the attributes of test probe"):
        require_estimator(probe)
    with pytest.raises(PluginError, match=r"estimator 'file' needs an argument \(path\): file:PATH"):
        find_estimator(probe, "file")
    estimator = open_estimator("file:w.onnx,scale=2", probe)
    assert estimator.path == "w.onnx" and opened == [("w.onnx", 2)]
    assert require_estimator(probe, "file", {"path": "v.onnx"})[1].path == "v.onnx"
    with pytest.raises(ValueError, match=r"estimator 'file': file estimators need an argument: file:PATH"):
        open_estimator("file", probe)
    with pytest.raises(ValueError, match=r"estimator 'file:w.onnx,colour=1': unknown option 'colour'; file estimators take the options scale$"):
        open_estimator("file:w.onnx,colour=1", probe)
    with pytest.raises(PluginError, match=r"estimator 'nope': unknown kind 'nope'; the installed plugins offer: file \("):
        open_estimator("nope", probe)


def test_backbone_architectures_and_spec_kinds_open_alike(fresh_plugins):
    from frx_plugin.specs import open_backbone

    model, facts = open_backbone("resnet-small,embedding_dim=16,input_size=32")  # an untrained architecture
    assert facts == {} and model(torch.rand(2, 3, 32, 32)).shape == (2, 16)
    with pytest.raises(ValueError, match=r"backbone 'resnet-small:x': resnet-small takes no argument"):
        open_backbone("resnet-small:x")
    with pytest.raises(ValueError, match=r"backbone 'frx': frx backbones need an argument: frx:PATH"):
        open_backbone("frx")
    with pytest.raises(ValueError, match=r"backbone 'frx:x,flip=1': unknown option 'flip'; frx backbones take no options$"):
        open_backbone("frx:x,flip=1")
    # an architecture's options are its class's parameters, checked by name before the call
    with pytest.raises(ValueError, match=r"backbone 'resnet-small,embeding_dim=8': unknown option 'embeding_dim'; "
                                         r"resnet-small backbones take the options embedding_dim, widths, .*input_size"):
        open_backbone("resnet-small,embeding_dim=8")
