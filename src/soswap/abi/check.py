"""``check_replacement``: what happens if NEW replaces the installed TARGET, for every consumer of TARGET.

This is the engine of ``soswap check`` and the preflight of ``soswap install``::

    from soswap.abi import check_replacement
    result = check_replacement("/usr/lib/x86_64-linux-gnu/libfoo.so.1", "/tmp/new/libfoo.so.1")
    result.verdict                       # "compatible" | "incompatible"
    [c for c in result.consumers if c.breaks]

Consumers: the files named in ``consumers``; every ELF file under the ``scope`` directories whose resolved tree
contains TARGET; the processes in ``pids``. With none of these, the default: the running processes that map
TARGET plus every ELF file under the system's program and library directories whose tree contains TARGET,
found through the rdeps index (:mod:`soswap.abi.rdeps`) so that a warm check costs one ``stat`` per directory
and per ELF file plus the checks themselves.
"""

from __future__ import annotations

import functools
import os
import stat
import struct
from typing import AbstractSet, Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from soswap.abi import problems as P
from soswap.abi.changes import BREAKING
from soswap.abi.consumer import ConsumerChecker, SharedChecks
from soswap.abi.diff import diff_objects
from soswap.abi.object_diff import static_tls_align
from soswap.abi.processes import ProcessInfo, processes_mapping, read_process
from soswap.abi.rdeps import LIBRARY, PLUGIN, PROGRAM, RdepsIndex, classify, environment_for_index, open_index
from soswap.abi.sysdirs import Top, canonical_path, canonical_tops, scope_directory, system_tops, under
from soswap.elf import ElfCache, ElfFile
from soswap.elf import constants as C
from soswap.errors import AccessDenied, ElfError, ProcessGone, SoswapError, UsageError
from soswap.loader import Environment, LoadResult, Profile
from soswap.loader.candidates import program_header_refusal
from soswap.loader.model import NOT_FOUND

#: Breaking changes that make NEW unloadable where OLD is, whatever the consumer.
UNLOADABLE_KINDS = frozenset({"elf-class-changed", "byte-order-changed", "machine-changed", "osabi-changed",
                              "abiversion-changed", "header-invalid", "elf-type-changed",
                              "segments-unmappable", "file-truncated"})
#: Breaking changes refused by policy: consumers still run (ldconfig would break them later), or no consumer's
#: binding of NEW can be checked (its own tables cannot be decoded).
POLICY_KINDS = frozenset({"soname-changed", "references-undecodable"})


#: ``mapper(fn, items) -> [fn(item) for item in items]``, computed however the caller likes (in order).
Mapper = Callable[[Callable[[Any], Any], Sequence[Any]], List[Any]]


