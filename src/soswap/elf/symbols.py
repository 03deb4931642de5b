"""The dynamic symbol table (DT_SYMTAB), sized by DT_HASH or DT_GNU_HASH, with versions from DT_VERSYM."""

from __future__ import annotations

import functools
import gc
import itertools
import operator
import struct
import sys
from array import array
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from soswap.elf import constants as C
from soswap.errors import ElfError
from soswap.tuples import NamedTuple

if TYPE_CHECKING:
    from soswap.elf.file import ElfFile

SHT_DYNSYM = 11

#: A column of unsigned words: a memoryview of the raw table, or an array when the file's byte order is not the
#: host's.
Words = Union[array, memoryview]


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


class SymbolColumns:
    """The dynamic symbol table as columns: one sequence per field, in table order, index 0 included.

    ``columns.names[i]`` is ``symbols[i].name`` and so on for every field of :class:`Symbol`, but no per-symbol
    object is created: the numeric columns are slices of the raw table and the names come from DT_STRTAB in
    one pass, which makes reading a whole table several times cheaper than building the :class:`Symbol` tuples.

    Columns (each a sequence of ``count`` items):

    - ``names``: ``Tuple[str, ...]`` (utf-8, surrogateescape);
    - ``values``, ``sizes``, ``shndx``: sequences of int (st_value, st_size, st_shndx): read-only memoryviews
      of the raw table, or of a byte-swapped copy for a file whose byte order is not the host's;
    - ``types``, ``binds``, ``visibility``: ``bytes`` (indexing gives the int: STT_*, STB_*, STV_*);
    - ``defined``: ``Tuple[bool, ...]`` (st_shndx != SHN_UNDEF);
    - ``versions``, ``version_file``: ``Tuple[Optional[str], ...]``;
    - ``version_index``: ``Tuple[int, ...]``; ``hidden``, ``default``: ``Tuple[bool, ...]``.

    ``defined`` and the version columns are built on first access (about 1 ms each for 46k symbols).
    """

    __slots__ = ("_by_index", "_cache", "_versym", "binds", "count", "names", "shndx", "sizes", "types", "values",
                 "visibility")

    def __init__(self, names: Sequence[str], values: Sequence[int], sizes: Sequence[int], types: bytes,
                 binds: bytes, visibility: bytes, shndx: Sequence[int], versym: Optional[array],
                 by_index: Dict[int, Tuple[str, Optional[str], bool]]) -> None:
        self.count = len(names)
        self.names = names
        self.values = values
        self.sizes = sizes
        self.types = types
        self.binds = binds
        self.visibility = visibility
        self.shndx = shndx
        self._versym = versym
        self._by_index = by_index
        self._cache: Dict[str, Tuple[Any, ...]] = {}

    @classmethod
    def empty(cls) -> SymbolColumns:
        """The columns of an object without a dynamic symbol table."""
        return cls((), (), (), b"", b"", b"", (), None, {})

    def __len__(self) -> int:
        return self.count

    @property
    def defined(self) -> Tuple[bool, ...]:
        """st_shndx != SHN_UNDEF for each symbol."""
        col = self._cache.get("defined")
        if col is None:
            col = self._cache["defined"] = _without_gc(tuple, map(bool, self.shndx))
        return col

    @property
    def versions(self) -> Tuple[Optional[str], ...]:
        """The version name of each symbol, None when unversioned (see :attr:`Symbol.version`)."""
        return self._version_column("versions")

    @property
    def version_file(self) -> Tuple[Optional[str], ...]:
        """The DT_VERNEED file of each symbol's needed version, else None."""
        return self._version_column("version_file")

    @property
    def version_index(self) -> Tuple[int, ...]:
        """The DT_VERSYM index of each symbol without the hidden bit (0 without DT_VERSYM)."""
        return self._version_column("version_index")

    @property
    def hidden(self) -> Tuple[bool, ...]:
        """The DT_VERSYM hidden bit of each symbol (``foo@V`` rather than ``foo@@V``)."""
        return self._version_column("hidden")

    @property
    def default(self) -> Tuple[bool, ...]:
        """True for a defined symbol whose version is its default (``foo@@V``)."""
        col = self._cache.get("default")
        if col is None:
            col = self._version_column("default_of")
            if self._versym is not None:
                col = _without_gc(tuple, map(operator.and_, self.defined, col))
            self._cache["default"] = col
        return col

    def _version_column(self, which: str) -> Tuple[Any, ...]:
        col = self._cache.get(which)
        if col is not None:
            return col
        n = self.count
        versym = self._versym
        if versym is None:
            constant = {"versions": None, "version_file": None, "version_index": 0}.get(which, False)
            col = (constant,) * n
        else:
            # one entry per distinct DT_VERSYM value (a few dozen), then a C-level gather over the column
            table: Dict[int, Any] = {}
            by_index = self._by_index
            distinct = self._cache.get("distinct")
            if distinct is None:
                distinct = self._cache["distinct"] = tuple(set(versym))
            for v in distinct:
                low = v & _LOW15
                e = by_index.get(low) if low > 1 else None
                if which == "versions":
                    table[v] = e[0] if e else None
                elif which == "version_file":
                    table[v] = e[1] if e else None
                elif which == "version_index":
                    table[v] = low
                elif which == "hidden":
                    table[v] = v > _LOW15
                else:  # default_of: a definition's own version, not hidden (``@@``); shndx is checked apart
                    table[v] = v <= _LOW15 and e is not None and e[1] is None
            col = _without_gc(_gather, versym, table)
        self._cache[which] = col
        return col

    def rows(self, *fields: str, start: int = 0) -> List[Tuple[Any, ...]]:
        """The columns named by ``fields`` zipped into one tuple per symbol, from index ``start`` on: the same
        list as ``list(zip(...))`` over those columns, built with the cyclic collector paused.

        >>> cols.rows("names", "versions", "defined", start=1)  # every symbol but the null one
        """
        unknown = [f for f in fields if f not in _FIELDS]
        if unknown or not fields:
            raise ValueError(f"unknown symbol columns {unknown}; choose from {', '.join(_FIELDS)}")
        columns = [getattr(self, f) for f in fields]
        return _without_gc(list, itertools.islice(zip(*columns), start, None))  # type: ignore[no-any-return]

    def row(self, index: int) -> Symbol:
        """The :class:`Symbol` at ``index``, built from the columns."""
        return Symbol(index, self.names[index], self.values[index], self.sizes[index], self.types[index],
                      self.binds[index], self.visibility[index], self.shndx[index], self.versions[index],
                      self.version_index[index], self.hidden[index], self.default[index],
                      self.version_file[index])

    def symbols(self) -> Tuple[Symbol, ...]:
        """Every row as a :class:`Symbol` (what :attr:`SymbolTable.symbols` holds)."""
        rows = zip(range(self.count), self.names, self.values, self.sizes, self.types, self.binds,
                   self.visibility, self.shndx, self.versions, self.version_index, self.hidden, self.default,
                   self.version_file)
        return _without_gc(tuple, map(_MAKE_SYMBOL, rows))


