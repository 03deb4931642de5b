"""The /proc text parsers: maps lines, stat with an odd comm, cgroup lines of every form (stale.md §(b) 32)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from soswap.errors import ProcessGone
from soswap.proc import cgroup, procfs
from soswap.proc.maps import file_tails, parse_line, parse_maps

# -- maps ----------------------------------------------------------------------------------------------------
LINES = b"""\
55d705fe6000-55d705fe8000 r--p 00000000 fe:00 2147380                    /usr/bin/sleep
7f0a1c000000-7f0a1c021000 rw-p 00000000 00:00 0
7f0a1d200000-7f0a1d228000 r-xp 00028000 103:02 1311                      /opt/my lib/libx.so (deleted)
7f0a1d300000-7f0a1d301000 r--p 00000000 00:05 4                          /memfd:jit (deleted)
7f0a1d400000-7f0a1d401000 r-xp 00000000 fe:00 77                         /tmp/new\\012line.so
7ffd6b9e7000-7ffd6ba08000 rw-p 00000000 00:00 0                          [stack]
7f0a1d500000-7f0a1d501000 rw-s 00000000 00:0e 1030                       anon_inode:[perf_event]
7f0a1d600000-7f0a1d601000 r--p 00000000 fe:00 78                         /tmp/trailing space.so""" + b" \n"


def test_parse_maps_lines() -> None:
    maps = parse_maps(LINES)
    assert [m.path for m in maps] == [b"/usr/bin/sleep", b"/opt/my lib/libx.so", b"/memfd:jit",
                                      b"/tmp/new\nline.so", b"/tmp/trailing space.so "]
    m = maps[1]
    assert (m.major, m.minor, m.inode, m.deleted, m.executable, m.offset) == (0x103, 2, 1311, True, True, 0x28000)
    assert m.dev == os.makedev(0x103, 2)  # NVMe-style majors > 255 (Salt's regex drops them)
    assert m.start == 0x7F0A1D200000 and m.end == 0x7F0A1D228000
    assert maps[3].raw_path == b"/tmp/new\\012line.so"


def test_file_tails_matches_parse_maps() -> None:
    tails = file_tails(LINES)
    assert {(t[1], int(t[2])) for t in tails} == {(b"fe:00", 2147380), (b"103:02", 1311), (b"00:05", 4),
                                                 (b"fe:00", 77), (b"fe:00", 78)}


@given(st.binary(max_size=300))
def test_parse_line_never_crashes(data: bytes) -> None:
    try:
        parse_line(data)
    except ValueError:
        pass  # a malformed number in a fabricated line; the kernel never writes one


# -- stat ----------------------------------------------------------------------------------------------------
def test_stat_comm_with_parens_and_spaces() -> None:
    line = b"4242 (a) b (c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 987654 1 1 18446744073709551615 " \
           b"1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
    s = procfs.parse_stat(4242, line)
    assert (s.comm, s.state, s.ppid, s.starttime) == (b"a) b (c", b"S", 1, 987654)
    assert not s.kernel_thread


def test_stat_garbage_is_process_gone() -> None:
    with pytest.raises(ProcessGone):
        procfs.parse_stat(1, b"1 (x")
    with pytest.raises(ProcessGone):
        procfs.parse_stat(1, b"1 (x) S 1")


def test_own_stat_and_kernel_thread() -> None:
    me = procfs.read_stat(os.getpid())
    assert me.ppid == os.getppid() and not me.kernel_thread
    assert procfs.read_stat(2).kernel_thread  # kthreadd


def test_cmdline_split() -> None:
    assert procfs.parse_cmdline(b"python3\0-u\0a b.py\0") == (b"python3", b"-u", b"a b.py")
    assert procfs.parse_cmdline(b"") == ()
    assert procfs.parse_cmdline(b"nginx: master process\0") == (b"nginx: master process",)
    # a process title written over argv leaves NUL padding: no trailing empty arguments (as ps shows it)
    assert procfs.parse_cmdline(b"nginx: worker process" + b"\0" * 49) == (b"nginx: worker process",)
    assert procfs.parse_cmdline(b"prog\0a\0\0\0") == (b"prog", b"a", b"", b"")  # real empty arguments
    assert procfs.parse_cmdline(b"\0") == (b"",)


# -- cgroup --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,kind,name", [
    (b"0::/system.slice/a.service\n", "system", "a.service"),
    (b"0::/system.slice/a.service/payload\n", "system", "a.service"),  # delegated subtree
    (b"0::/system.slice/system-getty.slice/getty@tty1.service\n", "system", "getty@tty1.service"),
    (b"0::/system.slice/system-systemd\\x2dfsck.slice/systemd-fsck@dev-disk-by\\x2duuid-1.service\n",
     "system", "systemd-fsck@dev-disk-by\\x2duuid-1.service"),
    (b"0::/user.slice/user-1000.slice/user@1000.service/app.slice/b.service\n", "user", "b.service"),
    (b"0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", "user-manager", "user@1000.service"),
    (b"0::/user.slice/user-1000.slice/session-3.scope\n", "session", "session-3.scope"),
    (b"0::/system.slice/run-u7.service\n", "system", "run-u7.service"),
    (b"0::/init.scope\n", "manager", "init.scope"),
    (b"12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/nginx.service\n0::/\n", "system",
     "nginx.service"),  # cgroup v1 (legacy/hybrid): the name=systemd line wins
    (b"0::/system.slice/docker-0123456789abcdef0123.scope\n", "container", "docker:0123456789abcdef0123"),
    (b"0::/machine.slice/machine-web.scope/payload\n", "container", "machine:web"),
    (b"0::/lxc.payload.c1/system.slice/x.service\n", "container", "lxc:c1"),
])
def test_cgroup_units(text: bytes, kind: str, name: str) -> None:
    info = cgroup.parse(text)
    assert info.unit is not None
    assert (info.unit.kind, info.unit.name) == (kind, name)


def test_cgroup_details() -> None:
    u = cgroup.parse(b"0::/user.slice/user-1000.slice/session-3.scope\n").unit
    assert (u.uid, u.session) == (1000, "3")
    u = cgroup.parse(b"0::/user.slice/user-1000.slice/user@1000.service/app.slice/b.service\n").unit
    assert u.uid == 1000
    assert cgroup.parse(b"0::/system.slice/run-u7.service\n").unit.transient
    assert not cgroup.parse(b"0::/system.slice/nginx.service\n").unit.transient
    kube = cgroup.parse(b"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/"
                        b"cri-containerd-0123456789abcdef.scope\n")
    assert kube.container == "containerd:0123456789abcdef"
    assert cgroup.parse(b"0::/docker/0123456789ab\n").container == "docker:0123456789ab"


@pytest.mark.parametrize("text", [b"", b"0::/\n", b"garbage\n", b"9:name=systemd:/\n0::/\n", b"\xff\xfe::/x"])
def test_cgroup_without_unit(text: bytes) -> None:
    assert cgroup.parse(text).unit is None


@given(st.binary(max_size=200))
def test_cgroup_never_crashes(data: bytes) -> None:
    cgroup.parse(data)


def test_lines_containing_keeps_only_the_lines_with_a_needle_in_order() -> None:
    from soswap.proc.maps import lines_containing, maps_form

    data = (b"1000-2000 r-xp 00000000 fe:00 77 /lib/a.so\n"
            b"2000-3000 r--p 00001000 fe:00 77 /lib/a.so\n"
            b"3000-4000 r-xp 00000000 fe:00 770 /lib/b.so\n"
            b"4000-5000 rw-p 00000000 00:00 0 \n"
            b"5000-6000 r-xp 00000000 fe:00 9 /tmp/new\\012line.so")
    assert lines_containing(data, [b" 77 "]).count(b"\n") == 1
    assert [m.inode for m in parse_maps(lines_containing(data, [b" 770 ", b" 77 "]))] == [77, 77, 770]
    got = parse_maps(lines_containing(data, [maps_form(b"/tmp/new\nline.so")]))
    assert [m.path for m in got] == [b"/tmp/new\nline.so"]  # the last line, without a newline after it
    assert lines_containing(data, [b" 5 "]) == b""
