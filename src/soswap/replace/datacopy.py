"""Copy file data into the staged file, and hash file contents for the journal.

Copy methods, best first: ``FICLONE`` (reflink: shares extents, btrfs/XFS), ``copy_file_range`` (in-kernel copy,
server-side on NFS), then ``read``/``write``. A method the filesystem does not support falls through to the next;
a real I/O error (EIO, ENOSPC, EDQUOT) aborts. Only the data of a sparse source is copied: its holes stay holes
(``copy_file_range`` fills them on ext4 and tmpfs).
"""

from __future__ import annotations

import errno
import os
from typing import Any, List, Optional, Tuple

from soswap.replace import syscalls

#: errnos meaning "this method is not available here", not "the copy failed".
_UNSUPPORTED = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EBADF,
                          errno.EPERM, errno.ETXTBSY})
_CHUNK = 1 << 20
_CFR_CHUNK = 1 << 30
#: Files smaller than this are hashed inline; bigger ones on a thread, overlapping the copy and the fsync.
_THREAD_MIN = 4 << 20


def copy_data(src_fd: int, dst_fd: int, size: int) -> str:
    """Copy ``size`` bytes from the start of ``src_fd`` into the empty ``dst_fd``; return the method used
    (``reflink``, ``copy_file_range``, ``read/write``). Raises OSError on an I/O error or a short copy."""
    if size == 0:
        return "empty"
    try:
        syscalls.ficlone(dst_fd, src_fd)
        return "reflink"
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
    method = "copy_file_range"
    for start, end in data_segments(src_fd, size):
        pos = start
        if method == "copy_file_range":
            try:
                while pos < end:
                    n = os.copy_file_range(src_fd, dst_fd, min(end - pos, _CFR_CHUNK), pos, pos)
                    if n == 0:
                        break
                    pos += n
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
        if pos < end:
            method = "read/write"
            pos = _read_write(src_fd, dst_fd, pos, end)
        if pos != end:
            raise OSError(errno.EIO, f"short copy ({pos} of {size} bytes): the source changed while being copied")
    os.ftruncate(dst_fd, size)  # the holes after the last data (and the whole file if it is all hole)
    return method


def data_segments(fd: int, size: int) -> List[Tuple[int, int]]:
    """The ``[start, end)`` ranges of ``fd`` below ``size`` that hold data (``SEEK_DATA``/``SEEK_HOLE``): holes of a
    sparse source stay holes in the copy. The whole file where the filesystem cannot tell."""
    out: List[Tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # nothing but a hole from pos to the end
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    except OSError:
        return [(0, size)]
    return out


def _read_write(src_fd: int, dst_fd: int, offset: int, size: int) -> int:
    buf = bytearray(min(_CHUNK, max(size - offset, 1)))
    view = memoryview(buf)
    while offset < size:
        n = os.preadv(src_fd, [view[: min(len(buf), size - offset)]], offset)
        if n == 0:
            break
        written = 0
        while written < n:
            w = os.pwrite(dst_fd, view[written:n], offset + written)
            if w == 0:
                raise OSError(errno.EIO, "write returned 0")
            written += w
        offset += n
    return offset


def sha256_fd(fd: int, size: int) -> str:
    """SHA-256 of the first ``size`` bytes of ``fd`` (read with pread: the file offset is not used)."""
    import hashlib  # only with --hash (its import costs ~8 ms of every start)

    h = hashlib.sha256()
    buf = bytearray(min(_CHUNK, max(size, 1)))
    view = memoryview(buf)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [view[: min(len(buf), size - offset)]], offset)
        if n == 0:
            break
        h.update(view[:n])
        offset += n
    return h.hexdigest()


class HashJob:
    """Hash an open file, on a thread for big files (hashlib and pread release the GIL, so the hash overlaps
    the copy and the fsync). ``result()`` gives the hex digest, or None if reading failed."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = os.dup(fd)
        self._size = size
        self._digest: Optional[str] = None
        self._thread: Optional[Any] = None  # threading.Thread, imported only when used
        if size >= _THREAD_MIN:
            import threading

            self._thread = threading.Thread(target=self._run, name="soswap-hash", daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        try:
            self._digest = sha256_fd(self._fd, self._size)
        except OSError:
            self._digest = None
        finally:
            os.close(self._fd)

    def result(self) -> Optional[str]:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self._digest
