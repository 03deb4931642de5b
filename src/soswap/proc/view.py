"""Files as a process sees them: root selection, one cached ``stat`` per distinct (root, path), identity checks.

Which root to resolve a maps path in:

- a process in **our mount namespace** (chrooted or not): the maps path is printed by ``d_path`` relative to
  *our* root, so it is already host-absolute (a chroot's files show as ``/srv/chroot/lib/...``); it is used as
  is. Prefixing ``/proc/PID/root`` again would be wrong (needrestart#61, #130);
- a process in **another mount namespace** (container, ``unshare -m``): the path is relative to that
  namespace, and is resolved under ``/proc/PID/root``, which walks the target's own mount tree.

Identity: the maps ``major:minor inode`` pair is the mapped inode (``show_map_vma`` prints ``i_sb->s_dev``). It
equals ``stat()``'s ``(st_dev, st_ino)`` except where the filesystem reports another device to stat: btrfs
(per-subvolume anonymous devices, and inode numbers repeat across subvolumes) and, on old kernels, overlayfs.
There the device numbers are not compared; the mapped file's own ``stat`` through ``/proc/PID/map_files``
(which goes through the same ``getattr`` as a path stat) is compared instead, and only without it (no
CAP_SYS_ADMIN) the inode number alone.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Dict, FrozenSet, Hashable, Iterator, List, Optional, Set, Tuple

from soswap.errors import AccessDenied, ProcessGone
from soswap.proc import procfs
from soswap.tuples import NamedTuple

#: Filesystems whose stat() can hang when the server is gone; stats there run in a helper process with a
#: timeout. Every FUSE filesystem counts too (its daemon may stop answering). A name ending in "." stands for
#: every subtype (``fuse.`` for ``fuse.sshfs``, ``fuse.rclone``...).
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre", "gpfs", "ocfs2",
    "beegfs", "fuse", "fuseblk", "fuse.",
})


def _is_guarded(fstype: str, fstypes: FrozenSet[str]) -> bool:
    return fstype in fstypes or any(t.endswith(".") and fstype.startswith(t) for t in fstypes)


class RootContext(NamedTuple):
    key: Hashable  #: cache key: None for our own view, ("mnt", ns, root dev, root ino) for another one
    prefix: str  #: "" or "/proc/PID/root"
    #: What the kernel prints before the paths of a process that chroot()ed inside its own mount namespace
    #: (``unshare -m chroot DIR``): its maps, exe and cwd paths are relative to the namespace's root
    #: (``d_path``), ``/proc/PID/root`` is DIR. Taken off before a path is resolved under the prefix.
    strip: bytes = b""

    def host(self, path: bytes) -> Optional[bytes]:
        """A path we can open for ``path`` as the kernel prints it for the process; None when it lies outside
        the process's root (out of reach through ``/proc/PID/root``)."""
        if not self.prefix:
            return path
        if self.strip:
            if path == self.strip:
                path = b"/"
            elif path.startswith(self.strip + b"/"):
                path = path[len(self.strip):]
            else:
                return None
        return os.fsencode(self.prefix) + path


HOST = RootContext(None, "")

Missing = int  # an errno stored in the caches instead of a stat result


def _major_zero(dev: int) -> bool:
    return os.major(dev) == 0


