"""The target system as the loader sees it: glibc version, ABI, system directories, ``$LIB``, ``$PLATFORM``,
hwcaps subdirectories, ld.so.cache — all read from files (ld.so's own bytes, /proc/cpuinfo, the cache), never
by running anything. Every field can be overridden with :meth:`Profile.replace`.
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Dict, FrozenSet, Iterator, Optional, Tuple

from soswap.elf import constants as C
from soswap.elf.file import decode_header
from soswap.errors import ElfError, SoswapError, UsageError
from soswap.loader import cpu as cpumod
from soswap.loader.ldcache import (
    FLAG_AARCH64_LIB64,
    FLAG_ARM_LIBHF,
    FLAG_ARM_LIBSF,
    FLAG_X8664_LIB64,
    FLAG_X8664_LIBX32,
    CacheTarget,
    LdCache,
)
from soswap.loader.rootfs import RootFS
from soswap.textfile import read_regular
from soswap.tuples import NamedTuple


class Abi(NamedTuple):
    """One loader ABI: which ELF files its ld.so accepts and where it lives."""

    name: str
    machine: int
    elf_class: int
    little_endian: bool
    interpreter: str
    #: ``_dl_cache_check_flags``: the accepted cache entry flags.
    cache_flags: Tuple[int, ...]
    #: ``_DL_CACHE_DEFAULT_ID``.
    default_flags: int
    #: Debian multiarch triplet.
    triplet: str
    #: Upstream system directories (when ld.so's file does not tell).
    upstream_dirs: Tuple[str, ...]
    #: The vDSO's soname, or None when the architecture has none.
    vdso: Optional[str]
    #: ARM: the float ABI flag (``EF_ARM_ABI_FLOAT_*``) of EABI v5 objects this ld.so refuses (``VALID_FLOAT_ABI``).
    refused_float: int = 0
    #: An OS ABI byte accepted besides SYSV and GNU (``EXTRA_OSABI``: ARM's ELFOSABI_ARM_AEABI).
    extra_osabi: Optional[int] = None

    def accepts_flags(self, e_flags: int) -> bool:
        """``VALID_FLOAT_ABI``: an object's ``e_flags`` do not name the other ARM float ABI."""
        return not (self.refused_float and e_flags & C.EF_ARM_EABIMASK == C.EF_ARM_EABI_VER5
                    and e_flags & self.refused_float)


ABIS: Dict[str, Abi] = {
    "x86_64": Abi("x86_64", C.EM_X86_64, 64, True, "/lib64/ld-linux-x86-64.so.2", (0x0303,), 0x0303,
                  "x86_64-linux-gnu", ("/lib64/", "/usr/lib64/"), "linux-vdso.so.1"),
    "i386": Abi("i386", C.EM_386, 32, True, "/lib/ld-linux.so.2", (1, 3), 3,
                "i386-linux-gnu", ("/lib/", "/usr/lib/"), "linux-gate.so.1"),
    "x32": Abi("x32", C.EM_X86_64, 32, True, "/libx32/ld-linux-x32.so.2", (FLAG_X8664_LIBX32 | 3,),
               FLAG_X8664_LIBX32 | 3, "x86_64-linux-gnux32", ("/libx32/", "/usr/libx32/"), "linux-vdso.so.1"),
    "aarch64": Abi("aarch64", C.EM_AARCH64, 64, True, "/lib/ld-linux-aarch64.so.1", (FLAG_AARCH64_LIB64 | 3,),
                   FLAG_AARCH64_LIB64 | 3, "aarch64-linux-gnu", ("/lib64/", "/usr/lib64/"), "linux-vdso.so.1"),
    "ppc64le": Abi("ppc64le", C.EM_PPC64, 64, True, "/lib64/ld64.so.2", (0x0503,), 0x0503,
                   "powerpc64le-linux-gnu", ("/lib64/", "/usr/lib64/"), "linux-vdso64.so.1"),
    "s390x": Abi("s390x", C.EM_S390, 64, False, "/lib/ld64.so.1", (0x0403,), 0x0403,
                 "s390x-linux-gnu", ("/lib64/", "/usr/lib64/"), "linux-vdso64.so.1"),
    # sysdeps/unix/sysv/linux/arm: ld.so.cache entries of the other float ABI are refused, unmarked ones taken
    "armhf": Abi("armhf", C.EM_ARM, 32, True, "/lib/ld-linux-armhf.so.3", (FLAG_ARM_LIBHF | 3, 3),
                 FLAG_ARM_LIBHF | 3, "arm-linux-gnueabihf", ("/lib/", "/usr/lib/"), "linux-vdso.so.1",
                 C.EF_ARM_ABI_FLOAT_SOFT, C.ELFOSABI_ARM_AEABI),
    "armel": Abi("armel", C.EM_ARM, 32, True, "/lib/ld-linux.so.3", (FLAG_ARM_LIBSF | 3, 3),
                 FLAG_ARM_LIBSF | 3, "arm-linux-gnueabi", ("/lib/", "/usr/lib/"), "linux-vdso.so.1",
                 C.EF_ARM_ABI_FLOAT_HARD, C.ELFOSABI_ARM_AEABI),
    "riscv64": Abi("riscv64", C.EM_RISCV, 64, True, "/lib/ld-linux-riscv64-lp64d.so.1", (0x1003,), 0x1003,
                   "riscv64-linux-gnu", ("/lib64/lp64d/", "/usr/lib64/lp64d/"), "linux-vdso.so.1"),
}
assert ABIS["x86_64"].cache_flags == (FLAG_X8664_LIB64 | 3,)

