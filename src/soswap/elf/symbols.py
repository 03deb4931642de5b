"""The dynamic symbol table (DT_SYMTAB), sized by DT_HASH or DT_GNU_HASH, with versions from DT_VERSYM."""

from __future__ import annotations

import functools
import gc
import itertools
import operator
from array import array
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from soswap.elf import constants as C
from soswap.errors import ElfError

if TYPE_CHECKING:
    from soswap.elf.file import ElfFile

SHT_DYNSYM = 11


class Symbol(NamedTuple):
    """One dynamic symbol.

    ``version`` is the version name (a definition for a defined symbol, a need for an undefined one) or None
    for an unversioned symbol (versym index 0 or 1). ``version_index`` is the versym index without the hidden
    bit; ``hidden`` is the hidden bit (``foo@V`` rather than ``foo@@V``); ``default`` is True for a defined
    symbol whose version is its default (``@@``). ``version_file`` is the DT_VERNEED file of a needed version.
    """

    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    visibility: int
    shndx: int
    version: Optional[str]
    version_index: int
    hidden: bool
    default: bool
    version_file: Optional[str]

    @property
    def defined(self) -> bool:
        return self.shndx != C.SHN_UNDEF

    @property
    def type_name(self) -> str:
        return C.STT_NAMES.get(self.type, str(self.type))

    @property
    def bind_name(self) -> str:
        return C.STB_NAMES.get(self.bind, str(self.bind))

    @property
    def visibility_name(self) -> str:
        return C.STV_NAMES.get(self.visibility, str(self.visibility))

    @property
    def versioned_name(self) -> str:
        """``name``, ``name@V`` or ``name@@V`` as readelf and abidiff spell it."""
        if self.version is None:
            return self.name
        return f"{self.name}{'@@' if self.default else '@'}{self.version}"


class SymbolTable:
    """All dynamic symbols of one object, with a by-name index built on first use."""

    def __init__(self, symbols: Tuple[Symbol, ...], has_versym: bool) -> None:
        self.symbols = symbols
        #: True when the object has DT_VERSYM (matters for versioned lookups, ``check_match``).
        self.has_versym = has_versym
        self._by_name: Optional[Dict[str, List[Symbol]]] = None

    def __len__(self) -> int:
        return len(self.symbols)

    def by_name(self, name: str) -> List[Symbol]:
        """Every symbol called ``name`` (defined or not), in table order."""
        if self._by_name is None:
            index: Dict[str, List[Symbol]] = {}
            for s in self.symbols:
                if s.name:
                    lst = index.get(s.name)
                    if lst is None:
                        index[s.name] = [s]
                    else:
                        lst.append(s)
            self._by_name = index
        return self._by_name.get(name, [])

    def defined(self) -> List[Symbol]:
        return [s for s in self.symbols if s.shndx != C.SHN_UNDEF and s.index]

    def undefined(self) -> List[Symbol]:
        return [s for s in self.symbols if s.shndx == C.SHN_UNDEF and s.index]


