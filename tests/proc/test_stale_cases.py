"""Edge cases of stale.md §(b) with real processes and real file operations (numbers refer to that list)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from soswap.proc import JournalView, ScanOptions, processes_using_inodes, scan_stale
from support.build import requires_root

from .conftest import (
    files_of,
    overlay,
    replace_by_rename,
    run_cli,
    stale_json,
    wait_after_start,
)


def scan_pid(pid: int, **kw: object) -> list:
    report = scan_stale(ScanOptions(pids=[pid], kernel=False, **kw))  # type: ignore[arg-type]
    return [f for p in report.processes for f in p.files]


def start_prog(procs, fx, tmp_path: Path, name: str = "prog"):  # type: ignore[no-untyped-def]
    d = tmp_path / "app"
    prog = fx.program(d, name)
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    return p, d / "libfix.so", prog


def holder(procs, fx, tmp_path: Path, *ops: str, exe=None):  # type: ignore[no-untyped-def]
    ready = tmp_path / f"ready-{len(list(tmp_path.glob('ready-*')))}"
    return procs.start([exe or fx.holder, ready, *ops], wait_for_file=ready)


# 1, 2 ------------------------------------------------------------------------------------------------------
def test_library_replaced_by_rename_is_deleted(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    assert scan_pid(p.pid) == []
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    doc = stale_json("--pid", str(p.pid))
    files = files_of(doc, p.pid)
    assert [(f["path"], f["kind"], f["role"]) for f in files] == [(str(lib), "deleted", "library")]
    assert "a new file" in files[0]["detail"]
    # The whole-system scan finds it too (pass 1 filter + pass 2).
    whole = stale_json()
    assert [f["path"] for f in files_of(whole, p.pid)] == [str(lib)]


def test_library_unlinked_is_deleted_with_nothing_at_path(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    lib.unlink()
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.role, f.path) == ("deleted", "library", str(lib))
    assert "nothing is at the path" in f.detail


# 3 ---------------------------------------------------------------------------------------------------------
def test_exe_replaced_by_rename(procs, fx, tmp_path: Path) -> None:
    p, _, prog = start_prog(procs, fx, tmp_path)
    replace_by_rename(prog, prog.read_bytes())  # identical content, new inode: still another file
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.role, f.path) == ("deleted", "exe", str(prog))


# 4 ---------------------------------------------------------------------------------------------------------
def test_in_place_overwrite_is_modified(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    wait_after_start(p.pid)
    ino = lib.stat().st_ino
    data = bytearray(lib.read_bytes())
    with open(lib, "r+b") as f:  # O_WRONLY without O_TRUNC: same inode, same size
        f.write(bytes(data[:64]))
    assert lib.stat().st_ino == ino
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.role) == ("modified", "library")
    doc = stale_json()
    assert [x["kind"] for x in files_of(doc, p.pid)] == ["modified"]


def test_file_older_than_process_is_not_modified(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    wait_after_start(p.pid)
    st = lib.stat()
    with open(lib, "r+b") as f:
        f.write(lib.read_bytes()[:16])
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back before the start (cp -p style)
    assert scan_pid(p.pid) == []


def test_truncated_library(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    wait_after_start(p.pid)
    os.truncate(lib, 100)
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.role) == ("truncated", "library")
    assert "SIGBUS" in f.detail


def test_a_load_in_progress_is_not_truncated(procs, fx, tmp_path: Path) -> None:
    """ld.so first maps the whole span of a library's segments from offset 0, past the end of the file, then maps
    each segment over it: a process caught in between shows a mapping longer than an intact file. Only a
    mapping that a finished load makes (within one PT_LOAD's file range) counts as truncated."""
    lib = tmp_path / "libspan.so"
    shutil.copy(fx.lib_v1, lib)
    size = lib.stat().st_size
    p = holder(procs, fx, tmp_path, f"span:{size + 3 * 4096}:{lib}", f"dlopen:{lib}")
    wait_after_start(p.pid)
    os.chmod(lib, 0o700)  # ctime after the start, content unchanged
    assert scan_pid(p.pid) == []
    with open(lib, "r+b") as f:  # now cut it short for real: the dlopen()ed segments lose their pages
        f.truncate(4096)
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.path) == ("truncated", str(lib))


