"""Writing a small text file atomically: a temporary file in the same directory, fsync, rename over the
target, fsync of the directory. Readers see the old file or the new one, never a part (the Prometheus
textfile collector, apt's and dpkg's configuration directories). Every layer may use it."""

from __future__ import annotations

import os
from typing import Union


def write_atomic(path: str, text: Union[str, bytes], mode: int = 0o644) -> None:
    """Write ``text`` (bytes, or str as UTF-8 with undecodable file-name bytes kept) to ``path`` atomically,
    with ``mode`` whatever the umask. Raises OSError; the temporary file is removed on any failure."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
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
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # the rename itself is durable once the directory is
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
