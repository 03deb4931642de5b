"""Checks made before anything is written: the conditions under which the final rename would fail or do harm.

* a read-only mount (``EROFS`` from ``rename``),
* a bind-mounted file, i.e. the destination is a mount point (``EBUSY`` from ``rename``: fs/namei.c
  ``vfs_rename`` → ``is_local_mountpoint``),
* ``chattr +i``/``+a`` on the file or its directory (``EPERM`` even for root: fs/namei.c ``may_delete``),
* a network filesystem, where other clients mapping the file get ESTALE/SIGBUS (fs/nfs/unlink.c).
"""

from __future__ import annotations

import errno
import os
import stat
from typing import List, Optional

from soswap.errors import Refused, ReplaceError
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
