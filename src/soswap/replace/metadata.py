"""Snapshot the metadata of the file being replaced and apply it to the new file, in the order the kernel
requires.

Order (security/commoncap.c ``cap_inode_killpriv``, fs/attr.c ``setattr_should_drop_suidgid``): a data write
and ``chown`` both clear ``security.capability``; ``chown`` clears setuid/setgid; setting
``system.posix_acl_access`` rewrites the group/mask bits (``posix_acl_update_mode``). Hence: data → fchown →
fchmod → ACL → other xattrs → ``security.capability`` → futimens, all on the file descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import List, Optional, Tuple

from soswap.errors import ReplaceError
from soswap.replace import syscalls
from soswap.tuples import NamedTuple

ACL_ACCESS = "system.posix_acl_access"
ACL_DEFAULT = "system.posix_acl_default"
CAPABILITY = "security.capability"
#: Hashes/HMACs of the *old* content: copying them would make IMA/EVM appraisal fail on the new file.
NEVER_COPY = frozenset({"security.ima", "security.evm"})

#: Inode flags carried over to the new file (the others are per-inode state or handled separately).
COPIED_FLAGS = (syscalls.FS_NOATIME_FL | syscalls.FS_NODUMP_FL | syscalls.FS_SYNC_FL | syscalls.FS_COMPR_FL
                | syscalls.FS_NOCOMP_FL)
#: Flags that block a rename over the file (``chattr +i``/``+a``); re-set after the rename.
BLOCKING_FLAGS = syscalls.FS_IMMUTABLE_FL | syscalls.FS_APPEND_FL


class Metadata(NamedTuple):
    """What the new file gets. ``uid``/``gid`` None: leave the caller's. ``xattrs`` excludes the ACL, the
    capability and :data:`NEVER_COPY`. ``flags`` are the old file's inode flags (None if unsupported)."""

    uid: Optional[int]
    gid: Optional[int]
    mode: int
    acl: Optional[bytes] = None
    xattrs: Tuple[Tuple[str, bytes], ...] = ()
    capability: Optional[bytes] = None
    flags: Optional[int] = None
    skipped: Tuple[str, ...] = ()
    #: The ACL is the replaced file's, also when it has none: an access ACL the new file inherited from its
    #: directory's default ACL is removed (a file created in place of nothing keeps what it inherits).
    exact_acl: bool = False


