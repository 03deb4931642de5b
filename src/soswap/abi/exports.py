"""What one object offers to and asks of the dynamic loader: its exported definitions, its non-exported
definitions and its undefined references, keyed for hash-set diffs.

The binding rule of :func:`bind_reference` is glibc's ``check_match`` (elf/dl-lookup.c): it answers "which
definition of NEW would a reference, recorded by the static linker against OLD's definition, bind to?".
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

from soswap.elf import ElfFile, Symbol
from soswap.elf import constants as C
from soswap.tuples import NamedTuple

#: Symbol types a lookup accepts (``check_match``: NOTYPE, OBJECT, FUNC, COMMON, TLS, GNU_IFUNC).
LOOKUP_TYPES = frozenset({C.STT_NOTYPE, C.STT_OBJECT, C.STT_FUNC, C.STT_COMMON, C.STT_TLS, C.STT_GNU_IFUNC})
#: Bindings a lookup accepts (``do_lookup_x``: GLOBAL, WEAK, GNU_UNIQUE; LOCAL is never seen).
LOOKUP_BINDS = frozenset({C.STB_GLOBAL, C.STB_WEAK, C.STB_GNU_UNIQUE})
#: Data-like types, whose size a copy relocation depends on.
DATA_TYPES = frozenset({C.STT_OBJECT, C.STT_COMMON})


class SymbolView(NamedTuple):
    """The dynamic symbols of one object, sorted into what a diff needs."""

    #: name -> exported definitions (several when the name has several versions), in table order
    exports: Dict[str, List[Symbol]]
    #: name -> a definition the loader will not bind to, and why ("LOCAL binding", "HIDDEN visibility"...)
    unexported: Dict[str, Tuple[Symbol, str]]
    #: (name, version or None) -> undefined reference
    imports: Dict[Tuple[str, Optional[str]], Symbol]
    #: names of the undefined references
    import_names: Set[str]
    #: DT_VERSYM present (glibc's versioned-lookup rules depend on it)
    has_versym: bool
    #: names of the version nodes the object defines (VER_FLG_BASE entry excluded)
    version_nodes: Tuple[str, ...]
    #: name -> version of its default definition (``name@@VERSION``)
    defaults: Dict[str, str]
    #: DT_NEEDED entries
    needed: Tuple[str, ...] = ()

    def default_version(self, name: str) -> Optional[str]:
        """The version of the ``name@@VERSION`` definition, or None."""
        return self.defaults.get(name)


def not_exported_reason(sym: Symbol) -> Optional[str]:
    """Why the loader would not bind a reference to the defined symbol ``sym`` (None: it would)."""
    if sym.bind not in LOOKUP_BINDS:
        return f"{sym.bind_name} binding"
    if sym.visibility in (C.STV_HIDDEN, C.STV_INTERNAL):
        return f"{sym.visibility_name} visibility"
    if sym.type not in LOOKUP_TYPES:
        return f"type {sym.type_name}"
    # check_match: a zero value is "not defined" unless absolute or TLS
    if sym.value == 0 and sym.shndx != C.SHN_ABS and sym.type != C.STT_TLS:
        return "value 0"
    return None


def _is_version_marker(sym: Symbol, nodes: Set[str]) -> bool:
    """ld's absolute symbol named after each version node (``VERS_1@@VERS_1``): not an interface."""
    return sym.shndx == C.SHN_ABS and sym.name in nodes and sym.version == sym.name


def symbol_view(elf: ElfFile) -> SymbolView:
    """Sort the dynamic symbols of ``elf`` (decoded once; a dict insertion per symbol)."""
    nodes = tuple(d.name for d in elf.version_definitions if not d.is_base)
    node_set = set(nodes)
    exports: Dict[str, List[Symbol]] = {}
    unexported: Dict[str, Tuple[Symbol, str]] = {}
    imports: Dict[Tuple[str, Optional[str]], Symbol] = {}
    defaults: Dict[str, str] = {}
    get = exports.get
    plain_binds = (C.STB_GLOBAL, C.STB_WEAK)
    plain_types = (C.STT_FUNC, C.STT_OBJECT)
    for sym in elf.symbols:
        name = sym.name
        if not name or not sym.index:
            continue
        if sym.shndx == C.SHN_UNDEF:
            imports[(name, sym.version)] = sym
            continue
        # fast path for the common case (a default-visibility function or object at a nonzero address)
        if not (sym.visibility == C.STV_DEFAULT and sym.bind in plain_binds and sym.type in plain_types
                and sym.value):
            reason = not_exported_reason(sym)
            if reason is not None:
                unexported.setdefault(name, (sym, reason))
                continue
            if _is_version_marker(sym, node_set):
                continue
        lst = get(name)
        if lst is None:
            exports[name] = [sym]
        else:
            lst.append(sym)
        if sym.default:
            defaults[name] = sym.version  # type: ignore[assignment]
    return SymbolView(exports, unexported, imports, {n for n, _v in imports}, elf.has_versym, nodes, defaults,
                      elf.needed)


def bind_reference(ref: Symbol, ref_has_versions: bool, candidates: List[Symbol],
                   defs_have_versym: bool) -> Optional[Symbol]:
    """The definition among ``candidates`` (one name, one object) that a reference to OLD's definition
    ``ref`` binds to, or None.

    A program linked against OLD records a versioned reference ``name@V`` when OLD defined ``name`` in version
    node V, else an unversioned one. ``ref_has_versions`` says whether OLD has version definitions at all.
    """
    if not candidates:
        return None
    versioned = ref_has_versions and ref.version is not None
    # check_match: no DT_VERSYM in the defining object -> any definition is accepted
    # (a versioned reference asserts in glibc < 2.41; reported once as versioning-removed)
    if not defs_have_versym:
        return candidates[0]
    if versioned:
        fallback = None
        for d in candidates:
            if d.version == ref.version:
                return d
            # check_match: an unversioned, non-hidden definition matches a versioned reference
            if d.version is None and not d.hidden and fallback is None:
                fallback = d
        return fallback
    # check_match: an unversioned reference takes index 0, 1 or 2 (hidden or not), else the only
    # non-hidden definition of a later version (the default, name@@V)
    later = None
    later_count = 0
    for d in candidates:
        if d.version_index <= 2:
            return d
        if not d.hidden:
            later_count += 1
            later = d
    return later if later_count == 1 else None
