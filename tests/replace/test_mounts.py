"""Mounts and filesystems: bind-mounted files, read-only and full filesystems, another filesystem for the
source, overlayfs, tmpfs and btrfs (replace.md §(b) 14–16, 19, 21, 22)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

import pytest

from replace.helpers import (
    ask_value,
    backups,
    have,
    leftovers,
    loop_fs,
    maps_of,
    mounted,
    read_lines_until,
    run,
    sha256,
    soswap,
    tmpfs,
)
from support.build import requires_root

pytestmark = [requires_root]


def _start_loop(procs, directory: Path, out: Path, expect: str = "v=1"):  # type: ignore[no-untyped-def]
    with open(out, "w") as f:
        p = procs.start([directory / "loop"], stdout=f.fileno(), wait_maps="libfoo.so.1")
    assert read_lines_until(out, lambda ls: bool(ls))[:1] == [expect]
    return p


def _no_journal(state: Path) -> bool:
    return not any((state / sub).exists() and os.listdir(state / sub) for sub in ("tx", "history"))


def test_bind_mounted_file_refused_before_writing(tmp_path, libfoo, state):
    """Case 14: a bind-mounted destination is detected (EBUSY) before anything is written or journaled."""
    d = tmp_path / "bind"
    lib = libfoo.deploy(d, with_programs=False)
    other = tmp_path / "host-copy"
    shutil.copyfile(libfoo.v1, other)
    with mounted(["--bind", str(other)], lib):
        trace = tmp_path / "trace"
        r = soswap(["install", libfoo.v2, lib], state, check=2,
                   prefix=["strace", "-f", "-qq", "-e", "trace=openat,linkat,renameat,renameat2", "-o", str(trace)])
        assert "mount point" in r.stderr and "EBUSY" in r.stderr
        assert r.stderr.count("soswap: error:") == 1
        assert "O_TMPFILE" not in trace.read_text()
        assert sha256(lib) == libfoo.sha1
        assert leftovers(d) == [] and _no_journal(state)
    assert sha256(other) == libfoo.sha1


def test_read_only_mount(tmp_path, libfoo, state):
    """Case 15: a read-only tmpfs gives one clear error, no temp."""
    m = tmp_path / "ro"
    with tmpfs(m):
        lib = libfoo.deploy(m, with_programs=False)
        assert run(["mount", "-o", "remount,ro", str(m)]).returncode == 0
        r = soswap(["install", libfoo.v2, lib], state, check=2)
        assert "read-only" in r.stderr and r.stderr.count("soswap: error:") == 1
        assert sha256(lib) == libfoo.sha1 and leftovers(m) == []


def test_source_on_other_filesystem(tmp_path, libfoo, state, warm_index):
    """Case 16: source on tmpfs, destination on ext4: the temp is created in the destination's directory and
    the destination is never unlinked. The preflight runs (under strace) with a warm rdeps index."""
    m = tmp_path / "srcfs"
    d = tmp_path / "dst"
    lib = libfoo.deploy(d, with_programs=False)
    with tmpfs(m):
        src = m / "libfoo.so.1"
        shutil.copyfile(libfoo.v2, src)
        trace = tmp_path / "trace"
        soswap(["install", src, lib], state, check=0,
               prefix=["strace", "-f", "-qq", "-e", "trace=openat,unlink,unlinkat,linkat,renameat", "-o", str(trace)])
    text = trace.read_text()
    assert sha256(lib) == libfoo.sha2
    tmpfile_opens = [line for line in text.splitlines() if "O_TMPFILE" in line]
    assert tmpfile_opens and all("= -1" not in line for line in tmpfile_opens)
    dir_fd = [line for line in text.splitlines() if f'"{d}"' in line and "O_DIRECTORY" in line]
    assert dir_fd, "the destination directory was never opened"
    unlinks = [line for line in text.splitlines() if "unlink" in line]
    assert not [line for line in unlinks if '"libfoo.so.1"' in line or f'"{lib}"' in line]
    assert [line for line in text.splitlines() if "renameat(" in line and '"libfoo.so.1"' in line]


def test_full_filesystem(tmp_path, libfoo, state):
    """Case 19: ENOSPC while staging: one error line, the old file intact, no temp."""
    m = tmp_path / "full"
    with loop_fs(tmp_path, m, "ext4", 8):
        lib = libfoo.deploy(m, with_programs=False)
        filler = m / "filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        with open(filler, "ab") as f:  # use up the last blocks too
            try:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
            except OSError:
                pass
        r = soswap(["install", libfoo.v2, lib], state, check=2)
        assert "no space left" in r.stderr and r.stderr.count("soswap: error:") == 1
        assert sha256(lib) == libfoo.sha1
        assert leftovers(m) == []


def test_a_sparse_source_stays_sparse(tmp_path, state):
    """A 64 MiB source with two 4 KiB extents of data fits a 16 MiB tmpfs, as with cp: its holes are not
    written (copy_file_range fills them; the install failed with ENOSPC). The same on the ext4 of /tmp."""
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.write(b"head" * 1024)
        f.seek(32 << 20)
        f.write(b"mid!" * 1024)
    for where in ("tmpfs", "here"):
        d = tmp_path / where
        d.mkdir()
        mount = tmpfs(d, "16m") if where == "tmpfs" else contextlib.nullcontext(d)
        with mount:
            (d / "f").write_text("old\n")
            soswap(["install", "--no-check", "--no-report", src, d / "f"], state, check=0)
            assert sha256(d / "f") == sha256(src)
            st = os.stat(d / "f")
            assert st.st_size == 64 << 20 and st.st_blocks * 512 <= 1 << 20, (where, st.st_blocks)


def test_overlayfs_lower_layer(tmp_path, libfoo, state, procs):
    """Case 21: library and program in the lower layer: the running program survives, the new file lands in
    the upper layer, a new program gets v2."""
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    libfoo.deploy(lower)
    upper.mkdir()
    work.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    with mounted(["-t", "overlay", "overlay", "-o", opts], merged):
        out = tmp_path / "loop.out"
        p = _start_loop(procs, merged, out)
        soswap(["install", libfoo.v2, merged / "libfoo.so.1"], state, check=0)
        assert ask_value(p.pid, out) == "v=1" and p.alive()
        assert sha256(upper / "libfoo.so.1") == libfoo.sha2
        assert sha256(lower / "libfoo.so.1") == libfoo.sha1
        p2 = _start_loop(procs, merged, tmp_path / "loop2.out", expect="v=2")
        assert p2.alive()
        assert leftovers(merged) == []
        p.stop()
        p2.stop()


def _three_cases(root: Path, libfoo, state: Path, procs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Cases 1, 5 and 10 in one directory of the filesystem under test."""
    d = root / "app"
    lib = libfoo.deploy(d)
    old = lib.stat()
    out = tmp_path / f"{root.name}.out"
    p = _start_loop(procs, d, out)
    r = soswap(["install", "--json", libfoo.v2, lib], state, check=0)
    journal_old = json.loads(r.stdout)["changes"][0]["old"]
    assert ask_value(p.pid, out) == "v=1"
    lines = maps_of(p.pid, "libfoo.so.1")
    # The detector must match by inode: on btrfs the device in maps is not stat()'s st_dev.
    assert lines and all(int(line.split()[4]) == journal_old["ino"] == old.st_ino for line in lines)
    assert all(line.endswith("(deleted)") for line in lines)
    assert sha256(lib) == libfoo.sha2
    # case 5: capabilities
    prog = d / "capprog"
    shutil.copyfile(libfoo.once, prog)
    prog.chmod(0o755)
    assert run(["setcap", "cap_net_bind_service=+ep", prog]).returncode == 0
    soswap(["install", libfoo.loop, prog], state, check=0)
    assert "cap_net_bind_service=ep" in run(["getcap", prog]).stdout
    # case 10: hard links
    twin = d / "twin"
    os.link(lib, twin)
    r = soswap(["install", libfoo.v1, lib], state, check=0)
    assert sha256(lib) == libfoo.sha1 and sha256(twin) == libfoo.sha2
    assert "other hard link" in r.stderr
    assert leftovers(d) == [] and len(backups(d)) == 3  # three transactions, all within --keep 3


def test_on_tmpfs(tmp_path, libfoo, state, procs):
    """Case 22 on tmpfs."""
    with tmpfs(tmp_path / "tmpfs", "64m") as m:
        try:
            _three_cases(m, libfoo, state, procs, tmp_path)
        finally:
            procs.stop_all()


@pytest.mark.skipif(not have("mkfs.btrfs"), reason="btrfs-progs not installed")
def test_on_btrfs(tmp_path, libfoo, state, procs):
    """Case 22 on btrfs (loop device): reflink copy, st_dev per subvolume."""
    with loop_fs(tmp_path, tmp_path / "btrfs", "btrfs", 128) as m:
        try:
            _three_cases(m, libfoo, state, procs, tmp_path)
            src = m / "v2-on-btrfs"  # same filesystem: FICLONE shares the extents
            shutil.copyfile(libfoo.v2, src)
            r = soswap(["install", "--json", src, m / "app" / "libfoo.so.1"], state, check=0)
            assert json.loads(r.stdout)["changes"][0]["method"] == "reflink"
            assert sha256(m / "app" / "libfoo.so.1") == libfoo.sha2
        finally:
            procs.stop_all()