def symbol_count(elf: ElfFile) -> int:
    """The number of dynamic symbols: DT_HASH's nchain; else the end of DT_GNU_HASH's last chain; else (no
    hash table, or a GNU hash table with no hashed symbol) the section headers, else the gap between DT_SYMTAB
    and a DT_STRTAB that follows it."""
    tags = elf.dynamic.tags
    lay = elf.layout
    if C.DT_HASH in tags:
        _nbucket, nchain = lay.hash_header.unpack(elf.read_at_vaddr(tags[C.DT_HASH], 8, "DT_HASH"))
        return int(nchain)
    floor = 0
    if C.DT_GNU_HASH in tags:
        n = _gnu_hash_count(elf, tags[C.DT_GNU_HASH])
        if n is not None:
            return n
        floor = _gnu_symoffset(elf, tags[C.DT_GNU_HASH])
    n = _count_from_section_headers(elf)
    if n is not None:
        return max(n, floor)
    if C.DT_STRTAB in tags and C.DT_SYMTAB in tags and tags[C.DT_STRTAB] > tags[C.DT_SYMTAB]:
        gap = (tags[C.DT_STRTAB] - tags[C.DT_SYMTAB]) // lay.sym.size
        return max(min(gap, elf.room_at(tags[C.DT_SYMTAB]) // lay.sym.size), floor)
    return floor


def _gnu_symoffset(elf: ElfFile, addr: int) -> int:
    return int(elf.layout.gnu_hash_header.unpack(elf.read_at_vaddr(addr, 16, "DT_GNU_HASH header"))[1])


def _gnu_hash_count(elf: ElfFile, addr: int) -> int:
    lay = elf.layout
    nbuckets, symoffset, bloom_size, _shift = lay.gnu_hash_header.unpack(
        elf.read_at_vaddr(addr, 16, "DT_GNU_HASH header"))
    room = elf.room_at(addr)
    buckets_at = 16 + bloom_size * lay.addr_size
    if buckets_at + 4 * nbuckets > room:
        raise ElfError(elf.path, f"DT_GNU_HASH buckets ({nbuckets}) run past their segment")
    raw = elf.read_at_vaddr(addr + buckets_at, 4 * nbuckets, "DT_GNU_HASH buckets")
    buckets = array("I", raw)
    if lay.little != _NATIVE_LITTLE:
        buckets.byteswap()
    last = max(buckets) if nbuckets else 0
    if last < symoffset:
        return None
    # Walk the chain of the highest bucket until the entry with the low bit set (its last symbol).
    chain_at = addr + buckets_at + 4 * nbuckets
    chain_room = room - buckets_at - 4 * nbuckets
    pos = last - symoffset
    step = 256
    while True:
        if pos * 4 >= chain_room:
            raise ElfError(elf.path, "DT_GNU_HASH chain runs past its segment")
        n = min(step, chain_room // 4 - pos)
        words = array("I", elf.read_at_vaddr(chain_at + 4 * pos, 4 * n, "DT_GNU_HASH chain"))
        if lay.little != _NATIVE_LITTLE:
            words.byteswap()
        for i, w in enumerate(words):
            if w & 1:
                return int(symoffset + pos + i + 1)
        pos += n


def _count_from_section_headers(elf: ElfFile) -> Optional[int]:
    h = elf.header
    lay = elf.layout
    if h.shoff == 0 or h.shnum == 0 or h.shentsize != lay.shdr.size:
        return None
    if h.shoff + h.shnum * h.shentsize > elf.size:
        return None
    table = elf.read(h.shoff, h.shnum * h.shentsize, "section header table")
    for i in range(h.shnum):
        fields = lay.shdr.unpack_from(table, i * h.shentsize)
        if fields[1] == SHT_DYNSYM and fields[9]:
            return int(fields[5] // fields[9])
    return None


def _name_index(strtab: bytes) -> Dict[int, str]:
    """Offset -> name for every string of the table that starts after a NUL. Names that point into the
    middle of another string (tail merging) are not in it and are looked up with :func:`_name_at`."""
    if strtab.isascii():
        parts: Sequence[Any] = strtab.decode("ascii").split("\0")
    else:
        parts = [p.decode("utf-8", "surrogateescape") for p in strtab.split(b"\0")]
    starts = itertools.accumulate(map(_PLUS_ONE, map(len, parts)), initial=0)
    return dict(zip(starts, parts))


_PLUS_ONE = (1).__add__
_NATIVE_LITTLE = array("H", b"\x01\x00")[0] == 1


def _name_at(path: str, strtab: bytes, offset: int, i: int) -> str:
    if offset >= len(strtab):
        raise ElfError(path, f"symbol {i}: name offset {offset} is outside DT_STRTAB")
    end = strtab.find(b"\0", offset)
    if end < 0:
        raise ElfError(path, f"symbol {i}: name is not NUL-terminated")
    return strtab[offset:end].decode("utf-8", "surrogateescape")


def decode_symbol_table(elf: ElfFile) -> SymbolTable:
    """Decode every dynamic symbol of ``elf`` with its version.

    The table is decoded column by column (array slicing and C-level ``map``/``zip``), not row by row: about
    1 µs per symbol in CPython, so 46k symbols take some 50 ms.
    """
    dyn = elf.dynamic
    tags = dyn.tags
    if C.DT_SYMTAB not in tags:
        return SymbolTable((), False)
    lay = elf.layout
    entsize = tags.get(C.DT_SYMENT, lay.sym.size)
    if entsize != lay.sym.size:
        raise ElfError(elf.path, f"DT_SYMENT is {entsize}, expected {lay.sym.size}")
    count = symbol_count(elf)
    has_versym = C.DT_VERSYM in tags
    if count <= 0:
        return SymbolTable((), has_versym)
    if count * entsize > elf.size:
        raise ElfError(elf.path, f"symbol count {count} does not fit in the file")
    raw = elf.read_at_vaddr(tags[C.DT_SYMTAB], count * entsize, "DT_SYMTAB")
    strtab = dyn.strtab.load()
    versym: Optional[array] = None
    if has_versym:
        versym = array("H", elf.read_at_vaddr(tags[C.DT_VERSYM], 2 * count, "DT_VERSYM"))
        if lay.little != _NATIVE_LITTLE:
            versym.byteswap()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # tens of thousands of small objects: generation-0 collections would dominate
    try:
        symbols = _decode_columns(elf, raw, count, strtab, versym)
    finally:
        if gc_was_enabled:
            gc.enable()
    return SymbolTable(symbols, has_versym)


def _decode_columns(elf: ElfFile, raw: bytes, count: int, strtab: bytes,
                    versym: Optional[array]) -> Tuple[Symbol, ...]:
    lay = elf.layout
    swap = lay.little != _NATIVE_LITTLE
    # Byte columns by strided slicing, the nibbles and bits by bytes.translate: no per-symbol Python code.
    # Elf64_Sym (24 bytes): st_name, st_info, st_other, st_shndx, st_value (8), st_size (8);
    # Elf32_Sym (16 bytes): st_name, st_value, st_size, st_info, st_other, st_shndx.
    stride, info_at, wide = (24, 4, array("Q", raw)) if lay.is64 else (16, 12, array("I", raw))
    words = array("I", raw)
    halves = array("H", raw)
    if swap:
        for column in (wide, words, halves):
            column.byteswap()
    per = stride // wide.itemsize
    st_name, values, sizes = words[0::stride // 4], wide[1::per], wide[2::per]
    infos, others = raw[info_at::stride], raw[info_at + 1::stride]
    shndx = halves[(info_at + 2) // 2::stride // 2]
    types = infos.translate(_LOW_NIBBLE)
    binds = infos.translate(_HIGH_NIBBLE)
    vis = others.translate(_VISIBILITY)

    names = list(map(_name_index(strtab).get, st_name))
    if None in names:
        names = [n if n is not None else (_name_at(elf.path, strtab, off, i) if off else "")
                 for i, (n, off) in enumerate(zip(names, st_name))]

    if versym is None:
        nones = [None] * count
        vindex: Sequence[int] = [0] * count
        falses = [False] * count
        versions, vfiles, hidden, default = nones, nones, falses, falses
    else:
        # one entry per distinct DT_VERSYM value (a few dozen), then C-level lookups per symbol
        vmap = elf.versions.by_index
        name_of: Dict[int, Optional[str]] = {}
        file_of: Dict[int, Optional[str]] = {}
        default_of: Dict[int, bool] = {}
        for v in set(versym):
            e = vmap.get(v & 0x7FFF) if (v & 0x7FFF) > 1 else None
            name_of[v] = e[0] if e else None
            file_of[v] = e[1] if e else None
            default_of[v] = v <= 0x7FFF and e is not None and e[1] is None
        versions = list(map(name_of.__getitem__, versym))
        vfiles = list(map(file_of.__getitem__, versym))
        vindex = list(map(_LOW15.__and__, versym))
        hidden = list(map(_LOW15.__lt__, versym))
        # a default (@@) version needs a definition: st_shndx != SHN_UNDEF
        default = list(map(operator.and_, map(bool, shndx), map(default_of.__getitem__, versym)))
    rows = zip(range(count), names, values, sizes, types, binds, vis, shndx, versions, vindex, hidden, default,
               vfiles)
    return tuple(map(_MAKE_SYMBOL, rows))


_LOW_NIBBLE = bytes(i & 0xF for i in range(256))
_HIGH_NIBBLE = bytes(i >> 4 for i in range(256))
_VISIBILITY = bytes(i & 3 for i in range(256))
_LOW15 = 0x7FFF
_MAKE_SYMBOL = functools.partial(tuple.__new__, Symbol)
