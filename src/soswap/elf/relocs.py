"""Relocation types per machine, classified the way the dynamic loader treats them.

A relocation that names a symbol is resolved either lazily at the first call (``plt``: a JUMP_SLOT in
DT_JMPREL, ``elf_machine_lazy_rel``) or at startup (everything else: ``_dl_relocate_object`` runs them before
``main``). ``copy`` relocations copy the definition into the executable (size matters). ``tls`` relocations
need a TLS definition.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from soswap.elf import constants as C
from soswap.elf.hashtab import _words
from soswap.errors import ElfError
from soswap.tuples import NamedTuple

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


class RelocationRange(NamedTuple):
    """One relocation table as ``_ELF_DYNAMIC_DO_RELOC`` walks it."""

    name: str  # DT_REL, DT_RELA or DT_JMPREL
    vaddr: int
    size: int  # a whole number of entries
    entsize: int
    rela: bool
    plt: bool  # DT_JMPREL: lazily bound when the object is not BIND_NOW
    nrelative: int  # leading relative relocations (DT_RELCOUNT/DT_RELACOUNT), which name no symbol


def relocation_table_ranges(elf: ElfFile) -> List[RelocationRange]:
    """The relocation tables in the order ``_ELF_DYNAMIC_DO_RELOC`` processes them: DT_REL then its DT_JMPREL
    (when DT_PLTREL is DT_REL), DT_RELA then its DT_JMPREL. A DT_REL/DT_RELA range that ends with the DT_JMPREL
    table has that part cut off, as elf/dynamic-link.h does. Sizes are rounded down to whole entries (ld.so does
    not check them); every range must lie in one loaded segment."""
    tags = elf.dynamic.tags
    lay = elf.layout
    out: List[RelocationRange] = []
    jmprel: Optional[Tuple[int, int, bool]] = None
    if C.DT_JMPREL in tags and tags.get(C.DT_PLTRELSZ, 0):
        pltrel = tags.get(C.DT_PLTREL, C.DT_RELA if lay.is64 else C.DT_REL)
        if pltrel not in (C.DT_RELA, C.DT_REL):
            raise ElfError(elf.path, f"DT_PLTREL has an invalid value {pltrel}")
        jmprel = (tags[C.DT_JMPREL], tags[C.DT_PLTRELSZ], pltrel == C.DT_RELA)
    for addr_tag, size_tag, count_tag, rela in ((C.DT_REL, C.DT_RELSZ, C.DT_RELCOUNT, False),
                                                (C.DT_RELA, C.DT_RELASZ, C.DT_RELACOUNT, True)):
        ent = (lay.rela if rela else lay.rel).size
        if addr_tag in tags and tags.get(size_tag, 0):
            start, size = tags[addr_tag], tags[size_tag]
            if jmprel is not None and jmprel[2] == rela and start + size == jmprel[0] + jmprel[1]:
                size -= jmprel[1]
            size = max(size, 0) - max(size, 0) % ent
            if size:
                elf.vaddr_to_offset(start, size, "DT_RELA" if rela else "DT_REL")
                out.append(RelocationRange("DT_RELA" if rela else "DT_REL", start, size, ent, rela, False,
                                           min(tags.get(count_tag, 0), size // ent)))
        if jmprel is not None and jmprel[2] == rela:
            size = jmprel[1] - jmprel[1] % ent
            if size:
                elf.vaddr_to_offset(jmprel[0], size, "DT_JMPREL")
                out.append(RelocationRange("DT_JMPREL", jmprel[0], size, ent, rela, True, 0))
    return out


def _split_info(is64: bool, info: int) -> Tuple[int, int]:
    if is64:
        return info >> 32, info & 0xFFFFFFFF
    return info >> 8, info & 0xFF


def decode_relocations(elf: ElfFile) -> Tuple[Relocation, ...]:
    """Every relocation of DT_REL, DT_RELA and DT_JMPREL, classified for the loader."""
    if not elf.dynamic.tags:
        return ()
    lay = elf.layout
    nsyms = len(elf.symbols)
    machine = elf.machine
    out: List[Relocation] = []
    for table in relocation_table_ranges(elf):
        fmt = lay.rela if table.rela else lay.rel
        for fields in fmt.iter_unpack(elf.read_at_vaddr(table.vaddr, table.size, table.name)):
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
    for infos, plt in relocation_infos(elf):
        default_bit = BIT_PLT if plt else BIT_DATA
        for info in infos:
            sym = info >> shift
            if sym >= nsyms:
                raise ElfError(elf.path, f"relocation names symbol {sym} of {nsyms}")
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


def relocation_ranges(elf: ElfFile) -> List[Tuple[List[Tuple[int, int]], bool]]:
    """The relocations that name a symbol, as ``[(symbol index, type), ...]`` per range in
    ``_ELF_DYNAMIC_DO_RELOC`` order (see :func:`relocation_table_ranges`), ``True`` as the second item for
    DT_JMPREL."""
    shift, mask = (32, 0xFFFFFFFF) if elf.layout.is64 else (8, 0xFF)
    return [([(i >> shift, i & mask) for i in infos], jmp) for infos, jmp in relocation_infos(elf)]


#: The types ``elf_machine_lazy_rel`` accepts in DT_JMPREL (JUMP_SLOT, TLSDESC, IRELATIVE); any other entry,
#: R_*_NONE included, is ``_dl_reloc_bad_type (map, r_type, 1)`` when the table is processed lazily.
LAZY_PLT_TYPES: Dict[int, frozenset] = {
    C.EM_X86_64: frozenset((7, 36, 37)),
    C.EM_386: frozenset((7, 41, 42)),
    C.EM_AARCH64: frozenset((1026, 1031, 1032)),
    C.EM_ARM: frozenset((22, 13)),  # JUMP_SLOT, TLS_DESC: an IRELATIVE there is a bad type too
}


def unexpected_plt_type(elf: ElfFile) -> Optional[int]:
    """The first relocation type in DT_JMPREL that ld.so refuses to bind lazily ("unexpected PLT reloc type"),
    or None (also for a machine whose rules are not known here, and for tables that cannot be read: the
    relocation decoding reports those)."""
    accepted = LAZY_PLT_TYPES.get(elf.machine)
    if accepted is None:
        return None
    lay = elf.layout
    code = "Q" if lay.is64 else "I"
    mask = 0xFFFFFFFF if lay.is64 else 0xFF
    try:
        for t in relocation_table_ranges(elf):
            if t.plt:
                raw = elf.read_at_vaddr(t.vaddr, t.size, t.name)
                infos = _words(raw, code, lay.little)[1::t.entsize // lay.addr_size]
                return next((i & mask for i in infos if i & mask not in accepted), None)
    except ElfError:
        return None
    return None


def relocation_infos(elf: ElfFile) -> List[Tuple[array, bool]]:
    """:func:`relocation_ranges` as the raw ``r_info`` words (symbol index above bit 32, type below, for
    ELFCLASS64; above bit 8 for ELFCLASS32), those without a symbol left out. The leading relative relocations
    (DT_RELACOUNT/DT_RELCOUNT) are not even read."""
    lay = elf.layout
    code = "Q" if lay.is64 else "I"
    limit = 1 << 32 if lay.is64 else 1 << 8
    out: List[Tuple[array, bool]] = []
    for t in relocation_table_ranges(elf):
        skip = t.nrelative * t.entsize
        if skip >= t.size:
            out.append((array(code), t.plt))
            continue
        raw = elf.read_at_vaddr(t.vaddr + skip, t.size - skip, t.name)
        infos = _words(raw, code, lay.little)[1::t.entsize // lay.addr_size]
        if len(infos) and min(infos) < limit:  # min() runs at C speed: most tables need no filtering pass
            infos = array(code, [i for i in infos if i >= limit])
        out.append((infos, t.plt))
    return out
