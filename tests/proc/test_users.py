"""``soswap users`` and the engine API other packages call (processes_mapping, processes_using_inodes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from soswap.proc import find_users, processes_mapping, processes_using_inodes

from .conftest import replace_by_rename, run_cli


def test_users_exe_mapped_open_current_and_old(procs, fx, tmp_path: Path) -> None:
    d = tmp_path / "app"
    prog = fx.program(d)
    lib = d / "libfix.so"
    r1, r2, r3 = (tmp_path / f"ready{i}" for i in range(3))
    old_user = procs.start([prog, r1], wait_for_file=r1)
    old_ino = lib.stat().st_ino
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    new_user = procs.start([prog, r2], wait_for_file=r2)
    opener = procs.start([fx.holder, r3, f"open:{lib}"], wait_for_file=r3)

    (report,) = find_users([str(lib)])
    got = {u.pid: (u.how, u.version) for u in report.uses}
    assert got == {old_user.pid: (("mapped",), "old"), new_user.pid: (("mapped",), "current"),
                   opener.pid: (("open",), "current")}
    assert {u.pid: u.inode for u in report.uses}[old_user.pid] == old_ino

    r = run_cli(["users", "--json", str(lib)], check_rc=[1])  # 1: a process uses an old version
    doc = json.loads(r.stdout)
    assert doc["path"] == str(lib) and doc["inode"] == lib.stat().st_ino
    by_pid = {p["pid"]: p for p in doc["processes"]}
    assert by_pid[old_user.pid]["version"] == "old" and by_pid[new_user.pid]["how"] == ["mapped"]
    assert by_pid[opener.pid]["how"] == ["open"]

    both = json.loads(run_cli(["users", "--json", str(lib), str(prog)]).stdout)
    assert isinstance(both, list) and [x["path"] for x in both] == [str(lib), str(prog)]
    assert {p["pid"] for p in both[1]["processes"]} == {old_user.pid, new_user.pid}
    assert all(p["how"] == ["exe"] for p in both[1]["processes"])

    text = run_cli(["users", str(lib)]).stdout
    assert f"pid {old_user.pid}" in text and "old" in text


def test_users_exit_zero_when_only_current(procs, fx, tmp_path: Path) -> None:
    d = tmp_path / "app"
    prog = fx.program(d)
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    r = run_cli(["users", str(d / "libfix.so")])
    assert r.returncode == 0 and f"pid {p.pid}" in r.stdout
    r = run_cli(["users", str(tmp_path / "nothing-here")])
    assert r.returncode == 0 and "no process uses it" in r.stdout


def test_users_refuses_an_empty_path() -> None:
    r = run_cli(["users", "/bin/sh", ""])
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "soswap: error: PATH: empty file name"


def test_api_processes_mapping_and_inodes(procs, fx, tmp_path: Path) -> None:
    d = tmp_path / "app"
    prog = fx.program(d)
    lib = d / "libfix.so"
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    st = lib.stat()
    assert [u.pid for u in processes_mapping(str(lib))] == [p.pid]
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    (use,) = processes_mapping(str(lib))
    assert (use.pid, use.version) == (p.pid, "old")
    (use,) = processes_using_inodes({(st.st_dev, st.st_ino), (st.st_dev, 1)})
    assert (use.pid, use.how, use.starttime) == (p.pid, ("mapped",), use.starttime)
    exe = prog.stat()
    (use,) = processes_using_inodes({(exe.st_dev, exe.st_ino)})
    assert use.how == ("exe",)
    assert processes_using_inodes(set()) == []
    assert processes_using_inodes({(st.st_dev, 2**40)}) == []
    assert os.path.exists(f"/proc/{use.pid}")


def test_every_replaced_file_a_process_maps_is_one_use(procs, fx, tmp_path: Path) -> None:
    """A process that maps two files a transaction replaced: two uses (the install after-report listed only
    the first)."""
    a, b = tmp_path / "a" / "libfix.so", tmp_path / "b" / "libfix.so"
    for lib in (a, b):
        lib.parent.mkdir()
        lib.write_bytes(fx.lib_v1.read_bytes())
    ready = tmp_path / "ready"
    p = procs.start([fx.holder, ready, f"dlopen:{a}", f"dlopen:{b}"], wait_for_file=ready)
    olds = {(lib.stat().st_dev, lib.stat().st_ino) for lib in (a, b)}
    for lib in (a, b):
        replace_by_rename(lib, fx.lib_v2.read_bytes())
    uses = processes_using_inodes(olds, pids=[p.pid])
    assert sorted((u.pid, u.dev, u.inode) for u in uses) == sorted((p.pid, *o) for o in olds)


def test_old_version_found_by_a_name_with_a_newline(procs, fx, tmp_path: Path) -> None:
    """maps shows a newline in a path as \\012: the name is searched for in that form, so a library replaced
    under such a name is still found by its name (its inode is no longer at the path)."""
    odd = tmp_path / "lib with\nnewline.so"
    odd.write_bytes(fx.lib_v1.read_bytes())
    ready = tmp_path / "ready"
    p = procs.start([fx.holder, ready, f"dlopen:{odd}"], wait_for_file=ready)
    old_ino = odd.stat().st_ino
    replace_by_rename(odd, fx.lib_v2.read_bytes())
    (report,) = find_users([str(odd)])
    got = {u.pid: (u.how, u.version, u.inode) for u in report.uses}
    assert got == {p.pid: (("mapped",), "old", old_ino)}


def test_a_file_opened_under_another_name_is_found_by_its_inode(procs, fx, tmp_path: Path) -> None:
    """A process that opened the file through a hard link holds the same inode: found, as fuser finds it
    (before, open files were matched by name only, while mappings were matched by inode)."""
    data = tmp_path / "data.txt"
    data.write_text("data\n")
    link = tmp_path / "hardlink.txt"
    os.link(data, link)
    ready = tmp_path / "ready"
    p = procs.start([fx.holder, ready, f"open:{link}"], wait_for_file=ready)
    (report,) = find_users([str(data)])
    assert [(u.pid, u.how, u.version) for u in report.uses] == [(p.pid, ("open",), "current")]