# 5 ---------------------------------------------------------------------------------------------------------
def test_renamed_away_found_through_the_journal(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    st = lib.stat()
    moved = lib.with_name("libfix.so.moved")
    os.rename(lib, moved)
    shutil.copy(fx.lib_v2, lib)
    # Without a journal nothing in /proc shows it (maps names libfix.so.moved, same inode): the blind spot.
    assert scan_pid(p.pid) == []
    (f,) = scan_pid(p.pid, journal=JournalView(replaced=frozenset({(st.st_dev, st.st_ino)})))
    assert (f.kind, f.path) == ("replaced", str(moved))
    users = processes_using_inodes({(st.st_dev, st.st_ino)})
    assert [u.pid for u in users] == [p.pid]
    assert users[0].version == "old" and users[0].how == ("mapped",)


def test_renamed_away_to_a_backup_name(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    os.rename(lib, lib.with_name("libfix.so.bak"))
    shutil.copy(fx.lib_v2, lib)
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.path) == ("replaced", str(lib) + ".bak")
    assert str(lib) in f.detail


# 6 ---------------------------------------------------------------------------------------------------------
@requires_root
def test_old_inode_with_a_second_hard_link_is_replaced(procs, fx, tmp_path: Path) -> None:
    p, lib, _ = start_prog(procs, fx, tmp_path)
    os.link(lib, tmp_path / "keep.so")
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.path) == ("replaced", str(lib))  # nlink is 1, not 0: still reported
    assert "hard link" in f.detail


@requires_root
def test_old_inode_renamed_back_is_current(procs, fx, tmp_path: Path) -> None:
    """What a rollback does: the old inode (kept under a backup name) renamed back over the new file. maps
    still says "(deleted)" (the dentry it was mapped through is gone), but the process runs the file at the
    path: nothing to restart (it was reported 'replaced' for good)."""
    p, lib, _ = start_prog(procs, fx, tmp_path)
    backup = lib.with_name(".libfix.so.bak-1")
    os.link(lib, backup)
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    assert [f.kind for f in scan_pid(p.pid)] == ["replaced"]
    os.rename(backup, lib)
    with open(f"/proc/{p.pid}/maps") as maps:
        assert any(line.rstrip().endswith(f"{lib} (deleted)") for line in maps)
    assert scan_pid(p.pid) == []
    assert files_of(stale_json("--pid", str(p.pid)), p.pid) == []


# 7, 8, 10 --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lib with spaces.so", "lib\nnewline.so", "lib-\udcff\udcfe.so", "back\\012slash.so"],
                         ids=["spaces", "newline", "non-utf8", "literal-backslash-012"])
def test_odd_paths(procs, fx, tmp_path: Path, name: str) -> None:
    target = os.path.join(os.fsencode(str(tmp_path)), os.fsencode(name))
    shutil.copy(fx.lib_v1, target)
    p = holder(procs, fx, tmp_path, "dlopen:" + os.fsdecode(target))
    assert scan_pid(p.pid) == []
    replace_by_rename(Path(os.fsdecode(target)), fx.lib_v2.read_bytes())
    (f,) = scan_pid(p.pid)
    assert os.fsencode(f.path) == target and f.kind == "deleted"
    doc = stale_json("--pid", str(p.pid))
    assert [os.fsencode(x["path"]) for x in files_of(doc, p.pid)] == [target]
    text = run_cli(["stale", "--no-kernel", "--pid", str(p.pid)], check_rc=[1]).stdout
    assert "\n      library  deleted" in text  # one line per file: the newline is escaped, never printed


# 9 ---------------------------------------------------------------------------------------------------------
def test_live_file_named_deleted_is_not_reported(procs, fx, tmp_path: Path) -> None:
    target = tmp_path / "libodd.so (deleted)"
    shutil.copy(fx.lib_v1, target)
    p = holder(procs, fx, tmp_path, f"dlopen:{target}")
    assert scan_pid(p.pid) == []
    assert files_of(stale_json(), p.pid) == []
    target.unlink()
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.path) == ("deleted", str(target))


# 11-14 -----------------------------------------------------------------------------------------------------
def test_deleted_by_design_mappings_are_ignored(procs, fx, tmp_path: Path) -> None:
    p = holder(procs, fx, tmp_path, "memfd", "shmanon", "sysv", "aio", "posixshm:/soswap-test-shm")
    maps = Path(f"/proc/{p.pid}/maps").read_text(errors="replace")
    for needle in ("/memfd:soswap-test (deleted)", "/dev/zero (deleted)", "/SYSV", "/[aio] (deleted)",
                   "/dev/shm/soswap-test-shm (deleted)"):
        assert needle in maps
    assert scan_pid(p.pid, include_data=True) == []
    # Without the ignore list the same mappings are visible: the list is what hides them.
    from soswap.proc.ignore import IgnoreList

    raw = scan_pid(p.pid, include_data=True, ignore=IgnoreList(()))
    assert {f.path for f in raw} >= {"/memfd:soswap-test", "/dev/zero", "/[aio]"}


