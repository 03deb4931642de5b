"""Symbol binding and the startup version check over a :class:`LoadResult`: what ``_dl_check_all_versions``
and ``_dl_relocate_object`` (``resolve_map`` → ``_dl_lookup_symbol_x`` → ``do_lookup_x`` → ``check_match``)
would report, and when (startup or first call).

Speed: a reference is *resolvable* when some object of the global scope accepts it; that does not depend on
the order of the scope, only on its members. So the answers are cached per object (``check_match`` over the
object's hash chain), per scope (a reference key → resolvable), and per (library, scope) (the library's
unresolved references), and a thousand programs sharing libc and a few libraries cost little more than one.
The order matters only for the glibc < 2.41 ``check_match`` assertion and for copy relocations; those take the
exact, ordered path.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError
from soswap.loader import model as M
from soswap.loader.lookup import (
    _MISSING,
    _SKIP,
    ASSERTION_TEXT,
    CLASS_PLT,
    ObjectSymbols,
    Reference,
    VersionRef,
    _NoVersions,
    _resolved,
    _Weak,
)
from soswap.loader.symtab import NameHashes, Sym
from soswap.loader.versions import find_needed, version_check


class BindCache:
    """Everything binding keeps across loads (owned by a :class:`Loader`)."""

    def __init__(self) -> None:
        self.hashes = NameHashes()
        self.objects: Dict[int, ObjectSymbols] = {}
        #: reference key -> id(ElfFile) of an object that accepted it
        self.definer: Dict[Tuple[object, ...], int] = {}
        self.lib_unresolved: Dict[Tuple[int, frozenset], Tuple[int, ...]] = {}
        self.verdefs: Dict[int, Tuple[ElfFile, bool, frozenset]] = {}
        #: version check outcomes per (requiring file, files its needs resolve to); the file is kept alive
        self.version_outcomes: Dict[tuple, tuple] = {}

    def symbols(self, elf: ElfFile) -> ObjectSymbols:
        key = id(elf)
        s = self.objects.get(key)
        if s is None or s.elf is not elf:
            s = self.objects[key] = ObjectSymbols(elf, self.hashes)
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
        self._syms: Dict[int, Optional[ObjectSymbols]] = {}
        self._closure: Dict[int, frozenset] = {}
        self._prepared = False

    def prepare(self) -> None:
        """Index the scope for lookups (only binding needs this; the version check does not)."""
        if self._prepared:
            return
        self._prepared = True
        objs = self.res.objects
        #: Scope members that can define symbols (a hash table), in scope order.
        self.members = tuple(i for i in self.scope if (lambda s: s is not None and s.has_hash)(self.syms(i)))
        self.member_set = frozenset(self.members)
        self.by_elf = {id(objs[i].elf): i for i in self.members}
        self.member_ids = frozenset(self.by_elf)
        self.by_name: Dict[str, int] = {}
        for i in self.members:
            for n in objs[i].names:
                self.by_name.setdefault(n, i)
        # Order matters when a versioned reference names an object without symbol versioning: the
        # pre-2.41 check_match assertion fires if the scan reaches that object.
        self.unversioned_names: frozenset = frozenset()
        if self.glibc < (2, 41):
            names = set()
            for i in self.scope:
                s = self.syms(i)
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

    def syms(self, i: int) -> Optional[ObjectSymbols]:
        hit = self._syms.get(i, _MISSING)
        if hit is _MISSING:
            elf = self.res.objects[i].elf
            try:
                hit = self.cache.symbols(elf) if elf is not None else None
            except ElfError:
                hit = None
            self._syms[i] = hit  # type: ignore[assignment]
        return hit  # type: ignore[return-value]

    def missing_needs(self, i: int) -> frozenset:
        """The DT_VERNEED file names of object ``i`` that resolve to a "not found" entry (trace mode)."""
        elf = self.res.objects[i].elf
        if elf is None:
            return frozenset()
        out = set()
        for need in elf.version_needs:
            t = find_needed(self.res, need.file)
            if t is not None and not self.res.objects[t].found:
                out.add(need.file)
        return frozenset(out)

    def name_match(self, name: str, i: int) -> bool:
        o = self.res.objects[i]
        return name == o.path or name in o.names

    def resolvable(self, ref: Reference, members: Tuple[int, ...], member_set: frozenset) -> bool:
        """Some object among ``members`` (indexes into the result) accepts ``ref``. Tries first the object
        that accepted the same reference last time (anywhere), then the one its version names."""
        key = ref.key
        cache = self.cache
        if ref.copy and self.main in member_set:
            # do_lookup_x: a copy relocation never looks in the executable
            member_set = member_set - {self.main}
            members = tuple(m for m in members if m != self.main)
        d = cache.definer.get(key)
        if d is not None:
            i = self.by_elf.get(d)
            if i is not None and i in member_set and _resolved(self._syms[i].accept(ref)):  # type: ignore[union-attr]
                return True
        v = ref.version
        if v is not None and v.filename is not None:
            i = self.by_name.get(v.filename)
            if i is not None and i in member_set and _resolved(self._syms[i].accept(ref)):  # type: ignore[union-attr]
                cache.definer[key] = id(self.res.objects[i].elf)
                return True
        h1 = cache.hashes.gnu(key[0])[1] | 1
        syms = self._syms
        for i in members:
            s = syms.get(i)
            if s is None:
                continue
            words = s.raw.hash_words
            if words is not None and h1 not in words:
                continue  # no symbol of that object has this name's GNU hash
            if _resolved(s.accept(ref)):
                cache.definer[key] = id(s.elf)
                return True
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
        Raises :class:`_Assertion` where glibc < 2.41 would abort."""
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
                    raise _Assertion(i)
                return i, r.sym
            if isinstance(r, _Weak):
                if not self.dynamic_weak:
                    return i, r.sym
                if weak[0] is None:
                    weak = (i, r.sym)
                continue
            return i, r
        return weak

    def unresolved_refs(self, i: int, refs: Tuple[Reference, ...]) -> List[int]:
        """Positions in ``refs`` that no object of the scope accepts.

        A library's references are first resolved within its own dependency closure, cached per (library,
        closure files): whatever the closure resolves, any scope containing it resolves too."""
        members = self.members
        member_set = self.member_set
        if i != self.main:
            clo = self.closure(i) & member_set
            # refs is kept by ObjectSymbols (one tuple per version limit), so its id names it
            key = (id(refs), frozenset(id(self.res.objects[c].elf) for c in clo))
            hit = self.cache.lib_unresolved.get(key)
            if hit is None:
                order = tuple(m for m in members if m in clo)
                hit = tuple(n for n, r in enumerate(refs) if not self.resolvable(r, order, clo))
                self.cache.lib_unresolved[key] = hit
            if not hit:
                return []
            rest = tuple(m for m in members if m not in clo)
            rest_set = frozenset(rest)
            return [n for n in hit if not self.resolvable(refs[n], rest, rest_set)]
        definer = self.cache.definer
        known = self.member_ids
        return [n for n, r in enumerate(refs)
                if definer.get(r.key) not in known and not self.resolvable(r, members, member_set)]


