"""``preflight``: the ``soswap check`` engine as ``soswap install`` calls it before writing anything.

``preflight([(source, destination), ...]) -> [PreflightProblem]`` (the ``Preflight`` seam of
:mod:`soswap.replace.installer`): each destination that is an installed program or shared object (ET_EXEC,
ET_DYN) is checked with its source as NEW, the other files of the same transaction in place too, against its
consumers (default discovery: the
running processes that map it and the system's programs and plugins, through the rdeps index). Any problem
refuses the install unless forced.
"""

from __future__ import annotations

import os
from typing import AbstractSet, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from soswap.abi.check import check_replacement
from soswap.abi.consumer import SharedChecks
from soswap.abi.problems import COMPATIBLE, INCOMPATIBLE, CheckResult
from soswap.abi.processes import processes_mapping_each
from soswap.abi.rdeps import environment_for_index, open_index
from soswap.elf import ElfCache, is_elf_file, is_loadable_elf
from soswap.errors import SoswapError
from soswap.loader import Profile
from soswap.tuples import NamedTuple


class PreflightProblem(NamedTuple):
    """One reason to refuse an install. ``message`` is one line for humans; :meth:`to_json` the JSON form."""

    target: str
    new: str
    #: ``refused`` (SONAME change, NEW not loadable here), ``consumer`` (NEW breaks a consumer), ``self``
    #: (NEW's own needs are not installed), ``unchecked`` (NEW could not be read); ``review`` is no reason to
    #: refuse: a compatible consumer with a review note (what ELF cannot decide), or a process that maps
    #: TARGET and could not be checked, said as a warning
    kind: str
    message: str
    consumer: Optional[str] = None
    pid: Optional[int] = None
    #: the first problem of that consumer: its kind, when it strikes and the exact ld.so message
    problem: Optional[Dict[str, Any]] = None
    #: how many problems that consumer has in all
    count: int = 0

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> Dict[str, Any]:
        return {"target": self.target, "new": self.new, "kind": self.kind, "message": self.message,
                "consumer": self.consumer, "pid": self.pid, "problem": self.problem, "count": self.count}


def preflight(pairs: Sequence[Tuple[str, str]], *, cache_dir: Optional[str] = None,
              environ: Optional[Mapping[str, str]] = None, leaving: AbstractSet[str] = frozenset(),
              **discovery: Any) -> List[PreflightProblem]:
    """Check every ``(source, destination)`` of a transaction; the problems, empty when it is safe.

    Destinations that do not exist yet (new files) or are not ELF files (scripts, data) are not checked. A
    source that cannot be read as ELF where an ELF file is installed is a problem, not an error. The rdeps
    index lives in the cache directory (``cache_dir``, default :func:`soswap.state.cache_dir`), created on
    demand, even by a dry run: it holds facts about the system, no user state. The directories are walked once
    for the whole transaction. ``discovery``: ``consumers``, ``scope``, ``pids``, ``processes``, ``system`` as
    for :func:`check_replacement` (default: the running processes and the whole system); ``leaving``: files the
    transaction deletes (canonical paths), not checked as programs or plugins."""
    pairs = [(os.path.abspath(s), os.path.abspath(d)) for s, d in pairs]
    # what ld.so loads has consumers; an object file or a kernel module (ET_REL) has none here
    checked = [(s, d) for s, d in pairs if is_loadable_elf(d)]
    if not checked:
        return []
    # every ELF file the transaction puts in place, new files included (a new dependency of NEW)
    everything = {d: s for s, d in pairs if is_loadable_elf(s) and (is_elf_file(d) or not os.path.lexists(d))}
    environ = os.environ if environ is None else environ
    try:
        index = open_index(cache_dir, Profile.detect(), environment_for_index(environ), elf_cache=ElfCache())
    except SoswapError as exc:  # e.g. a malformed ld.so.cache
        return [PreflightProblem(d, s, "unchecked", f"{d}: cannot check {s} as its replacement: {exc}")
                for s, d in checked]
    explicit = any(discovery.get(k) for k in ("consumers", "scope", "pids"))
    mapped: Dict[str, List[int]] = {}
    note: Optional[str] = None
    processes = discovery.get("processes")
    if processes if processes is not None else not explicit:  # who maps each destination: one /proc pass
        mapped, note = processes_mapping_each([d for _, d in checked])
    shared = SharedChecks()  # every check below loads with the whole transaction in place: loads and failures
    out: List[PreflightProblem] = []
    said_unreadable = False  # one walk for the whole transaction: what it could not read is said once
    for source, dest in checked:
        others = {d: s for d, s in everything.items() if d != dest}
        try:
            result = check_replacement(dest, source, environ=environ, also=others, index=index,
                                       mapping=(mapped[dest], note) if dest in mapped else None, shared=shared,
                                       leaving=leaving, **discovery)
        except SoswapError as exc:
            out.append(PreflightProblem(dest, source, "unchecked",
                                        f"{dest}: cannot check {source} as its replacement: {exc}"))
            continue
        out.extend(problems_of(result, unreadable=not said_unreadable))
        said_unreadable = said_unreadable or bool(result.discovery.unreadable)
    return out


