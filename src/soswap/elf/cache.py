"""A cache of parsed ELF files keyed by (st_dev, st_ino, st_size, st_mtime_ns)."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple, Union

from soswap.elf.file import ElfFile
from soswap.elf.source import Identity, identity_of
from soswap.errors import ElfError


class ElfCache:
    """Parse each file once per identity; a file rewritten in place (new size or mtime) is parsed again.

    Errors are cached too, so a malformed file is reported the same way every time it is met.
    """

    def __init__(self) -> None:
        self._by_identity: Dict[Identity, Union[ElfFile, ElfError]] = {}
        self._by_path: Dict[str, Tuple[Identity, Union[ElfFile, ElfError]]] = {}

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
                hit.close()
            except ElfError as exc:
                hit = exc
            self._by_identity[ident] = hit
        if isinstance(hit, ElfError):
            raise hit
        return hit
