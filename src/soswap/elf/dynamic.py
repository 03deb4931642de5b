"""The dynamic section: DT_NEEDED, DT_SONAME, search paths, flags and the addresses of the other tables."""

from __future__ import annotations

import sys
from array import array
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from soswap.elf import constants as C
from soswap.errors import ElfError
from soswap.tuples import NamedTuple

if TYPE_CHECKING:
    from soswap.elf.file import ElfFile
    from soswap.elf.source import Source


class DynamicInfo(NamedTuple):
    """The decoded dynamic section. String values are decoded with ``surrogateescape`` (like file names)."""

    strtab: StringTable
    entries: Tuple[Tuple[int, int], ...]
    tags: Dict[int, int]  # the last value of each tag, as glibc's get-dynamic-info.h keeps it
    needed: Tuple[str, ...]
    soname: Optional[str]
    rpath: Optional[str]
    runpath: Optional[str]
    filters: Tuple[str, ...]
    auxiliary: Tuple[str, ...]
    flags: int
    flags_1: int
    has_bind_now_tag: bool

    @property
    def rpath_list(self) -> Tuple[str, ...]:
        """DT_RPATH split on ``:``; empty elements are kept (the loader reads them as the cwd)."""
        return split_path_list(self.rpath)

    @property
    def runpath_list(self) -> Tuple[str, ...]:
        """DT_RUNPATH split on ``:``; empty elements are kept."""
        return split_path_list(self.runpath)

    @property
    def bind_now(self) -> bool:
        """True when the object asks for immediate binding: DT_BIND_NOW, DF_BIND_NOW or DF_1_NOW
        (``_dl_relocate_object`` in elf/dl-reloc.c)."""
        return self.has_bind_now_tag or bool(self.flags & C.DF_BIND_NOW) or bool(self.flags_1 & C.DF_1_NOW)

    @property
    def nodeflib(self) -> bool:
        return bool(self.flags_1 & C.DF_1_NODEFLIB)

    @property
    def symbolic(self) -> bool:
        """DT_SYMBOLIC, or DF_SYMBOLIC in DT_FLAGS (``elf_get_dynamic_info`` turns the flag into the tag): the
        object's own lookups start at itself."""
        return C.DT_SYMBOLIC in self.tags or bool(self.flags & C.DF_SYMBOLIC)

    @property
    def flag_names(self) -> List[str]:
        """Names of the DT_FLAGS then DT_FLAGS_1 bits that are set (unknown bits as hex)."""
        return _bit_names(self.flags, C.DF_FLAGS) + _bit_names(self.flags_1, C.DF_1_FLAGS)


def split_path_list(value: Optional[str]) -> Tuple[str, ...]:
    """Split a DT_RPATH/DT_RUNPATH value on ``:`` keeping empty elements (an empty value gives ())."""
    if not value:
        return ()
    return tuple(value.split(":"))


def _bit_names(value: int, names: Dict[int, str]) -> List[str]:
    out = []
    bit = 1
    while bit <= value:
        if value & bit:
            out.append(names.get(bit, f"{bit:#x}"))
        bit <<= 1
    return out


def dynamic_entries(elf: ElfFile) -> List[Tuple[int, int]]:
    """The (tag, value) entries of the first PT_DYNAMIC up to DT_NULL, nothing decoded (empty without one)."""
    segs = elf.segments_of_type(C.PT_DYNAMIC)
    if not segs:
        return []
    seg = segs[0]
    lay = elf.layout
    size = seg.filesz - seg.filesz % lay.dyn.size
    raw = elf.read_mapped(seg.offset, size, "PT_DYNAMIC")
    words = array("Q" if lay.is64 else "I", raw)  # d_tag, d_val: unsigned words of the file's class
    if lay.little != _NATIVE_LITTLE:
        words.byteswap()
    tags = words[0::2]
    end = tags.index(C.DT_NULL) if C.DT_NULL in tags else len(tags)
    return list(zip(tags[:end], words[1:2 * end:2]))


