"""Fast, hardened, lazy reading of ELF files from their program headers.

>>> from soswap.elf import ElfFile
>>> elf = ElfFile.open("/bin/ls")
>>> elf.needed                     # decodes PT_DYNAMIC only
>>> elf.symbols[1].versioned_name  # decodes DT_SYMTAB, DT_VERSYM, DT_VERDEF/DT_VERNEED
>>> cols = elf.symbol_columns        # the same table as columns, no Symbol objects
>>> list(zip(cols.names, cols.versions, cols.defined))

Every malformation raises :class:`soswap.errors.ElfError`.
"""

from soswap.elf.cache import ElfCache
from soswap.elf.dynamic import DynamicInfo
from soswap.elf.file import ElfFile, Header, Segment
from soswap.elf.hashtab import elf_hash, gnu_hash
from soswap.elf.relocs import Relocation
from soswap.elf.source import elf_type, is_elf_file, is_loadable_elf
from soswap.elf.symbols import Symbol, SymbolColumns, SymbolTable
from soswap.elf.versions import VersionDef, VersionNeed, VersionNeedEntry
from soswap.errors import ElfError

__all__ = [
    "DynamicInfo",
    "ElfCache",
    "ElfError",
    "ElfFile",
    "Header",
    "Relocation",
    "Segment",
    "Symbol",
    "SymbolColumns",
    "SymbolTable",
    "VersionDef",
    "VersionNeed",
    "VersionNeedEntry",
    "elf_hash",
    "elf_type",
    "gnu_hash",
    "is_elf_file",
    "is_loadable_elf",
]
