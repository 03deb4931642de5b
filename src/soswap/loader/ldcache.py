"""The ``/etc/ld.so.cache`` reader: old (``ld.so-1.7.0``), compat and new (``glibc-ld.so.cache1.1``) formats,
either byte order, the extension directory (generator string, glibc-hwcaps subdirectory names), and the
lookup of ``_dl_load_cache_lookup`` / ``search_cache`` (elf/dl-cache.c).

Nothing here is tied to the live system: :meth:`LdCache.parse` takes bytes, and :meth:`LdCache.lookup` takes the
target's facts (hwcaps priorities, ISA level, accepted flags) from a :class:`CacheTarget`.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Dict, List, Optional, Sequence, Tuple

from soswap.errors import CacheError
from soswap.textfile import read_regular
from soswap.tuples import NamedTuple

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
EXTENSION_MAGIC = 0xEAA42174  # (uint32_t) -358342284
EXT_TAG_GENERATOR = 0
EXT_TAG_GLIBC_HWCAPS = 1

#: ``struct file_entry_new`` hwcap bit marking a glibc-hwcaps entry (sysdeps/generic/dl-cache.h).
HWCAP_EXTENSION = 1 << 62
ISA_LEVEL_MASK = (1 << 10) - 1

# ldconfig flag values (sysdeps/generic/ldconfig.h).
FLAG_TYPE_MASK = 0x00FF
FLAG_REQUIRED_MASK = 0xFF00
FLAG_ELF_LIBC6 = 0x0003
FLAG_X8664_LIB64 = 0x0300
FLAG_X8664_LIBX32 = 0x0800
FLAG_ARM_LIBHF = 0x0900
FLAG_AARCH64_LIB64 = 0x0A00
FLAG_ARM_LIBSF = 0x0B00

#: Size limit for a cache file (the live one is ~40 KiB; glibc maps whatever is there).
MAX_CACHE_SIZE = 256 << 20


def libcmp(p1: str, p2: str) -> int:
    """``_dl_cache_libcmp``: compare two names, digit runs as decimal numbers (``.so.10 > .so.9``,
    ``.so.01 == .so.1``). Negative, zero or positive like ``strcmp``."""
    i = j = 0
    n1, n2 = len(p1), len(p2)
    while i < n1:
        c1 = p1[i]
        c2 = p2[j] if j < n2 else ""
        if "0" <= c1 <= "9":
            if c2 and "0" <= c2 <= "9":
                i0 = i
                while i < n1 and "0" <= p1[i] <= "9":
                    i += 1
                j0 = j
                while j < n2 and "0" <= p2[j] <= "9":
                    j += 1
                v1, v2 = _c_int(p1[i0:i]), _c_int(p2[j0:j])
                if v1 != v2:
                    return _c_wrap(v1 - v2)
            else:
                return 1
        elif c2 and "0" <= c2 <= "9":
            return -1
        elif c1 != c2:
            return ord(c1) - (ord(c2) if c2 else 0)
        else:
            i += 1
            j += 1
    return 0 - (ord(p2[j]) if j < n2 else 0)


def _c_int(digits: str) -> int:
    """A digit run's value as ``_dl_cache_libcmp`` accumulates it in an ``int`` (wrapping past 2**31: a name
    may hold thousands of digits)."""
    if len(digits) <= 9:
        return int(digits)
    v = 0
    for ch in digits:
        v = (v * 10 + ord(ch) - 48) & 0xFFFFFFFF
    return _c_wrap(v)


def _c_wrap(v: int) -> int:
    """``v`` as a 32-bit two's complement ``int``."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


class CacheEntry(NamedTuple):
    """One library entry: ``key`` (the SONAME), ``value`` (the path), ldconfig ``flags``, the raw ``hwcap``
    word (new format) and, for a glibc-hwcaps entry, its subdirectory name (``x86-64-v3``)."""

    key: str
    value: str
    flags: int
    hwcap: int
    hwcaps_subdir: Optional[str]

    @property
    def is_hwcaps(self) -> bool:
        return _is_hwcap_extension(self.hwcap)

    @property
    def isa_level(self) -> int:
        """The ISA level number stored with a glibc-hwcaps entry (upper-word bits 0-9)."""
        return (self.hwcap >> 32) & ISA_LEVEL_MASK


