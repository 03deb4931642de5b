"""The target profile read from files, checked against what ld.so itself reports (``--list-diagnostics``,
``--help``: run here only as a test oracle; soswap never runs it), and the DST and root-path rules."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict

import pytest

from loader.helpers import PROFILE
from soswap.errors import UsageError
from soswap.loader import Profile
from soswap.loader.cpu import (
    CpuInfo,
    isa_level,
    legacy_subdirs,
    ppc64le_hwcaps_subdirs,
    s390x_hwcaps_subdirs,
    x86_64_hwcaps_subdirs,
    x86_64_platform,
)
from soswap.loader.dst import has_dst, is_dst, is_trusted_path, substitute
from soswap.loader.rootfs import RootFS


def _diagnostics(tunables: str = "") -> Dict[str, str]:
    env = {"GLIBC_TUNABLES": tunables} if tunables else {}
    r = subprocess.run([PROFILE.interpreter, "--list-diagnostics"], capture_output=True, text=True, timeout=60,
                       env=env)
    if r.returncode != 0:
        pytest.skip("ld.so --list-diagnostics is not available")
    out = {}
    for line in r.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value.strip('"')
    return out


def test_profile_matches_ld_so_diagnostics() -> None:
    d = _diagnostics()
    assert "{}.{}".format(*PROFILE.glibc_version) == d["version.version"]
    dirs = [v for k, v in sorted(d.items()) if k.startswith("path.system_dirs[")]
    assert list(PROFILE.system_dirs) == dirs
    assert PROFILE.platform == d["dl_platform"]
    assert PROFILE.isa_level == int(d["x86.cpu_features.isa_1"], 16)
    subdirs = d["dl_hwcaps_subdirs"].split(":")
    active = int(d["dl_hwcaps_subdirs_active"], 16)
    # bit 0 is the first name (dl-usage.c print_hwcaps_subdirectories shifts the mask right name by name); the
    # active ones are the last names (_dl_hwcaps_subdirs_build_bitmask): 0x6 of v4:v3:v2 is v3 and v2
    want = tuple(s for n, s in enumerate(subdirs) if active & (1 << n))
    assert PROFILE.hwcaps_subdirs == want
    assert PROFILE.legacy_hwcap == int(d["dl_hwcap"], 16) & int(d["dl_hwcap_important"], 16)


@pytest.mark.parametrize("tunables", ["glibc.cpu.hwcaps=-AVX2", "glibc.cpu.hwcaps=-SSE4_2,-AVX512F",
                                      "glibc.malloc.check=0:glibc.cpu.hwcaps=-BMI2,-LZCNT:x=y",
                                      "glibc.cpu.hwcaps=-BMI1",
                                      "glibc.cpu.hwcaps=-FMA:glibc.cpu.hwcaps=-MOVBE", "glibc.cpu.hwcaps=AVX2,-NOPE",
                                      "glibc.cpu.hwcaps=-CMOV", "glibc.cpu.hwcaps=-OSXSAVE",
                                      "glibc.cpu.hwcaps=-XSAVE", "glibc.cpu.hwcaps=-XSAVE,-XSAVEC"])
def test_glibc_tunables_turn_cpu_features_off_as_ld_so_does(tunables: str) -> None:
    """``GLIBC_TUNABLES=glibc.cpu.hwcaps=-NAME`` turns features off before ld.so computes the glibc-hwcaps
    subdirectories and the platform, not the ISA level (the last item counts; unknown names and enabling are
    ignored; without OSXSAVE, or XSAVE and XSAVEC, the AVX family goes too). soswap ignored the variable: a
    program loaded its x86-64-v3 copy of a library in soswap's view and the plain one in fact."""
    from soswap.loader import Environment, Loader

    if PROFILE.abi.name != "x86_64":
        pytest.skip("x86-64 CPU features")
    d = _diagnostics(tunables)
    profile = Loader(PROFILE, Environment.from_environ({"GLIBC_TUNABLES": tunables})).profile
    subdirs = d["dl_hwcaps_subdirs"].split(":")
    active = int(d["dl_hwcaps_subdirs_active"], 16)
    assert profile.hwcaps_subdirs == tuple(s for n, s in enumerate(subdirs) if active & (1 << n))
    assert profile.isa_level == int(d["x86.cpu_features.isa_1"], 16)
    assert profile.platform == d["dl_platform"]
    assert profile.legacy_hwcap == int(d["dl_hwcap"], 16) & int(d["dl_hwcap_important"], 16)


