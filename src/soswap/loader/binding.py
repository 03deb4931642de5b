"""Symbol binding and the startup version check over a :class:`LoadResult`: what ``_dl_check_all_versions``
and ``_dl_relocate_object`` (``resolve_map`` → ``_dl_lookup_symbol_x`` → ``do_lookup_x`` → ``check_match``)
would report, and when (startup or first call).

Speed: a reference is *resolvable* when some object of the global scope accepts it; that does not depend on
the order of the scope, only on its members. So the answers are cached per object (``check_match`` over the
object's hash chain, per reference key), per library scope (the scope without the executable: a reference key
→ resolvable there), per (library, its dependency closure) and per (library, library scope) (the library's
unresolved references). An object is in every scope its references are resolved in, so a reference
through its own definition needs no lookup at all (:meth:`ObjectSymbols.foreign_positions`: a third of the
references of /usr/bin's libraries). The executable only ever adds definitions, so a program costs its own references
(one dictionary lookup each once its library scope is known) plus, for each library reference the libraries
leave unresolved, one lookup in the executable. A thousand programs sharing libc and a few libraries cost
little more than their own references. The order matters only for the glibc < 2.41 ``check_match`` assertion
and for copy relocations; those take the exact, ordered path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError
from soswap.loader import model as M
from soswap.loader.assertions import init_tls_assertion
from soswap.loader.candidates import init_beyond, relocation_beyond
from soswap.loader.versions import version_check

if TYPE_CHECKING:
    from soswap.loader.lookup import ObjectSymbols, Reference, RefTable, VersionRef
    from soswap.loader.symtab import NameHashes, Sym

# The relocation side (soswap.loader.lookup, soswap.loader.symtab) is imported where it is first needed: the
# version check alone (plain `soswap tree`, `ldd`) never needs it. These are its ELF_RTYPE_CLASS_COPY and
# FOUND_STRONG (a definition that binds).
CLASS_PLT = 1
CLASS_COPY = 2
FOUND_STRONG = 2
#: GNU_PROPERTY_1_NEEDED and its GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS bit (elf.h)
GNU_PROPERTY_1_NEEDED = 0xB0008000
GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS = 1
_UNSET = object()


class BindCache:
    """Everything binding keeps across loads (owned by a :class:`Loader`)."""

    def __init__(self, glibc: Tuple[int, int] = (2, 36)) -> None:
        #: the glibc version of the target (the relocation type classes depend on it)
        self.glibc = glibc
        self._hashes: Optional[NameHashes] = None
        self.objects: Dict[int, ObjectSymbols] = {}
        #: the same for objects ld.so gives no ``l_versyms`` (see :meth:`Binder.null_versyms`)
        self.unversioned: Dict[int, ObjectSymbols] = {}
        #: reference key -> an object (ObjectSymbols) that accepted it
        self.definer: Dict[Tuple[object, ...], ObjectSymbols] = {}
        #: (id of a library's RefTable, files of its dependency closure) -> positions unresolved there
        self.lib_unresolved: Dict[Tuple[int, frozenset], Tuple[int, ...]] = {}
        #: files of a library scope (the scope without the executable) -> {reference key: resolvable}
        self.scope_ok: Dict[frozenset, Dict[tuple, bool]] = {}
        #: (id of a library's RefTable, files of the library scope) -> positions unresolved there
        self.scope_unresolved: Dict[Tuple[int, frozenset], Tuple[int, ...]] = {}
        #: (library scope in order, its names, LD_DYNAMIC_WEAK, glibc) -> {copy relocation key: (definer, Sym)}
        self.copy_sources: Dict[tuple, Dict[tuple, tuple]] = {}
        #: the RefTables and scopes whose ids are used in keys, kept alive
        self._keep: Dict[int, object] = {}
        self.verdefs: Dict[int, Tuple[ElfFile, bool, frozenset]] = {}
        #: version check outcomes per (requiring file, files its needs resolve to); the file is kept alive
        self.version_outcomes: Dict[tuple, tuple] = {}
        #: id -> library LoadedObject whose version check finds nothing (shared by same-shape results)
        self.versions_clean: Dict[int, M.LoadedObject] = {}
        #: id of an ElfFile -> (the file, needs indirect extern access)
        self._indirect: Dict[int, Tuple[ElfFile, bool]] = {}
        #: id of an ElfFile -> (the file, the first DT_JMPREL type ld.so refuses to bind lazily, or None)
        self._bad_plt: Dict[int, Tuple[ElfFile, Optional[int]]] = {}

    def forget(self, elf: ElfFile) -> None:
        """Drop the symbol tables and references decoded of ``elf`` (a program whose FILE is done: nothing else
        loads it). They are decoded again if the file is met again; the other caches hold what their keys name,
        or compare identities, so none of them mistakes a new decoding for this one."""
        for table in (self.objects, self.unversioned):
            s = table.get(id(elf))
            if s is not None and s.elf is elf:
                del table[id(elf)]

    def indirect_extern_access(self, elf: Optional[ElfFile]) -> bool:
        """The object needs GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS (``l_1_needed``, from its
        PT_GNU_PROPERTY: ``_dl_process_gnu_property``)."""
        if elf is None:
            return False
        hit = self._indirect.get(id(elf))
        if hit is None or hit[0] is not elf:
            hit = self._indirect[id(elf)] = (elf, _needs_indirect_access(elf))
        return hit[1]

    def bad_plt_type(self, elf: ElfFile) -> Optional[int]:
        """:func:`soswap.elf.relocs.unexpected_plt_type` of ``elf``, once per file."""
        hit = self._bad_plt.get(id(elf))
        if hit is None or hit[0] is not elf:
            from soswap.elf.relocs import unexpected_plt_type

            hit = self._bad_plt[id(elf)] = (elf, unexpected_plt_type(elf))
        return hit[1]

    @property
    def hashes(self) -> NameHashes:
        """The GNU/SysV hashes of every name looked up so far."""
        if self._hashes is None:
            from soswap.loader.symtab import NameHashes

            self._hashes = NameHashes()
        return self._hashes

    def symbols(self, elf: ElfFile, null_versyms: bool = False) -> ObjectSymbols:
        """The :class:`ObjectSymbols` of ``elf``, decoded once; ``null_versyms``: as ld.so sees an object it
        gave no ``l_versyms`` (a separate decoding: its lookups differ)."""
        key = id(elf)
        table = self.unversioned if null_versyms else self.objects
        s = table.get(key)
        if s is None or s.elf is not elf:
            from soswap.loader.lookup import ObjectSymbols

            s = table[key] = ObjectSymbols(elf, self.hashes, self.glibc < (2, 36), null_versyms)
        return s


class Binder:
    """Binds every object of one :class:`LoadResult`."""

    def __init__(self, res: M.LoadResult, cache: BindCache) -> None:
        self.res = res
        self.cache = cache
        self.glibc = res.profile.glibc_version
        self.dynamic_weak = res.env.dynamic_weak
        objs = res.objects
        self.scope = [i for i in res.scope if objs[i].elf is not None and objs[i].found]
        self.main = res.scope[0] if res.scope else 0
        #: object index -> why its symbol tables could not be decoded
        self.sym_errors: Dict[int, str] = {}
        self._syms: Dict[int, Optional[ObjectSymbols]] = {}
        self._closure: Dict[int, frozenset] = {}
        self._prepared = False
        self._name_index: Optional[Dict[str, int]] = None
        self._arena: Optional[VersionArena] = None
        self._null: Optional[frozenset] = None

    def name_index(self) -> Dict[str, int]:
        """name -> index of the first object of the chain known by it (``find_needed``, elf/dl-version.c)."""
        index = self._name_index
        if index is None:
            index = self._name_index = {}
            for o in self.res.objects:
                index.setdefault(o.path, o.index)
                for n in o.names:
                    index.setdefault(n, o.index)
        return index

    def prepare(self) -> None:
        """Index the scope for lookups (only binding needs this; the version check does not)."""
        if self._prepared:
            return
        self._prepared = True
        objs = self.res.objects
        syms = self.syms
        #: Scope members that can define symbols (a hash table), in scope order.
        members = []
        for i in self.scope:
            s = syms(i)
            if s is not None and s.has_hash:
                members.append(i)
        self.members = tuple(members)
        self.member_set = frozenset(members)
        by_name: Dict[str, int] = {}
        for i in members:
            for n in objs[i].names:
                by_name.setdefault(n, i)
        self.by_name = by_name
        main = self.main
        #: The library scope: the members without the executable, and their files.
        self.lib_members = tuple(i for i in members if i != main)
        self.lib_member_set = frozenset(self.lib_members)
        self.lib_msyms = tuple(self._syms[i] for i in self.lib_members)
        self.lib_mset = frozenset(self.lib_msyms)
        self._index_of = {self._syms[i]: i for i in members}
        #: what a copy relocation's lookup depends on: the library scope in order, the names of its objects
        #: (the pre-2.41 assertion compares them with version needs) and the lookup rules
        self._copy_key = (self.lib_msyms, tuple((objs[i].path, objs[i].names) for i in self.lib_members),
                          self.dynamic_weak, self.glibc)
        self.lib_files = frozenset(self.file_key(i) for i in self.lib_members)
        self.main_defines = main in self.member_set
        ok = self.cache.scope_ok.get(self.lib_files)
        if ok is None:
            ok = self.cache.scope_ok[self.lib_files] = {}
            self.cache._keep[id(self.lib_files)] = self.lib_files
        self._lib_ok = ok
        # Order matters when a versioned reference names an object without symbol versioning: the
        # pre-2.41 check_match assertion fires if the scan reaches that object.
        self.unversioned_names: frozenset = frozenset()
        if self.glibc < (2, 41):
            names = set()
            for i in self.scope:
                s = syms(i)
                if s is not None and s.has_hash and not s.has_versyms:
                    o = objs[i]
                    names.add(o.path)
                    names.update(o.names)
            self.unversioned_names = frozenset(names)

    def versioned_name(self, i: int, sym: Sym) -> str:
        """``name``, ``name@V`` or ``name@@V`` of a definition in object ``i``."""
        s = self.syms(i)
        if s is None or not s.has_versyms or sym.version_index < 2:
            return sym.name
        v = s.versions.get(sym.version_index)
        if v is None:
            return sym.name
        return f"{sym.name}{'@' if sym.hidden else '@@'}{v[1]}"

    def definition(self, i: int, sym: Sym) -> M.Definition:
        """Symbol ``sym`` of object ``i`` as a public :class:`Definition`."""
        version: Optional[str] = None
        s = self.syms(i)
        if s is not None and s.has_versyms and sym.version_index >= 2:
            v = s.versions.get(sym.version_index)
            if v is not None:
                version = v[1]
        return M.Definition(i, sym.index, sym.name, version, sym.hidden and version is not None, sym.type, sym.bind,
                            sym.visibility, sym.size, sym.value, sym.shndx)

    def verdefs(self, i: int) -> Optional[Tuple[bool, frozenset]]:
        """(has DT_VERDEF, {(hash, name)}) of object ``i``, for the version check."""
        elf = self.res.objects[i].elf
        if elf is None:
            return None
        key = id(elf)
        hit = self.cache.verdefs.get(key)
        if hit is None or hit[0] is not elf:
            try:
                defs = frozenset((d.hash, d.name) for d in elf.version_definitions)
                hit = (elf, C.DT_VERDEF in elf.dynamic.tags, defs)
            except ElfError:
                hit = (elf, False, frozenset())
            self.cache.verdefs[key] = hit
        return hit[1], hit[2]

    @property
    def null_versyms(self) -> frozenset:
        """Indexes of the objects ld.so gives no ``l_versyms`` (``_dl_check_map_versions`` sets it with
        ``l_versions``, when ``l_nversions`` > 0): those linked before the main map, which
        ``_dl_check_all_versions`` never reaches, and in trace mode those that define no version and whose
        version needs all name missing (faked) objects. Their definitions match any version (``check_match``
        with a NULL ``verstab``)."""
        null = self._null
        if null is None:
            res = self.res
            found = set(res.unlisted)
            if res.trace and not all(o.found for o in res.objects):
                for o in res.objects:
                    if not o.found or o.elf is None or o.index in found:
                        continue
                    try:
                        needs, defs = o.elf.version_needs, o.elf.version_definitions
                    except ElfError:
                        continue
                    if needs and not defs and self.missing_needs(o.index) >= {n.file for n in needs}:
                        found.add(o.index)
            null = self._null = frozenset(found)
        return null

    def file_key(self, i: int) -> object:
        """Object ``i``'s file as cache keys name it: its identity, marked when ld.so sees it without
        ``l_versyms`` (its lookups differ)."""
        elf = self.res.objects[i].elf
        return (id(elf), True) if i in self.null_versyms else id(elf)

    def syms(self, i: int) -> Optional[ObjectSymbols]:
        hit = self._syms.get(i, _UNSET)
        if hit is _UNSET:
            elf = self.res.objects[i].elf
            try:
                hit = self.cache.symbols(elf, i in self.null_versyms) if elf is not None else None
            except ElfError as exc:
                hit = None
                self.sym_errors[i] = exc.problem
            self._syms[i] = hit  # type: ignore[assignment]
        return hit  # type: ignore[return-value]

    def versions_beyond(self, i: int, limit: int) -> Dict[int, Optional[M.VersionRef]]:
        """Trace mode: the version each DT_VERSYM index of object ``i`` above ``limit`` reads past the end of its
        ``l_versions`` (``elf_dynamic_do_Rela`` indexes it without a bound), by index; None where that memory
        says no version (a zero hash) or where what it holds is not known (see :class:`VersionArena`)."""
        if self._arena is None:
            self._arena = VersionArena(self)
        syms = self.syms(i)
        versym = syms.raw.versym if syms is not None else None
        if versym is None:
            return {}
        return {ndx: self._arena.read(i, ndx) for ndx in {v & 0x7FFF for v in set(versym)} if ndx > limit}

    def missing_needs(self, i: int) -> frozenset:
        """The DT_VERNEED file names of object ``i`` that resolve to a "not found" entry (trace mode)."""
        elf = self.res.objects[i].elf
        if elf is None:
            return frozenset()
        out = set()
        index = self.name_index()
        for need in elf.version_needs:
            t = index.get(need.file)
            if t is not None and not self.res.objects[t].found:
                out.add(need.file)
        return frozenset(out)

    def name_match(self, name: str, i: int) -> bool:
        o = self.res.objects[i]
        return name == o.path or name in o.names

    def resolvable(self, ref: Reference, members: Tuple[int, ...], member_set: frozenset) -> bool:
        """Some object among ``members`` (indexes into the result) accepts ``ref`` (a copy relocation never
        looks in the executable)."""
        key = ref.key
        if key[2] == CLASS_COPY and self.main in member_set:
            members = tuple(m for m in members if m != self.main)
        msyms = tuple(self._syms[i] for i in members)
        return self._scan(key, msyms, frozenset(msyms), ref.version.filename if ref.version is not None else None)

    def _scan(self, key: tuple, msyms: Tuple[ObjectSymbols, ...], mset: frozenset,
              hint: Optional[str] = None) -> bool:
        """Some object among ``msyms`` (``mset`` as a set) accepts ``key``. The object that accepted the
        same key before (anywhere) answers at once; else the one its version names (``hint``), then each
        member whose GNU hash table holds the name's hash, is asked."""
        definer = self.cache.definer
        d = definer.get(key)
        if d is not None and d in mset:
            return True
        if hint is not None:
            i = self.by_name.get(hint)
            if i is not None:
                s = self._syms.get(i)
                if s is not None and s in mset and s.accepts(key):
                    definer[key] = s
                    return True
        name = key[0]
        h = self.cache.hashes.gnu(name)
        h1 = h | 1
        for s in msyms:
            words = s.words
            if words is not None and h1 not in words:
                continue  # no symbol of that object has this name's GNU hash
            f = s._found.get(key)
            if f is None:
                f = s._found[key] = s._find(name, key[1], key[2], h)
            if f[0] >= FOUND_STRONG:
                definer[key] = s
                return True
        return False

    def lib_resolves(self, key: tuple, hint: Optional[str] = None) -> bool:
        """Some library of the scope (every member but the executable) accepts ``key``; memoized per library
        scope."""
        ok = self._lib_ok
        r = ok.get(key)
        if r is None:
            r = ok[key] = self._scan(key, self.lib_msyms, self.lib_mset, hint)
        return r

    def resolves(self, key: tuple, hint: Optional[str] = None) -> bool:
        """Some member of the scope accepts ``key`` (for a copy relocation, the executable is skipped)."""
        if self.lib_resolves(key, hint):
            return True
        if self.main_defines and key[2] != CLASS_COPY:
            return self._syms[self.main].accepts(key)  # type: ignore[union-attr]
        return False

    def closure(self, i: int) -> frozenset:
        """Indexes of ``i`` and everything its DT_NEEDED entries bring in (transitively), in this load."""
        hit = self._closure.get(i)
        if hit is None:
            seen = {i}
            stack = [i]
            objs = self.res.objects
            while stack:
                for dep in objs[stack.pop()].needed:
                    if dep is not None and dep not in seen and objs[dep].found:
                        seen.add(dep)
                        stack.append(dep)
            hit = self._closure[i] = frozenset(seen)
        return hit

    def ordered(self, undef: int, ref: Reference, *, skip_main: bool = False) -> Tuple[Optional[int], object]:
        """``_dl_lookup_symbol_x`` in scope order: (index, definition) of the first acceptable definition.
        Raises :class:`LookupAborted` where glibc < 2.41 would abort."""
        from soswap.loader.lookup import _SKIP, _NoVersions, _Weak

        order = self.scope
        u = self.syms(undef)
        if u is not None and u.symbolic:
            order = [undef] + [i for i in order if i != undef]
        weak: Tuple[Optional[int], object] = (None, None)
        for i in order:
            if skip_main and i == self.main:
                continue
            s = self.syms(i)
            if s is None or not s.has_hash:
                continue
            r = s.accept(ref)
            if r is None or r is _SKIP:
                continue
            if isinstance(r, _NoVersions):
                v = ref.version
                if self.glibc < (2, 41) and v is not None and v.filename is not None and self.name_match(
                        v.filename, i):
                    raise LookupAborted(i)
                return i, r.sym
            if isinstance(r, _Weak):
                if not self.dynamic_weak:
                    return i, r.sym
                if weak[0] is None:
                    weak = (i, r.sym)
                continue
            return i, r
        return weak

    def copy_source(self, i: int, ref: Reference) -> Tuple[Optional[int], object]:
        """Where the executable's copy relocation ``ref`` binds: :meth:`ordered` without the executable,
        (None, None) where that lookup aborts; memoized per library scope order."""
        if i != self.main:
            try:
                return self.ordered(i, ref, skip_main=True)
            except LookupAborted:
                return None, None
        memo = self.cache.copy_sources.get(self._copy_key)
        if memo is None:
            memo = self.cache.copy_sources[self._copy_key] = {}
        hit = memo.get(ref.key)
        if hit is None:
            try:
                where, sym = self.ordered(i, ref, skip_main=True)
            except LookupAborted:
                where, sym = None, None
            hit = memo[ref.key] = (self._syms[where] if where is not None else None, sym)
        s, sym = hit
        if s is None:
            return None, None
        return self._index_of[s], sym

    def unresolved(self, i: int, t: RefTable) -> List[int]:
        """Positions in ``t`` (the references of object ``i``) that no object of the scope accepts.

        A library's references are resolved first within its own dependency closure (cached per library and
        closure files: whatever the closure resolves, any scope containing it resolves too), the rest within
        the library scope (cached per library scope), and what is left in the executable."""
        main = self.main
        keys = t.keys
        # references through the object's own definitions resolve in any scope holding it
        foreign = self._syms[i].foreign_positions(t)  # type: ignore[union-attr]
        if i == main:
            # known answers first: in this library scope, then a library of the scope that accepted the same
            # key for another program (most references are there)
            ok, definer, mset = self._lib_ok, self.cache.definer, self.lib_mset
            todo = [n for n in foreign if not ok.get(keys[n]) and definer.get(keys[n]) not in mset]
            resolves = self.resolves
            return [n for n in todo if not resolves(keys[n])]
        cache = self.cache
        skey = (id(t), self.lib_files)
        hit = cache.scope_unresolved.get(skey)
        if hit is None:
            clo = self.closure(i) & self.member_set
            ckey = (id(t), frozenset(self.file_key(c) for c in clo))
            inner = cache.lib_unresolved.get(ckey)
            if inner is None:
                order = tuple(self._syms[m] for m in self.members if m in clo)
                oset = frozenset(order)
                if main in clo:  # a copy relocation never looks in the executable
                    nomain = tuple(self._syms[m] for m in self.members if m in clo and m != main)
                    nmset = frozenset(nomain)
                else:
                    nomain, nmset = order, oset
                meta, syms, scan = t.meta, t.symbols, self._scan
                inner = cache.lib_unresolved[ckey] = tuple(
                    n for n in foreign
                    if not (scan(keys[n], order, oset, _hint(meta[syms[n]])) if keys[n][2] != CLASS_COPY
                            else scan(keys[n], nomain, nmset, _hint(meta[syms[n]]))))
            lib_resolves = self.lib_resolves
            hit = cache.scope_unresolved[skey] = tuple(n for n in inner if not lib_resolves(keys[n]))
            cache._keep[id(t)] = t
        if not hit or not self.main_defines:
            return list(hit)
        accepts = self._syms[main].accepts  # type: ignore[union-attr]
        return [n for n in hit if keys[n][2] == CLASS_COPY or not accepts(keys[n])]


