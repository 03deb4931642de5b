"""soswap: replace shared libraries and executables under running programs, safely."""

__version__ = "0.1.0"
