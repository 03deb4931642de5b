"""Renderers for ``soswap tree``: the dependency tree with the reason each object was found, the failures with
ld.so's exact messages, and the JSON document (schema: docs/json-tree.md). No decisions are made here."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from soswap.elf import constants as C
from soswap.loader import model as M
from soswap.loader.model import BindResult, Failure, LoadedObject, LoadResult
from soswap.report.output import one_line

#: What an ELF file execve does not run is (the tree's first line).
_TYPE_WORDS = {C.ET_NONE: "file of no type (ET_NONE)", C.ET_REL: "relocatable object (ET_REL)",
               C.ET_CORE: "core dump (ET_CORE)"}
_KIND_NOTE = {"interpreter": "interpreter", "vdso": "kernel vDSO", "preload": "preload"}

#: The trees of :func:`tree_lines` below the program's line, by the objects they show: the key holds their
#: ids, the value the objects (so that an id stays theirs) and the lines.
Bodies = Dict[tuple, Tuple[tuple, List[str]]]
#: Levels of the tree drawn: programs go a dozen deep; a load that maps copy after copy of the same objects
#: (docs/tree.md, "Filters") would otherwise draw thousands of levels.
_MAX_DEPTH = 64
_MAX_BODIES = 4096  # a run over more shapes starts again


def _label(o: LoadedObject, requested: str) -> str:
    if not o.found:
        return f"{requested} => not found"
    if o.kind == "vdso":
        return f"{requested} (vDSO)"
    path = o.path or o.display  # the program itself has no l_name: show how it was run
    if requested == path:
        return requested
    return f"{requested} => {path}"


def _reason(o: LoadedObject) -> str:
    r = o.reason
    if not o.found:
        return r.text
    text = r.text
    if o.substituted:
        text += f"; what-if: file {o.file}"
    return text


def tree_lines(res: LoadResult, *, show_all: bool = False, reasons: bool = True,
               bodies: Optional[Bodies] = None) -> List[str]:
    """The dependency tree of one result: every object under the object whose DT_NEEDED first loaded it
    (``l_loader``); later requests for it are left out unless ``show_all``. ``bodies``: a dict the caller keeps
    across the results of one loader, where the trees of programs of one shape are made once."""
    objs = res.objects
    root = objs[0]
    # ldd's "statically linked" means no DT_NEEDED; ld.so still loads the preloads and filtees of such a file
    loads = res.static and any(o.kind in ("library", "preload") for o in objs[1:])
    if res.static and not loads:
        interp = root.elf.interpreter if root.elf is not None else None
        if interp:  # ldd says "statically linked" too, but ld.so runs it
            return [f"{res.argv0}  (interpreter {interp}; no DT_NEEDED: no library is loaded)"]
        if root.elf is not None and root.elf.type not in C.LOADABLE_TYPES:
            return [f"{res.argv0}  (ELF {_TYPE_WORDS.get(root.elf.type, 'file of an unknown type')}: "
                    "neither a program nor a shared library)"]
        if root.elf is not None and not root.elf.segments:
            return [f"{res.argv0}  (no program headers: nothing can be loaded)"]
        return [f"{res.argv0}  (statically linked: nothing is loaded)"]
    notes = []
    if root.elf is not None and root.elf.interpreter:
        notes.append(f"interpreter {root.elf.interpreter}")
    if res.secure:
        notes.append("secure mode (AT_SECURE)")
    if loads:
        notes.append('no DT_NEEDED: ldd says "statically linked"')
    head = res.argv0 + (f"  ({', '.join(notes)})" if notes else "")
    # Programs of one shape share their loaded objects (loading.py, _Template): their trees below the first
    # line are the same text. The key holds the objects' ids, and the entry the objects, so an id stays theirs.
    if bodies is None:
        return [head, *_body(res, show_all, reasons)[0]]
    key = (show_all, reasons, root.elf is not None and root.found, root.needed, root.needed_names,
           root.needed_kinds, *map(id, objs[1:]))
    hit = bodies.get(key)
    if hit is not None:
        return [head, *hit[1]]
    body, shared = _body(res, show_all, reasons)
    if shared:
        if len(bodies) >= _MAX_BODIES:
            bodies.clear()
        bodies[key] = (objs[1:], body)
    return [head, *body]


def _body(res: LoadResult, show_all: bool, reasons: bool) -> Tuple[List[str], bool]:
    """The lines below the program's own, and whether they are those of every program of its shape (no line
    names the program: it is no other object's dependency)."""
    objs = res.objects
    lines: List[str] = []
    shared = True
    children = _children(res, show_all)
    stack: List[tuple] = [(children.get(0, []), 0, "")]
    expanded = {0}
    while stack:
        items, pos, prefix = stack[-1]
        if pos >= len(items):
            stack.pop()
            continue
        stack[-1] = (items, pos + 1, prefix)
        dep, name, again, kind = items[pos]
        last = pos == len(items) - 1
        branch = "└── " if last else "├── "
        if dep is None:
            lines.append(f"{prefix}{branch}{name}  (skipped: no value for its dynamic string token)")
            continue
        shared = shared and dep != 0  # the label is the program's path or argv[0]
        o = objs[dep]
        text = _label(o, name)
        if kind != M.NEEDED:
            text += f"  (filtee: DT_{kind.upper()})"
        if again or dep in expanded:
            text += "  (already loaded)"
            lines.append(prefix + branch + text)
            continue
        if reasons:
            text += f"  [{_reason(o)}]"
        lines.append(prefix + branch + text)
        expanded.add(dep)
        kids = children.get(dep)
        if o.found and kids:
            below = prefix + ("    " if last else "│   ")
            if len(stack) >= _MAX_DEPTH:  # copies of copies (filters before the program): never a real tree
                lines.append(f"{below}└── … not drawn below {_MAX_DEPTH} levels (--json lists every object)")
                continue
            stack.append((kids, 0, below))
    return lines, shared


