"""Diff of the dynamic symbols and version nodes of OLD and NEW.

Each exported definition of OLD is bound in NEW the way the loader would bind a reference recorded against it
(:func:`soswap.abi.exports.bind_reference`); what cannot be bound is removed, moved or unexported, what binds
is compared field by field. Everything is dict and set work: O(symbols), no edit script.
"""

from __future__ import annotations

from typing import List, Optional, Set, Tuple

from soswap.abi.changes import BREAKING, HARMLESS, REVIEW, Change
from soswap.abi.exports import DATA_TYPES, SymbolView, bind_reference
from soswap.elf import Symbol
from soswap.elf import constants as C


def _vname(sym: Symbol) -> str:
    return sym.versioned_name


def diff_versions(old: SymbolView, new: SymbolView) -> List[Change]:
    """Version nodes defined by OLD and NEW (the VER_FLG_BASE entry, named after the file, is ignored)."""
    out: List[Change] = []
    old_nodes, new_nodes = set(old.version_nodes), set(new.version_nodes)
    if old_nodes and not new_nodes:
        listed = ", ".join(old.version_nodes)
        out.append(Change("versioning-removed", BREAKING, None, None,
                          f"NEW defines no version nodes (OLD: {listed})", listed, None))
        return out
    if new_nodes and not old_nodes:
        listed = ", ".join(new.version_nodes)
        out.append(Change("versioning-added", HARMLESS, None, None, f"NEW defines version nodes {listed}",
                          None, listed))
        return out
    for node in old.version_nodes:
        if node not in new_nodes:
            out.append(Change("version-removed", BREAKING, None, node, f"version node {node} removed", node, None))
    for node in new.version_nodes:
        if node not in old_nodes:
            out.append(Change("version-added", HARMLESS, None, node, f"new version node {node}", None, node))
    return out


def _type_change(old: Symbol, new: Symbol) -> Change:
    a, b = old.type, new.type
    pair = f"{old.type_name} -> {new.type_name}"
    funcs = (C.STT_FUNC, C.STT_GNU_IFUNC)
    if a in funcs and b in funcs:
        sev, why = HARMLESS, "the loader runs the IFUNC resolver and binds the result"
    elif C.STT_TLS in (a, b):
        sev, why = BREAKING, "TLS and non-TLS symbols are reached differently; consumers read the wrong memory"
    elif (a in funcs) != (b in funcs) and C.STT_NOTYPE not in (a, b):
        sev, why = BREAKING, "calls jump into data, or data is read from code"
    elif a in DATA_TYPES and b in DATA_TYPES:
        sev, why = HARMLESS, "both are data"
    else:
        sev, why = REVIEW, "untyped (NOTYPE) symbols come from assembly; check how consumers use it"
    return Change("type-changed", sev, old.name, old.version, f"{_vname(old)} {pair}: {why}", old.type_name,
                  new.type_name)


def _size_change(old: Symbol, new: Symbol) -> Optional[Change]:
    if old.size == new.size:
        return None
    if old.type in DATA_TYPES and new.type in DATA_TYPES:
        what = "grew" if new.size > old.size else "shrank"
        if old.name.startswith("_ZTV"):
            why = "a C++ vtable: virtual methods were added or removed, slots may have moved"
        elif new.size > old.size:
            why = ("a program with a copy relocation keeps the old size: ld.so warns 'has different size in "
                   "shared object' and NEW's code reads past the program's copy")
        else:
            why = "a program with a copy relocation reads past NEW's object: silent garbage"
        return Change("size-changed", BREAKING, old.name, old.version,
                      f"{_vname(old)} {what} from {old.size} to {new.size} bytes: {why}", str(old.size), str(new.size))
    if old.type == C.STT_TLS and new.type == C.STT_TLS:
        return Change("size-changed", REVIEW, old.name, old.version,
                      f"{_vname(old)} TLS size {old.size} -> {new.size} bytes: consumers compiled against the "
                      "old layout index it with the old size", str(old.size), str(new.size))
    return None


def _binding_change(old: Symbol, new: Symbol) -> Optional[Change]:
    if old.bind == new.bind:
        return None
    pair = f"{old.bind_name} -> {new.bind_name}"
    if C.STB_GNU_UNIQUE in (old.bind, new.bind):
        return Change("binding-changed", REVIEW, old.name, old.version,
                      f"{_vname(old)} {pair}: GNU_UNIQUE makes the first definition process-wide "
                      "(and the object NODELETE)",
                      old.bind_name, new.bind_name)
    return Change("binding-changed", HARMLESS, old.name, old.version,
                  f"{_vname(old)} {pair}", old.bind_name, new.bind_name)


def _visibility_change(old: Symbol, new: Symbol) -> Optional[Change]:
    if old.visibility == new.visibility:
        return None
    pair = f"{old.visibility_name} -> {new.visibility_name}"
    if new.visibility == C.STV_PROTECTED:
        if new.type in (C.STT_FUNC, C.STT_GNU_IFUNC):
            return Change("visibility-changed", REVIEW, old.name, old.version,
                          f"{_vname(old)} {pair}: NEW calls its own copy even if a program interposes "
                          "it; function pointers compared across objects may differ",
                          old.visibility_name, new.visibility_name)
        return Change("visibility-changed", BREAKING, old.name, old.version,
                      f"{_vname(old)} {pair}: programs with a copy relocation and NEW now use "
                      "different copies of the object",
                      old.visibility_name, new.visibility_name)
    return Change("visibility-changed", HARMLESS, old.name, old.version, f"{_vname(old)} {pair}",
                  old.visibility_name, new.visibility_name)