class FileView:
    """Caches of stat results shared by every process of one scan."""

    def __init__(self, stat_timeout: float = 2.0, guarded_fstypes: FrozenSet[str] = NETWORK_FS) -> None:
        self._own_mnt = procfs.own_ns_inode("mnt")
        self._stats: Dict[Tuple[Hashable, bytes], object] = {}
        self._map_file_stats: Dict[Tuple[int, int], Optional[os.stat_result]] = {}
        self._roots: Dict[int, RootContext] = {}
        self.stat_timeout = stat_timeout
        self._fstypes = guarded_fstypes
        self._guarded_devs: Set[int] = set(_devices_of(f"{procfs.PROC}/self/mountinfo", guarded_fstypes))
        #: namespace key (None: ours) -> it has a guarded mount: a path there whose device is not known yet
        #: (a script, an open file) is stat()-ed through the helper too, as it may lie on one
        self._ns_guarded: Dict[Hashable, bool] = {None: bool(self._guarded_devs)}
        self._hung_devs: Set[int] = set()
        #: overlayfs mounts of our namespace (:meth:`overlay_copy`), read when first needed
        self._overlays: Optional[List[Tuple[int, bytes, bytes, Tuple[bytes, ...]]]] = None
        self._server: Optional[StatServer] = None
        self._waited = 0.0  #: seconds spent on guarded stats that timed out
        self.map_files_denied = False
        #: mount namespace inode -> the devices mounted there (empty: not known), for :meth:`detached`
        self._mounted: Dict[Optional[int], FrozenSet[int]] = {}

    # -- roots ---------------------------------------------------------------------------------------------
    def root_of(self, pid: int) -> RootContext:
        """The root context of a process (raises ProcessGone / AccessDenied)."""
        ctx = self._roots.get(pid)
        if ctx is not None:
            return ctx
        mnt = procfs.ns_inode(pid, "mnt")
        if mnt is None or mnt == self._own_mnt:
            ctx = HOST
        else:
            prefix = procfs.entry_path(pid, "root")
            try:
                st = os.stat(prefix)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise AccessDenied(pid, "root") from None
                raise ProcessGone(pid, "root") from None
            try:
                link = os.readlink(prefix.encode())
            except OSError:
                link = b"/"
            ctx = RootContext(("mnt", mnt, st.st_dev, st.st_ino), prefix, b"" if link == b"/" else link.rstrip(b"/"))
        self._roots[pid] = ctx
        return ctx

    def kernel_path(self, pid: int, path: bytes) -> bytes:
        """An absolute path as the process sees it (its argv: a script) as the kernel prints the paths of that
        process (maps, exe, cwd), which are relative to our root in our mount namespace, to its namespace's root
        in another: a chroot's directory goes in front (``readlink /proc/PID/root``)."""
        try:
            link = os.readlink(procfs.entry_path(pid, "root").encode())
        except OSError:
            return path
        if link == b"/" or not link.startswith(b"/"):
            return path
        return link.rstrip(b"/") + path

    def forget_root(self, pid: int) -> None:
        """Drop the cached root of ``pid`` (before reading it again: it may have changed namespace)."""
        self._roots.pop(pid, None)

    def detached(self, pid: int, dev: int) -> bool:
        """Is the device ``dev`` (a mapping's, from maps) mounted nowhere in the process's mount namespace? Then
        the kernel printed the mapping's path relative to a detached mount (``umount -l``): the name does not
        lead to that file from any root. False when it cannot be told (mountinfo unreadable, or btrfs there:
        its subvolumes' files carry device numbers of their own)."""
        try:
            key = procfs.ns_inode(pid, "mnt")
        except (ProcessGone, AccessDenied):
            return False
        devs = self._mounted.get(key)
        if devs is None:
            found = list(_mounts(procfs.entry_path(pid, "mountinfo")))
            devs = frozenset(d for d, _point, _fstype, _opts in found) \
                if found and not any(fstype == b"btrfs" for _d, _p, fstype, _o in found) else frozenset()
            if len(self._mounted) > 64:
                self._mounted.clear()
            self._mounted[key] = devs
        return bool(devs) and dev not in devs

    def guarded(self, dev: int) -> bool:
        """Is ``dev`` a network filesystem (or one that timed out)? Reading whole files there could hang."""
        return dev in self._guarded_devs or dev in self._hung_devs

    def foreign_mount_ns(self, pid: int) -> Optional[int]:
        """The mount namespace inode of ``pid`` when it differs from ours, else None."""
        ctx = self.root_of(pid)
        if ctx.key is None:
            return None
        return ctx.key[1]  # type: ignore[index]

    # -- stats ---------------------------------------------------------------------------------------------
    def stat(self, ctx: RootContext, path: bytes, dev_hint: int = -1) -> os.stat_result | Missing:
        """``stat()`` of ``path`` in ``ctx`` (follows symlinks); an errno int when it fails. Cached. Without a
        ``dev_hint`` (the device from maps) the path may lie on any mount of the namespace: guarded when it has
        a network or FUSE mount."""
        key = (ctx.key, path)
        hit = self._stats.get(key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        full = ctx.host(path)
        if full is None:  # outside the process's root: out of reach
            self._stats[key] = errno.EXDEV
            return errno.EXDEV
        guarded = self.namespace_guarded(ctx)
        result = self._guarded_stat(full, dev_hint if dev_hint != -1 or not guarded else _UNKNOWN_DEV)
        self._stats[key] = result
        return result

    def stat_open_file(self, pid: int, fd: int) -> os.stat_result | Missing:
        """``stat()`` of the file ``pid`` holds open as ``fd`` (through /proc/PID/fd/FD, which asks its
        filesystem): guarded as a path of unknown device in that process's namespace. Not cached."""
        try:
            guarded = self.namespace_guarded(self.root_of(pid))
        except (AccessDenied, ProcessGone):
            guarded = True
        return self._guarded_stat(os.fsencode(procfs.entry_path(pid, f"fd/{fd}")), _UNKNOWN_DEV if guarded else -1)

    def namespace_guarded(self, ctx: RootContext) -> bool:
        """Does the mount namespace of ``ctx`` have a network or FUSE mount? Another namespace's mounts (its
        /proc/PID/mountinfo) become guarded devices too: a FUSE mount made only there is in no table of ours."""
        hit = self._ns_guarded.get(ctx.key)
        if hit is None:
            devs = _devices_of(f"{ctx.prefix[:-len('/root')]}/mountinfo", self._fstypes) \
                if ctx.prefix.endswith("/root") else frozenset()
            self._guarded_devs |= devs
            hit = self._ns_guarded[ctx.key] = bool(devs)
        return hit

    def _guarded_stat(self, full: bytes, dev_hint: int) -> os.stat_result | Missing:
        if dev_hint in self._hung_devs:
            return errno.ETIMEDOUT
        if dev_hint not in self._guarded_devs and dev_hint != _UNKNOWN_DEV:
            try:
                return os.stat(full)
            except OSError as exc:
                return exc.errno or errno.EIO
            except ValueError:  # an embedded NUL cannot come from the kernel, but never crash on it
                return errno.EINVAL
        if self._waited >= 2 * self.stat_timeout:
            # several dead mounts: each would cost the whole timeout, one after the other (a monitoring check
            # has about 10 s); past twice the timeout, every other guarded device counts as hung
            self._hung_devs.add(dev_hint)
            return errno.ETIMEDOUT
        if self._server is None:
            self._server = StatServer()
        result = self._server.stat(full, self.stat_timeout)
        if result is None:
            self._waited += self.stat_timeout
            if dev_hint != _UNKNOWN_DEV:  # a path of unknown device names no mount to give up on
                self._hung_devs.add(dev_hint)
            return errno.ETIMEDOUT
        return result

    def map_file_stat(self, pid: int, dev: int, inode: int, start: int, end: int) -> Optional[os.stat_result]:
        """The mapped file's own stat via /proc/PID/map_files, cached by the maps (dev, inode); None if refused."""
        key = (dev, inode)
        if key in self._map_file_stats:
            return self._map_file_stats[key]
        if self.map_files_denied or dev in self._hung_devs:
            return None
        if dev in self._guarded_devs:  # the map_files link stats the file through its filesystem too
            res = self._guarded_stat(os.fsencode(procfs.entry_path(pid, procfs.map_files_name(start, end))), dev)
            if isinstance(res, int):
                if res in (errno.EACCES, errno.EPERM):
                    self.map_files_denied = True
                return None
            self._map_file_stats[key] = res
            return res
        try:
            st: Optional[os.stat_result] = procfs.stat_map_file(pid, start, end)
        except AccessDenied:
            self.map_files_denied = True
            st = None
        except ProcessGone:
            return None
        self._map_file_stats[key] = st
        return st

    def same_file(self, pid: int, dev: int, inode: int, start: int, end: int, st: os.stat_result) -> bool:
        """Is the mapped inode (maps dev/inode) the file ``st`` describes?"""
        if st.st_ino != inode:
            return False
        if st.st_dev == dev:
            return True
        if not (_major_zero(dev) or _major_zero(st.st_dev)):
            return False
        # btrfs/overlayfs: the maps device is not stat's device. Compare the mapped file's own stat.
        mf = self.map_file_stat(pid, dev, inode, start, end)
        if mf is None:
            return True  # inode numbers only
        return (mf.st_dev, mf.st_ino) == (st.st_dev, st.st_ino)


    def overlay_copy(self, path: bytes, dev: int) -> Optional[Tuple[bytes, bytes]]:
        """(the upper layer's copy, the lower layer's file it hides) of ``path`` on the overlayfs mount of our
        namespace whose device is ``dev``, when both exist; else None. A file written through an overlay is
        copied up first: a process that mapped it before keeps the lower file's pages, while stat() of the path
        shows the same overlay inode (number and device) as before, and so do maps and map_files on this kernel
        [verified on 6.18]. Only the layers tell that copy from a write in place."""
        if self._overlays is None:
            self._overlays = _overlay_mounts(f"{procfs.PROC}/self/mountinfo")
        best: Optional[Tuple[bytes, bytes, Tuple[bytes, ...]]] = None
        for odev, point, upper, lowers in self._overlays:
            if odev == dev and upper and (path == point or path.startswith(point.rstrip(b"/") + b"/")) and (
                    best is None or len(point) > len(best[0])):
                best = (point, upper, lowers)
        if best is None:
            return None
        point, upper, lowers = best
        rel = path[len(point.rstrip(b"/")):]
        if isinstance(self.stat(HOST, upper + rel), int) or _metacopy(upper + rel):
            return None  # not copied up, or only its metadata (metacopy=on: the data is still the lower file's)
        lower = next((d + rel for d in lowers if not isinstance(self.stat(HOST, d + rel), int)), None)
        if lower is None:
            return None
        up, low = self.stat(HOST, upper + rel), self.stat(HOST, lower)
        if not isinstance(up, int) and not isinstance(low, int) and (up.st_size, up.st_mtime_ns) == (
                low.st_size, low.st_mtime_ns):
            # copied up for its metadata only (chmod, chown: copy_up keeps the mtime), as a chmod in place is no
            # change of the code; a write moves the mtime (a write whose mtime was put back is not seen, as on
            # any filesystem)
            return None
        return upper + rel, lower


#: The device of a path whose device is not known yet, stat()-ed through the helper (see FileView.stat).
_UNKNOWN_DEV = -2


def _mounts(mountinfo: str) -> Iterator[Tuple[int, bytes, bytes, bytes]]:
    """(device number, mount point, filesystem type, super options) of each line of a ``mountinfo`` file:
    ``id parent maj:min root mountpoint options [optional...] - fstype source super-options``."""
    try:
        with open(mountinfo, "rb") as f:
            data = f.read()
    except OSError:
        return
    for line in data.split(b"\n"):
        left, sep, right = line.partition(b" - ")
        fields = left.split(b" ")
        tail = right.split(b" ")
        if not sep or len(fields) < 5:
            continue
        major, _, minor = fields[2].partition(b":")
        try:
            dev = os.makedev(int(major), int(minor))
        except ValueError:
            continue
        yield dev, _unescape_octal(fields[4]), tail[0], b" ".join(tail[2:])


def _overlay_mounts(mountinfo: str) -> List[Tuple[int, bytes, bytes, Tuple[bytes, ...]]]:
    """(device, mount point, upperdir or b"", lowerdirs) of the overlayfs mounts of a ``mountinfo`` file whose
    layers are absolute paths."""
    out = []
    for dev, point, fstype, options in _mounts(mountinfo):
        if fstype != b"overlay":
            continue
        opts = dict(o.partition(b"=")[::2] for o in options.split(b","))
        upper = _unescape_octal(opts.get(b"upperdir", b""))
        # lowerdir=a:b:c (a colon inside a name is escaped with a backslash, not handled: such a mount is skipped)
        lowers = tuple(_unescape_octal(d) for d in opts.get(b"lowerdir", b"").split(b":") if d)
        if lowers and all(d.startswith(b"/") for d in (*lowers, *([upper] if upper else []))):
            out.append((dev, point, upper, lowers))
    return out


def _metacopy(path: bytes) -> bool:
    """The upper-layer file holds only metadata (``overlay.metacopy`` xattr: a chmod or chown copied up with
    ``metacopy=on``); its data is still the lower file's."""
    for name in ("trusted.overlay.metacopy", "user.overlay.metacopy"):
        try:
            os.getxattr(path, name, follow_symlinks=False)
            return True
        except OSError:
            continue
    return False


def _unescape_octal(raw: bytes) -> bytes:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), raw)