class VersionArena:
    """ld.so's start-up heap after ``_dl_check_all_versions`` in trace mode, as far as it is known: each object's
    ``l_versions`` array (``calloc`` of ``l_nversions`` 24-byte ``struct r_found_version``, from the minimal
    malloc: 16-byte aligned, one after the other in link-map chain order, the vDSO's included; a faked object
    has none), each after the message buffers of that object's own check, which stay allocated.
    ``l_nversions`` counts the versions of the files found only, so a reference through a version of a missing
    file with a higher index reads the entry at that index in the memory that follows: zeros (no version),
    another object's entry (its version, e.g. the vDSO's ``LINUX_2.6``), a message's text, or a mix of fields.
    Reads past the last array, or whose name would be a hash or text taken as a pointer, are not known."""

    def __init__(self, b: Binder) -> None:
        #: object index -> (offset of its array, l_nversions)
        self.arrays: Dict[int, Tuple[int, int]] = {}
        #: offset of an 8-byte word -> ("ptr", text) or ("word", hash, hidden); every other word is zero
        self.words: Dict[int, tuple] = {}
        self.end = 0
        objs = b.res.objects
        index = b.name_index()
        unlisted = b.res.unlisted
        for o in objs:
            if not o.found or o.index in unlisted:
                continue  # _dl_check_all_versions skips l_faked, and starts at the main map
            if o.kind == "vdso":
                from soswap.loader.vdso import vdso_version_definitions

                vdso = vdso_version_definitions()
                main = objs[0].elf if objs else None
                if vdso is None or main is None or (vdso[0], vdso[1]) != (main.machine, main.elf_class):
                    return  # another vDSO (a 32-bit program's): what follows is not known
                needs, defs = (), vdso[2]
            elif o.elf is None:
                return
            else:
                try:
                    needs, defs = o.elf.version_needs, o.elf.version_definitions
                except ElfError:
                    return
            high = max((d.index for d in defs), default=0)
            for need in needs:
                t = index.get(need.file)
                if t is None:
                    return  # ld.so stops at its assertion first
                if objs[t].found:
                    high = max([high, *(e.index for e in need.entries)])
            entries: Dict[int, Tuple[str, int, int, Optional[str]]] = {
                e.index: (e.name, e.hash, 0x8000 if e.hidden else 0, need.file)
                for need in needs for e in need.entries if e.index <= high}
            entries.update((d.index, (d.name, d.hash, 0, None)) for d in defs if not d.is_base)
            if o.kind != "vdso":
                # the messages of its version check (trace mode is verbose): each one buffer, objname and text,
                # that is never freed before the program is relocated (dl-exception.c, adjust_message_buffer)
                for f in version_check(b, o):
                    if f.kind in (M.VERSION, M.NO_VERSION_INFO, M.WEAK_VERSION):
                        text = f.name.encode() + b"\0" + f.message[len(f.name) + 2:].encode() + b"\0"
                        at = -(-self.end // 16) * 16
                        for w in range(at, at + len(text), 8):
                            self.words[w] = ("bytes", text[w - at:w - at + 8].ljust(8, b"\0"))
                        self.end = at + len(text)
            if high == 0:
                continue
            base = -(-self.end // 16) * 16
            self.arrays[o.index] = (base, high + 1)
            for ndx, (name, vhash, hidden, filename) in entries.items():
                self.words[base + 24 * ndx] = ("ptr", name)
                if vhash or hidden:
                    self.words[base + 24 * ndx + 8] = ("word", vhash, hidden)
                if filename is not None:
                    self.words[base + 24 * ndx + 16] = ("ptr", filename)
            self.end = base + -(-24 * (high + 1) // 16) * 16

    def _word(self, at: int) -> Optional[tuple]:
        """The 8-byte word at ``at``: None for zeros."""
        w = self.words.get(at)
        if w is not None and w[0] == "bytes" and not any(w[1]):
            return None
        return w

    def read(self, i: int, ndx: int) -> Optional[M.VersionRef]:
        """The version entry ``ndx`` of object ``i``'s array reads (None: no version, or not known)."""
        where = self.arrays.get(i)
        if where is None:
            return None
        at = where[0] + 24 * ndx
        if at + 24 > self.end:
            return None  # past the last array: not known (taken as no version)
        name_w, hash_w, file_w = (self._word(at + d) for d in (0, 8, 16))
        if hash_w is None:
            return None  # a zero hash: RESOLVE_MAP passes no version
        if hash_w[0] == "word":
            vhash, hidden = hash_w[1], hash_w[2]
        elif hash_w[0] == "bytes":  # a message's text
            vhash, hidden = int.from_bytes(hash_w[1][:4], "little"), int.from_bytes(hash_w[1][4:], "little")
            if vhash == 0:
                return None
        else:
            vhash, hidden = -1, 1  # half of a pointer
        if name_w is not None and name_w[0] != "ptr":
            return None  # a hash or text taken as the name's pointer: not known
        # a hash taken as the file's pointer is read only where an object without versioning defines the
        # name (the pre-2.41 check_match assertion): taken as none
        return M.VersionRef(name_w[1] if name_w is not None else "", vhash, bool(hidden),
                            file_w[1] if file_w is not None and file_w[0] == "ptr" else None)


def _needs_indirect_access(elf: ElfFile) -> bool:
    # _dl_process_pt_gnu_property -> _dl_process_gnu_property: GNU_PROPERTY_1_NEEDED sets l_1_needed
    from soswap.elf.notes import iter_notes

    try:
        for seg in elf.segments_of_type(C.PT_GNU_PROPERTY):
            if not 0 < seg.filesz <= 1 << 16:
                continue
            align = 8 if elf.elf_class == 64 else 4
            for note in iter_notes(elf, seg.offset, seg.filesz, align):
                if note.name != b"GNU" or note.type != C.NT_GNU_PROPERTY_TYPE_0:
                    continue
                desc, pos = note.desc, 0
                order = "little" if elf.little_endian else "big"
                while pos + 8 <= len(desc):
                    pr_type = int.from_bytes(desc[pos:pos + 4], order)
                    size = int.from_bytes(desc[pos + 4:pos + 8], order)
                    if pr_type == GNU_PROPERTY_1_NEEDED and size == 4 and pos + 12 <= len(desc):
                        return bool(int.from_bytes(desc[pos + 8:pos + 12], order)
                                    & GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS)
                    pos += 8 + ((size + align - 1) & ~(align - 1))
    except ElfError:
        return False
    return False


def _hint(meta: tuple) -> Optional[str]:
    v = meta[1]
    return v.filename if v is not None else None


class LookupAborted(Exception):
    """The glibc < 2.41 ``check_match`` assertion: the lookup aborts at object ``obj`` (internal to the loader:
    :meth:`Loader.resolve` returns None and :meth:`Loader.lookup_aborts` names the object instead)."""

    def __init__(self, obj: int) -> None:
        super().__init__(obj)
        self.obj = obj


def bind(res: M.LoadResult, cache: BindCache, *, bind_now: Optional[bool] = None, warn: bool = False,
         relocate: bool = True) -> M.BindResult:
    """Run the version check and the relocation lookups of every object (see docs/loader-api.md).

    ``bind_now``: None = as the program runs (its own BIND_NOW flags and ``LD_BIND_NOW``); True = every PLT
    slot at startup (``ldd -r``); False = lazy where the objects allow it (``ldd -d``). ``warn``: LD_WARN.
    ``relocate=False`` stops after the version check (plain ``ldd``).
    """
    b = Binder(res, cache)
    failures: List[M.Failure] = []
    unresolved: List[M.Unresolved] = []
    fatal: Optional[M.Failure] = res.fatal
    argv0 = res.argv0
    objs = res.objects
    if fatal is not None and fatal.kind == M.OUT_OF_MEMORY:
        return M.BindResult(res, (), (), fatal, 0)  # _dl_map_object_deps signalled it: nothing after it runs
    # _dl_check_all_versions, in link-map chain order from the main map (_ns_loaded): not what lies before it
    unlisted = res.unlisted
    for o in objs:
        if not o.found or o.elf is None or o.kind == "vdso" or o.index in unlisted:
            continue
        found = version_check(b, o)
        for f in found:
            failures.append(f)
            if f.fatal and fatal is None:
                fatal = f
        if found and found[-1].kind == M.ASSERTION:
            return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, 0)  # ld.so aborted
    tls = _unlisted_tls(res)
    if tls is not None:  # init_tls, after the version check
        failures.append(tls)
        return M.BindResult(res, tuple(failures), tuple(unresolved), fatal or tls, 0)
    # x86 ISA level (_rtld_main_check), before relocation; not in trace mode
    isa = res.profile.isa_level
    if not res.trace and isa is not None:
        for i in reversed(res.initfini):
            o = objs[i]
            if o.kind == "interpreter" or o.elf is None:
                continue
            try:
                need = o.elf.notes.x86_isa_needed
            except ElfError:
                need = None
            if need and (need & isa) != need:
                who = o.path or argv0
                text = f"{who}: CPU ISA level is lower than required"
                f = M.Failure(M.ISA_LEVEL, who, i, text, text, M.STARTUP, True, exit_status=127)
                failures.append(f)
                if fatal is None:
                    fatal = f
    checked = 0
    # objects cut short (an interrupted copy): ld.so faults where it touches what is gone
    cut = any(o.elf is not None and o.elf.cut_short for o in objs)
    if not relocate:
        if cut and fatal is None and not res.trace:  # a real run relocates, whatever is asked here: it dies there
            fatal = _relocation_crash(b)
            if fatal is not None:
                failures.append(fatal)
        if cut:
            fatal = _init_crash(b, failures, fatal)
        return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, checked)
    b.prepare()
    now = res.env.bind_now if bind_now is None else bind_now
    crash = _lookup_crash(b) if cut else None
    if crash is not None:  # the first lookups read every object of the scope
        failures.append(crash)
        return M.BindResult(res, tuple(failures), tuple(unresolved), fatal or crash, checked)
    # _dl_relocate_object for each object in reverse l_initfini order (ld.so itself excluded)
    unchecked: List[Tuple[int, str]] = []
    for i in reversed(res.initfini):
        o = objs[i]
        if o.kind == "interpreter" or o.elf is None or not o.found:
            continue
        syms = b.syms(i)
        if syms is None:
            unchecked.append((i, b.sym_errors.get(i, "its symbols cannot be read")))
            continue
        if cut and o.elf.cut_short:
            why = relocation_beyond(o.elf)
            if why is not None and not why[1]:
                crash = _sigbus(b, i, f"relocating {o.path or argv0}", why[0])
                failures.append(crash)
                return M.BindResult(res, tuple(failures), tuple(unresolved), fatal or crash, checked,
                                    tuple(unchecked))
        lazy = not (syms.bind_now or now)
        missing = b.missing_needs(i) if res.trace else frozenset()
        limit = syms.version_limit(missing) if missing else None
        beyond = b.versions_beyond(i, limit) if limit is not None and missing else None
        try:
            t = syms.table(limit, beyond)
        except ElfError as exc:
            unchecked.append((i, exc.problem))
            continue
        # l_versions is NULL for an object never version-checked (linked before the main map) and, in trace
        # mode, for one whose versions all come from missing objects: elf_dynamic_do_Rela still takes
        # &l_versions[ndx] for each relocation, and resolve_map reads its hash (dl-reloc.c): the first lookup
        # through a version index other than 0 kills ld.so with SIGSEGV.
        crash_at = (_null_versions_crash(syms, t, lazy) if limit == 0 or i in res.unlisted else None)
        if crash_at is not None:
            why = ("it lies before the main map, which the version check starts from" if i in res.unlisted
                   else "all its symbol versions come from missing objects")
            text = f"ld.so crashes (SIGSEGV) relocating {o.path or argv0}: it has no version array ({why})"
            crash = M.Failure(M.CRASH, o.path or argv0, i, text, text, M.STARTUP, True, exit_status=139)
        checked += len(t.keys)
        # (position in relocation order, failure): the lookups' messages come out in that order
        events: List[Tuple[int, M.Failure]] = []
        if b.unversioned_names and not t.version_files.isdisjoint(b.unversioned_names):
            bad = _exact_lookups(b, i, syms.references(limit, beyond), lazy, res.trace, events)
        else:
            bad = b.unresolved(i, t)
        who = o.path or argv0
        for n in bad:
            if crash_at is not None and n >= crash_at:
                continue  # not reached
            if t.meta[t.symbols[n]][3]:  # type: ignore[index]
                continue  # an undefined weak reference resolves to 0
            ref = syms.reference(t, n)
            at_startup = not (lazy and ref.lazy)
            if res.trace and not at_startup:
                continue  # ldd -d: lazy slots are not resolved
            when = M.STARTUP if at_startup else M.FIRST_CALL
            vname = ref.version.name if ref.version is not None else None
            name = ref.name
            msg = f"undefined symbol: {name}" + (f", version {vname}" if vname is not None else "")
            unresolved.append(M.Unresolved(i, name, vname, when, ref.lazy, False))
            events.append((n, M.Failure(M.UNDEFINED_SYMBOL, who, i, f"{who}: {msg}",
                                        f"{argv0}: symbol lookup error: {who}: {msg}", when, at_startup, name,
                                        vname, exit_status=127)))
        if i == b.main:
            _program_checks(b, i, syms, t, lazy, res.trace, warn or res.trace, events)
        if syms.static_tls_positions(t):
            _static_tls_checks(b, i, syms, t, events)
        if lazy:
            bad = _bad_plt_type(b, i, o)
            if bad is not None:
                events.append((len(t.keys), bad))  # DT_JMPREL comes after the other tables
        if crash_at is not None:
            events = [e for e in events if e[0] < crash_at]
            events.append((crash_at, crash))
        events.sort(key=_position)
        for _n, f in events:
            failures.append(f)
            if f.fatal and fatal is None:
                fatal = f
            if f.fatal and f.kind in _ABORTS:
                # ld.so dies here (an assertion, or _dl_signal_error outside any catch): nothing after it runs
                return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, checked, tuple(unchecked))
    if fatal is None and not res.trace:
        f = _second_dynamic_linker(b)
        if f is not None:
            failures.append(f)
            fatal = f
    if cut:
        fatal = _init_crash(b, failures, fatal)
    return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, checked, tuple(unchecked))


