"""Is the old version a process still maps the same content as the file now at its path? (``--ignore-identical``)

A package reinstalled with the same bytes (``apt install --reinstall``, a configuration-management run that
rewrites every file, a rebuilt container layer) gives every process a "deleted" library although nothing it
runs changed. With ``--ignore-identical`` such a file is not reported when the two versions are identical:

1. **Install journal** (``JournalView``): when soswap recorded the SHA-256 of the old inode
   (``replaced_records``) and of the installed one (``installed``), and both still have the recorded size and
   mtime, the digests are compared without reading anything.
2. **GNU build-id** of both, read with :mod:`soswap.elf` (program headers and PT_NOTE only): the old version
   through ``/proc/PID/map_files/<range>`` (opening it gives the *mapped* inode's bytes, deleted or not; it
   needs CAP_SYS_ADMIN) or the interpreter's open fd for a script, the new one at the path in the process's
   root. Same build-id and the same loadable segments → identical; another build-id → different. The
   build-id is the linker's hash of what it linked: a file edited afterwards without updating it (``patchelf``
   rewriting a string in place) would count as identical; an edit that adds or moves segments does not.
3. **SHA-256** of both when either has no build-id (scripts, data, ELF files linked without ``--build-id``),
   using a journal digest where one is known. Different sizes are different without reading. Files larger
   than the limit (``--identical-max-size``, default 64 MiB) are not hashed, and the report says so.

Nothing is executed: both files are opened ``O_RDONLY|O_NONBLOCK`` (a FIFO or device at the path is refused,
never read) and only read. Files on network filesystems are not compared (a read could hang).
Results are cached per (old inode, new inode, size, mtime): 2,000 processes mapping one reinstalled library
cost one comparison.
"""

from __future__ import annotations

import os
import stat as stat_mod
from typing import Callable, Dict, Optional, Tuple

from soswap.elf import constants as C
from soswap.elf.file import ElfFile
from soswap.elf.source import Source
from soswap.errors import ElfError
from soswap.proc.model import JournalView
from soswap.tuples import NamedTuple

#: Default bound of the SHA-256 comparison, in bytes.
DEFAULT_MAX_BYTES = 64 << 20

_OPEN = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
_CHUNK = 1 << 20


class Verdict(NamedTuple):
    """``same``: True identical, False different, None not compared; ``how``: the evidence, or why not."""

    same: Optional[bool]
    how: str


class _Opened(NamedTuple):
    fd: int
    st: os.stat_result


def _open_regular(path: bytes) -> Optional[_Opened]:
    try:
        fd = os.open(path, _OPEN)
    except (OSError, ValueError):
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat_mod.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return _Opened(fd, st)


def _sha256(fd: int, size: int) -> Optional[str]:
    import hashlib

    h = hashlib.sha256()
    offset = 0
    try:
        while offset < size:
            chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
            if not chunk:
                return None  # shrank while read: no verdict
            h.update(chunk)
            offset += len(chunk)
    except OSError:
        return None
    return h.hexdigest()


class _FdSource(Source):
    """An ELF reader source over a descriptor we opened (the /proc magic link must not be opened twice)."""

    def __init__(self, fd: int, size: int, name: str) -> None:
        self._fd = fd
        self.name = name
        self.size = size
        self.identity = None

    def _read(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd, length, offset)
        except OSError as exc:
            raise ElfError(self.name, f"read error: {exc.strerror}", offset) from None
        if len(data) != length:
            raise ElfError(self.name, "the file shrank while it was being read", offset)
        return data


def _elf_facts(opened: _Opened, name: str) -> Optional[Tuple[str, tuple]]:
    """(build-id, loadable segments) of an opened ELF file, or None (not ELF, malformed, no build-id)."""
    try:
        elf = ElfFile(_FdSource(opened.fd, opened.st.st_size, name))
        build_id = elf.build_id
    except ElfError:
        return None
    if not build_id:
        return None
    loads = tuple((s.flags, s.offset, s.vaddr, s.filesz, s.memsz, s.align)
                  for s in elf.segments if s.type == C.PT_LOAD)
    return build_id, loads


