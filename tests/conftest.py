import pytest

from frx_plugin.plugins import reset_plugin_manager


@pytest.fixture
def fresh_plugins():
    """A new plugin manager for the test, and a new one again afterwards."""
    reset_plugin_manager()
    yield
    reset_plugin_manager()
