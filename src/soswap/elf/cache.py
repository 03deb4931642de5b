"""A cache of parsed ELF files keyed by (st_dev, st_ino, st_size, st_mtime_ns)."""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Callable, Dict, Optional, Union

from soswap.elf.file import ElfFile
from soswap.elf.source import Identity, identity_of
from soswap.errors import ElfError

#: Parsed files whose descriptor stays open (their lazy parts decode without reopening); the least recently
#: opened ones are closed and reopen on demand (with an identity check), counted again when they do. Keeps a
#: cache well under the usual 1024-descriptor limit however many files it holds.
OPEN_FILES = 128


class ElfCache:
    """Parse each file once per identity; a file rewritten in place (new size or mtime) is parsed again.

    Errors are cached too, so a malformed file is reported the same way every time it is met.
    """

    def __init__(self, open_files: Optional[int] = None) -> None:
        self._by_identity: Dict[Identity, Union[ElfFile, ElfError]] = {}
        self._open: OrderedDict[Identity, ElfFile] = OrderedDict()
        self._open_limit = open_files if open_files is not None else _default_open_files()

    def __len__(self) -> int:
        return len(self._by_identity)

    def get(self, path: str, st: Optional[os.stat_result] = None) -> ElfFile:
        """The parsed file at ``path`` (``st`` is its stat result if the caller has one)."""
        if st is None:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise ElfError(path, exc.strerror or str(exc)) from None
        ident = identity_of(st)
        hit = self._by_identity.get(ident)
        if hit is None:
            try:
                hit = ElfFile.open(path)
            except ElfError as exc:
                hit = exc
            else:
                self._keep_open(ident, hit)
                hit.on_reopen(_reopen_hook(self, ident, hit))
            self._by_identity[ident] = hit
        if isinstance(hit, ElfError):
            raise hit
        return hit

    def _keep_open(self, ident: Identity, elf: ElfFile) -> None:
        self._open[ident] = elf
        self._open.move_to_end(ident)
        while len(self._open) > self._open_limit:
            _old, oldest = self._open.popitem(last=False)
            oldest.close()

    def close(self) -> None:
        """Close every descriptor still open (the parsed data stays usable; files reopen on demand)."""
        while self._open:
            self._open.popitem()[1].close()


def _reopen_hook(cache: ElfCache, ident: Identity, elf: ElfFile) -> Callable[[], None]:
    """What ``elf``'s source calls when it reopens the file: counted as open again. It holds the cache and the
    file weakly: the source belongs to the file, and a strong reference would make a cycle that keeps every
    parsed file of a dropped cache for the cyclic collector."""
    cache_ref = weakref.ref(cache)
    elf_ref = weakref.ref(elf)

    def reopened() -> None:
        owner, parsed = cache_ref(), elf_ref()
        if owner is not None and parsed is not None:
            owner._keep_open(ident, parsed)

    return reopened


def _default_open_files() -> int:
    """:data:`OPEN_FILES`, or a quarter of the descriptors a lower limit (``ulimit -n``) leaves free, at least
    8."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return OPEN_FILES
    if soft == resource.RLIM_INFINITY:
        return OPEN_FILES
    from soswap.limits import descriptors_in_use

    return max(8, min(OPEN_FILES, (soft - descriptors_in_use()) // 4))
