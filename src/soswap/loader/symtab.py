"""The loader's hot path over one object's dynamic symbols and relocations, on raw arrays.

``soswap.elf`` decodes symbols and relocations into objects; binding every reference of a thousand programs
needs less: the hash-chain candidates of a name (``do_lookup_x``), a few fields of a candidate, and the
stream of (symbol, type) pairs of the relocation tables in the order ``_dl_relocate_object`` walks them
(elf/dynamic-link.h ``_ELF_DYNAMIC_DO_RELOC``). This module reads those straight from the file's bytes, through
the public :class:`soswap.elf.ElfFile` accessors, once per file.
"""

from __future__ import annotations

import sys
from array import array
from operator import mul
from typing import Dict, List, NamedTuple, Optional, Tuple

from soswap.elf import ElfFile
from soswap.elf import constants as C
from soswap.elf.symbols import symbol_count
from soswap.errors import ElfError

_NATIVE_LITTLE = sys.byteorder == "little"


class Sym(NamedTuple):
    """The fields of one dynamic symbol the loader looks at."""

    index: int
    name: str
    value: int
    size: int
    type: int
    bind: int
    visibility: int
    shndx: int
    #: DT_VERSYM entry (with the hidden bit 0x8000), 0 without DT_VERSYM.
    versym: int

    @property
    def version_index(self) -> int:
        return self.versym & 0x7FFF

    @property
    def hidden(self) -> bool:
        return bool(self.versym & 0x8000)


#: 33**k mod 2**32 (as ints and as floats), grown on demand: ``dl_new_hash`` is the polynomial
#: 5381*33**n + sum(c[i] * 33**(n-1-i)) mod 2**32, which ``sum(map(mul, ...))`` evaluates in C instead of one
#: Python step per character. Each product is below 2**40, so up to 8191 characters the float sum is exact.
_POW33: List[int] = [1]
_POW33F: List[float] = [1.0]


def _grow_pow33(n: int) -> None:
    p = _POW33
    while len(p) <= n:
        p.append(p[-1] * 33 & 0xFFFFFFFF)
        _POW33F.append(float(p[-1]))


def gnu_hash(name: bytes) -> int:
    """``dl_new_hash``."""
    n = len(name)
    if n < 24:
        h = 5381  # short names: one unmasked step per character stays a small integer
        for c in name:
            h = h * 33 + c
        return h & 0xFFFFFFFF
    if n >= len(_POW33):
        _grow_pow33(n + 64)
    if n < 8192:
        return (5381 * _POW33[n] + int(sum(map(mul, name[::-1], _POW33F)))) & 0xFFFFFFFF
    return (5381 * _POW33[n] + sum(map(mul, name[::-1], _POW33))) & 0xFFFFFFFF


def gnu_hash_reference(name: bytes) -> int:
    """``dl_new_hash`` one character at a time, as glibc writes it (the oracle of :func:`gnu_hash`)."""
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


def elf_hash(name: bytes) -> int:
    """``_dl_elf_hash``."""
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


class NameHashes:
    """Both hashes of a symbol name (bytes), computed once per name for every object it is looked up in."""

    def __init__(self) -> None:
        self._gnu: Dict[bytes, int] = {}
        self._sysv: Dict[bytes, int] = {}

    def gnu(self, name: bytes) -> int:
        hit = self._gnu.get(name)
        if hit is None:
            hit = self._gnu[name] = gnu_hash(name)
        return hit

    def sysv(self, raw: bytes) -> int:
        hit = self._sysv.get(raw)
        if hit is None:
            hit = self._sysv[raw] = elf_hash(raw)
        return hit


def _words(data: bytes, code: str, little: bool) -> array:
    a = array(code, data)
    if little != _NATIVE_LITTLE:
        a.byteswap()
    return a


