"""Case 35 of stale.md §(b): an identical reinstall (same bytes, new inode) is reported unless ``--ignore-identical``
says the old and the new version have the same content (GNU build-id, else SHA-256, or the install journal)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from soswap.proc import FileRecord, JournalView, ScanOptions, scan_stale
from support import build
from support.build import requires_root

from .conftest import LIB_C, files_of, replace_by_rename, run_cli, stale_json

#: Linked without a GNU build-id note: only a SHA-256 can tell two such files apart.
NO_BUILD_ID = ["-Wl,--build-id=none"]


def scan(pid: int, **kw: object):  # type: ignore[no-untyped-def]
    return scan_stale(ScanOptions(pids=[pid], kernel=False, **kw))  # type: ignore[arg-type]


def files(report) -> list:  # type: ignore[no-untyped-def]
    return [(f.kind, f.role, f.path) for p in report.processes for f in p.files]


def holder_with(procs, fx, tmp_path: Path, lib: Path):  # type: ignore[no-untyped-def]
    """A process that dlopen()ed ``lib`` (its own ready file: several may run in one test)."""
    ready = tmp_path / f"ready-{len(list(tmp_path.glob('ready-*')))}"
    return procs.start([fx.holder, ready, f"dlopen:{lib}"], wait_for_file=ready)


@requires_root
def test_identical_reinstall_is_suppressed_only_with_the_option(procs, fx, tmp_path: Path) -> None:
    lib = tmp_path / "app" / "libfix.so"
    prog = fx.program(lib.parent)
    ready = tmp_path / "ready"
    p = procs.start([prog, ready], wait_for_file=ready)
    old_ino = lib.stat().st_ino
    replace_by_rename(lib, lib.read_bytes())  # apt install --reinstall: same bytes, a new inode
    replace_by_rename(prog, prog.read_bytes())  # the executable too
    assert lib.stat().st_ino != old_ino
    plain = scan(p.pid)
    assert files(plain) == [("deleted", "exe", str(prog)), ("deleted", "library", str(lib))]
    quiet = scan(p.pid, ignore_identical=True)
    assert quiet.processes == () and quiet.identical == 2
    # The whole-system scan and the CLI agree; exit status 0: nothing stale.
    assert files_of(stale_json("--ignore-identical"), p.pid) == []
    r = run_cli(["stale", "--json", "--no-kernel", "--pid", str(p.pid), "--ignore-identical"], check_rc=[0])
    assert json.loads(r.stdout)["identical"] == 2
    assert run_cli(["stale", "--no-kernel", "--pid", str(p.pid)], check_rc=[1]).returncode == 1
    text = run_cli(["stale", "--no-kernel", "--pid", str(p.pid), "--ignore-identical"], check_rc=[0]).stdout
    assert "2 files not reported: reinstalled with identical content" in text


@requires_root
def test_a_real_change_is_always_reported(procs, fx, tmp_path: Path) -> None:
    lib = tmp_path / "libfix.so"
    shutil.copy(fx.lib_v1, lib)
    p = holder_with(procs, fx, tmp_path, lib)
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    (f,) = scan(p.pid, ignore_identical=True).processes[0].files
    assert (f.kind, f.path) == ("deleted", str(lib))
    assert "build-id" in f.detail and "became" in f.detail  # the evidence is in the report
    # A stripped reinstall keeps the build-id and the loadable segments: the code is the same.
    stripped = tmp_path / "stripped.so"
    shutil.copy(fx.lib_v2, stripped)
    subprocess.run(["strip", str(stripped)], check=True)
    assert stripped.stat().st_size != fx.lib_v2.stat().st_size
    replace_by_rename(lib, stripped.read_bytes())
    q = holder_with(procs, fx, tmp_path, lib)
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    assert scan(q.pid, ignore_identical=True).processes == ()
    assert [f.kind for f in scan(q.pid).processes[0].files] == ["deleted"]


@requires_root
def test_same_build_id_with_other_segments_is_a_change(procs, fx, tmp_path: Path) -> None:
    """A forced build-id (``--build-id=0x…``) on two different builds: when the loadable segments differ the
    files are different; when even they agree, the build-id's claim is taken (the documented limit)."""
    fixed = ["-Wl,--build-id=0x00112233445566778899aabbccddeeff00112233"]
    small = build.shared_lib(tmp_path / "b1" / "libid.so", LIB_C % 1, flags=fixed)
    big = build.shared_lib(tmp_path / "b2" / "libid.so", LIB_C % 1 + "char pad[70000] = {1};\n", flags=fixed)
    same_layout = build.shared_lib(tmp_path / "b3" / "libid.so", LIB_C % 2, flags=fixed)
    lib = tmp_path / "libid.so"
    shutil.copy(small, lib)
    p = holder_with(procs, fx, tmp_path, lib)
    replace_by_rename(lib, big.read_bytes())
    (f,) = scan(p.pid, ignore_identical=True).processes[0].files
    assert "other loadable segments" in f.detail
    replace_by_rename(lib, same_layout.read_bytes())
    assert small.read_bytes() != same_layout.read_bytes()
    assert scan(p.pid, ignore_identical=True).processes == ()