def _is_hwcap_extension(hwcap: int) -> bool:
    # dl_cache_hwcap_extension
    return ((hwcap >> 32) & ~ISA_LEVEL_MASK) == (HWCAP_EXTENSION >> 32)


class CacheTarget(NamedTuple):
    """What ``search_cache`` needs to know about the running loader."""

    #: ``_dl_cache_check_flags``: the accepted ``flags`` values (x86_64: {0x0303}; generic: {1, 3}).
    accepted_flags: Tuple[int, ...]
    #: Active glibc-hwcaps subdirectory names, best first (priority 1, 2, ...); masked ones left out.
    hwcaps_priorities: Tuple[str, ...]
    #: GNU_PROPERTY_X86_ISA_1 bits the CPU supports (``cpu_features->isa_1``); None: no ISA-level check.
    isa_1: Optional[int]
    #: Legacy hwcap filtering (glibc < 2.40): ``dl_hwcap & hwcap_mask``, the platform bit, the platform mask.
    legacy_hwcap: int = 0
    legacy_platform_bit: int = 0
    legacy_platform_mask: int = 0
    #: glibc >= 2.40 ignores legacy hwcap entries entirely (commit c5aa5fd40a).
    legacy_hwcaps_ignored: bool = False
    #: ``_DL_CACHE_DEFAULT_ID``: a plain entry with these flags ends the scan.
    default_flags: int = FLAG_ELF_LIBC6


