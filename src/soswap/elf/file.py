"""``ElfFile``: the loader's view of an ELF file, decoded lazily from its program headers.

Only the ELF header and the program headers are decoded when a file is opened. The dynamic section, the
interpreter, the symbols, the versions, the relocations and the notes are each decoded on first use, so that
reading the dependencies of a file never touches its symbol table. Section headers are never needed (stripped
files work); they are consulted only to size a dynamic symbol table that has neither DT_HASH nor DT_GNU_HASH.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from soswap.elf import constants as C
from soswap.elf.dynamic import DynamicInfo, decode_dynamic
from soswap.elf.layouts import Layout, layout_for
from soswap.elf.source import BytesSource, FileSource, Identity, PathLike, Source
from soswap.errors import ElfError
from soswap.tuples import NamedTuple

#: The page size of mappings (what lies past a file's end in its last page reads as zeros).
_PAGE = mmap.PAGESIZE

if TYPE_CHECKING:  # the decoders are imported when first used (start-up time of a run that needs none)
    from soswap.elf.hashtab import NameHashes, RawSymbols
    from soswap.elf.notes import NoteInfo
    from soswap.elf.relocs import Relocation
    from soswap.elf.symbols import Symbol, SymbolColumns, SymbolTable
    from soswap.elf.versions import VersionDef, VersionNeed, VersionTables

#: Name hashes shared by every lookup of :meth:`ElfFile.find_symbols`.
_HASHES: Optional[NameHashes] = None

#: At most this many program headers (the kernel's own limit is 64 KiB of them: ``load_elf_phdrs``).
MAX_PHNUM = 65536 // 32


class Segment(NamedTuple):
    """One program header."""

    type: int
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int


class Header(NamedTuple):
    """The ELF header fields soswap uses."""

    elf_class: int  # 32 or 64
    little_endian: bool
    version: int
    osabi: int
    abiversion: int
    ident_padding_zero: bool
    type: int
    machine: int
    entry: int
    phoff: int
    shoff: int
    flags: int
    ehsize: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


def decode_header(ident_and_header: bytes, name: str, file_size: int) -> Tuple[Header, Layout]:
    """Decode e_ident and the ELF header from the first bytes of a file (at least 52 or 64 bytes)."""
    data = ident_and_header
    if len(data) < C.EI_NIDENT or data[:4] != C.ELFMAG:
        if len(data) < 4:
            raise ElfError(name, "file too short to be ELF", 0)
        raise ElfError(name, "not an ELF file (bad magic)", 0)
    cls, enc, version, osabi, abiversion = data[4], data[5], data[6], data[7], data[8]
    if cls not in (C.ELFCLASS32, C.ELFCLASS64):
        raise ElfError(name, f"invalid ELF class {cls}", 4)
    if enc not in (C.ELFDATA2LSB, C.ELFDATA2MSB):
        raise ElfError(name, f"invalid ELF data encoding {enc}", 5)
    lay = layout_for(cls, enc == C.ELFDATA2LSB)
    need = C.EI_NIDENT + lay.ehdr.size
    if len(data) < need:
        raise ElfError(name, f"file too short for an ELF header ({file_size} bytes)", 0)
    (e_type, e_machine, _e_version, e_entry, e_phoff, e_shoff, e_flags, e_ehsize, e_phentsize, e_phnum,
     e_shentsize, e_shnum, e_shstrndx) = lay.ehdr.unpack_from(data, C.EI_NIDENT)
    header = Header(
        elf_class=64 if cls == C.ELFCLASS64 else 32,
        little_endian=enc == C.ELFDATA2LSB,
        version=version,
        osabi=osabi,
        abiversion=abiversion,
        ident_padding_zero=not any(data[9:16]),
        type=e_type,
        machine=e_machine,
        entry=e_entry,
        phoff=e_phoff,
        shoff=e_shoff,
        flags=e_flags,
        ehsize=e_ehsize,
        phentsize=e_phentsize,
        phnum=e_phnum,
        shentsize=e_shentsize,
        shnum=e_shnum,
        shstrndx=e_shstrndx,
    )
    return header, lay


class Region:
    """A buffered window of the file starting at file offset ``offset``; reads outside it go to the file."""

    def __init__(self, elf: ElfFile, offset: int, data: bytes) -> None:
        self.elf = elf
        self.offset = offset
        self.data = data

    def read(self, offset: int, length: int, what: str) -> bytes:
        start = offset - self.offset
        if start >= 0 and start + length <= len(self.data):
            return self.data[start:start + length]
        return self.elf.read(offset, length, what)

    def unpack(self, layout: struct.Struct, offset: int, what: str) -> Tuple[Any, ...]:
        """``layout`` unpacked at file ``offset`` (in the buffer without a copy, else read from the file)."""
        start = offset - self.offset
        if start >= 0 and start + layout.size <= len(self.data):
            return layout.unpack_from(self.data, start)
        return layout.unpack(self.elf.read(offset, layout.size, what))


class ElfFile:
    """An ELF file as the dynamic loader sees it. Open with :meth:`open` or :meth:`from_bytes`.

    Every attribute beyond the header is decoded on first access and kept. Any malformation raises
    :class:`soswap.errors.ElfError` naming the file, the problem and the offset.
    """

    def __init__(self, source: Source) -> None:
        self._src = source
        self.path = source.name
        self.size = source.size
        head = source.read(0, min(source.size, 64), "ELF header") if source.size else b""
        self.header, self._lay = decode_header(head, self.path, source.size)
        self.segments = self._decode_segments()
        #: Where the mapping of the file's last page ends: what lies between the file's end and it reads as zeros.
        self.mapped_end = -(-self.size // _PAGE) * _PAGE
        #: A loaded segment's file data runs past the end of the file (an interrupted copy).
        self.cut_short = any(s.type == C.PT_LOAD and s.offset + s.filesz > self.size for s in self.segments)
        self._dynamic: Optional[DynamicInfo] = None
        self._interp: Optional[Tuple[Optional[str]]] = None
        self._interp_raw: Optional[Tuple[Optional[bytes]]] = None
        self._ldso_interp: Optional[Tuple[Optional[str]]] = None
        self._symtab: Optional[SymbolTable] = None
        self._versions: Optional[VersionTables] = None
        self._relocations: Optional[Tuple[Relocation, ...]] = None
        self._notes: Optional[NoteInfo] = None
        self._loads: Optional[List[Segment]] = None
        self._raw_symbols: Optional[RawSymbols] = None

    # -- construction -----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: PathLike) -> ElfFile:
        """Open and decode the headers of the ELF file at ``path``."""
        src = FileSource(path)
        try:
            elf = cls(src)
        except BaseException:
            src.close()
            raise
        return elf

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<bytes>") -> ElfFile:
        """Decode an ELF image held in memory; ``name`` is used in error messages."""
        return cls(BytesSource(data, name))

    def close(self) -> None:
        """Release the file descriptor. Later lazy decoding reopens the file and checks it is unchanged."""
        self._src.close()

    def release_buffers(self) -> None:
        """Forget the bulk tables read so far (the string table, the symbol table, the relocations), keeping the
        headers and what is decoded from them: for a program done with, held by a cache only as a file already
        seen. Each is read again if asked for: the file is closed here, and reopening it checks that it is the
        same file, unchanged (:class:`~soswap.elf.source.FileSource`)."""
        if self._dynamic is not None:
            self._dynamic.strtab.release()
        self._symtab = None
        self._relocations = None
        self._raw_symbols = None
        self.close()

    @property
    def source(self) -> Source:
        """Where the file's bytes are read from."""
        return self._src

    def on_reopen(self, hook: Optional[Callable[[], None]]) -> None:
        """Call ``hook`` whenever lazy decoding reopens the file after :meth:`close` (files in memory never do)."""
        if isinstance(self._src, FileSource):
            self._src.on_reopen = hook

    def __enter__(self) -> ElfFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ElfFile {self.path!r} ELF{self.elf_class} {self.machine_name} {self.type_name}>"

    # -- header -----------------------------------------------------------------------------------------

    @property
    def identity(self) -> Optional[Identity]:
        """(st_dev, st_ino, st_size, st_mtime_ns) of the file when it was opened; None for in-memory images."""
        return self._src.identity

    @property
    def fingerprint(self) -> Optional[Tuple[int, int, int, int, int]]:
        """:attr:`identity` plus st_ctime_ns: what a result kept between runs is keyed by (an in-place rewrite
        that restores the size and the mtime still moves the ctime); None for in-memory images."""
        ident = self._src.identity
        change = self._src.change_ns
        if ident is None or change is None:
            return None
        return (*ident, change)

    @property
    def elf_class(self) -> int:
        """32 or 64."""
        return self.header.elf_class

    @property
    def little_endian(self) -> bool:
        return self.header.little_endian

    @property
    def machine(self) -> int:
        return self.header.machine

    @property
    def hash_entry_size(self) -> int:
        """The size of a DT_HASH word: ``Elf_Symndx`` is 64 bits on 64-bit s390 and Alpha
        (sysdeps/unix/sysv/linux/{s390,alpha}/bits/elfclass.h), 32 bits elsewhere."""
        return 8 if self.header.machine in (C.EM_S390, C.EM_ALPHA) and self.layout.is64 else 4

    @property
    def machine_name(self) -> str:
        return C.EM_NAMES.get(self.header.machine, str(self.header.machine))

    @property
    def type(self) -> int:
        return self.header.type

    @property
    def type_name(self) -> str:
        return C.ET_NAMES.get(self.header.type, str(self.header.type))

    @property
    def osabi(self) -> int:
        return self.header.osabi

    @property
    def osabi_name(self) -> str:
        return C.ELFOSABI_NAMES.get(self.header.osabi, str(self.header.osabi))

    @property
    def layout(self) -> Layout:
        return self._lay

    def _decode_segments(self) -> Tuple[Segment, ...]:
        h = self.header
        if h.phnum == 0:
            return ()
        if h.phentsize != self._lay.phdr.size:
            raise ElfError(self.path, f"e_phentsize is {h.phentsize}, expected {self._lay.phdr.size}", 0)
        if h.phnum > MAX_PHNUM:
            raise ElfError(self.path, f"too many program headers ({h.phnum})", 0)
        table = self._src.read(h.phoff, h.phnum * h.phentsize, "program header table")
        rows = self._lay.phdr.iter_unpack(table)
        make = Segment._make  # tuple.__new__: cheaper than the NamedTuple's own __new__
        if self._lay.is64:  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
            return tuple(make((t, f, o, v, fs, ms, a)) for t, f, o, v, _p, fs, ms, a in rows)
        # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
        return tuple(make((t, f, o, v, fs, ms, a)) for t, o, v, _p, fs, ms, f, a in rows)

    def segments_of_type(self, p_type: int) -> List[Segment]:
        return [s for s in self.segments if s.type == p_type]

    # -- address translation ----------------------------------------------------------------------------

    def _load_segments(self) -> List[Segment]:
        if self._loads is None:
            self._loads = sorted(self.segments_of_type(C.PT_LOAD), key=lambda s: s.vaddr)
        return self._loads

    def vaddr_to_offset(self, vaddr: int, length: int, what: str) -> int:
        """The file offset of ``length`` bytes at virtual address ``vaddr``, which must lie inside the file
        part of one PT_LOAD segment."""
        for seg in self._load_segments():
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                if vaddr + length > seg.vaddr + seg.filesz:
                    raise ElfError(self.path, f"{what} at address {vaddr:#x} runs past its segment")
                return seg.offset + (vaddr - seg.vaddr)
        raise ElfError(self.path, f"{what} at address {vaddr:#x} is not in any loaded segment")

    def room_at(self, vaddr: int) -> int:
        """Bytes available in the file from virtual address ``vaddr`` to the end of its PT_LOAD segment."""
        for seg in self._load_segments():
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.vaddr + seg.filesz - vaddr
        return 0

    def region_at_vaddr(self, vaddr: int, limit: int, what: str) -> Region:
        """Up to ``limit`` bytes of the file from virtual address ``vaddr`` to the end of its segment, read at
        once; a :class:`Region` serves the small reads of a linked table (versions) from that buffer."""
        length = min(self.room_at(vaddr), limit)
        offset = self.vaddr_to_offset(vaddr, max(length, 1), what)
        return Region(self, offset, self.read_mapped(offset, length, what))

    def read_at_vaddr(self, vaddr: int, length: int, what: str) -> bytes:
        """``length`` bytes of the file at virtual address ``vaddr``, as mapped (:meth:`read_mapped`)."""
        offset = self.vaddr_to_offset(vaddr, length, what)
        if offset + length <= self.size:
            return self._src.read(offset, length, what)
        return self.read_mapped(offset, length, what)

    def read(self, offset: int, length: int, what: str) -> bytes:
        """``length`` bytes at file ``offset`` (bounds-checked)."""
        return self._src.read(offset, length, what)

    def read_mapped(self, offset: int, length: int, what: str) -> bytes:
        """:meth:`read` of loaded data, as ld.so sees it through its mapping: a file cut short reads as zeros
        from its end to the end of its last page (a page wholly past the end faults: still an error here)."""
        size = self.size
        if offset + length <= size or offset < 0 or length < 0 or offset + length > self.mapped_end:
            return self._src.read(offset, length, what)
        have = max(0, size - offset)
        return (self._src.read(offset, have, what) if have else b"") + bytes(length - have)

    # -- lazily decoded parts ---------------------------------------------------------------------------

    @property
    def interpreter(self) -> Optional[str]:
        """The PT_INTERP path as the kernel reads it, or None."""
        if self._interp is None:
            raw = self.interpreter_bytes
            self._interp = (os.fsdecode(raw.split(b"\0", 1)[0]) if raw is not None else None,)
        return self._interp[0]

    @property
    def interpreter_bytes(self) -> Optional[bytes]:
        """What ``load_elf_binary`` reads of the first PT_INTERP: p_filesz bytes at p_offset (at most to the end
        of the file's last page; its checks of p_filesz are the loader's), or None."""
        if self._interp_raw is None:
            raw: Optional[bytes] = None
            for seg in self.segments_of_type(C.PT_INTERP):
                room = max(0, min(seg.filesz, self.mapped_end - seg.offset))
                raw = self.read_mapped(seg.offset, room, "PT_INTERP")
                break
            self._interp_raw = (raw,)
        return self._interp_raw[0]

    @property
    def loader_interpreter(self) -> Optional[str]:
        """The interpreter's name as ld.so reads it (rtld.c ``dl_main``): the string at the address of the last
        PT_INTERP, whatever its p_filesz says (:attr:`interpreter` is the kernel's)."""
        if self._ldso_interp is None:
            segs = self.segments_of_type(C.PT_INTERP)
            value: Optional[str] = None
            if segs:
                seg = segs[-1]
                if len(segs) == 1:
                    # the usual case: at its address lies what the kernel read, with its NUL
                    raw = self.interpreter_bytes
                    if raw is not None and b"\0" in raw and any(
                            p.vaddr - p.offset == seg.vaddr - seg.offset and p.offset <= seg.offset
                            and seg.offset + seg.filesz <= p.offset + p.filesz for p in self._load_segments()):
                        self._ldso_interp = (self.interpreter,)
                        return self.interpreter
                room = min(self.room_at(seg.vaddr), 4096)
                if not room:
                    value = self.interpreter  # not in a loaded segment: ld.so would read unmapped memory
                else:
                    raw = self.read_at_vaddr(seg.vaddr, room, "PT_INTERP")
                    value = os.fsdecode(raw.split(b"\0", 1)[0])
            self._ldso_interp = (value,)
        return self._ldso_interp[0]

    @property
    def dynamic(self) -> DynamicInfo:
        """The decoded dynamic section (an empty one for static files)."""
        if self._dynamic is None:
            self._dynamic = decode_dynamic(self)
        return self._dynamic

    @property
    def is_dynamic(self) -> bool:
        return bool(self.segments_of_type(C.PT_DYNAMIC))

    @property
    def needed(self) -> Tuple[str, ...]:
        return self.dynamic.needed

    @property
    def soname(self) -> Optional[str]:
        return self.dynamic.soname

    @property
    def rpath(self) -> Optional[str]:
        return self.dynamic.rpath

    @property
    def runpath(self) -> Optional[str]:
        return self.dynamic.runpath

    @property
    def versions(self) -> VersionTables:
        """Version definitions and needs (DT_VERDEF, DT_VERNEED)."""
        if self._versions is None:
            from soswap.elf.versions import decode_versions

            self._versions = decode_versions(self)
        return self._versions

    @property
    def version_definitions(self) -> Tuple[VersionDef, ...]:
        return self.versions.definitions

    @property
    def version_needs(self) -> Tuple[VersionNeed, ...]:
        return self.versions.needs

    @property
    def symbol_table(self) -> SymbolTable:
        """The dynamic symbol table with versions resolved."""
        if self._symtab is None:
            from soswap.elf.symbols import decode_symbol_table

            self._symtab = decode_symbol_table(self)
        return self._symtab

    def forget_symbol_table(self) -> None:
        """Let the decoded symbol table go (:attr:`symbol_table`, :attr:`symbols`, :attr:`symbol_columns`); it
        is decoded again if asked for. For callers that keep many files open but need each table once."""
        self._symtab = None

    @property
    def symbols(self) -> Tuple[Symbol, ...]:
        """All dynamic symbols, index 0 (the null symbol) included, in table order."""
        return self.symbol_table.symbols

    @property
    def symbol_columns(self) -> SymbolColumns:
        """The dynamic symbols as columns (``names``, ``versions``, ``defined``, ``binds``, ``types``, ``sizes``,
        ...; index 0 included, in table order): the same fields as :attr:`symbols` without creating one
        :class:`Symbol` per symbol. The fastest way to read a whole table."""
        return self.symbol_table.columns

    @property
    def has_versym(self) -> bool:
        """True when the object has DT_VERSYM (glibc's versioned-lookup rules depend on it)."""
        return C.DT_VERSYM in self.dynamic.tags

    def find_symbols(self, name: str) -> List[Symbol]:
        """The defined symbols called ``name`` (the ones the loader's hash lookup can bind to).

        Uses the decoded table when there is one, else walks DT_GNU_HASH/DT_HASH and decodes only the
        candidates, so one lookup in a 46k-symbol library costs microseconds.
        """
        if self._symtab is not None:
            return [s for s in self._symtab.by_name(name) if s.shndx != 0]
        global _HASHES
        if self._raw_symbols is None:
            from soswap.elf.hashtab import NameHashes, RawSymbols

            self._raw_symbols = RawSymbols(self)
            if _HASHES is None:
                _HASHES = NameHashes()
        raw = self._raw_symbols
        found = (raw.symbol(i, self.versions.by_index)
                 for i in raw.candidates(name.encode("utf-8", "surrogateescape"), _HASHES))
        return [s for s in found if s.shndx != 0]

    @property
    def relocations(self) -> Tuple[Relocation, ...]:
        """Every dynamic relocation of DT_RELA, DT_REL and DT_JMPREL (DT_RELR entries carry no symbol and are
        only counted, see :attr:`relr_count`)."""
        if self._relocations is None:
            from soswap.elf.relocs import decode_relocations

            self._relocations = decode_relocations(self)
        return self._relocations

    @property
    def relr_count(self) -> int:
        from soswap.elf.relocs import count_relr

        return count_relr(self)

    def symbol_reference_kinds(self) -> Dict[int, int]:
        """For each symbol index with relocations: a bit set of :data:`soswap.elf.relocs.KIND_BITS`."""
        from soswap.elf.relocs import reference_kinds

        return reference_kinds(self)

    @property
    def notes(self) -> NoteInfo:
        if self._notes is None:
            from soswap.elf.notes import decode_notes

            self._notes = decode_notes(self)
        return self._notes

    @property
    def build_id(self) -> Optional[str]:
        """The GNU build-id as lowercase hex, or None."""
        return self.notes.build_id
