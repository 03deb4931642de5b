"""A root built for another machine (``soswap tree --root`` on an arm64, armhf, ppc64el or s390x image from an x86-64
host): its ABI comes from its own files, the host's CPU is not taken for its CPU, its CPU's glibc-hwcaps and
legacy subdirectories are the target's, and ``--ldd`` prints what ldd prints on that machine. The fixtures are
built with clang (or Debian's gcc-TRIPLET) against Debian's cross glibc; the oracle is that glibc's own ld.so, run
under qemu-user (``qemu-aarch64-static -L ROOT``, no binfmt_misc needed), with the CPU models qemu has. Under
``-L``, qemu gives the program its host path, so the oracle's paths lose the root's prefix before the comparison;
and qemu-user 7.2 maps no vDSO, so the model's vDSO line is left out."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest

from loader.helpers import BASE_ENV, Outcome
from soswap.loader import Environment, Loader, Profile
from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel
from soswap.loader.profile import host_abi, root_abi
from soswap.loader.rootfs import RootFS

SRC = str(Path(__file__).resolve().parents[2] / "src")
_ADDR = re.compile(r" \(0x[0-9a-f]+\)")
_VDSO = re.compile(r"^\tlinux-vdso(?:64)?\.so\.1\n", re.M)


class Target(NamedTuple):
    """A machine: its ABI, its GNU triplet (Debian's cross glibc lies in /usr/TRIPLET), its ld.so and qemu-user."""

    abi: str
    triplet: str
    interpreter: str
    qemu: str
    #: qemu CPU models ("": its default) whose subdirectories differ (``-cpu``)
    cpus: Tuple[str, ...] = ("",)
    #: a /proc/cpuinfo of the machine, and two subdirectories it gives (a legacy one with the important hwcaps,
    #: and one the CPU's platform or level names)
    cpuinfo: Tuple[str, str, str] = ("", "", "")

    @property
    def libc(self) -> Path:
        return Path("/usr") / self.triplet / "lib"

    def compiler(self) -> Optional[List[str]]:
        """The cross compiler: Debian's gcc-TRIPLET, else clang with the cross binutils' linker (the gcc cross
        compilers conflict with gcc-multilib, which the other tests need). None: neither, or no cross glibc."""
        if not (self.libc / Path(self.interpreter).name).exists() or not (self.libc / "crt1.o").exists():
            return None
        gcc = shutil.which(f"{self.triplet}-gcc")
        if gcc:
            return [gcc]
        ld = shutil.which(f"{self.triplet}-ld")
        clang = shutil.which("clang") or next(
            (c for c in (shutil.which(f"clang-{v}") for v in range(20, 13, -1)) if c), None)
        if clang and ld:
            return [clang, f"--target={self.triplet}", f"-fuse-ld={ld}"]
        return None

    def qemu_path(self) -> str:
        path = shutil.which(f"{self.qemu}-static") or shutil.which(self.qemu)
        if path is None:
            pytest.skip(f"no {self.qemu} (qemu-user-static)")
        return path


ARM64 = Target("aarch64", "aarch64-linux-gnu", "/lib/ld-linux-aarch64.so.1", "qemu-aarch64",
               cpuinfo=("processor\t: 0\nFeatures\t: fp asimd atomics cpuid\n", "tls/aarch64/atomics", "tls/aarch64"))
ARMHF = Target("armhf", "arm-linux-gnueabihf", "/lib/ld-linux-armhf.so.3", "qemu-arm",
               cpuinfo=("processor\t: 0\nFeatures\t: half thumb fastmult vfp edsp neon\nCPU architecture: 7\n",
                        "tls/v7l/neon/vfp", "tls/v7l"))
# a POWER9 in POWER9 mode; a z14 (machine type 3906), as their kernels write /proc/cpuinfo
PPC64EL = Target("ppc64le", "powerpc64le-linux-gnu", "/lib64/ld64.so.2", "qemu-ppc64le",
                 ("power8", "power9", "power10"),
                 ("processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\nclock\t\t: 2750.000000MHz\n",
                  "tls/power9/altivec/dfp", "glibc-hwcaps/power9"))
S390X = Target("s390x", "s390x-linux-gnu", "/lib/ld64.so.1", "qemu-s390x", ("", "qemu,vx=off,vxeh=off"),
               ("vendor_id       : IBM/S390\n# processors    : 2\n"
                "features\t: esan3 zarch stfle msa ldisp eimm dfp edat etf3eh highgprs te vx vxd vxe gs sie\n"
                "processor 0: version = 00,  identification = 2F8F28,  machine = 3906\n",
                "tls/z14/vxe/vx/dfp/eimm/ldisp/zarch", "glibc-hwcaps/z14"))

pytestmark = pytest.mark.skipif(host_abi() != "x86_64", reason="an x86-64 host looking at another machine's root")


def _cc(cc: List[str], *args: str) -> None:
    r = subprocess.run([*cc, *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cc)} {' '.join(args)}:\n{r.stderr}")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module", params=[ARM64, ARMHF, PPC64EL, S390X], ids=["arm64", "armhf", "ppc64el", "s390x"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """(target, its root made by :func:`build_root`)."""
    target: Target = request.param
    cc = target.compiler()
    if cc is None:
        pytest.skip(f"no compiler for {target.triplet} with its glibc (clang, binutils-{target.triplet}, "
                    f"libc6-dev-*-cross, libgcc-12-dev-*-cross)")
    top = tmp_path_factory.mktemp(target.abi)
    yield target, build_root(target, cc, top)
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def machine(built: tuple) -> Target:
    return built[0]


@pytest.fixture(scope="module")
def root(built: tuple) -> Path:
    return built[1]


def build_root(target: Target, cc: List[str], top: Path) -> Path:
    """A root of ``target``: the cross glibc's ld.so and libc, ``/opt/foo/libfoo.so.1`` (versions FOO_1 and
    FOO_2), ``/srv/old/libfoo.so.1`` (FOO_1 only, without ``foo2``), and programs that use it:

    - ``/usr/bin/prog``: RUNPATH ``$ORIGIN/../../opt/foo``, calls ``foo`` and ``foo2``;
    - ``/usr/bin/plain``: the same calls, no RUNPATH (found by LD_LIBRARY_PATH, or not at all);
    - ``/usr/bin/lazy``: RUNPATH ``/srv/old``, calls ``foo`` and ``foo2`` unversioned (built against a libfoo
      without versions), so that ``foo2`` is missing only when bound;
    - ``/bin/sh``: a copy of ``plain``, the program the root's ABI is read from."""
    r = top / "root"
    src = top / "src"
    (r / "lib" / target.triplet).mkdir(parents=True)
    (r / "etc").mkdir()
    (r / target.interpreter.lstrip("/")).parent.mkdir(exist_ok=True)
    shutil.copy(target.libc / Path(target.interpreter).name, r / target.interpreter.lstrip("/"))
    shutil.copy(target.libc / "libc.so.6", r / "lib" / target.triplet)
    foo = _write(src / "foo.c", "int foo(void){return 1;}\nint foo2(void){return 2;}\n")
    old = _write(src / "old.c", "int foo(void){return 1;}\n")
    both = _write(src / "both.map", "FOO_1 { global: foo; local: *; };\nFOO_2 { global: foo2; } FOO_1;\n")
    one = _write(src / "one.map", "FOO_1 { global: foo; local: *; };\n")
    (r / "opt" / "foo").mkdir(parents=True)
    (r / "srv" / "old").mkdir(parents=True)
    _cc(cc, "-shared", "-fPIC", "-o", str(r / "opt/foo/libfoo.so.1"), "-Wl,-soname,libfoo.so.1",
        f"-Wl,--version-script={both}", str(foo))
    _cc(cc, "-shared", "-fPIC", "-o", str(r / "srv/old/libfoo.so.1"), "-Wl,-soname,libfoo.so.1",
        f"-Wl,--version-script={one}", str(old))
    _cc(cc, "-shared", "-fPIC", "-o", str(src / "libfoo.so.1"), "-Wl,-soname,libfoo.so.1", str(foo))
    main = _write(src / "main.c", "int foo(void); int foo2(void);\n"
                                  "int main(int argc, char **argv)\n"
                                  "{ (void)argv; return argc > 1 ? foo2() : foo() - 1; }\n")
    (r / "usr" / "bin").mkdir(parents=True)
    (r / "bin").mkdir()
    _cc(cc, "-o", str(r / "usr/bin/prog"), str(main), f"-L{r / 'opt/foo'}", "-l:libfoo.so.1",
        "-Wl,--enable-new-dtags", "-Wl,-rpath,$ORIGIN/../../opt/foo")
    _cc(cc, "-o", str(r / "usr/bin/plain"), str(main), f"-L{r / 'opt/foo'}", "-l:libfoo.so.1")
    _cc(cc, "-o", str(r / "usr/bin/lazy"), str(main), f"-L{src}", "-l:libfoo.so.1", "-Wl,--enable-new-dtags",
        "-Wl,-rpath,/srv/old")
    shutil.copy(r / "usr/bin/plain", r / "bin" / "sh")
    return r


def _loader(root: Path, env: Dict[str, str], cpuinfo: str = "") -> Loader:
    profile = Profile.detect(str(root), cpuinfo=cpuinfo or None)
    environment = Environment.from_environ(env, cwd="/")
    return Loader(profile, environment)


def _model(root: Path, file: str, env: Dict[str, str], relocs: str = RELOCS_NONE) -> Outcome:
    out = LddModel(_loader(root, env), relocs).run([file])
    return Outcome(_VDSO.sub("", out.stdout), out.stderr, out.status)


def _qemu(machine: Target, root: Path, cpu: str = "") -> List[str]:
    return [machine.qemu_path(), *(["-cpu", cpu] if cpu else []), "-L", str(root)]


def _oracle(machine: Target, root: Path, file: str, env: Dict[str, str], *extra_env: str, cpu: str = "") -> Outcome:
    """The target's ld.so tracing the program ``file`` under qemu: what ldd prints for it (ldd starts ld.so with
    the program as its argument, and ld.so then names itself by the program's PT_INTERP, as here). A library
    cannot be run this way: ``ld.so LIB`` under ``-L`` gets ld.so's host path as its name; the bench's root sweep
    has them."""
    args = [*_qemu(machine, root, cpu), "-E", "LD_TRACE_LOADED_OBJECTS=1"]
    for k, v in env.items():
        args += ["-E", f"{k}={v}"]
    for e in extra_env:
        args += ["-E", e]
    # ldd's output merges the loader's error messages into the list, in the order they were written
    r = subprocess.run([*args, str(root) + file], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       env=BASE_ENV, timeout=120)
    return Outcome(_ADDR.sub("", r.stdout).replace(str(root) + "/", "/"), "", r.returncode)


def _auxv(machine: Target, root: Path, cpu: str = "") -> str:
    """What ``LD_SHOW_AUXV=1`` prints on the target's CPU: the hwcaps and platform its ld.so starts from."""
    r = subprocess.run([*_qemu(machine, root, cpu), "-E", "LD_SHOW_AUXV=1", str(root / "usr/bin/prog")],
                       capture_output=True, text=True, env=BASE_ENV, timeout=120)
    assert "AT_HWCAP" in r.stdout, r.stderr
    return r.stdout


def _search_path(machine: Target, root: Path, cpu: str = "") -> List[str]:
    """The subdirectories the real ld.so tries in an LD_LIBRARY_PATH directory (``LD_DEBUG=libs``), in order."""
    r = subprocess.run([*_qemu(machine, root, cpu), "-E", "LD_DEBUG=libs", "-E",
                        "LD_LIBRARY_PATH=/nowhere", str(root / "usr/bin/prog")], capture_output=True, text=True,
                       env=BASE_ENV, timeout=120)
    m = re.search(r"search path=(\S+)\s+\(LD_LIBRARY_PATH\)", r.stderr)
    assert m, r.stderr
    return [d[len("/nowhere/"):] for d in m.group(1).split(":") if d != "/nowhere"]


# -- which machine a root is built for ------------------------------------------------------------------------


def test_the_root_abi_is_its_shells(machine: Target, root: Path) -> None:
    assert root_abi(RootFS(str(root))) == machine.abi
    p = Profile.detect(str(root))
    assert (p.abi.name, p.interpreter, p.glibc_version) == (machine.abi, machine.interpreter, (2, 36))
    t = machine.triplet
    assert p.system_dirs == (f"/lib/{t}/", f"/usr/lib/{t}/", "/lib/", "/usr/lib/")
    assert p.lib == f"lib/{t}" and p.isa_level is None


def test_without_a_shell_the_ld_so_present_names_the_abi(machine: Target, root: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(root, bare, symlinks=True)
    (bare / "bin" / "sh").unlink()
    assert root_abi(RootFS(str(bare))) == machine.abi
    (bare / machine.interpreter.lstrip("/")).unlink()
    assert root_abi(RootFS(str(bare))) == host_abi()  # nothing says: the host's


def test_a_foreign_root_does_not_take_the_hosts_cpu(machine: Target, root: Path) -> None:
    p = Profile.detect(str(root))
    assert p.cpu == ("", (), machine.abi) and p.legacy_hwcap == 0
    # the kernel's AT_PLATFORM for the ABI's first CPU: no hwcaps, no glibc-hwcaps level
    plat = {"aarch64": "aarch64", "armhf": "v7l", "ppc64le": "power8", "s390x": "z10"}[machine.abi]
    assert (p.platform, p.legacy_subdirs, p.hwcaps_subdirs) == (plat, (f"tls/{plat}", "tls", plat), ())
    # the host's own root keeps the host's CPU
    assert Profile.detect("/").cpu[1] != ()  # type: ignore[index]


def test_atomics_subdirectories_match_the_real_ld_so(machine: Target, root: Path) -> None:
    # glibc <= 2.36 on aarch64: HWCAP_IMPORTANT is HWCAP_ATOMICS, so the legacy subdirectories are the power set
    # of "atomics", the platform and "tls" (qemu's CPU has atomics: LSE)
    if machine.abi != "aarch64":
        pytest.skip("aarch64's rule")
    p = Profile.detect(str(root), cpuinfo="processor\t: 0\nFeatures\t: fp asimd atomics cpuid\n")
    assert list(p.legacy_subdirs) == _search_path(machine, root)
    assert p.legacy_hwcap == 1 << 8
    assert "atomics" not in "".join(Profile.detect(str(root), cpuinfo="Features\t: fp asimd\n").legacy_subdirs)


def test_vfp_neon_subdirectories_match_the_real_ld_so(machine: Target, root: Path) -> None:
    # glibc <= 2.36 on 32-bit ARM: HWCAP_IMPORTANT is VFP | NEON, and AT_PLATFORM is "v<architecture>l" (qemu's
    # CPU: an ARMv8 one with both)
    if machine.abi != "armhf":
        pytest.skip("32-bit ARM's rule")
    cpuinfo = ("processor\t: 0\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva\n"
               "CPU architecture: 8\n")
    p = Profile.detect(str(root), cpuinfo=cpuinfo)
    assert list(p.legacy_subdirs) == _search_path(machine, root)
    assert (p.platform, p.legacy_hwcap) == ("v8l", 1 << 6 | 1 << 12)


def test_subdirectories_match_the_real_ld_so_on_each_cpu(machine: Target, root: Path) -> None:
    # what LD_SHOW_AUXV prints on the CPU, given as --cpuinfo, gives the glibc-hwcaps levels
    # (_dl_hwcaps_subdirs_active: POWER9/10 from AT_HWCAP2, z13-z16 from AT_HWCAP) and the legacy subdirectories
    # (HWCAP_IMPORTANT and AT_PLATFORM, which qemu-user gives only on ARM) that ld.so searches, in its order
    seen = set()
    for cpu in machine.cpus:
        auxv = _auxv(machine, root, cpu)
        p = Profile.detect(str(root), cpuinfo=auxv)
        assert [f"glibc-hwcaps/{d}" for d in p.hwcaps_subdirs] + list(p.legacy_subdirs) == \
            _search_path(machine, root, cpu), cpu
        at_platform = re.search(r"^AT_PLATFORM:\s*(\S+)", auxv, re.M)
        assert p.platform == (at_platform.group(1) if at_platform else None)
        seen.add(p.hwcaps_subdirs)
    assert len(seen) == len(machine.cpus)  # each CPU model is a case of its own


def test_a_library_in_a_glibc_hwcaps_subdirectory_is_loaded_where_the_cpu_has_the_level(machine: Target,
                                                                                         root: Path) -> None:
    # the FOO_1-only libfoo in the lowest level's subdirectory of the RUNPATH directory: the CPUs with that
    # level load it (and FOO_2 is not found), the others the one beside it
    level = {"ppc64le": "power9", "s390x": "z13"}.get(machine.abi)
    if level is None:
        pytest.skip("glibc 2.36 has no glibc-hwcaps subdirectories on ARM")
    sub = root / "opt/foo/glibc-hwcaps" / level
    sub.mkdir(parents=True)
    shutil.copy(root / "srv/old/libfoo.so.1", sub)
    try:
        loaded = []
        for cpu in machine.cpus:
            want = _oracle(machine, root, "/usr/bin/prog", {}, cpu=cpu)
            loader = Loader(Profile.detect(str(root), cpuinfo=_auxv(machine, root, cpu)),
                            Environment.from_environ({}, cwd="/"))
            got = LddModel(loader, RELOCS_NONE).run(["/usr/bin/prog"])
            assert _VDSO.sub("", got.stdout) == want.stdout, cpu
            loaded.append(f"glibc-hwcaps/{level}/libfoo.so.1" in want.stdout)
        assert any(loaded) and not all(loaded)
    finally:
        shutil.rmtree(root / "opt/foo/glibc-hwcaps")


def test_proc_cpuinfo_names_the_platform_and_levels(machine: Target, root: Path) -> None:
    # /proc/cpuinfo as the target's kernel writes it: POWER's "cpu" line and Z's machine type give AT_PLATFORM
    text, legacy, named = machine.cpuinfo
    p = Profile.detect(str(root), cpuinfo=text)
    dirs = [f"glibc-hwcaps/{d}" for d in p.hwcaps_subdirs] + list(p.legacy_subdirs)
    assert legacy in dirs and named in dirs
    assert dirs.index(legacy) < dirs.index(legacy.rsplit("/", 1)[0])  # the important hwcaps first


# -- ldd on that machine -----------------------------------------------------------------------------------------


CASES = [
    ("/usr/bin/prog", {}),  # RUNPATH with $ORIGIN
    ("/usr/bin/plain", {}),  # libfoo.so.1 => not found
    ("/usr/bin/plain", {"LD_LIBRARY_PATH": "/opt/foo"}),
    ("/usr/bin/plain", {"LD_LIBRARY_PATH": "/srv/old"}),  # version `FOO_2' not found
    ("/usr/bin/lazy", {}),
]


@pytest.mark.parametrize("file,env", CASES, ids=[f"{f}{'+' + ','.join(e.values()) if e else ''}" for f, e in CASES])
@pytest.mark.parametrize("bind", [False, True], ids=["ldd", "ldd-r"])
def test_ldd_parity_with_the_targets_loader(machine: Target, root: Path, file: str, env: Dict[str, str],
                                            bind: bool) -> None:
    extra = ("LD_WARN=yes", "LD_BIND_NOW=yes") if bind else ()
    want = _oracle(machine, root, file, env, *extra)
    got = _model(root, file, env, RELOCS_FUNCTION if bind else RELOCS_NONE)
    assert got.stdout == want.stdout
    assert (got.status == 0) == (want.status == 0)
    if file == "/usr/bin/lazy" and bind:
        assert "undefined symbol: foo2" in got.stdout  # the case is what it says
    if env.get("LD_LIBRARY_PATH") == "/srv/old":
        assert "version `FOO_2' not found" in got.stdout


def test_running_the_program_fails_as_predicted(machine: Target, root: Path) -> None:
    env = {"LD_LIBRARY_PATH": "/srv/old"}
    r = subprocess.run([machine.qemu_path(), "-L", str(root), "-E", "LD_LIBRARY_PATH=/srv/old",
                        str(root / "usr/bin/plain")], capture_output=True, text=True, env=BASE_ENV, timeout=120)
    loader = _loader(root, env)
    res = loader.load("/usr/bin/plain", argv0=str(root / "usr/bin/plain"))
    fatal = loader.bind(res, relocate=False).fatal
    assert fatal is not None and r.returncode == fatal.exit_status == 1
    assert r.stderr.splitlines() == [fatal.line]


def test_a_library_of_the_other_float_abi_is_passed_over(machine: Target, root: Path) -> None:
    # VALID_FLOAT_ABI: armhf's ld.so does not take an EABI v5 object marked soft-float; Debian's passes it over
    # as one of another machine and searches on (upstream's VALID_ELF_HEADER would call it an "internal error")
    if machine.abi != "armhf":
        pytest.skip("32-bit ARM's rule")
    data = bytearray((root / "opt/foo/libfoo.so.1").read_bytes())
    flags = int.from_bytes(data[36:40], "little")
    assert flags & 0xFF000000 == 0x05000000 and flags & 0x400
    data[36:40] = ((flags & ~0x400) | 0x200).to_bytes(4, "little")
    (root / "srv" / "soft").mkdir(exist_ok=True)
    (root / "srv/soft/libfoo.so.1").write_bytes(bytes(data))
    try:
        for env in ({"LD_LIBRARY_PATH": "/srv/soft"}, {"LD_LIBRARY_PATH": "/srv/soft:/opt/foo"}):
            want = _oracle(machine, root, "/usr/bin/plain", env)
            assert _model(root, "/usr/bin/plain", env).stdout == want.stdout
        assert "libfoo.so.1 => /opt/foo/libfoo.so.1" in want.stdout  # the soft-float one was passed over
    finally:
        (root / "srv/soft/libfoo.so.1").unlink()


def test_the_command_names_the_foreign_abi(root: Path, machine: Target) -> None:
    env = {**BASE_ENV, "PYTHONPATH": SRC, "SOSWAP_CACHE_DIR": str(root.parent / "cache")}
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--root", str(root), "--json", "--clean-env",
                        "/usr/bin/prog"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f'"abi": "{machine.abi}"' in r.stdout
    cpuinfo = root.parent / "cpuinfo"
    text, legacy, named = machine.cpuinfo
    cpuinfo.write_text(text)
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--root", str(root), "--json", "--clean-env",
                        "--cpuinfo", str(cpuinfo), "/usr/bin/prog"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and f'"{legacy}"' in r.stdout, r.stderr
    assert f'"{named.split("/")[-1]}"' in r.stdout
    r = subprocess.run([sys.executable, "-m", "soswap", "tree", "--cpuinfo", str(root / "nothing"), "/bin/true"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"soswap: error: --cpuinfo {root / 'nothing'}: No such file or directory"]
