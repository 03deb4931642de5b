"""The values an ELF-level ABI diff returns: one :class:`Change` per difference, and the :class:`AbiDiff`.

Every change has a ``kind`` (one of :data:`KINDS`), a ``severity`` (:data:`BREAKING`, :data:`REVIEW` or
:data:`HARMLESS`, from the table of docs/check.md) and, where it concerns one, the symbol and version it is
about. ``old_value``/``new_value`` carry the two sides as text (a size, a type, a flag, a file name).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from soswap.tuples import NamedTuple

#: Breaks existing consumers whatever else is installed (a removed symbol, a wrong ELF class...).
BREAKING = "breaking"
#: May break some consumers or systems: depends on what is installed or on how consumers use it
#: (a new dependency, a new version need, a protected function...). ``soswap check`` decides.
REVIEW = "review"
#: Existing binaries keep working (an added symbol, FUNC→IFUNC, GLOBAL→WEAK...).
HARMLESS = "harmless"

SEVERITIES = (BREAKING, REVIEW, HARMLESS)
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

#: Every change kind, in the order reports list them within one severity.
KINDS = (
    # the ELF header: can the loader open NEW at all?
    "elf-class-changed",
    "byte-order-changed",
    "machine-changed",
    "osabi-changed",
    "abiversion-changed",
    "header-invalid",
    "elf-type-changed",
    "segments-unmappable",
    "file-truncated",
    "file-incomplete",
    # the dynamic section
    "soname-changed",
    "needed-added",
    "needed-removed",
    "filter-added",
    "filter-removed",
    "search-path-changed",
    "interpreter-changed",
    # version nodes
    "versioning-removed",
    "versioning-added",
    "version-removed",
    "version-added",
    # exported symbols
    "symbol-removed",
    "symbol-unexported",
    "symbol-moved",
    "symbol-moved-out",
    "default-version-changed",
    "default-version-removed",
    "type-changed",
    "size-changed",
    "binding-changed",
    "visibility-changed",
    "symbol-added",
    # what NEW needs from its own dependencies
    "undefined-added",
    "version-need-added",
    # loader-relevant flags and properties
    "exec-stack",
    "plt-reloc-refused",
    "references-undecodable",
    "flag-added",
    "flag-removed",
    "isa-level-raised",
    "isa-level-lowered",
    "static-tls-grown",
)
_KIND_RANK = {k: i for i, k in enumerate(KINDS)}

#: What each kind means for consumers (printed once above the changes of that kind).
KIND_NOTES: Dict[str, str] = {
    "elf-class-changed": "ld.so skips NEW: 'wrong ELF class'",
    "byte-order-changed": "ld.so refuses NEW: 'invalid ELF header'",
    "machine-changed": "ld.so skips NEW silently: 'cannot open shared object file'",
    "osabi-changed": "ld.so accepts only SYSV and GNU",
    "abiversion-changed": "ld.so accepts GNU ABI versions below LIBC_ABI_MAX",
    "header-invalid": "ld.so refuses NEW at open_verify",
    "elf-type-changed": "ld.so loads only ET_DYN libraries (and no PIE) as dependencies",
    "segments-unmappable": "ld.so refuses NEW at _dl_map_object_from_fd: its segments cannot be mapped",
    "file-truncated": "NEW's data ends before its segments do (an interrupted copy): what touches a page past the "
                      "file's end dies of SIGBUS (ld.so loading a library, the program running), what reads the "
                      "end of the last page reads zeros",
    "file-incomplete": "NEW ends inside its section header table, past its segments (an interrupted copy?): ld.so "
                       "never reads it, but debuggers, profilers, strip and any later check of the file do",
    "soname-changed": "programs need the file by its old SONAME; ldconfig manages links by the new one",
    "needed-added": "'cannot open shared object file' at startup where the library is not installed",
    "needed-removed": "libraries that relied on it being loaded (underlinked) get 'undefined symbol'",
    "filter-added": "symbols are looked up in the filtee first; a missing DT_FILTER filtee is fatal",
    "filter-removed": "symbols are no longer looked up in the filtee",
    "search-path-changed": "NEW's dependencies may be found elsewhere, or not at all",
    "interpreter-changed": "the program is started by another dynamic loader",
    "versioning-removed": "'no version information available'; glibc < 2.41 aborts in check_match",
    "versioning-added": "unversioned references bind to the oldest version (check_match)",
    "version-removed": "'version `V' not found' at startup for every program that needs the node",
    "version-added": "new interfaces",
    "symbol-removed": "consumers that reference it fail: 'undefined symbol: NAME' (at startup for data and "
                      "BIND_NOW, else at the first call); weak references get NULL",
    "symbol-unexported": "consumers that reference it fail: 'undefined symbol: NAME'",
    "symbol-moved": "references recorded against the old version fail: 'undefined symbol: NAME, version V'",
    "symbol-moved-out": "a library in NEW's dependencies must provide it; soswap check resolves it in each "
                        "consumer's scope",
    "default-version-changed": "existing binaries keep the old version; new links get the new one",
    "default-version-removed": "existing binaries still bind; new programs can no longer link against it",
    "type-changed": "consumers use the symbol as the old type",
    "size-changed": "programs with a copy relocation keep the old size",
    "binding-changed": "GLOBAL and WEAK definitions bind alike",
    "visibility-changed": "PROTECTED: NEW binds its own definition even when a program has a copy",
    "symbol-added": "new interfaces",
    "undefined-added": "'undefined symbol' unless a library in NEW's scope provides it",
    "version-need-added": "'version `V' not found' at startup where the providing library lacks it",
    "exec-stack": "executable stacks for the whole process; dlopen fails on glibc >= 2.41",
    "plt-reloc-refused": "'unexpected PLT reloc type' at startup under lazy binding",
    "references-undecodable": "NEW's symbol or relocation tables cannot be decoded: no consumer's binding of it "
                              "can be checked, and ld.so relocates it with whatever lies past its symbol table",
    "flag-added": "loader behaviour changes",
    "flag-removed": "loader behaviour changes",
    "isa-level-raised": "'CPU ISA level is lower than required' on older CPUs",
    "isa-level-lowered": "runs on more CPUs",
    "static-tls-grown": "dlopen takes a static TLS block from a surplus of about 1.6 KB: 'cannot allocate memory in "
                        "static TLS block' once it does not fit",
}

COMPATIBLE = "compatible"
INCOMPATIBLE = "incompatible"


class Change(NamedTuple):
    """One difference between OLD and NEW."""

    kind: str
    severity: str
    symbol: Optional[str]
    version: Optional[str]
    detail: str
    old_value: Optional[str] = None
    new_value: Optional[str] = None

    @property
    def subject(self) -> str:
        """What the change is about, for humans: ``foo@VERS_1``, a version node, a file name or a value."""
        if self.symbol is not None:
            return self.symbol if self.version is None else f"{self.symbol}@{self.version}"
        if self.version is not None:
            return self.version
        if self.old_value is not None and self.new_value is not None:
            return f"{self.old_value} -> {self.new_value}"
        return self.new_value or self.old_value or ""


class AbiDiff(NamedTuple):
    """The ELF-level differences between the library (or executable) ``old`` and its replacement ``new``.

    ``changes`` is sorted: breaking first, then review, then harmless; by kind, symbol and version within.
    """

    old: str
    new: str
    changes: Tuple[Change, ...]

    @property
    def verdict(self) -> str:
        """``incompatible`` when any change is breaking, else ``compatible``."""
        return INCOMPATIBLE if self.breaking else COMPATIBLE

    @property
    def compatible(self) -> bool:
        return not self.breaking

    @property
    def breaking(self) -> Tuple[Change, ...]:
        return tuple(c for c in self.changes if c.severity == BREAKING)

    @property
    def review(self) -> Tuple[Change, ...]:
        return tuple(c for c in self.changes if c.severity == REVIEW)

    @property
    def harmless(self) -> Tuple[Change, ...]:
        return tuple(c for c in self.changes if c.severity == HARMLESS)

    def counts(self) -> Dict[str, int]:
        """Number of changes per severity (every severity present, possibly 0)."""
        out = {s: 0 for s in SEVERITIES}
        for c in self.changes:
            out[c.severity] = out.get(c.severity, 0) + 1
        return out

    def of_kind(self, kind: str) -> Tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == kind)


def sorted_changes(changes: List[Change]) -> Tuple[Change, ...]:
    """The changes in report order: by severity, kind, symbol, version, value.

    Bucketed by (severity, kind) first so that the per-change sort key is a C-level itemgetter.
    """
    buckets: Dict[Tuple[int, int], List[Change]] = {}
    for c in changes:
        key = (_SEVERITY_RANK.get(c.severity, 9), _KIND_RANK.get(c.kind, 999))
        lst = buckets.get(key)
        if lst is None:
            buckets[key] = [c]
        else:
            lst.append(c)
    out: List[Change] = []
    for key in sorted(buckets):
        out.extend(sorted(buckets[key], key=_within_kind))
    return tuple(out)


def _within_kind(c: Change) -> Tuple[str, str, str]:
    return (c.symbol or "", c.version or "", c.new_value or c.old_value or "")