def check_replacement(target: str, new: str, *, consumers: Optional[Sequence[str]] = None,
                      scope: Optional[Sequence[str]] = None, pids: Optional[Sequence[int]] = None,
                      processes: Optional[bool] = None, system: Optional[bool] = None,
                      cache_dir: Optional[str] = None, keep_index: bool = True,
                      environ: Optional[Mapping[str, str]] = None, profile: Optional[Profile] = None,
                      self_check: bool = True, full: bool = False,
                      also: Optional[Mapping[str, str]] = None,
                      index: Optional[RdepsIndex] = None,
                      mapping: Optional[Tuple[Sequence[int], Optional[str]]] = None,
                      shared: Optional[SharedChecks] = None,
                      leaving: AbstractSet[str] = frozenset(),
                      mapper: Optional[Mapper] = None) -> P.CheckResult:
    """Check NEW against every consumer of the installed TARGET (see the module docstring and docs/check.md).

    ``consumers``: files to check (programs as they run, shared libraries as plugins loaded with
    ``dlopen(RTLD_NOW)``); ``scope``: directories whose ELF files are searched (recursively) for consumers;
    ``pids``: running processes to check. ``processes``/``system`` (default: True when none of the three is
    given) add the processes that map TARGET and the system's program and library directories.
    ``cache_dir``: where the rdeps index is kept (default: :func:`soswap.state.cache_dir`, created on demand);
    ``keep_index=False`` builds it in memory only. ``environ``: the environment programs and plugins are
    loaded with (default: ours; LD_LIBRARY_PATH, LD_PRELOAD, LD_BIND_NOW count). Processes use their own.
    ``full``: bind every consumer, even those the diff proves safe (the diff has only symbol and version-node
    changes, and the consumer's objects reference none of those symbols nor need those nodes).
    ``also``: ``{target: new}`` of the other files replaced in the same transaction: they are in place too
    when consumers are loaded with NEW (a new libfoo that needs the new libbar). ``index``: an index opened
    by the caller (checks of several files share it: the directories are walked once); ``cache_dir`` and
    ``keep_index`` are then not used. ``mapping``: the PIDs that map TARGET and a note, as
    :func:`soswap.abi.processes.processes_mapping` gives them, when the caller found them already (one pass
    over /proc for several files). ``shared``: a :class:`SharedChecks` the checks of one transaction share (the
    same ``also`` map for each), so that each consumer is loaded and bound once for all of them. ``leaving``:
    files the same transaction deletes (:func:`soswap.abi.sysdirs.canonical_path` of each): the directories'
    programs and plugins among them are not checked (a running process always is). ``mapper``: how the indexed
    consumers the diff cannot prove safe are loaded and bound, ``mapper(fn, items) == [fn(i) for i in items]``
    (the default); the command line passes one that runs them in forked workers (``soswap check -j``).

    Raises :class:`SoswapError` on bad input (TARGET or NEW missing or malformed, a named consumer that is
    not a loadable ELF file, a scope that is not a directory or cannot be listed, an unknown PID). What the
    walk of the directories could not read below them (a directory it cannot list, a file it cannot open) is
    no error: ``discovery.unreadable`` lists it, and the result is ``partial``.
    """
    target_abs = _existing_file(target, "TARGET")
    _existing_file(new, "NEW")
    explicit = bool(consumers or scope or pids)
    if processes is None:
        processes = not explicit
    if system is None:
        system = not explicit
    environ = os.environ if environ is None else environ
    env = Environment.from_environ(environ)
    if profile is None:
        profile = index.profile if index is not None else Profile.detect()
    cache = index.elf_cache if index is not None else ElfCache()
    old_elf = cache.get(target_abs)
    new_elf = cache.get(os.path.abspath(new))
    diff = diff_objects(old_elf, new_elf)
    if shared is not None:  # a transaction's checks keep every file parsed: the tables the diff read go
        old_elf.forget_symbol_table()
        new_elf.forget_symbol_table()
    diff = diff._replace(old=target, new=new)
    extra = {}
    for t, n in (also or {}).items():  # a transaction's checks each pass all its files: normalised once each
        t, n = _absolute(t), _absolute(n)
        if t != target_abs:
            extra[t] = n
    checker = ConsumerChecker(target_abs, os.path.abspath(new), diff, profile, elf_cache=cache, full=full,
                              also=extra, shared=shared)
    results: List[P.ConsumerResult] = []
    seen: Set[Tuple[str, bool]] = set()
    sources: List[str] = []
    index_path: Optional[str] = None
    index_stats: Optional[Dict[str, object]] = None
    skipped: List[Tuple[int, str]] = []
    unreadable: List[Tuple[str, str]] = []
    unaffected = 0
    pending: List[Tuple[str, bool, str]] = []  # indexed consumers to load and bind: (path, plugin, source)

    for path in consumers or ():
        if "named" not in sources:
            sources.append("named")
        plugin = _named_consumer(path, cache)
        results.append(checker.check(path, env=env, plugin=plugin, source="named"))
        seen.add((os.path.realpath(path), plugin))

    scope_tops = [Top(scope_directory(d), True) for d in scope or ()]
    scope_canon = canonical_tops(scope_tops)
    tops: List[Top] = list(scope_tops)
    if system:
        if shared is None:
            tops.extend(system_tops(profile, environ))
        else:  # the same for every file of the transaction
            if shared.system_tops is None:
                shared.system_tops = system_tops(profile, environ)
            tops.extend(shared.system_tops)
    if tops:
        sources.extend((["scope"] if scope_tops else []) + (["system"] if system else []))
        if index is None:
            index = open_index(cache_dir, profile, environment_for_index(environ), keep=keep_index,
                               elf_cache=cache)
        index_env = index.env
        if not index.updated_for(tops):
            index.update(tops)
            index.save()
        index_path = index.path
        index_stats = index.stats.as_dict()
        deps = index.dependents(target_abs, tops)
        unreadable = index.unreadable(tops)  # may be programs or plugins of TARGET: the verdict cannot tell
        in_tops = any(under(os.path.realpath(target_abs), t) for t in index.canonical(tops))
        unaffected = index.stats.files - len(deps) - (1 if in_tops else 0)
        for dep in deps:
            if dep.role == LIBRARY:
                continue  # loaded by indexed programs or plugins: checked through them
            plugin = dep.role == PLUGIN
            key = (os.path.realpath(dep.path), plugin)
            if key in seen or (leaving and canonical_path(dep.path) in leaving):
                continue
            seen.add(key)
            source = "scope" if any(under(dep.path, t) for t in scope_canon) else "system"
            info = index.info(dep.path)
            hit = checker.shortcut(dep.path, info.tree if info is not None else None, plugin=plugin, source=source)
            if hit is not None:
                results.append(hit)
            else:
                pending.append((dep.path, plugin, source))
        results.extend(_bind_each(checker, pending, index_env, mapper))

    pid_list: List[int] = list(pids or ())
    if pids:
        sources.append("pid")
    if processes:
        sources.append("processes")
        found, note = mapping if mapping is not None else processes_mapping(target_abs)
        if note:
            skipped.append((0, note))
        pid_list.extend(p for p in found if p not in pid_list)
    explicit_pids = set(pids or ())
    results.extend(_check_processes(checker, pid_list, explicit_pids, skipped))

    shortcuts = checker.shortcuts  # consumers only, not the self check
    self_result: Optional[P.ConsumerResult] = None
    refusals = tuple(c for c in diff.changes if c.severity == BREAKING and c.kind in UNLOADABLE_KINDS | POLICY_KINDS)
    if self_check and not any(c.kind in UNLOADABLE_KINDS for c in refusals):
        self_result = _self_check(checker, results, env, classify(old_elf) == PROGRAM)
        if self_result is not None:
            self_result = _self_verdict(self_result, results)
    verdict = P.COMPATIBLE
    if (refusals or any(r.verdict == P.INCOMPATIBLE for r in results)
            or (self_result is not None and self_result.verdict == P.INCOMPATIBLE)):
        verdict = P.INCOMPATIBLE
    discovery = P.Discovery(tuple(sources), index_path, index_stats, tuple(skipped), max(unaffected, 0),
                            shortcuts, tuple(unreadable))
    return P.CheckResult(target, new, verdict, diff, tuple(_sorted(results)), self_result, refusals, discovery)