def _null_versions_crash(syms: ObjectSymbols, t: RefTable, lazy: bool) -> Optional[int]:
    """The position in ``t`` of the first lookup made at startup through a symbol whose DT_VERSYM index is not 0:
    where an object without ``l_versions`` faults; None when it has no DT_VERSYM or makes no such lookup."""
    versym = syms.raw.versym
    if versym is None:
        return None
    lazies = t.lazy
    for n, sym in enumerate(t.symbols):
        if versym[sym] & 0x7FFF and not (lazy and lazies[n]):
            return n
    return None


def _unlisted_tls(res: M.LoadResult) -> Optional[M.Failure]:
    """``init_tls`` (rtld.c) counts the TLS modules on the chain from the main map and asserts that it found every
    one loaded: an object with PT_TLS linked before the main map (``res.unlisted``: a filtee of the FILE or
    program) is missed, and ld.so aborts."""
    for i in res.unlisted:
        elf = res.objects[i].elf
        if elf is not None and any(seg.memsz for seg in elf.segments_of_type(C.PT_TLS)):
            text = init_tls_assertion(res.profile.glibc_version)
            return M.Failure(M.ASSERTION, res.objects[0].display or res.argv0, 0, text, text, M.STARTUP, True,
                             exit_status=127)
    return None