def test_profile_matches_ld_so_help() -> None:
    r = subprocess.run([PROFILE.interpreter, "--help"], capture_output=True, text=True, timeout=60)
    text = r.stdout
    listed = [ln.split()[0] for ln in text.splitlines() if "(system search path)" in ln]
    assert [d.rstrip("/") + "/" for d in listed] == list(PROFILE.system_dirs)
    hwcaps, _, legacy_text = text.partition("Legacy HWCAP")
    assert tuple(re.findall(r"^  (\S+) \(supported, searched\)$", hwcaps, re.M)) == PROFILE.hwcaps_subdirs
    legacy = re.findall(r"^  (\S+) \((?:AT_PLATFORM; )?supported, searched\)$", legacy_text, re.M)
    if PROFILE.glibc_version <= (2, 36):
        # ld.so lists the names; the power set of them (tls outermost, platform, then hwcap bits) is searched
        assert set(legacy) == {p for s in PROFILE.legacy_subdirs for p in s.split("/")}


def test_lib_token_value() -> None:
    r = subprocess.run([PROFILE.interpreter, "--list-diagnostics"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    # $LIB is the first system directory without its slashes on Debian (lib/x86_64-linux-gnu)
    assert PROFILE.lib == PROFILE.system_dirs[0].strip("/")


CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
flags\t\t: {flags}
"""
BASE = "fpu cx8 cmov mmx fxsr sse sse2"
V2 = BASE + " cx16 lahf_lm popcnt pni ssse3 sse4_1 sse4_2"
V3 = V2 + " avx avx2 f16c fma abm movbe bmi1 bmi2"
V4 = V3 + " avx512f avx512bw avx512cd avx512dq avx512vl"


@pytest.mark.parametrize("vendor, flags, levels, platform", [
    ("GenuineIntel", BASE, (), "x86_64"),
    ("GenuineIntel", V2, ("x86-64-v2",), "x86_64"),
    ("GenuineIntel", V3, ("x86-64-v3", "x86-64-v2"), "haswell"),
    ("GenuineIntel", V4, ("x86-64-v4", "x86-64-v3", "x86-64-v2"), "haswell"),
    ("AuthenticAMD", V4, ("x86-64-v4", "x86-64-v3", "x86-64-v2"), "x86_64"),
    ("GenuineIntel", V3 + " avx512cd avx512er avx512pf", ("x86-64-v3", "x86-64-v2"), "xeon_phi"),
])
def test_cpu_rules(vendor: str, flags: str, levels: tuple, platform: str) -> None:
    cpu = CpuInfo.parse(CPUINFO.format(vendor=vendor, flags=flags))
    assert x86_64_hwcaps_subdirs(isa_level(cpu)) == levels
    assert x86_64_platform(cpu)[0] == platform
    p = Profile.detect(cpuinfo=CPUINFO.format(vendor=vendor, flags=flags))
    assert p.hwcaps_subdirs == levels and p.platform == platform


def test_v3_needs_bmi_from_glibc_237() -> None:
    cpu = CpuInfo.parse(CPUINFO.format(vendor="GenuineIntel", flags=V3.replace(" bmi1 bmi2", "")))
    assert isa_level(cpu, (2, 36)) & 4
    assert not isa_level(cpu, (2, 37)) & 4


# /proc/cpuinfo as POWER kernels write it (the "cpu" line is the cpu_spec's name), and what the kernel's
# AT_PLATFORM and AT_HWCAP2 are for it
@pytest.mark.parametrize("cpu, platform, levels", [
    ("POWER8E (raw), altivec supported", "power8", ()),
    ("POWER8NVL (raw), altivec supported", "power8", ()),
    ("POWER9 (architected), altivec supported", "power9", ("power9",)),
    ("POWER10 (raw), altivec supported", "power10", ("power10", "power9")),
    ("Power11 (architected), altivec supported", "power11", ("power10", "power9")),
])
def test_power_cpuinfo(cpu: str, platform: str, levels: tuple) -> None:
    info = CpuInfo.parse(f"processor\t: 0\ncpu\t\t: {cpu}\nclock\t\t: 2750.000000MHz\n", "ppc64le")
    assert info.platform == platform and info.has("altivec", "dfp")
    assert ppc64le_hwcaps_subdirs(info) == levels
    p = Profile.detect("/", abi="ppc64le", cpuinfo=f"cpu\t\t: {cpu}\n")
    assert p.platform == platform and p.legacy_hwcap == 1 << 28 | 1 << 10  # PPC_FEATURE_HAS_ALTIVEC, _HAS_DFP
    # _dl_string_platform: power8 is bit 32 + 13; glibc knows no power11 (entries with a platform are skipped)
    bits = {"power8": 1 << 45, "power9": 1 << 46, "power10": 1 << 47}
    if platform != "power10" or p.glibc_version >= (2, 32):  # power10 came in 2.32
        assert p.legacy_platform_bit == bits.get(platform, 0)
    assert CpuInfo.from_facts(info.facts()) == info


_Z = ("vendor_id       : IBM/S390\n# processors    : 4\nfeatures\t: {features}\n"
      "facilities      : 0 1 2 3 4 6 7 8 9 10 12 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 30 31 32 33 34 35 "
      "36 37 38 40 41 42 43 44 45 47 48 49 50 51 52 53 54 57 58 59 60 61 64 69 71 73 74 75 76 77 78 80 81 82 "
      "{extra}129 130 131 133 134 135 138 139 146 147 148 150 151 152 155 156 168\n"
      "processor 0: version = 00,  identification = 2F8F28,  machine = {machine}\n")
_Z13 = "esan3 zarch stfle msa ldisp eimm dfp edat etf3eh highgprs te vx sie"
_Z14 = _Z13.replace(" vx ", " vx vxd vxe gs ")
_Z15 = _Z14.replace(" gs ", " gs vxe2 vxp sort dflt ")
_Z16 = _Z15.replace(" dflt ", " dflt vxp2 nnpa ")


@pytest.mark.parametrize("features, machine, extra, glibc, platform, levels", [
    (_Z13, "2964", "", (2, 36), "z13", ("z13",)),
    (_Z14, "3906", "", (2, 36), "z14", ("z14", "z13")),
    (_Z15, "8561", "", (2, 36), "z15", ("z15", "z14", "z13")),
    (_Z16, "3931", "", (2, 35), "z16", ("z15", "z14", "z13")),  # z16 came in 2.36
    (_Z16, "3931", "", (2, 36), "z16", ("z16", "z15", "z14", "z13")),
    (_Z16, "9175", "84 198 199 201 ", (2, 41), "z17", ("z16", "z15", "z14", "z13")),
    (_Z16, "9175", "84 198 199 201 ", (2, 42), "z17", ("z17", "z16", "z15", "z14", "z13")),  # the facilities
    (_Z16, "9175", "84 198 201 ", (2, 42), "z17", ("z16", "z15", "z14", "z13")),
    (_Z13.replace(" vx", ""), "2827", "", (2, 36), "zEC12", ()),
    (_Z15.replace(" vxd", ""), "8561", "", (2, 36), "z15", ("z13",)),  # each level needs the ones before it
    (_Z13, "1234", "", (2, 36), "z10", ("z13",)),  # an unknown machine type: setup_elf_platform's default
])
def test_z_cpuinfo(features: str, machine: str, extra: str, glibc: tuple, platform: str, levels: tuple) -> None:
    text = _Z.format(features=features, machine=machine, extra=extra)
    info = CpuInfo.parse(text, "s390x")
    assert info.platform == platform
    assert s390x_hwcaps_subdirs(info, glibc) == levels
    p = Profile.detect("/", abi="s390x", cpuinfo=text)
    # HWCAP_IMPORTANT: ZARCH LDISP EIMM DFP VX VXE VXRS_EXT2, by bit number
    important = [n for b, n in ((1, "zarch"), (4, "ldisp"), (5, "eimm"), (6, "dfp"), (11, "vx"), (13, "vxe"),
                                (15, "vxe2")) if info.has(n)]
    assert p.legacy_hwcap == sum(1 << b for b, n in ((1, "zarch"), (4, "ldisp"), (5, "eimm"), (6, "dfp"),
                                                     (11, "vx"), (13, "vxe"), (15, "vxe2")) if n in important)
    if p.glibc_version <= (2, 36):
        assert p.legacy_subdirs[0] == "/".join(["tls", platform, *reversed(important)])


def test_an_auxv_dump_is_what_ld_so_starts_from() -> None:
    # LD_SHOW_AUXV=1 on the target: names where _dl_procinfo knows them, a number on AArch64 (HWCAP_ATOMICS is
    # bit 8 of AT_HWCAP; AT_HWCAP2's bits are not hwcaps ld.so searches by); no AT_PLATFORM: none
    arm64 = CpuInfo.parse("AT_SYSINFO_EHDR:      0x7f0\nAT_HWCAP:             ecfffffb\nAT_HWCAP2:            0x100\n"
                          "AT_PAGESZ:            4096\n", "aarch64")
    assert arm64.flags == frozenset({"atomics"}) and arm64.platform == ""
    assert CpuInfo.parse("AT_HWCAP:             ecfffefb\nAT_HWCAP2:   0x100\n", "aarch64").flags == frozenset()
    power = CpuInfo.parse("AT_HWCAP:  vsx arch_2_06 dfp fpu altivec ppc64\nAT_HWCAP2:  darn ieee128 arch_3_00 "
                          "vcrypto tar isel arch_2_07\nAT_PLATFORM:   power9\n", "ppc64le")
    assert power.platform == "power9" and ppc64le_hwcaps_subdirs(power) == ("power9",)
    p = Profile.detect("/", abi="ppc64le", cpuinfo="AT_HWCAP:   vsx dfp altivec\nAT_HWCAP2:   ieee128 arch_3_00\n")
    assert p.platform is None and "power8" not in "".join(p.legacy_subdirs)
    if p.glibc_version <= (2, 36):
        assert p.legacy_subdirs == ("tls/altivec/dfp", "tls/altivec", "tls/dfp", "tls", "altivec/dfp", "altivec",
                                    "dfp")
    # x86's ld.so asks the CPU (cpuid): a dump of its auxiliary vector is refused, not read as a bare CPU
    for abi in ("x86_64", "i386"):
        with pytest.raises(UsageError, match="LD_SHOW_AUXV dump"):
            Profile.detect("/", abi=abi, cpuinfo="AT_HWCAP:        178bfbff\nAT_PLATFORM:      x86_64\n")


def test_legacy_power_set_order() -> None:
    assert legacy_subdirs(["x86_64", "haswell", "tls"]) == (
        "tls/haswell/x86_64", "tls/haswell", "tls/x86_64", "tls", "haswell/x86_64", "haswell", "x86_64")


@pytest.mark.parametrize("text, pos, ref, length", [
    ("$ORIGIN", 1, "ORIGIN", 6), ("${ORIGIN}/x", 1, "ORIGIN", 8), ("$ORIGINX", 1, "ORIGIN", 0),
    ("${ORIGIN", 1, "ORIGIN", 0), ("$ORIGIN_", 1, "ORIGIN", 0), ("$LIB/x", 1, "LIB", 3),
])
def test_is_dst(text: str, pos: int, ref: str, length: int) -> None:
    assert is_dst(text, pos, ref) == length


def test_substitution_rules() -> None:
    kw = dict(platform="haswell", lib="lib/x86_64-linux-gnu", trusted_dirs=("/lib/", "/usr/lib/"))
    assert substitute("$ORIGIN/../lib", origin="/opt/a/bin", secure=False, is_executable=True, **kw) \
        == "/opt/a/bin/../lib"
    assert substitute("$ORIGIN$ORIGIN", origin="/o", secure=False, is_executable=False, **kw) == "/o/o"
    assert substitute("/x/$LIB/${PLATFORM}", origin=None, secure=False, is_executable=False, **kw) \
        == "/x/lib/x86_64-linux-gnu/haswell"
    assert substitute("$FOO/$ORIGINX", origin="/o", secure=False, is_executable=False, **kw) == "$FOO/$ORIGINX"
    assert substitute("$ORIGIN/x", origin=None, secure=False, is_executable=False, **kw) == ""
    assert substitute("/a/$PLATFORM", origin=None, secure=False, is_executable=False,
                      **{**kw, "platform": None}) == ""
    # secure mode: $ORIGIN only as the whole first component, and then only under a trusted directory
    assert substitute("/x/$ORIGIN", origin="/usr/lib/a", secure=True, is_executable=True, **kw) == ""
    assert substitute("$ORIGIN/../lib", origin="/usr/lib/a/bin", secure=True, is_executable=True, **kw) \
        == "/usr/lib/a/bin/../lib"
    assert substitute("$ORIGIN/../lib", origin="/opt/a/bin", secure=True, is_executable=True, **kw) == ""
    assert has_dst("x/${LIB}") and not has_dst("x/$LIBX") and not has_dst("plain")


@pytest.mark.parametrize("path, trusted", [
    ("/usr/lib/x/../y", True), ("/usr/lib/../../etc", False), ("/usr//lib/a", True), ("/usr/lib", True),
    ("/opt/lib", False), ("/lib/./x", True), ("", False),
])
def test_trusted_path(path: str, trusted: bool) -> None:
    assert is_trusted_path(path, ("/lib/", "/usr/lib/")) is trusted


def test_rootfs_resolves_symlinks_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "usr" / "lib").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "libx.so.1").write_text("x")
    os.symlink("usr/lib", tmp_path / "lib")  # relative
    os.symlink("/usr/lib/libx.so.1", tmp_path / "usr" / "lib" / "libx.so")  # absolute: inside the root
    os.symlink("../../../../../../etc/passwd", tmp_path / "escape")
    fs = RootFS(str(tmp_path))
    assert fs.host("/lib/libx.so") == f"{tmp_path}/usr/lib/libx.so.1"
    assert fs.host("/escape") == f"{tmp_path}/etc/passwd"  # never above the root
    assert RootFS("/").host("/lib/x") == "/lib/x"


def test_glibc_tunables_choose_the_library_ldd_loads(tmp_path: Path) -> None:
    """A library with a copy in ``glibc-hwcaps/x86-64-v3``: with AVX2 turned off by ``GLIBC_TUNABLES`` the
    program loads the plain one, in ldd and in soswap's model (the QA reproducer: check called a process that
    maps TARGET "unaffected")."""
    from loader.helpers import assert_ldd_parity, by_name, env_with, predict
    from support.build import executable, shared_lib

    if "x86-64-v3" not in PROFILE.hwcaps_subdirs:
        pytest.skip("the CPU does not run x86-64-v3")
    lib = tmp_path / "lib"
    plain = shared_lib(lib / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    (lib / "glibc-hwcaps" / "x86-64-v3").mkdir(parents=True)
    shutil.copy(plain, lib / "glibc-hwcaps" / "x86-64-v3" / "libfoo.so.1")
    app = executable(tmp_path / "app", "int foo(void);\nint main(void) { return foo() - 1; }\n",
                     libs=[f"-L{lib}", "-l:libfoo.so.1", f"-Wl,-rpath,{lib}"])
    env = env_with(GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX2")
    assert f"libfoo.so.1 => {plain}" in assert_ldd_parity(app, env=env).stdout
    res, _ = predict(app, env=env)
    assert by_name(res, "libfoo.so.1").path == str(plain)
    res, _ = predict(app)
    assert by_name(res, "libfoo.so.1").path == str(lib / "glibc-hwcaps" / "x86-64-v3" / "libfoo.so.1")
