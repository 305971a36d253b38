import os

import pytest

from frx_plugin.plugins import reset_plugin_manager

# frx's heartbeat and plain progress lines are timed: on a loaded machine they would add lines to the tests that
# check a command's output line by line; tests/commands/test_cli_output.py tests them with their own intervals
os.environ.setdefault("FRX_HEARTBEAT_S", "3600")
os.environ.setdefault("FRX_PROGRESS_EVERY_S", "3600")


@pytest.fixture
def fresh_plugins():
    """A new plugin manager for the test, and a new one again afterwards."""
    reset_plugin_manager()
    yield
    reset_plugin_manager()