def test_memfd_exe_is_ignored(procs, fx, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    p = procs.start([fx.memexec, fx.holder, ready], wait_for_file=ready)
    assert os.readlink(f"/proc/{p.pid}/exe").startswith("/memfd:runc-like")
    assert scan_pid(p.pid) == []
    assert files_of(stale_json(), p.pid) == []


# 15 --------------------------------------------------------------------------------------------------------
def test_libffi_style_temp_file_is_ignored_but_configurable(procs, fx, tmp_path: Path) -> None:
    tramp = tmp_path / "ffiAbC123"
    shutil.copy(fx.lib_v1, tramp)
    p = holder(procs, fx, tmp_path, f"mapx:{tramp}")
    tramp.unlink()
    assert scan_pid(p.pid) == []
    doc = stale_json("--pid", str(p.pid), "--no-default-ignores")
    assert [f["path"] for f in files_of(doc, p.pid)] == [str(tramp)]
    # A user pattern hides a library that the defaults would report.
    lib = tmp_path / "libplugin.so"
    shutil.copy(fx.lib_v1, lib)
    q = holder(procs, fx, tmp_path, f"dlopen:{lib}")
    lib.unlink()
    assert files_of(stale_json("--pid", str(q.pid)), q.pid)
    assert files_of(stale_json("--pid", str(q.pid), "--ignore", "/libplugin\\.so$"), q.pid) == []
    ign = tmp_path / "ignore"
    ign.write_text("# comment\n/libplugin\\.so$\n")
    assert files_of(stale_json("--pid", str(q.pid), "--ignore-file", str(ign)), q.pid) == []


# 16 --------------------------------------------------------------------------------------------------------
def test_deleted_data_mapping_only_with_data(procs, fx, tmp_path: Path) -> None:
    data = tmp_path / "locale-archive"
    data.write_bytes(b"x" * 8192)
    p = holder(procs, fx, tmp_path, f"map:{data}")
    data.unlink()
    assert scan_pid(p.pid) == []
    (f,) = scan_pid(p.pid, include_data=True)
    assert (f.kind, f.role) == ("deleted", "mapped")
    assert scan_pid(p.pid, include_data=True, path_prefixes=["/nonexistent"]) == []
    assert len(scan_pid(p.pid, include_data=True, path_prefixes=[str(tmp_path)])) == 1


# 17 --------------------------------------------------------------------------------------------------------
def test_deleted_file_held_as_fd_only_with_fds(procs, fx, tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("log\n")
    p = holder(procs, fx, tmp_path, f"open:{log}")
    log.unlink()
    assert scan_pid(p.pid) == []
    (f,) = scan_pid(p.pid, include_fds=True)
    assert (f.kind, f.role, f.path) == ("deleted", "open", str(log))
    doc = stale_json("--pid", str(p.pid), "--fds")
    assert [x["role"] for x in files_of(doc, p.pid)] == ["open"]
    assert [x["role"] for x in files_of(stale_json("--fds"), p.pid)] == ["open"]  # found by the full scan too
    assert files_of(stale_json(), p.pid) == []


# 18 --------------------------------------------------------------------------------------------------------
@requires_root
def test_chroot_in_same_mount_namespace(procs, fx, tmp_path: Path) -> None:
    root = tmp_path / "jail"
    (root / "lib").mkdir(parents=True)
    shutil.copy(fx.static(), root / "holder")
    shutil.copy(fx.lib_v1, root / "lib" / "libjail.so")
    ready = tmp_path / "ready-jail"
    # holder maps /lib/libjail.so *inside* the chroot; maps shows the host path .../jail/lib/libjail.so.
    p = procs.start(["chroot", str(root), "/holder", "/ready", "mapx:/lib/libjail.so"],
                    wait_for_file=root / "ready")
    del ready
    maps = Path(f"/proc/{p.pid}/maps").read_text()
    assert f"{root}/lib/libjail.so" in maps
    assert scan_pid(p.pid) == []  # not re-prefixed with /proc/PID/root (needrestart#61)
    replace_by_rename(root / "lib" / "libjail.so", fx.lib_v2.read_bytes())
    (f,) = scan_pid(p.pid)
    assert (f.kind, f.path) == ("deleted", f"{root}/lib/libjail.so")


# 19 --------------------------------------------------------------------------------------------------------
@requires_root
def test_other_mount_namespace_checked_against_its_own_root(procs, fx, tmp_path: Path) -> None:
    shutil.which("unshare") or pytest.skip("no unshare")
    lib = tmp_path / "libns.so"
    shutil.copy(fx.lib_v1, lib)
    other = tmp_path / "other.so"
    shutil.copy(fx.lib_v2, other)
    ready = tmp_path / "ready-ns"
    # Inside a private mount namespace another file is bind-mounted at the same path.
    script = f'mount --bind "{other}" "{lib}" && exec "{fx.holder}" "{ready}" "dlopen:{lib}"'
    p = procs.start(["unshare", "-m", "--propagation", "private", "sh", "-c", script], wait_for_file=ready)
    assert scan_pid(p.pid) == []  # the host's libns.so is another inode: no false alarm (zypper#58)
    assert files_of(stale_json(), p.pid) == []
    # A change made in the container's view (through /proc/PID/root) is reported and attributed.
    os.unlink(f"/proc/{p.pid}/root{other}")
    doc = stale_json("--pid", str(p.pid))
    (proc,) = doc["processes"]
    assert proc["container"].startswith("mntns:")
    assert [(f["path"], f["kind"]) for f in proc["files"]] == [(str(lib), "deleted")]


# 20 --------------------------------------------------------------------------------------------------------
@requires_root
def test_other_pid_namespace_is_reported(procs, fx, tmp_path: Path) -> None:
    p0, lib, prog = start_prog(procs, fx, tmp_path)
    p0.stop()
    ready = tmp_path / "ready-pidns"
    # --kill-child: the namespace's init dies with unshare, which the procs fixture kills by PID.
    p = procs.start(["unshare", "-pf", "--kill-child", "--mount-proc", str(prog), str(ready)], wait_for_file=ready)
    child = int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
    try:
        replace_by_rename(lib, fx.lib_v2.read_bytes())
        doc = stale_json()
        (proc,) = [x for x in doc["processes"] if x["pid"] == child]
        assert proc["container"].startswith("pidns:")
        assert [f["path"] for f in proc["files"]] == [str(lib)]
    finally:
        try:
            os.kill(child, 9)
        except ProcessLookupError:
            pass


# 21 --------------------------------------------------------------------------------------------------------
@requires_root
def test_overlayfs_binary(procs, fx, tmp_path: Path) -> None:
    (tmp_path / "lower").mkdir()
    fx.program(tmp_path / "lower")
    with overlay(tmp_path, procs) as (_lower, _upper, merged):
        ready = tmp_path / "ready-ovl"
        p = procs.start([merged / "prog", ready], wait_for_file=ready)
        assert scan_pid(p.pid) == []
        replace_by_rename(merged / "libfix.so", fx.lib_v2.read_bytes())
        # The old file still exists in the lower layer (a link of the mapped inode): "replaced".
        assert {(f.kind, f.role) for f in scan_pid(p.pid)} == {("replaced", "library")}


# 22 --------------------------------------------------------------------------------------------------------
@requires_root
@pytest.mark.parametrize("fstype", ["tmpfs", "btrfs"])
def test_anonymous_device_filesystems(procs, fx, tmp_path: Path, fstype: str) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if fstype == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=16m", "none", str(mnt)]
    else:
        shutil.which("mkfs.btrfs") or pytest.skip("no btrfs-progs")
        img = tmp_path / "btrfs.img"
        with open(img, "wb") as f:
            f.truncate(128 << 20)
        subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True, capture_output=True)
        cmd = ["mount", "-o", "loop", str(img), str(mnt)]
    r = subprocess.run(cmd, capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount {fstype}: {r.stderr!r}")
    try:
        app = mnt / "app"
        if fstype == "btrfs":
            subprocess.run(["btrfs", "subvolume", "create", str(app)], check=True, capture_output=True)
        fx.program(app)
        ready = tmp_path / "ready-fs"
        p = procs.start([app / "prog", ready], wait_for_file=ready)
        maps = Path(f"/proc/{p.pid}/maps").read_text()
        assert " 00:" in maps  # major 0: an anonymous device
        assert scan_pid(p.pid) == []
        assert files_of(stale_json(), p.pid) == []
        old = os.stat(app / "libfix.so")
        replace_by_rename(app / "libfix.so", fx.lib_v2.read_bytes())
        assert [f.kind for f in scan_pid(p.pid)] == ["deleted"]
        # install's after-report names the old inode as stat gave it (btrfs maps show another device)
        from soswap.proc import processes_using_inodes

        uses = processes_using_inodes({(old.st_dev, old.st_ino)}, pids=[p.pid])
        assert [(u.pid, u.dev, u.inode) for u in uses] == [(p.pid, old.st_dev, old.st_ino)]
        p.stop()
    finally:
        procs.stop_all()
        subprocess.run(["umount", str(mnt)], check=False)


@requires_root
def test_a_mount_over_the_directory_with_the_same_inode_number_names_the_devices(procs, fx, tmp_path: Path) -> None:
    """A tmpfs mounted over the library's directory holding a file of the same inode number (fresh tmpfs
    number their files alike): replaced, and the detail says which device each inode is on (it read "the path
    now names inode N; the mapped inode N lives on elsewhere")."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "none", str(mnt)], check=True)
    try:
        lib = mnt / "libfix.so"
        lib.write_bytes(fx.lib_v1.read_bytes())
        ready = tmp_path / "ready-over"
        p = procs.start([fx.holder, ready, f"dlopen:{lib}"], wait_for_file=ready)
        under = lib.stat()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "none", str(mnt)], check=True)
        try:
            lib.write_bytes(fx.lib_v2.read_bytes())
            over = lib.stat()
            if over.st_ino != under.st_ino:
                pytest.skip("the two tmpfs numbered their files differently")
            (f,) = scan_pid(p.pid)
            assert f.kind == "replaced"
            assert f"of device {os.major(over.st_dev)}:{os.minor(over.st_dev)}" in f.detail
            assert f"of device {os.major(under.st_dev)}:{os.minor(under.st_dev)}" in f.detail
        finally:
            procs.stop_all()
            subprocess.run(["umount", str(mnt)], check=False)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# 28 --------------------------------------------------------------------------------------------------------
def test_zombies_kernel_threads_and_vanished_pids(procs, fx, tmp_path: Path) -> None:
    p = holder(procs, fx, tmp_path, "zombie")
    children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    zombie = int(children[0])
    report = scan_stale(ScanOptions(pids=[zombie, 2, p.pid, 999_999_999], kernel=False))
    assert report.processes == () and not report.partial
    r = run_cli(["stale", "--no-kernel"])
    assert r.returncode in (0, 1)
    assert r.stderr.count("\n") <= 1  # at most the one "partial" line, never one per process


# 30 --------------------------------------------------------------------------------------------------------
def test_comm_with_parentheses_and_spaces(procs, fx, tmp_path: Path) -> None:
    lib = tmp_path / "libc2.so"
    shutil.copy(fx.lib_v1, lib)
    p = holder(procs, fx, tmp_path, f"dlopen:{lib}", "name:a) b (c")
    lib.unlink()
    doc = stale_json("--pid", str(p.pid))
    (proc,) = doc["processes"]
    assert proc["comm"] == "a) b (c"
    assert proc["ppid"] == os.getpid()


# 36 --------------------------------------------------------------------------------------------------------
@requires_root
def test_unprivileged_run_is_partial_without_false_alarms(procs, fx, tmp_path: Path) -> None:
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="soswap-nobody-", dir="/tmp"))  # pytest's tmp dirs are 0700
    try:
        os.chmod(shared, 0o777)
        d = shared / "app"
        fx.program(d)
        os.chmod(d, 0o777)
        ready = shared / "ready-nobody"
        p_nobody = procs.start(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", d / "prog", ready],
                               wait_for_file=ready)
        q, lib_root, _ = start_prog(procs, fx, tmp_path / "rootside")
        replace_by_rename(lib_root, fx.lib_v2.read_bytes())
        r = run_cli(["stale", "--json", "--no-kernel"], user=True)
        doc = json.loads(r.stdout)
        assert doc["partial"] is True and doc["unreadable"] > 0
        assert doc["processes"] == []  # nobody's own process is fine; root's stale one is not visible
        # ... and it is named among those that could not be read, with its comm (stat needs no ptrace access)
        refused = {x["pid"]: x["comm"] for x in doc["unreadable_processes"]}
        assert len(refused) == doc["unreadable"] and p_nobody.pid not in refused
        assert refused[q.pid] == Path(f"/proc/{q.pid}/comm").read_text().rstrip("\n")
        text = run_cli(["stale", "--no-kernel"], user=True).stdout
        assert "could not be read (run as root to see them): pid " in text
        users = json.loads(run_cli(["users", "--json", str(lib_root)], user=True).stdout)
        assert users["partial"] is True and users["processes"] == []
        assert q.pid in {x["pid"] for x in users["unreadable_processes"]}
        replace_by_rename(d / "libfix.so", fx.lib_v2.read_bytes())
        doc = json.loads(run_cli(["stale", "--json", "--no-kernel"], user=True).stdout)
        assert [(x["pid"], [f["kind"] for f in x["files"]]) for x in doc["processes"]] == \
            [(p_nobody.pid, ["deleted"])]
        nagios = run_cli(["stale", "--nagios", "--no-kernel"], user=True)
        assert nagios.returncode == 3 and nagios.stdout.startswith("STALE UNKNOWN - ")
        assert q.alive()
    finally:
        procs.stop_all()
        shutil.rmtree(shared, ignore_errors=True)


# 37: a hung network filesystem must not block -------------------------------------------------------------
@requires_root
def test_stat_on_a_hanging_filesystem_times_out(procs, fx, tmp_path: Path) -> None:
    """strace delays every stat of one path by 4 s (a dead NFS server); tmpfs is declared "network" for the
    run. The scan gives up on that path after its 0.5 s timeout and counts it unverifiable (without the guard
    the stat would succeed after the delay and nothing would be unverifiable). The stat runs in a helper
    process, so the scan's own process exits at once (a thread stuck in such a stat kept it alive)."""
    import sys

    shutil.which("strace") or pytest.skip("no strace")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "none", str(mnt)], check=True)
    try:
        fx.program(mnt)
        ready = tmp_path / "ready-hang"
        p = procs.start([mnt / "prog", ready], wait_for_file=ready)
        code = ("import sys\nfrom soswap.proc import ScanOptions, scan_stale\n"
                f"r = scan_stale(ScanOptions(pids=[{p.pid}], kernel=False, stat_timeout=0.5, "
                "guarded_fstypes=frozenset({'tmpfs'})))\n"
                "print(r.unverifiable, len(r.processes))\n")  # and exits normally: the stat hangs in a helper
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
        r = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(mnt / "libfix.so"),
                            "-e", "inject=stat,newfstatat,statx:delay_enter=4000000", sys.executable, "-c", code],
                           capture_output=True, text=True, env=env, timeout=25)
        unverifiable, stale = map(int, r.stdout.split())
        assert unverifiable >= 1 and stale == 0, r.stderr
        p.stop()
    finally:
        procs.stop_all()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@requires_root
