"""``python -m qfx``: the command line."""

import sys

from qfx.cli import main

sys.exit(main())
