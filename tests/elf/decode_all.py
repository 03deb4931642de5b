"""Touch every lazily decoded part of an ElfFile (used by the hardening and fuzz tests)."""

from __future__ import annotations

from soswap.elf import ElfFile
from soswap.report.elf import elf_to_json, elf_to_text


def decode_all(elf: ElfFile) -> None:
    elf.interpreter
    dyn = elf.dynamic
    dyn.flag_names, dyn.rpath_list, dyn.runpath_list, dyn.bind_now
    elf.version_definitions
    elf.version_needs
    syms = elf.symbols
    elf.relocations
    elf.symbol_reference_kinds()
    elf.relr_count
    elf.notes
    for s in syms[1:20]:
        if s.name:
            elf.find_symbols(s.name)
    fresh = ElfFile(elf._src)  # the hash-table path on an undecoded table
    for s in syms[1:20]:
        if s.name:
            fresh.find_symbols(s.name)
    elf_to_json(elf, with_symbols=True)
    elf_to_text(elf, with_symbols=True)
