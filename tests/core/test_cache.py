"""frx's on-disk cache folder (frx_plugin.cache), shared by the synthetic estimator and backbones."""

from frx_plugin.cache import CACHE_DIR_ENV, cache_dir


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FRX_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("FRX_CACHE_DIR")
    assert cache_dir().parts[-2:] == (".cache", "frx")


def test_the_variable_is_frx_cache_dir():
    assert CACHE_DIR_ENV == "FRX_CACHE_DIR"
