"""Case 31 of stale.md §(b): the wall clock set back after a process started must not create "modified" reports
(dnf-plugins-core#595). The system clock is never touched: the scan's time source is injected (timebase.Clock)."""

from __future__ import annotations

import os
import shutil
import stat
import time
from pathlib import Path
from typing import Tuple

import pytest

from soswap.proc import ScanOptions, procfs, scan_stale, timebase
from soswap.proc.timebase import FUTURE_SLACK_NS, Clock, load_history, save_history, scan_clock

from .conftest import wait_after_start

S = 1_000_000_000
H = 3600 * S
HZ = 100
TICK = S // HZ


def fixed(real: int, boot: int):  # type: ignore[no-untyped-def]
    return lambda: (real, boot)


def ticks(boot_ns: int) -> int:
    return boot_ns // TICK


# -- the rule, with an injected time source ---------------------------------------------------------------------
OFFSET = 1_700_000_000 * S  # the wall-clock instant of boot before the step


def test_without_steps_the_rule_is_the_plain_comparison() -> None:
    c = Clock(now=fixed(OFFSET + 10 * H, 10 * H), hz=HZ)
    start = ticks(5 * H)
    assert c.start_realtime_ns(start) == OFFSET + 5 * H
    assert c.judge(OFFSET + 5 * H + 2 * TICK, start) is True
    assert c.judge(OFFSET + 5 * H + TICK, start) is False  # within a tick of the start
    assert c.judge(OFFSET + 4 * H, start) is False
    assert c.judge(None, start) is False
    assert c.judge(OFFSET + 10 * H + FUTURE_SLACK_NS + S, start) is None  # later than now: cannot tell


def test_a_step_back_seen_by_an_earlier_scan_creates_no_report() -> None:
    """The process started at boot+5h; its library was installed at boot+4h; a scan ran at boot+6h; the clock
    was then set back 2 h; now it is boot+10h. The file is older than the process in every frame."""
    before = Clock(now=fixed(OFFSET + 6 * H, 6 * H), hz=HZ)
    mtime = OFFSET + 4 * H  # written on the old clock
    start = ticks(5 * H)
    assert before.judge(mtime, start) is False
    after_plain = Clock(now=fixed(OFFSET - 2 * H + 10 * H, 10 * H), hz=HZ)
    assert after_plain.judge(mtime, start) is True  # the false "modified" of dnf#595, without the record
    after = Clock(now=fixed(OFFSET - 2 * H + 10 * H, 10 * H), history=before.samples, hz=HZ)
    assert after.judge(mtime, start) is False
    # An in-place change made after the step more than 2 h after the start is still seen ...
    assert after.judge(OFFSET - 2 * H + 9 * H, start) is True
    # ... one within 2 h of the start is not (the documented price: a false negative, never a false alarm).
    assert after.judge(OFFSET - 2 * H + 6 * H + 30 * 60 * S, start) is False
    # For a process started after the step, a change is certain once its time exceeds everything the old
    # clock can have written (up to the first scan that saw the new clock, at boot+10h: old-clock time 10h).
    later = Clock(now=fixed(OFFSET - 2 * H + 14 * H, 14 * H), history=after.samples, hz=HZ)
    assert later.judge(OFFSET - 2 * H + 11 * H, ticks(10 * H + S)) is False  # could be an old-clock write
    assert later.judge(OFFSET - 2 * H + 13 * H, ticks(10 * H + S)) is True


def test_an_unrecorded_step_back_makes_recent_files_unjudgeable_not_stale() -> None:
    """No scan saw the old clock. Files written on it just before the step are now in the future: "cannot
    tell" (counted unverifiable), never "modified". Older ones are the remaining limit (docs/stale.md)."""
    start = ticks(5 * H)
    just_before = OFFSET + 5 * H - 60 * S  # installed a minute before the process started, on the old clock
    right_after_step = Clock(now=fixed(OFFSET - 2 * H + 5 * H + 10 * 60 * S, 5 * H + 10 * 60 * S), hz=HZ)
    assert right_after_step.judge(just_before, start) is None
    long_after_step = Clock(now=fixed(OFFSET - 2 * H + 9 * H, 9 * H), hz=HZ)
    assert long_after_step.judge(just_before, start) is True  # the limit: the old offset was never recorded


def test_a_forward_step_seen_by_an_earlier_scan_keeps_changes_visible() -> None:
    """Started at boot+1h on the slow clock, library changed at boot+2h, clock then set 3 h ahead. The plain
    comparison puts the start 3 h later and misses the change; the record keeps it."""
    before = Clock(now=fixed(OFFSET + 90 * 60 * S, 90 * 60 * S), hz=HZ)
    mtime = OFFSET + 2 * H
    start = ticks(1 * H)
    plain = Clock(now=fixed(OFFSET + 3 * H + 4 * H, 4 * H), hz=HZ)
    assert plain.judge(mtime, start) is False
    recorded = Clock(now=fixed(OFFSET + 3 * H + 4 * H, 4 * H), history=before.samples, hz=HZ)
    assert recorded.judge(mtime, start) is True
    assert recorded.earliest_boot_ns == OFFSET  # the pass-1 "changed since boot" filter uses the earlier clock


