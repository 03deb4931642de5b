"""One object's side of symbol binding: the references its relocations make (``resolve_map`` with
``l_lookup_cache``, the version each asks for) and whether it accepts a reference (``do_lookup_x`` over its
hash chain, ``check_match``). :mod:`soswap.loader.binding` runs these over a program's global scope.
"""

from __future__ import annotations

import sys
from array import array
from itertools import compress, repeat
from operator import and_, itemgetter, lshift, ne, or_, rshift
from typing import Dict, List, Mapping, Optional, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.elf.relocs import KIND_COPY, KIND_NONE, KIND_PLT, KIND_RELATIVE, KIND_TLS, RELOCATION_KINDS
from soswap.errors import ElfError
from soswap.loader.model import Reference, VersionRef
from soswap.loader.symtab import NameHashes, RawSymbols, Sym, relocation_infos
from soswap.tuples import NamedTuple

__all__ = ["CLASS_COPY", "CLASS_PLT", "ObjectSymbols", "RefTable", "Reference", "VersionRef"]

# ELF_RTYPE_CLASS_*
CLASS_PLT = 1
CLASS_COPY = 2

_ALLOWED_TYPES = frozenset((C.STT_NOTYPE, C.STT_OBJECT, C.STT_FUNC, C.STT_COMMON, C.STT_TLS, C.STT_GNU_IFUNC))

#: x86_64 relocation types resolved with ELF_RTYPE_CLASS_PLT (elf_machine_type_class).
_X86_64_PLT_CLASS = frozenset((7, 16, 17, 18, 36))  # JUMP_SLOT, DTPMOD64, DTPOFF64, TPOFF64, TLSDESC
_X86_64_COPY = 5
_X86_64_GLOB_DAT = 6
_386_GLOB_DAT = 6
#: ELF_RTYPE_CLASS_EXTERN_PROTECTED_DATA (x86, glibc < 2.36): no PLT or copy bit, a key of its own
CLASS_EXTERN_PROTECTED_DATA = 4
_X86_64_TLSDESC = 36
#: Relocations that place their symbol in static TLS: R_X86_64_TPOFF64 (CHECK_STATIC_TLS) and R_X86_64_TLSDESC
#: (TRY_STATIC_TLS, at load time since glibc 2.34); R_386_TLS_TPOFF, R_386_TLS_TPOFF32, R_386_TLS_DESC
_STATIC_TLS_TYPES = {C.EM_X86_64: frozenset((18, 36)), C.EM_386: frozenset((14, 37, 41))}



#: st_info >> 4 values do_lookup_x binds to: STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE
_BINDING_TYPES = frozenset((C.STB_GLOBAL, C.STB_WEAK, C.STB_GNU_UNIQUE))
#: byte -> 1 where st_other is hidden or internal; where st_info's binding is STB_LOCAL, STB_WEAK, or none of
#: STB_LOCAL and _BINDING_TYPES
_BAD_VIS = bytes(1 if b & 3 in (C.STV_INTERNAL, C.STV_HIDDEN) else 0 for b in range(256))
_LOCAL_BINDING = bytes(1 if b >> 4 == C.STB_LOCAL else 0 for b in range(256))
_WEAK_BINDING = bytes(1 if b >> 4 == C.STB_WEAK else 0 for b in range(256))
_ODD_BINDING = bytes(0 if b >> 4 in _BINDING_TYPES or b >> 4 == C.STB_LOCAL else 1 for b in range(256))


def _find_all(data: bytes, value: int) -> List[int]:
    """Every position of byte ``value`` in ``data`` (bytes.find at C speed between hits)."""
    out = []
    at = data.find(value)
    while at >= 0:
        out.append(at)
        at = data.find(value, at + 1)
    return out


_NATIVE_LITTLE = sys.byteorder == "little"
_FIRST = itemgetter(0)
_SECOND = itemgetter(1)