class ContentComparer:
    """Compares old mapped inodes with the files now at their paths (see the module doc)."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, journal: Optional[JournalView] = None,
                 skip_device: Callable[[int], bool] = lambda dev: False) -> None:
        self.max_bytes = max_bytes
        self.journal = journal
        self.skip_device = skip_device
        self._cache: Dict[tuple, Verdict] = {}

    def compare(self, old_path: str, old_dev: int, old_inode: int, new_path: bytes) -> Verdict:
        """Compare the inode (old_dev, old_inode), opened through ``old_path`` (a /proc magic link), with the
        file at ``new_path`` (already prefixed with the process's root)."""
        if self.skip_device(old_dev):
            return Verdict(None, "not compared: on a network filesystem")
        new = _open_regular(new_path)
        if new is None:
            return Verdict(None, "not compared: no regular file at the path")
        try:
            if self.skip_device(new.st.st_dev):
                return Verdict(None, "not compared: on a network filesystem")
            if (new.st.st_dev, new.st.st_ino) == (old_dev, old_inode):
                return Verdict(None, "not compared: the path holds the old version itself")
            key = (old_dev, old_inode, new.st.st_dev, new.st.st_ino, new.st.st_size, new.st.st_mtime_ns)
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            old = _open_regular(os.fsencode(old_path))
            if old is None:
                return Verdict(None, "not compared: the old version cannot be opened (map_files needs root)")
            try:
                if old.st.st_ino != old_inode or (os.major(old.st.st_dev) and os.major(old_dev)
                                                  and old.st.st_dev != old_dev):
                    return Verdict(None, "not compared: the mapping changed while it was read")
                verdict = self._compare(old, new, old_dev, old_inode, os.fsdecode(new_path))
            finally:
                os.close(old.fd)
            self._cache[key] = verdict
            return verdict
        finally:
            os.close(new.fd)

    def _journal_digests(self, old: _Opened, new: _Opened, old_dev: int, old_inode: int
                         ) -> Tuple[Optional[str], Optional[str]]:
        journal = self.journal
        if journal is None:
            return None, None
        rec = journal.replaced_records.get((old_dev, old_inode))
        old_digest = rec.sha256 if rec is not None and (rec.size, rec.mtime_ns) == (
            old.st.st_size, old.st.st_mtime_ns) else None
        rec = journal.installed.get((new.st.st_dev, new.st.st_ino))
        new_digest = rec.sha256 if rec is not None and (rec.size, rec.mtime_ns) == (
            new.st.st_size, new.st.st_mtime_ns) else None
        return old_digest, new_digest

    def _compare(self, old: _Opened, new: _Opened, old_dev: int, old_inode: int, new_name: str) -> Verdict:
        old_digest, new_digest = self._journal_digests(old, new, old_dev, old_inode)
        if old_digest and new_digest:
            same = old_digest == new_digest
            return Verdict(same, "the install journal's SHA-256 " + ("match" if same else "differ"))
        old_elf = _elf_facts(old, f"{new_name} (old version)")
        new_elf = _elf_facts(new, new_name) if old_elf is not None else None
        if old_elf is not None and new_elf is not None:
            if old_elf[0] != new_elf[0]:
                return Verdict(False, f"build-id {old_elf[0][:12]}… became {new_elf[0][:12]}…")
            if old_elf[1] != new_elf[1]:
                return Verdict(False, f"same build-id {old_elf[0][:12]}… but other loadable segments "
                                      "(edited after linking)")
            return Verdict(True, f"same build-id {old_elf[0]}")
        if old.st.st_size != new.st.st_size:
            return Verdict(False, f"size {old.st.st_size} became {new.st.st_size}")
        if old.st.st_size > self.max_bytes:
            return Verdict(None, f"not compared: {old.st.st_size} bytes is above the {self.max_bytes}-byte "
                                 "limit of --identical-max-size")
        old_digest = old_digest or _sha256(old.fd, old.st.st_size)
        new_digest = new_digest or _sha256(new.fd, new.st.st_size)
        if old_digest is None or new_digest is None:
            return Verdict(None, "not compared: read error")
        same = old_digest == new_digest
        return Verdict(same, "same SHA-256" if same else "SHA-256 differs")
