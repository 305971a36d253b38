"""The ``frx`` subcommands: argument parsing (``cli``) and one module per command."""
