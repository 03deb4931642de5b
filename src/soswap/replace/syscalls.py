"""Linux system calls the standard library does not wrap: renameat2, statx attributes, fstatfs f_type,
inode flags (FS_IOC_GETFLAGS/SETFLAGS) and FICLONE.

Each wrapper raises ``OSError`` with the real errno, like the ``os`` functions, and degrades to ``None`` /
``ENOSYS`` where the C library lacks the call, so callers can fall back.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from typing import Optional

#: renameat2 flags (include/uapi/linux/fs.h).
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

#: statx(2) masks and attributes.
AT_STATX_SYNC_AS_STAT = 0
STATX_BASIC_STATS = 0x7FF
STATX_MNT_ID = 0x1000
STATX_ATTR_IMMUTABLE = 0x10
STATX_ATTR_APPEND = 0x20
STATX_ATTR_MOUNT_ROOT = 0x2000

#: Inode flags (ioctl_iflags(2)).
FS_SECRM_FL = 0x00000001
FS_UNRM_FL = 0x00000002
FS_COMPR_FL = 0x00000004
FS_SYNC_FL = 0x00000008
FS_IMMUTABLE_FL = 0x00000010
FS_APPEND_FL = 0x00000020
FS_NODUMP_FL = 0x00000040
FS_NOATIME_FL = 0x00000080
FS_NOCOW_FL = 0x00800000
FS_NOCOMP_FL = 0x00000400

#: ioctl numbers for x86_64/aarch64/most 64-bit ABIs (_IOR('f', 1, long) / _IOW('f', 2, long)); the kernel
#: also accepts the 32-bit (int-sized) encodings for compat, which we use since the flags fit in 32 bits.
FS_IOC_GETFLAGS = 0x80086601 if struct.calcsize("l") == 8 else 0x80046601
FS_IOC_SETFLAGS = 0x40086602 if struct.calcsize("l") == 8 else 0x40046602
#: _IOW(0x94, 9, int)
FICLONE = 0x40049409

#: statfs f_type values (include/uapi/linux/magic.h).
NFS_SUPER_MAGIC = 0x6969
SMB_SUPER_MAGIC = 0x517B
CIFS_SUPER_MAGIC = 0xFF534D42
SMB2_SUPER_MAGIC = 0xFE534D42
TMPFS_MAGIC = 0x01021994
BTRFS_SUPER_MAGIC = 0x9123683E
EXT4_SUPER_MAGIC = 0xEF53
XFS_SUPER_MAGIC = 0x58465342
OVERLAYFS_SUPER_MAGIC = 0x794C7630

FS_NAMES = {
    NFS_SUPER_MAGIC: "nfs",
    SMB_SUPER_MAGIC: "smb",
    CIFS_SUPER_MAGIC: "cifs",
    SMB2_SUPER_MAGIC: "smb2",
    TMPFS_MAGIC: "tmpfs",
    BTRFS_SUPER_MAGIC: "btrfs",
    EXT4_SUPER_MAGIC: "ext2/3/4",
    XFS_SUPER_MAGIC: "xfs",
    OVERLAYFS_SUPER_MAGIC: "overlay",
}

#: Network filesystems on which a rename is not safe for other clients (fs/nfs/unlink.c nfs_sillyrename).
NETWORK_FS = frozenset({NFS_SUPER_MAGIC, SMB_SUPER_MAGIC, CIFS_SUPER_MAGIC, SMB2_SUPER_MAGIC})

_libc: Optional[ctypes.CDLL] = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # The C library this interpreter already runs on; nothing from an inspected file is loaded.
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _raise(name: Optional[str] = None) -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err), name)


def renameat2(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str, flags: int) -> None:
    """renameat2(2). Raises ``OSError(ENOSYS)`` when the C library has no renameat2 (glibc < 2.28)."""
    try:
        fn = _c().renameat2
    except AttributeError:
        raise OSError(errno.ENOSYS, "renameat2 not available", src) from None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), flags) != 0:
        _raise(dst)


class StatxInfo:
    """The statx fields soswap needs: the attribute bits (with the mask of supported ones) and the mount id."""

    __slots__ = ("attributes", "attributes_mask", "mnt_id")

    def __init__(self, attributes: int, attributes_mask: int, mnt_id: Optional[int]) -> None:
        self.attributes = attributes
        self.attributes_mask = attributes_mask
        self.mnt_id = mnt_id

    def is_mount_root(self) -> Optional[bool]:
        """True/False when the kernel reports STATX_ATTR_MOUNT_ROOT (Linux ≥ 5.8), else None."""
        if self.attributes_mask & STATX_ATTR_MOUNT_ROOT:
            return bool(self.attributes & STATX_ATTR_MOUNT_ROOT)
        return None


def statx(dir_fd: int, name: str, follow: bool = False) -> Optional[StatxInfo]:
    """statx(2) of ``name`` relative to ``dir_fd``; None when the C library or kernel lacks statx."""
    try:
        fn = _c().statx
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(256)
    flags = AT_STATX_SYNC_AS_STAT | (0 if follow else 0x100)  # AT_SYMLINK_NOFOLLOW
    if fn(dir_fd, os.fsencode(name), flags, STATX_BASIC_STATS | STATX_MNT_ID, buf) != 0:
        if ctypes.get_errno() == errno.ENOSYS:
            return None
        _raise(name)
    raw = buf.raw
    mask = struct.unpack_from("=I", raw, 0)[0]
    attributes = struct.unpack_from("=Q", raw, 8)[0]
    attributes_mask = struct.unpack_from("=Q", raw, 56)[0]
    mnt_id = struct.unpack_from("=Q", raw, 144)[0] if mask & STATX_MNT_ID else None
    return StatxInfo(attributes, attributes_mask, mnt_id)


def fs_type(fd: int) -> Optional[int]:
    """The filesystem magic number (statfs f_type) of the filesystem holding ``fd``; None if unknown."""
    try:
        fn = _c().fstatfs
    except AttributeError:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(256)
    if fn(fd, buf) != 0:
        return None
    # struct statfs starts with __fsword_t f_type (a C long on every Linux ABI but x32/s390x, where it is
    # also word-sized).
    value = ctypes.c_long.from_buffer_copy(buf.raw[: ctypes.sizeof(ctypes.c_long)]).value
    return value & 0xFFFFFFFF


def get_flags(fd: int) -> Optional[int]:
    """The inode flags of ``fd`` (lsattr), or None when the filesystem has none (ENOTTY/EOPNOTSUPP)."""
    buf = bytearray(struct.calcsize("l"))
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return None
        raise
    return struct.unpack("l", bytes(buf))[0] & 0xFFFFFFFF


def set_flags(fd: int, flags: int) -> None:
    """Set the inode flags of ``fd`` (chattr); needs CAP_LINUX_IMMUTABLE for +i/+a."""
    buf = bytearray(struct.pack("l", flags))
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, buf, False)


def ficlone(dst_fd: int, src_fd: int) -> None:
    """ioctl(FICLONE): share the source's extents (reflink); OSError when unsupported or across filesystems."""
    fcntl.ioctl(dst_fd, FICLONE, src_fd)
