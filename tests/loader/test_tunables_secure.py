"""``GLIBC_TUNABLES=glibc.cpu.hwcaps=-X`` and secure mode: an AT_SECURE program (set-user-ID run by another
user) never reads ``glibc.cpu.hwcaps``, so it keeps the glibc-hwcaps level and ``$PLATFORM`` of the CPU while the
same program run without privileges loses them (``cpu.tunables_effect``: SXID_ERASE up to glibc 2.38, no
GLIBC_TUNABLES at all for AT_SECURE since 2.39). Checked against the set-user-ID program run as nobody, with this
system's ld.so and, where /srv/qa-roots holds them, the ld.so of other releases (2.39 refuses a malformed string,
2.40 knows ``glibc.rtld.enable_secure``)."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional

import pytest

from loader.helpers import BASE_ENV, PROFILE, assert_ldd_parity, by_name
from soswap.elf import ElfCache
from soswap.loader import Environment, Loader, Profile
from soswap.loader.cpu import _dl_strtoul, tunables_effect
from support.build import executable, requires_cc, requires_root, rpath_flags, run_cc, shared_lib, write

SRC = str(Path(__file__).resolve().parents[2] / "src")
MASK = "glibc.cpu.hwcaps=-AVX2"
HW = "const char *which(void) {{ return \"{}\"; }}\n"
MAIN = ('#include <stdio.h>\nconst char *which(void);\n'
        'int main(void) { printf("%s\\n", which()); return 0; }\n')
#: a program that needs nothing of libc newer than 2.16 (the roots' ld.so and libc run it)
START = """#include <string.h>
#include <unistd.h>
const char *which(void);
__attribute__((force_align_arg_pointer, noreturn)) void _start(void) {
  const char *s = which();
  write(1, s, strlen(s));
  write(1, "\\n", 1);
  _exit(0);
}
"""

_ADDR = re.compile(r" \(0x[0-9a-f]+\)")
needs_v3 = pytest.mark.skipif(PROFILE.abi.name != "x86_64" or "x86-64-v3" not in PROFILE.hwcaps_subdirs,
                              reason="the CPU does not run x86-64-v3")


# -- the rules of each release (from glibc's source; most rows also run with the real ld.so of 2.35, 2.36, 2.39,
# -- 2.41 and 2.43: test_other_releases) -------------------------------------------------------------------------

# (GLIBC_TUNABLES, applied by 2.31-2.38, by 2.39, by 2.40+, secure mode from 2.40)
_RULES = [
    (MASK, True, True, True, False),
    ("glibc.malloc.check=1:" + MASK, True, True, True, False),
    ("junk:" + MASK, True, True, True, False),
    (":" + MASK, True, True, True, False),
    (MASK + ":", True, False, False, False),  # a trailing ':' leaves an item without '=': 2.39 refuses it all
    (MASK + ":junk", True, False, False, False),
    # a '=' in a value (2.34-2.38 before the CVE-2023-4911 fix, as jammy's 2.35, parsed it again: AVX2 off)
    ("glibc.malloc.check=" + MASK, True, False, False, False),
    (MASK + ":glibc.rtld.enable_secure=1", True, True, False, True),
    ("glibc.rtld.enable_secure=0x1:" + MASK, True, True, False, True),
    ("glibc.rtld.enable_secure=0:" + MASK, True, True, True, False),
    ("glibc.rtld.enable_secure=2:" + MASK, True, True, True, False),
    ("glibc.rtld.enable_secure=1:glibc.rtld.enable_secure=0:" + MASK, True, True, True, False),  # the last counts
    ("glibc.rtld.enable_secure=1 :" + MASK, True, True, True, False),  # not a number to its end
]


@pytest.mark.parametrize("text,old,v239,v240,secure", _RULES)
def test_what_each_release_makes_of_the_tunables(text: str, old: bool, v239: bool, v240: bool, secure: bool) -> None:
    for version in ((2, 31), (2, 36), (2, 38)):
        assert tunables_effect(text, version) == (old, False)
    assert tunables_effect(text, (2, 39)) == (v239, False)
    for version in ((2, 40), (2, 41), (2, 43)):
        assert tunables_effect(text, version) == (v240, secure)
    env = Environment.from_environ({"GLIBC_TUNABLES": text}, cwd="/")
    # what 2.31-2.38 turn off: the value of glibc.malloc.check holds the rest (2.36 keeps x86-64-v3 there)
    mask = set() if text.startswith("glibc.malloc.check=glibc") else {"avx2"}
    assert set(env.cpu_disabled) == mask
    assert env.cpu_disabled_for((2, 36)) == mask
    assert env.cpu_disabled_for((2, 41)) == (mask if v240 else set())
    assert env.tunables_secure((2, 41)) is secure and not env.tunables_secure((2, 39))


def test_an_environment_built_by_hand_keeps_its_cpu_features() -> None:
    env = Environment(cpu_disabled=("avx2",))  # no GLIBC_TUNABLES text: nothing to refuse
    assert env.cpu_disabled_for((2, 43)) == {"avx2"} and not env.tunables_secure((2, 43))
    assert Environment.from_environ({}, cwd="/").cpu_disabled_for((2, 43)) == frozenset()


@pytest.mark.parametrize("text,value", [("1", 1), ("01", 1), ("0x1", 1), ("+1", 1), (" \t1", 1), ("-1", -1),
                                        ("", 0), ("0x", 0), ("1 ", None), ("one", None), ("9", 9),
                                        ("08", None), (str(1 << 64), None), (str((1 << 64) - 1), -1)])
def test_numbers_as_dl_strtoul_reads_them(text: str, value: Optional[int]) -> None:
    assert _dl_strtoul(text) == value


def test_a_number_of_thousands_of_digits_overflows_instead_of_failing() -> None:
    """int() refuses more than 4,300 digits: a hostile GLIBC_TUNABLES made every command an internal error."""
    for digits in ("1" * 5000, "0x" + "f" * 5000, "0" + "7" * 5000):
        assert _dl_strtoul(digits) is None
    assert _dl_strtoul("0" * 5000 + "1") == 1  # leading zeros are no overflow
    text = "glibc.rtld.enable_secure=" + "1" * 5000 + ":" + MASK
    assert tunables_effect(text, (2, 40)) == (True, False)
    env = Environment.from_environ({"GLIBC_TUNABLES": text}, cwd="/")
    assert not env.tunables_secure((2, 43)) and env.cpu_disabled_for((2, 43))


# -- the real thing: a set-user-ID program run by nobody ---------------------------------------------------------


def _env(**extra: str) -> Dict[str, str]:
    """The test runner's environment without its own GLIBC_TUNABLES, with ``extra``."""
    env = {k: v for k, v in BASE_ENV.items() if k != "GLIBC_TUNABLES"}
    env.update(extra)
    return env


