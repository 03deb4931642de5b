"""Commit order for a multi-file transaction: a library before the files that need it.

While the renames happen one by one, a program that starts in between must find every library it needs in a
version at least as new as the one it was built against; so each file that provides a name in another file's
DT_NEEDED (its DT_SONAME or its file name, as ``_dl_map_object`` matches them) is committed first.
"""

from __future__ import annotations

import heapq
import os
from typing import Dict, List, Optional, Sequence, Set, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.errors import ElfError


class DynInfo:
    """What ordering and soname links need from an ELF file."""

    __slots__ = ("needed", "shared", "soname")

    def __init__(self, soname: Optional[str], needed: Tuple[str, ...], shared: bool = True) -> None:
        self.soname = soname
        self.needed = needed
        #: ET_DYN (a library, or a PIE); ldconfig links the soname of no ET_EXEC
        self.shared = shared


def read_dyninfo(path: str) -> Optional[DynInfo]:
    """DT_SONAME and DT_NEEDED of ``path``, or None when it is not a (readable, dynamic) ELF file."""
    try:
        with ElfFile.open(path) as elf:
            if not elf.is_dynamic:
                return None
            return DynInfo(elf.soname, tuple(elf.needed), elf.type == C.ET_DYN)
    except (ElfError, OSError):
        return None


def dependency_order(names: Sequence[str], infos: Sequence[Optional[DynInfo]]) -> List[int]:
    """Indexes of the files in commit order: providers before their consumers, otherwise the given order.

    ``names`` are the destination file names; a cycle (two libraries needing each other) keeps the given
    order for the files in it.
    """
    n = len(names)
    provides: Dict[str, List[int]] = {}
    for i, (name, info) in enumerate(zip(names, infos)):
        provides.setdefault(name, []).append(i)
        if info is not None and info.soname and info.soname != name:
            provides.setdefault(info.soname, []).append(i)
    after: List[Set[int]] = [set() for _ in range(n)]  # after[i]: files that must wait for i
    indegree = [0] * n
    for j, info in enumerate(infos):
        if info is None:
            continue
        for need in info.needed:
            for i in provides.get(os.path.basename(need), ()):
                if i != j and j not in after[i]:
                    after[i].add(j)
                    indegree[j] += 1
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    order: List[int] = []
    placed = [False] * n
    while len(order) < n:
        if not ready:  # a cycle: release the earliest remaining file
            i = next(k for k in range(n) if not placed[k])
            indegree[i] = 0
            heapq.heappush(ready, i)
        i = heapq.heappop(ready)
        if placed[i]:
            continue
        placed[i] = True
        order.append(i)
        for j in sorted(after[i]):
            indegree[j] -= 1
            if indegree[j] == 0 and not placed[j]:
                heapq.heappush(ready, j)
    return order
