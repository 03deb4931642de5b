"""Bounds-checked byte access to an ELF file, by ``pread`` (never ``mmap``: a file truncated under us must
give an error, not SIGBUS) or from an in-memory buffer."""

from __future__ import annotations

import errno
import os
import stat
from typing import Callable, Optional, Tuple, Union

from soswap.errors import ElfError, raise_if_exhausted

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

#: (st_dev, st_ino, st_size, st_mtime_ns): the key under which a parsed file may be reused.
Identity = Tuple[int, int, int, int]


def identity_of(st: os.stat_result) -> Identity:
    """The cache identity of a stat result."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Source:
    """Random access to the bytes of one file; every read is checked against the file size."""

    name: str
    size: int
    identity: Optional[Identity] = None
    change_ns: Optional[int] = None

    def read(self, offset: int, length: int, what: str) -> bytes:
        """Return exactly ``length`` bytes at ``offset``, or raise :class:`ElfError` naming ``what``."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError(
                self.name,
                f"{what} ({length} bytes) lies outside the file ({self.size} bytes)",
                offset if offset >= 0 else None,
            )
        return self._read(offset, length)

    def _read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file descriptor, if any. Reads reopen the file and check that it did not change."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource(Source):
    """An ELF image held in memory (fuzzing, what-if substitutions, tests)."""

    def __init__(self, data: bytes, name: str = "<bytes>") -> None:
        self._data = bytes(data)
        self.name = name
        self.size = len(self._data)
        self.identity: Optional[Identity] = None
        self.change_ns: Optional[int] = None

    def _read(self, offset: int, length: int) -> bytes:
        return self._data[offset:offset + length]


#: The first this many bytes of a file are read in one piece and kept while it is open: the ELF header, the
#: program headers, the notes, the version tables and often the dynamic strings of a program lie there
#: (8 reads of 10 in a ``soswap tree`` run fall inside it).
HEAD = 1 << 14

_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0) | os.O_NONBLOCK


class FileSource(Source):
    """A regular file on disk. Opening never blocks (FIFOs and devices are refused, not read)."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fsdecode(os.fspath(path))
        self.name = self.path
        self._fd: Optional[int] = None
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            raise_if_exhausted(exc, self.path)
            if exc.errno == errno.ENXIO:  # a socket (or a device without a driver) cannot be opened at all
                raise ElfError(self.path, "not a regular file") from None
            raise ElfError(self.path, exc.strerror or str(exc)) from None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise ElfError(self.path, exc.strerror or str(exc)) from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ElfError(self.path, "not a regular file")
        self._fd = fd
        self.size = st.st_size
        self.identity: Optional[Identity] = identity_of(st)
        #: st_ctime_ns at open: every write or metadata change moves it, and no system call sets it
        self.change_ns: Optional[int] = st.st_ctime_ns
        #: called after a read reopened the file (an :class:`~soswap.elf.cache.ElfCache` counts it as open again)
        self.on_reopen: Optional[Callable[[], None]] = None
        #: the first :data:`HEAD` bytes, read at the first read that falls inside them; dropped by :meth:`close`
        self._head: Optional[bytes] = None

    def _ensure_open(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
            st = os.fstat(fd)
        except OSError as exc:
            raise_if_exhausted(exc, self.path)
            raise ElfError(self.path, f"cannot reopen: {exc.strerror or exc}") from None
        if identity_of(st) != self.identity:
            os.close(fd)
            raise ElfError(self.path, "the file changed while it was being read")
        self._fd = fd
        if self.on_reopen is not None:
            self.on_reopen()
        return fd

    def _read(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end <= HEAD:
            head = self._head
            if head is None:
                head = self._head = self._pread(0, min(self.size, HEAD))
            return head[offset:end]
        return self._pread(offset, length)

    def _pread(self, offset: int, length: int) -> bytes:
        fd = self._ensure_open()
        chunks = []
        got = 0
        while got < length:
            try:
                chunk = os.pread(fd, length - got, offset + got)
            except OSError as exc:
                raise ElfError(self.path, f"read error: {exc.strerror or exc}", offset + got) from None
            if not chunk:
                raise ElfError(self.path, "the file shrank while it was being read", offset + got)
            chunks.append(chunk)
            got += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def close(self) -> None:
        self._head = None
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


def elf_type(path: PathLike) -> Optional[int]:
    """``e_type`` of the regular file at ``path`` if it is ELF, else None (opened with O_NONBLOCK: a FIFO never
    blocks). ET_EXEC and ET_DYN are what ld.so loads; ET_REL (``.o``, kernel modules) and ET_CORE it never does."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.pread(fd, 18, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(head) < 18 or head[:4] != b"\x7fELF" or head[5] not in (1, 2):
        return None
    return int.from_bytes(head[16:18], "little" if head[5] == 1 else "big")


def is_elf_file(path: PathLike) -> bool:
    """An existing regular file with an ELF header (see :func:`elf_type`)."""
    return elf_type(path) is not None


def is_loadable_elf(path: PathLike) -> bool:
    """An ELF program or shared object (ET_EXEC, ET_DYN): what ld.so loads, so what has consumers to check."""
    return elf_type(path) in (2, 3)