def test_several_hanging_filesystems_cost_twice_the_timeout_in_all(tmp_path: Path) -> None:
    """Three dead mounts (strace delays every stat of a file on each by 3 s; tmpfs declared "network"): the
    first two cost the 0.5 s timeout each, the third is counted hung at once (one after the other, five dead
    mounts made `stale --nagios` take 10 s: a monitoring check's whole budget)."""
    import sys

    shutil.which("strace") or pytest.skip("no strace")
    files = []
    try:
        for n in range(3):
            mnt = tmp_path / f"mnt{n}"
            mnt.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(mnt)], check=True)
            (mnt / "f").write_text("x")
            files.append(mnt / "f")
        code = ("import os\nfrom soswap.proc.view import FileView\n"
                "v = FileView(stat_timeout=0.5, guarded_fstypes=frozenset({'tmpfs'}))\n"
                f"paths = {[str(f) for f in files]!r}\n"
                "devs = [os.stat(os.path.dirname(p)).st_dev for p in paths]\n"
                "print([v._guarded_stat(p.encode(), d) for p, d in zip(paths, devs)], v._waited)\n")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
        trace = ["strace", "-f", "-qq", "-o", "/dev/null"]
        for f in files:
            trace += ["-P", str(f)]
        r = subprocess.run([*trace, "-e", "inject=stat,newfstatat,statx:delay_enter=3000000", sys.executable,
                            "-c", code], capture_output=True, text=True, env=env, timeout=60)
        assert r.stdout.split() == [f"[{errno.ETIMEDOUT},", f"{errno.ETIMEDOUT},", f"{errno.ETIMEDOUT}]", "1.0"], \
            r.stdout + r.stderr
    finally:
        for n in range(3):
            subprocess.run(["umount", "-l", str(tmp_path / f"mnt{n}")], check=False)


