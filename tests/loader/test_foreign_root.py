"""A root built for another machine (``soswap tree --root`` on an arm64 image from an x86-64 host): its ABI comes
from its own files, the host's CPU is not taken for its CPU, and ``--ldd`` prints what ldd prints on that
machine. The fixtures are built with Debian's aarch64 cross compiler against its arm64 glibc; the oracle is that
glibc's own ld.so, run under qemu-user (``qemu-aarch64-static -L ROOT``, no binfmt_misc needed). Under ``-L``,
qemu gives the program its host path, so the oracle's paths lose the root's prefix before the comparison; and
qemu-user 7.2 maps no vDSO, so the model's vDSO line is left out."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator

import pytest

from loader.helpers import BASE_ENV, Outcome
from soswap.loader import Environment, Loader, Profile
from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel
from soswap.loader.profile import host_abi, root_abi
from soswap.loader.rootfs import RootFS

CROSS_CC = "aarch64-linux-gnu-gcc"
CROSS_LIBC = Path("/usr/aarch64-linux-gnu/lib")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
SRC = str(Path(__file__).resolve().parents[2] / "src")
_ADDR = re.compile(r" \(0x[0-9a-f]+\)")
_VDSO = re.compile(r"^\tlinux-vdso\.so\.1\n", re.M)

pytestmark = [
    pytest.mark.skipif(shutil.which(CROSS_CC) is None or not (CROSS_LIBC / "ld-linux-aarch64.so.1").exists(),
                       reason="no aarch64 cross compiler (gcc-aarch64-linux-gnu)"),
    pytest.mark.skipif(host_abi() != "x86_64", reason="an x86-64 host looking at an arm64 root"),
]
requires_qemu = pytest.mark.skipif(QEMU is None, reason="no qemu-user (qemu-user-static)")


def _cc(*args: str) -> None:
    r = subprocess.run([CROSS_CC, *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{CROSS_CC} {' '.join(args)}:\n{r.stderr}")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An arm64 root: the cross glibc's ld.so and libc, ``/opt/foo/libfoo.so.1`` (versions FOO_1 and FOO_2),
    ``/srv/old/libfoo.so.1`` (FOO_1 only, without ``foo2``), and programs that use it:

    - ``/usr/bin/prog``: RUNPATH ``$ORIGIN/../../opt/foo``, calls ``foo`` and ``foo2``;
    - ``/usr/bin/plain``: the same calls, no RUNPATH (found by LD_LIBRARY_PATH, or not at all);
    - ``/usr/bin/lazy``: RUNPATH ``/srv/old``, calls ``foo`` and ``foo2`` unversioned (built against a libfoo
      without versions), so that ``foo2`` is missing only when bound;
    - ``/bin/sh``: a copy of ``plain``, the program the root's ABI is read from."""
    top = tmp_path_factory.mktemp("arm64")
    r = top / "root"
    src = top / "src"
    (r / "lib" / "aarch64-linux-gnu").mkdir(parents=True)
    (r / "etc").mkdir()
    shutil.copy(CROSS_LIBC / "ld-linux-aarch64.so.1", r / "lib")
    shutil.copy(CROSS_LIBC / "libc.so.6", r / "lib" / "aarch64-linux-gnu")
    foo = _write(src / "foo.c", "int foo(void){return 1;}\nint foo2(void){return 2;}\n")
    old = _write(src / "old.c", "int foo(void){return 1;}\n")
    both = _write(src / "both.map", "FOO_1 { global: foo; local: *; };\nFOO_2 { global: foo2; } FOO_1;\n")
    one = _write(src / "one.map", "FOO_1 { global: foo; local: *; };\n")
    (r / "opt" / "foo").mkdir(parents=True)
    (r / "srv" / "old").mkdir(parents=True)
    _cc("-shared", "-fPIC", "-o", str(r / "opt/foo/libfoo.so.1"), "-Wl,-soname,libfoo.so.1",
        f"-Wl,--version-script={both}", str(foo))
    _cc("-shared", "-fPIC", "-o", str(r / "srv/old/libfoo.so.1"), "-Wl,-soname,libfoo.so.1",
        f"-Wl,--version-script={one}", str(old))
    _cc("-shared", "-fPIC", "-o", str(src / "libfoo.so.1"), "-Wl,-soname,libfoo.so.1", str(foo))
    main = _write(src / "main.c", "int foo(void); int foo2(void);\n"
                                  "int main(int argc, char **argv)\n"
                                  "{ (void)argv; return argc > 1 ? foo2() : foo() - 1; }\n")
    (r / "usr" / "bin").mkdir(parents=True)
    (r / "bin").mkdir()
    _cc("-o", str(r / "usr/bin/prog"), str(main), f"-L{r / 'opt/foo'}", "-l:libfoo.so.1",
        "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/../../opt/foo")
    _cc("-o", str(r / "usr/bin/plain"), str(main), f"-L{r / 'opt/foo'}", "-l:libfoo.so.1")
    _cc("-o", str(r / "usr/bin/lazy"), str(main), f"-L{src}", "-l:libfoo.so.1", "-Wl,--enable-new-dtags",
        "-Wl,-rpath,/srv/old")
    shutil.copy(r / "usr/bin/plain", r / "bin" / "sh")
    yield r
    shutil.rmtree(top, ignore_errors=True)