def _nobody_ids() -> Dict[str, int]:
    pw = pwd.getpwnam("nobody")
    return {"uid": pw.pw_uid, "euid": pw.pw_uid, "gid": pw.pw_gid, "egid": pw.pw_gid}


def _as_nobody(prog: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is missing")
    return subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(prog)],
                          env=dict(env), capture_output=True, text=True, timeout=60)


@contextlib.contextmanager
def _public_dir() -> Iterator[Path]:
    """A directory nobody can read (pytest's tmp_path is private to root), on a mount that honours set-ID bits."""
    d = Path(tempfile.mkdtemp(prefix="soswap-tunables-", dir="/tmp"))
    try:
        os.chmod(d, 0o755)
        if os.statvfs(d).f_flag & os.ST_NOSUID:
            pytest.skip("/tmp is mounted nosuid")
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _libraries(d: Path) -> None:
    """``D/libhw.so`` ("plain"), ``D/glibc-hwcaps/x86-64-v3/libhw.so`` ("v3") and ``L/libhw.so`` ("llp")."""
    shared_lib(d / "D" / "libhw.so", HW.format("plain"), soname="libhw.so")
    shared_lib(d / "D" / "glibc-hwcaps" / "x86-64-v3" / "libhw.so", HW.format("v3"), soname="libhw.so")
    shared_lib(d / "L" / "libhw.so", HW.format("llp"), soname="libhw.so")


def _set_uid(prog: Path, name: str) -> Path:
    out = prog.with_name(name)
    shutil.copy(prog, out)
    os.chown(out, 0, 0)
    os.chmod(out, 0o4755)  # after the chown, which clears it
    return out


def _open_up(d: Path) -> None:
    for dirpath, _dirs, files in os.walk(d):
        os.chmod(dirpath, 0o755)
        for f in files:
            p = os.path.join(dirpath, f)
            os.chmod(p, os.stat(p).st_mode | 0o444)


def _label(path: str, d: Path) -> str:
    if path.startswith(str(d / "D" / "glibc-hwcaps" / "x86-64-v3") + "/"):
        return "v3"
    return "llp" if path.startswith(str(d / "L") + "/") else "plain"


def _model(prog: Path, env: Mapping[str, str], d: Path, profile: Optional[Profile] = None,
           loader: Optional[Loader] = None):  # type: ignore[no-untyped-def]
    """soswap's view of nobody running ``prog``: (the copy of libhw.so, secure mode)."""
    if loader is None:
        environment = Environment.from_environ(dict(env), cwd="/").replace(**_nobody_ids())
        loader = Loader(profile or PROFILE, environment, cache=ElfCache())
    res = loader.load(str(prog))
    assert res.fatal is None, res.fatal
    return _label(by_name(res, "libhw.so").path, d), res.secure


