"""Processes under another root directory (QA round): a chrooted interpreter's script is looked for in its root
(it was looked for on the host: a replaced script missed, an unrelated host file at the same path reported), and
a process that chroot()ed inside a mount namespace of its own (``unshare -m chroot DIR``), whose paths the
kernel prints relative to the namespace's root, is resolved under ``/proc/PID/root`` without DIR twice (every
mapping was "could not be checked", an in-place write went unseen, ``users`` left it out)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import List

import pytest

from soswap.proc import ScanOptions, procfs, scan_stale
from soswap.proc.statx import birth_time_ns
from soswap.proc.timebase import Clock
from support.build import requires_cc, requires_root, shared_lib

from .conftest import files_of, overlay, run_cli, stale_json, wait_after_start

pytestmark = [requires_root, pytest.mark.skipif(shutil.which("chroot") is None, reason="chroot is needed")]


def _copy_with_libraries(root: Path, program: str) -> None:
    """``program`` and what ldd says it loads, at the same paths under ``root``."""
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    paths = [program, *re.findall(r"(/\S+) \(0x", out)]
    for p in paths:
        dest = root / p.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.realpath(p), dest)


def _bash_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _copy_with_libraries(root, "/bin/bash")
    os.mkfifo(root / "fifo")  # the script waits opening it, with no CPU spent
    return root


def test_a_chrooted_interpreters_script_is_looked_for_in_its_root(tmp_path: Path, procs) -> None:
    root = _bash_root(tmp_path)
    # the script's path in the chroot is also a host path we may write to: an unrelated file can sit there
    inner = tmp_path / "scripts" / "s.sh"
    script = root / str(inner).lstrip("/")
    script.parent.mkdir(parents=True)
    script.write_text(": > /ready\nread x < /fifo\n")
    p = procs.start(["chroot", str(root), "/bin/bash", str(inner)], wait_for_file=root / "ready")
    wait_after_start(p.pid)  # the unrelated file is certainly newer than the process
    inner.parent.mkdir(parents=True)
    inner.write_text("# an unrelated host file at the same path\n")
    assert not [f for f in files_of(stale_json("--pid", str(p.pid)), p.pid) if f["role"] == "script"]
    script.unlink()  # the chroot's script replaced, as a package manager does: remove, then create
    script.write_text(": > /ready\nread x < /fifo\n")
    (script_file,) = [f for f in files_of(stale_json("--pid", str(p.pid)), p.pid) if f["role"] == "script"]
    assert (script_file["path"], script_file["kind"]) == (str(script), "deleted"), script_file


@requires_cc
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is needed")
def test_a_process_chrooted_in_its_own_mount_namespace(tmp_path: Path, procs, fx) -> None:
    root = tmp_path / "root"
    _copy_with_libraries(root, str(fx.holder))
    lib = shared_lib(root / "usr/lib/libqa.so.1", "int qa(void) { return 1; }\nint pad[4096] = {1};\n")
    holder = "/" + str(fx.holder).lstrip("/")
    p = procs.start(["unshare", "-m", "--propagation", "private", "chroot", str(root), holder, "/ready",
                     "dlopen:/usr/lib/libqa.so.1"], wait_for_file=root / "ready")
    before = stale_json("--pid", str(p.pid))
    assert before["unverifiable"] == 0 and not files_of(before, p.pid), before
    with open(lib, "r+b") as f:  # an in-place write under the process
        f.seek(100)
        f.write(b"\0")
    files: List[dict] = files_of(stale_json("--pid", str(p.pid)), p.pid)
    assert [(f["path"], f["kind"]) for f in files] == [(str(lib), "modified")], files
    data = lib.read_bytes()
    lib.unlink()  # replaced as a package manager does: the process keeps the old inode
    lib.write_bytes(data)
    files = files_of(stale_json("--pid", str(p.pid)), p.pid)
    assert [(f["path"], f["kind"]) for f in files] == [(str(lib), "deleted")], files
    assert "a new file" in files[0]["detail"], files
    r = run_cli(["users", str(lib)])  # its name for the old version is its own root's: resolved there
    assert re.search(rf"pid {p.pid} +mapped +old ", r.stdout), r.stdout


@requires_cc
def test_a_file_written_through_an_overlay_is_a_copy_up_not_an_in_place_change(tmp_path: Path, procs, fx) -> None:
    """cp onto a lower-layer library through an overlay copies it up: the process keeps the lower file's pages,
    while stat, maps and map_files all show the same overlay inode. It was reported "modified ... old and new
    code mixed in memory" (false), and an identical copy-up could not be silenced with --ignore-identical."""
    shared_lib(tmp_path / "lower" / "libqa.so.1", "int qa(void) { return 1; }\n")
    v2 = shared_lib(tmp_path / "v2" / "libqa.so.1", "int qa(void) { return 2; }\n")
    with overlay(tmp_path, procs) as (lower, upper, merged):
        lib = merged / "libqa.so.1"
        p = procs.start([fx.holder, tmp_path / "ready", f"dlopen:{lib}"], wait_for_file=tmp_path / "ready")
        q = procs.start([fx.holder, tmp_path / "ready2", f"dlopen:{lib}"], wait_for_file=tmp_path / "ready2")
        wait_after_start(p.pid)  # the copy-up certainly after the start (the tick case is the next test)
        shutil.copyfile(lower / "libqa.so.1", lib)  # the same bytes, copied up
        assert (upper / "libqa.so.1").exists()
        assert not files_of(stale_json("--pid", str(p.pid), "--ignore-identical"), p.pid)
        shutil.copyfile(v2, lib)  # a new version written through the overlay (into the upper copy)
        (f,) = files_of(stale_json("--pid", str(p.pid), str(q.pid)), p.pid)
        assert (f["path"], f["kind"]) == (str(lib), "replaced") and "after the process started" in f["detail"], f
        if birth_time_ns(os.fsencode(upper / "libqa.so.1")) is None:
            return  # without a birth time the copy's ctime stands in for it, and the write below moves it
        # a process started after the copy-up maps the upper file: a write into it is in place
        s = procs.start([fx.holder, tmp_path / "ready3", f"dlopen:{lib}"], wait_for_file=tmp_path / "ready3")
        time.sleep(0.05)
        with open(lib, "r+b") as fh:
            fh.seek(100)
            fh.write(b"\0")
        (g,) = files_of(stale_json("--pid", str(s.pid)), s.pid)
        assert g["kind"] == "modified", g