_HOST_ABI = {"x86_64": "x86_64", "amd64": "x86_64", "i686": "i386", "i386": "i386", "aarch64": "aarch64",
             "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "armv7l": "armhf",
             "armv8l": "armhf"}


def host_abi() -> str:
    """The loader ABI of this machine's own programs."""
    return _HOST_ABI.get(os.uname().machine, "x86_64")


#: ABIs one CPU runs (a 64-bit x86 kernel runs i386 and x32 programs too).
_CPU_FAMILY = {"x86_64": "x86", "i386": "x86", "x32": "x86", "armhf": "arm", "armel": "arm"}


def same_cpu(abi: str, other: str) -> bool:
    """Programs of both ABIs run on one CPU, which ``init_cpu_features`` sees alike."""
    return _CPU_FAMILY.get(abi, abi) == _CPU_FAMILY.get(other, other)


def host_cpu(abi: str) -> cpumod.CpuInfo:
    """This machine's CPU when ``abi`` runs on it; for another architecture (a root built for another
    machine), a CPU with no optional features: what ld.so would see there is not known here (``--cpuinfo``)."""
    if same_cpu(abi, host_abi()):
        return cpumod.CpuInfo.read(arch=abi)
    return cpumod.CpuInfo("", frozenset(), abi)


#: Where a root's own programs are (their ELF header says which machine the root is built for).
_ROOT_PROBES = ("/bin/sh", "/usr/bin/env", "/sbin/init", "/usr/bin/ls")


def root_abi(fs: RootFS) -> str:
    """The loader ABI a system root is built for: that of its shell (or another program every system has),
    when its interpreter is there; else the first ABI, the host's first, whose ld.so the root has."""
    host = host_abi()
    for probe in _ROOT_PROBES:
        head = _read_prefix(fs.host(probe), 64)
        try:
            h, _layout = decode_header(head, probe, len(head))
        except ElfError:
            continue
        abi = abi_for(h.machine, h.elf_class, h.flags)
        if abi is not None and abi.little_endian == h.little_endian and os.path.exists(fs.host(abi.interpreter)):
            return abi.name
    for name in (host, *ABIS):
        if os.path.exists(fs.host(ABIS[name].interpreter)):
            return name
    return host


def abi_for(machine: int, elf_class: int, e_flags: int = 0) -> Optional[Abi]:
    """The ABI whose ld.so loads ELF files of ``machine``, ``elf_class`` and ``e_flags`` (None if unknown). An ARM
    object that names no float ABI is taken as hard-float, Debian's armhf."""
    for abi in ABIS.values():
        if abi.machine == machine and abi.elf_class == elf_class and abi.accepts_flags(e_flags):
            return abi
    return None


# (bounded: a crafted file's digit run must not reach int()'s 4300-digit limit)
_VERSION_RE = re.compile(rb"release version (\d{1,9})\.(\d{1,9})(?!\d)")
_CACHE_VERSION_RE = re.compile(r"(?<!\d)(\d{1,9})\.(\d{1,9})\)?\s*$")
_NAME_VERSION_RE = re.compile(r"^ld-(\d{1,9})\.(\d{1,9})\.so$")
#: The glibc version assumed when nothing under the root says which it is (Debian 12's).
DEFAULT_GLIBC = (2, 36)
_LIB_RE = re.compile(rb"ORIGIN\0PLATFORM\0LIB\0([^\0]{1,200})\0")
_DIRS_RE = re.compile(rb"(?:/[\x21-\x7e]{0,200}/\0){2,}")