def _sigbus(b: Binder, i: int, doing: str, why: str) -> M.Failure:
    who = b.res.objects[i].path or b.res.argv0
    text = f"ld.so crashes (SIGBUS) {doing}: {why}"
    return M.Failure(M.CRASH, who, i, text, text, M.STARTUP, True, exit_status=135)


def _lookup_crash(b: Binder) -> Optional[M.Failure]:
    """A truncated object whose symbol table or DT_VERSYM lies past the end of its file: the first lookup that
    passes it (libc's relocations look up symbols of ld.so, last in the scope) dies of SIGBUS."""
    objs = b.res.objects
    for i in b.scope:
        elf = objs[i].elf
        if elf is not None and elf.cut_short:
            why = relocation_beyond(elf)
            if why is not None and why[1]:
                return _sigbus(b, i, f"looking up symbols in {objs[i].path or b.res.argv0}", why[0])
    return None


def _relocation_crash(b: Binder) -> Optional[M.Failure]:
    """What relocating kills ld.so with in a truncated object (:func:`_lookup_crash`, then each object's own
    relocations in ``_dl_relocate_object``'s order), without binding anything; None for whole files."""
    crash = _lookup_crash(b)
    if crash is not None:
        return crash
    objs = b.res.objects
    for i in reversed(b.res.initfini):
        o = objs[i]
        if o.elf is None or o.kind == "interpreter" or not o.found or not o.elf.cut_short:
            continue
        why = relocation_beyond(o.elf)
        if why is not None and not why[1]:
            return _sigbus(b, i, f"relocating {o.path or b.res.argv0}", why[0])
    return None