#: The columns of :class:`SymbolColumns`, in the order of the :class:`Symbol` fields they hold.
_FIELDS = ("names", "values", "sizes", "types", "binds", "visibility", "shndx", "versions", "version_index",
           "hidden", "default", "version_file", "defined")


class SymbolTable:
    """All dynamic symbols of one object.

    :attr:`columns` is the table decoded column by column (:class:`SymbolColumns`); :attr:`symbols`, the
    :class:`Symbol` tuples, and the by-name index are built from it on first use.
    """

    def __init__(self, columns: SymbolColumns, has_versym: bool) -> None:
        #: The table as columns, decoded without creating per-symbol objects.
        self.columns = columns
        #: True when the object has DT_VERSYM (matters for versioned lookups, ``check_match``).
        self.has_versym = has_versym
        self._symbols: Optional[Tuple[Symbol, ...]] = None
        self._by_name: Optional[Dict[str, List[int]]] = None

    @property
    def symbols(self) -> Tuple[Symbol, ...]:
        """Every symbol as a :class:`Symbol`, index 0 (the null symbol) included, in table order."""
        if self._symbols is None:
            self._symbols = self.columns.symbols()
        return self._symbols

    def __len__(self) -> int:
        return self.columns.count

    def symbol(self, index: int) -> Symbol:
        """The symbol at ``index`` (without building every :class:`Symbol` when they are not built yet)."""
        if self._symbols is not None:
            return self._symbols[index]
        return self.columns.row(index)

    def by_name(self, name: str) -> List[Symbol]:
        """Every symbol called ``name`` (defined or not), in table order."""
        if self._by_name is None:
            index: Dict[str, List[int]] = {}
            for i, n in enumerate(self.columns.names):
                if n:
                    lst = index.get(n)
                    if lst is None:
                        index[n] = [i]
                    else:
                        lst.append(i)
            self._by_name = index
        return [self.symbol(i) for i in self._by_name.get(name, ())]

    def defined(self) -> List[Symbol]:
        return [s for s in self.symbols if s.shndx != C.SHN_UNDEF and s.index]

    def undefined(self) -> List[Symbol]:
        return [s for s in self.symbols if s.shndx == C.SHN_UNDEF and s.index]


