"""What changes between glibc releases, each rule tested here with programs built by gcc under a profile of
that release (``Profile.replace(glibc_version=...)``); the host's own release (Debian 12, 2.36) is checked
against the real ldd too. The rules were found by comparing `soswap tree --root R --ldd [-r]` with
`chroot R ldd [-r]` on Debian 11, 13 and sid and Ubuntu 22.04 and 24.04 roots (docs/tree.md, "parity"):
that sweep needs debootstrap and the network, so it is a script (bench/parity_roots.py), not a test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loader.helpers import PROFILE, assert_ldd_parity, env_with, model_ldd, predict, run_program
from loader.test_binding_api import _env, _protected_case, versioned_then_unversioned
from soswap.loader import Profile
from soswap.loader.assertions import check_match_assertion, verneed_assertion
from soswap.loader.ldd import RELOCS_FUNCTION
from support.build import executable, shared_lib

pytestmark = pytest.mark.skipif(PROFILE.abi.name != "x86_64", reason="x86_64 rules")
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _at(version):  # type: ignore[no-untyped-def]
    return PROFILE.replace(glibc_version=version)


# -- which release a root runs ---------------------------------------------------------------------------


def _fake_root(tmp: Path, ldso: bytes, ld_name: str, libc: bytes = b"") -> Path:
    root = tmp / "root"
    lib = root / "lib" / "x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "etc").mkdir()
    (lib / ld_name).write_bytes(ldso)
    if ld_name != "ld-linux-x86-64.so.2":
        os.symlink(f"/lib/x86_64-linux-gnu/{ld_name}", lib / "ld-linux-x86-64.so.2")
    os.symlink("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", root / "lib64" / "ld-linux-x86-64.so.2")
    if libc:
        (lib / "libc.so.6").write_bytes(libc)
    return root


_DIRS = b"\0/lib/x86_64-linux-gnu/\0/usr/lib/x86_64-linux-gnu/\0/lib/\0/usr/lib/\0"


def test_the_release_comes_from_ld_so_libc_or_the_file_name(tmp_path: Path) -> None:
    # 2.33 and later: ld.so's banner
    root = _fake_root(tmp_path / "a", b"\x7fELF" + _DIRS + b"ld.so (GNU libc) stable release version 2.41.\n",
                      "ld-linux-x86-64.so.2")
    assert Profile.detect(str(root)).glibc_version == (2, 41)
    # before: libc.so.6's banner (ld.so has none), else the name of ld.so's file
    root = _fake_root(tmp_path / "b", b"\x7fELF" + _DIRS, "ld-2.31.so",
                      b"GNU C Library (Debian GLIBC 2.31-13) stable release version 2.31.\n")
    p = Profile.detect(str(root))
    assert p.glibc_version == (2, 31)
    assert p.hwcaps_subdirs == () and p.isa_level is None  # glibc-hwcaps and the ISA level came in 2.33
    assert len(p.legacy_subdirs) == len(PROFILE.legacy_subdirs)
    root = _fake_root(tmp_path / "c", b"\x7fELF" + _DIRS, "ld-2.30.so")
    assert Profile.detect(str(root)).glibc_version == (2, 30)


# -- ldd -r: GLOB_DAT's own relocation class before 2.36 ------------------------------------------------------


def test_glob_dat_and_an_absolute_relocation_are_two_lookups_before_2_36(tmp_path: Path) -> None:
    src = "extern int gone;\nint *p = &gone;\nint get(void) { return gone; }\n"
    shared_lib(tmp_path / "v1" / "libdef.so", "int gone = 1;\n", soname="libdef.so")
    shared_lib(tmp_path / "v2" / "libdef.so", "int other = 1;\n", soname="libdef.so")
    use = shared_lib(tmp_path / "libuse.so", src, soname="libuse.so", libs=[f"-L{tmp_path / 'v1'}", "-ldef"])
    relocs = subprocess.run(["readelf", "-rW", str(use)], capture_output=True, text=True).stdout
    assert "R_X86_64_GLOB_DAT" in relocs and "R_X86_64_64" in relocs  # both kinds against `gone`
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "v2"))
    assert_ldd_parity(use, env=env, flag="-r")  # 2.36 (this system): one line
    line = f"undefined symbol: gone\t({use})"
    assert model_ldd(use, env=env, relocs=RELOCS_FUNCTION).stdout.count(line) == 1
    assert model_ldd(use, env=env, relocs=RELOCS_FUNCTION, profile=_at((2, 35))).stdout.count(line) == 2


# -- ld.so in the link-map chain from 2.41 ---------------------------------------------------------------------


def test_ld_so_is_listed_last_from_2_41_when_nothing_needs_it(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "liba.so", "int fa(void) { return 1; }\n", soname="liba.so", flags=["-nostdlib"])
    prog = executable(tmp_path / "prog", "int fa(void);\nvoid _start(void) { fa(); for (;;); }\n",
                      libs=[str(lib)], flags=["-nostdlib", f"-Wl,-rpath,{tmp_path}"])
    assert_ldd_parity(prog)  # 2.36: not listed
    now = model_ldd(prog).stdout
    later = model_ldd(prog, profile=_at((2, 41))).stdout
    assert later == now + f"\t{PROFILE.interpreter}\n"
    assert PROFILE.interpreter not in now
    # right after the last object of the search list: before the libraries not found, and before the vDSO
    # when nothing else is found (as 2.41's ldd prints it)
    shared_lib(tmp_path / "gone" / "libgone.so", "int fg(void) { return 1; }\n", soname="libgone.so",
               flags=["-nostdlib"])
    both = executable(tmp_path / "both", "int fa(void);\nint fg(void);\nvoid _start(void) { fa(); fg(); for (;;); }\n",
                      libs=[str(lib), f"-L{tmp_path / 'gone'}", "-lgone"],
                      flags=["-nostdlib", f"-Wl,-rpath,{tmp_path}"])
    lines = model_ldd(both, profile=_at((2, 41))).stdout.splitlines()
    assert lines == ["\tlinux-vdso.so.1", f"\tliba.so => {lib}", f"\t{PROFILE.interpreter}",
                     "\tlibgone.so => not found"]
    alone = executable(tmp_path / "alone", "int fg(void);\nvoid _start(void) { fg(); for (;;); }\n",
                       libs=[f"-L{tmp_path / 'gone'}", "-lgone"], flags=["-nostdlib"])
    lines = model_ldd(alone, profile=_at((2, 41))).stdout.splitlines()
    assert lines == [f"\t{PROFILE.interpreter}", "\tlinux-vdso.so.1", "\tlibgone.so => not found"]
    # a program that links libc lists it where libc's DT_NEEDED puts it, in every release
    assert model_ldd("/bin/true", profile=_at((2, 41))).stdout == model_ldd("/bin/true").stdout


# -- the rules that came in 2.36 and 2.33 ----------------------------------------------------------------------


def test_protected_symbol_warnings_from_2_36(tmp_path: Path) -> None:
    case = _protected_case(tmp_path)
    env = _env(tmp_path, "v2")
    kinds = [f.kind for f in predict(case["nopie"], env=env)[1].failures]
    assert "protected-copy" in kinds
    loader_35 = predict(case["nopie"], env=env, profile=_at((2, 35)))[1]
    assert not [f for f in loader_35.failures if f.kind.startswith("protected")]


# -- the assertions' texts and what they do to the exit status ------------------------------------------------


def test_assertion_lines_by_release() -> None:
    assert "dl-lookup.c: 111:" in check_match_assertion((2, 31))
    assert "dl-lookup.c: 106:" in check_match_assertion((2, 35))
    assert "dl-lookup.c: 107:" in check_match_assertion((2, 36))
    assert "dl-lookup.c: 106:" in check_match_assertion((2, 39))
    assert "dl-version.c: 205:" in verneed_assertion((2, 31))
    assert "dl-version.c: 204:" in verneed_assertion((2, 36))
    assert "dl-version.c: 204:" in verneed_assertion((2, 43))


def test_tree_exits_1_for_an_abort_at_a_first_call(tmp_path: Path) -> None:
    """check_match's assertion met by a lazy PLT slot: the program starts and dies at the first call."""
    e, env = versioned_then_unversioned(
        tmp_path, "int foo(void) { return 0; }\n",
        "#include <unistd.h>\nint foo(void);\n"
        "int main(int c, char **v) { (void)v; write(1, \"start\\n\", 6); return c > 1 ? foo() : 0; }\n")
    assert run_program(e, env=env).status == 0
    real = run_program(e, "x", env=env)
    assert real.status == 127 and check_match_assertion((2, 36)) in real.stderr
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "-r", "--no-cache", str(e)], capture_output=True,
                       text=True, env={**env, "PYTHONPATH": SRC, "SOSWAP_CACHE_DIR": str(tmp_path / "c")},
                       timeout=60)
    assert "fails at first call: " + check_match_assertion((2, 36)) in r.stdout
    assert r.returncode == 1, r.stdout + r.stderr


def test_root_paths_are_inside_the_root(tmp_path: Path) -> None:
    """With --root, FILE and --cwd name the root's paths and the program starts in the root's / (chroot)."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/true", root / "bin" / "true")
    env = {**os.environ, "PYTHONPATH": SRC, "SOSWAP_CACHE_DIR": str(tmp_path / "c")}

    def tree(*args: str, cwd: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "soswap", "tree", "--root", str(root), "--ldd", *args],
                              capture_output=True, text=True, env=env, cwd=cwd, timeout=60)

    missing = tree("./true", cwd=str(root / "bin"))  # the root's /true: none
    assert missing.stdout == "ldd: ./true: No such file or directory\n" or "No such file" in missing.stderr
    found = tree("--cwd", "/bin", "./true", cwd="/")  # the root's /bin/true: no ld.so in this root
    assert found.stderr == "\tnot a dynamic executable\n"
    bad = tree("--cwd", "/nowhere", "./true", cwd="/")
    assert bad.returncode == 2 and "not a directory under" in bad.stderr