def _children(res: LoadResult, show_all: bool) -> Dict[int, List[tuple]]:
    """parent index -> [(child index or None, requested name, is a repeat, dynamic tag kind)] in the dynamic
    section's order."""
    objs = res.objects
    out: Dict[int, List[tuple]] = {0: [(o.index, o.name, False, M.NEEDED) for o in objs if o.kind == "preload"]}
    for o in objs:
        if o.elf is None or not o.found:
            continue
        names = o.needed_names
        kinds = o.needed_kinds
        lst = out.setdefault(o.index, [])
        seen = set()
        for n, dep in enumerate(o.needed):
            name = names[n] if n < len(names) else "?"
            kind = kinds[n] if n < len(kinds) else M.NEEDED
            if dep is None:
                lst.append((None, name, False, kind))
                continue
            d = objs[dep]
            owner = d.loader if d.loader is not None else (d.requested_by[0] if d.requested_by else None)
            first = owner == o.index and dep not in seen and d.kind != "preload"
            seen.add(dep)
            if not d.found or first:
                lst.append((dep, name, False, kind))
            elif show_all:
                lst.append((dep, name, True, kind))
    return out


#: Failure kinds that are warnings: the program goes on after printing them.
_WARNING_KINDS = frozenset((M.NO_VERSION_INFO, M.COPY_SIZE, M.WEAK_VERSION, M.PROTECTED_COPY, M.PROTECTED_FUNCTION))


def failure_lines(failures: Sequence[Failure]) -> List[str]:
    """One line per failure: what the real program prints, and when."""
    out = []
    for f in failures:
        if f.fatal:
            tag = "fails at startup" if f.when == "startup" else "fails"
        elif f.kind in _WARNING_KINDS:
            tag = "warning at first call" if f.when == "first-call" else "warning"
        elif f.when == "first-call":
            tag = "fails at first call"
        else:
            tag = "warning"
        out.append(f"{tag}: {f.line}")
    return out


def render_text(res: LoadResult, bound: Optional[BindResult], *, show_all: bool = False,
                symbols: bool = False, bodies: Optional[Bodies] = None) -> str:
    """The human report of one file: the tree, then each failure as the program would print it (``bodies``:
    see :func:`tree_lines`)."""
    lines = tree_lines(res, show_all=show_all, bodies=bodies)
    failures = list(bound.failures) if bound is not None else []
    load_failures = [f for f in res.failures if f.fatal or f.kind in (M.PRELOAD, M.TUNABLES)]
    all_failures = load_failures + [f for f in failures if f not in load_failures]
    if symbols and bound is not None:
        lines.append(f"symbols: {bound.bindings_checked} references checked, "
                     f"{len(bound.unresolved)} unresolved")
        lines.extend(f"symbols: not checked in {res.objects[i].path or res.argv0}: {why}"
                     for i, why in bound.unchecked)
    lines.extend(failure_lines(all_failures))
    fatal = bound.fatal if bound is not None else res.fatal
    if fatal is not None:
        lines.append(f"verdict: the program cannot start (exit status {fatal.exit_status})")
    # names and messages come from the files: a control character in one (an escape sequence in a DT_NEEDED)
    # is shown escaped, never sent to the terminal
    return "\n".join(map(one_line, lines)) + "\n"


# -- JSON --------------------------------------------------------------------------------------------------


def failure_json(f: Failure) -> Dict[str, Any]:
    return {
        "kind": f.kind,
        "name": f.name,
        "object": f.object,
        "message": f.message,
        "line": f.line,
        "when": f.when,
        "fatal": f.fatal,
        "symbol": f.symbol,
        "version": f.version,
        "exit_status": f.exit_status,
    }


def object_json(o: LoadedObject) -> Dict[str, Any]:
    r = o.reason
    return {
        "index": o.index,
        "name": o.name,
        "names": list(o.names),
        "path": o.path,
        "file": o.file,
        "kind": o.kind,
        "found": o.found,
        "soname": o.soname if o.found else None,
        "loader": o.loader,
        "requested_by": list(o.requested_by),
        "needed": list(o.needed),
        "needed_kinds": list(o.needed_kinds),
        "depth": o.depth,
        "origin": o.origin,
        "substituted": o.substituted,
        "reason": {"rule": r.rule, "text": r.text, "directory": r.directory, "subdir": r.subdir,
                   "owner": r.owner},
    }


def result_json(res: LoadResult, bound: Optional[BindResult], symbols: bool = False) -> Dict[str, Any]:
    """The JSON document of one file (docs/json-tree.md)."""
    fatal = bound.fatal if bound is not None else res.fatal
    failures = list(res.failures)
    if bound is not None:
        failures += [f for f in bound.failures if f not in failures]
    doc: Dict[str, Any] = {
        "file": res.argv0,
        "loadable": fatal is None,
        "static": res.static,
        "secure": res.secure,
        "objects": [object_json(o) for o in res.objects],
        "scope": list(res.scope),
        "failures": [failure_json(f) for f in failures],
        "fatal": failure_json(fatal) if fatal is not None else None,
    }
    if symbols and bound is not None:
        doc["symbols"] = {
            "checked": bound.bindings_checked,
            "unresolved": [{"object": u.object, "symbol": u.symbol, "version": u.version, "when": u.when,
                            "plt": u.plt} for u in bound.unresolved],
            "unchecked": [{"object": i, "reason": why} for i, why in bound.unchecked],
        }
    return doc


def error_json(path: str, message: str) -> Dict[str, Any]:
    return {"file": path, "error": message}
