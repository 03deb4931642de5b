"""Fast, hardened, lazy reading of ELF files from their program headers.

>>> from soswap.elf import ElfFile
>>> elf = ElfFile.open("/bin/ls")
>>> elf.needed                     # decodes PT_DYNAMIC only
>>> elf.symbols[1].versioned_name  # decodes DT_SYMTAB, DT_VERSYM, DT_VERDEF/DT_VERNEED
>>> cols = elf.symbol_columns        # the same table as columns, no Symbol objects
>>> list(zip(cols.names, cols.versions, cols.defined))

Every malformation raises :class:`soswap.errors.ElfError`.
"""

from typing import TYPE_CHECKING

from soswap.elf.cache import ElfCache
from soswap.elf.dynamic import DynamicInfo
from soswap.elf.file import ElfFile, Header, Segment
from soswap.elf.source import elf_type, is_elf_file, is_loadable_elf
from soswap.errors import ElfError

if TYPE_CHECKING:
    from soswap.elf.hashtab import elf_hash, gnu_hash
    from soswap.elf.relocs import Relocation
    from soswap.elf.symbols import Symbol, SymbolColumns, SymbolTable
    from soswap.elf.versions import VersionDef, VersionNeed, VersionNeedEntry

#: Names re-exported from modules imported when first used (PEP 562; a run that decodes no symbols, versions
#: or relocations never imports them).
_LAZY = {"elf_hash": "hashtab", "gnu_hash": "hashtab", "Relocation": "relocs", "Symbol": "symbols",
         "SymbolColumns": "symbols", "SymbolTable": "symbols", "VersionDef": "versions",
         "VersionNeed": "versions", "VersionNeedEntry": "versions"}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"soswap.elf.{module}"), name)
    globals()[name] = value
    return value

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