class _Assertion(Exception):
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
    # _dl_check_all_versions, in link-map chain order
    for o in objs:
        if not o.found or o.elf is None or o.kind == "vdso":
            continue
        for f in version_check(b, o):
            failures.append(f)
            if f.fatal and fatal is None:
                fatal = f
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
    if not relocate:
        return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, checked)
    b.prepare()
    # _dl_relocate_object for each object in reverse l_initfini order (ld.so itself excluded)
    for i in reversed(res.initfini):
        o = objs[i]
        if o.kind == "interpreter" or o.elf is None or not o.found:
            continue
        syms = b.syms(i)
        if syms is None:
            continue
        lazy = not (syms.bind_now or (res.env.bind_now if bind_now is None else bind_now))
        missing = b.missing_needs(i) if res.trace else frozenset()
        limit = syms.version_limit(missing) if missing else None
        try:
            refs = syms.references(limit)
        except ElfError:
            continue
        if limit == 0 and refs and C.DT_VERSYM in o.elf.dynamic.tags:
            # Trace mode: every version this object needs is from a missing object, so l_versions is never
            # allocated, and elf_dynamic_do_Rela dereferences &l_versions[ndx]: ld.so dies of SIGSEGV.
            who = o.path or argv0
            text = f"ld.so crashes (SIGSEGV) relocating {who}: all its symbol versions come from missing objects"
            f = M.Failure(M.CRASH, who, i, text, text, M.STARTUP, True, exit_status=139)
            failures.append(f)
            if fatal is None:
                fatal = f
            return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, checked)
        checked += len(refs)
        if b.unversioned_names and not syms.version_files.isdisjoint(b.unversioned_names):
            bad = _exact_unresolved(b, i, refs)
        else:
            bad = b.unresolved_refs(i, refs)
        if isinstance(bad, _Assertion):
            text = ASSERTION_TEXT
            f = M.Failure(M.ASSERTION, objs[bad.obj].path, i, text, text, M.STARTUP, True, exit_status=127)
            failures.append(f)
            if fatal is None:
                fatal = f
            return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, checked)
        who = o.path or argv0
        for n in bad:
            ref = refs[n]
            at_startup = not (lazy and ref.lazy)
            if res.trace and not at_startup:
                continue  # ldd -d: lazy slots are not resolved
            if ref.weak:
                continue  # an undefined weak reference resolves to 0
            when = M.STARTUP if at_startup else M.FIRST_CALL
            vname = ref.version.name if ref.version is not None else None
            msg = f"undefined symbol: {ref.name}" + (f", version {vname}" if vname else "")
            unresolved.append(M.Unresolved(i, ref.name, vname, when, ref.lazy, False))
            f = M.Failure(M.UNDEFINED_SYMBOL, who, i, f"{who}: {msg}",
                          f"{argv0}: symbol lookup error: {who}: {msg}", when, at_startup, ref.name, vname,
                          exit_status=127)
            failures.append(f)
            if at_startup and fatal is None:
                fatal = f
        if i == b.main:
            for ref in refs:
                if ref.copy:
                    _copy_check(b, i, ref, warn or res.trace, failures)
    return M.BindResult(res, tuple(failures), tuple(unresolved), fatal, checked)