def _init_crash(b: Binder, failures: List[M.Failure], fatal: Optional[M.Failure]) -> Optional[M.Failure]:
    """``_dl_init`` running an initializer of a truncated object that lies past the end of its file: SIGBUS
    before main (a real run only: ldd runs no initializer). Returns the run's fatal failure."""
    res = b.res
    if fatal is not None or res.trace:
        return fatal
    objs = res.objects
    # the program's DT_PREINIT_ARRAY first, then each object's initializers, dependencies first
    order = [(b.main, True)] if res.scope else []
    for i, preinit in order + [(i, False) for i in reversed(res.initfini)]:
        o = objs[i]
        if o.elf is None or o.kind == "interpreter" or not o.elf.cut_short:
            continue
        why = init_beyond(o.elf, preinit)
        if why is not None:
            crash = _sigbus(b, i, f"running the initializers of {o.path or res.argv0}", why)
            failures.append(crash)
            return crash
    return fatal


def _second_dynamic_linker(b: Binder) -> Optional[M.Failure]:
    """A second copy of ld.so (its file under another path: ``_dl_map_object_from_fd`` matches loaded objects
    by device and inode, and ld.so's own map has none) that comes before the real one in the scope: libc's
    GLIBC_PRIVATE ``_rtld_global_ro`` binds to the copy's data, which no one set up, and libc's start-up code
    divides by its zero page size (SIGFPE, glibc 2.36)."""
    objs = b.res.objects
    rtld = next((o for o in objs if o.kind == "interpreter"), None)
    if rtld is None or rtld.elf is None:
        return None
    soname = rtld.elf.dynamic.soname
    if not soname or not any(o.kind != "interpreter" and o.found and o.elf is not None
                             and o.elf.dynamic.soname == soname for o in objs):
        return None
    for i in b.scope:
        o = objs[i]
        if o.elf is None or o.kind == "interpreter" or soname not in o.elf.dynamic.needed:
            continue
        ref = reference_for(b, i, "_rtld_global_ro", plt=False)
        if ref.version is None:
            continue  # no such reference
        try:
            where, _sym = b.ordered(i, ref)
        except LookupAborted:
            continue
        if where is not None and objs[where].kind != "interpreter":
            who = o.path or b.res.argv0
            text = (f"the program crashes (SIGFPE) as it starts: {who}'s `_rtld_global_ro' binds to "
                    f"{objs[where].path}, a second copy of the dynamic linker whose data was never set up")
            return M.Failure(M.CRASH, who, i, text, text, M.STARTUP, True, exit_status=136)
    return None


