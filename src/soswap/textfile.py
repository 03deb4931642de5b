"""Writing a small text file atomically: a temporary file in the same directory, fsync, rename over the
target, fsync of the directory. Readers see the old file or the new one, never a part (the Prometheus
textfile collector, apt's and dpkg's configuration directories). Every layer may use it."""

from __future__ import annotations

import errno
import os
import stat
from typing import Union


def write_atomic(path: str, text: Union[str, bytes], mode: int = 0o644) -> None:
    """Write ``text`` (bytes, or str as UTF-8 with undecodable file-name bytes kept) to ``path`` atomically,
    with ``mode`` whatever the umask. A symbolic link is followed (the link stays; its target is written).
    Only a regular file is ever replaced: a device node, a FIFO, a socket or a directory at ``path`` raises
    OSError (``--prometheus /dev/null`` must not turn /dev/null into a file). Raises OSError; the temporary file
    is removed on any failure."""
    if os.path.islink(path):
        path = os.path.realpath(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EEXIST, "exists and is not a regular file; left as it is", path)
    directory = os.path.dirname(os.path.abspath(path)) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    except OSError as exc:  # the error names the file asked for, not the temporary file beside it
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        try:
            data = memoryview(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape"))
            while data:
                data = data[os.write(fd, data):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename in (tmp, None):
            raise OSError(exc.errno, exc.strerror, path) from None
        raise
    try:  # the rename itself is durable once the directory is
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_regular(path: str, limit: int = 64 << 20, *, pipes: bool = False) -> bytes:
    """Up to ``limit`` bytes of the regular file at ``path`` (a symbolic link is followed). Opening never
    blocks: a FIFO (which would wait for a writer for ever), a device or a socket raises OSError
    (``EINVAL``, "not a regular file"), as does anything the open raises. ``pipes``: a pipe or FIFO is read to
    its end instead (``--manifest /dev/stdin``, ``<(command)``); a FIFO that no process has open for writing
    reads as empty (fifo(7): the non-blocking open does not wait for a writer, and read then sees end of file)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if pipes and stat.S_ISFIFO(st.st_mode):
            os.set_blocking(fd, True)  # a writer that is still writing is waited for, as cat(1) does
        elif not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return read_fd(fd, limit)
    finally:
        os.close(fd)


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from the open file ``fd``, read in chunks of 4 MiB."""
    chunks = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 4 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
