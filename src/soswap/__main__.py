"""``python -m soswap``."""

import sys

from soswap.cli import main

sys.exit(main())