def decode_dynamic(elf: ElfFile) -> DynamicInfo:
    """Decode PT_DYNAMIC of ``elf`` (an empty :class:`DynamicInfo` if there is none)."""
    segs = elf.segments_of_type(C.PT_DYNAMIC)
    if not segs:
        return DynamicInfo(StringTable(None, elf.path, 0, 0), (), {}, (), None, None, None, (), (), 0, 0, False)
    entries = dynamic_entries(elf)
    tags: Dict[int, int] = {}
    for tag, val in entries:
        tags[tag] = val
    strtab = StringTable.from_dynamic(elf, tags)

    def strings(tag: int) -> Tuple[str, ...]:
        return tuple(strtab.get(val, _TAG_NAMES.get(tag, hex(tag))) for t, val in entries if t == tag)

    def last_string(tag: int) -> Optional[str]:
        if tag not in tags:
            return None
        return strtab.get(tags[tag], _TAG_NAMES.get(tag, hex(tag)))

    return DynamicInfo(
        strtab=strtab,
        entries=tuple(entries),
        tags=tags,
        needed=strings(C.DT_NEEDED),
        soname=last_string(C.DT_SONAME),
        rpath=last_string(C.DT_RPATH),
        runpath=last_string(C.DT_RUNPATH),
        filters=strings(C.DT_FILTER),
        auxiliary=strings(C.DT_AUXILIARY),
        flags=tags.get(C.DT_FLAGS, 0),
        flags_1=tags.get(C.DT_FLAGS_1, 0),
        has_bind_now_tag=C.DT_BIND_NOW in tags,
    )


_TAG_NAMES = {
    C.DT_NEEDED: "DT_NEEDED",
    C.DT_SONAME: "DT_SONAME",
    C.DT_RPATH: "DT_RPATH",
    C.DT_RUNPATH: "DT_RUNPATH",
    C.DT_FILTER: "DT_FILTER",
    C.DT_AUXILIARY: "DT_AUXILIARY",
}


_NATIVE_LITTLE = sys.byteorder == "little"
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


class StringTable:
    """DT_STRTAB with bounds-checked NUL-terminated lookups.

    A few lookups (DT_NEEDED, DT_SONAME, ...) read small windows of the file; :meth:`load` reads the whole
    table once for the symbol decoder. It reads through the file's :class:`~soswap.elf.source.Source`, not the
    :class:`~soswap.elf.file.ElfFile` that holds it: no reference cycle, so a file dropped by its cache is freed at
    once, not left to the cyclic collector (a hundred thousand objects at the end of a large ``tree`` run).
    """

    _WINDOW = 256
    #: Tables up to this size are read whole at the first lookup (one read instead of one per string).
    _WHOLE = 1 << 16

    def __init__(self, source: Optional[Source], path: str, file_offset: int, size: int) -> None:
        self._src = source
        self.path = path
        self.file_offset = file_offset
        self.size = size
        self._data: Optional[bytes] = None if size else b""

    @classmethod
    def from_dynamic(cls, elf: ElfFile, tags: Dict[int, int]) -> StringTable:
        if C.DT_STRTAB not in tags:
            return cls(None, elf.path, 0, 0)
        addr = tags[C.DT_STRTAB]
        room = elf.room_at(addr)
        if room == 0:
            raise ElfError(elf.path, f"DT_STRTAB at address {addr:#x} is not in any loaded segment")
        if C.DT_STRSZ in tags:
            size = tags[C.DT_STRSZ]
            if size > room:
                raise ElfError(elf.path, f"DT_STRSZ ({size}) runs past the segment holding DT_STRTAB")
        else:
            size = room
        if size == 0:
            return cls(None, elf.path, 0, 0)
        off = elf.vaddr_to_offset(addr, size, "DT_STRTAB")
        return cls(elf.source, elf.path, off, size)

    def load(self) -> bytes:
        """The whole table."""
        if self._data is None:
            assert self._src is not None
            self._data = self._src.read(self.file_offset, self.size, "DT_STRTAB")
        return self._data

    def release(self) -> None:
        """Forget the table read whole (:meth:`load` reads it again when asked)."""
        if self._src is not None and self.size:
            self._data = None

    def get_bytes(self, offset: int, what: str) -> bytes:
        if offset >= self.size:
            raise ElfError(self.path, f"{what} string offset {offset} is outside DT_STRTAB ({self.size} bytes)",
                           self.file_offset)
        if self._data is None and self.size <= self._WHOLE:
            self.load()
        if self._data is not None:
            end = self._data.find(b"\0", offset)
            if end >= 0:
                return self._data[offset:end]
        else:
            assert self._src is not None
            parts = []
            pos = offset
            while pos < self.size:
                n = min(self._WINDOW, self.size - pos)
                chunk = self._src.read(self.file_offset + pos, n, "DT_STRTAB")
                end = chunk.find(b"\0")
                if end >= 0:
                    parts.append(chunk[:end])
                    return b"".join(parts)
                parts.append(chunk)
                pos += n
        raise ElfError(self.path, f"{what} string at offset {offset} is not NUL-terminated",
                       self.file_offset + offset)

    def get(self, offset: int, what: str) -> str:
        """The string at ``offset``, decoded as :func:`os.fsdecode` does."""
        return self.get_bytes(offset, what).decode(_FS_ENCODING, _FS_ERRORS)
