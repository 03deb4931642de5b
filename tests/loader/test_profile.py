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
from soswap.loader import Profile
from soswap.loader.cpu import CpuInfo, isa_level, legacy_subdirs, x86_64_hwcaps_subdirs, x86_64_platform
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