# -- the per-boot record ---------------------------------------------------------------------------------------
def test_the_record_is_written_on_change_points_only(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "clock")
    boot = timebase.boot_id()
    if boot is None:
        pytest.skip("no /proc/sys/kernel/random/boot_id")
    c1 = scan_clock(path, now=fixed(OFFSET + 6 * H, 6 * H))
    assert load_history(path, boot) == [(6 * H, OFFSET)]
    first = os.stat(path)
    scan_clock(path, now=fixed(OFFSET + 7 * H + S // 2, 7 * H))  # half a second of drift: the same clock
    assert load_history(path, boot) == [(6 * H, OFFSET)]
    assert os.stat(path).st_mtime_ns == first.st_mtime_ns
    c3 = scan_clock(path, now=fixed(OFFSET - 2 * H + 8 * H, 8 * H))  # stepped back: a new change point
    assert load_history(path, boot) == [(6 * H, OFFSET), (8 * H, OFFSET - 2 * H)]
    assert c3.samples == [(6 * H, OFFSET), (8 * H, OFFSET - 2 * H)]
    assert c1.samples == [(6 * H, OFFSET)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".clock")]  # no temp file left


def test_records_that_cannot_be_trusted_are_ignored(tmp_path: Path) -> None:
    boot = b"11111111-2222-3333-4444-555555555555"
    path = str(tmp_path / "clock")
    assert save_history(path, boot, [(1, 2), (3, 4)])
    assert load_history(path, boot) == [(1, 2), (3, 4)]
    assert load_history(path, b"another-boot") == []
    os.chmod(path, 0o666)  # writable by others: a forged record could hide in-place changes
    assert load_history(path, boot) == []
    os.chmod(path, 0o644)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)  # owned by someone else
        assert load_history(path, boot) == []
        os.chown(path, 0, 0)
    link = str(tmp_path / "link")
    os.symlink(path, link)
    assert load_history(link, boot) == []  # O_NOFOLLOW
    Path(path).write_bytes(b"soswap-clock 1\nboot " + boot + b"\n1 x\n")
    assert load_history(path, boot) == []
    Path(path).write_bytes(b"garbage")
    assert load_history(path, boot) == []
    many = [(i, i) for i in range(200)]
    assert save_history(path, boot, many)
    kept = load_history(path, boot)
    assert len(kept) == timebase.MAX_SAMPLES and kept[0] == (0, 0) and kept[-1] == (199, 199)
    Path(tmp_path / "file-not-dir").write_text("x")
    assert not save_history(str(tmp_path / "file-not-dir" / "clock"), boot, [(1, 2)])


def test_the_cli_keeps_its_record_in_the_state_directory(private_state_dir: Path) -> None:
    from .conftest import run_cli

    run_cli(["stale", "--no-kernel", "--json"], check_rc=[0, 1])
    record = private_state_dir / "clock"
    boot = timebase.boot_id()
    samples = load_history(str(record), boot)
    assert len(samples) == 1
    mtime = record.stat().st_mtime_ns
    run_cli(["stale", "--no-kernel", "--json"], check_rc=[0, 1])
    assert record.stat().st_mtime_ns == mtime and load_history(str(record), boot) == samples


# -- with a real process ---------------------------------------------------------------------------------------
def _real_now() -> Tuple[int, int]:
    return time.clock_gettime_ns(time.CLOCK_REALTIME), time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def test_real_process_and_a_simulated_step_back(procs, fx, tmp_path: Path) -> None:
    """A real process and library; the clock the scan sees is moved 2 h back (nothing changes the system
    clock). A library installed before the process started is never reported as modified — with the record of
    an earlier scan, or (here, just after the step) because its time is in the future; a real in-place change
    made "after the step" is still found."""
    d = tmp_path / "app"
    prog = fx.program(d)
    lib = d / "libfix.so"
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    wait_after_start(p.pid)
    start = procs_start_ns(p.pid)
    st = lib.stat()
    for f in (lib, prog):  # installed half an hour before the start
        os.utime(f, ns=(st.st_atime_ns, start - 30 * 60 * S))
    assert scan_stale(ScanOptions(pids=[p.pid], kernel=False)).processes == ()

    def stepped() -> Tuple[int, int]:
        real, boot = _real_now()
        return real - 2 * H, boot

    earlier = Clock()  # a scan that ran before the step recorded the old offset
    plain = Clock(now=stepped)
    assert plain.judge(start - 30 * 60 * S, procfs.read_stat(p.pid).starttime) is None  # in the future now
    report = scan_stale(ScanOptions(pids=[p.pid], kernel=False, clock=plain))
    assert report.processes == () and report.unverifiable == 2  # the exe and the library: "cannot tell"
    recorded = Clock(now=stepped, history=earlier.samples)
    report = scan_stale(ScanOptions(pids=[p.pid], kernel=False, clock=recorded))
    assert report.processes == () and report.unverifiable == 0
    # After the step, an in-place write gets a time on the new clock (simulated with utime): reported, as long as
    # it lies more than the step after the start (within it is the documented false negative).
    with open(lib, "r+b") as f:
        f.write(fx.lib_v1.read_bytes()[:16])
    os.utime(lib, ns=(st.st_atime_ns, stepped()[0]))
    assert scan_stale(ScanOptions(pids=[p.pid], kernel=False, clock=recorded)).processes == ()
    os.utime(lib, ns=(st.st_atime_ns, stepped()[0] + 3 * H))  # as if written 3 h after the step
    later = Clock(now=lambda: (stepped()[0] + 3 * H, _real_now()[1] + 3 * H), history=earlier.samples)
    (proc,) = scan_stale(ScanOptions(pids=[p.pid], kernel=False, clock=later)).processes
    assert [(f.kind, f.path) for f in proc.files] == [("modified", str(lib))]
    shutil.rmtree(d, ignore_errors=True)


def procs_start_ns(pid: int) -> int:
    return Clock().start_realtime_ns(procfs.read_stat(pid).starttime)
