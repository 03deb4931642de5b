"""Running processes as consumers: which processes map TARGET (from :mod:`soswap.proc`), and how each one would
load its program again: its executable, its ``LD_LIBRARY_PATH``/``LD_PRELOAD``/``LD_BIND_NOW``, its working
directory, AT_SECURE, and the plugins it ``dlopen``-ed (mapped code that is not in the program's tree).

Nothing of the process is executed or imported: its environment only tells the loader emulation where ld.so
would look.
"""

from __future__ import annotations

import functools
import os
import posixpath
import struct
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from soswap.errors import AccessDenied, ProcessGone, SoswapError
from soswap.loader import Environment
from soswap.tuples import NamedTuple

_AT_SECURE = 23


class ProcessInfo(NamedTuple):
    """What the checker needs of one process. With :attr:`root` set, every path (``exe``, ``mapped``, the
    working directory) is a path inside that root, as the process sees it."""

    pid: int
    exe: str
    argv0: str
    env: Environment
    #: Paths of the executable mappings (code of the program, its libraries and its plugins).
    mapped: Tuple[Tuple[str, int, int], ...]
    #: Set when the environment could not be read (checked with an empty one).
    note: str = ""
    #: A host path of the process's root directory when it is not ours (a chroot: the directory; another mount
    #: namespace, a container: ``/proc/PID/root``); None for our own root.
    root: Optional[str] = None
    #: What that root is, for the report ("chroot /srv/jammy", "container (mount namespace 4026532801)").
    where: str = ""


def processes_mapping(target: str) -> Tuple[List[int], Optional[str]]:
    """PIDs of the processes that map TARGET (its current inode, or an older one under its name), and a note
    when :mod:`soswap.proc` is not available."""
    found, note = processes_mapping_each([target])
    return found[target], note


def processes_mapping_each(targets: Sequence[str]) -> Tuple[Dict[str, List[int]], Optional[str]]:
    """:func:`processes_mapping` of several targets in one pass over /proc (a transaction's preflight: one
    pass instead of one per file)."""
    try:
        from soswap.proc import find_users
    except ImportError:  # pragma: no cover - soswap.proc is part of the package
        return {t: [] for t in targets}, "soswap.proc is not available: running processes not checked"
    reports = find_users(list(targets), fds=False)
    return {t: sorted({u.pid for u in r.uses}) for t, r in zip(targets, reports)}, None