class Profile(NamedTuple):
    """The facts about the target's dynamic loader. Detect with :meth:`detect`; override with :meth:`replace`."""

    root: str
    abi: Abi
    glibc_version: Tuple[int, int]
    interpreter: str
    system_dirs: Tuple[str, ...]
    lib: str
    platform: Optional[str]
    hwcaps_subdirs: Tuple[str, ...]
    legacy_subdirs: Tuple[str, ...]
    #: GNU_PROPERTY_X86_ISA_1 bits of the CPU (None: not x86, no ISA checks).
    isa_level: Optional[int]
    cache_path: str = "/etc/ld.so.cache"
    preload_path: str = "/etc/ld.so.preload"
    #: Legacy hwcap bits for cache entries (``dl_hwcap & hwcap_mask``), the platform bit and mask.
    legacy_hwcap: int = 0
    legacy_platform_bit: int = 0
    legacy_platform_mask: int = 0
    #: The soname of the vDSO in the link map (None: no vDSO).
    vdso: Optional[str] = "linux-vdso.so.1"
    #: LIBC_ABI_MAX: the first EI_ABIVERSION a GNU/Linux object may not use (libc-abis).
    libc_abi_max: int = 4
    #: readlink("/proc/self/exe") works for a program there: the main program's $ORIGIN (``_dl_get_origin``).
    #: False for a chroot without /proc, where it is LD_ORIGIN_PATH or unknown.
    proc_self_exe: bool = True
    #: The CPU the CPU-derived fields were computed from, as (vendor, sorted flags, arch[, ARM architecture])
    #: (:meth:`soswap.loader.cpu.CpuInfo.facts`; None: not read).
    #: Sorted: the profile's repr is part of kept results' keys.
    cpu: Optional[tuple] = None

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def detect(cls, root: str = "/", *, abi: Optional[str] = None, cpuinfo: Optional[str] = None,
               interpreter: Optional[str] = None) -> Profile:
        """Read the profile of the system under ``root``.

        ``abi`` picks the loader ABI (default: the host's, and for another root the one it is built for:
        :func:`root_abi`); ``cpuinfo`` is the text of the target's /proc/cpuinfo (default: the host's when the
        ABI runs on this CPU, else a CPU with no optional features: :func:`host_cpu`); ``interpreter`` the
        ld.so path inside ``root`` (default: the ABI's).
        """
        fs = RootFS(root)
        if abi is None:
            abi = host_abi() if fs.is_host else root_abi(fs)
        if abi not in ABIS:
            raise UsageError(f"unknown loader ABI {abi!r} (known: {', '.join(sorted(ABIS))})")
        a = ABIS[abi]
        if cpuinfo is not None and not cpumod.is_cpu_text(cpuinfo):
            raise UsageError("the CPU text is neither a /proc/cpuinfo nor what LD_SHOW_AUXV=1 prints")
        if cpuinfo is not None and _CPU_FAMILY.get(a.name) == "x86" and cpumod.is_auxv_dump(cpuinfo):
            # init_cpu_features asks the CPU itself (cpuid): AT_HWCAP says next to nothing on x86
            raise UsageError("an LD_SHOW_AUXV dump does not say which features an x86 CPU has: give its "
                             "/proc/cpuinfo")
        info = cpumod.CpuInfo.parse(cpuinfo, a.name) if cpuinfo is not None else host_cpu(a.name)
        return cls._detect(fs, a, info, interpreter)

    @classmethod
    def _detect(cls, fs: RootFS, a: Abi, info: cpumod.CpuInfo, interpreter: Optional[str]) -> Profile:
        interp = interpreter or a.interpreter
        ldso = _read_prefix(fs.host(interp), 4 << 20)
        dirs = _system_dirs_from_ldso(ldso, a)
        # ld.so carries the "release version" banner since 2.33 (--version); before, libc.so.6 has it, and
        # ld.so's file is named after the version (ld-2.31.so); the cache's generator string came in 2.32
        version = (_version_from_ldso(ldso) or _version_from_libc(fs, dirs) or _version_from_name(fs, interp)
                   or _version_from_cache(fs.host("/etc/ld.so.cache")) or DEFAULT_GLIBC)
        lib = _lib_from_ldso(ldso) or (dirs[0].strip("/") if dirs else "lib")
        facts = _cpu_facts(a.name, info, version)
        return cls(root=fs.root, abi=a, glibc_version=version, interpreter=interp, system_dirs=dirs, lib=lib,
                   vdso=a.vdso, cpu=info.facts(),
                   **facts)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> Profile:
        """A copy with some fields changed (``profile.replace(platform="x86_64")``)."""
        return self._replace(**changes)  # type: ignore[arg-type]

    def without_cpu_features(self, flags: FrozenSet[str]) -> Profile:
        """The profile of a process whose ``GLIBC_TUNABLES`` turns these CPU features off
        (:func:`soswap.loader.cpu.tunable_disabled_flags`): its glibc-hwcaps subdirectories, ``$PLATFORM`` and
        legacy hwcaps as ``init_cpu_features`` leaves them (tunables came in 2.26); the ISA level stays."""
        if not flags or self.cpu is None or self.glibc_version < (2, 26):
            return self
        info = cpumod.CpuInfo.from_facts(self.cpu)
        info = info.without(flags | cpumod.also_turned_off(info.flags, flags, self.glibc_version))
        facts = _cpu_facts(self.abi.name, info, self.glibc_version)
        # the ISA level is computed before the tunables are applied (update_active): it stays
        facts["isa_level"] = self.isa_level
        return self._replace(cpu=info.facts(), **facts)  # type: ignore[arg-type]

    def for_abi(self, abi: Abi) -> Profile:
        """The profile of a sibling ABI on the same system (e.g. i386 next to x86_64), detected afresh."""
        if abi == self.abi:
            return self
        if self.cpu is not None and same_cpu(abi.name, self.abi.name):
            # the CPU the profile was made for (a --cpuinfo included), seen by the sibling ABI
            info = cpumod.CpuInfo.from_facts(self.cpu, abi.name)
        else:
            info = host_cpu(abi.name)
        return Profile._detect(_fs_for(self.root), abi, info, None)

    # -- derived -----------------------------------------------------------------------------------

    @property
    def fs(self) -> RootFS:
        return _fs_for(self.root)

    @property
    def ldcache(self) -> LdCache:
        """The ld.so.cache as ld.so reads it (:meth:`LdCache.load`: what ld.so ignores is ignored, and named in
        ``problem``)."""
        host = self.fs.host(self.cache_path)
        try:
            st = os.stat(host)
            ident: Tuple[int, ...] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            ident = ()
        key = (self.root, self.cache_path, self.abi.little_endian, ident)
        hit = _CACHES.get(key)
        if hit is None:
            hit = LdCache.load(host, self.abi.little_endian)
            hit.path = self.cache_path
            _CACHES[key] = hit
        return hit

    def cache_target(self, hwcaps_mask: Optional[Tuple[str, ...]] = None) -> CacheTarget:
        """What ``search_cache`` needs, for this profile (and a ``--glibc-hwcaps-mask``)."""
        prios = self.hwcaps_subdirs
        if hwcaps_mask is not None:
            prios = tuple(s for s in prios if s in hwcaps_mask)
        return CacheTarget(
            accepted_flags=self.abi.cache_flags,
            hwcaps_priorities=prios,
            isa_1=self.isa_level if self.abi.name == "x86_64" else None,
            legacy_hwcap=self.legacy_hwcap,
            legacy_platform_bit=self.legacy_platform_bit,
            legacy_platform_mask=self.legacy_platform_mask,
            legacy_hwcaps_ignored=self.glibc_version >= (2, 40),
            default_flags=self.abi.default_flags,
        )

    def describe(self) -> Dict[str, object]:
        """A JSON-friendly summary."""
        return {
            "root": self.root,
            "abi": self.abi.name,
            "glibc_version": "{}.{}".format(*self.glibc_version),
            "interpreter": self.interpreter,
            "system_dirs": list(self.system_dirs),
            "lib": self.lib,
            "platform": self.platform,
            "hwcaps_subdirs": list(self.hwcaps_subdirs),
            "legacy_subdirs": list(self.legacy_subdirs),
            "cache": self.cache_path,
        }


