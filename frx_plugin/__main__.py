import sys

from frx_plugin.commands.cli import main

sys.exit(main())