def read_process(pid: int) -> ProcessInfo:
    """Read what :class:`ProcessInfo` holds, its paths inside its own root. Raises :class:`ProcessGone` /
    :class:`AccessDenied`, or :class:`SoswapError` for a process that cannot be checked (a kernel thread, a
    deleted program, a container's program outside its root)."""
    from soswap.proc import procfs
    from soswap.proc.maps import parse_maps, split_deleted

    try:
        exe_raw = procfs.read_link(pid, "exe")
    except ProcessGone:
        if procfs.adopt_live_thread(pid):  # its main thread ended, others run: read through one of them
            exe_raw = procfs.read_link(pid, "exe")
        elif os.path.exists(f"/proc/{pid}/stat"):  # exe has no target: a kernel thread, a zombie
            raise SoswapError(f"process {pid} runs no program (a kernel thread or a zombie): not checked") from None
        else:
            raise
    path, deleted = split_deleted(exe_raw)
    exe = os.fsdecode(path)
    if not exe.startswith("/"):
        raise SoswapError(f"process {pid}: no executable file ({exe})")
    root, prefix, where = _root_of(pid)
    inside = _inside(prefix)
    maps = parse_maps(procfs.read_file(pid, "maps"))
    # the dynamic loader it runs with (a program started here and chroot()ed since has it from here; JIT code,
    # huge pages or a file passed in from outside say nothing of where it started)
    loaders = [os.fsdecode(m.path) for m in maps if m.executable and _is_dynamic_loader(m.path)]
    if root is not None and (inside(exe) is None or any(inside(p) is None for p in loaders)):
        if root.startswith("/proc/"):
            raise SoswapError(f"process {pid} ({where}) runs code from outside its root directory: not checked")
        # a daemon that chroot()s itself after it started (postfix, named -t), its program and libraries mapped
        # from here before: started again, it runs from here
        root, prefix, where = None, "", ""
        inside = _inside("")
    exe = inside(exe) or exe
    raw_cmdline = procfs.read_file(pid, "cmdline")
    cmdline = procfs.parse_cmdline(raw_cmdline)
    note = ""
    rewritten = False
    try:
        raw_environ = procfs.read_file(pid, "environ")
        environ = _parse_environ(raw_environ)
        rewritten = _rewritten(raw_environ)
    except AccessDenied:
        environ, note = {}, "environment unreadable: checked with an empty environment"
    if rewritten:
        note = ("environment overwritten by the process (a process title): its LD_LIBRARY_PATH is unknown, the "
                "directories of the libraries it maps are searched first")
    # a process title written over argv (setproctitle: "nginx: master process ...", NUL padding): argv[0] is
    # gone, and the program's path stands in for it (what a service manager passes)
    retitled = rewritten or raw_cmdline.endswith(procfs.TITLE_PADDING)
    argv0 = os.fsdecode(cmdline[0]) if cmdline and cmdline[0] and not retitled else exe
    try:
        cwd = inside(os.fsdecode(procfs.read_link(pid, "cwd"))) or "/"
    except AccessDenied:
        cwd = "/"
    seen: Dict[str, Tuple[str, int, int]] = {}
    host_paths: List[Tuple[str, int, int]] = []
    for m in maps:
        if m.executable and m.path.startswith(b"/"):
            p = os.fsdecode(m.path)
            mine = inside(p) or p
            if mine not in seen:
                seen[mine] = (mine, m.dev, m.inode)
                host_paths.append(((root or "") + mine if root else p, m.dev, m.inode))
    _answers(pid, host_paths)
    if deleted and not os.path.lexists((root or "") + exe):  # (a new file there is what a restart runs)
        raise SoswapError(f"process {pid}: its program {exe} was deleted since it started: not checked ('soswap "
                          "stale' lists it)")
    secure = _at_secure(pid)
    env = Environment.from_environ(environ, cwd=cwd if cwd.startswith("/") else "/", secure=secure)
    if _is_dynamic_loader(os.fsencode(exe)) and len(cmdline) > 1 and not retitled:
        # ld.so run as a program (`ld.so [OPTIONS] PROGRAM ARGS`): the program is what it loads and runs
        run = _loader_command(cmdline[1:])
        if run is not None:
            program, changes = run
            name = os.fsdecode(program)
            exe = posixpath.normpath(posixpath.join(env.cwd, name))
            argv0 = os.fsdecode(changes.pop("argv0", program))  # type: ignore[arg-type]
            extra = changes.pop("preload", None)
            if extra is not None:  # LD_PRELOAD first, then --preload (dl_main)
                changes["preload"] = f"{env.preload}:{os.fsdecode(extra)}" if env.preload else os.fsdecode(extra)
            env = env.replace(**changes)
    return ProcessInfo(pid, exe, argv0, env, tuple(seen.values()), note, root, where)


def _loader_command(args: Sequence[bytes]) -> Optional[Tuple[bytes, Dict[str, object]]]:
    """(PROGRAM, Environment changes) of ld.so's command line after its own name (rtld.c ``dl_main``: its options
    come first; ``--library-path`` replaces LD_LIBRARY_PATH, ``--preload`` comes after LD_PRELOAD), or None
    for a mode that runs no program (``--list``, ``--verify``, ``--help``...)."""
    changes: Dict[str, object] = {}
    i = 0
    while i < len(args):
        a = args[i]
        value = args[i + 1] if i + 1 < len(args) else None
        if a == b"--inhibit-cache":
            changes["inhibit_cache"] = True
            i += 1
        elif a in (b"--library-path", b"--preload", b"--argv0", b"--glibc-hwcaps-mask", b"--inhibit-rpath",
                   b"--audit", b"--glibc-hwcaps-prepend") and value is not None:
            if a == b"--library-path":
                changes["library_path"] = os.fsdecode(value)
            elif a == b"--preload":
                changes["preload"] = value
            elif a == b"--argv0":
                changes["argv0"] = value
            elif a == b"--glibc-hwcaps-mask":
                changes["hwcaps_mask"] = tuple(x for x in os.fsdecode(value).split(":") if x)
            i += 2
        elif a.startswith(b"--"):
            return None
        else:
            return a, changes
    return None