def test_the_stat_helper_holds_nothing_of_ours(tmp_path: Path) -> None:
    """The helper process that runs guarded stats keeps only its two pipes open (a helper stuck for good on a
    dead filesystem must not hold a lock or file of ours), answers like os.stat, and ends with its pipes."""
    from soswap.proc.view import StatServer

    held = open(tmp_path / "held", "w")  # noqa: SIM115 - open across the helper's start on purpose
    try:
        server = StatServer()
        st = server.stat(os.fsencode(str(tmp_path / "held")), 5.0)
        assert isinstance(st, os.stat_result) and st.st_ino == os.stat(tmp_path / "held").st_ino
        assert server.stat(os.fsencode(str(tmp_path / "none")), 5.0) == errno.ENOENT
        pid = server._pid
        fds = os.listdir(f"/proc/{pid}/fd")
        assert len(fds) == 5, fds  # stdin, stdout, stderr and the two pipes
        targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
        assert str(tmp_path / "held") not in targets
        # its standard streams are /dev/null: a stuck helper never keeps a pipe reading our output open
        assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
        server.abandon()
        for _ in range(200):
            if not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the helper did not end with its pipes")
    finally:
        held.close()


# "modified": the dlopen-after-change false positive, and the journal hook that removes it -----------------
def test_library_loaded_after_its_install_and_the_journal_hook(procs, fx, tmp_path: Path) -> None:
    from soswap.proc import FileRecord, processes_mapping
    from soswap.proc.timebase import Clock

    lib = tmp_path / "libplugin.so"
    trigger = tmp_path / "go"
    ready = tmp_path / "ready-late"
    p = procs.start([fx.holder, ready, f"wait:{trigger}", f"dlopen:{lib}"])
    wait_after_start(p.pid)
    shutil.copy(fx.lib_v1, lib)  # installed after the process started, loaded after that
    trigger.touch()
    import time

    deadline = time.monotonic() + 10
    while not ready.exists():
        assert time.monotonic() < deadline and p.alive()
        time.sleep(0.01)
    assert [u.pid for u in processes_mapping(str(lib))] == [p.pid]
    # /proc records no mapping time: by the documented rule this reads as an in-place change...
    (f,) = scan_pid(p.pid)
    assert f.kind == "modified"
    # ...unless the installer's record says the inode still holds exactly what was installed.
    st = lib.stat()
    journal = JournalView(installed={(st.st_dev, st.st_ino): FileRecord(st.st_size, st.st_mtime_ns)})
    assert scan_pid(p.pid, journal=journal) == []
    # A later in-place write changes the mtime: the record no longer vouches for the content.
    with open(lib, "r+b") as fh:
        fh.write(fx.lib_v1.read_bytes()[:8])
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert [x.kind for x in scan_pid(p.pid, journal=journal)] == ["modified"]
    clock = Clock()
    assert clock.changed_after_start(clock.start_realtime_ns(100) + 2 * clock.tick_ns, 100)
    assert not clock.changed_after_start(clock.start_realtime_ns(100) + clock.tick_ns, 100)  # within a tick