def read_xattrs(fd: int) -> List[Tuple[str, bytes]]:
    """All extended attributes of ``fd`` as (name, value), in the kernel's listing order."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.ENOSYS):
            return []
        raise
    out = []
    for name in names:
        try:
            out.append((name, os.getxattr(fd, name)))
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed meanwhile
                continue
            raise
    return out


def snapshot(fd: int, st: os.stat_result) -> Metadata:
    """The metadata of the open file ``fd`` (the file about to be replaced)."""
    acl = cap = None
    others = []
    skipped = []
    for name, value in read_xattrs(fd):
        if name == ACL_ACCESS:
            acl = value
        elif name == CAPABILITY:
            cap = value
        elif name in NEVER_COPY:
            skipped.append(name)
        elif name == ACL_DEFAULT:
            continue  # only meaningful on directories
        else:
            others.append((name, value))
    return Metadata(
        uid=st.st_uid,
        gid=st.st_gid,
        mode=stat.S_IMODE(st.st_mode),
        acl=acl,
        xattrs=tuple(others),
        capability=cap,
        flags=syscalls.get_flags(fd),
        skipped=tuple(skipped),
        exact_acl=True,
    )


def _fail(dest: str, what: str, exc: OSError) -> ReplaceError:
    return ReplaceError(f"{dest}: cannot set {what} on the new file: {exc.strerror or exc}; nothing was replaced")


def apply(fd: int, md: Metadata, dest: str, mode_given: bool, times_ns: Optional[Tuple[int, int]]) -> None:
    """Apply ``md`` to the new file ``fd`` in the kernel's order; a failure names the attribute and raises
    :class:`ReplaceError` (capabilities are never dropped silently). ``mode_given``: the mode came from
    ``-m`` and wins over the group bits an ACL would set."""
    st = os.fstat(fd)
    if (md.uid is not None and md.uid != st.st_uid) or (md.gid is not None and md.gid != st.st_gid):
        try:
            os.fchown(fd, -1 if md.uid is None else md.uid, -1 if md.gid is None else md.gid)
        except OSError as exc:
            who = ":".join(str(v) for v in (md.uid, md.gid) if v is not None) if md.uid is not None else f":{md.gid}"
            raise _fail(dest, f"owner {who}", exc) from None
    if md.acl is None and md.exact_acl:
        try:  # inherited from the directory's default ACL (posix_acl_create): the old file had none
            os.removexattr(fd, ACL_ACCESS)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                raise _fail(dest, f"the inherited ACL ({ACL_ACCESS})", exc) from None
    try:
        os.fchmod(fd, md.mode)
    except OSError as exc:
        raise _fail(dest, f"mode {md.mode:04o}", exc) from None
    if md.acl is not None:
        try:
            os.setxattr(fd, ACL_ACCESS, md.acl)
        except OSError as exc:
            raise _fail(dest, f"the ACL ({ACL_ACCESS})", exc) from None
    for name, value in md.xattrs:
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            raise _fail(dest, f"the extended attribute {name}", exc) from None
    # The ACL sets the group bits from its mask; without the setgid privilege it may also drop S_ISGID.
    if stat.S_IMODE(os.fstat(fd).st_mode) != md.mode and (mode_given or md.acl is None or _lost_special(fd, md)):
        try:
            os.fchmod(fd, md.mode)
        except OSError as exc:
            raise _fail(dest, f"mode {md.mode:04o}", exc) from None
    if md.capability is not None:
        try:
            os.setxattr(fd, CAPABILITY, md.capability)
        except OSError as exc:
            raise _fail(dest, f"file capabilities ({CAPABILITY})", exc) from None
    if md.flags:
        wanted = md.flags & COPIED_FLAGS
        if wanted:
            current = syscalls.get_flags(fd)
            if current is not None and current | wanted != current:
                try:
                    syscalls.set_flags(fd, current | wanted)
                except OSError as exc:
                    raise _fail(dest, f"inode flags {wanted:#x}", exc) from None
    if times_ns is not None:
        try:
            os.utime(fd, ns=times_ns)
        except OSError as exc:
            raise _fail(dest, "timestamps", exc) from None


def _lost_special(fd: int, md: Metadata) -> bool:
    special = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
    return (stat.S_IMODE(os.fstat(fd).st_mode) & special) != (md.mode & special)


# -- the privileges of a replaced file's backup --------------------------------------------------------------

#: Permission bits a backup of a privileged file keeps (dpkg's secure_unlink_statted: chmod 0600).
STRIPPED_MODE = 0o600

Privileges = Tuple[int, Optional[str]]


def privileges_of(path: str, st: os.stat_result) -> Optional[Privileges]:
    """(permission bits, ``security.capability`` as hex or None) of the regular file ``path`` (``st``: its
    lstat) when it is set-user-ID, set-group-ID or has file capabilities; else None."""
    if not stat.S_ISREG(st.st_mode):
        return None
    try:
        cap: Optional[bytes] = os.getxattr(path, CAPABILITY, follow_symlinks=False)
    except OSError:  # ENODATA (none), ENOTSUP (no xattrs here), EACCES
        cap = None
    mode = stat.S_IMODE(st.st_mode)
    if not mode & (stat.S_ISUID | stat.S_ISGID) and cap is None:
        return None
    return mode, cap.hex() if cap is not None else None


def _open_same(dfd: int, name: str, dev: int, ino: int) -> Optional[int]:
    """``name`` in ``dfd`` opened (never following a link, never blocking) when it is the inode (dev, ino)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dfd)
    except OSError:
        return None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (dev, ino) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd


def strip_privileges(dfd: int, name: str, dev: int, ino: int) -> None:
    """Drop the set-ID bits, the execute bits and the file capabilities of ``name`` (a backup: the old inode
    ``dev``/``ino``); idempotent. Running processes keep what exec gave them."""
    fd = _open_same(dfd, name, dev, ino)
    if fd is None:
        return
    try:
        try:
            os.removexattr(fd, CAPABILITY)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        os.fchmod(fd, STRIPPED_MODE)
    finally:
        os.close(fd)
