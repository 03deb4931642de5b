"""Process start times and file times on one clock.

``/proc/PID/stat`` field 22 counts clock ticks of CLOCK_BOOTTIME since boot; file times are CLOCK_REALTIME.
Their difference is read once per scan (``clock_gettime`` of both, nanoseconds), which is more precise than
``btime`` from /proc/stat (whole seconds). A tick (1/CLK_TCK s) is the resolution of a start time, so a file
counts as changed *after* a start only when it is more than one tick later.

Limit: a backward step of the wall clock after a process started makes files written before the step look
newer than the process (their mtime is on the old clock); see docs/stale.md, "modified".
"""

from __future__ import annotations

import os
import time
from typing import Optional


class Clock:
    def __init__(self) -> None:
        hz = os.sysconf("SC_CLK_TCK") if "SC_CLK_TCK" in os.sysconf_names else 100
        self.tick_ns = 1_000_000_000 // max(1, int(hz))
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        #: realtime minus boottime: the wall-clock instant of boot, in ns.
        self.boot_realtime_ns = real - boot

    def start_realtime_ns(self, starttime_ticks: int) -> int:
        """The wall-clock time (ns) a process with this start time started (truncated to a tick)."""
        return self.boot_realtime_ns + starttime_ticks * self.tick_ns

    def changed_after_start(self, file_time_ns: Optional[int], starttime_ticks: int) -> bool:
        """True when a file time (realtime ns) lies more than one tick after the process start."""
        if file_time_ns is None:
            return False
        return file_time_ns > self.start_realtime_ns(starttime_ticks) + self.tick_ns
