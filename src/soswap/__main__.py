"""``python -m soswap``."""

import sys

from soswap.console import main

sys.exit(main())