def unreadable_note(unreadable: Sequence[Tuple[str, str]]) -> str:
    """One line about what the walk could not read (``(path, why)`` each): the first named, the rest counted."""
    path, why = unreadable[0]
    more = f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""
    return (f"not checked: {path} ({why}){more} could not be read: any may be a program or plugin that loads "
            "it (soswap check lists them)")


#: The kind of a :class:`PreflightProblem` that is no reason to refuse (see ``kind``).
REVIEW_NOTE = "review"


def problems_of(result: CheckResult, *, unreadable: bool = True) -> List[PreflightProblem]:
    """The reasons to refuse, from one :class:`CheckResult`, and its review notes (kind :data:`REVIEW_NOTE`).
    ``unreadable``: include the note about what the walk of the directories could not read (the checks of one
    transaction share one walk: said once)."""
    target, new = result.target, result.new
    out: List[PreflightProblem] = []
    for ch in result.refusals:
        out.append(PreflightProblem(target, new, "refused", f"{target}: {ch.kind}: {ch.detail}"))
    for c in result.incompatible_consumers:
        first = c.problems[0]
        who = f"process {c.pid} ({c.path})" if c.pid is not None else f"{c.role} {c.path}"
        text = first.message if first.message is not None and not first.silent else f"(silent) {first.detail}"
        more = f" (+{len(c.problems) - 1} more)" if len(c.problems) > 1 else ""
        out.append(PreflightProblem(
            target, new, "consumer", f"{target}: NEW breaks {who} at {first.when}: {text}{more}", c.path, c.pid,
            {"kind": first.kind, "symbol": first.symbol, "version": first.version, "when": first.when,
             "message": first.message}, len(c.problems)))
    for ch in result.diff.changes:
        if ch.kind == "file-incomplete":  # loads, but is not the file that was built: said, not refused
            out.append(PreflightProblem(target, new, REVIEW_NOTE, f"{target}: {ch.kind}: {ch.detail}"))
    for c in result.consumers:
        if c.verdict == COMPATIBLE and c.note.startswith("review:"):
            who = f"process {c.pid} ({c.path})" if c.pid is not None else f"{c.role} {c.path}"
            out.append(PreflightProblem(target, new, REVIEW_NOTE, f"{target}: compatible with {who}, to {c.note}",
                                        c.path, c.pid))
    for pid, why in result.discovery.skipped_processes:
        if pid:  # not a refusal (soswap could not tell), but never silent: install prints it as a warning
            why = why if why.startswith("process ") else f"process {pid} maps it and was not checked: {why}"
            out.append(PreflightProblem(target, new, REVIEW_NOTE, f"{target}: {why}", None, pid))
    if unreadable and result.discovery.unreadable:  # not a refusal either, and never silent
        note = unreadable_note(result.discovery.unreadable)
        out.append(PreflightProblem(target, new, REVIEW_NOTE, f"{target}: {note}"))
    s = result.self_check
    if s is not None and s.verdict == INCOMPATIBLE and s.problems:
        first = s.problems[0]
        out.append(PreflightProblem(
            target, new, "self", f"{target}: NEW itself: {first.message or first.detail}", None, None,
            {"kind": first.kind, "symbol": first.symbol, "version": first.version, "when": first.when,
             "message": first.message}, len(s.problems)))
    return out