class LdCache:
    """A parsed ld.so.cache. Build with :meth:`parse` (bytes) or :meth:`load` (a file)."""

    def __init__(self, path: str, fmt: str, entries: Tuple[CacheEntry, ...], generator: Optional[str],
                 hwcaps_names: Tuple[str, ...], little_endian: bool) -> None:
        self.path = path
        #: ``"old"``, ``"compat"`` (old header with a new cache inside), ``"new"`` or ``"none"`` (no file).
        self.format = fmt
        #: The entries in file order (sorted by the loader's comparison, descending).
        self.entries = entries
        #: The generator string of the extension directory (``ldconfig (Debian GLIBC 2.36-9+deb12u14) 2.36``).
        self.generator = generator
        #: The glibc-hwcaps subdirectory names of extension tag 1, in file order (sorted by strcmp).
        self.hwcaps_names = hwcaps_names
        self.little_endian = little_endian
        self._keys = [e.key for e in entries]
        self._memo: Dict[Tuple[str, CacheTarget], Optional[CacheEntry]] = {}
        #: What is wrong with the file when :meth:`load` read it as ld.so does (the parts ld.so ignores: all of
        #: it, the extension directory, some entries); None for a well-formed (or missing) cache.
        self.problem: Optional[str] = None

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"<LdCache {self.path!r} {self.format} {len(self.entries)} entries>"

    @classmethod
    def empty(cls, path: str = "") -> LdCache:
        """The cache of a system without one (every lookup misses)."""
        return cls(path, "none", (), None, (), True)

    @classmethod
    def load(cls, path: str, little_endian: bool = True) -> LdCache:
        """Read the cache at ``path`` as ld.so does (``_dl_load_cache_lookup``): a missing, unreadable or
        invalid file (bad magic, truncated, more entries than it holds, the wrong byte order) is no cache at
        all, and the loader goes on to the system directories; a malformed extension directory loses the
        glibc-hwcaps entries; an entry whose strings lie outside the file is skipped. :attr:`problem` says
        what was ignored. (:meth:`parse` is the strict reader: it raises :class:`CacheError`.)"""
        try:
            # ld.so itself (_dl_sysdep_read_whole_file) would wait for ever on a FIFO here: refused instead
            data = read_regular(path, MAX_CACHE_SIZE + 1)
            if len(data) > MAX_CACHE_SIZE:
                raise CacheError(f"{path}: implausibly large ld.so.cache (over {MAX_CACHE_SIZE} bytes)")
        except FileNotFoundError:
            return cls.empty(path)
        except IsADirectoryError:
            return cls._ignored(path, little_endian, f"{path}: is a directory, not an ld.so.cache")
        except (OSError, CacheError) as exc:
            if isinstance(exc, OSError) and exc.errno == errno.EINVAL:  # read_regular: a FIFO, device or socket
                cache = cls._ignored(path, little_endian, "")
                cache.problem = (f"{path}: not a regular file: ld.so would wait on a FIFO there for ever; soswap "
                                 "reads no cache")
                return cache
            why = str(exc) if isinstance(exc, CacheError) else f"{path}: cannot read ld.so.cache: {exc.strerror}"
            return cls._ignored(path, little_endian, why)
        try:
            return cls.parse(data, path, little_endian)
        except _TooMuchOverlap as exc:
            cache = cls._ignored(path, little_endian, "")
            cache.problem = str(exc)
            return cache
        except CacheError as exc:
            strict = str(exc)
        try:
            cache = cls.parse(data, path, little_endian, lenient=True)
        except CacheError:
            return cls._ignored(path, little_endian, strict)
        cache.problem = f"{strict} (ld.so ignores that part)"
        return cache

    @classmethod
    def _ignored(cls, path: str, little_endian: bool, why: str) -> LdCache:
        cache = cls(path, "none", (), None, (), little_endian)
        cache.problem = f"{why} (ld.so ignores it)"
        return cache

    @classmethod
    def parse(cls, data: bytes, path: str = "<ld.so.cache>", little_endian: bool = True,
              lenient: bool = False) -> LdCache:
        """Parse cache bytes; ``little_endian`` is the byte order of the target (an old-format cache carries no
        byte order mark). An empty file is an empty cache, as for the loader; anything else that is not a
        well-formed cache raises :class:`CacheError`. ``lenient``: what ld.so reads past (a bad extension
        directory, entries pointing outside the file) is dropped instead."""
        if not data:
            return cls(path, "none", (), None, (), little_endian)
        if data.startswith(NEW_MAGIC):
            return _parse_new(data, 0, path, little_endian, "new", lenient)
        if data.startswith(OLD_MAGIC):
            return _parse_old(data, path, little_endian, lenient)
        raise CacheError(f"{path}: not an ld.so.cache (bad magic)")

    # -- lookup -------------------------------------------------------------------------------------

    def lookup(self, name: str, target: CacheTarget) -> Optional[CacheEntry]:
        """``search_cache``: the entry the loader uses for ``name``, or None."""
        key = (name, target)
        if key in self._memo:
            return self._memo[key]
        hit = self._search(name, target)
        self._memo[key] = hit
        return hit

    def _search(self, name: str, target: CacheTarget) -> Optional[CacheEntry]:
        # search_cache in elf/dl-cache.c: binary search on the descending libcmp order
        entries = self.entries
        left, right = 0, len(entries) - 1
        while left <= right:
            middle = (left + right) // 2
            cmp = libcmp(name, self._keys[middle])
            if cmp == 0:
                while middle > 0 and libcmp(name, self._keys[middle - 1]) == 0:
                    middle -= 1
                return self._scan(name, middle, target)
            if cmp < 0:
                left = middle + 1
            else:
                right = middle - 1
        return None

    def _scan(self, name: str, start: int, target: CacheTarget) -> Optional[CacheEntry]:
        best: Optional[CacheEntry] = None
        best_priority = 0
        new_format = self.format in ("new", "compat")
        for i in range(start, len(self.entries)):
            e = self.entries[i]
            if libcmp(name, e.key) != 0:
                break
            if e.flags not in target.accepted_flags:
                continue
            named = False
            if new_format:
                named = _is_hwcap_extension(e.hwcap)
                if named and not self._isa_compatible(e, target):
                    continue
                if not named and best is not None:
                    break
                if not named and e.hwcap:
                    if target.legacy_hwcaps_ignored:
                        continue
                    exclude = ~(target.legacy_hwcap | target.legacy_platform_mask | (1 << 63))
                    if e.hwcap & exclude:
                        continue
                    plat = e.hwcap & target.legacy_platform_mask
                    if target.legacy_platform_mask and plat and plat != target.legacy_platform_bit:
                        continue
                if named:
                    prio = _priority(e.hwcaps_subdir, target.hwcaps_priorities)
                    if prio == 0:
                        continue
                    if best is None or prio < best_priority:
                        best_priority = prio
                    else:
                        continue
            best = e
            if not named and e.flags == target.default_flags:
                break
        return best

    @staticmethod
    def _isa_compatible(e: CacheEntry, target: CacheTarget) -> bool:
        # dl_cache_hwcap_isa_level_compatible (sysdeps/x86/dl-isa-level.h); generic: always true
        if target.isa_1 is None:
            return True
        level_bit = 1 << e.isa_level
        return (level_bit & target.isa_1) == level_bit


