"""``soswap stale`` with odd arguments (QA findings): a --prometheus path that is a device node or a FIFO is left
alone, a PID given twice is one process, an --ignore-file that is a FIFO is one error instead of a wait."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from support.build import requires_root

from .conftest import run_cli, stale_json


@requires_root
def test_prometheus_never_replaces_a_device_node_or_a_fifo(tmp_path: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (null, fifo):
        before = os.lstat(path)
        r = run_cli(["stale", "--no-kernel", "--prometheus", str(path)])
        assert r.returncode == 2 and f"{path}: exists and is not a regular file" in r.stderr, r.stderr
        after = os.lstat(path)
        assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    (tmp_path / "real.prom").write_text("old\n")
    (tmp_path / "link.prom").symlink_to("real.prom")
    r = run_cli(["stale", "--no-kernel", "--prometheus", str(tmp_path / "link.prom")])
    assert r.returncode in (0, 1), r.stderr
    assert (tmp_path / "link.prom").is_symlink() and "soswap_stale_processes" in (tmp_path / "real.prom").read_text()


def test_a_pid_given_twice_is_one_process(procs, fx, tmp_path: Path) -> None:
    import shutil

    lib = tmp_path / "libtwice.so"
    shutil.copy(fx.lib_v1, lib)
    ready = tmp_path / "ready"
    p = procs.start([fx.holder, ready, f"dlopen:{lib}"], wait_for_file=ready)
    lib.unlink()  # stale: a deleted library
    doc = stale_json("--pid", str(p.pid), str(p.pid), str(p.pid))
    assert doc["scanned"] == 1 and [x["pid"] for x in doc["processes"]] == [p.pid]


def test_an_ignore_file_that_is_a_fifo_is_an_error_not_a_wait(tmp_path: Path) -> None:
    fifo = tmp_path / "ignore"
    os.mkfifo(fifo)
    r = run_cli(["stale", "--no-kernel", "--ignore-file", str(fifo)])
    assert r.returncode == 2 and "not a regular file" in r.stderr, r.stderr


def _kernel_thread() -> int:
    from soswap.proc import procfs

    for pid in procfs.list_pids():
        try:
            if procfs.read_stat(pid).kernel_thread:
                return pid
        except Exception:
            continue
    return 0


def test_a_named_zombie_or_kernel_thread_gets_a_note_not_just_scanned_0(tmp_path: Path) -> None:
    import subprocess
    import time

    from soswap.proc import procfs

    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while not procfs.read_stat(child.pid).zombie and time.monotonic() < deadline:
            time.sleep(0.01)
        r = run_cli(["stale", "--no-kernel", "--pid", str(child.pid)])
        assert r.returncode == 0 and "scanned 0 processes" in r.stdout, (r.stdout, r.stderr)
        assert r.stderr == f"soswap: note: PID {child.pid} is a zombie: it runs no code, nothing to check\n"
        r = run_cli(["stale", "--no-kernel", "--pid", str(os.getpid())])
        assert "scanned 1 process\n" in r.stdout and r.stderr == "", (r.stdout, r.stderr)
        kthread = _kernel_thread()
        if kthread:
            r = run_cli(["stale", "--no-kernel", "--nagios", "--pid", str(kthread)])
            assert r.returncode == 0 and f"PID {kthread} is a kernel thread" in r.stderr, (r.stdout, r.stderr)
    finally:
        child.wait()
