"""Process start times and file times on one clock, robust to wall-clock steps.

``/proc/PID/stat`` field 22 counts clock ticks of CLOCK_BOOTTIME since boot; file times are CLOCK_REALTIME. To
compare them, the *offset* realtime − boottime (the wall-clock instant of boot) is needed: it is read once per
scan (``clock_gettime`` of both, ns), which is more precise than ``btime`` of /proc/stat (whole seconds, and it
moves with the clock too). A start time has a resolution of one tick (1/CLK_TCK s), so a file counts as changed
*after* a start only when it is more than one tick later.

Wall-clock steps change that offset. A **backward** step (an RTC kept in local time corrected by NTP, a VM
resumed from an old snapshot, ``date -s``) makes files written before the step look newer than processes
started before it: the false "modified" of dnf-plugins-core#595. Two rules keep a backward step from creating
reports (the clock stays a witness of last resort; identity rules — deleted, replaced, truncated — never use it):

1. **Offset history.** Every scan records the offset it saw when it differs from the last recorded one by
   more than a second (``<state dir>/clock``, keyed by the kernel's boot id, so a few lines per boot).
   A process started at boot time S is then compared with the *latest* wall-clock time any write up to S could
   have carried under the offsets seen: ``max(o_i + min(S, b_{i+1}))`` over the samples ``(b_i, o_i)`` taken
   up to S, and ``o_j + S`` for the first sample after S. A file written before the process started can
   never exceed that, whatever steps happened in between — provided some scan saw the old offset.
2. **Unexplained future.** A file time later than any clock seen could have written it (more than 5 s past
   the latest possible write time) is not judged at all ("cannot tell"): the clock went back without a scan
   seeing the old offset, or the time was set explicitly (``touch -d`` in the future, an archive made on a
   machine whose clock was ahead).

Remaining limits (docs/stale.md): a step that no scan observed before it happened, more than 5 s back and
older than the file's age, still reads as "modified"; after a backward step of D, an in-place change within
D after the start of a process is not seen (a false negative, the price of rule 1); a forward step hides
changes made before it (their mtime is on the slower clock).

The time source is injectable (``Clock(now=...)``) so that these rules are tested without touching the clock.
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple

from soswap.textfile import write_atomic

#: A file time more than this past the latest possible write time is "in the future": not judged.
FUTURE_SLACK_NS = 5_000_000_000
#: Offsets within this of the last recorded one are the same clock (NTP slews, reading jitter).
SAME_OFFSET_NS = 1_000_000_000
#: At most this many change points are kept per boot (dropping middle points only makes the rule stricter).
MAX_SAMPLES = 64

#: ``now()`` returns (CLOCK_REALTIME ns, CLOCK_BOOTTIME ns).
TimeSource = Callable[[], Tuple[int, int]]
#: (boottime ns when observed, realtime − boottime offset ns).
Sample = Tuple[int, int]


def system_time() -> Tuple[int, int]:
    """(CLOCK_REALTIME, CLOCK_BOOTTIME) in ns, read back to back."""
    import time

    return time.clock_gettime_ns(time.CLOCK_REALTIME), time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class Clock:
    """Converts start times to wall-clock instants and judges "file changed after the process started".

    ``now``: the time source (default: the system clocks). ``history``: offset samples recorded by earlier
    scans of this boot (oldest first); the current observation is added to them.
    """

    def __init__(self, now: Optional[TimeSource] = None, history: Sequence[Sample] = (),
                 hz: Optional[int] = None) -> None:
        if hz is None:
            hz = os.sysconf("SC_CLK_TCK") if "SC_CLK_TCK" in os.sysconf_names else 100
        self.tick_ns = 1_000_000_000 // max(1, int(hz))
        real, boot = (now or system_time)()
        self.real_now_ns = real
        self.boot_now_ns = boot
        #: realtime minus boottime now: the wall-clock instant of boot on the current clock, in ns.
        self.boot_realtime_ns = real - boot
        recorded = sorted(s for s in history if 0 <= s[0] < boot)
        #: True when this observation is a new change point worth recording (see :func:`scan_clock`).
        self.new_change_point = not recorded or abs(recorded[-1][1] - self.boot_realtime_ns) > SAME_OFFSET_NS
        #: The recorded samples plus the current observation, oldest first.
        self.samples: List[Sample] = [*recorded, (boot, self.boot_realtime_ns)]
        #: The earliest wall-clock instant of boot any sample implies: "changed since boot" is tested against
        #: it so that the cheap filter stays a superset after a forward step.
        self.earliest_boot_ns = min(o for _, o in self.samples)
        #: The latest file time a write up to now could carry under the offsets seen.
        self.latest_write_ns = max(o + b_next for (_, o), b_next in zip(self.samples, self._next_boots()))

    def _next_boots(self) -> List[int]:
        """For each sample, the boot time of the next one (``now`` for the last): the latest instant its
        offset may still have held."""
        return [b for b, _ in self.samples[1:]] + [self.boot_now_ns]

    def start_realtime_ns(self, starttime_ticks: int) -> int:
        """The latest wall-clock time a write made before a process with this start time could carry.

        Without recorded steps this is simply the wall-clock instant of the start (truncated to a tick)."""
        start = starttime_ticks * self.tick_ns
        samples = self.samples
        if len(samples) == 1:
            return samples[0][1] + start
        latest = -1 << 127
        for i, (b, o) in enumerate(samples):
            if b > start:  # the first sample after the start: its offset may have held since before it
                return max(latest, o + start)
            b_next = samples[i + 1][0] if i + 1 < len(samples) else start
            latest = max(latest, o + min(start, b_next))
        return latest  # a start after every sample (a process younger than this clock reading)

    def in_future(self, file_time_ns: int) -> bool:
        """A file time no clock seen could have written: cannot be compared with anything."""
        return file_time_ns > self.latest_write_ns + FUTURE_SLACK_NS

    def judge(self, file_time_ns: Optional[int], starttime_ticks: int) -> Optional[bool]:
        """True: the file time lies after the process start (more than one tick); False: it does not;
        None: it is in the unexplained future, so the clock cannot tell."""
        if file_time_ns is None:
            return False
        if self.in_future(file_time_ns):
            return None
        return file_time_ns > self.start_realtime_ns(starttime_ticks) + self.tick_ns

    def around_start(self, file_time_ns: int, starttime_ticks: int) -> bool:
        """The file time lies within a tick either side of the process start: neither certainly before nor
        certainly after it (the start time is counted in whole ticks)."""
        start = self.start_realtime_ns(starttime_ticks)
        return start - self.tick_ns < file_time_ns <= start + self.tick_ns

    def changed_after_start(self, file_time_ns: Optional[int], starttime_ticks: int) -> bool:
        """True only when the file time certainly lies after the process start (see :meth:`judge`)."""
        return self.judge(file_time_ns, starttime_ticks) is True


# -- the per-boot record of offsets ---------------------------------------------------------------------------

_MAGIC = b"soswap-clock 1"


def boot_id() -> Optional[bytes]:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            value = f.read(64).strip()
    except OSError:
        return None
    return value or None


def load_history(path: str, boot: Optional[bytes]) -> List[Sample]:
    """The samples recorded for this boot at ``path`` ([] when absent, foreign, untrusted or malformed).

    Trusted only when owned by us or root and writable by nobody else: the record can only make the rule
    stricter (fewer "modified" reports), so a forged one could hide an in-place change."""
    if boot is None:
        return []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        st = os.fstat(fd)
        import stat as stat_mod

        if (not stat_mod.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022
                or st.st_size > 65536):
            return []
        data = os.read(fd, 65536)
    except OSError:
        return []
    finally:
        os.close(fd)
    lines = data.split(b"\n")
    if len(lines) < 2 or lines[0] != _MAGIC or lines[1] != b"boot " + boot:
        return []
    samples: List[Sample] = []
    for line in lines[2:]:
        parts = line.split()
        if len(parts) != 2:
            continue
        try:
            samples.append((int(parts[0]), int(parts[1])))
        except ValueError:
            return []
    return samples


def save_history(path: str, boot: Optional[bytes], samples: Sequence[Sample]) -> bool:
    """Write the samples atomically (temp file, rename); False when it cannot (read-only, not permitted)."""
    if boot is None:
        return False
    if len(samples) > MAX_SAMPLES:
        samples = list(samples[:1]) + list(samples[-(MAX_SAMPLES - 1):])
    body = b"\n".join([_MAGIC, b"boot " + boot] + [b"%d %d" % s for s in samples]) + b"\n"
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        write_atomic(path, body)
    except OSError:
        return False
    return True


def scan_clock(record: Optional[str] = "", now: Optional[TimeSource] = None) -> Clock:
    """The clock of one scan: the history recorded at ``record`` (default ``<state dir>/clock``; None: no
    record), plus the current observation, which is written back when it is a new change point."""
    if record is None:
        return Clock(now=now)
    if record == "":
        from soswap.state import default_state_dir

        record = os.path.join(default_state_dir(), "clock")
    boot = boot_id()
    clock = Clock(now=now, history=load_history(record, boot))
    if clock.new_change_point:
        save_history(record, boot, clock.samples)
    return clock