def _priority(subdir: Optional[str], priorities: Sequence[str]) -> int:
    # glibc_hwcaps_priorities_init: 1-based position among the active subdirectories; 0 = not usable
    if subdir is None:
        return 0
    try:
        return priorities.index(subdir) + 1
    except ValueError:
        return 0


class _TooMuchOverlap(CacheError):
    """The file's entries point into the same long strings far more than any ldconfig output does."""


class _Strings:
    """The NUL-terminated strings of one cache file, each decoded once by offset. ld.so reads them in place;
    a crafted file can point thousands of entries into one long string: the bytes decoded are bounded (a
    real cache decodes about its own size)."""

    def __init__(self, data: bytes, path: str) -> None:
        self.data = data
        #: the file as one character per byte: a string is found and cut at C speed, and an ASCII one (every
        #: name ldconfig writes, in practice) is already decoded
        self.text = data.decode("latin-1")
        self.path = path
        self.memo: Dict[int, str] = {}
        self.left = max(64 << 20, 16 * len(data))

    def get(self, offset: int, limit: int) -> Optional[str]:
        """The string at ``offset`` (None if the offset is outside ``limit``), decoded as file names are."""
        text = self.text
        if offset >= limit or offset >= len(text):
            return None
        hit = self.memo.get(offset)
        if hit is not None:
            return hit
        end = text.find("\0", offset, limit)
        if end < 0:
            end = limit
        self.left -= end - offset
        if self.left < 0:
            raise _TooMuchOverlap(f"{self.path}: its entries point into the same long strings over and over "
                                  "(a crafted file?): soswap reads no cache")
        hit = text[offset:end]
        if not hit.isascii():
            hit = os.fsdecode(self.data[offset:end])
        self.memo[offset] = hit
        return hit


def _parse_old(data: bytes, path: str, little: bool, lenient: bool = False) -> LdCache:
    e = "<" if little else ">"
    if len(data) < 16:
        raise CacheError(f"{path}: truncated ld.so.cache header ({len(data)} bytes)")
    (nlibs,) = struct.unpack_from(e + "I", data, 12)
    if (len(data) - 16) // 12 < nlibs:
        raise CacheError(f"{path}: ld.so.cache claims {nlibs} entries but holds at most {(len(data) - 16) // 12}")
    # A new-format cache after the old entries (the compat layout), 8-byte aligned.
    offset = (16 + 12 * nlibs + 7) & ~7
    if len(data) >= offset + 48 and data[offset:offset + len(NEW_MAGIC)] == NEW_MAGIC:
        return _parse_new(data, offset, path, little, "compat", lenient)
    strings_at = 16 + 12 * nlibs
    limit = len(data) - strings_at
    out: List[CacheEntry] = []
    strings = _Strings(data, path)
    for i in range(nlibs):
        flags, key, value = struct.unpack_from(e + "iII", data, 16 + 12 * i)
        k = strings.get(strings_at + key, len(data)) if key < limit else None
        v = strings.get(strings_at + value, len(data)) if value < limit else None
        if k is None or v is None:
            if lenient:
                continue
            raise CacheError(f"{path}: ld.so.cache entry {i} points outside the string table")
        out.append(CacheEntry(k, v, flags, 0, None))
    return LdCache(path, "old", tuple(out), None, (), little)