def _loader(root: Path, env: Dict[str, str], cpuinfo: str = "") -> Loader:
    profile = Profile.detect(str(root), cpuinfo=cpuinfo or None)
    environment = Environment.from_environ(env, cwd="/")
    return Loader(profile, environment)


def _model(root: Path, file: str, env: Dict[str, str], relocs: str = RELOCS_NONE) -> Outcome:
    out = LddModel(_loader(root, env), relocs).run([file])
    return Outcome(_VDSO.sub("", out.stdout), out.stderr, out.status)


def _oracle(root: Path, file: str, env: Dict[str, str], *extra_env: str) -> Outcome:
    """The arm64 ld.so tracing the program ``file`` under qemu: what ldd prints for it (ldd starts ld.so with the
    program as its argument, and ld.so then names itself by the program's PT_INTERP, as here). A library cannot be
    run this way: ``ld.so LIB`` under ``-L`` gets ld.so's host path as its name; the bench's root sweep has
    them."""
    assert QEMU is not None
    args = [QEMU, "-L", str(root), "-E", "LD_TRACE_LOADED_OBJECTS=1"]
    for k, v in env.items():
        args += ["-E", f"{k}={v}"]
    for e in extra_env:
        args += ["-E", e]
    # ldd's output merges the loader's error messages into the list, in the order they were written
    r = subprocess.run([*args, str(root) + file], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=BASE_ENV, timeout=120)
    return Outcome(_ADDR.sub("", r.stdout).replace(str(root) + "/", "/"), "", r.returncode)


# -- which machine a root is built for ------------------------------------------------------------------------


def test_the_root_abi_is_its_shells(root: Path) -> None:
    assert root_abi(RootFS(str(root))) == "aarch64"
    p = Profile.detect(str(root))
    assert (p.abi.name, p.interpreter, p.glibc_version) == ("aarch64", "/lib/ld-linux-aarch64.so.1", (2, 36))
    assert p.system_dirs == ("/lib/aarch64-linux-gnu/", "/usr/lib/aarch64-linux-gnu/", "/lib/", "/usr/lib/")
    assert p.lib == "lib/aarch64-linux-gnu" and p.platform == "aarch64" and p.isa_level is None