def _bind_each(checker: ConsumerChecker, pending: Sequence[Tuple[str, bool, str]], env: Environment,
               mapper: Optional[Mapper]) -> List[P.ConsumerResult]:
    """The verdicts of the indexed consumers ``pending`` ((path, plugin, source) each), loaded and bound through
    ``mapper``; one that changed or vanished since the index saw it is left out. The diff's shortcuts taken
    on a loaded tree are counted in ``checker``, wherever ``mapper`` ran them."""

    def one(item: Tuple[str, bool, str]) -> Tuple[Optional[P.ConsumerResult], int]:
        path, plugin, source = item
        before = checker.shortcuts
        try:
            result: Optional[P.ConsumerResult] = checker.check(path, env=env, plugin=plugin, source=source)
        except SoswapError:
            result = None  # changed or vanished since the index saw it
        taken = checker.shortcuts - before
        checker.shortcuts = before  # counted once below, whether this ran here or in a forked worker
        return result, taken

    done = mapper(one, pending) if mapper is not None else [one(i) for i in pending]
    checker.shortcuts += sum(taken for _result, taken in done)
    return [result for result, _taken in done if result is not None]


@functools.lru_cache(maxsize=16384)
def _normalised(path: str) -> str:
    return os.path.normpath(path)


def _absolute(path: str) -> str:
    """``os.path.abspath``; an absolute path's answer is kept (it does not depend on the working directory)."""
    return _normalised(path) if path.startswith("/") else os.path.abspath(path)


