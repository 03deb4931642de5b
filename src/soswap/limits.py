"""How many file descriptors this process has open: what soswap may still open without reaching
``ulimit -n`` (a caller can hand over many)."""

from __future__ import annotations

import os
from typing import Optional


def descriptors_in_use(below: Optional[int] = None) -> int:
    """The descriptors open in this process (0 when /proc cannot tell); ``below``: only those numbered below it
    (one numbered at or above the soft limit takes none of the numbers a new descriptor can get)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return 0
    numbers = [int(n) for n in names if n.isdigit()]
    counted = len(numbers) if below is None else sum(1 for n in numbers if n < below)
    return max(0, counted - 1)  # the listing's own descriptor (the lowest free number: below any limit)