def test_without_a_shell_the_ld_so_present_names_the_abi(root: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(root, bare, symlinks=True)
    (bare / "bin" / "sh").unlink()
    assert root_abi(RootFS(str(bare))) == "aarch64"
    (bare / "lib" / "ld-linux-aarch64.so.1").unlink()
    assert root_abi(RootFS(str(bare))) == host_abi()  # nothing says: the host's


def test_a_foreign_root_does_not_take_the_hosts_cpu(root: Path) -> None:
    p = Profile.detect(str(root))
    assert p.cpu == ("", (), "aarch64")
    assert p.legacy_subdirs == ("tls/aarch64", "tls", "aarch64") and p.legacy_hwcap == 0
    # the host's own root keeps the host's CPU
    assert Profile.detect("/").cpu[1] != ()  # type: ignore[index]


@requires_qemu
def test_atomics_subdirectories_match_the_real_ld_so(root: Path) -> None:
    # glibc <= 2.36 on aarch64: HWCAP_IMPORTANT is HWCAP_ATOMICS, so the legacy subdirectories are the power set
    # of "atomics", the platform and "tls" (qemu's CPU has atomics: LSE)
    r = subprocess.run([QEMU, "-L", str(root), "-E", "LD_DEBUG=libs", "-E", "LD_LIBRARY_PATH=/nowhere",
                        str(root / "usr/bin/prog")], capture_output=True, text=True, env=BASE_ENV, timeout=120)
    m = re.search(r"search path=(\S+)\s+\(LD_LIBRARY_PATH\)", r.stderr)
    assert m, r.stderr
    real = [d[len("/nowhere/"):] for d in m.group(1).split(":") if d != "/nowhere"]
    p = Profile.detect(str(root), cpuinfo="processor\t: 0\nFeatures\t: fp asimd atomics cpuid\n")
    assert list(p.legacy_subdirs) == real
    assert p.legacy_hwcap == 1 << 8
    assert "atomics" not in "".join(Profile.detect(str(root), cpuinfo="Features\t: fp asimd\n").legacy_subdirs)


# -- ldd on that machine -----------------------------------------------------------------------------------------


CASES = [
    ("/usr/bin/prog", {}),  # RUNPATH with $ORIGIN
    ("/usr/bin/plain", {}),  # libfoo.so.1 => not found
    ("/usr/bin/plain", {"LD_LIBRARY_PATH": "/opt/foo"}),
    ("/usr/bin/plain", {"LD_LIBRARY_PATH": "/srv/old"}),  # version `FOO_2' not found
    ("/usr/bin/lazy", {}),
]


@requires_qemu
@pytest.mark.parametrize("file,env", CASES, ids=[f"{f}{'+' + ','.join(e.values()) if e else ''}" for f, e in CASES])
@pytest.mark.parametrize("bind", [False, True], ids=["ldd", "ldd-r"])
def test_ldd_parity_with_the_arm64_loader(root: Path, file: str, env: Dict[str, str], bind: bool) -> None:
    extra = ("LD_WARN=yes", "LD_BIND_NOW=yes") if bind else ()
    want = _oracle(root, file, env, *extra)
    got = _model(root, file, env, RELOCS_FUNCTION if bind else RELOCS_NONE)
    assert got.stdout == want.stdout
    assert (got.status == 0) == (want.status == 0)
    if file == "/usr/bin/lazy" and bind:
        assert "undefined symbol: foo2" in got.stdout  # the case is what it says
    if env.get("LD_LIBRARY_PATH") == "/srv/old":
        assert "version `FOO_2' not found" in got.stdout


@requires_qemu
def test_running_the_program_fails_as_predicted(root: Path) -> None:
    env = {"LD_LIBRARY_PATH": "/srv/old"}
    r = subprocess.run([QEMU, "-L", str(root), "-E", "LD_LIBRARY_PATH=/srv/old", str(root / "usr/bin/plain")],
                       capture_output=True, text=True, env=BASE_ENV, timeout=120)
    loader = _loader(root, env)
    res = loader.load("/usr/bin/plain", argv0=str(root / "usr/bin/plain"))
    fatal = loader.bind(res, relocate=False).fatal
    assert fatal is not None and r.returncode == fatal.exit_status == 1
    assert r.stderr.splitlines() == [fatal.line]


def test_the_command_names_the_foreign_abi(root: Path) -> None:
    env = {**BASE_ENV, "PYTHONPATH": SRC, "SOSWAP_CACHE_DIR": str(root.parent / "cache")}
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--root", str(root), "--json", "--clean-env",
                        "/usr/bin/prog"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"abi": "aarch64"' in r.stdout and '"legacy_subdirs": ["tls/aarch64", "tls", "aarch64"]' in r.stdout
    cpuinfo = root.parent / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd atomics\n")
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--root", str(root), "--json", "--clean-env",
                        "--cpuinfo", str(cpuinfo), "/usr/bin/prog"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and '"tls/aarch64/atomics"' in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--cpuinfo", str(root / "nothing"), "/bin/true"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"soswap: error: --cpuinfo {root / 'nothing'}: No such file or directory"]