@requires_root
def test_a_mapping_whose_bind_mount_was_detached_in_another_namespace(procs, fx, tmp_path: Path) -> None:
    """A process in its own mount namespace maps the library through a bind mount; the host renames new files
    over the mount point and over the bind's source: the kernel detaches the bind mount there and maps says
    "/ (deleted)". Still deleted, but the root directory is not presented as the library's new version."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    d = tmp_path / "app"
    prog = fx.program(d, "prog")
    lib = d / "libfix.so"
    src = tmp_path / "bindsrc.so"
    shutil.copyfile(lib, src)
    ready = tmp_path / "ready"
    p = procs.start(["unshare", "-m", "--propagation", "private", "sh", "-c",
                     f'mount --bind "{src}" "{lib}" && exec "{prog}" "{ready}"'], wait_for_file=ready)
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    replace_by_rename(src, fx.lib_v2.read_bytes())
    files = [f for f in scan_pid(p.pid) if f.role == "library"]
    assert [(f.path, f.kind) for f in files if f.path == "/"] == [("/", "deleted")], files
    (f,) = [f for f in files if f.path == "/"]
    assert "a new file" not in f.detail and "unknown" in f.detail, f.detail


# QA round of 2026-12-01 --------------------------------------------------------------------------------------
def _users(path: str) -> list:
    doc = json.loads(run_cli(["users", "--json", path], check_rc=[0, 1]).stdout)
    return doc["processes"] if isinstance(doc, dict) else doc[0]["processes"]


def test_users_finds_the_old_version_under_a_name_holding_a_literal_backslash_012(procs, fx, tmp_path: Path) -> None:
    """maps escapes a newline as ``\\012`` and leaves a backslash alone: ``users`` turned the literal
    ``\\012`` of the name into a newline, matched nothing and said no process uses the old version."""
    d = tmp_path / "back\\012slash"
    d.mkdir()
    lib = d / "libodd.so"
    shutil.copy(fx.lib_v1, lib)
    p = holder(procs, fx, tmp_path, f"dlopen:{lib}")
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    assert [(u["pid"], u["version"]) for u in _users(str(lib))] == [(p.pid, "old")]


def test_users_of_a_name_beside_a_live_file_named_deleted(procs, fx, tmp_path: Path) -> None:
    """A process maps the live file ``libodd.so (deleted)``; ``libodd.so`` beside it was never mapped:
    ``users libodd.so`` named the process as running an old version of it (``stale`` stat()s the literal
    name first; ``users`` did not)."""
    literal = tmp_path / "libodd.so (deleted)"
    shutil.copy(fx.lib_v1, literal)
    p = holder(procs, fx, tmp_path, f"dlopen:{literal}")
    shutil.copy(fx.lib_v2, tmp_path / "libodd.so")
    assert p.pid not in [u["pid"] for u in _users(str(tmp_path / "libodd.so"))]


PTHREAD_EXIT_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int qa(void);
static const char *ready;
static void *wait_forever(void *arg) {
    (void)arg;
    FILE *f = fopen(ready, "w");
    if (f) fclose(f);
    for (;;) pause();
    return 0;
}
int main(int argc, char **argv) {
    pthread_t t;
    if (argc < 2) return 2;
    ready = argv[1];
    qa();
    pthread_create(&t, 0, wait_forever, 0);
    pthread_exit(0);
}
"""