def _guarded_mounts(mountinfo: str, fstypes: FrozenSet[str]) -> List[Tuple[int, str]]:
    """(device number, mount point) of each mount (of the ``mountinfo`` file) whose filesystem type is in
    ``fstypes``."""
    if not fstypes:
        return []
    return [(dev, os.fsdecode(point)) for dev, point, fstype, _options in _mounts(mountinfo)
            if _is_guarded(fstype.decode("ascii", "replace"), fstypes)]


def _devices_of(mountinfo: str, fstypes: FrozenSet[str]) -> FrozenSet[int]:
    """Device numbers of the mounts (of the ``mountinfo`` file) whose filesystem type is in ``fstypes``."""
    return frozenset(dev for dev, _point in _guarded_mounts(mountinfo, fstypes))


class PathGuard:
    """``stat()`` of paths that are not known to be anywhere in particular (the directories the loader's
    searches watch, say): one under the mount point of a network or FUSE filesystem of ours runs in a
    :class:`StatServer` with a timeout, the others directly. A path reaching such a mount through a symbolic
    link elsewhere is not seen."""

    def __init__(self, timeout: float = 2.0, fstypes: FrozenSet[str] = NETWORK_FS) -> None:
        self.timeout = timeout
        #: the mount points, longest first
        self.points = tuple(sorted({p for _dev, p in _guarded_mounts(f"{procfs.PROC}/self/mountinfo", fstypes)},
                                   key=len, reverse=True))
        self._server: Optional[StatServer] = None
        self._hung: Set[str] = set()

    def stat(self, path: str) -> os.stat_result:
        """``os.stat(path)``; raises OSError, and ``TimeoutError`` for a path on a filesystem that does not
        answer (further paths under the same mount point at once)."""
        point = next((m for m in self.points if path == m or path.startswith(m.rstrip("/") + "/")), None)
        if point is None:
            return os.stat(path)
        if point in self._hung:
            raise TimeoutError(errno.ETIMEDOUT, "no answer from its filesystem", path)
        if self._server is None:
            self._server = StatServer()
        result = self._server.stat(os.fsencode(path), self.timeout)
        if result is None:
            self._hung.add(point)
            raise TimeoutError(errno.ETIMEDOUT, "no answer from its filesystem", path)
        if isinstance(result, int):
            raise OSError(result, os.strerror(result), path)
        return result