class RawSymbols:
    """Dynamic symbol table, string table, DT_VERSYM and hash table of one object, as arrays."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        tags = elf.dynamic.tags
        lay = elf.layout
        self.is64 = lay.is64
        self.row = lay.sym
        self.count = symbol_count(elf) if C.DT_SYMTAB in tags else 0
        size = self.row.size
        if self.count * size > elf.size:
            raise ElfError(elf.path, f"symbol count {self.count} does not fit in the file")
        self.raw = elf.read_at_vaddr(tags[C.DT_SYMTAB], self.count * size, "DT_SYMTAB") if self.count else b""
        self.strtab = elf.dynamic.strtab.load() if self.count else b""
        self.versym: Optional[array] = None
        if C.DT_VERSYM in tags and self.count:
            self.versym = _words(elf.read_at_vaddr(tags[C.DT_VERSYM], 2 * self.count, "DT_VERSYM"), "H",
                                 lay.little)
        self.gnu: Optional[Tuple[int, int, int, array, int, array, array]] = None
        self.sysv: Optional[Tuple[array, array]] = None
        if self.count and C.DT_GNU_HASH in tags:
            self.gnu = self._load_gnu(tags[C.DT_GNU_HASH])
        elif self.count and C.DT_HASH in tags:
            self.sysv = self._load_sysv(tags[C.DT_HASH])
        self._syms: Dict[int, Sym] = {}
        # The columns the hot paths read, cut out of the table at C speed: st_name, st_info, st_other,
        # st_shndx, st_value of every symbol, by index.
        self.name_off, self.info, self.other, self.shndx, self.value = self._columns(lay.little)
        #: The GNU hashes (low bit set) of every hashed symbol: a name whose hash is not in it is not defined
        #: here. Much cheaper than a chain walk for the many objects a lookup passes before the definer.
        self.hash_words: Optional[frozenset] = (frozenset(map((1).__or__, self.gnu[6])) if self.gnu is not None
                                                else None)

    def _columns(self, little: bool) -> Tuple[array, bytes, bytes, array, array]:
        raw = self.raw
        if self.is64:  # Elf64_Sym: st_name(4) st_info(1) st_other(1) st_shndx(2) st_value(8) st_size(8)
            words = _words(raw, "I", little)
            return (words[0::6], raw[4::24], raw[5::24], _words(raw, "H", little)[3::12],
                    _words(raw, "Q", little)[1::3])
        # Elf32_Sym: st_name(4) st_value(4) st_size(4) st_info(1) st_other(1) st_shndx(2)
        words = _words(raw, "I", little)
        return words[0::4], raw[12::16], raw[13::16], _words(raw, "H", little)[7::8], words[1::4]

    def may_define(self, name: bytes, hashes: NameHashes) -> bool:
        """False when no symbol of this object can be called ``name`` (see :attr:`hash_words`)."""
        if self.hash_words is None:
            return True
        return (hashes.gnu(name) | 1) in self.hash_words

    @property
    def has_hash(self) -> bool:
        return self.gnu is not None or self.sysv is not None

    def _load_gnu(self, addr: int) -> Tuple[int, int, int, array, int, array, array]:
        elf = self.elf
        lay = elf.layout
        nbuckets, symoffset, bloom_size, shift = lay.gnu_hash_header.unpack(
            elf.read_at_vaddr(addr, 16, "DT_GNU_HASH header"))
        word = lay.addr_size
        bloom = _words(elf.read_at_vaddr(addr + 16, bloom_size * word, "DT_GNU_HASH bloom"),
                       "Q" if word == 8 else "I", lay.little) if bloom_size else array("Q")
        at = addr + 16 + bloom_size * word
        buckets = _words(elf.read_at_vaddr(at, 4 * nbuckets, "DT_GNU_HASH buckets"), "I", lay.little)
        nchain = max(0, self.count - symoffset)
        chain = _words(elf.read_at_vaddr(at + 4 * nbuckets, 4 * nchain, "DT_GNU_HASH chain"), "I",
                       lay.little) if nchain else array("I")
        return nbuckets, symoffset, shift, bloom, word * 8, buckets, chain

    def _load_sysv(self, addr: int) -> Tuple[array, array]:
        elf = self.elf
        nbucket, nchain = elf.layout.hash_header.unpack(elf.read_at_vaddr(addr, 8, "DT_HASH"))
        words = _words(elf.read_at_vaddr(addr + 8, 4 * (nbucket + nchain), "DT_HASH"), "I", elf.layout.little)
        return words[:nbucket], words[nbucket:]

    def _name_is(self, index: int, name: bytes) -> bool:
        st_name = self.name_off[index]
        end = st_name + len(name)
        strtab = self.strtab
        return strtab[st_name:end] == name and (end == len(strtab) or strtab[end] == 0)

    def candidates(self, raw: bytes, hashes: NameHashes, h: Optional[int] = None) -> List[int]:
        """The symbol indexes ``do_lookup_x`` would try for the name ``raw``, in chain order (``h``: its GNU
        hash, if the caller has it)."""
        out: List[int] = []
        if self.gnu is not None:
            if h is None:
                h = hashes.gnu(raw)
            nbuckets, symoffset, shift, bloom, bits, buckets, chain = self.gnu
            if not nbuckets:
                return out
            if len(bloom):
                w = bloom[(h // bits) % len(bloom)]
                if not ((w >> (h % bits)) & (w >> ((h >> shift) % bits)) & 1):
                    return out
            idx = buckets[h % nbuckets]
            if idx < symoffset:
                return out
            n = len(chain)
            h1 = h | 1
            name_off, strtab, size = self.name_off, self.strtab, len(raw)
            while 0 <= idx - symoffset < n:
                word = chain[idx - symoffset]
                if (word | 1) == h1:
                    at = name_off[idx]
                    end = at + size
                    if strtab[at:end] == raw and (end == len(strtab) or strtab[end] == 0):
                        out.append(idx)
                if word & 1:
                    break
                idx += 1
        elif self.sysv is not None:
            buckets, chain = self.sysv
            if not len(buckets):
                return out
            idx = buckets[hashes.sysv(raw) % len(buckets)]
            seen = 0
            limit = min(len(chain), self.count)
            while idx and idx < limit and seen <= limit:
                if self._name_is(idx, raw):
                    out.append(idx)
                idx = chain[idx]
                seen += 1
        return out

    def sym(self, index: int) -> Sym:
        s = self._syms.get(index)
        if s is None:
            if not 0 <= index < self.count:
                raise ElfError(self.elf.path, f"symbol index {index} out of range ({self.count})")
            fields = self.row.unpack_from(self.raw, index * self.row.size)
            if self.is64:
                st_name, st_info, st_other, st_shndx, st_value, st_size = fields
            else:
                st_name, st_value, st_size, st_info, st_other, st_shndx = fields
            if st_name >= len(self.strtab) and st_name:
                raise ElfError(self.elf.path, f"symbol {index}: name offset {st_name} is outside DT_STRTAB")
            end = self.strtab.find(b"\0", st_name)
            name = self.strtab[st_name:end if end >= 0 else len(self.strtab)].decode("utf-8", "surrogateescape")
            v = self.versym[index] if self.versym is not None else 0
            s = self._syms[index] = Sym(index, name, st_value, st_size, st_info & 0xF, st_info >> 4, st_other & 3,
                                        st_shndx, v)
        return s


def relocation_ranges(elf: ElfFile) -> List[Tuple[List[Tuple[int, int]], bool]]:
    """The relocations that name a symbol, as ``[(symbol index, type), ...]`` per range in
    ``_ELF_DYNAMIC_DO_RELOC`` order: the DT_REL/DT_RELA range (its DT_RELCOUNT/DT_RELACOUNT leading relative
    entries skipped, a trailing DT_JMPREL part cut off), then DT_JMPREL (``True`` as the second item)."""
    shift, mask = (32, 0xFFFFFFFF) if elf.layout.is64 else (8, 0xFF)
    return [([(i >> shift, i & mask) for i in infos], jmp) for infos, jmp in relocation_infos(elf)]


def relocation_infos(elf: ElfFile) -> List[Tuple[array, bool]]:
    """:func:`relocation_ranges` as the raw ``r_info`` words (symbol index above bit 32, type below, for
    ELFCLASS64; above bit 8 for ELFCLASS32), those without a symbol left out."""
    tags = elf.dynamic.tags
    lay = elf.layout
    out: List[Tuple[array, bool]] = []
    jmprel = None
    if C.DT_JMPREL in tags and tags.get(C.DT_PLTRELSZ, 0):
        pltrel = tags.get(C.DT_PLTREL, C.DT_RELA if lay.is64 else C.DT_REL)
        jmprel = (tags[C.DT_JMPREL], tags[C.DT_PLTRELSZ], pltrel == C.DT_RELA)
    for addr_tag, size_tag, count_tag, rela in ((C.DT_REL, C.DT_RELSZ, C.DT_RELCOUNT, False),
                                                (C.DT_RELA, C.DT_RELASZ, C.DT_RELACOUNT, True)):
        if addr_tag in tags and tags.get(size_tag, 0):
            start, size = tags[addr_tag], tags[size_tag]
            if jmprel is not None and jmprel[2] == rela and start + size == jmprel[0] + jmprel[1]:
                size -= jmprel[1]
            out.append((_decode_range(elf, start, max(size, 0), tags.get(count_tag, 0), rela), False))
        if jmprel is not None and jmprel[2] == rela:
            out.append((_decode_range(elf, jmprel[0], jmprel[1], 0, rela), True))
    return out


def _decode_range(elf: ElfFile, start: int, size: int, nrelative: int, rela: bool) -> array:
    lay = elf.layout
    code = "Q" if lay.is64 else "I"
    ent = (lay.rela if rela else lay.rel).size
    if size <= 0:
        return array(code)
    size -= size % ent
    elf.vaddr_to_offset(start, size, "relocations")  # the whole range must lie in one segment
    # the DT_RELACOUNT/DT_RELCOUNT leading relative relocations name no symbol: not even read
    skip = min(nrelative, size // ent) * ent
    if skip >= size:
        return array(code)
    raw = elf.read_at_vaddr(start + skip, size - skip, "relocations")
    infos = _words(raw, code, lay.little)[1::ent // lay.addr_size]
    limit = 1 << 32 if lay.is64 else 1 << 8
    return array(code, [i for i in infos if i >= limit])
