"""The subcommands that plugins add to ``frx`` through the ``frx_register_commands`` hook.

A plugin registers ``register(name, factory, description="")``: ``factory(parser)`` sets up the
subcommand's arguments on its own ``argparse.ArgumentParser`` and returns ``run(args)`` → exit code
(:class:`frx_plugin.interfaces.CommandFactory`). A command that comes with an optional extra
(:data:`OPTIONAL_COMMANDS`) and is not installed answers with a one-line error naming the extra.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frx_plugin import DISTRIBUTION
from frx_plugin.errors import PluginError
from frx_plugin.plugins import failed_plugins, get_plugin_manager

if TYPE_CHECKING:  # pragma: no cover
    from frx_plugin.interfaces import CommandFactory

#: Commands that an optional extra brings: name -> (one-line help, the extra, what it installs).
OPTIONAL_COMMANDS = {
    "demo": ("train a small backbone on the synthetic face world with frx attached", "lightning", "the Lightning adapter"),
}


@dataclass(frozen=True)
class PluginCommand:
    name: str
    factory: CommandFactory
    description: str


def plugin_commands(reserved: Sequence[str] = (), refused: Callable[[str], None] | None = None) -> dict[str, PluginCommand]:
    """Every subcommand the plugins register, by name. A name in ``reserved`` (the core's), one registered twice or
    a registration that is not a command is a PluginError; with ``refused``, that registration is left out and
    ``refused(message)`` says why (the command line's help is still built)."""
    found: dict[str, PluginCommand] = {}

    def refuse(message: str) -> None:
        if refused is None:
            raise PluginError(message)
        refused(message)

    def register(name: str, factory: CommandFactory, description: str = "") -> None:
        if not isinstance(name, str) or not name or name.startswith("-"):
            return refuse(f"command name must be a non-empty string not starting with '-', got {name!r}")
        if not callable(factory):
            return refuse(f"command {name!r}: factory must be callable, got {type(factory).__name__}")
        if name in reserved:
            return refuse(f"command {name!r} is one of frx's own and cannot be registered by a plugin")
        if name in found:
            return refuse(f"command {name!r} is registered twice")
        found[name] = PluginCommand(name, factory, description)
        return None

    get_plugin_manager().hook.frx_register_commands(register=register)
    return found


def missing_command_message(name: str) -> str:
    """One line: the optional command ``name`` is not installed, and how to install it (with any plugin that failed to load)."""
    _, extra, what = OPTIONAL_COMMANDS[name]
    why = "".join(f"; plugin {plugin!r} failed to load: {reason}" for plugin, reason in failed_plugins().items())
    return f"the command comes with {what}, which is not installed: pip install '{DISTRIBUTION}[{extra}]'" + " ".join(why.splitlines())


def run_plugin_command(name: str, argv: Sequence[str]) -> int | None:
    """Run the plugin subcommand ``name`` as ``frx NAME ARGV...``; its exit code, or None when no plugin offers it."""
    command = plugin_commands().get(name)
    if command is None:
        return None
    parser = argparse.ArgumentParser(prog=f"frx {name}", description=command.description)
    run = command.factory(parser)
    return int(run(parser.parse_args(list(argv))))
