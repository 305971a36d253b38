"""The ``frx`` command line: plugin subcommands (hook ``frx_register_commands``) and the entry points."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from frx_plugin.commands.cli import main
from frx_plugin.hookspecs import hookimpl
from frx_plugin.plugins import get_plugin_manager
from tests.ddp_launch import HANG_LIMIT_S


class _GreetPlugin:
    """A plugin that adds ``frx greet --name NAME [--fail]``."""

    def __init__(self, name: str = "greet") -> None:
        self.name = name

    @hookimpl
    def frx_register_commands(self, register):
        def factory(parser):
            parser.add_argument("--name", required=True)
            parser.add_argument("--fail", action="store_true")

            def run(args):
                if args.fail:
                    raise ValueError(f"cannot greet {args.name}")
                print(f"hello {args.name}; given {sorted(vars(args))}")
                return 3

            return run

        register(self.name, factory, description="say hello")


def test_a_plugin_adds_a_subcommand_with_its_options_and_run(fresh_plugins, capsys):
    get_plugin_manager().register(_GreetPlugin())
    assert main(["greet", "--name", "Ada"]) == 3
    assert capsys.readouterr().out == "hello Ada; given ['fail', 'name']\n"  # its own options only
    assert main(["greet", "--name", "Ada", "--fail"]) == 2
    assert capsys.readouterr().err == "frx greet: error: cannot greet Ada\n"
    with pytest.raises(SystemExit):
        main(["greet", "--name", "Ada", "--unknown"])
    assert "unrecognized arguments: --unknown" in capsys.readouterr().err


def test_a_plugin_cannot_take_a_name_of_frx_own_commands(fresh_plugins, capsys):
    get_plugin_manager().register(_GreetPlugin("analyze"))
    with pytest.raises(SystemExit) as help_exit:
        main(["--help"])  # the plugins' commands are loaded for the list of commands: the help is still printed
    assert help_exit.value.code == 0
    printed = capsys.readouterr()
    assert printed.err == ("frx: warning: command 'analyze' is one of frx's own and cannot be registered by a plugin; "
                           "it is left out\n")  # one line, no traceback
    assert "analyze" in printed.out and "say hello" not in printed.out
    assert main(["plugins"]) == 2  # and listed by frx plugins, which says so in one line
    assert "frx plugins: error: command 'analyze' is one of frx's own" in capsys.readouterr().err


def test_the_console_script_and_the_module_run_main():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'frx = "frx_plugin.entry:main"' in text  # the command line imported under a Ctrl-C guard
    proc = subprocess.run([sys.executable, "-m", "frx_plugin", "--version"], capture_output=True, text=True, timeout=HANG_LIMIT_S)
    assert proc.returncode == 0 and proc.stdout.startswith("frx "), proc.stderr


def test_the_distribution_has_a_name_of_its_own():
    """``frx`` on PyPI is an unrelated project: the distribution is frx-plugin; the command and the import packages keep their names."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from frx_plugin import DISTRIBUTION
    from frx_plugin.commands.registry import missing_command_message

    root = Path(__file__).resolve().parents[2]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "frx-plugin"
    assert project["scripts"] == {"frx": "frx_plugin.entry:main"}
    assert "pip install 'frx-plugin[lightning]'" in missing_command_message("demo")
    readme = (root / "README.md").read_text()
    assert "frx-plugin" in readme and "pip install frx\n" not in readme