def _parse_new(data: bytes, base: int, path: str, little: bool, fmt: str, lenient: bool = False) -> LdCache:
    size = len(data)
    if size - base < 48:
        raise CacheError(f"{path}: truncated ld.so.cache header")
    flags_byte = data[base + 28]
    endian = flags_byte & 3
    if endian == 1:
        raise CacheError(f"{path}: ld.so.cache marks itself invalid (endianness flag 1)")
    if endian in (2, 3):
        little = endian == 2
    e = "<" if little else ">"
    nlibs, _len_strings = struct.unpack_from(e + "II", data, base + 20)
    (ext_offset,) = struct.unpack_from(e + "I", data, base + 32)
    if (size - base - 48) // 24 < nlibs:
        raise CacheError(f"{path}: ld.so.cache claims {nlibs} entries but holds at most {(size - base - 48) // 24}")
    try:
        generator, hwcaps_names = _parse_extensions(data, ext_offset, path, e)
    except CacheError:
        if not lenient:
            raise
        generator, hwcaps_names = None, ()  # update_hwcaps_priorities: no extension, no glibc-hwcaps entry
    out: List[CacheEntry] = []
    row = struct.Struct(e + "iIIIQ")
    # String offsets are relative to the new header (elf/dl-cache.c: string_table = cache_new) and must lie
    # inside the file (_dl_cache_verify_ptr against the file size).
    limit = size - base
    strings = _Strings(data, path)
    get = strings.get
    make = CacheEntry._make
    table = memoryview(data)[base + 48:base + 48 + 24 * nlibs]
    for i, (flags, key, value, _osv, hwcap) in enumerate(row.iter_unpack(table)):
        k = get(base + key, size) if key < limit else None
        v = get(base + value, size) if value < limit else None
        if k is None or v is None:
            if lenient:
                continue
            raise CacheError(f"{path}: ld.so.cache entry {i} points outside the file")
        sub = None
        if _is_hwcap_extension(hwcap):
            idx = hwcap & 0xFFFFFFFF
            sub = hwcaps_names[idx] if idx < len(hwcaps_names) else None
        out.append(make((k, v, flags, hwcap, sub)))
    return LdCache(path, fmt, tuple(out), generator, hwcaps_names, little)


def _parse_extensions(data: bytes, ext_offset: int, path: str, e: str) -> Tuple[Optional[str], Tuple[str, ...]]:
    # cache_extension_load (sysdeps/generic/dl-cache.h); offsets are from the start of the file
    if ext_offset == 0:
        return None, ()
    size = len(data)
    if ext_offset % 4 or ext_offset + 8 > size:
        raise CacheError(f"{path}: malformed ld.so.cache extension directory at offset {ext_offset}")
    magic, count = struct.unpack_from(e + "II", data, ext_offset)
    if magic != EXTENSION_MAGIC:
        raise CacheError(f"{path}: bad ld.so.cache extension magic {magic:#x}")
    if ext_offset + 8 + 16 * count > size:
        raise CacheError(f"{path}: ld.so.cache extension directory runs past the end of the file")
    generator: Optional[str] = None
    names: List[str] = []
    strings = _Strings(data, path)
    for i in range(count):
        tag, _flags, offset, length = struct.unpack_from(e + "IIII", data, ext_offset + 8 + 16 * i)
        if offset + length > size:
            raise CacheError(f"{path}: ld.so.cache extension section {i} runs past the end of the file")
        if tag == EXT_TAG_GENERATOR:
            generator = os.fsdecode(data[offset:offset + length].rstrip(b"\0"))
        elif tag == EXT_TAG_GLIBC_HWCAPS:
            if offset % 4 or length % 4:
                raise CacheError(f"{path}: misaligned glibc-hwcaps section in ld.so.cache")
            for j in range(length // 4):
                (sidx,) = struct.unpack_from(e + "I", data, offset + 4 * j)
                s = strings.get(sidx, size)
                if s is None:
                    raise CacheError(f"{path}: glibc-hwcaps name {j} points outside ld.so.cache")
                names.append(s)
    return generator, tuple(names)
