"""How many file descriptors this process has open: what soswap may still open without reaching
``ulimit -n`` (a caller can hand over many)."""

from __future__ import annotations

import os


def descriptors_in_use() -> int:
    """The descriptors open in this process (0 when /proc cannot tell)."""
    try:
        return max(0, len(os.listdir("/proc/self/fd")) - 1)  # the listing's own descriptor
    except OSError:
        return 0
