"""One object's side of symbol binding: the references its relocations make (``resolve_map`` with
``l_lookup_cache``, the version each asks for) and whether it accepts a reference (``do_lookup_x`` over its
hash chain, ``check_match``). :mod:`soswap.loader.binding` runs these over a program's global scope.
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.elf.relocs import KIND_COPY, KIND_NONE, KIND_PLT, KIND_RELATIVE, KIND_TLS, RELOCATION_KINDS
from soswap.errors import ElfError
from soswap.loader.symtab import NameHashes, RawSymbols, Sym, relocation_ranges

# ELF_RTYPE_CLASS_*
CLASS_PLT = 1
CLASS_COPY = 2

_ALLOWED_TYPES = frozenset((C.STT_NOTYPE, C.STT_OBJECT, C.STT_FUNC, C.STT_COMMON, C.STT_TLS, C.STT_GNU_IFUNC))

#: x86_64 relocation types resolved with ELF_RTYPE_CLASS_PLT (elf_machine_type_class).
_X86_64_PLT_CLASS = frozenset((7, 16, 17, 18, 36))  # JUMP_SLOT, DTPMOD64, DTPOFF64, TPOFF64, TLSDESC
_X86_64_COPY = 5
_X86_64_TLSDESC = 36

ASSERTION_TEXT = ("Inconsistency detected by ld.so: dl-lookup.c: 107: check_match: Assertion `version->filename "
                  "== NULL || ! _dl_name_match_p (version->filename, map)' failed!")


class VersionRef(NamedTuple):
    """A ``struct r_found_version`` a reference asks for."""

    name: str
    hash: int
    hidden: bool
    filename: Optional[str]


class Reference(NamedTuple):
    """One symbol lookup a relocation triggers (after ``l_lookup_cache`` collapsing)."""

    #: (name, (version name, hash, hidden) or None, type class): what the lookup depends on.
    key: Tuple[str, Optional[Tuple[str, int, bool]], int]
    symbol_index: int
    version: Optional[VersionRef]
    #: A DT_JMPREL slot that lazy binding leaves for the first call (``elf_machine_lazy_rel``).
    lazy: bool
    copy: bool
    weak: bool

    @property
    def name(self) -> str:
        return self.key[0]

    @property
    def type_class(self) -> int:
        return self.key[2]


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


class ObjectSymbols:
    """What binding needs from one ELF file, decoded once and kept by the :class:`Loader`."""

    def __init__(self, elf: ElfFile, hashes: NameHashes) -> None:
        self.elf = elf
        self.hashes = hashes
        self.raw = RawSymbols(elf)
        self.has_hash = self.raw.has_hash
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
        # _dl_check_map_versions: l_versyms is set only when some version index exists
        self.has_versyms = ndx_high > 0 and C.DT_VERSYM in tags and self.raw.versym is not None
        self.has_verdef = C.DT_VERDEF in tags
        self.verdefs = frozenset((d.hash, d.name) for d in defs)
        self.bind_now = elf.dynamic.bind_now
        self.symbolic = C.DT_SYMBOLIC in tags or bool(elf.dynamic.flags & 0x2)
        self.ndx_high = ndx_high
        self._refs_by_limit: Dict[int, Tuple[Reference, ...]] = {}
        self._refs: Optional[Tuple[Reference, ...]] = None
        self._vcache: Dict[int, tuple] = {}
        self._limit = ndx_high
        self.version_files: frozenset = frozenset()
        self._accept: Dict[Tuple[str, Optional[Tuple[str, int, bool]], int], object] = {}

    # -- the reference side ----------------------------------------------------------------------------

    def version_ref(self, sym: Sym) -> Optional[VersionRef]:
        """``resolve_map``: the version of a reference, only when its hash is set."""
        return self._version_ref_index(sym.version_index)

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

    def references(self, limit: Optional[int] = None) -> Tuple[Reference, ...]:
        """The lookups of ``_dl_relocate_object`` with immediate binding, in order, consecutive lookups of the
        same symbol and class collapsed (``l_lookup_cache``). ``limit``: see :meth:`version_limit`."""
        if limit is not None and limit != self.ndx_high:
            hit = self._refs_by_limit.get(limit)
            if hit is None:
                saved = (self._refs, self._vcache, self._limit, self.version_files)
                self._refs, self._vcache, self._limit = None, {}, limit
                try:
                    hit = self._refs_by_limit[limit] = self.references()
                finally:
                    self._refs, self._vcache, self._limit, self.version_files = saved
            return hit
        if self._refs is not None:
            return self._refs
        out: List[Reference] = []
        machine = self.elf.machine
        kinds = RELOCATION_KINDS.get(machine, {})
        last_sym, last_tc = -1, -1
        raw = self.raw
        count = raw.count
        info: Dict[int, Optional[tuple]] = {}
        x86_64 = machine == C.EM_X86_64
        plt_class, x_copy, x_tlsdesc = _X86_64_PLT_CLASS, _X86_64_COPY, _X86_64_TLSDESC
        append = out.append
        for pairs, in_jmprel in relocation_ranges(self.elf):
            for symidx, rtype in pairs:
                if x86_64:
                    if rtype == 8 or rtype == 0:  # RELATIVE, NONE: no lookup
                        continue
                    tc = 1 if rtype in plt_class else (2 if rtype == x_copy else 0)
                    lazy_slot = in_jmprel and rtype != x_tlsdesc
                else:
                    kind = kinds.get(rtype, KIND_PLT if in_jmprel else "data")
                    if kind in (KIND_NONE, KIND_RELATIVE):
                        continue
                    tc = CLASS_PLT if kind in (KIND_PLT, KIND_TLS) else (CLASS_COPY if kind == KIND_COPY else 0)
                    lazy_slot = in_jmprel
                if symidx == last_sym and tc == last_tc:
                    continue
                if symidx in info:
                    meta = info[symidx]
                else:
                    if symidx >= count:
                        raise ElfError(self.elf.path, f"relocation names symbol {symidx} of {count}")
                    meta = info[symidx] = self._ref_meta(symidx)
                if meta is None:
                    continue  # resolve_map: binds to the object itself, the lookup cache is not touched
                last_sym, last_tc = symidx, tc
                append(Reference((meta[0], meta[2], tc), symidx, meta[1], lazy_slot, tc == 2, meta[3]))
        self._refs = tuple(out)
        self.version_files = frozenset(r.version.filename for r in out if r.version is not None)
        return self._refs

    def _ref_meta(self, symidx: int) -> Optional[tuple]:
        """(name, VersionRef, version key, weak) of a referenced symbol; None if it binds locally."""
        raw = self.raw
        f = raw.row.unpack_from(raw.raw, symidx * raw.row.size)
        st_name, st_info, st_other = (f[0], f[1], f[2]) if raw.is64 else (f[0], f[3], f[4])
        bind, vis = st_info >> 4, st_other & 3
        if bind == C.STB_LOCAL or vis in (C.STV_HIDDEN, C.STV_INTERNAL):
            return None
        strtab = raw.strtab
        end = strtab.find(b"\0", st_name)
        name = strtab[st_name:end if end >= 0 else len(strtab)].decode("utf-8", "surrogateescape")
        ndx = raw.versym[symidx] & 0x7FFF if raw.versym is not None else 0
        vc = self._vcache.get(ndx)
        if vc is None:
            v = self._version_ref_index(ndx)
            vc = self._vcache[ndx] = (v, (v.name, v.hash, v.hidden) if v is not None else None)
        return (name, vc[0], vc[1], bind == C.STB_WEAK)

    def _version_ref_index(self, ndx: int) -> Optional[VersionRef]:
        if not self.has_versyms or ndx > self._limit or self._limit == 0:
            return None
        v = self.versions.get(ndx)
        if v is None or v[0] == 0:
            return None
        return VersionRef(v[1], v[0], v[2], v[3])

    # -- the definition side: check_match over this object's hash chain --------------------------------

    def accept(self, ref: Reference) -> object:
        """``do_lookup_x`` in this object alone: a ``Sym``, ``_Weak``, ``_NoVersions``, ``_SKIP`` or None."""
        key = ref.key
        hit = self._accept.get(key, _MISSING)
        if hit is _MISSING:
            if self.raw.may_define(key[0], self.hashes):
                hit = self._match(key[0], ref.version, key[2])
            else:
                hit = None
            self._accept[key] = hit
        return hit

    def _match(self, name: str, version: Optional[VersionRef], tc: int) -> object:
        raw = self.raw
        num_versions = 0
        versioned = -1
        found = -1
        nover = False
        unpack = raw.row.unpack_from
        table, row, versym, is64 = raw.raw, raw.row.size, raw.versym, raw.is64
        has_versyms = self.has_versyms
        for idx in raw.candidates(name, self.hashes):
            f = unpack(table, idx * row)
            if is64:
                st_info, shndx, value = f[1], f[3], f[4]
            else:
                st_info, shndx, value = f[3], f[5], f[1]
            stt = st_info & 0xF
            if (value == 0 and shndx != C.SHN_ABS and stt != C.STT_TLS) or (tc & CLASS_PLT and shndx == 0):
                continue
            if stt not in _ALLOWED_TYPES:
                continue
            vs = versym[idx] if versym is not None else 0
            if version is not None:
                if not has_versyms:
                    nover = True
                else:
                    mine = self.versions.get(vs & 0x7FFF)
                    h, n = (mine[0], mine[1]) if mine is not None else (0, None)
                    if (h != version.hash or n != version.name) and (version.hidden or h or vs & 0x8000):
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
            return None
        sym = raw.sym(found)
        if sym.visibility in (C.STV_HIDDEN, C.STV_INTERNAL):
            return _SKIP
        if sym.bind not in (C.STB_GLOBAL, C.STB_WEAK, C.STB_GNU_UNIQUE):
            return _SKIP  # STB_LOCAL: ignored
        if nover:
            return _NoVersions(sym)
        if sym.bind == C.STB_WEAK:
            return _Weak(sym)
        return sym


def _resolved(r: object) -> bool:
    return r is not None and r is not _SKIP