@requires_cc
def test_a_copy_up_within_a_tick_of_the_start_is_compared_with_the_lower_file(tmp_path: Path, procs, fx) -> None:
    """A copy-up whose birth lies within a tick of the process start (start times count whole ticks) cannot be
    placed before or after the mapping; written after the start, the file was reported "modified ... old and
    new code mixed" even when the bytes were the same (a CI failure of the test above). Either way the copy
    began as the lower file's bytes: it is reported replaced-or-written and compared with the lower file. The
    scan's clock is moved (nothing changes the system clock) so that the start falls on the copy's birth."""
    shared_lib(tmp_path / "lower" / "libqa.so.1", "int qa(void) { return 1; }\n")
    with overlay(tmp_path, procs) as (lower, upper, merged):
        lib = merged / "libqa.so.1"
        p = procs.start([fx.holder, tmp_path / "ready", f"dlopen:{lib}"], wait_for_file=tmp_path / "ready")
        data = (lower / "libqa.so.1").read_bytes()
        with open(lib, "r+b") as f:  # copied up here (its birth), written again well after it
            f.write(data[:64])
            f.flush()
            time.sleep(0.05)
            f.write(data[64:128])
        born = birth_time_ns(os.fsencode(upper / "libqa.so.1")) or (upper / "libqa.so.1").stat().st_ctime_ns
        real = Clock()
        shift = born - real.start_realtime_ns(procfs.read_stat(p.pid).starttime)
        clock = Clock(now=lambda: (real.real_now_ns + shift, real.boot_now_ns))
        (proc,) = scan_stale(ScanOptions(pids=[p.pid], kernel=False, clock=clock)).processes
        assert [(f.path, f.kind) for f in proc.files] == [(str(lib), "replaced")], proc.files
        assert "as the process started" in proc.files[0].detail, proc.files
        identical = scan_stale(ScanOptions(pids=[p.pid], kernel=False, clock=clock, ignore_identical=True))
        assert identical.processes == () and identical.identical == 1, identical
        with open(lib, "r+b") as f:  # now another byte: the code differs from what the process maps
            f.seek(100)
            f.write(bytes([data[100] ^ 0xFF]))
        (proc,) = scan_stale(ScanOptions(pids=[p.pid], kernel=False, clock=clock, ignore_identical=True)).processes
        assert [f.kind for f in proc.files] == ["replaced"], proc.files


@requires_cc
def test_a_metadata_only_copy_up_is_no_replacement(tmp_path: Path, procs, fx) -> None:
    """With metacopy=on, a chmod copies up only the metadata: the upper file is a sparse placeholder whose
    data is still the lower file's. It was reported replaced, the placeholder compared as the new content
    (QA regression round)."""
    shared_lib(tmp_path / "lower" / "libqa.so.1", "int qa(void) { return 1; }\n")
    with overlay(tmp_path, procs, "metacopy=on") as (_lower, upper, merged):
        lib = merged / "libqa.so.1"
        gone = shared_lib(tmp_path / "gone" / "libgone.so", "int gone(void) { return 1; }\n")
        p = procs.start([fx.holder, tmp_path / "ready", f"dlopen:{lib}", f"dlopen:{gone}"],
                        wait_for_file=tmp_path / "ready")
        wait_after_start(p.pid)
        os.chmod(lib, 0o700)  # metadata only
        assert (upper / "libqa.so.1").exists()
        gone.unlink()  # (so that every mapping of the process is looked at closely)
        for extra in ((), ("--ignore-identical",)):
            files = files_of(stale_json("--pid", str(p.pid), *extra), p.pid)
            assert [(f["path"], f["kind"]) for f in files] == [(str(gone), "deleted")], files


@requires_cc
def test_a_chmod_through_an_overlay_is_no_replacement(tmp_path: Path, procs, fx) -> None:
    """Without metacopy, a chmod through an overlay copies the whole file up, keeping its size and mtime: it
    was reported replaced, "written through the overlay" (a chmod on any other filesystem is no change)."""
    shared_lib(tmp_path / "lower" / "libqa.so.1", "int qa(void) { return 1; }\n")
    with overlay(tmp_path, procs) as (_lower, upper, merged):
        lib = merged / "libqa.so.1"
        p = procs.start([fx.holder, tmp_path / "ready", f"dlopen:{lib}"], wait_for_file=tmp_path / "ready")
        wait_after_start(p.pid)
        os.chmod(lib, 0o700)
        assert (upper / "libqa.so.1").exists()
        assert files_of(stale_json("--pid", str(p.pid)), p.pid) == []