def _codes64(infos: array, get, dflt: int, nolazy: Optional[frozenset]) -> List[int]:  # type: ignore[no-untyped-def]
    """The codes (symbol << 4 | type class << 1 | lazy slot) of the ELFCLASS64 ``r_info`` words ``infos`` (native
    order, on a little-endian host), dropping the types that make no lookup; ``nolazy``: in DT_JMPREL, the
    types never bound lazily (None elsewhere). A table holds few distinct types: their codes are found once,
    and the words are split and combined at C speed."""
    words = array("I", infos.tobytes())  # each r_info as (type, symbol) on a little-endian host
    types, syms = words[0::2], words[1::2]
    kinds = set(types)
    code_of = {}
    for t in kinds:
        tc = get(t, dflt)
        if tc >= 0:
            code_of[t] = tc << 1 | (nolazy is not None and t not in nolazy)
    shifted = map(lshift, syms, repeat(4))
    if len(code_of) < len(kinds):  # some relocations make no lookup
        return [s << 4 | code_of[t] for t, s in zip(types, syms) if t in code_of]
    if len(kinds) == 1:
        return list(map(or_, shifted, repeat(code_of[types[0]])))
    return list(map(or_, shifted, map(code_of.__getitem__, types)))


class RefTable(NamedTuple):
    """The references of one object as columns (what binding loops over; :class:`Reference` values are
    built from it on demand): position ``n`` is a lookup of ``keys[n]`` by symbol ``symbols[n]``."""

    keys: List[Tuple[bytes, Optional[Tuple[str, int, bool]], int]]
    symbols: List[int]
    lazy: List[bool]
    #: symbol index -> (name, VersionRef or None, version key, weak)
    meta: Dict[int, tuple]
    #: The files named by the versions of these references.
    version_files: frozenset


class _Skip:
    """``do_lookup_x`` found the name but the definition is hidden/local: go on with the next object."""


class _Weak(NamedTuple):
    """A weak definition under LD_DYNAMIC_WEAK: used only if no strong one follows."""

    sym: Sym


class _NoVersions(NamedTuple):
    """Accepted because the object has no symbol versioning, for a versioned reference (the pre-2.41
    assertion checks the reference's file name at this point)."""

    sym: Sym


_SKIP = _Skip()
_MISSING = object()

# What _find says about one object (do_lookup_x in that object alone), with the symbol index.
FOUND_NONE = 0  # no acceptable candidate
FOUND_SKIP = 1  # found, but hidden/internal or local: the next object is tried
FOUND_STRONG = 2
FOUND_WEAK = 3
FOUND_NOVERSIONS = 4  # accepted because the object has no versioning (see _NoVersions)


def reference_problem(elf: ElfFile) -> Optional[str]:
    """Why the references of ``elf`` cannot be decoded (its symbol table, or a relocation naming a symbol past
    it: ``tree -r`` reports the object as not checked), or None. ``_dl_relocate_object`` indexes the symbol
    table by each relocation's symbol without a bound: what ld.so makes of such a file is not known."""
    if not (elf.is_dynamic and C.DT_SYMTAB in elf.dynamic.tags):
        return None
    try:
        ObjectSymbols(elf, NameHashes()).table()
    except ElfError as exc:
        return exc.problem
    return None


