"""The loader's view of one object's dynamic symbols: :class:`soswap.elf.hashtab.RawSymbols` plus the
:class:`Sym` records binding works with (the raw DT_VERSYM word kept, for ``check_match``)."""

from __future__ import annotations

from typing import Dict

from soswap.elf import ElfFile
from soswap.elf.hashtab import NameHashes, elf_hash, gnu_hash, gnu_hash_reference
from soswap.elf.hashtab import RawSymbols as _RawTables
from soswap.elf.relocs import relocation_infos, relocation_ranges
from soswap.errors import ElfError
from soswap.tuples import NamedTuple

__all__ = ["NameHashes", "RawSymbols", "Sym", "elf_hash", "gnu_hash", "gnu_hash_reference", "relocation_infos",
           "relocation_ranges"]


class Sym(NamedTuple):
    """The fields of one dynamic symbol the loader looks at."""

    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    visibility: int
    shndx: int
    #: DT_VERSYM entry (with the hidden bit 0x8000), 0 without DT_VERSYM.
    versym: int

    @property
    def version_index(self) -> int:
        return self.versym & 0x7FFF

    @property
    def hidden(self) -> bool:
        return bool(self.versym & 0x8000)


class RawSymbols(_RawTables):
    """The raw tables of one object, with :class:`Sym` records decoded on demand (and kept)."""

    def __init__(self, elf: ElfFile) -> None:
        super().__init__(elf)
        self._syms: Dict[int, Sym] = {}

    def sym(self, index: int) -> Sym:
        s = self._syms.get(index)
        if s is None:
            st_name, st_info, st_other, st_shndx, st_value, st_size = self.row_fields(index)
            if st_name >= len(self.strtab) and st_name:
                raise ElfError(self.elf.path, f"symbol {index}: name offset {st_name} is outside DT_STRTAB")
            end = self.strtab.find(b"\0", st_name)
            name = self.strtab[st_name:end if end >= 0 else len(self.strtab)].decode("utf-8", "surrogateescape")
            v = self.versym[index] if self.versym is not None else 0
            s = self._syms[index] = Sym(index, name, st_value, st_size, st_info & 0xF, st_info >> 4, st_other & 3,
                                        st_shndx, v)
        return s
