"""The values the loader returns: loaded objects, why they were found, failures, binding results."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple, Optional, Tuple

if TYPE_CHECKING:
    from soswap.elf import ElfFile
    from soswap.loader.environment import Environment
    from soswap.loader.profile import Profile

# Reason.rule values
RULE_ROOT = "root"
RULE_PATH = "path"
RULE_RPATH = "rpath"
RULE_LD_LIBRARY_PATH = "ld_library_path"
RULE_RUNPATH = "runpath"
RULE_CACHE = "cache"
RULE_SYSTEM = "system"
RULE_PRELOAD = "preload"
RULE_INTERPRETER = "interpreter"
RULE_VDSO = "vdso"
RULE_SAME_FILE = "same-file"
RULE_NOT_FOUND = "not-found"

# Failure.kind values
NOT_FOUND = "not-found"
WRONG_CLASS = "wrong-class"
BAD_FILE = "bad-file"
DST = "dst"
ISA_LEVEL = "isa-level"
VERSION = "version"
UNDEFINED_SYMBOL = "undefined-symbol"
NO_VERSION_INFO = "no-version-info"
WEAK_VERSION = "weak-version"
COPY_SIZE = "copy-size"
ASSERTION = "assertion"
PRELOAD = "preload"
NO_INTERPRETER = "no-interpreter"
CRASH = "crash"

# Failure.when values
STARTUP = "startup"
FIRST_CALL = "first-call"
WARNING = "warning"


class Reason(NamedTuple):
    """Why an object was found where it was.

    ``rule``: one of the ``RULE_*`` values; ``directory``: the search directory (DSTs expanded, with a trailing
    ``/``; ``""`` means the current directory); ``subdir``: the hwcaps subdirectory it was found in
    (``glibc-hwcaps/x86-64-v3/``, ``tls/haswell/``), if any; ``owner``: index of the object whose DT_RPATH or
    DT_RUNPATH supplied the directory; ``text``: one line for humans.
    """

    rule: str
    text: str
    directory: Optional[str] = None
    subdir: Optional[str] = None
    owner: Optional[int] = None


class LoadedObject(NamedTuple):
    """One entry of the link map (``struct link_map``)."""

    index: int
    #: The first name it was requested by (``l_libname->name``): what ``ldd`` prints left of ``=>``.
    name: str
    #: Every name it answers to (requested names and its SONAME).
    names: Tuple[str, ...]
    #: Where it was found (``l_name``); ``""`` for a program started by the kernel.
    path: str
    #: The file actually read (differs from ``path`` under a substitution); None when there is no file.
    file: Optional[str]
    elf: Optional[ElfFile]
    kind: str
    found: bool
    loader: Optional[int]
    requested_by: Tuple[int, ...]
    #: One entry per DT_NEEDED of this object: the index of the object it resolved to, or None.
    needed: Tuple[Optional[int], ...]
    depth: int
    origin: Optional[str]
    reason: Reason
    substituted: bool = False
    #: The display path for messages (``l_name``, or the program name for the main program).
    display: str = ""

    @property
    def soname(self) -> Optional[str]:
        return self.elf.soname if self.elf is not None else None


class Failure(NamedTuple):
    """Something ld.so would report: a fatal error, a lazy error at first call, or a warning."""

    kind: str
    #: The name ld.so puts in the message (the DT_NEEDED name, the file, the symbol's object...).
    name: str
    #: Index of the object the failure belongs to (the requester of a missing library, the referencing
    #: object of a symbol), or None.
    object: Optional[int]
    #: The message without the program prefix (``libfoo.so: cannot open shared object file: ...``).
    message: str
    #: The full line as the real program would print it (``./prog: error while loading shared libraries: ...``).
    line: str
    when: str
    fatal: bool
    symbol: Optional[str] = None
    version: Optional[str] = None
    #: Exit status of the program when this failure kills it (127 for load/symbol errors, 1 for versions).
    exit_status: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """What ``ld.so`` loads for one root file."""

    path: str
    objects: Tuple[LoadedObject, ...]
    #: Indexes of ``objects`` in global symbol search order (``main_map->l_searchlist``).
    scope: Tuple[int, ...]
    #: Indexes in ``l_initfini`` order (dependents before their dependencies; relocation runs backwards).
    initfini: Tuple[int, ...]
    failures: Tuple[Failure, ...]
    fatal: Optional[Failure]
    profile: Profile = dataclasses.field(compare=False, repr=False)
    env: Environment = dataclasses.field(compare=False, repr=False)
    secure: bool
    trace: bool
    #: The program name ld.so uses in its messages (argv[0]).
    argv0: str
    #: True when the root is a static program (no PT_DYNAMIC or no DT_NEEDED): nothing is loaded.
    static: bool = False

    @property
    def root(self) -> LoadedObject:
        return self.objects[0]

    @property
    def loadable(self) -> bool:
        return self.fatal is None

    def object_by_path(self, path: str) -> Optional[LoadedObject]:
        for o in self.objects:
            if o.path == path:
                return o
        return None


class Unresolved(NamedTuple):
    """A symbol reference no object in scope satisfies."""

    object: int
    symbol: str
    version: Optional[str]
    #: ``startup`` (non-PLT relocation, BIND_NOW object, LD_BIND_NOW) or ``first-call`` (lazy PLT slot).
    when: str
    plt: bool
    weak: bool


@dataclasses.dataclass(frozen=True)
class BindResult:
    """Symbol and version check over a :class:`LoadResult`."""

    load: LoadResult = dataclasses.field(compare=False, repr=False)
    failures: Tuple[Failure, ...]
    unresolved: Tuple[Unresolved, ...]
    fatal: Optional[Failure]
    bindings_checked: int

    @property
    def loadable(self) -> bool:
        return self.fatal is None
