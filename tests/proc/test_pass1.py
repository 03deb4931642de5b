"""Pass 1 of the scan has two readers — the PROCMAP_QUERY ioctl (Linux >= 6.11) and the maps text — and a
prefilter for interpreters; whichever runs, a whole-system scan must find exactly what the exact check of each
process finds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from soswap.proc import ScanOptions, scan_stale
from soswap.proc.vmaquery import VmaQuery

from .conftest import replace_by_rename, wait_after_start

SH_SCRIPT = 'touch "$1"\nwhile true; do sleep 60; done\n'


def kernel_has_procmap_query() -> bool:
    return VmaQuery().file_vmas(os.getpid()) is not None


def summary(report, pids):  # type: ignore[no-untyped-def]
    return {p.pid: sorted((f.kind, f.role, f.path) for f in p.files) for p in report.processes if p.pid in pids}


def test_both_pass1_readers_and_the_exact_check_agree(procs, fx, tmp_path: Path) -> None:
    started = {}

    def prog(name: str):  # type: ignore[no-untyped-def]
        d = tmp_path / name
        exe = fx.program(d)
        ready = tmp_path / f"ready-{name}"
        started[name] = procs.start([exe, ready], wait_for_file=ready)
        return d / "libfix.so"

    libs = {name: prog(name) for name in ("clean", "deleted", "modified", "truncated", "replaced")}
    scripts = {}
    for name, relative in (("script-same", False), ("script-new", False), ("script-rel", True)):
        d = tmp_path / name
        d.mkdir()
        (d / "x.sh").write_text(SH_SCRIPT)
        ready = tmp_path / f"ready-{name}"
        argv = ["bash", "x.sh" if relative else str(d / "x.sh"), str(ready)]
        started[name] = procs.start(argv, cwd=d, wait_for_file=ready)
        scripts[name] = d / "x.sh"
    for p in started.values():
        wait_after_start(p.pid)
    replace_by_rename(libs["deleted"], fx.lib_v2.read_bytes())
    with open(libs["modified"], "r+b") as f:
        f.write(fx.lib_v1.read_bytes()[:32])
    os.truncate(libs["truncated"], 100)
    os.link(libs["replaced"], tmp_path / "keep.so")
    replace_by_rename(libs["replaced"], fx.lib_v2.read_bytes())
    replace_by_rename(scripts["script-new"], (SH_SCRIPT + "# v2\n").encode())
    replace_by_rename(scripts["script-rel"], (SH_SCRIPT + "# v2\n").encode())

    pids = {p.pid for p in started.values()}
    exact = summary(scan_stale(ScanOptions(pids=sorted(pids), kernel=False)), pids)
    expected = {
        started["deleted"].pid: [("deleted", "library", str(libs["deleted"]))],
        started["modified"].pid: [("modified", "library", str(libs["modified"]))],
        started["truncated"].pid: [("truncated", "library", str(libs["truncated"]))],
        started["replaced"].pid: [("replaced", "library", str(libs["replaced"]))],
        started["script-new"].pid: [("deleted", "script", str(scripts["script-new"]))],
        started["script-rel"].pid: [("deleted", "script", str(scripts["script-rel"]))],
    }
    assert exact == expected
    text = scan_stale(ScanOptions(kernel=False, vma_query=False))
    assert summary(text, pids) == expected
    if kernel_has_procmap_query():
        query = scan_stale(ScanOptions(kernel=False, vma_query=True))
        assert summary(query, pids) == expected
        assert abs(query.scanned - text.scanned) <= 2  # processes that came or went between the two scans


def test_procmap_query_names_match_the_maps_text(procs, fx, tmp_path: Path) -> None:
    """The ioctl's names are the maps names unescaped (a newline stays a newline), " (deleted)" included."""
    if not kernel_has_procmap_query():
        pytest.skip("kernel without PROCMAP_QUERY (Linux < 6.11)")
    odd = tmp_path / "lib with\nnewline.so"
    shutil.copy(fx.lib_v1, odd)
    ready = tmp_path / "ready"
    p = procs.start([fx.holder, ready, f"dlopen:{odd}"], wait_for_file=ready)
    odd.unlink()
    vmas = VmaQuery().file_vmas(p.pid)
    assert vmas is not None
    names = {raw for _, _, _, _, raw in vmas}
    assert os.fsencode(str(odd)) + b" (deleted)" in names
    maps = Path(f"/proc/{p.pid}/maps").read_bytes()
    assert b"lib with\\012newline.so (deleted)" in maps
    st_exe = os.stat(fx.holder)
    assert any((dev, ino) == (st_exe.st_dev, st_exe.st_ino) for _, _, dev, ino, _ in vmas)
    assert all(start < end for start, end, _, _, _ in vmas)


def test_a_kernel_that_does_not_know_the_ioctl_switches_the_scan_to_the_text() -> None:
    """An fd the ioctl does not apply to answers ENOTTY, as a kernel before 6.11 does for maps: the reader
    then reports itself unsupported and every later call returns None (the scan reads the text)."""
    q = VmaQuery()
    fd = os.open(f"/proc/{os.getpid()}/status", os.O_RDONLY)
    try:
        assert q._walk(os.getpid(), fd, 0x30) is None
    finally:
        os.close(fd)
    assert q.supported is False
    assert q.file_vmas(os.getpid()) is None