#: Startup failures after which ld.so relocates nothing more, in trace mode too.
_ABORTS = frozenset((M.ASSERTION, M.INDIRECT_EXTERN_ACCESS, M.CRASH, M.BAD_RELOCATION))


def _bad_plt_type(b: Binder, i: int, o: M.LoadedObject) -> Optional[M.Failure]:
    """``elf_machine_lazy_rel`` on a DT_JMPREL entry of a type it does not bind lazily (R_X86_64_NONE: GNU ld
    leaves one for an ignored undefined function): ``_dl_reloc_bad_type (map, r_type, 1)``, fatal."""
    r_type = b.cache.bad_plt_type(o.elf) if o.elf is not None else None
    if r_type is None:
        return None
    digits = f"{r_type:08x}" if r_type > 0xFF else f"{r_type:02x}"
    msg = f"{o.path}: unexpected PLT reloc type 0x{digits}" if o.path else f"unexpected PLT reloc type 0x{digits}"
    return M.Failure(M.BAD_RELOCATION, o.path or b.res.argv0, i, msg,
                     f"{b.res.argv0}: error while loading shared libraries: {msg}", M.STARTUP, True, exit_status=127)


def _static_tls_checks(b: Binder, i: int, syms: ObjectSymbols, t: RefTable,
                       events: List[Tuple[int, M.Failure]]) -> None:
    """``elf_machine_rela`` (R_X86_64_TPOFF64, R_X86_64_TLSDESC): ``CHECK_STATIC_TLS``/``TRY_STATIC_TLS`` on the
    defining object. One without a TLS segment has ``l_tls_align`` 0, and ``_dl_try_allocate_static_tls``
    divides by it: ld.so dies of SIGFPE (a variable that was ``__thread`` and no longer is)."""
    objs = b.res.objects
    for n in syms.static_tls_positions(t):
        ref = syms.reference(t, n)
        try:
            where, _sym = b.ordered(i, ref)
        except LookupAborted:
            continue
        elf = objs[where].elf if where is not None else None
        if elf is None or elf.segments_of_type(C.PT_TLS):
            continue
        who = objs[i].path or b.res.argv0
        text = (f"ld.so crashes (SIGFPE) relocating {who}: its TLS reference to `{ref.name}' binds to "
                f"{objs[where].path or b.res.argv0}, which has no TLS segment")
        events.append((n, M.Failure(M.CRASH, who, i, text, text, M.STARTUP, True, exit_status=136)))
        return