@pytest.fixture(scope="module")
def host_fixture() -> Iterator[Path]:
    """The programs (RUNPATH and RPATH D, each also set-user-ID root) in a public directory."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if PROFILE.abi.name != "x86_64" or "x86-64-v3" not in PROFILE.hwcaps_subdirs:
        pytest.skip("the CPU does not run x86-64-v3")
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    with _public_dir() as d:
        _libraries(d)
        for name, old in (("runpath", False), ("rpath", True)):
            prog = executable(d / name, MAIN, flags=rpath_flags(str(d / "D"), old_dtags=old),
                              libs=[f"-L{d / 'D'}", "-lhw"])
            _set_uid(prog, name + "-suid")
            _set_uid(prog, name + "-suid2")
        _open_up(d)
        yield d


@requires_root
@needs_v3
@pytest.mark.parametrize("dtags", ["runpath", "rpath"])
@pytest.mark.parametrize("tunables", [None, MASK, "glibc.malloc.check=1:" + MASK, MASK + ":glibc.malloc.mxfast=0",
                                      "glibc.cpu.x86_shstk=off:" + MASK + ",-BMI2"])
def test_a_set_uid_program_keeps_the_hwcaps_level_the_tunables_take(host_fixture: Path, dtags: str,
                                                                    tunables: Optional[str]) -> None:
    """The QA question: soswap applied the mask to every program; ld.so of this system (2.36) ignores it in a
    set-user-ID program run by nobody (AT_SECURE) and applies it to the same program without the bit."""
    d = host_fixture
    env = _env(GLIBC_TUNABLES=tunables) if tunables is not None else _env()
    for name, want, secure in ((dtags, "v3" if tunables is None else "plain", False),
                               (dtags + "-suid", "v3", True)):
        real = _as_nobody(d / name, env)
        assert real.returncode == 0, real.stderr
        assert real.stdout.strip() == want, (name, tunables, real.stdout)
        assert _model(d / name, env, d) == (want, secure), (name, tunables)


@requires_root
@needs_v3
def test_secure_programs_share_one_profile(host_fixture: Path) -> None:
    """Cheap: every AT_SECURE program uses one profile without the tunables (the load templates are keyed by
    the profile), and the loader's own profile stays the one with them (what --json prints)."""
    d = host_fixture
    env = Environment.from_environ(_env(GLIBC_TUNABLES=MASK), cwd="/").replace(**_nobody_ids())
    loader = Loader(PROFILE, env, cache=ElfCache())
    assert "x86-64-v3" not in loader.profile.hwcaps_subdirs
    assert _model(d / "runpath-suid", {}, d, loader=loader) == ("v3", True)
    before = len(loader._templates)
    assert _model(d / "runpath-suid2", {}, d, loader=loader) == ("v3", True)
    assert len(loader._templates) == before  # the same shape under the same profile object: one template
    assert _model(d / "runpath", {}, d, loader=loader) == ("plain", False)
    sibling = loader.sibling(Environment.from_environ(_env(), cwd="/").replace(**_nobody_ids()))
    assert "x86-64-v3" in sibling.profile.hwcaps_subdirs  # a sibling without the tunables: the CPU's levels
    assert _model(d / "runpath", {}, d, loader=sibling) == ("v3", False)