def _self_check(checker: ConsumerChecker, results: List[P.ConsumerResult], env: Environment,
                as_program: bool) -> Optional[P.ConsumerResult]:
    """NEW loaded at TARGET's place as a root: here, or, when the consumers that load TARGET all live under
    other roots (chroots, containers), in each of those with its own loader; the worst answer is kept (the
    first root's when they agree)."""
    roots = list(dict.fromkeys(r.root for r in results if r.verdict != P.UNAFFECTED))
    checkers = [c for c in (checker.in_root_checker(root) for root in roots) if c is not None] \
        if roots and None not in roots else []
    rank = {P.INCOMPATIBLE: 0, P.REVIEW: 1}
    best: Optional[P.ConsumerResult] = None
    for c in checkers or [checker]:
        try:
            res = c.check_self(env, as_program=as_program)
        except SoswapError:
            continue
        if c is not checker:
            res = res._replace(root=c.profile.root)
        if best is None or rank.get(res.verdict, 9) < rank.get(best.verdict, 9):
            best = res
    return best


def _self_verdict(res: P.ConsumerResult, consumers: List[P.ConsumerResult]) -> P.ConsumerResult:
    """NEW's unresolved symbols and missing dependencies are the consumers' business when some consumer loads
    NEW: each check loads and binds NEW in that consumer's whole scope (a library may rely on its program
    for some symbols, and find a new dependency through its program's RUNPATH). The note says whether a
    consumer failed on the same names."""
    if res.verdict != P.INCOMPATIBLE:
        return res
    loaded = any(c.verdict in (P.COMPATIBLE, P.INCOMPATIBLE) for c in consumers)
    if not loaded or not all(p.kind in ("undefined-symbol", NOT_FOUND) for p in res.problems):
        return res
    names = {p.symbol for p in res.problems if p.kind == "undefined-symbol"}
    failing = any(c.verdict == P.INCOMPATIBLE and any(
        p.kind == NOT_FOUND or (p.kind == "undefined-symbol" and p.symbol in names) for p in c.problems)
        for c in consumers)
    missing = any(p.kind == NOT_FOUND for p in res.problems)
    if missing and failing:
        return res  # the dependency is missing where the consumers run too
    what = "a dependency of NEW is not found from TARGET's place alone" if missing else \
        "unresolved in NEW's own dependencies"
    note = (f"{what}; a consumer above fails on them too" if failing else
            f"{what}; every consumer checked loads NEW with them resolved")
    return res._replace(verdict=P.REVIEW, note=note)


def _check_processes(checker: ConsumerChecker, pids: Sequence[int], explicit: Set[int],
                     skipped: List[Tuple[int, str]]) -> List[P.ConsumerResult]:
    """One result per process. Processes that run the same program with the same environment and plugins are
    checked once."""
    out: List[P.ConsumerResult] = []
    done: Dict[Tuple[object, ...], P.ConsumerResult] = {}
    for pid in pids:
        try:
            info = read_process(pid)
        except ProcessGone:
            if pid in explicit:
                raise UsageError(f"--pid {pid}: no such process") from None
            continue
        except AccessDenied as exc:
            if pid in explicit:
                raise
            skipped.append((pid, str(exc)))
            continue
        except SoswapError as exc:
            if pid in explicit:
                raise
            skipped.append((pid, str(exc)))
            continue
        key = (info.exe, info.env, info.argv0, info.mapped, info.root)
        hit = done.get(key)
        if hit is None:
            try:
                hit = done[key] = _check_process(checker, info)
            except SoswapError as exc:
                if pid in explicit:
                    raise
                skipped.append((pid, str(exc)))
                continue
        out.append(hit._replace(pid=pid, note=hit.note or info.note))  # hit.note starts with info.note
    return out