def reference_for(b: Binder, referrer: int, name: str, plt: bool = True) -> Reference:
    """A lookup of ``name`` as object ``referrer`` would make it (its own version need, if it has one)."""
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
    key = (name, (version.name, version.hash, version.hidden) if version is not None else None, tc)
    return Reference(key, index, version, plt, False, weak)


def _exact_unresolved(b: Binder, i: int, refs: Tuple[Reference, ...]) -> object:
    bad = []
    for n, ref in enumerate(refs):
        try:
            where, _sym = b.ordered(i, ref, skip_main=ref.copy)
        except _Assertion as exc:
            return exc
        if where is None:
            bad.append(n)
    return bad


def _copy_check(b: Binder, i: int, ref: Reference, verbose: bool, failures: List[M.Failure]) -> None:
    # elf_machine_rela R_X86_64_COPY: "Symbol `x' has different size in shared object"
    try:
        where, sym = b.ordered(i, ref, skip_main=True)
    except _Assertion:
        return
    if where is None or not isinstance(sym, Sym):
        return
    mine = b.syms(i).raw.sym(ref.symbol_index)  # type: ignore[union-attr]
    if sym.size > mine.size or (sym.size < mine.size and verbose):
        text = f"{b.res.argv0}: Symbol `{ref.name}' has different size in shared object, consider re-linking"
        failures.append(M.Failure(M.COPY_SIZE, ref.name, i, text, text, M.WARNING, False, ref.name))
