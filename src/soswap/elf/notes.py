"""PT_NOTE and PT_GNU_PROPERTY: the GNU build-id, the ABI tag and the x86 ISA level the object needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from soswap.elf import constants as C
from soswap.errors import ElfError
from soswap.tuples import NamedTuple

if TYPE_CHECKING:
    from soswap.elf.file import ElfFile

#: Notes larger than this are not read (a build-id is 20 bytes; property notes are tiny).
MAX_NOTE_SEGMENT = 1 << 20


class Note(NamedTuple):
    name: bytes
    type: int
    desc: bytes


class NoteInfo(NamedTuple):
    notes: Tuple[Note, ...]
    build_id: Optional[str]
    #: GNU_PROPERTY_X86_ISA_1_NEEDED bits, or None when the object does not say.
    x86_isa_needed: Optional[int]


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


def iter_notes(elf: ElfFile, offset: int, size: int, align: int) -> List[Note]:
    """Decode the notes of one note segment; ``align`` is 4 or 8 (``p_align``)."""
    lay = elf.layout
    data = elf.read(offset, size, "PT_NOTE")
    pos = 0
    out = []
    while pos + 12 <= size:
        namesz, descsz, ntype = lay.nhdr.unpack_from(data, pos)
        name_at = pos + 12
        desc_at = pos + _align(12 + namesz, align)
        end = pos + _align(desc_at - pos + descsz, align)
        if desc_at + descsz > size:
            raise ElfError(elf.path, "note runs past its segment", offset + pos)
        out.append(Note(data[name_at:name_at + namesz].rstrip(b"\0"), ntype, data[desc_at:desc_at + descsz]))
        pos = end
    return out


def _x86_isa_needed(elf: ElfFile, desc: bytes) -> Optional[int]:
    lay = elf.layout
    step = 8 if lay.is64 else 4
    pos = 0
    while pos + 8 <= len(desc):
        pr_type, pr_datasz = lay.word.unpack_from(desc, pos)[0], lay.word.unpack_from(desc, pos + 4)[0]
        data_at = pos + 8
        if data_at + pr_datasz > len(desc):
            raise ElfError(elf.path, "GNU property runs past its note")
        if pr_type == C.GNU_PROPERTY_X86_ISA_1_NEEDED and pr_datasz == 4:
            return int(lay.word.unpack_from(desc, data_at)[0])
        pos = data_at + _align(pr_datasz, step)
    return None


def decode_notes(elf: ElfFile) -> NoteInfo:
    notes: List[Note] = []
    seen = set()
    for seg in elf.segments:
        if seg.type not in (C.PT_NOTE, C.PT_GNU_PROPERTY) or seg.filesz == 0:
            continue
        if (seg.offset, seg.filesz) in seen:
            continue
        seen.add((seg.offset, seg.filesz))
        if seg.filesz > MAX_NOTE_SEGMENT:
            raise ElfError(elf.path, f"note segment of {seg.filesz} bytes is implausibly large", seg.offset)
        align = 8 if seg.align == 8 else 4
        notes.extend(iter_notes(elf, seg.offset, seg.filesz, align))
    build_id = None
    isa: Optional[int] = None
    for n in notes:
        if n.name != b"GNU":
            continue
        if n.type == C.NT_GNU_BUILD_ID and build_id is None:
            build_id = n.desc.hex()
        elif n.type == C.NT_GNU_PROPERTY_TYPE_0 and elf.machine in (C.EM_X86_64, C.EM_386) and isa is None:
            isa = _x86_isa_needed(elf, n.desc)
    return NoteInfo(tuple(notes), build_id, isa)
