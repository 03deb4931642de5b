"""Search path lists: DT_RPATH/DT_RUNPATH/LD_LIBRARY_PATH decomposed into directories the way
``decompose_rpath``/``fillin_rpath`` do (elf/dl-load.c), and the hwcaps subdirectories tried inside each
directory (``_dl_important_hwcaps``)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from soswap.loader import dst
from soswap.tuples import NamedTuple


class SearchDir(NamedTuple):
    """One directory of a search list: ``dirname`` ends with ``/`` (``""`` means the current directory)."""

    dirname: str
    #: The ``RULE_*`` this directory belongs to (rpath, runpath, ld_library_path, system).
    rule: str
    #: Index of the object whose DT_RPATH/DT_RUNPATH gave it (None for LD_LIBRARY_PATH and system dirs).
    owner: Optional[int]


def split_elements(value: str, separators: str) -> List[str]:
    """``strsep`` over ``separators``: every element, empty ones included."""
    if len(separators) == 1:
        return value.split(separators)
    out = [value]
    for sep in separators:
        out = [part for chunk in out for part in chunk.split(sep)]
    return out


def decompose(value: Optional[str], separators: str, rule: str, owner: Optional[int], *, origin: Optional[str],
              platform: Optional[str], lib: str, secure: bool, is_executable: bool,
              trusted_dirs: Sequence[str]) -> Tuple[SearchDir, ...]:
    """``fillin_rpath``: expand DSTs in each element, drop elements whose expansion is empty, strip trailing
    slashes and add one, keep the empty element (the current directory), drop duplicates."""
    if not value:
        return ()
    out: List[SearchDir] = []
    seen = set()
    for element in split_elements(value, separators):
        if element:
            expanded = dst.substitute(element, origin=origin, platform=platform, lib=lib, secure=secure,
                                      is_executable=is_executable, trusted_dirs=trusted_dirs)
            if not expanded:
                continue
            n = len(expanded)
            while n > 1 and expanded[n - 1] == "/":
                n -= 1
            expanded = expanded[:n]
            if not expanded.endswith("/"):
                expanded += "/"
        else:
            expanded = ""
        if expanded in seen:
            continue
        seen.add(expanded)
        out.append(SearchDir(expanded, rule, owner))
    return tuple(out)


def capability_subdirs(hwcaps: Sequence[str], legacy: Sequence[str]) -> Tuple[str, ...]:
    """The subdirectories tried inside every search directory, in order, ending with ``""`` (the directory
    itself): ``glibc-hwcaps/x86-64-v4/`` ..., then the legacy power set (glibc <= 2.36)."""
    return tuple([f"glibc-hwcaps/{h}/" for h in hwcaps] + [f"{s}/" for s in legacy] + [""])
