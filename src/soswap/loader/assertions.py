"""The texts of ld.so's assertion failures. ``assert`` prints the source line, which moves between glibc
releases and distribution builds: these are the lines the builds we compared against print."""

from __future__ import annotations

from typing import Dict, Tuple

#: elf/dl-lookup.c, check_match: a versioned reference meets an object without symbol versioning (gone in 2.41).
#: Debian 11 (2.31), Ubuntu 22.04 (2.35), Debian 12 (2.36), Ubuntu 24.04 (2.39).
_CHECK_MATCH_LINES: Dict[Tuple[int, int], int] = {(2, 31): 111, (2, 35): 106, (2, 36): 107, (2, 39): 106}
#: elf/dl-version.c, _dl_check_map_versions: a version need names a file no loaded object is known by.
#: Debian 11 (2.31); 204 from 2.35 to 2.43 (Ubuntu 22.04 and 24.04, Debian 12 and 13, sid).
_VERNEED_LINES: Dict[Tuple[int, int], int] = {(2, 31): 205, (2, 35): 204}


#: elf/rtld.c, init_tls: an object with TLS is linked before the main map (a filtee of the FILE or program): the
#: count of TLS modules from the main map misses it. Debian 12 (2.36); other releases not compared.
_INIT_TLS_LINES: Dict[Tuple[int, int], int] = {(2, 36): 776}


def _line(table: Dict[Tuple[int, int], int], glibc: Tuple[int, int]) -> int:
    """The line of the newest release in ``table`` not newer than ``glibc`` (the oldest one's before it)."""
    known = sorted(table)
    best = known[0]
    for v in known:
        if v <= glibc:
            best = v
    return table[best]


def check_match_assertion(glibc: Tuple[int, int]) -> str:
    """What ld.so prints when check_match's assertion fails."""
    return (f"Inconsistency detected by ld.so: dl-lookup.c: {_line(_CHECK_MATCH_LINES, glibc)}: check_match: "
            "Assertion `version->filename == NULL || ! _dl_name_match_p (version->filename, map)' failed!")


def verneed_assertion(glibc: Tuple[int, int]) -> str:
    """What ld.so prints when _dl_check_map_versions finds no object for a version need's file."""
    return (f"Inconsistency detected by ld.so: dl-version.c: {_line(_VERNEED_LINES, glibc)}: _dl_check_map_versions: "
            "Assertion `needed != NULL' failed!")


def init_tls_assertion(glibc: Tuple[int, int]) -> str:
    """What ld.so prints when init_tls counts fewer TLS modules from the main map than were loaded."""
    return (f"Inconsistency detected by ld.so: rtld.c: {_line(_INIT_TLS_LINES, glibc)}: init_tls: "
            "Assertion `i == GL(dl_tls_max_dtv_idx)' failed!")
