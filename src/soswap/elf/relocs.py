"""Relocation types per machine, classified the way the dynamic loader treats them.

A relocation that names a symbol is resolved either lazily at the first call (``plt``: a JUMP_SLOT in
DT_JMPREL, ``elf_machine_lazy_rel``) or at startup (everything else: ``_dl_relocate_object`` runs them before
``main``). ``copy`` relocations copy the definition into the executable (size matters). ``tls`` relocations
need a TLS definition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Tuple

from soswap.elf import constants as C
from soswap.errors import ElfError

if TYPE_CHECKING:
    from soswap.elf.file import ElfFile

KIND_NONE = "none"
KIND_PLT = "plt"
KIND_DATA = "data"
KIND_COPY = "copy"
KIND_TLS = "tls"
KIND_RELATIVE = "relative"
KIND_IRELATIVE = "irelative"


class Relocation(NamedTuple):
    """One dynamic relocation: where, which type, which dynamic symbol (0 = none), and its loader class."""

    offset: int
    type: int
    symbol_index: int
    addend: int
    kind: str
    in_plt_table: bool


def _table(none: int, jump_slot: int, glob_dat: int, copy: int, relative: int, irelative: int,
           tls: tuple, data: tuple = ()) -> Dict[int, str]:
    kinds: Dict[int, str] = {none: KIND_NONE, jump_slot: KIND_PLT, glob_dat: KIND_DATA, copy: KIND_COPY,
                             relative: KIND_RELATIVE, irelative: KIND_IRELATIVE}
    for t in tls:
        kinds[t] = KIND_TLS
    for t in data:
        kinds[t] = KIND_DATA
    return kinds


# (none, JUMP_SLOT, GLOB_DAT, COPY, RELATIVE, IRELATIVE, TLS types) from each psABI's relocation table.
RELOCATION_KINDS: Dict[int, Dict[int, str]] = {
    C.EM_X86_64: _table(0, 7, 6, 5, 8, 37, tls=(16, 17, 18, 36), data=(1, 2, 10, 11)),
    C.EM_386: _table(0, 7, 6, 5, 8, 42, tls=(14, 35, 36, 37, 41), data=(1, 2)),
    C.EM_AARCH64: _table(0, 1026, 1025, 1024, 1027, 1032, tls=(1028, 1029, 1030, 1031), data=(257, 258)),
    C.EM_ARM: _table(0, 22, 21, 20, 23, 160, tls=(13, 17, 18, 19), data=(2, 3)),
    C.EM_RISCV: _table(0, 5, 0x7FFF0001, 4, 3, 58, tls=(6, 7, 8, 9, 10, 11, 12), data=(1, 2)),
    C.EM_PPC64: _table(0, 21, 20, 19, 22, 248, tls=(68, 73, 78), data=(1, 38)),
    C.EM_PPC: _table(0, 21, 20, 19, 22, 248, tls=(68, 73, 78), data=(1,)),
    C.EM_S390: _table(0, 11, 10, 9, 12, 61, tls=(54, 55, 56), data=(4, 22)),
}


def classify(machine: int, rtype: int, in_plt_table: bool) -> str:
    """The loader class of relocation type ``rtype`` on ``machine``.

    An unknown type is classed by the table it sits in: DT_JMPREL entries are lazy PLT slots, others are
    resolved at startup.
    """
    kinds = RELOCATION_KINDS.get(machine)
    if kinds is not None:
        kind = kinds.get(rtype)
        if kind is not None:
            return kind
    return KIND_PLT if in_plt_table else KIND_DATA


#: Bit for each relocation class in :func:`reference_kinds`.
KIND_BITS = {
    KIND_PLT: 1,
    KIND_DATA: 2,
    KIND_COPY: 4,
    KIND_TLS: 8,
    KIND_IRELATIVE: 16,
    KIND_RELATIVE: 32,
    KIND_NONE: 0,
}
BIT_PLT, BIT_DATA, BIT_COPY, BIT_TLS = 1, 2, 4, 8


class _Table(NamedTuple):
    name: str
    offset: int  # file offset
    size: int
    entsize: int
    rela: bool
    plt: bool


def _tables(elf: ElfFile) -> List[_Table]:
    """The DT_RELA, DT_REL and DT_JMPREL tables, with the JMPREL part cut off a RELA/REL range that ends
    with it (``_ELF_DYNAMIC_DO_RELOC`` in elf/do-rel.h/dynamic-link.h does the same)."""
    tags = elf.dynamic.tags
    lay = elf.layout
    ranges = []
    jmprel: Optional[Tuple[int, int, bool]] = None
    if C.DT_JMPREL in tags and tags.get(C.DT_PLTRELSZ, 0):
        pltrel = tags.get(C.DT_PLTREL, C.DT_RELA if lay.is64 else C.DT_REL)
        if pltrel not in (C.DT_RELA, C.DT_REL):
            raise ElfError(elf.path, f"DT_PLTREL has an invalid value {pltrel}")
        jmprel = (tags[C.DT_JMPREL], tags[C.DT_PLTRELSZ], pltrel == C.DT_RELA)
    for addr_tag, size_tag, ent_tag, rela in ((C.DT_RELA, C.DT_RELASZ, C.DT_RELAENT, True),
                                              (C.DT_REL, C.DT_RELSZ, C.DT_RELENT, False)):
        if addr_tag in tags and tags.get(size_tag, 0):
            start, size = tags[addr_tag], tags[size_tag]
            entsize = tags.get(ent_tag, (lay.rela if rela else lay.rel).size)
            if entsize != (lay.rela if rela else lay.rel).size:
                raise ElfError(elf.path, f"relocation entry size {entsize} is invalid")
            if jmprel is not None and jmprel[2] == rela and start < jmprel[0] and start + size == jmprel[0] + jmprel[1]:
                size -= jmprel[1]
            elif jmprel is not None and jmprel[2] == rela and start == jmprel[0] and size == jmprel[1]:
                size = 0
            if size:
                ranges.append(_Table("DT_RELA" if rela else "DT_REL", start, size, entsize, rela, False))
    if jmprel is not None:
        entsize = (lay.rela if jmprel[2] else lay.rel).size
        ranges.append(_Table("DT_JMPREL", jmprel[0], jmprel[1], entsize, jmprel[2], True))
    out = []
    for t in ranges:
        if t.size % t.entsize:
            raise ElfError(elf.path, f"{t.name} size {t.size} is not a multiple of {t.entsize}")
        out.append(t._replace(offset=elf.vaddr_to_offset(t.offset, t.size, t.name)))
    return out


def _iter_raw(elf: ElfFile, table: _Table):  # type: ignore[no-untyped-def]
    lay = elf.layout
    raw = elf.read(table.offset, table.size, table.name)
    fmt = lay.rela if table.rela else lay.rel
    return fmt.iter_unpack(raw)


def _split_info(is64: bool, info: int) -> Tuple[int, int]:
    if is64:
        return info >> 32, info & 0xFFFFFFFF
    return info >> 8, info & 0xFF


def decode_relocations(elf: ElfFile) -> Tuple[Relocation, ...]:
    """Every relocation of DT_RELA, DT_REL and DT_JMPREL, classified for the loader."""
    if not elf.dynamic.tags:
        return ()
    lay = elf.layout
    nsyms = len(elf.symbols)
    machine = elf.machine
    out: List[Relocation] = []
    for table in _tables(elf):
        for fields in _iter_raw(elf, table):
            r_offset, info = fields[0], fields[1]
            addend = fields[2] if table.rela else 0
            sym, rtype = _split_info(lay.is64, info)
            if sym >= max(nsyms, 1):
                raise ElfError(elf.path, f"{table.name} relocation names symbol {sym} of {nsyms}")
            out.append(Relocation(r_offset, rtype, sym, addend, classify(machine, rtype, table.plt), table.plt))
    return tuple(out)


def reference_kinds(elf: ElfFile) -> Dict[int, int]:
    """Symbol index -> OR of :data:`KIND_BITS` of the relocations that name it (fast path, no objects)."""
    if not elf.dynamic.tags:
        return {}
    lay = elf.layout
    nsyms = len(elf.symbols)
    kinds_of = RELOCATION_KINDS.get(elf.machine, {})
    out: Dict[int, int] = {}
    shift, mask = (32, 0xFFFFFFFF) if lay.is64 else (8, 0xFF)
    for table in _tables(elf):
        default_bit = BIT_PLT if table.plt else BIT_DATA
        for fields in _iter_raw(elf, table):
            info = fields[1]
            sym = info >> shift
            if not sym:
                continue
            if sym >= nsyms:
                raise ElfError(elf.path, f"{table.name} relocation names symbol {sym} of {nsyms}")
            kind = kinds_of.get(info & mask)
            bit = KIND_BITS[kind] if kind is not None else default_bit
            out[sym] = out.get(sym, 0) | bit
    return out


def count_relr(elf: ElfFile) -> int:
    """How many DT_RELR words the object has (relative relocations, which name no symbol)."""
    tags = elf.dynamic.tags
    if C.DT_RELR not in tags or not tags.get(C.DT_RELRSZ, 0):
        return 0
    entsize = tags.get(C.DT_RELRENT, elf.layout.addr_size)
    if entsize != elf.layout.addr_size:
        raise ElfError(elf.path, f"DT_RELRENT is {entsize}, expected {elf.layout.addr_size}")
    size = tags[C.DT_RELRSZ]
    elf.vaddr_to_offset(tags[C.DT_RELR], size, "DT_RELR")
    return size // entsize