@requires_root
@requires_cc
@needs_v3
def test_ldd_and_the_secure_option_of_tree(host_fixture: Path) -> None:
    """``ldd`` runs ld.so itself, never in secure mode: the mask applies to the set-user-ID program too, as in
    ``soswap tree --ldd``; ``soswap tree --secure`` shows the program's own run."""
    d = host_fixture
    env = _env(GLIBC_TUNABLES=MASK)
    prog = d / "runpath-suid"
    assert f"libhw.so => {d / 'D' / 'libhw.so'}" in assert_ldd_parity(prog, env=env).stdout
    e = dict(env, PYTHONPATH=SRC)
    for flag, want in (("--secure", d / "D" / "glibc-hwcaps" / "x86-64-v3" / "libhw.so"),
                       ("--no-secure", d / "D" / "libhw.so")):
        r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--no-cache", flag, str(prog)], env=e,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert f"libhw.so => {want}  [" in r.stdout, r.stdout


# -- other releases: their ld.so run from /srv/qa-roots (the program names it as its interpreter) ----------------

_ROOTS = ("jammy", "noble", "trixie", "sid")


@requires_root
@needs_v3
@pytest.mark.parametrize("root", _ROOTS)
def test_other_releases(root: str) -> None:
    """The program runs under the ld.so and libc of a release root (PT_INTERP and RUNPATH into the root, no
    chroot); soswap models it with this system's profile at that release. 2.39 refuses a malformed
    GLIBC_TUNABLES whole; from 2.40 ``glibc.rtld.enable_secure=1`` makes every run secure (LD_LIBRARY_PATH
    ignored) and applies none of the string."""
    base = Path("/srv/qa-roots") / root
    libdir = base / "usr" / "lib" / PROFILE.abi.triplet
    ldso = libdir / "ld-linux-x86-64.so.2"
    if not ldso.exists():
        pytest.skip(f"no release root {base}")
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    version = Profile.detect(str(base)).glibc_version
    if version < (2, 33):
        pytest.skip("no glibc-hwcaps before 2.33")
    profile = PROFILE.replace(glibc_version=version)
    cases = [(None, None), (MASK, None), ("glibc.malloc.check=1:" + MASK, None), (MASK + ":", None),
             (None, "L"), (MASK + ":glibc.rtld.enable_secure=1", "L"), ("glibc.rtld.enable_secure=1", "L")]
    if version >= (2, 39):
        # a '=' in the last value: before the CVE-2023-4911 fix (jammy's 2.35-0ubuntu3 has not got it) ld.so
        # parsed that value again as NAME=VALUE; soswap follows the fixed releases (Debian 12's)
        cases.append(("glibc.malloc.check=" + MASK, None))
    with _public_dir() as d:
        _libraries(d)
        write(d / "start.c", START)
        run_cc(["-O1", "-nostartfiles", "-o", str(d / "prog"), str(d / "start.c"), f"-L{d / 'D'}", "-lhw",
                f"-Wl,-rpath,{d / 'D'}:{libdir}", "-Wl,--enable-new-dtags",
                f"-Wl,--dynamic-linker={os.path.realpath(ldso)}"])
        _set_uid(d / "prog", "prog-suid")
        _open_up(d)
        for tunables, llp in cases:
            env = _env()
            if tunables is not None:
                env["GLIBC_TUNABLES"] = tunables
            if llp is not None:
                env["LD_LIBRARY_PATH"] = str(d / llp)
            for name in ("prog", "prog-suid"):
                real = _as_nobody(d / name, env)
                assert real.returncode == 0, (root, name, tunables, real.stderr)
                got, secure = _model(d / name, env, d, profile=profile)
                assert got == real.stdout.strip(), (root, version, name, tunables, llp, real.stdout)
                assert secure == (name == "prog-suid" or (tunables is not None and version >= (2, 40)
                                                          and "enable_secure=1" in tunables))


@requires_root
@pytest.mark.parametrize("root", ("noble", "trixie", "sid"))
def test_ldd_when_the_tunables_make_the_shell_secure(root: str) -> None:
    """``ldd`` under ``GLIBC_TUNABLES=glibc.rtld.enable_secure=1``: from 2.40 the script's shell runs in secure
    mode (it refuses a preload without the set-user-ID bit, and says so) and unsets GLIBC_TUNABLES and the LD_
    variables, so ld.so traces the file without them and not in secure mode; 2.39 does not know the tunable.
    Checked against ``ldd`` run in the root by a shell that exports the variables just before (chroot itself
    runs without them)."""
    base = Path("/srv/qa-roots") / root
    if not (base / "usr" / "bin" / "ldd").exists():
        pytest.skip(f"no release root {base}")
    from soswap.loader.ldd import LddModel

    profile = Profile.detect(str(base))
    clean = _env()
    for tunables in (None, "glibc.rtld.enable_secure=1"):
        for preload in ("libm.so.6", "libnonexistent.so"):
            extra = {"LD_PRELOAD": preload, "LD_LIBRARY_PATH": "/nonexistent"}
            if tunables is not None:
                extra["GLIBC_TUNABLES"] = tunables
            script = "".join(f"export {k}={shlex.quote(v)}; " for k, v in extra.items()) + "exec ldd /bin/true"
            real = subprocess.run(["chroot", str(base), "/bin/bash", "-c", script], env=clean, capture_output=True,
                                  text=True, timeout=60)
            loader = Loader(profile, Environment.from_environ(dict(clean, **extra), cwd="/"), cache=ElfCache())
            got = LddModel(loader).run(["/bin/true"])
            assert (got.stdout, got.stderr, got.status) == (_ADDR.sub("", real.stdout), real.stderr,
                                                            real.returncode), (root, tunables, preload)
            if tunables is not None and profile.glibc_version >= (2, 40):
                assert "libm.so.6 =>" not in got.stdout and got.stderr.startswith("ERROR: ld.so: object ")