class ObjectSymbols:
    """What binding needs from one ELF file, decoded once and kept by the :class:`Loader`."""

    def __init__(self, elf: ElfFile, hashes: NameHashes, extern_protected_data: bool = False,
                 null_versyms: bool = False) -> None:
        self.elf = elf
        self.hashes = hashes
        #: glibc < 2.36 on x86: GLOB_DAT is ELF_RTYPE_CLASS_EXTERN_PROTECTED_DATA (see _type_classes)
        self.extern_protected_data = extern_protected_data
        self.raw = RawSymbols(elf)
        self.has_hash = self.raw.has_hash
        #: the GNU hashes of its names (RawSymbols.hash_words), None without DT_GNU_HASH
        self.words = self.raw.hash_words
        tags = elf.dynamic.tags
        self.versions: Dict[int, Tuple[int, str, bool, Optional[str]]] = {}
        ndx_high = 0
        needs = elf.version_needs
        defs = elf.version_definitions
        self.need_indexes: Tuple[Tuple[str, int], ...] = tuple((need.file, e.index) for need in needs
                                                               for e in need.entries)
        self.def_high = max((d.index for d in defs), default=0)
        for need in needs:
            for e in need.entries:
                ndx_high = max(ndx_high, e.index)
                self.versions[e.index] = (e.hash, e.name, e.hidden, need.file)
        for d in defs:
            ndx_high = max(ndx_high, d.index)
            if not d.is_base:
                self.versions[d.index] = (d.hash, d.name, False, None)
        # _dl_check_map_versions: l_versyms is set only when some version index exists, and only for an object
        # the version check reaches (``null_versyms``: one linked before the main map, or in trace mode one whose
        # versions all come from missing objects): check_match then takes it as an object without versioning
        self.has_versyms = (not null_versyms and ndx_high > 0 and C.DT_VERSYM in tags
                            and self.raw.versym is not None)
        self.has_verdef = C.DT_VERDEF in tags
        self.verdefs = frozenset((d.hash, d.name) for d in defs)
        self.bind_now = elf.dynamic.bind_now
        self.symbolic = elf.dynamic.symbolic
        self.ndx_high = ndx_high
        self._tables: Dict[object, RefTable] = {}
        self._refs: Dict[object, Tuple[Reference, ...]] = {}
        self._static_tls: Optional[Tuple[int, ...]] = None
        self._static_tls_at: Dict[int, Tuple[int, ...]] = {}
        self._foreign: Dict[int, Tuple[int, ...]] = {}
        self._checked: Dict[int, Tuple[int, ...]] = {}
        self._shadowing: Optional[frozenset] = None
        self._locals: Optional[frozenset] = None
        #: key -> FOUND_* code and symbol index; key -> the value accept() returns
        self._found: Dict[tuple, Tuple[int, int]] = {}
        self._accept: Dict[tuple, object] = {}

    # -- the reference side ----------------------------------------------------------------------------

    def version_ref(self, sym: Sym) -> Optional[VersionRef]:
        """``resolve_map``: the version of a reference, only when its hash is set."""
        return self._version_ref_index(sym.version_index, self.ndx_high)

    def version_limit(self, missing: frozenset) -> int:
        """``l_nversions - 1`` when the objects named ``missing`` were not found (trace mode): the indexes of
        versions needed from them do not count (``_dl_check_map_versions`` skips faked objects), so references
        with a higher index look up unversioned."""
        if not missing:
            return self.ndx_high
        high = self.def_high
        for file, index in self.need_indexes:
            if file not in missing and index > high:
                high = index
        return high

    @property
    def version_files(self) -> frozenset:
        """The files named by the versions of :meth:`references` (no version limit)."""
        return self.table().version_files

    def references(self, limit: Optional[int] = None,
                   beyond: Optional[Mapping[int, Optional[VersionRef]]] = None) -> Tuple[Reference, ...]:
        """The lookups of ``_dl_relocate_object`` with immediate binding, in order, consecutive lookups of the
        same symbol and class collapsed (``l_lookup_cache``). ``limit``, ``beyond``: see :meth:`table`."""
        key = self._table_key(limit, beyond)
        hit = self._refs.get(key)
        if hit is None:
            t = self.table(limit, beyond)
            hit = self._refs[key] = tuple(self.reference(t, n) for n in range(len(t.keys)))
        return hit

    @staticmethod
    def reference(t: RefTable, n: int) -> Reference:
        """Position ``n`` of table ``t`` as a :class:`Reference`."""
        key = t.keys[n]
        symidx = t.symbols[n]
        meta = t.meta[symidx]
        return Reference(key, symidx, meta[1], t.lazy[n], key[2] == CLASS_COPY, meta[3])

    def table(self, limit: Optional[int] = None,
              beyond: Optional[Mapping[int, Optional[VersionRef]]] = None) -> RefTable:
        """:meth:`references` as a :class:`RefTable` (decoded once per version limit). ``limit``: see
        :meth:`version_limit`; ``beyond``: the version a reference with an index above it reads past the end of
        ``l_versions`` (trace mode; None: no version), by index."""
        key = self._table_key(limit, beyond)
        t = self._tables.get(key)
        if t is None:
            t = self._tables[key] = self._decode_table(self.ndx_high if limit is None else limit, beyond)
        return t

    def _table_key(self, limit: Optional[int], beyond: Optional[Mapping[int, Optional[VersionRef]]]) -> object:
        lim = self.ndx_high if limit is None else limit
        return (lim, tuple(sorted(beyond.items()))) if beyond else lim

    def _decode_table(self, limit: int, beyond: Optional[Mapping[int, Optional[VersionRef]]] = None) -> RefTable:
        elf = self.elf
        raw = self.raw
        count = raw.count
        # Each relocation that names a symbol becomes symbol << 4 | type class << 1 | lazy slot, in
        # _ELF_DYNAMIC_DO_RELOC order; relocation types that make no lookup are dropped.
        seq: List[int] = []
        tcmap, default_tc, nolazy = _type_classes(elf.machine, self.extern_protected_data)
        shift, mask = (32, 0xFFFFFFFF) if raw.is64 else (8, 0xFF)
        # static TLS relocations name global or weak STT_TLS symbols (st_info 0x16, 0x26): most objects have none
        tls_types = (_STATIC_TLS_TYPES.get(elf.machine) if self._static_tls is None
                     and (b"\x16" in raw.info or b"\x26" in raw.info) else None)
        tls: List[int] = []
        for infos, in_jmprel in relocation_infos(elf):
            get = tcmap[in_jmprel].get
            dflt = default_tc[in_jmprel]
            if raw.is64 and _NATIVE_LITTLE:
                seq += _codes64(infos, get, dflt, nolazy if in_jmprel else None)
            elif in_jmprel:
                seq += [(i >> shift) << 4 | tc << 1 | ((i & mask) not in nolazy)
                        for i in infos if (tc := get(i & mask, dflt)) >= 0]
            else:
                seq += [(i >> shift) << 4 | tc << 1 for i in infos if (tc := get(i & mask, dflt)) >= 0]
            if tls_types:  # TPOFF in DT_RELA, TLSDESC in either table
                tls += [i >> shift for i in infos if i & mask in tls_types]
        if self._static_tls is None:
            self._static_tls = tuple(dict.fromkeys(tls))
        used = set(map(rshift, seq, repeat(4)))
        if used and max(used) >= count:
            bad = next(c >> 4 for c in seq if c >> 4 >= count)
            raise ElfError(elf.path, f"relocation names symbol {bad} of {count}")
        # resolve_map: a local or hidden symbol binds to the object itself (no lookup, the lookup cache
        # is not touched); the others are looked up by name and version
        strtab, versym, name_off, infos_col = raw.strtab, raw.versym, raw.name_off, raw.info
        # the columns are made by map and zip, at C speed: a library has tens of thousands of rows
        local_syms = self._local_symbols().intersection(used)
        has_local = bool(local_syms)
        ul = list(used - local_syms) if has_local else list(used)
        offsets = list(map(name_off.__getitem__, ul))
        if not (strtab and strtab[-1] == 0):  # a last name without its NUL ends at the end of the table
            strtab = strtab + b"\0"
        ends = map(strtab.find, repeat(b"\0"), offsets)
        names = list(map(strtab.__getitem__, map(slice, offsets, ends)))
        ndxs = list(map(versym.__getitem__, ul)) if versym is not None else [0] * len(ul)  # the hidden bit too
        vmap: Dict[int, tuple] = {}
        for ndx in set(ndxs):
            v = self._version_ref_index(ndx & 0x7FFF, limit)
            if beyond and (ndx & 0x7FFF) > limit:
                v = beyond.get(ndx & 0x7FFF)
            vmap[ndx] = (v, (v.name, v.hash, v.hidden) if v is not None else None)
        refs = list(map(vmap.__getitem__, ndxs))
        vkeys = list(map(_SECOND, refs))
        weak = list(map(bool, map(infos_col.translate(_WEAK_BINDING).__getitem__, ul)))
        meta: Dict[int, Optional[tuple]] = dict(zip(ul, zip(names, map(_FIRST, refs), vkeys, weak)))
        for i in local_syms:
            meta[i] = None
        if has_local:
            seq = [c for c in seq if meta[c >> 4] is not None]
        # l_lookup_cache: a lookup of the same symbol and class as the one before is not made again
        halves = list(map(rshift, seq, repeat(1)))
        codes = list(compress(seq, map(ne, halves, [-1, *halves])))
        symbols = list(map(rshift, codes, repeat(4)))
        name_of = dict(zip(ul, names)).__getitem__
        vkey_of = dict(zip(ul, vkeys)).__getitem__
        keys = list(zip(map(name_of, symbols), map(vkey_of, symbols),
                        map(and_, map(rshift, codes, repeat(1)), repeat(7))))
        lazies = list(map(bool, map(and_, codes, repeat(1))))
        # every symbol with a meta entry made at least one reference (its first one is never collapsed)
        files = frozenset(v.filename for v, _vkey in vmap.values() if v is not None and v.filename is not None)
        return RefTable(keys, symbols, lazies, meta, files)  # type: ignore[arg-type]

    def foreign_positions(self, t: RefTable) -> Tuple[int, ...]:
        """The positions of ``t`` (a table of this object) that need a lookup in the scope to be known
        resolvable: all but the references through a definition of this object itself.

        Such a reference is resolvable wherever this object's references are resolved: the object is in its own
        scope, and ``check_match`` accepts the definition for the version the reference takes from the same
        DT_VERSYM entry. Taken as such without a walk of the hash table: a definition the object's GNU or SysV
        hash table places in its chain area (linkers hash every defined dynamic symbol; a file whose table
        disagrees with its own symbols is not modelled). Kept when a local or hidden symbol of the same name
        could come first in the chain (``do_lookup_x`` would skip the object), and for copy relocations (their
        lookup skips the executable)."""
        hit = self._foreign.get(id(t))
        if hit is None:
            hit = self._foreign[id(t)] = self._foreign_positions(t)
        return hit

    def _foreign_positions(self, t: RefTable) -> Tuple[int, ...]:
        raw = self.raw
        if raw.gnu is not None:
            low, high = raw.gnu[1], raw.gnu[1] + len(raw.gnu[6])
        elif raw.sysv is not None:
            low, high = 1, min(len(raw.sysv[1]), raw.count)
        else:
            return tuple(range(len(t.keys)))
        infos, shndxs, values, versym = raw.info, raw.shndx, raw.value, raw.versym
        hashed_versions = self.has_versyms
        shadowed = self._shadowing_names()
        own = set()
        for i, m in t.meta.items():
            if m is None or not low <= i < high:
                continue
            shndx, st_info = shndxs[i], infos[i]
            stt = st_info & 0xF
            # do_lookup_x's filters; check_match's version test passes for the version the reference takes
            # from the same DT_VERSYM entry, unless it is a lookup without version of a non-default version
            if shndx == C.SHN_UNDEF or (values[i] == 0 and shndx != C.SHN_ABS and stt != C.STT_TLS):
                continue
            if stt not in _ALLOWED_TYPES or st_info >> 4 not in _BINDING_TYPES:
                continue
            v = m[1]
            if v is None and hashed_versions and versym[i] & 0x7FFF >= 3:
                continue  # unversioned lookup of a non-default version: not taken at once
            if shadowed and m[0] in shadowed:
                continue
            own.add(i)
        if not own:
            return tuple(range(len(t.keys)))
        keys = t.keys
        return tuple(n for n, i in enumerate(t.symbols) if i not in own or keys[n][2] == CLASS_COPY)

    def program_positions(self, t: RefTable) -> Tuple[int, ...]:
        """Positions of ``t`` (a table of this object, the program) that ld.so checks beyond the lookup: its copy
        relocations and its PLT-class references through a symbol with a nonzero ``st_value`` and ``SHN_UNDEF``
        (a canonical function address: ``_dl_check_protected_symbol``)."""
        hit = self._checked.get(id(t))
        if hit is None:
            values, shndxs = self.raw.value, self.raw.shndx
            symbols = t.symbols
            hit = self._checked[id(t)] = tuple(
                n for n, k in enumerate(t.keys)
                if k[2] == CLASS_COPY or (k[2] & CLASS_PLT and values[symbols[n]] != 0
                                          and shndxs[symbols[n]] == C.SHN_UNDEF))  # t lives in self._tables
        return hit

    def _local_symbols(self) -> frozenset:
        """Indexes of the symbols ``resolve_map`` binds to the object itself without a lookup: local binding,
        hidden or internal visibility."""
        if self._locals is None:
            raw = self.raw
            self._locals = frozenset(_find_all(raw.info.translate(_LOCAL_BINDING), 1)).union(
                _find_all(raw.other.translate(_BAD_VIS), 1))
        return self._locals

    def _shadowing_names(self) -> frozenset:
        """Names of symbols ``do_lookup_x`` finds and then skips (local binding, hidden or internal
        visibility, an unknown binding): where one comes first in a chain, the object does not define the
        name for the lookup. Linkers leave none with a name in .dynsym, so this is nearly always empty."""
        if self._shadowing is None:
            raw = self.raw
            marks = self._local_symbols().union(_find_all(raw.info.translate(_ODD_BINDING), 1))
            strtab, name_off = raw.strtab, raw.name_off
            names = set()
            for i in marks:
                o = name_off[i]
                if o:
                    end = strtab.find(b"\0", o)
                    names.add(strtab[o:end if end >= 0 else len(strtab)])
            self._shadowing = frozenset(names)
        return self._shadowing

    def static_tls_positions(self, t: RefTable) -> Tuple[int, ...]:
        """The positions in ``t`` (a table of this object) of the first lookup of each symbol its relocations
        place in static TLS (:data:`_STATIC_TLS_TYPES`); local symbols, the object's own TLS, make none."""
        hit = self._static_tls_at.get(id(t))
        if hit is None:
            wanted = set(self._static_tls or ())
            first: Dict[int, int] = {}
            if wanted:
                for n, sym in enumerate(t.symbols):
                    if sym in wanted and sym not in first:
                        first[sym] = n
            hit = self._static_tls_at[id(t)] = tuple(first.values())  # t lives in self._tables: its id stays
        return hit

    def _version_ref_index(self, ndx: int, limit: int) -> Optional[VersionRef]:
        if not self.has_versyms or ndx > limit or limit == 0:
            return None
        v = self.versions.get(ndx)
        if v is None or v[0] == 0:
            return None
        return VersionRef(v[1], v[0], v[2], v[3])

    # -- the definition side: check_match over this object's hash chain --------------------------------

    def accepts(self, key: tuple) -> bool:
        """Whether ``do_lookup_x`` in this object alone binds a lookup of ``key`` (:attr:`Reference.key`): a
        strong or weak definition, or any under the no-versioning rule."""
        hit = self._found.get(key)
        if hit is None:
            hit = self._found[key] = self._lookup(key)
        return hit[0] >= FOUND_STRONG

    def _lookup(self, key: tuple) -> Tuple[int, int]:
        raw = self.raw
        words = raw.hash_words
        if words is not None:
            h = self.hashes.gnu(key[0])
            if h | 1 not in words:
                return _NONE
            return self._find(key[0], key[1], key[2], h)
        return self._find(key[0], key[1], key[2], None)

    def accept(self, ref: Reference) -> object:
        """``do_lookup_x`` in this object alone: a ``Sym``, ``_Weak``, ``_NoVersions``, ``_SKIP`` or None."""
        key = ref.key
        hit = self._accept.get(key, _MISSING)
        if hit is _MISSING:
            found = self._found.get(key)
            if found is None:
                found = self._found[key] = self._lookup(key)
            code, idx = found
            if code == FOUND_NONE:
                hit = None
            elif code == FOUND_SKIP:
                hit = _SKIP
            else:
                sym = self.raw.sym(idx)
                hit = sym if code == FOUND_STRONG else (_Weak(sym) if code == FOUND_WEAK else _NoVersions(sym))
            self._accept[key] = hit
        return hit

    def _find(self, name: bytes, version: Optional[Tuple[str, int, bool]], tc: int,
              h: Optional[int]) -> Tuple[int, int]:
        """``do_lookup_x`` and ``check_match`` over this object's candidates for ``name`` (in hash-chain
        order, stopping at the first match); ``version`` is (name, hash, hidden) of the reference's version,
        or None; ``h`` the name's GNU hash if the caller has it."""
        raw = self.raw
        num_versions = 0
        versioned = -1
        found = -1
        nover = False
        infos, shndxs, values, versym = raw.info, raw.shndx, raw.value, raw.versym
        has_versyms = self.has_versyms
        versions = self.versions
        for idx in raw.candidates(name, self.hashes, h):  # do_lookup_x's DT_GNU_HASH/DT_HASH walk
            st_info, shndx = infos[idx], shndxs[idx]
            stt = st_info & 0xF
            if (values[idx] == 0 and shndx != C.SHN_ABS and stt != C.STT_TLS) or (tc & CLASS_PLT and shndx == 0):
                continue
            if stt not in _ALLOWED_TYPES:
                continue
            vs = versym[idx] if versym is not None else 0
            if version is not None:
                if not has_versyms:
                    nover = True
                else:
                    mine = versions.get(vs & 0x7FFF)
                    hv, n = (mine[0], mine[1]) if mine is not None else (0, None)
                    if (hv != version[1] or n != version[0]) and (version[2] or hv or vs & 0x8000):
                        continue
            elif has_versyms and (vs & 0x7FFF) >= 3:
                if not vs & 0x8000:
                    num_versions += 1
                    if num_versions == 1:
                        versioned = idx
                continue
            found = idx
            break
        if found < 0 and num_versions == 1:
            found = versioned
        if found < 0:
            return _NONE
        if raw.other[found] & 3 in (C.STV_HIDDEN, C.STV_INTERNAL):
            return (FOUND_SKIP, found)
        bind = infos[found] >> 4
        if bind not in (C.STB_GLOBAL, C.STB_WEAK, C.STB_GNU_UNIQUE):
            return (FOUND_SKIP, found)  # STB_LOCAL: ignored
        if nover:
            return (FOUND_NOVERSIONS, found)
        if bind == C.STB_WEAK:
            return (FOUND_WEAK, found)
        return (FOUND_STRONG, found)