def _compare(old: Symbol, new: Symbol, out: List[Change]) -> None:
    if old.type != new.type:
        out.append(_type_change(old, new))
    else:
        c = _size_change(old, new)
        if c is not None:
            out.append(c)
    for c in (_binding_change(old, new), _visibility_change(old, new)):
        if c is not None:
            out.append(c)


def _missing(sym: Symbol, new: SymbolView, added_needed: Tuple[str, ...]) -> Change:
    """OLD's exported ``sym`` binds to nothing in NEW: say what became of it."""
    name = sym.name
    gone = _vname(sym)
    hidden = new.unexported.get(name)
    if hidden is not None:
        return Change("symbol-unexported", BREAKING, name, sym.version,
                      f"{gone} is still in NEW's table but not exported ({hidden[1]})",
                      sym.type_name, hidden[1])
    others = new.exports.get(name)
    if others:
        now = ", ".join(_vname(s) for s in others)
        if sym.version is None:
            why = f"{gone} is now only {now}: unversioned references no longer bind (check_match)"
        else:
            why = f"{gone} is gone; NEW has {now}"
        return Change("symbol-moved", BREAKING, name, sym.version, why, gone, now)
    if name in new.import_names:
        return Change("symbol-moved-out", REVIEW, name, sym.version,
                      f"NEW references {gone} instead of defining it", gone, None)
    kind = "variable" if sym.type in DATA_TYPES or sym.type == C.STT_TLS else "function"
    if sym.type == C.STT_NOTYPE:
        kind = "symbol"
    hint = ""
    if added_needed:
        hint = (f" (NEW now needs {', '.join(added_needed)}: if one of them provides it, consumers still bind; "
                "soswap check resolves each consumer's scope)")
    return Change("symbol-removed", BREAKING, name, sym.version, f"{kind} {gone} removed{hint}", gone, None)


def diff_symbols(old: SymbolView, new: SymbolView) -> List[Change]:
    """Exported definitions, then NEW's new undefined references and version needs."""
    out: List[Change] = []
    old_versioned = bool(old.version_nodes)
    new_versioned = bool(new.version_nodes)
    versioning_changed = old_versioned != new_versioned
    matched: Set[int] = set()
    moved_out: Set[str] = set()
    default_moved: Set[str] = set()  # names whose NEW versions another change already names
    empty: List[Symbol] = []
    old_needed = set(old.needed)
    added_needed = tuple(n for n in new.needed if n not in old_needed)
    for name, olds in old.exports.items():
        news = new.exports.get(name, empty)
        for o in olds:
            m = bind_reference(o, old_versioned, news, new.has_versym)
            if m is None:
                ch = _missing(o, new, added_needed)
                if ch.kind == "symbol-moved-out":
                    moved_out.add(name)
                elif ch.kind == "symbol-moved":
                    default_moved.add(name)  # the change names NEW's versions: they are not "added"
                out.append(ch)
                continue
            matched.add(m.index)
            _compare(o, m, out)
            if m.version != o.version and not versioning_changed and old_versioned:
                out.append(Change("symbol-moved", REVIEW, name, o.version,
                                  f"{_vname(o)} now binds to {_vname(m)} (check_match accepts an unversioned "
                                  "definition for a versioned reference)", _vname(o), _vname(m)))
        if name in old.defaults and _default_versions(name, old, new, matched, out):
            default_moved.add(name)
    for name, news in new.exports.items():
        for n in news:
            if n.index in matched:
                continue
            if name in default_moved:
                continue  # reported as default-version-changed or symbol-moved
            out.append(Change("symbol-added", HARMLESS, name, n.version, f"{n.type_name} {_vname(n)} added",
                              None, _vname(n)))
    out.extend(_new_needs(old, new, moved_out))
    return out


def _default_versions(name: str, old: SymbolView, new: SymbolView, matched: Set[int], out: List[Change]) -> bool:
    """foo@@V1 -> foo@V1 + foo@@V2 (harmless), or foo@@V1 -> foo@V1 only (new links fail).
    Returns True when the default version moved (NEW's new default is then not listed as added)."""
    old_default = old.default_version(name)
    if old_default is None:
        return False
    news = new.exports.get(name, ())
    still_bound = any(s.index in matched and s.version == old_default for s in news)
    if not still_bound:
        return False
    new_default = new.default_version(name)
    if new_default is None:
        out.append(Change("default-version-removed", REVIEW, name, old_default,
                          f"{name}@@{old_default} is now the compat symbol {name}@{old_default} only: existing "
                          "binaries still bind, new programs can no longer link against it",
                          f"{name}@@{old_default}", f"{name}@{old_default}"))
    elif new_default != old_default:
        out.append(Change("default-version-changed", HARMLESS, name, new_default,
                          f"{name}: default version moved from {old_default} to {new_default}; "
                          f"{name}@{old_default} is kept for existing binaries",
                          f"{name}@@{old_default}", f"{name}@@{new_default}"))
        return True
    return False


def _new_needs(old: SymbolView, new: SymbolView, moved_out: Set[str]) -> List[Change]:
    out: List[Change] = []
    for key, sym in new.imports.items():
        if key in old.imports or sym.name in moved_out:
            continue
        label = _vname(sym)
        if sym.bind == C.STB_WEAK:
            out.append(Change("undefined-added", HARMLESS, sym.name, sym.version,
                              f"NEW references {label} weakly (NULL when no library provides it)", None, label))
        else:
            src = f" from {sym.version_file}" if sym.version_file else ""
            out.append(Change("undefined-added", REVIEW, sym.name, sym.version, f"NEW needs {label}{src}",
                              None, label))
    return out
