"""What the loader derives from the CPU, computed from ``/proc/cpuinfo`` or from what ``LD_SHOW_AUXV=1`` prints
on the target (never by running ld.so or cpuid): the x86-64 ISA levels (``get_isa_level``), the glibc-hwcaps
subdirectories they activate, ``$PLATFORM`` (``init_cpu_features``: ``haswell`` / ``xeon_phi`` on Intel) and the
legacy hwcap bits (``HWCAP_X86_64``, ``HWCAP_X86_AVX512_1``) behind the pre-2.37 ``tls/haswell/avx512_1/x86_64``
subdirectories; the POWER and Z levels (``_dl_hwcaps_subdirs_active``) from the kernel's hwcap names.
"""

from __future__ import annotations

import re
from typing import FrozenSet, List, Optional, Tuple

from soswap.tuples import NamedTuple

# GNU_PROPERTY_X86_ISA_1_* bits.
ISA_BASELINE, ISA_V2, ISA_V3, ISA_V4 = 1, 2, 4, 8

# /proc/cpuinfo flag names of the features each level needs (sysdeps/x86/get-isa-level.h, glibc 2.36).
_BASELINE = ("cmov", "cx8", "fpu", "fxsr", "mmx", "sse", "sse2")
_V2 = ("cx16", "lahf_lm", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2")
_V3 = ("avx", "avx2", "f16c", "fma", "abm", "movbe")  # abm = LZCNT
_V4 = ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl")
# glibc >= 2.37 also requires BMI1/BMI2 for x86-64-v3 (sysdeps/x86/get-isa-level.h).
_V3_238 = ("bmi1", "bmi2")


_AUXV_LINE = re.compile(r"^AT_[A-Z0-9_]+:", re.M)


def is_auxv_dump(text: str) -> bool:
    """The text is what ``LD_SHOW_AUXV=1`` prints (not a /proc/cpuinfo)."""
    return _AUXV_LINE.search(text) is not None


#: A line every architecture's /proc/cpuinfo has at least one of (s390x: ``processor 0: version = ...``).
_CPUINFO_LINE = re.compile(r"^(?:processor|vendor_id|flags|Features|features|cpu)[ \t]*(?:\d+[ \t]*)?:", re.M)


def is_cpu_text(text: str) -> bool:
    """The text is a /proc/cpuinfo or what ``LD_SHOW_AUXV=1`` prints (anything else says nothing of a CPU)."""
    return _CPUINFO_LINE.search(text) is not None or is_auxv_dump(text)


class CpuInfo(NamedTuple):
    """The facts about the CPU that the loader uses."""

    vendor: str  # "GenuineIntel", "AuthenticAMD", ...
    #: x86: /proc/cpuinfo's flags; elsewhere the kernel's hwcap names (AT_HWCAP, AT_HWCAP2)
    flags: FrozenSet[str]
    arch: str  # "x86_64", "aarch64", ...
    #: ARM's "CPU architecture" (7, 8; 0: not said): the kernel's AT_PLATFORM is "v7l", "v8l"
    architecture: int = 0
    #: The kernel's AT_PLATFORM when the text says it (None: not said; "": none, which ld.so takes as no
    #: platform). Not used on x86, where ``init_cpu_features`` sets the platform.
    platform: Optional[str] = None

    @classmethod
    def parse(cls, text: str, arch: str = "x86_64") -> CpuInfo:
        """Parse the text of ``/proc/cpuinfo`` (the first processor block is enough), or what
        ``LD_SHOW_AUXV=1`` prints on the target (``AT_HWCAP``, ``AT_HWCAP2``, ``AT_PLATFORM`` lines: the values
        ld.so itself starts from)."""
        vendor = ""
        flags: FrozenSet[str] = frozenset()
        architecture = 0
        platform: Optional[str] = None
        dump = False  # the text is LD_SHOW_AUXV's
        hwcaps: List[str] = []
        extra: List[str] = []
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip()
            if key.startswith("AT_"):
                dump = True
                if key in ("AT_HWCAP", "AT_HWCAP2"):
                    hwcaps += _auxv_names(value.split(), arch, key == "AT_HWCAP")
                elif key == "AT_PLATFORM":
                    platform = value.strip()
            elif key == "vendor_id" and not vendor:
                vendor = value.strip()
            elif key in ("flags", "Features", "features") and not flags:
                flags = frozenset(value.split())
            elif key == "CPU architecture" and not architecture:
                digits = value.strip()
                architecture = int(digits) if digits.isdigit() and len(digits) < 3 else 0
            elif key == "cpu" and arch == "ppc64le" and platform is None:
                platform, names = _power_model(value)
                extra += names
            elif key == "facilities" and arch == "s390x":
                extra += [f"stfle{n}" for n in value.split() if n in _ARCH15_FACILITIES]
        if dump:  # AT_PLATFORM is absent when the kernel gave none
            return cls(vendor, frozenset(hwcaps), arch, architecture, platform or "")
        if arch == "s390x":
            m = _S390_MACHINE.search(text)
            if m:
                platform = _S390_MACHINES.get(m.group(1).upper(), "z10")
        return cls(vendor, flags.union(extra), arch, architecture, platform)

    def facts(self) -> tuple:
        """The CPU as a profile keeps it (:attr:`soswap.loader.profile.Profile.cpu`): the flags sorted, the
        architecture and platform only when known."""
        out: tuple = (self.vendor, tuple(sorted(self.flags)), self.arch, self.architecture, self.platform)
        while len(out) > 3 and out[-1] in (0, None):
            out = out[:-1]
        return out

    @classmethod
    def from_facts(cls, facts: tuple, arch: Optional[str] = None) -> CpuInfo:
        """The inverse of :meth:`facts` (for ABI ``arch`` when given: a sibling ABI on the same CPU)."""
        vendor, flags, own, *rest = facts
        return cls(vendor, frozenset(flags), arch or own, *rest)

    @classmethod
    def read(cls, path: str = "/proc/cpuinfo", arch: str = "x86_64") -> CpuInfo:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return cls.parse(f.read(), arch)
        except OSError:
            return cls("", frozenset(), arch)

    def has(self, *names: str) -> bool:
        return all(n in self.flags for n in names)

    def without(self, flags: FrozenSet[str]) -> CpuInfo:
        """The CPU with these features turned off (``GLIBC_TUNABLES``: :func:`tunable_disabled_flags`)."""
        return self._replace(flags=self.flags - flags)


# The features GLIBC_TUNABLES=glibc.cpu.hwcaps=-NAME,... can turn off (sysdeps/x86/cpu-tunables.c, set_hwcaps:
# only disabling counts for these), as /proc/cpuinfo names them. Unknown names are ignored, as by glibc.
_TUNABLE_FLAGS = {
    "AVX": "avx", "CX8": "cx8", "FMA": "fma", "HTT": "ht", "AVX2": "avx2", "BMI1": "bmi1", "BMI2": "bmi2",
    "CMOV": "cmov", "ERMS": "erms", "FMA4": "fma4", "SSE2": "sse2", "LZCNT": "abm", "MOVBE": "movbe",
    "SSSE3": "ssse3", "XSAVE": "xsave", "POPCNT": "popcnt", "SSE4_1": "sse4_1", "SSE4_2": "sse4_2",
    "XSAVEC": "xsavec", "AVX512F": "avx512f", "OSXSAVE": "osxsave", "AVX512CD": "avx512cd",
    "AVX512BW": "avx512bw", "AVX512DQ": "avx512dq", "AVX512ER": "avx512er", "AVX512PF": "avx512pf",
    "AVX512VL": "avx512vl",
}


def tunable_disabled_flags(tunables: Optional[str]) -> FrozenSet[str]:
    """The /proc/cpuinfo flags that ``GLIBC_TUNABLES`` (its text) turns off through ``glibc.cpu.hwcaps``
    (``name=value`` items separated by ``:``; the last ``glibc.cpu.hwcaps`` counts; its value a list of
    ``-NAME`` separated by ``,``). ``init_cpu_features`` applies them after it computed the ISA level and
    before the glibc-hwcaps subdirectories and ``$PLATFORM`` are decided."""
    if not tunables:
        return frozenset()
    value = None
    for item in tunables.split(":"):
        name, sep, val = item.partition("=")
        if sep and name == "glibc.cpu.hwcaps":
            value = val
    if not value:
        return frozenset()
    return frozenset(_TUNABLE_FLAGS[n[1:]] for n in value.split(",") if n.startswith("-") and n[1:] in _TUNABLE_FLAGS)


def tunables_effect(tunables: Optional[str], glibc: Tuple[int, int]) -> Tuple[bool, bool]:
    """What ld.so of release ``glibc`` makes of ``GLIBC_TUNABLES`` (its text) in a process the kernel did not
    start in secure mode: (it applies the tunables, :func:`tunable_disabled_flags` included; it turns secure
    mode on).

    An AT_SECURE process never applies ``glibc.cpu.hwcaps``, whatever this says: up to 2.38 ``parse_tunables``
    skips every tunable of security level ``SXID_ERASE``, the default one, which ``glibc.cpu.hwcaps``
    (sysdeps/x86/dl-tunables.list) keeps; since 2.39 ``__tunables_init`` returns at once for AT_SECURE
    (9c96c87d60ea, "elf: Ignore GLIBC_TUNABLES for setuid/setgid binaries").

    The CVE-2023-4911 fix (1056e5b4c3f2: 2.39, the 2.34-2.38 branches, Debian 12 from 2.36-9+deb12u3) ends the
    parse at the end of the string; before it, since the BZ #27471 fix (2ed18c5b53: 2.34, the 2.31-2.33
    branches), a last value holding a ``=`` was parsed again as NAME=VALUE (``X=glibc.cpu.hwcaps=-AVX2`` turns
    AVX2 off in Ubuntu 22.04's 2.35-0ubuntu3): modelled as fixed, the profile not knowing the patch level.

    Since 2.39 ``parse_tunables_string`` refuses the whole string ("invalid GLIBC_TUNABLES ... ignored") when
    a value holds a ``=`` or the last item has none (a trailing ``:`` included; 680c597e9c, b4cf6cac73); before,
    it kept what it had parsed. Since 2.40 ``glibc.rtld.enable_secure=1`` (the last one, a number as
    ``_dl_strtoul`` reads it: 71648e8004) sets ``__libc_enable_secure`` and applies none of the string's
    tunables: the process runs in secure mode, ld.so run by ``ldd`` too (but ldd's shell, secure then, unsets
    GLIBC_TUNABLES first: :class:`soswap.loader.ldd.LddModel`)."""
    if not tunables or glibc < (2, 39):
        return True, False
    if _malformed(tunables):
        return False, False
    if glibc < (2, 40):
        return True, False
    items = tunables.split(":")
    secure = None
    for item in items:
        name, sep, value = item.partition("=")
        if sep and name == "glibc.rtld.enable_secure":
            secure = value
    if secure is not None and _dl_strtoul(secure) == 1:
        return False, True
    return True, False


def tunables_warning(tunables: Optional[str], glibc: Tuple[int, int]) -> Optional[str]:
    """The line ld.so of release ``glibc`` prints on standard error as it starts, before it looks at the
    program, when it refuses ``GLIBC_TUNABLES`` whole (``parse_tunables``, glibc >= 2.39: "WARNING: ld.so:
    invalid GLIBC_TUNABLES `TEXT': ignored."), or None. An AT_SECURE process never parses the variable: the
    caller leaves those out. An empty value is no tunable, not a malformed one (checked against 2.39-2.43)."""
    if not tunables or glibc < (2, 39) or not _malformed(tunables):
        return None
    return f"WARNING: ld.so: invalid GLIBC_TUNABLES `{tunables}': ignored."


def _malformed(tunables: str) -> bool:
    # parse_tunables_string returns -1: a value holding a "=", or a last item without one ("a", "x=1:")
    items = tunables.split(":")
    return any(item.count("=") > 1 for item in items) or "=" not in items[-1]


#: Significant digits of the largest 64-bit value in each base _dl_strtoul reads.
_DIGITS_64 = {8: 22, 10: 20, 16: 16}


def _dl_strtoul(text: str) -> Optional[int]:
    """``tunable_parse_num``: the number ``_dl_strtoul`` reads (blanks, a sign, 0x hexadecimal, 0 octal) as a
    signed 64-bit value, None unless it reads the whole text without overflowing."""
    s = text.lstrip(" \t")
    negative = s[:1] == "-"
    if s[:1] in ("-", "+"):
        s = s[1:]
    if not s or s[0] not in "0123456789":
        return None if s else 0  # no digit: 0, read up to here
    base, digits = 10, "0123456789"
    if s[0] == "0":
        if s[1:2] in ("x", "X"):
            base, digits, s = 16, "0123456789abcdefABCDEF", s[2:]
        else:
            base, digits = 8, "01234567"
    if not all(c in digits for c in s):
        return None
    if len(s.lstrip("0")) > _DIGITS_64[base]:
        return None  # past 2**64: _dl_strtoul stops at the digit that overflows (and int() refuses 4300 digits)
    value = int(s, base) if s else 0
    if value >= 1 << 64:
        return None
    if negative:
        value = -value % (1 << 64)
    return value - (1 << 64) if value >= 1 << 63 else value


# What init_cpu_features turns off after the tunables when XSAVE cannot save the AVX state (glibc 2.36 as
# Debian 12 ships it: checked with ld.so --list-diagnostics).
_NEEDS_XSAVE = frozenset({"avx", "avx2", "avx_vnni", "fma", "vaes", "vpclmulqdq", "xop", "f16c", "fma4",
                          "amx_bf16", "amx_tile", "amx_int8"})


def also_turned_off(flags: FrozenSet[str], disabled: FrozenSet[str], glibc: Tuple[int, int]) -> FrozenSet[str]:
    """The features ``init_cpu_features`` turns off itself after the tunables turned ``disabled`` off (of the
    CPU's ``flags``): XSAVE and XSAVEC without OSXSAVE (which /proc/cpuinfo does not list: the kernel sets it
    where it uses XSAVE), and the AVX family when neither XSAVE nor XSAVEC is left."""
    if glibc < (2, 36):
        return frozenset()
    left = flags - disabled
    if "xsave" not in flags or "osxsave" in disabled:
        left -= {"xsave", "xsaveopt", "xsavec"}
    if not {"xsave", "xsavec"} & left:
        left = frozenset(f for f in left if f not in _NEEDS_XSAVE and not f.startswith("avx512"))
    return (flags - disabled) - left


def isa_level(cpu: CpuInfo, glibc: Tuple[int, int] = (2, 36)) -> int:
    """GNU_PROPERTY_X86_ISA_1 bits the CPU supports (``get_isa_level``)."""
    level = 0
    if not cpu.has(*_BASELINE):
        return level
    level |= ISA_BASELINE
    if not cpu.has(*_V2):
        return level
    level |= ISA_V2
    v3 = _V3 + (_V3_238 if glibc >= (2, 37) else ())
    if not cpu.has(*v3):
        return level
    level |= ISA_V3
    if cpu.has(*_V4):
        level |= ISA_V4
    return level


def x86_64_hwcaps_subdirs(level: int) -> Tuple[str, ...]:
    """The active glibc-hwcaps subdirectories, best first (sysdeps/x86_64/dl-hwcaps-subdirs.c)."""
    out: List[str] = []
    for bit, name in ((ISA_V4, "x86-64-v4"), (ISA_V3, "x86-64-v3"), (ISA_V2, "x86-64-v2")):
        if level & bit:
            out.append(name)
    return tuple(out)


def x86_64_platform(cpu: CpuInfo) -> Tuple[str, bool]:
    """(``$PLATFORM``, HWCAP_X86_AVX512_1 set) as ``init_cpu_features`` computes them on x86_64.

    Only Intel CPUs get ``haswell``/``xeon_phi``; everything else keeps the kernel's AT_PLATFORM
    (``x86_64``).
    """
    avx512_1 = False
    platform: Optional[str] = None
    if cpu.vendor == "GenuineIntel":
        if cpu.has("avx512cd"):
            if cpu.has("avx512er"):
                if cpu.has("avx512pf"):
                    platform = "xeon_phi"
            elif cpu.has("avx512bw", "avx512dq", "avx512vl"):
                avx512_1 = True
        if platform is None and cpu.has("avx2", "fma", "bmi1", "bmi2", "abm", "movbe", "popcnt"):
            platform = "haswell"
    return (platform or "x86_64"), avx512_1


# -- POWER and Z: the kernel's names for the CPU -------------------------------------------------------------

#: The hwcap names (AT_HWCAP, AT_HWCAP2) a POWER CPU of each ISA level has that ld.so looks at: HWCAP_IMPORTANT
#: (altivec, dfp: POWER6 and later) and what _dl_hwcaps_subdirs_active tests (the kernel's COMMON_USER2_POWER9
#: and _POWER10 in arch/powerpc/kernel/cpu_specs_book3s_64.h; POWER11 has POWER10's).
_POWER_NAMES = {8: ("altivec", "dfp"), 9: ("altivec", "dfp", "arch_3_00", "ieee128"),
                10: ("altivec", "dfp", "arch_3_00", "ieee128", "arch_3_1", "mma")}
_POWER_MODEL = re.compile(r"\s*power(\d+)", re.I)


def _power_model(cpu: str) -> Tuple[Optional[str], Tuple[str, ...]]:
    """(AT_PLATFORM, hwcap names) of /proc/cpuinfo's ``cpu`` line on POWER ("POWER9 (architected), altivec
    supported"): the kernel's cpu_spec platform is "power" and the model's number ("POWER8E" and "POWER8NVL"
    are "power8")."""
    m = _POWER_MODEL.match(cpu)
    if m is None or len(m.group(1)) > 3:
        return None, ()
    n = int(m.group(1))
    return f"power{n}", _POWER_NAMES[min(max(n, 8), 10)] if n >= 6 else ()


#: The kernel's AT_PLATFORM by machine type (setup_elf_platform, arch/s390/kernel/processor.c; unknown: "z10").
_S390_MACHINES = {"2817": "z196", "2818": "z196", "2827": "zEC12", "2828": "zEC12", "2964": "z13", "2965": "z13",
                  "3906": "z14", "3907": "z14", "8561": "z15", "8562": "z15", "3931": "z16", "3932": "z16",
                  "9175": "z17", "9176": "z17"}
_S390_MACHINE = re.compile(r"machine\s*[=:]\s*([0-9A-Fa-f]{4})\b")
#: The facilities (STFLE bits) S390_IS_ARCH15 asks for: z17 (sysdeps/s390/cpu-features.h, glibc 2.42)
_ARCH15_FACILITIES = ("84", "198", "199", "201")
#: AArch64's HWCAP_ATOMICS (bit 8): ld.so prints AT_HWCAP there as a hexadecimal number
_AARCH64_HWCAP_NAMES = ((8, "atomics"),)


def _auxv_names(words: List[str], arch: str, first: bool) -> List[str]:
    """The hwcap names of an ``AT_HWCAP`` (``first``) or ``AT_HWCAP2`` value as ``LD_SHOW_AUXV`` prints it:
    names where ``_dl_procinfo`` knows them, else a hexadecimal number, of which only AArch64's ATOMICS bit
    (in AT_HWCAP) is read."""
    if len(words) == 1 and arch == "aarch64":
        if not first:
            return []
        try:
            value = int(words[0], 16)
        except ValueError:
            return words
        return [name for bit, name in _AARCH64_HWCAP_NAMES if value >> bit & 1]
    return words


def ppc64le_hwcaps_subdirs(cpu: CpuInfo) -> Tuple[str, ...]:
    """The active glibc-hwcaps subdirectories, best first (sysdeps/powerpc/powerpc64/le/dl-hwcaps-subdirs.c:
    POWER9 needs ARCH_3_00 and IEEE128, POWER10 also ARCH_3_1 and MMA)."""
    if not cpu.has("arch_3_00", "ieee128"):
        return ()
    return ("power10", "power9") if cpu.has("arch_3_1", "mma") else ("power9",)


#: (subdirectory, the hwcap names it needs, the first glibc that has it), in the order
#: _dl_hwcaps_subdirs_active tests them (sysdeps/s390/s390-64/dl-hwcaps-subdirs.c); z17 asks the facilities.
_S390_LEVELS = (("z13", ("vx",), (2, 33)), ("z14", ("vxd", "vxe", "gs"), (2, 33)), ("z15", ("vxe2", "vxp"), (2, 33)),
                ("z16", ("vxp2",), (2, 36)), ("z17", tuple(f"stfle{n}" for n in _ARCH15_FACILITIES), (2, 42)))


def s390x_hwcaps_subdirs(cpu: CpuInfo, glibc: Tuple[int, int]) -> Tuple[str, ...]:
    """The active glibc-hwcaps subdirectories of release ``glibc``, best first: each level needs the ones
    before it."""
    out: List[str] = []
    for name, needs, since in _S390_LEVELS:
        if glibc < since or not cpu.has(*needs):
            break
        out.insert(0, name)
    return tuple(out)


def legacy_subdirs(names: List[str]) -> Tuple[str, ...]:
    """The power-set subdirectories of ``_dl_important_hwcaps`` (glibc <= 2.36), most specific first.

    ``names`` are, in order: the hwcap strings by bit number, then the platform, then ``tls`` (the last
    one is the outermost directory). The empty subdirectory (the directory itself) is not included.
    """
    cnt = len(names)
    out: List[str] = []
    for mask in range((1 << cnt) - 1, 0, -1):
        out.append("/".join(names[i] for i in range(cnt - 1, -1, -1) if mask & (1 << i)))
    return tuple(out)