def _is_dynamic_loader(path: bytes) -> bool:
    """``/lib64/ld-linux-x86-64.so.2``, ``/lib/ld-linux-aarch64.so.1``, ``/lib64/ld64.so.2``, ``ld-2.31.so``..."""
    name = path.rsplit(b"/", 1)[-1]
    return name.startswith((b"ld-", b"ld64.so", b"ld.so")) and b".so" in name


def _root_of(pid: int) -> Tuple[Optional[str], str, str]:
    """(a host path of the process's root directory or None for ours, the prefix its /proc paths carry, what
    it is). The kernel prints the paths of maps, exe and cwd relative to *our* root when their mounts are
    ours (``d_path``): a chroot's files read ``/srv/jammy/usr/lib/...``. In another mount namespace they are
    relative to that namespace's root, which is not the process's own when it chroot()ed there too
    (``unshare -m chroot DIR``: ``/proc/PID/root`` links to ``/DIR``); its files are reached through
    ``/proc/PID/root``, which walks its own mount tree."""
    from soswap.proc import procfs

    try:
        link = os.fsdecode(procfs.read_link(pid, "root"))
    except AccessDenied:
        link = "/"
    try:
        theirs = procfs.ns_inode(pid, "mnt")
    except AccessDenied:
        theirs = None
    prefix = "" if link == "/" else link.rstrip("/")
    if theirs is None or theirs == procfs.own_ns_inode("mnt"):
        return (None, "", "") if not prefix else (prefix, prefix, f"chroot {prefix}")
    where = f"container (mount namespace {theirs})" + (f", chroot {prefix} there" if prefix else "")
    return procfs.entry_path(pid, "root"), prefix, where


def _inside(prefix: str):  # type: ignore[no-untyped-def]
    """A function giving the path inside the root of a path the kernel printed with ``prefix`` (None when it
    lies outside the root)."""
    if not prefix:
        return lambda path: path

    def inside(path: str) -> Optional[str]:
        if path == prefix:
            return "/"
        if path.startswith(prefix + "/"):
            return path[len(prefix):]
        return None

    return inside


@functools.lru_cache(maxsize=1)
def _view() -> Any:
    """One :class:`soswap.proc.view.FileView` for the processes of this run (its devices and timeouts)."""
    from soswap.proc.view import FileView

    return FileView()


def _answers(pid: int, files: Iterable[Tuple[str, int, int]]) -> None:
    """Raise :class:`SoswapError` (the process is not checked) when a file it runs lies on a network or FUSE
    filesystem that does not answer a stat within the scan's timeout: reading the program to check it would
    wait for that server for good."""
    import errno

    from soswap.proc.view import HOST

    view = _view()
    for path, dev, _ino in files:
        if view.guarded(dev) and view.stat(HOST, os.fsencode(path), dev) == errno.ETIMEDOUT:
            raise SoswapError(f"process {pid}: {path} is on a filesystem that does not answer: not checked")


def _rewritten(data: bytes) -> bool:
    """``/proc/PID/environ`` is not an environment any more: text without ``=`` or only NULs where the
    process wrote its title over the area the kernel set up (an environment has ``NAME=value`` strings)."""
    items = data.split(b"\0")
    return bool(data) and (all(not i for i in items) or any(i and b"=" not in i for i in items))


def _parse_environ(data: bytes) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for item in data.split(b"\0"):
        if item.startswith(b"LD_") and b"=" in item:
            k, v = item.split(b"=", 1)
            out[os.fsdecode(k)] = os.fsdecode(v)
    return out


def _at_secure(pid: int) -> Optional[bool]:
    """AT_SECURE from /proc/PID/auxv (None when unreadable: decided from the file's set-ID bits)."""
    from soswap.proc import procfs

    try:
        data = procfs.read_file(pid, "auxv")
    except (AccessDenied, ProcessGone):
        return None
    fmt = "@LL"
    try:
        with open(procfs.entry_path(pid, "exe"), "rb") as f:
            if f.read(5)[4:5] == b"\x01":  # ELFCLASS32: a 32-bit process has 32-bit auxv entries
                fmt = "@II"
    except OSError:
        pass
    size = struct.calcsize(fmt)
    for off in range(0, len(data) - size + 1, size):
        key, value = struct.unpack_from(fmt, data, off)
        if key == 0:
            break
        if key == _AT_SECURE:
            return bool(value)
    return None