def _cpu_facts(abi: str, info: cpumod.CpuInfo, version: Tuple[int, int]) -> Dict[str, object]:
    """The profile fields derived from the CPU (``init_cpu_features``, ``_dl_important_hwcaps``)."""
    platform: Optional[str]
    hwcaps: Tuple[str, ...] = ()
    legacy: Tuple[str, ...] = ()
    isa: Optional[int] = None
    legacy_hwcap = platform_bit = platform_mask = 0
    if abi == "x86_64":
        # glibc-hwcaps subdirectories and the x86 ISA level (hwcaps, cache entries, _rtld_main_check)
        # came in 2.33; _dl_hwcaps_subdirs_active asks for BMI1/BMI2 at x86-64-v3 in every release
        isa = cpumod.isa_level(info, version) if version >= (2, 33) else None
        hwcaps = cpumod.x86_64_hwcaps_subdirs(cpumod.isa_level(info, (2, 37))) if isa is not None else ()
        platform, avx512_1 = cpumod.x86_64_platform(info)
        # HWCAP_X86_64 (bit 1), HWCAP_X86_AVX512_1 (bit 2); dl_x86_hwcap_flags = sse2, x86_64, avx512_1
        names = ["x86_64"] + (["avx512_1"] if avx512_1 else [])
        legacy_hwcap = 2 | (4 if avx512_1 else 0)
        # dl_x86_platforms: i586, i686, haswell, xeon_phi from bit 48 (sysdeps/x86/dl-procinfo.h)
        platform_mask = 0xF << 48
        plat_index = {"haswell": 2, "xeon_phi": 3}.get(platform)
        platform_bit = (1 << (48 + plat_index)) if plat_index is not None else 0
        if version <= (2, 36):
            legacy = cpumod.legacy_subdirs([*names, platform, "tls"])
    elif abi == "i386":
        platform = "i686"
        sse2 = info.has("sse2")
        legacy_hwcap = 1 if sse2 else 0
        platform_mask = 0x3 << 48
        platform_bit = 1 << 49
        if version <= (2, 36):
            legacy = cpumod.legacy_subdirs((["sse2"] if sse2 else []) + [platform, "tls"])
    else:
        # AT_PLATFORM, the kernel's ELF_PLATFORM, as the CPU's text says it, else the ABI's usual one; an empty
        # one is none (dl_platform_init)
        platform = info.platform if info.platform is not None else _DEFAULT_PLATFORM.get(abi, abi)
        if abi in ("armhf", "armel") and info.platform is None:
            platform = f"v{info.architecture or 7}l"  # /proc/cpuinfo's "CPU architecture"
        platform = platform or None
        # HWCAP_IMPORTANT (each arch's dl-procinfo.h), the names by bit number
        important = _IMPORTANT_HWCAPS.get(abi, ())
        names = [name for _bit, name in important if info.has(name)]
        legacy_hwcap = sum(1 << bit for bit, name in important if name in names)
        if abi == "ppc64le" and version >= (2, 33):
            hwcaps = cpumod.ppc64le_hwcaps_subdirs(info)
        elif abi == "s390x" and version >= (2, 33):
            hwcaps = cpumod.s390x_hwcaps_subdirs(info, version)
        platforms = _platforms(abi, version)
        if platforms:
            # _dl_string_platform: bits from _DL_FIRST_PLATFORM (32 on POWER and Z)
            platform_mask = ((1 << len(platforms)) - 1) << 32
            platform_bit = 1 << (32 + platforms.index(platform)) if platform in platforms else 0
        if version <= (2, 36):
            legacy = cpumod.legacy_subdirs([*names, *([platform] if platform else []), "tls"])
    return dict(platform=platform, hwcaps_subdirs=hwcaps, legacy_subdirs=legacy, isa_level=isa,
                legacy_hwcap=legacy_hwcap, legacy_platform_bit=platform_bit, legacy_platform_mask=platform_mask)