def _rooted(checker: ConsumerChecker, info: ProcessInfo) -> Optional[ConsumerChecker]:
    """The checker for a process under another root (:meth:`ConsumerChecker.in_root`), or None when TARGET
    is not inside that root (the process neither maps it nor could load it: unaffected)."""
    assert info.root is not None
    key = _path_in_root(info, checker.target, checker.target_id)
    if key is None:
        return None
    also = {}
    for target, new in checker.substitution.items():  # the transaction's other files, where the root has them
        if target != checker.target:
            inner = _path_in_root(info, target, _identity(target), near=(checker.target, key))
            if inner is None:  # a file the transaction adds: where its directory is in the root
                parent = _path_in_root(info, os.path.dirname(target), _identity(os.path.dirname(target)),
                                       near=(checker.target, key))
                inner = os.path.join(parent, os.path.basename(target)) if parent is not None else None
            if inner is not None:
                also[inner] = new
    return checker.in_root(info.root, key, also)


def _identity(path: str) -> Optional[Tuple[int, int]]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _path_in_root(info: ProcessInfo, host_path: str, ident: Optional[Tuple[int, int]],
                  near: Optional[Tuple[str, str]] = None) -> Optional[str]:
    """Where the file ``host_path`` (identity ``ident``) is inside the process's root: the path it maps it by
    (an older version of it too, when that path now holds it); a path ``near`` a file whose place there is
    known (the same relative position: a transaction's files in one directory); in a chroot, its host path
    under the chroot. Each candidate is checked by identity (a bind mount or a container changes the paths,
    never the file)."""
    assert info.root is not None
    if ident is None:
        return None
    for path, dev, ino in info.mapped:
        if (dev, ino) == ident:
            return path
    name = os.path.basename(host_path)
    candidates = [path for path, _dev, _ino in info.mapped if os.path.basename(path) == name]
    if near is not None:
        rel = os.path.relpath(host_path, os.path.dirname(near[0]))
        candidates.insert(0, os.path.normpath(os.path.join(os.path.dirname(near[1]), rel)))
    if not info.root.startswith("/proc/"):
        under = _under(info.root, host_path)
        if under is not None:
            candidates.append(under)
    return next((c for c in candidates if c.startswith("/") and _same_file(info.root + c, ident)), None)


def _under(root: str, path: str) -> Optional[str]:
    """``path`` (a host path) as a path inside ``root``, or None when it is not under it."""
    root = root.rstrip("/")
    return path[len(root):] if path.startswith(root + "/") else None


def _check_process(checker: ConsumerChecker, info: ProcessInfo) -> P.ConsumerResult:
    """The program as it would start again (its environment, under its own root), then each dlopen'ed plugin
    that loads TARGET."""
    if info.root is not None:
        rooted = _rooted(checker, info)
        if rooted is None:
            return P.ConsumerResult(info.exe, P.ROLE_PROCESS, P.UNAFFECTED, pid=info.pid, source="process",
                                    note=f"{info.where}: TARGET is not inside its root")
        result = _check_process_here(rooted, info)
        where = f"{info.where}: paths inside it, checked with its own ld.so, libc and ld.so.cache"
        return result._replace(note=f"{where}; {result.note}" if result.note else where, root=info.root)
    return _check_process_here(checker, info)


