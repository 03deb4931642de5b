"""The file-backed mappings of a process through the ``PROCMAP_QUERY`` ioctl (Linux >= 6.11), without text.

``ioctl(fd_of_/proc/PID/maps, PROCMAP_QUERY, &q)`` returns one VMA per call: its range, permissions, offset,
the mapped inode and device (``i_sb->s_dev``, as maps prints it) and, into a buffer we pass, its path as
``d_path`` renders it (the same name maps shows, ``" (deleted)"`` included, but never escaped: a newline is a
newline). With ``PROCMAP_QUERY_FILE_BACKED_VMA | PROCMAP_QUERY_VMA_EXECUTABLE`` the kernel skips every
anonymous and non-executable mapping itself, so the stale scan's filter touches the ~7 code mappings of a
process instead of formatting and splitting its ~40 maps lines: about half the time of reading the maps text
(bench/RESULTS-stale.md). Older kernels answer ``ENOTTY``/``EINVAL`` and the caller reads the text instead.

The name buffer is an ``array.array`` whose address (``buffer_info()``) goes into the query: no ``ctypes``.
"""

from __future__ import annotations

import array
import errno
import os
import struct
from typing import List, Optional, Tuple

from soswap.errors import AccessDenied, ProcessGone
from soswap.proc import procfs

#: _IOWR('f', 17, struct procmap_query) — include/uapi/linux/fs.h (Linux 6.11).
PROCMAP_QUERY = 0xC0686611

# struct procmap_query: size, query_flags, query_addr, vma_start, vma_end, vma_flags, vma_page_size, vma_offset,
# inode (u64 each), dev_major, dev_minor, vma_name_size, build_id_size (u32 each), vma_name_addr, build_id_addr.
_QUERY = struct.Struct("=QQQQQQQQQIIIIQQ")
_ADDR_AT = 16  # offset of query_addr
_NAME_SIZE_AT = 80  # offset of vma_name_size (in/out)

VMA_READABLE = 0x01
VMA_WRITABLE = 0x02
VMA_EXECUTABLE = 0x04
VMA_SHARED = 0x08
COVERING_OR_NEXT_VMA = 0x10
FILE_BACKED_VMA = 0x20

_NAME_BUF = 4096  # PATH_MAX: the kernel caps the name there (longer: ENAMETOOLONG, then the text is read)

#: (start, end, dev in st_dev encoding, inode, path as d_path printed it, " (deleted)" included)
Vma = Tuple[int, int, int, int, bytes]


class VmaQuery:
    """A reusable query (one struct buffer and one name buffer); ``supported`` turns False on old kernels."""

    def __init__(self) -> None:
        self._name = array.array("B", bytes(_NAME_BUF))
        self._template = bytes(_QUERY.pack(_QUERY.size, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, _NAME_BUF, 0,
                                           self._name.buffer_info()[0], 0))
        self.supported = True
        import fcntl

        self._ioctl = fcntl.ioctl

    def file_vmas(self, pid: int, executable_only: bool = True) -> Optional[List[Vma]]:
        """The file-backed (executable, by default) mappings of ``pid`` in address order, or None when this
        kernel or this process cannot answer (the caller reads ``/proc/PID/maps`` instead).

        Raises ProcessGone (exited, zombie, kernel thread: no address space) and AccessDenied."""
        if not self.supported:
            return None
        fd = procfs.open_entry(pid, "maps")
        try:
            return self._walk(pid, fd, FILE_BACKED_VMA | COVERING_OR_NEXT_VMA |
                              (VMA_EXECUTABLE if executable_only else 0))
        finally:
            os.close(fd)

    def _walk(self, pid: int, fd: int, flags: int) -> Optional[List[Vma]]:
        buf = bytearray(self._template)
        struct.pack_into("=Q", buf, 8, flags)
        name = self._name
        ioctl = self._ioctl
        unpack = _QUERY.unpack_from
        out: List[Vma] = []
        addr = 0
        while True:
            struct.pack_into("=Q", buf, _ADDR_AT, addr)
            struct.pack_into("=I", buf, _NAME_SIZE_AT, _NAME_BUF)
            try:
                ioctl(fd, PROCMAP_QUERY, buf, True)
            except OSError as exc:
                code = exc.errno
                if code == errno.ENOENT:  # no mapping at or after addr: done
                    return out
                if code in (errno.ESRCH,):
                    raise ProcessGone(pid, "maps") from None
                if code in (errno.EACCES, errno.EPERM):
                    raise AccessDenied(pid, "maps") from None
                if code in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    self.supported = False  # kernel < 6.11 (or another struct layout): text from now on
                return None  # ENAMETOOLONG and anything unexpected: this process through the text
            fields = unpack(buf)
            start, end, major, minor, name_size = fields[3], fields[4], fields[9], fields[10], fields[11]
            path = name[: name_size - 1].tobytes() if name_size else b""
            out.append((start, end, os.makedev(major, minor), fields[8], path))
            if end <= addr:  # pragma: no cover - the kernel always moves forward; never loop
                return None
            addr = end