def _gather(keys: Sequence[int], table: Any) -> Tuple[Any, ...]:
    """``tuple(table[k] for k in keys)`` at C speed."""
    if len(keys) > 1:
        return operator.itemgetter(*keys)(table)  # type: ignore[no-any-return]
    return tuple(table[k] for k in keys)


def _without_gc(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with the cyclic collector paused: building tens of thousands of tuples would otherwise
    trigger generation-0 collections that cost more than the building."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return fn(*args)
    finally:
        if was_enabled:
            gc.enable()


def sysv_hash_header(elf: ElfFile, addr: int) -> Tuple[int, int]:
    """(nbucket, nchain) of the DT_HASH table at ``addr`` (words of :attr:`ElfFile.hash_entry_size`)."""
    size = elf.hash_entry_size
    head = elf.read_at_vaddr(addr, 2 * size, "DT_HASH")
    if size == 4:
        return elf.layout.hash_header.unpack(head)
    return struct.unpack(("<" if elf.layout.little else ">") + "QQ", head)


def symbol_count(elf: ElfFile) -> int:
    """The number of dynamic symbols: the end of DT_GNU_HASH's last chain, or DT_HASH's nchain when it is larger
    and the table that long fits in its segment; DT_HASH's nchain alone; else (no hash table, or a GNU hash
    table with no hashed symbol) the section headers, else the gap between DT_SYMTAB and a DT_STRTAB that
    follows it."""
    tags = elf.dynamic.tags
    lay = elf.layout
    gnu: Optional[int] = None
    floor = 0
    if C.DT_GNU_HASH in tags:
        try:
            gnu = _gnu_hash_count(elf, tags[C.DT_GNU_HASH])
            if gnu is None:
                floor = _gnu_symoffset(elf, tags[C.DT_GNU_HASH])
        except ElfError:
            if C.DT_HASH not in tags:
                raise
    if C.DT_HASH in tags:
        _nbucket, nchain = sysv_hash_header(elf, tags[C.DT_HASH])
        if gnu is None:
            return int(nchain)
        # _dl_setup_hash: with DT_GNU_HASH ld.so never reads DT_HASH (its lookups reach the GNU chains'
        # symbols); relocations index the table directly, so a larger nchain that fits only widens it
        fits = C.DT_SYMTAB in tags and nchain * lay.sym.size <= elf.room_at(tags[C.DT_SYMTAB])
        return int(nchain) if nchain > gnu and fits else gnu
    if gnu is not None:
        return gnu
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
#: Tables with at least this many symbols take their names by pointer (:func:`_names_by_pointer`).
POINTER_NAMES_MIN = 2048
_CHUNK = 4096
_repeat = itertools.repeat


def _name_at(path: str, strtab: bytes, offset: int, i: int) -> str:
    if offset >= len(strtab):
        raise ElfError(path, f"symbol {i}: name offset {offset} is outside DT_STRTAB")
    end = strtab.find(b"\0", offset)
    if end < 0:
        raise ElfError(path, f"symbol {i}: name is not NUL-terminated")
    return strtab[offset:end].decode("utf-8", "surrogateescape")


def _names(path: str, strtab: bytes, st_name: Words) -> Sequence[str]:
    """The name of each symbol: st_name offsets into DT_STRTAB, exact for tail-merged names (an offset
    into the middle of a string); ElfError for an offset outside the table or an unterminated name."""
    _check_name_bytes(path, strtab, st_name)
    if len(st_name) >= POINTER_NAMES_MIN and strtab[-1:] == b"\0":
        names = _names_by_pointer(strtab, st_name)
        if names is not None:
            return names
    return _names_by_index(path, strtab, st_name)


def _check_name_bytes(path: str, strtab: bytes, st_name: Words) -> None:
    """ElfError when the names would take far more memory than any linker's table gives: symbols pointing
    into the same long strings over and over (a crafted file; each name is a copy). A real table's names add
    up to about its own size; the exact sum is only counted when a cheap bound says it might not."""
    budget = max(64 << 20, 16 * len(strtab))
    if len(st_name) * (max(map(len, strtab.split(b"\0")), default=0) + 1) <= budget:
        return
    find, size, total = strtab.find, len(strtab), 0
    for off in st_name:
        if off < size:
            end = find(b"\0", off)
            total += (end if end >= 0 else size) - off
            if total > budget:
                raise ElfError(path, f"its {len(st_name)} symbol names would take over {budget >> 20} MiB from a "
                                     f"{size}-byte string table (names overlapping over and over: a crafted file?)")


def _names_by_index(path: str, strtab: bytes, st_name: Words) -> Sequence[str]:
    """Split the whole table once, then one dict lookup per symbol (tail-merged names one by one)."""
    names: List[Any] = list(map(_name_index(strtab).get, st_name))
    if None in names:
        names = [n if n is not None else (_name_at(path, strtab, off, i) if off else "")
                 for i, (n, off) in enumerate(zip(names, st_name))]
    return tuple(names)


def _names_by_pointer(strtab: bytes, st_name: Words) -> Optional[Sequence[str]]:
    """The names as C strings: an array of ``char *`` into a private copy of the table, read back by ctypes
    (``strlen`` and a bytes object per entry, no Python code per symbol: about half the time of
    :func:`_names_by_index` on 46k symbols).

    The caller has checked that ``strtab`` ends with a NUL. The copy is zero-padded to a power of two that
    every offset is checked to be below (on the offsets' byte columns), so every read stays inside the copy;
    an offset that fell into the padding read an empty name, and the empty names are checked afterwards.
    None (use :func:`_names_by_index`, which reports the bad offset) when an offset is outside the table, or
    without ctypes or 64-bit pointers.
    """
    try:
        import ctypes
    except ImportError:  # pragma: no cover - CPython builds without ctypes
        return None
    size = len(strtab)
    if ctypes.sizeof(ctypes.c_char_p) != 8 or st_name.itemsize != 4 or size > 1 << 32:
        return None  # pragma: no cover - 32-bit hosts
    bits = (size - 1).bit_length()
    offsets = st_name.tobytes()  # native-endian 32-bit words
    order = sys.byteorder
    if not _all_below(offsets, bits, order):
        return None
    copy = ctypes.create_string_buffer(strtab, 1 << bits)  # the table, then zeros up to 2**bits
    address = ctypes.addressof(copy).to_bytes(8, order)
    low = 0 if order == "little" else 4
    ascii_only = strtab.isascii()
    names: List[str] = []
    # in chunks, so that the memory of one chunk's temporaries is reused by the next (fewer page faults)
    for first in range(0, len(st_name), _CHUNK):
        chunk = offsets[4 * first:4 * (first + _CHUNK)]
        n = len(chunk) // 4
        # the offsets as 64-bit native words (strided byte copies), plus the copy's address in every word with
        # one big-int addition (no carry: each sum is an address inside the copy)
        wide = bytearray(8 * n)
        for j in range(4):
            wide[low + j::8] = chunk[j::4]
        pointers = int.from_bytes(wide, order) + int.from_bytes(address * n, order)
        parts = (ctypes.c_char_p * n).from_buffer_copy(pointers.to_bytes(8 * n, order))[:]  # strlen, bytes
        at = 0
        while True:  # an empty name: an offset at a NUL of the table (the null symbol's) or in the padding
            try:
                at = parts.index(b"", at)
            except ValueError:
                break
            if st_name[first + at] >= size:
                return None
            at += 1
        if ascii_only:
            names.extend(map(bytes.decode, parts))
        else:
            names.extend(map(bytes.decode, parts, _repeat("utf-8"), _repeat("surrogateescape")))
    del copy
    return tuple(names)


def _all_below(words: bytes, bits: int, order: str) -> bool:
    """Whether every native-endian 32-bit word of ``words`` is below ``2**bits``, byte column by byte column."""
    for j in range(4):
        column = words[(j if order == "little" else 3 - j)::4]
        lowest = 8 * j  # the bit that byte j starts at
        if bits <= lowest:
            if column.count(0) != len(column):
                return False
        elif bits < lowest + 8 and column.translate(None, bytes(range(1 << (bits - lowest)))):
            return False
    return True


def decode_symbol_table(elf: ElfFile) -> SymbolTable:
    """Decode every dynamic symbol of ``elf`` with its version, as :class:`SymbolColumns`.

    The table is decoded column by column (array slicing, C-level ``map``, ``itemgetter`` and one pass over
    DT_STRTAB), not row by row; the :class:`Symbol` tuples are built only when :attr:`SymbolTable.symbols` is
    first used.
    """
    dyn = elf.dynamic
    tags = dyn.tags
    if C.DT_SYMTAB not in tags:
        return SymbolTable(SymbolColumns.empty(), False)
    lay = elf.layout
    entsize = tags.get(C.DT_SYMENT, lay.sym.size)
    if entsize != lay.sym.size:
        raise ElfError(elf.path, f"DT_SYMENT is {entsize}, expected {lay.sym.size}")
    count = symbol_count(elf)
    has_versym = C.DT_VERSYM in tags
    if count <= 0:
        return SymbolTable(SymbolColumns.empty(), has_versym)
    if count * entsize > elf.size:
        raise ElfError(elf.path, f"symbol count {count} does not fit in the file")
    raw = elf.read_at_vaddr(tags[C.DT_SYMTAB], count * entsize, "DT_SYMTAB")
    strtab = dyn.strtab.load()
    versym: Optional[array] = None
    by_index: Dict[int, Tuple[str, Optional[str], bool]] = {}
    if has_versym:
        versym = array("H", elf.read_at_vaddr(tags[C.DT_VERSYM], 2 * count, "DT_VERSYM"))
        if lay.little != _NATIVE_LITTLE:
            versym.byteswap()
        by_index = elf.versions.by_index
    columns = _without_gc(_decode_columns, elf, raw, strtab, versym, by_index)
    return SymbolTable(columns, has_versym)


def _decode_columns(elf: ElfFile, raw: bytes, strtab: bytes, versym: Optional[array],
                    by_index: Dict[int, Tuple[str, Optional[str], bool]]) -> SymbolColumns:
    lay = elf.layout
    swap = lay.little != _NATIVE_LITTLE
    # Byte columns by strided slicing, the nibbles and bits by bytes.translate: no per-symbol Python code.
    # Elf64_Sym (24 bytes): st_name, st_info, st_other, st_shndx, st_value (8), st_size (8);
    # Elf32_Sym (16 bytes): st_name, st_value, st_size, st_info, st_other, st_shndx.
    stride, info_at, wide_code = (24, 4, "Q") if lay.is64 else (16, 12, "I")
    if swap:
        wide, words, halves = (memoryview(_swapped(code, raw)).toreadonly() for code in (wide_code, "I", "H"))
    else:  # views of ``raw``, no copy
        view = memoryview(raw)
        wide, words, halves = view.cast(wide_code), view.cast("I"), view.cast("H")
    per = stride // wide.itemsize
    st_name, values, sizes = words[0::stride // 4], wide[1::per], wide[2::per]
    infos, others = raw[info_at::stride], raw[info_at + 1::stride]
    shndx = halves[(info_at + 2) // 2::stride // 2]
    names = _names(elf.path, strtab, st_name)
    return SymbolColumns(names, values, sizes, infos.translate(_LOW_NIBBLE), infos.translate(_HIGH_NIBBLE),
                         others.translate(_VISIBILITY), shndx, versym, by_index)


def _swapped(code: str, raw: bytes) -> array:
    a = array(code, raw)
    a.byteswap()
    return a


_LOW_NIBBLE = bytes(i & 0xF for i in range(256))
_HIGH_NIBBLE = bytes(i >> 4 for i in range(256))
_VISIBILITY = bytes(i & 3 for i in range(256))
_LOW15 = 0x7FFF
_MAKE_SYMBOL = functools.partial(tuple.__new__, Symbol)