def _check_process_here(checker: ConsumerChecker, info: ProcessInfo) -> P.ConsumerResult:
    main = checker.check(info.exe, env=info.env, argv0=info.argv0, source="process", pid=info.pid)
    in_tree, loaded_dirs = _tree_identities(checker, info)
    problems = list(main.problems)
    baseline = list(main.baseline)
    verdicts = [main.verdict]
    plugins: List[str] = []
    note = info.note
    outside = [path for path, dev, ino in info.mapped
               if not ((dev, ino) in in_tree or path in in_tree or path == info.exe)]
    targets = {path for path, dev, ino in info.mapped
               if (dev, ino) == checker.target_id or _same_file(checker.fs.host(path), checker.target_id)}
    if targets.intersection(outside):
        # Its environment does not explain TARGET (a process title written over it: nginx, redis; or
        # LD_LIBRARY_PATH changed before an exec): search the directories of what it maps first
        again = _with_mapped_dirs(checker, info)
        if again is not None:
            info, main, in_tree, loaded_dirs = again
            note = note or info.note
            if main.note:  # the objects that also define what NEW lacks (_defined_elsewhere)
                note = f"{note}; {main.note}" if note else main.note
            outside = [path for path, dev, ino in info.mapped
                       if not ((dev, ino) in in_tree or path in in_tree or path == info.exe)]
            problems, baseline, verdicts = list(main.problems), list(main.baseline), [main.verdict]
    if targets.intersection(outside):  # TARGET dlopen'ed by the program itself (or by a plugin that pulled it in)
        note = note or ("maps TARGET outside the tree its program loads now (dlopen-ed, or loaded before a "
                        "library that now comes first in the search appeared)")
    # a plugin's DT_NEEDED is answered first by what the process loaded (TARGET too): their directories
    first = _loaded_dirs(checker, ([os.path.dirname(checker.target_key)] if targets else []) + loaded_dirs)
    if any(p.fatal and p.when == P.STARTUP for p in main.problems):
        outside = []  # restarted, the program dies before main: it dlopens nothing
    # _dl_determine_tlsoffset: the static TLS block is aligned to the largest TLS alignment at start-up
    tls_align = _startup_tls_align(checker, info, in_tree) if outside else 0
    for path in outside:
        if path in targets:
            continue
        try:
            r = checker.check(path, env=_dlopen_env(checker, info, path, first), plugin=True, source="process",
                              tls_align=tls_align)
        except SoswapError:
            continue
        if r.verdict == P.UNAFFECTED:
            continue
        plugins.append(path)
        problems.extend(r.problems)
        baseline.extend(r.baseline)
        verdicts.append(r.verdict)
    for v in (P.INCOMPATIBLE, P.BROKEN, P.COMPATIBLE, P.UNAFFECTED):
        if v in verdicts:
            verdict = v
            break
    if verdict == P.UNAFFECTED and note and not info.note:
        note += ": only the self check speaks for it"
    return P.ConsumerResult(info.exe, P.ROLE_PROCESS, verdict, tuple(problems), tuple(baseline), pid=info.pid,
                            plugins=tuple(plugins), source="process", note=note)


def _startup_tls_align(checker: ConsumerChecker, info: ProcessInfo, in_tree: Set[object]) -> int:
    """The largest PT_TLS alignment among the objects the process maps from its program's tree."""
    best = 0
    for path, dev, ino in info.mapped:
        if (dev, ino) in in_tree or path in in_tree or path == info.exe:
            try:
                best = max(best, static_tls_align(checker.read(path)))
            except SoswapError:
                continue
    return best


def _with_mapped_dirs(checker: ConsumerChecker, info: ProcessInfo
                      ) -> Optional[Tuple[ProcessInfo, P.ConsumerResult, Set[object], List[str]]]:
    """The process checked again with the directories of the libraries it maps before its LD_LIBRARY_PATH,
    when that makes its program's tree load the TARGET it maps: (the process so changed, its result, its
    tree's identities, their directories); else None."""
    # ld.so maps each library below the one before: maps' address order is about the reverse of load order
    dirs = _loaded_dirs(checker, [os.path.dirname(path) for path, _dev, _ino in reversed(info.mapped)
                                  if path != info.exe])
    if not dirs:
        return None
    rest = [info.env.library_path] if info.env.library_path else []
    env = info.env.replace(library_path=":".join(dirs + rest))
    changed = info._replace(env=env, note=info.note or (
        f"its environment does not explain the libraries it maps: checked with LD_LIBRARY_PATH={env.library_path}"))
    # accepted only when every library of that tree is one the process maps (a wrong directory order would
    # pick another copy), and the tree loads the TARGET it maps
    ids = {(dev, ino) for _path, dev, ino in info.mapped}
    paths = {path for path, _dev, _ino in info.mapped}
    try:
        res = checker.loader(env).load(info.exe, argv0=info.argv0)
    except SoswapError:
        return None
    for o in res.objects[1:]:
        if o.found and o.elf is not None and o.kind not in ("vdso", "interpreter") and o.path not in paths and (
                o.elf.identity is None or o.elf.identity[:2] not in ids):
            return None
    in_tree, loaded_dirs = _identities_of(res, checker.fs.target_realpath)
    if not any((dev, ino) in in_tree or path in in_tree for path, dev, ino in info.mapped
               if (dev, ino) == checker.target_id or _same_file(checker.fs.host(path), checker.target_id)):
        return None
    main = _defined_elsewhere(checker, checker.check(info.exe, env=env, argv0=info.argv0, source="process",
                                                     pid=info.pid), [p for p in paths if p not in in_tree])
    return changed, main, in_tree, loaded_dirs