class StatServer:
    """A forked helper process that runs ``stat()`` for us. A stat stuck in the kernel (a dead NFS server, a
    FUSE daemon that stopped answering: uninterruptible, SIGKILL does not end it) stays in the helper, which is
    abandoned; a thread would keep the whole process from exiting until the filesystem answers."""

    def __init__(self) -> None:
        self._pid = 0
        self._req = self._resp = -1

    def stat(self, path: bytes, timeout: float) -> Optional[os.stat_result | Missing]:
        """``os.stat(path)`` (a stat result or an errno), or None when it did not answer within ``timeout``
        seconds (the helper is then abandoned; the next call starts another)."""
        import pickle
        import select

        if not self._pid and not self._start():
            return errno.EAGAIN
        try:
            os.write(self._req, len(path).to_bytes(4, "little") + path)
            ready, _, _ = select.select([self._resp], [], [], timeout)
            if not ready:
                self.abandon(stuck=True)
                return None
            head = _read_exact(self._resp, 4)
            payload = _read_exact(self._resp, int.from_bytes(head, "little"))
            return pickle.loads(payload)  # type: ignore[no-any-return]  # our own child's answer
        except (OSError, EOFError, ValueError, pickle.UnpicklingError):
            self.abandon(stuck=True)
            return errno.EIO

    def _start(self) -> bool:
        import pickle  # noqa: F401  (imported before the fork: the child never imports)

        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (req_r, req_w, resp_r, resp_w):
                os.close(fd)
            return False
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                import fcntl

                # its pipes above the standard streams (a closed stdin lets os.pipe() hand out 0), then only
                # them: a helper stuck for good must not keep a lock (the state directory's flock lives as long
                # as any copy of its descriptor) or anything else of ours open
                req_r, resp_w = (fd if fd > 2 else fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in (req_r, resp_w))
                _close_all_but(req_r, resp_w)
                # nor our standard streams: a pipe reading soswap's output (NRPE, $(...)) would never end
                null = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):
                    os.dup2(null, std)
                os.close(null)
                _serve(req_r, resp_w)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        os.close(req_r)
        os.close(resp_w)
        os.set_inheritable(req_w, False)
        os.set_inheritable(resp_r, False)
        self._pid, self._req, self._resp = pid, req_w, resp_r
        return True

    def abandon(self, stuck: bool = False) -> None:
        """Close the pipes: an idle helper sees the end and exits, and is waited for. A ``stuck`` one is killed:
        most such waits end on SIGKILL (NFS waits are killable, a FUSE request its daemon has not read yet is
        withdrawn: ``request_wait_answer``), and it is reaped if it ends within a moment. One the kernel holds
        for good stays, reparented to init once we exit; without the kill every run of a monitoring check
        left one more."""
        for fd in (self._req, self._resp):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self._pid:
            if stuck:
                _kill_and_reap(self._pid)
            else:
                try:
                    os.waitpid(self._pid, 0)
                except ChildProcessError:
                    pass
        self._pid, self._req, self._resp = 0, -1, -1

    def __del__(self) -> None:
        self.abandon()


def _kill_and_reap(pid: int, grace: float = 0.2) -> None:
    """SIGKILL our helper ``pid`` and reap it if it ends within ``grace`` seconds."""
    import signal
    import time

    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while True:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def _close_all_but(*keep: int) -> None:  # pragma: no cover - runs in the helper process
    """Close every descriptor above 2 except ``keep`` (the open ones, as /proc/self/fd lists them)."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        fds = list(range(3, 1024))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n > 0:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _serve(req: int, resp: int) -> None:  # pragma: no cover - runs in the helper process
    import pickle

    while True:
        try:
            head = _read_exact(req, 4)
            path = _read_exact(req, int.from_bytes(head, "little"))
        except EOFError:
            return
        try:
            result: object = os.stat(path)
        except OSError as exc:
            result = exc.errno or errno.EIO
        except ValueError:
            result = errno.EINVAL
        payload = pickle.dumps(result)
        os.write(resp, len(payload).to_bytes(4, "little") + payload)