_NONE = (FOUND_NONE, -1)


#: machine -> ({in DT_JMPREL: {relocation type: type class, -1 = no lookup}}, {in DT_JMPREL: class of an
#: unknown type}, types never lazy in DT_JMPREL)
_CLASSES: Dict[Tuple[int, bool], Tuple[Dict[bool, Dict[int, int]], Dict[bool, int], frozenset]] = {}


def _type_classes(machine: int, extern_protected_data: bool = False
                  ) -> Tuple[Dict[bool, Dict[int, int]], Dict[bool, int], frozenset]:
    """How ``elf_machine_type_class`` classes each relocation type of ``machine``, and which lookups
    ``elf_machine_lazy_rel`` leaves for the first call. ``extern_protected_data``: glibc before 2.36 on x86,
    where GLOB_DAT is ``ELF_RTYPE_CLASS_EXTERN_PROTECTED_DATA`` (4): a GLOB_DAT and an absolute relocation
    of the same symbol are two lookups for ``resolve_map``'s cache (and ``ldd -r`` reports a missing symbol
    for each)."""
    key = (machine, extern_protected_data)
    hit = _CLASSES.get(key)
    if hit is not None:
        return hit
    if machine == C.EM_X86_64:
        # RELATIVE and NONE make no lookup; JUMP_SLOT, DTPMOD64, DTPOFF64, TPOFF64, TLSDESC are PLT class
        table = {8: -1, 0: -1, _X86_64_COPY: CLASS_COPY}
        table.update({t: CLASS_PLT for t in _X86_64_PLT_CLASS})
        if extern_protected_data:
            table[_X86_64_GLOB_DAT] = CLASS_EXTERN_PROTECTED_DATA
        hit = ({False: table, True: table}, {False: 0, True: 0}, frozenset((_X86_64_TLSDESC,)))
    else:
        kinds = RELOCATION_KINDS.get(machine, {})
        table = {}
        for t, kind in kinds.items():
            if kind in (KIND_NONE, KIND_RELATIVE):
                table[t] = -1
            else:
                table[t] = CLASS_PLT if kind in (KIND_PLT, KIND_TLS) else (CLASS_COPY if kind == KIND_COPY else 0)
        if extern_protected_data and machine == C.EM_386:
            table[_386_GLOB_DAT] = CLASS_EXTERN_PROTECTED_DATA
        # an unknown type counts as a PLT slot in DT_JMPREL and as data elsewhere
        hit = ({False: table, True: table}, {False: 0, True: CLASS_PLT}, frozenset())
    _CLASSES[key] = hit
    return hit