def _defined_elsewhere(checker: ConsumerChecker, result: P.ConsumerResult, others: Sequence[str]) -> P.ConsumerResult:
    """``result`` with a note naming the missing symbols another object the process maps defines: its lost
    environment may have preloaded that object (then the restart works), or the process dlopen-ed it with
    RTLD_LOCAL (then it does not help the program): which one cannot be told, and the problems stay."""
    missing = {p.symbol for p in result.problems if p.kind == "undefined-symbol" and p.symbol}
    if not missing:
        return result
    defined: Dict[str, List[str]] = {}
    for path in others:
        try:
            syms = checker.read(path).symbols
        except (SoswapError, OSError):
            continue
        for s in syms:
            if s.name in missing and s.shndx != 0 and s.bind != 0 and path not in defined.get(s.name, ()):
                defined.setdefault(s.name, []).append(path)
    if not defined:
        return result
    named = "; ".join(f"{name} in {', '.join(paths)}" for name, paths in sorted(defined.items()))
    note = (f"also defined by objects it maps ({named}): if its lost environment preloaded one, the restart "
            "works; a dlopen-ed plugin does not help")
    return result._replace(note=(result.note + "; " if result.note else "") + note)


def _loaded_dirs(checker: ConsumerChecker, dirs: Sequence[str]) -> List[str]:
    """``dirs`` (where the process's objects were found, under the names they were asked for) without repeats
    and without the system directories: a plugin searches those itself, and putting them first would hide its
    own RUNPATH copies of system libraries."""
    real = checker.fs.target_realpath
    system = {d.rstrip("/") for d in checker.profile.system_dirs}
    system |= {real(d) for d in system}
    out: List[str] = []
    for d in dirs:
        if d not in out and d.rstrip("/") not in system and real(d) not in system:
            out.append(d)
    return out


def _dlopen_env(checker: ConsumerChecker, info: ProcessInfo, plugin: str, first: Sequence[str]) -> Environment:
    """The environment a plugin the process dlopen-ed is checked with, so that its dependencies resolve as in
    the process: ``first`` (:func:`_loaded_dirs`: an object already loaded answers its SONAME before any
    search), then, for a plugin without DT_RUNPATH, the program's DT_RPATH (``_dl_map_object`` searches the
    DT_RPATH of the whole ``l_loader`` chain; ``$ORIGIN`` the program's directory), before LD_LIBRARY_PATH."""
    dirs = list(first)
    try:
        plugin_dyn = checker.read(plugin).dynamic
        main_dyn = checker.read(info.exe).dynamic
    except (SoswapError, OSError):
        plugin_dyn = main_dyn = None
    if plugin_dyn is not None and main_dyn is not None and plugin_dyn.runpath is None and main_dyn.runpath is None \
            and main_dyn.rpath:
        origin = os.path.dirname(checker.fs.target_realpath(info.exe))
        for d in main_dyn.rpath.split(":"):
            dirs.append(d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin) if d else info.env.cwd)
    if not dirs:
        return info.env
    rest = [info.env.library_path] if info.env.library_path else []
    return info.env.replace(library_path=":".join(dirs + rest))