@requires_root
def test_without_build_ids_the_content_is_hashed(procs, fx, tmp_path: Path) -> None:
    v1 = build.shared_lib(tmp_path / "n1" / "libnb.so", LIB_C % 1, flags=NO_BUILD_ID)
    v2 = build.shared_lib(tmp_path / "n2" / "libnb.so", LIB_C % 2, flags=NO_BUILD_ID)
    assert v1.stat().st_size == v2.stat().st_size and v1.read_bytes() != v2.read_bytes()
    lib = tmp_path / "libnb.so"
    shutil.copy(v1, lib)
    p = holder_with(procs, fx, tmp_path, lib)
    replace_by_rename(lib, v1.read_bytes())
    assert scan(p.pid, ignore_identical=True).identical == 1  # same SHA-256
    replace_by_rename(lib, v2.read_bytes())
    (f,) = scan(p.pid, ignore_identical=True).processes[0].files
    assert "SHA-256 differs" in f.detail  # same size, other bytes
    # Above the size limit nothing is hashed, and the report says so.
    replace_by_rename(lib, v1.read_bytes())
    (f,) = scan(p.pid, ignore_identical=True, identical_max_bytes=1000).processes[0].files
    assert "not compared" in f.detail and "limit" in f.detail
    r = run_cli(["stale", "--json", "--no-kernel", "--pid", str(p.pid), "--ignore-identical",
                 "--identical-max-size", "1K"], check_rc=[1])
    assert "--identical-max-size" in json.loads(r.stdout)["processes"][0]["files"][0]["detail"]
    assert run_cli(["stale", "--pid", str(p.pid), "--identical-max-size", "1K"], check_rc=[2]).stderr
    assert "not a size" in run_cli(["stale", "--ignore-identical", "--identical-max-size", "x"], check_rc=[2]).stderr


@requires_root
def test_the_journal_digests_are_used_and_checked(procs, fx, tmp_path: Path) -> None:
    """Digests from the install journal decide without reading — as long as each file still has the size and
    mtime its record says; otherwise the files are compared themselves."""
    lib = tmp_path / "libfix.so"
    shutil.copy(fx.lib_v1, lib)
    p = holder_with(procs, fx, tmp_path, lib)
    old = lib.stat()
    replace_by_rename(lib, fx.lib_v2.read_bytes())
    new = lib.stat()
    sha_new = hashlib.sha256(fx.lib_v2.read_bytes()).hexdigest()
    # A journal that claims both versions hash alike (false, which shows the claim was what decided).
    journal = JournalView(replaced_records={(old.st_dev, old.st_ino): FileRecord(old.st_size, old.st_mtime_ns,
                                                                                sha_new)},
                          installed={(new.st_dev, new.st_ino): FileRecord(new.st_size, new.st_mtime_ns, sha_new)})
    assert scan(p.pid, ignore_identical=True, journal=journal).processes == ()
    # The installed file changed since it was recorded: its record no longer vouches for it.
    os.utime(lib, ns=(new.st_atime_ns, new.st_mtime_ns + 5_000_000_000))
    (f,) = scan(p.pid, ignore_identical=True, journal=journal).processes[0].files
    assert f.kind == "replaced" and "build-id" in f.detail  # replaced: the journal lists the old inode