def _position(event: Tuple[int, M.Failure]) -> int:
    return event[0]


def reference_for(b: Binder, referrer: int, name: str, plt: bool = True) -> Reference:
    """A lookup of ``name`` as object ``referrer`` would make it (its own version need, if it has one)."""
    from soswap.loader.lookup import CLASS_PLT, Reference

    syms = b.syms(referrer)
    version: Optional[VersionRef] = None
    index = 0
    weak = False
    if syms is not None:
        for n in range(syms.raw.count):
            s = syms.raw.sym(n)
            if s.name == name and s.shndx == C.SHN_UNDEF:
                version = syms.version_ref(s)
                index = n
                weak = s.bind == C.STB_WEAK
                break
    tc = CLASS_PLT if plt else 0
    key = (name.encode("utf-8", "surrogateescape"),
           (version.name, version.hash, version.hidden) if version is not None else None, tc)
    return Reference(key, index, version, plt, False, weak)


def _exact_lookups(b: Binder, i: int, refs: Tuple[Reference, ...], lazy: bool, trace: bool,
                   events: List[Tuple[int, M.Failure]]) -> List[int]:
    """Each lookup of object ``i`` in scope order (the pre-2.41 ``check_match`` assertion depends on the order):
    the positions no object accepts. The assertion strikes at the lookup that meets it: at startup for a
    non-lazy one (data, BIND_NOW, LD_BIND_NOW), where ld.so aborts and nothing after it is looked up; at the
    first call for a lazy PLT slot (``_dl_fixup``), after the whole startup ran. Trace mode (``ldd -d``) makes
    no lazy lookup."""
    from soswap.loader.assertions import check_match_assertion

    text = check_match_assertion(b.glibc)
    bad = []
    for n, ref in enumerate(refs):
        at_startup = not (lazy and ref.lazy)
        if trace and not at_startup:
            continue
        try:
            where, _sym = b.ordered(i, ref, skip_main=ref.copy)
        except LookupAborted as exc:
            vname = ref.version.name if ref.version is not None else None
            events.append((n, M.Failure(M.ASSERTION, b.res.objects[exc.obj].path, i, text, text,
                                        M.STARTUP if at_startup else M.FIRST_CALL, at_startup, ref.name, vname,
                                        exit_status=127)))
            if at_startup:
                return bad
            continue
        if where is None:
            bad.append(n)
    return bad


