"""Symbol versioning: DT_VERDEF (what an object defines) and DT_VERNEED (what it needs from which file)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from soswap.elf import constants as C
from soswap.elf.dynamic import StringTable
from soswap.errors import ElfError
from soswap.tuples import NamedTuple

if TYPE_CHECKING:
    from soswap.elf.file import ElfFile


class VersionDef(NamedTuple):
    """One Elf_Verdef: its index (the value DT_VERSYM uses), flags, hash, name and parent names."""

    index: int
    flags: int
    hash: int
    name: str
    parents: Tuple[str, ...]

    @property
    def is_base(self) -> bool:
        """VER_FLG_BASE: the entry naming the file itself, never matched by a reference."""
        return bool(self.flags & C.VER_FLG_BASE)


class VersionNeedEntry(NamedTuple):
    """One Elf_Vernaux: version ``name`` needed from the enclosing file, with its index and flags."""

    index: int  # vna_other, without the hidden bit
    flags: int
    hash: int
    name: str
    hidden: bool  # vna_other & 0x8000

    @property
    def weak(self) -> bool:
        """VER_FLG_WEAK: a missing definition is not an error (``_dl_check_map_versions``)."""
        return bool(self.flags & C.VER_FLG_WEAK)


class VersionNeed(NamedTuple):
    """One Elf_Verneed: the file (a DT_NEEDED name) and the versions needed from it."""

    file: str
    entries: Tuple[VersionNeedEntry, ...]


class VersionTables(NamedTuple):
    definitions: Tuple[VersionDef, ...]
    needs: Tuple[VersionNeed, ...]
    #: index -> (version name, file or None for a definition, hidden)
    by_index: Dict[int, Tuple[str, Optional[str], bool]]

    def definition(self, index: int) -> Optional[VersionDef]:
        for d in self.definitions:
            if d.index == index:
                return d
        return None


#: Version tables are read in one piece of up to this many bytes (they are small; more is read if needed).
_REGION = 1 << 14


def _chain_limit(elf: ElfFile, declared: Optional[int], entry_size: int) -> int:
    """Upper bound on entries in a linked version list: the declared count, never more than fit the file."""
    cap = elf.size // entry_size + 1
    return min(declared, cap) if declared is not None else cap


def decode_versions(elf: ElfFile) -> VersionTables:
    dyn = elf.dynamic
    tags = dyn.tags
    strtab = dyn.strtab
    defs = _decode_verdef(elf, tags, strtab) if C.DT_VERDEF in tags else ()
    needs = _decode_verneed(elf, tags, strtab) if C.DT_VERNEED in tags else ()
    by_index: Dict[int, Tuple[str, Optional[str], bool]] = {}
    for need in needs:
        for e in need.entries:
            by_index[e.index] = (e.name, need.file, e.hidden)
    for d in defs:
        by_index[d.index] = (d.name, None, False)
    return VersionTables(defs, needs, by_index)


def _decode_verdef(elf: ElfFile, tags: Dict[int, int], strtab: StringTable) -> Tuple[VersionDef, ...]:
    lay = elf.layout
    vd, vda = lay.verdef, lay.verdaux
    region = elf.region_at_vaddr(tags[C.DT_VERDEF], _REGION, "DT_VERDEF")
    count = _chain_limit(elf, tags.get(C.DT_VERDEFNUM), vd.size)
    out: List[VersionDef] = []
    off = region.offset
    seen = set()
    for _ in range(count):
        if off in seen:
            raise ElfError(elf.path, "DT_VERDEF chain loops", off)
        seen.add(off)
        version, flags, ndx, cnt, vhash, aux, nxt = region.unpack(vd, off, "Elf_Verdef")
        if version != 1:
            raise ElfError(elf.path, f"unsupported Elf_Verdef version {version}", off)
        names: List[str] = []
        aoff = off + aux
        for _j in range(min(cnt, elf.size // vda.size)):
            name_off, anext = region.unpack(vda, aoff, "Elf_Verdaux")
            names.append(strtab.get(name_off, "version definition"))
            if anext == 0:
                break
            aoff += anext
        if not names:
            raise ElfError(elf.path, "Elf_Verdef without a name", off)
        out.append(VersionDef(ndx & C.VERSYM_VERSION, flags, vhash, names[0], tuple(names[1:])))
        if nxt == 0:
            break
        off += nxt
    return tuple(out)


def _decode_verneed(elf: ElfFile, tags: Dict[int, int], strtab: StringTable) -> Tuple[VersionNeed, ...]:
    lay = elf.layout
    vn, vna = lay.verneed, lay.vernaux
    region = elf.region_at_vaddr(tags[C.DT_VERNEED], _REGION, "DT_VERNEED")
    count = _chain_limit(elf, tags.get(C.DT_VERNEEDNUM), vn.size)
    out: List[VersionNeed] = []
    off = region.offset
    seen = set()
    for _ in range(count):
        if off in seen:
            raise ElfError(elf.path, "DT_VERNEED chain loops", off)
        seen.add(off)
        version, cnt, file_off, aux, nxt = region.unpack(vn, off, "Elf_Verneed")
        if version != 1:
            raise ElfError(elf.path, f"unsupported Elf_Verneed version {version}", off)
        file_name = strtab.get(file_off, "version need file")
        entries: List[VersionNeedEntry] = []
        aoff = off + aux
        for _j in range(min(cnt, elf.size // vna.size)):
            vhash, vflags, other, name_off, anext = region.unpack(vna, aoff, "Elf_Vernaux")
            entries.append(VersionNeedEntry(other & C.VERSYM_VERSION, vflags, vhash,
                                            strtab.get(name_off, "version need"), bool(other & C.VERSYM_HIDDEN)))
            if anext == 0:
                break
            aoff += anext
        out.append(VersionNeed(file_name, tuple(entries)))
        if nxt == 0:
            break
        off += nxt
    return tuple(out)