@requires_root
def test_a_held_script_reinstalled_identically(procs, tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    body = 'touch "$1"\nwhile true; do sleep 60; done\n'
    script.write_text(body)
    ready = tmp_path / "ready"
    p = procs.start(["bash", str(script), str(ready)], wait_for_file=ready)
    replace_by_rename(script, body.encode())
    (f,) = scan(p.pid).processes[0].files
    assert (f.role, f.kind) == ("script", "deleted")
    assert scan(p.pid, ignore_identical=True).identical == 1
    replace_by_rename(script, (body + "# v2\n").encode())
    (f,) = scan(p.pid, ignore_identical=True).processes[0].files
    assert "size" in f.detail


@requires_root
def test_nothing_at_the_path_or_a_fifo_is_reported_without_hanging(procs, fx, tmp_path: Path) -> None:
    lib = tmp_path / "libfix.so"
    shutil.copy(fx.lib_v1, lib)
    p = holder_with(procs, fx, tmp_path, lib)
    lib.unlink()
    (f,) = scan(p.pid, ignore_identical=True).processes[0].files
    assert "no regular file at the path" in f.detail
    os.mkfifo(lib)  # opening a FIFO for reading would block without O_NONBLOCK
    (f,) = scan(p.pid, ignore_identical=True).processes[0].files
    assert f.kind == "deleted" and "no regular file" in f.detail


@requires_root
def test_unprivileged_cannot_read_the_old_version_and_says_so(procs, fx, tmp_path: Path) -> None:
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="soswap-ident-", dir="/tmp"))
    try:
        os.chmod(shared, 0o777)
        d = shared / "app"
        fx.program(d)
        os.chmod(d, 0o777)
        ready = shared / "ready"
        p = procs.start(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", d / "prog", ready],
                        wait_for_file=ready)
        replace_by_rename(d / "libfix.so", (d / "libfix.so").read_bytes())
        doc = json.loads(run_cli(["stale", "--json", "--no-kernel", "--ignore-identical"], user=True).stdout)
        (proc,) = [x for x in doc["processes"] if x["pid"] == p.pid]
        (f,) = proc["files"]
        assert f["kind"] == "deleted" and "cannot be opened" in f["detail"]
    finally:
        procs.stop_all()
        shutil.rmtree(shared, ignore_errors=True)


def test_content_comparer_never_blocks_on_special_files(tmp_path: Path) -> None:
    """The comparer itself: a FIFO or a directory at the path is never read; a missing old version is named."""
    from soswap.proc.identical import ContentComparer

    if not build.have_cc():
        pytest.skip("no C compiler")
    c = ContentComparer()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert c.compare("/nonexistent", 1, 2, os.fsencode(fifo)).same is None
    assert c.compare("/nonexistent", 1, 2, os.fsencode(tmp_path)).same is None
    regular = tmp_path / "f"
    regular.write_bytes(b"x")
    v = c.compare(str(tmp_path / "missing"), 1, 2, os.fsencode(regular))
    assert v.same is None and "cannot be opened" in v.how


def test_one_default_size_limit() -> None:
    from soswap.proc.identical import DEFAULT_MAX_BYTES
    from soswap.proc.scan import IDENTICAL_MAX_BYTES

    assert DEFAULT_MAX_BYTES == IDENTICAL_MAX_BYTES == ScanOptions().identical_max_bytes == 64 << 20