def _program_checks(b: Binder, i: int, syms: ObjectSymbols, t: RefTable, lazy: bool, trace: bool, verbose: bool,
                    events: List[Tuple[int, M.Failure]]) -> None:
    """The checks ld.so makes on the program's own lookups: ``_dl_check_protected_symbol`` for its copy
    relocations and its PLT references with a canonical address (a nonzero ``st_value``), then, for a copy
    relocation, the size check of ``elf_machine_rela`` (R_X86_64_COPY)."""
    from soswap.loader.symtab import Sym

    positions = syms.program_positions(t)
    if not positions:
        return
    argv0 = b.res.argv0
    for n in positions:
        ref = syms.reference(t, n)
        if ref.copy:
            where, sym = b.copy_source(i, ref)
            at_startup = True
        else:
            at_startup = not (lazy and ref.lazy)
            if trace and not at_startup:
                continue  # ldd -d: lazy slots are not resolved
            try:
                where, sym = b.ordered(i, ref)
            except LookupAborted:
                continue  # reported by the lookups themselves
        if where is None or not isinstance(sym, Sym):
            continue
        if sym.visibility == C.STV_PROTECTED and b.glibc >= (2, 36):  # dl-protected.h came in 2.36
            _protected(b, i, where, ref, at_startup, events, n)
            if events and events[-1][1].kind == M.INDIRECT_EXTERN_ACCESS and at_startup:
                return
        if ref.copy:
            # elf_machine_rela R_X86_64_COPY: "Symbol `x' has different size in shared object"
            mine = syms.raw.sym(ref.symbol_index)
            if sym.size > mine.size or (sym.size < mine.size and verbose):
                text = f"{argv0}: Symbol `{ref.name}' has different size in shared object, consider re-linking"
                events.append((n, M.Failure(M.COPY_SIZE, ref.name, i, text, text, M.WARNING, False, ref.name)))


def _protected(b: Binder, i: int, where: int, ref: Reference, at_startup: bool,
               events: List[Tuple[int, M.Failure]], n: int) -> None:
    # _dl_check_protected_symbol (elf/dl-protected.h, glibc 2.36 as Debian 12 ships it: warnings, then an error
    # when the defining object needs GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS)
    res = b.res
    lname = res.objects[where].path
    vname = ref.version.name if ref.version is not None else None
    when = M.WARNING if at_startup else M.FIRST_CALL
    if ref.copy:
        text = f"warning: copy relocation against non-copyable protected symbol `{ref.name}' in `{lname}'"
        kind = M.PROTECTED_COPY
    else:
        text = (f"warning: direct reference to protected function `{ref.name}' in `{lname}' may break pointer "
                "equality")
        kind = M.PROTECTED_FUNCTION
    events.append((n, M.Failure(kind, lname, i, text, text, when, False, ref.name, vname)))
    if b.cache.indirect_extern_access(res.objects[where].elf):
        err = "error due to GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS"
        msg = f"{lname}: {err}" if lname else err
        events.append((n, M.Failure(M.INDIRECT_EXTERN_ACCESS, lname, i, msg, f"{res.argv0}: {ref.name}: {msg}",
                                    M.STARTUP if at_startup else M.FIRST_CALL, at_startup, ref.name, vname,
                                    exit_status=127)))
