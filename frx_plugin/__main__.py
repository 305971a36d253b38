import sys

from frx_plugin.cli import main

sys.exit(main())
