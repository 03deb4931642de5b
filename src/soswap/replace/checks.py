"""Checks made before anything is written: the conditions under which the final rename would fail or do harm.

* a read-only mount (``EROFS`` from ``rename``),
* a bind-mounted file, i.e. the destination is a mount point (``EBUSY`` from ``rename``: fs/namei.c
  ``vfs_rename`` → ``is_local_mountpoint``),
* ``chattr +i``/``+a`` on the file or its directory (``EPERM`` even for root: fs/namei.c ``may_delete``),
* a network filesystem, where other clients mapping the file get ESTALE/SIGBUS (fs/nfs/unlink.c),
* a source whose size does not say what reading it yields (a /proc or /sys pseudo-file), or that cannot be read.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import List, Optional

from soswap.errors import Refused, ReplaceError, raise_if_exhausted
from soswap.replace import syscalls
from soswap.replace.metadata import BLOCKING_FLAGS


def flag_names(flags: int) -> str:
    """``+i``/``+a`` spelled as chattr does."""
    out = []
    if flags & syscalls.FS_IMMUTABLE_FL:
        out.append("immutable (chattr +i)")
    if flags & syscalls.FS_APPEND_FL:
        out.append("append-only (chattr +a)")
    return " and ".join(out)


def check_directory(dfd: int, directory: str, allow_nfs: bool) -> None:
    """Refuse a read-only mount (ReplaceError) or a network filesystem without ``allow_nfs`` (Refused)."""
    try:
        vfs = os.fstatvfs(dfd)
    except OSError as exc:
        raise ReplaceError(f"{directory}: cannot read filesystem status: {exc.strerror}") from None
    if vfs.f_flag & os.ST_RDONLY:
        raise ReplaceError(f"{directory}: read-only filesystem; nothing was replaced")
    ftype = syscalls.fs_type(dfd)
    if ftype in syscalls.NETWORK_FS and not allow_nfs:
        kind = syscalls.FS_NAMES.get(ftype, hex(ftype))
        raise Refused(
            f"{directory}: on a network filesystem ({kind}): other clients that map the old file would get "
            "ESTALE/SIGBUS; use --allow-nfs to replace it anyway"
        )


def check_source_data(fd: int, source: str, st: os.stat_result) -> None:
    """Refuse (ReplaceError) a source whose data cannot be copied as ``st.st_size`` bytes: a pseudo-file (proc,
    sysfs...: its size, 0 or 4096, says nothing of its content), or one that fails to read (EIO, as
    ``/proc/self/mem`` gives) or reads longer or shorter than its size; nothing is written before this."""
    ftype = syscalls.fs_type(fd)
    if ftype in syscalls.PSEUDO_FS:
        raise ReplaceError(f"{source}: a {syscalls.PSEUDO_FS[ftype]} pseudo-file, whose size ({st.st_size} bytes) "
                           "says nothing of its content; copy it to a regular file first; nothing was replaced")
    try:  # the byte past the end, and the last one: a regular file of this size has none and one
        past_end = os.pread(fd, 1, st.st_size)
        last = os.pread(fd, 1, st.st_size - 1) if st.st_size else b"-"
    except OSError as exc:
        raise_if_exhausted(exc, source)
        raise ReplaceError(f"{source}: cannot read the source: {exc.strerror or exc}; nothing was replaced") \
            from None
    if past_end or not last:
        raise ReplaceError(f"{source}: holds {'more' if past_end else 'fewer'} than the {st.st_size} bytes its size "
                           "says (a pseudo-file?); copy it to a regular file first; nothing was replaced")


def directory_flags(dfd: int) -> int:
    """The blocking flags (+i/+a) of an open directory (0 if the filesystem has no inode flags)."""
    flags = syscalls.get_flags(dfd)
    return (flags or 0) & BLOCKING_FLAGS


def check_mount_point(dfd: int, name: str, dest: str, dir_st: os.stat_result, st: os.stat_result) -> None:
    """Refuse a destination that is a mount point (a bind-mounted file): the rename would fail with EBUSY."""
    mounted: Optional[bool] = None
    info = syscalls.statx(dfd, name)
    if info is not None:
        mounted = info.is_mount_root()
        if mounted is None and info.mnt_id is not None:
            parent = syscalls.statx(dfd, ".")
            if parent is not None and parent.mnt_id is not None:
                mounted = parent.mnt_id != info.mnt_id
    if mounted is None:
        mounted = st.st_dev != dir_st.st_dev
    if mounted:
        raise ReplaceError(
            f"{dest}: is a mount point (a bind-mounted file); rename would fail with EBUSY — replace the "
            "file on the host side of the bind mount instead; nothing was replaced"
        )


def check_regular(dest: str, st: os.stat_result) -> None:
    """Only regular files are replaced (a directory, device or FIFO at the destination is an error)."""
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ReplaceError(f"{dest}: is {kind}; nothing was replaced")


def blocking_refusal(dest: str, flags: int) -> Refused:
    """The refusal for an immutable/append-only file or directory."""
    return Refused(f"{dest}: is {flag_names(flags)}; use --force-immutable to clear the flag, replace the file "
                   "and set the flag again")


def hard_link_warning(st: os.stat_result) -> Optional[str]:
    """The warning for a file with other hard links (they keep the old version)."""
    if st.st_nlink > 1:
        others = st.st_nlink - 1
        return (f"has {others} other hard link{'s' if others > 1 else ''}; "
                f"{'they keep' if others > 1 else 'it keeps'} the old version")
    return None


def describe_oserror(path: str, exc: OSError, action: str) -> str:
    """One line for an OSError met while doing ``action`` on ``path``, with a hint for the usual causes."""
    hint = {
        errno.EROFS: "read-only filesystem",
        errno.EBUSY: "it is a mount point (bind-mounted file)",
        errno.ENOSPC: "no space left on the filesystem",
        errno.EDQUOT: "disk quota exceeded",
        errno.EPERM: "operation not permitted (immutable or append-only file or directory, or a sticky directory)",
        errno.EACCES: "permission denied",
        errno.EXDEV: "cross-device rename (internal error: temporary files are created next to the destination)",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return f"{path}: {action} failed: {hint}"


def collect_hint(problems: List[str]) -> str:
    """Join several refusal messages into one line."""
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} files refused: " + "; ".join(problems)
