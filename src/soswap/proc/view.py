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
from typing import Dict, FrozenSet, Hashable, NamedTuple, Optional, Set, Tuple

from soswap.errors import AccessDenied, ProcessGone
from soswap.proc import procfs

#: Filesystems whose stat() can hang when the server is gone; stats there run in a worker with a timeout.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "fuse.sshfs", "fuse.glusterfs",
    "fuse.ceph", "lustre", "gpfs", "ocfs2", "beegfs",
})


class RootContext(NamedTuple):
    key: Hashable  #: cache key: None for our own view, ("mnt", ns, root dev, root ino) for another one
    prefix: str  #: "" or "/proc/PID/root"


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
        self._guarded_devs = _devices_of(guarded_fstypes)
        self._hung_devs: Set[int] = set()
        self.map_files_denied = False

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
            prefix = f"{procfs.PROC}/{pid}/root"
            try:
                st = os.stat(prefix)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    raise AccessDenied(pid, "root") from None
                raise ProcessGone(pid, "root") from None
            ctx = RootContext(("mnt", mnt, st.st_dev, st.st_ino), prefix)
        self._roots[pid] = ctx
        return ctx

    def forget_root(self, pid: int) -> None:
        """Drop the cached root of ``pid`` (before reading it again: it may have changed namespace)."""
        self._roots.pop(pid, None)

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
        """``stat()`` of ``path`` in ``ctx`` (follows symlinks); an errno int when it fails. Cached."""
        key = (ctx.key, path)
        hit = self._stats.get(key)
        if hit is not None:
            return hit  # type: ignore[return-value]
        full = os.fsencode(ctx.prefix) + path if ctx.prefix else path
        result = self._guarded_stat(full, dev_hint)
        self._stats[key] = result
        return result

    def _guarded_stat(self, full: bytes, dev_hint: int) -> os.stat_result | Missing:
        if dev_hint in self._hung_devs:
            return errno.ETIMEDOUT
        if dev_hint not in self._guarded_devs:
            try:
                return os.stat(full)
            except OSError as exc:
                return exc.errno or errno.EIO
            except ValueError:  # an embedded NUL cannot come from the kernel, but never crash on it
                return errno.EINVAL
        box: Dict[str, object] = {}

        def work() -> None:
            try:
                box["r"] = os.stat(full)
            except OSError as exc:
                box["r"] = exc.errno or errno.EIO

        import threading  # only network filesystems need it: not on every start

        worker = threading.Thread(target=work, name="soswap-stat", daemon=True)
        worker.start()
        worker.join(self.stat_timeout)
        if worker.is_alive():
            self._hung_devs.add(dev_hint)
            return errno.ETIMEDOUT
        return box["r"]  # type: ignore[return-value]

    def map_file_stat(self, pid: int, dev: int, inode: int, start: int, end: int) -> Optional[os.stat_result]:
        """The mapped file's own stat via /proc/PID/map_files, cached by the maps (dev, inode); None if refused."""
        key = (dev, inode)
        if key in self._map_file_stats:
            return self._map_file_stats[key]
        if self.map_files_denied or dev in self._hung_devs:
            return None
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


def _devices_of(fstypes: FrozenSet[str]) -> FrozenSet[int]:
    """Device numbers of the mounts (ours) whose filesystem type is in ``fstypes``."""
    if not fstypes:
        return frozenset()
    devs = set()
    try:
        with open(f"{procfs.PROC}/self/mountinfo", "rb") as f:
            data = f.read()
    except OSError:
        return frozenset()
    for line in data.split(b"\n"):
        # mountinfo: id parent maj:min root mountpoint options [optional...] - fstype source super-options
        left, sep, right = line.partition(b" - ")
        if not sep:
            continue
        fields = left.split(b" ")
        fstype = right.split(b" ", 1)[0].decode("ascii", "replace")
        if fstype in fstypes and len(fields) > 2:
            major, _, minor = fields[2].partition(b":")
            try:
                devs.add(os.makedev(int(major), int(minor)))
            except ValueError:
                continue
    return frozenset(devs)
