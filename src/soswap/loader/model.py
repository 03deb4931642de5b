"""The values the loader returns: loaded objects, why they were found, failures, binding results."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

from soswap.tuples import NamedTuple

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
RULE_NOT_FOUND = "not-found"

# The dynamic tags a dependency comes from (LoadedObject.needed_kinds)
NEEDED = "needed"
FILTER = "filter"  # DT_FILTER: the filtee goes before its filter in the search list; missing, it is fatal
AUXILIARY = "auxiliary"  # DT_AUXILIARY: the same, but a filtee that cannot be loaded is ignored

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
#: ``parse_tunables`` (glibc >= 2.39) refuses GLIBC_TUNABLES whole: a warning every ld.so run prints first.
TUNABLES = "tunables"
NO_INTERPRETER = "no-interpreter"
#: execve refuses the program itself (``open_exec``: a noexec mount).
NOT_EXECUTABLE = "not-executable"
CRASH = "crash"
#: ``_dl_map_object_deps``: the symbol search list cannot be allocated (ENOMEM). Reached when filters placed
#: before the main map make a new copy of an object at every turn until no mapping is left.
OUT_OF_MEMORY = "out-of-memory"
#: ``_dl_check_protected_symbol`` (glibc 2.36 as Debian ships it): a warning for a copy relocation of the program
#: against a STV_PROTECTED data symbol, and for a PLT reference of the program with a nonzero st_value (a
#: canonical function address) to a STV_PROTECTED function; the error that follows the warning when the defining
#: object needs GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS.
PROTECTED_COPY = "protected-copy"
PROTECTED_FUNCTION = "protected-function"
INDIRECT_EXTERN_ACCESS = "indirect-extern-access"
#: ``_dl_reloc_bad_type``: a relocation type ld.so does not handle (``unexpected PLT reloc type 0x00``)
BAD_RELOCATION = "bad-relocation"

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
    #: One entry per dependency of this object (DT_NEEDED, and DT_AUXILIARY/DT_FILTER filtees), in dynamic
    #: section order: the index of the object it resolved to, or None.
    needed: Tuple[Optional[int], ...]
    depth: int
    origin: Optional[str]
    reason: Reason
    substituted: bool = False
    #: The display path for messages (``l_name``, or the program name for the main program).
    display: str = ""
    #: The name each entry of ``needed`` was asked for by, as the dynamic section writes it.
    needed_names: Tuple[str, ...] = ()
    #: The dynamic tag of each entry of ``needed``: :data:`NEEDED`, :data:`FILTER` or :data:`AUXILIARY`.
    needed_kinds: Tuple[str, ...] = ()

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
    #: The file ld.so refused here was a what-if substitute (``Loader.load(substitutions=...)``): another ELF
    #: class or machine, a bad header, unreadable.
    substitute: bool = False


class LoadResult(NamedTuple):
    """What ``ld.so`` loads for one root file."""

    path: str
    objects: Tuple[LoadedObject, ...]
    #: Indexes of ``objects`` in global symbol search order (``main_map->l_searchlist``).
    scope: Tuple[int, ...]
    #: Indexes in ``l_initfini`` order (dependents before their dependencies; relocation runs backwards).
    initfini: Tuple[int, ...]
    failures: Tuple[Failure, ...]
    fatal: Optional[Failure]
    profile: Profile
    env: Environment
    secure: bool
    trace: bool
    #: The program name ld.so uses in its messages (argv[0]).
    argv0: str
    #: True when the root is a static program (no PT_DYNAMIC or no DT_NEEDED): nothing is loaded.
    static: bool = False
    #: The substitution targets (paths P of ``substitutions``) whose substitute the search opened and refused
    #: (skipped for another machine or class, or fatal), in the order met; ``()`` without substitutions.
    substitutes_rejected: Tuple[str, ...] = ()
    #: Objects ld.so links before the program in its chain (a filtee of the program, DT_AUXILIARY/DT_FILTER,
    #: and what goes before it): loaded and in the scope, but its list from the program (ldd's) never reaches
    #: them. They come last in ``objects``, the program stays at index 0.
    unlisted: Tuple[int, ...] = ()

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


class VersionRef(NamedTuple):
    """A ``struct r_found_version`` a reference asks for: the version's name, its ELF hash, whether the
    DT_VERNEED entry is hidden, and the file (``vn_file``) that must define it."""

    name: str
    hash: int
    hidden: bool
    filename: Optional[str]


class Reference(NamedTuple):
    """One symbol lookup a relocation triggers (after ``l_lookup_cache`` collapsing): what
    :meth:`Loader.references` returns and :meth:`Loader.resolve` takes."""

    #: (name as bytes, (version name, hash, hidden) or None, type class): what the lookup depends on.
    key: Tuple[bytes, Optional[Tuple[str, int, bool]], int]
    #: The referencing symbol's index in the object's dynamic symbol table (:meth:`Loader.symbol`).
    symbol_index: int
    #: The version the reference asks for (``resolve_map``: only when its hash is set), or None.
    version: Optional[VersionRef]
    #: A DT_JMPREL slot that lazy binding leaves for the first call (``elf_machine_lazy_rel``).
    lazy: bool
    #: A copy relocation (``ELF_RTYPE_CLASS_COPY``: the lookup skips the executable).
    copy: bool
    #: The referencing symbol is STB_WEAK (unresolved, it is 0 rather than an error).
    weak: bool

    @property
    def name(self) -> str:
        """The symbol name."""
        return self.key[0].decode("utf-8", "surrogateescape")

    @property
    def type_class(self) -> int:
        """``ELF_RTYPE_CLASS_*``: 1 (PLT: skips undefined entries), 2 (COPY), 0 (other data)."""
        return self.key[2]

    @property
    def plt(self) -> bool:
        """A PLT-class lookup (``ELF_RTYPE_CLASS_PLT``: a jump slot, or a TLS relocation on x86-64)."""
        return bool(self.key[2] & 1)


class Definition(NamedTuple):
    """The definition a symbol reference binds to (:meth:`Loader.resolve`), or one symbol of an object
    (:meth:`Loader.symbol`)."""

    #: Index of the defining object in :attr:`LoadResult.objects`.
    index: int
    #: Its index in that object's dynamic symbol table.
    symbol_index: int
    name: str
    #: The version node of the definition (None: unversioned, or the base/global index).
    version: Optional[str]
    #: ``name@V`` (a non-default version: the DT_VERSYM hidden bit) rather than ``name@@V``.
    hidden: bool
    #: ``STT_*``, ``STB_*``, ``STV_*`` (soswap.elf.constants).
    type: int
    bind: int
    visibility: int
    size: int
    value: int
    #: ``st_shndx`` (``SHN_UNDEF`` = 0 for an undefined symbol).
    shndx: int

    @property
    def versioned_name(self) -> str:
        """``name``, ``name@V`` or ``name@@V``."""
        if self.version is None:
            return self.name
        return f"{self.name}{'@' if self.hidden else '@@'}{self.version}"


class Unresolved(NamedTuple):
    """A symbol reference no object in scope satisfies."""

    object: int
    symbol: str
    version: Optional[str]
    #: ``startup`` (non-PLT relocation, BIND_NOW object, LD_BIND_NOW) or ``first-call`` (lazy PLT slot).
    when: str
    plt: bool
    weak: bool


class BindResult(NamedTuple):
    """Symbol and version check over a :class:`LoadResult`."""

    load: LoadResult
    failures: Tuple[Failure, ...]
    unresolved: Tuple[Unresolved, ...]
    fatal: Optional[Failure]
    bindings_checked: int
    #: Objects whose references could not be checked, as (index, what is wrong): their symbol or relocation
    #: tables cannot be decoded (a malformed file), so what ld.so makes of them is not known.
    unchecked: Tuple[Tuple[int, str], ...] = ()

    @property
    def loadable(self) -> bool:
        return self.fatal is None