#: AT_PLATFORM where the CPU's text does not say it: the kernel's for the ABI's first CPU (POWER8 for ppc64le;
#: setup_elf_platform's default on Z)
_DEFAULT_PLATFORM = {"ppc64le": "power8", "s390x": "z10"}
#: HWCAP_IMPORTANT as (bit, name), by bit number: aarch64 HWCAP_ATOMICS; arm VFP, NEON; powerpc
#: PPC_FEATURE_HAS_DFP, _HAS_ALTIVEC; s390 ZARCH, LDISP, EIMM, DFP, VX, VXE, VXRS_EXT2
_IMPORTANT_HWCAPS = {
    "aarch64": ((8, "atomics"),),
    "armhf": ((6, "vfp"), (12, "neon")),
    "armel": ((6, "vfp"), (12, "neon")),
    "ppc64le": ((10, "dfp"), (28, "altivec")),
    "s390x": ((1, "zarch"), (4, "ldisp"), (5, "eimm"), (6, "dfp"), (11, "vx"), (13, "vxe"), (15, "vxe2")),
}


def _platforms(abi: str, version: Tuple[int, int]) -> Tuple[str, ...]:
    """The platforms ``_dl_string_platform`` knows, by bit (from _DL_FIRST_PLATFORM), where ld.so.cache entries
    may carry one (sysdeps/powerpc/dl-procinfo.h, sysdeps/s390/dl-procinfo.c)."""
    if abi == "ppc64le":
        # power10 came in 2.32
        power = ("power4", "ppc970", "power5", "power5+", "power6", "ppc-cell-be", "power6x", "power7", "ppca2",
                 "ppc405", "ppc440", "ppc464", "ppc476", "power8", "power9", "power10")
        return power if version >= (2, 32) else power[:-1]
    if abi == "s390x":
        z = ("g5", "z900", "z990", "z9-109", "z10", "z196", "zEC12", "z13", "z14", "z15", "z16", "z17")
        return z[:12] if version >= (2, 42) else z[:11] if version >= (2, 36) else z[:10]
    return ()


