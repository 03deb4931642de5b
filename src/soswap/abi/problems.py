"""The values ``soswap check`` returns: one :class:`Problem` per failure NEW causes in a consumer, one
:class:`ConsumerResult` per consumer, and the :class:`CheckResult` of the whole replacement.

A problem carries the exact text ld.so (or ``dlerror()``) would print, when it strikes (``startup``,
``first-call`` or ``dlopen``) and whether the program dies of it at startup. Problems ld.so does not report at
all (a call into data, a copy relocation that takes the wrong size, a TLS variable read as plain data) have
``silent`` set: their ``message`` is the closest thing glibc prints (with ``LD_WARN=1``) or None.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from soswap.abi.changes import AbiDiff, Change
from soswap.tuples import NamedTuple

# ConsumerResult.verdict values
COMPATIBLE = "compatible"
INCOMPATIBLE = "incompatible"
#: The consumer already fails with OLD (a missing library, a version error...): NEW is not blamed for it.
BROKEN = "broken"
#: The consumer does not load TARGET at all (a named consumer, or a plugin whose tree changed).
UNAFFECTED = "unaffected"
#: Self check only: NEW leaves symbols unresolved in its own dependencies, which the checked consumers
#: all provide (a library that expects symbols from the program or a sibling).
REVIEW = "review"

CONSUMER_VERDICTS = (INCOMPATIBLE, BROKEN, COMPATIBLE, UNAFFECTED)

# Problem.when values
STARTUP = "startup"
FIRST_CALL = "first-call"
#: A plugin loaded with dlopen(RTLD_NOW): dlopen() returns NULL and dlerror() says why.
DLOPEN = "dlopen"

# ConsumerResult.role values
ROLE_PROGRAM = "program"
ROLE_PLUGIN = "plugin"
ROLE_PROCESS = "process"
ROLE_LIBRARY = "library"

# Problem kinds found by soswap.abi itself (the others are the loader's Failure kinds: not-found,
# wrong-class, bad-file, version, undefined-symbol, no-version-info, assertion, isa-level, dst...).
TYPE_CHANGED = "type-changed"
COPY_SIZE = "copy-size"
PROTECTED_COPY = "protected-copy"
#: A data object (or TLS variable) NEW made smaller, referenced without a copy relocation: the consumer was
#: compiled for the old size and reads or writes past NEW's object.
OBJECT_SHRUNK = "object-shrunk"
#: A symbol NEW adds takes over references that bound another object of the consumer's scope.
PREEMPTED = "preempted"
#: A consumer replaced a symbol of TARGET (its own definition, or a copy relocation of the data), and NEW no
#: longer looks that symbol up: NEW uses its own (-Bsymbolic, or references bound when NEW was linked).
INTERPOSITION_LOST = "interposition-lost"


class Problem(NamedTuple):
    """One failure NEW causes in one consumer (and that OLD did not cause)."""

    kind: str
    symbol: Optional[str]
    version: Optional[str]
    when: str
    #: What ld.so prints, exactly (for a plugin: what dlerror() returns); None when it prints nothing.
    message: Optional[str]
    #: The object the failure belongs to (the referencing object, the requester of a missing library).
    object: Optional[str]
    #: The program (or dlopen) dies of it at startup (the first such problem is the one it dies of).
    fatal: bool = False
    #: ld.so prints nothing by default: the program misbehaves (wrong data, a crash) instead.
    silent: bool = False
    #: One sentence for humans.
    detail: str = ""


class ConsumerResult(NamedTuple):
    """The verdict for one consumer: a program, a plugin, a running process, or NEW itself."""

    path: str
    role: str
    verdict: str
    #: What NEW breaks (empty unless ``verdict`` is incompatible, or review for the self check).
    problems: Tuple[Problem, ...] = ()
    #: What already fails with OLD (a broken consumer's failures, a plugin's symbols from its host...).
    baseline: Tuple[Problem, ...] = ()
    pid: Optional[int] = None
    #: For a process: the plugins (dlopen'ed objects) checked with it.
    plugins: Tuple[str, ...] = ()
    #: Why the consumer was checked (``named``, ``scope``, ``system``, ``process``, ``self``).
    source: str = ""
    note: str = ""
    #: The root it was checked in when it is not ours: a chroot's directory, or ``/proc/PID/root`` of another
    #: mount namespace (``path`` and the messages are then paths inside it).
    root: Optional[str] = None

    @property
    def breaks(self) -> bool:
        return self.verdict == INCOMPATIBLE


class Discovery(NamedTuple):
    """How the consumers were found (for reports): sources used, counts, the index, what was skipped."""

    sources: Tuple[str, ...]
    #: The rdeps index used, when one was (path, and its update statistics).
    index_path: Optional[str] = None
    index_stats: Optional[Dict[str, object]] = None
    #: Processes that map TARGET but could not be checked, with the reason ({pid: reason}).
    skipped_processes: Tuple[Tuple[int, str], ...] = ()
    #: Files under the scanned directories that do not load TARGET (not reported one by one).
    unaffected: int = 0
    #: Consumers judged compatible from the diff alone, without binding them (``full=False``).
    shortcuts: int = 0
    #: What the walk of the scanned directories could not read (a directory it cannot list, a file it cannot
    #: open), with the reason: any of them may be a consumer, and the verdict does not speak for them.
    unreadable: Tuple[Tuple[str, str], ...] = ()

    @property
    def unchecked_processes(self) -> Tuple[Tuple[int, str], ...]:
        """The processes that map TARGET and were not checked (not the notes about the whole process scan)."""
        return tuple((pid, why) for pid, why in self.skipped_processes if pid)

    @property
    def partial(self) -> bool:
        """Something that may be a consumer was not checked: an unreadable file or directory, a process."""
        return bool(self.unreadable or self.unchecked_processes)


class CheckResult(NamedTuple):
    """What happens if NEW replaces the installed TARGET (see docs/check.md)."""

    target: str
    new: str
    verdict: str
    diff: AbiDiff
    consumers: Tuple[ConsumerResult, ...]
    #: NEW itself loaded at TARGET's place: its own dependencies, version needs and symbols.
    self_check: Optional[ConsumerResult]
    #: Changes that refuse the replacement whatever the consumers (a SONAME change, NEW not loadable).
    refusals: Tuple[Change, ...]
    discovery: Discovery

    @property
    def compatible(self) -> bool:
        return self.verdict == COMPATIBLE

    def counts(self) -> Dict[str, int]:
        """Number of consumers per verdict (every verdict present, possibly 0)."""
        out = {v: 0 for v in CONSUMER_VERDICTS}
        for c in self.consumers:
            out[c.verdict] = out.get(c.verdict, 0) + 1
        return out

    @property
    def incompatible_consumers(self) -> Tuple[ConsumerResult, ...]:
        return tuple(c for c in self.consumers if c.verdict == INCOMPATIBLE)