@requires_root
def test_a_process_whose_main_thread_ended_is_read_through_a_live_threads_map_files(procs, fx,
                                                                                     tmp_path: Path) -> None:
    """After ``pthread_exit`` in main, ``/proc/PID/task/TID/map_files`` does not exist (a thread's own
    directory has none) while ``/proc/TID/map_files`` does: a library whose old inode lives on through a hard
    link was called ``deleted`` (``replaced`` for the same program with its main thread alive), and an
    identical reinstall was reported under ``--ignore-identical`` ("map_files needs root")."""
    from support import build

    lib = build.shared_lib(tmp_path / "libqa.so", "int qa(void) { return 1; }\n", soname="libqa.so")
    prog = build.executable(tmp_path / "thr", PTHREAD_EXIT_C,
                            libs=[f"-L{tmp_path}", "-lqa", f"-Wl,-rpath,{tmp_path}", "-lpthread"])
    p = procs.start([prog, tmp_path / "ready"], wait_for_file=tmp_path / "ready")
    time.sleep(0.1)
    os.link(lib, tmp_path / "keep")
    replace_by_rename(lib, lib.read_bytes())  # the same bytes, another inode; the old one kept by "keep"
    assert files_of(stale_json("--pid", str(p.pid), "--ignore-identical"), p.pid) == []
    (f,) = [x for x in files_of(stale_json("--pid", str(p.pid)), p.pid) if x["path"] == str(lib)]
    assert f["kind"] == "replaced" and "hard link" in f["detail"], f


@requires_root
def test_a_program_on_a_lazily_unmounted_filesystem_is_not_compared_with_the_hosts_file(procs, fx,
                                                                                       tmp_path: Path) -> None:
    """A program run from a tmpfs that is then unmounted with ``umount -l``: maps prints its path relative to
    the detached mount (``/thr``), which names another file on the host, reported ``replaced`` (and
    ``users`` called the process a user of the host file's old version)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    name = f"soswap-test-{os.getpid()}-holder"  # shown as /NAME once detached; made to exist on the host
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        shutil.copy(fx.holder, mnt / name)
        p = procs.start([mnt / name, tmp_path / "ready"], wait_for_file=tmp_path / "ready")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    maps = Path(f"/proc/{p.pid}/maps").read_text()
    assert any(line.endswith(f" /{name}") for line in maps.splitlines()), maps
    shutil.copy(fx.holder, f"/{name}")  # another file at the name maps shows
    try:
        assert files_of(stale_json("--pid", str(p.pid)), p.pid) == []
        assert p.pid not in [u["pid"] for u in _users(f"/{name}")]
    finally:
        os.unlink(f"/{name}")
