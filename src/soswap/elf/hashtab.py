"""The dynamic symbol table and its hash tables as arrays: the lookup path of ``do_lookup_x``.

:class:`RawSymbols` reads DT_SYMTAB, DT_STRTAB, DT_VERSYM and DT_GNU_HASH/DT_HASH of one object once and answers
"which symbol indexes would the loader try for this name" (bloom filter, bucket, chain; ``do_lookup_x``) without
decoding the whole table: the way to look up a few thousand names in a big library in milliseconds.
"""

from __future__ import annotations

import sys
from array import array
from operator import mul
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from soswap.elf import constants as C
from soswap.elf.symbols import symbol_count, sysv_hash_header
from soswap.errors import ElfError

if TYPE_CHECKING:
    from soswap.elf.file import ElfFile
    from soswap.elf.symbols import Symbol

_NATIVE_LITTLE = sys.byteorder == "little"


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


#: A hash chain longer than this is indexed once instead of walked at every lookup.
_LONG_CHAIN = 64


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
        #: the long hash chains, indexed once (see candidates): first index -> {key: indexes in chain order}
        self._indexed: Dict[int, Dict[object, List[int]]] = {}
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
        nbucket, nchain = sysv_hash_header(elf, addr)
        size = elf.hash_entry_size
        words = _words(elf.read_at_vaddr(addr + 2 * size, size * (nbucket + nchain), "DT_HASH"),
                       "I" if size == 4 else "Q", elf.layout.little)
        return words[:nbucket], words[nbucket:]

    def _name_is(self, index: int, name: bytes) -> bool:
        st_name = self.name_off[index]
        end = st_name + len(name)
        strtab = self.strtab
        return strtab[st_name:end] == name and (end == len(strtab) or strtab[end] == 0)

    def candidates(self, raw: bytes, hashes: NameHashes, h: Optional[int] = None) -> List[int]:
        """The symbol indexes ``do_lookup_x`` would try for the name ``raw``, in chain order (``h``: its GNU
        hash, if the caller has it). A chain found long (a table of few buckets) is indexed the first time it
        is walked, so that later lookups do not walk it again, one Python step per entry."""
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
            indexed = self._indexed.get(idx) if self._indexed else None
            if indexed is not None:  # the same indexes in the same order as the walk below
                for i in indexed.get(h1, ()):
                    at = name_off[i]
                    end = at + size
                    if strtab[at:end] == raw and (end == len(strtab) or strtab[end] == 0):
                        out.append(i)
                return out
            first = idx
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
            if idx - first > _LONG_CHAIN:
                self._index_gnu_chain(first, idx)
        elif self.sysv is not None:
            buckets, chain = self.sysv
            if not len(buckets):
                return out
            idx = buckets[hashes.sysv(raw) % len(buckets)]
            indexed = self._indexed.get(idx) if self._indexed else None
            if indexed is not None:
                return list(indexed.get(raw, ()))
            first = idx
            seen = 0
            limit = min(len(chain), self.count)
            while idx and idx < limit and seen <= limit:
                if self._name_is(idx, raw):
                    out.append(idx)
                idx = chain[idx]
                seen += 1
            if seen > _LONG_CHAIN:
                self._index_sysv_chain(first, chain, limit)
        return out

    def _index_gnu_chain(self, first: int, last: int) -> None:
        """Index the GNU hash chain ``first``..``last`` (its stop word, or the end of the table) by hash word."""
        symoffset, chain = self.gnu[1], self.gnu[6]  # type: ignore[index]
        out: Dict[object, List[int]] = {}
        for i in range(first, min(last + 1, symoffset + len(chain))):
            out.setdefault(chain[i - symoffset] | 1, []).append(i)
        self._indexed[first] = out

    def _index_sysv_chain(self, first: int, chain: array, limit: int) -> None:
        """Index the DT_HASH chain that starts at ``first`` by name (the walk's own bounds)."""
        strtab, name_off = self.strtab, self.name_off
        out: Dict[object, List[int]] = {}
        idx, seen = first, 0
        while idx and idx < limit and seen <= limit:
            at = name_off[idx]
            end = strtab.find(b"\0", at)
            out.setdefault(strtab[at:end if end >= 0 else len(strtab)], []).append(idx)
            idx = chain[idx]
            seen += 1
        self._indexed[first] = out

    def row_fields(self, index: int) -> Tuple[int, int, int, int, int, int]:
        """(st_name, st_info, st_other, st_shndx, st_value, st_size) of the symbol at ``index``, whatever the
        class's field order."""
        if not 0 <= index < self.count:
            raise ElfError(self.elf.path, f"symbol index {index} out of range ({self.count})")
        fields = self.row.unpack_from(self.raw, index * self.row.size)
        if self.is64:
            return fields  # type: ignore[no-any-return]
        st_name, st_value, st_size, st_info, st_other, st_shndx = fields
        return st_name, st_info, st_other, st_shndx, st_value, st_size

    def symbol(self, index: int, versions: Dict[int, Tuple[str, Optional[str], bool]]) -> Symbol:
        """The :class:`soswap.elf.symbols.Symbol` at ``index``; ``versions`` is
        :attr:`soswap.elf.versions.VersionTables.by_index`."""
        from soswap.elf.symbols import Symbol

        st_name, st_info, st_other, st_shndx, st_value, st_size = self.row_fields(index)
        name = self.elf.dynamic.strtab.get(st_name, "symbol") if st_name else ""
        version = vfile = None
        vindex = 0
        hidden = default = False
        if self.versym is not None:
            v = self.versym[index]
            vindex, hidden = v & 0x7FFF, v > 0x7FFF
            entry = versions.get(vindex) if vindex > 1 else None
            if entry is not None:
                version, vfile = entry[0], entry[1]
                default = st_shndx != 0 and not hidden and vfile is None
        return Symbol(index, name, st_value, st_size, st_info & 0xF, st_info >> 4, st_other & 3, st_shndx,
                      version, vindex, hidden, default, vfile)
