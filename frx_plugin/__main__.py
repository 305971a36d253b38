import sys

from frx_plugin.entry import main

sys.exit(main())
