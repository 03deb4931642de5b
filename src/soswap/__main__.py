"""``python -m soswap``."""

import sys

from soswap import console

sys.exit(console())