_CACHES: Dict[Tuple[object, ...], LdCache] = {}
_FS: Dict[str, RootFS] = {}


def _fs_for(root: str) -> RootFS:
    fs = _FS.get(root)
    if fs is None:
        fs = _FS[root] = RootFS(root)
    return fs


def _read_prefix(path: str, limit: int) -> bytes:
    try:
        return read_regular(path, limit)
    except OSError:
        return b""


def _version_from_ldso(data: bytes) -> Optional[Tuple[int, int]]:
    m = _VERSION_RE.search(data)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _version_from_libc(fs: RootFS, dirs: Tuple[str, ...]) -> Optional[Tuple[int, int]]:
    # libc.so.6's banner (__libc_print_version): "... release version 2.31."
    for d in dirs:
        version = _version_from_ldso(_read_prefix(fs.host(posixpath.join(d, "libc.so.6")), 16 << 20))
        if version is not None:
            return version
    return None


def _version_from_name(fs: RootFS, interp: str) -> Optional[Tuple[int, int]]:
    # before 2.34 the loader's file is ld-2.NN.so, and PT_INTERP a link to it
    m = _NAME_VERSION_RE.search(posixpath.basename(fs.target_realpath(interp)))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _version_from_cache(path: str) -> Optional[Tuple[int, int]]:
    try:
        cache = LdCache.load(path)
    except (SoswapError, OSError):
        return None
    if cache.generator:
        m = _CACHE_VERSION_RE.search(cache.generator)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def _dir_runs(data: bytes) -> Iterator[re.Match[bytes]]:
    """``_DIRS_RE.finditer(data)``, without trying the pattern at every "/" of a 200 KB file: a run holds at
    least two directories, so "/\\0/" where the first ends, at most 203 bytes after the run starts."""
    at = data.find(b"/\0/")
    done = 0  # where the last run ended: runs do not overlap
    while at >= 0:
        m = None
        lo = max(done, at - 203)
        s = data.find(b"/", lo, at + 1)
        while 0 <= s <= at:  # the leftmost run that starts before this boundary
            m = _DIRS_RE.match(data, s)
            if m is not None:
                break
            s = data.find(b"/", s + 1, at + 1)
        if m is not None:
            yield m
            done = m.end()
            at = data.find(b"/\0/", done)
        else:
            at = data.find(b"/\0/", at + 1)


def _system_dirs_from_ldso(data: bytes, abi: Abi) -> Tuple[str, ...]:
    # SYSTEM_DIRS (elf/dl-load.c, generated by gen-trusted-dirs): NUL-separated absolute dirs ending in "/"
    for m in _dir_runs(data):
        dirs = tuple(os.fsdecode(d) for d in m.group(0).split(b"\0") if d)
        if any(d.endswith("/lib/") or d.endswith("/lib64/") or abi.triplet in d for d in dirs):
            return dirs
    return abi.upstream_dirs


def _lib_from_ldso(data: bytes) -> Optional[str]:
    # DL_DST_LIB follows the DST names in ld.so's string table
    m = _LIB_RE.search(data)
    return os.fsdecode(m.group(1)) if m else None