def _tree_identities(checker: ConsumerChecker, info: ProcessInfo) -> Tuple[Set[object], List[str]]:
    """The identities and paths of the program's tree, and the directories its libraries were found in (in load
    order, under the names they were asked for)."""
    try:
        res = checker.loader(info.env).load(info.exe, argv0=info.argv0)
    except SoswapError:
        return set(), []
    return _identities_of(res, checker.fs.target_realpath)


def _identities_of(res: LoadResult, realpath: Callable[[str], str] = os.path.realpath
                   ) -> Tuple[Set[object], List[str]]:
    """:func:`_tree_identities` of a loaded tree (``realpath``: inside the loader's root)."""
    out: Set[object] = set()
    dirs: List[str] = []
    for o in res.objects:
        if o.elf is not None and o.elf.identity is not None:
            out.add(o.elf.identity[:2])
        if o.path:
            out.add(o.path)
            out.add(realpath(o.path))
            d = os.path.dirname(o.path)
            if o.index != 0 and o.found and o.kind not in ("vdso", "interpreter") and d.startswith("/") \
                    and d not in dirs:
                dirs.append(d)
    return out, dirs


def _same_file(path: str, ident: Tuple[int, int]) -> bool:
    return _identity(path) == ident


def _sorted(results: List[P.ConsumerResult]) -> List[P.ConsumerResult]:
    rank = {P.INCOMPATIBLE: 0, P.BROKEN: 1, P.COMPATIBLE: 2, P.UNAFFECTED: 3}
    return sorted(results, key=lambda r: (rank.get(r.verdict, 9), r.pid is not None, r.path, r.pid or 0))


def _existing_file(path: str, what: str) -> str:
    if not path:
        raise UsageError(f"{what}: empty file name")
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ElfError(path, exc.strerror or str(exc)) from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise ElfError(path, "not a regular file")
    return os.path.abspath(path)


#: The ELF types neither the kernel nor ld.so loads, as ``soswap tree`` names them.
_UNLOADABLE_TYPES = {C.ET_NONE: "ET_NONE: a file of no type", C.ET_REL: "ET_REL: a relocatable object",
                     C.ET_CORE: "ET_CORE: a core dump"}


def _named_consumer(path: str, cache: ElfCache) -> bool:
    """Whether the named consumer ``path`` is checked as a plugin (a shared library, not a program). Raises
    :class:`ElfError` when it is no file execve or dlopen could load: missing, not a regular file, not ELF or
    malformed, neither a program nor a shared library (ET_REL, ET_CORE), program headers that cannot be read
    (a wrong e_phentsize, none at all: a 64-bit file whose header says ELFCLASS32)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ElfError(path, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ElfError(path, "not a regular file")
    elf: ElfFile = cache.get(os.path.abspath(path), st)
    why = _unloadable_reason(elf)
    if why is not None:
        raise ElfError(path, why)
    return classify(elf, st.st_mode) == LIBRARY


def _unloadable_reason(elf: ElfFile) -> Optional[str]:
    """Why neither execve nor dlopen would load ``elf`` (its ELF type, its program header table), or None."""
    h = elf.header
    if h.type not in C.LOADABLE_TYPES:
        return f"not a program or shared library ({_UNLOADABLE_TYPES.get(h.type, f'e_type {h.type:#x}')})"
    why = program_header_refusal(h.elf_class, h.phentsize, h.phnum, h.phoff, elf.size)
    if why is None:
        return None
    return f"cannot be loaded: {why}{_other_class_hint(elf)}"


def _other_class_hint(elf: ElfFile) -> str:
    """A note when the header's e_phentsize fits the other ELF class (its EI_CLASS byte is wrong), else ""."""
    h = elf.header
    other, offset, size = (64, 54, 56) if h.elf_class == 32 else (32, 42, 32)
    try:
        raw = elf.read(offset, 2, "ELF header")
    except ElfError:
        return ""
    if len(raw) == 2 and struct.unpack("<H" if h.little_endian else ">H", raw)[0] == size:
        return f" (read as ELF{other}, its header fits: its EI_CLASS byte says ELFCLASS{h.elf_class})"
    return ""

