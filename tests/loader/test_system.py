"""Cases that change the system's loader configuration (loader.md §(b) 33-37): ld.so.conf.d and ldconfig, the
system directories, glibc-hwcaps subdirectories (also in ld.so.cache) and set-user-ID programs. Everything
touched in /etc, /opt, /usr is restored in ``finally`` blocks; ld.so.cache is restored byte for byte."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from loader.helpers import (
    PROFILE,
    assert_ldd_parity,
    assert_run_prediction,
    by_name,
    env_with,
    lib_source,
    predict,
    run_program,
    sources_needing,
)
from soswap.loader import Environment, Loader
from support.build import executable, requires_cc, requires_root, rpath_flags, run_cc, shared_lib, write

pytestmark = requires_cc

CACHE = Path("/etc/ld.so.cache")
CONF_D = Path("/etc/ld.so.conf.d")
MULTIARCH = Path("/usr/lib") / PROFILE.abi.triplet


@contextlib.contextmanager
def restored_cache() -> Iterator[None]:
    """Run ldconfig freely inside; the cache file is put back exactly as it was."""
    saved = CACHE.read_bytes() if CACHE.exists() else None
    try:
        yield
    finally:
        if saved is not None:
            tmp = CACHE.with_name(f".ld.so.cache.soswap-{uuid.uuid4().hex}")
            tmp.write_bytes(saved)
            os.chmod(tmp, 0o644)
            os.replace(tmp, CACHE)


def _ldconfig(*args: str) -> None:
    subprocess.run(["ldconfig", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture
def opt_dir() -> Iterator[Path]:
    d = Path("/opt") / f"soswap-test-{uuid.uuid4().hex[:8]}"
    d.mkdir(parents=True)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _c9(tmp: Path, opt: Path, *, real_name: str = "libc9.so.1") -> Path:
    shared_lib(opt / real_name, lib_source("c9"), soname="libc9.so.1")
    build = tmp / "build"
    shared_lib(build / "libc9.so", lib_source("c9"), soname="libc9.so.1")
    return executable(tmp / "e", sources_needing("c9"), libs=[f"-L{build}", "-lc9"])


@requires_root
def test_case33_conf_dir_needs_ldconfig(tmp_path: Path, opt_dir: Path) -> None:
    e = _c9(tmp_path, opt_dir)
    conf = CONF_D / f"zz-soswap-{opt_dir.name}.conf"
    with restored_cache():
        try:
            conf.write_text(f"{opt_dir}\n")
            # no ldconfig yet: not found
            assert assert_run_prediction(e).status == 127
            assert_ldd_parity(e)
            _ldconfig()
            assert assert_run_prediction(e).status == 0
            assert_ldd_parity(e)
            res, _ = predict(e)
            c9 = by_name(res, "libc9.so.1")
            assert c9.reason.rule == "cache" and c9.path == f"{opt_dir}/libc9.so.1"
            # a stale entry: the file is gone, the cache still names it
            (opt_dir / "libc9.so.1").unlink()
            assert assert_run_prediction(e).status == 127
            assert_ldd_parity(e)
        finally:
            conf.unlink(missing_ok=True)


@requires_root
def test_case34_ldconfig_without_links(tmp_path: Path, opt_dir: Path) -> None:
    e = _c9(tmp_path, opt_dir, real_name="libc9.so.1.2")
    conf = CONF_D / f"zz-soswap-{opt_dir.name}.conf"
    with restored_cache():
        try:
            conf.write_text(f"{opt_dir}\n")
            _ldconfig("-X")
            entry = PROFILE.ldcache.lookup("libc9.so.1", PROFILE.cache_target())
            assert entry is not None and entry.value == f"{opt_dir}/libc9.so.1"
            assert not (opt_dir / "libc9.so.1").exists()
            assert assert_run_prediction(e).status == 127
            assert_ldd_parity(e)
        finally:
            conf.unlink(missing_ok=True)


@requires_root
def test_case35_system_directory_without_ldconfig(tmp_path: Path) -> None:
    name = f"libsoswap35{uuid.uuid4().hex[:6]}.so"
    build = tmp_path / "build"
    shared_lib(build / name, lib_source("s35"), soname=name)
    e = executable(tmp_path / "e", sources_needing("s35"), libs=[str(build / name)])
    # linked by path: DT_NEEDED is the full path; relink by soname
    e = executable(tmp_path / "e", sources_needing("s35"), libs=[f"-L{build}", f"-l:{name}"])
    target = MULTIARCH / name
    try:
        shutil.copy(build / name, target)
        assert assert_run_prediction(e).status == 0
        assert_ldd_parity(e)
        res, _ = predict(e)
        lib = by_name(res, name)
        # the first system directory holding it (/lib is /usr/lib on a merged-/usr system)
        first = next(d for d in PROFILE.system_dirs if os.path.exists(d + name))
        assert lib.reason.rule == "system" and lib.path == first + name
    finally:
        target.unlink(missing_ok=True)


def _hwcaps(tmp: Path) -> Path:
    d = tmp / "d"
    shared_lib(d / "libh.so", "int h(void) { return 1; }\n", soname="libh.so")
    shared_lib(d / "glibc-hwcaps" / "x86-64-v2" / "libh.so", "int h(void) { return 2; }\n", soname="libh.so")
    return executable(tmp / "e", "int h(void);\nint main(void) { return h(); }\n", flags=rpath_flags(str(d)),
                      libs=[f"-L{d}", "-lh"])


def test_case36_glibc_hwcaps_subdirectory(tmp_path: Path) -> None:
    if "x86-64-v2" not in PROFILE.hwcaps_subdirs:
        pytest.skip("this CPU does not support x86-64-v2")
    e = _hwcaps(tmp_path)
    assert run_program(e).status == 2
    assert_ldd_parity(e)
    res, _ = predict(e)
    lib = by_name(res, "libh.so")
    assert lib.path == f"{tmp_path}/d/glibc-hwcaps/x86-64-v2/libh.so"
    assert lib.reason.subdir == "glibc-hwcaps/x86-64-v2/"
    # ld.so --glibc-hwcaps-mask=x86-64-v3: the v2 subdirectory is not searched
    r = subprocess.run([PROFILE.interpreter, "--glibc-hwcaps-mask", "x86-64-v3", str(e)], capture_output=True,
                       timeout=60)
    assert r.returncode == 1, r.stderr
    loader = Loader(PROFILE, Environment.from_environ(env_with()).replace(hwcaps_mask=("x86-64-v3",)))
    res = loader.load(str(e))
    assert by_name(res, "libh.so").path == f"{tmp_path}/d/libh.so"


def test_legacy_hwcap_subdirectories_of_glibc_236(tmp_path: Path) -> None:
    if PROFILE.glibc_version > (2, 36) or not PROFILE.legacy_subdirs:
        pytest.skip("legacy hwcaps subdirectories exist up to glibc 2.36")
    d = tmp_path / "d"
    sub = PROFILE.legacy_subdirs[len(PROFILE.legacy_subdirs) // 2]
    shared_lib(d / "libh.so", "int h(void) { return 1; }\n", soname="libh.so")
    shared_lib(d / sub / "libh.so", "int h(void) { return 3; }\n", soname="libh.so")
    e = executable(tmp_path / "e", "int h(void);\nint main(void) { return h(); }\n", flags=rpath_flags(str(d)),
                   libs=[f"-L{d}", "-lh"])
    assert run_program(e).status == 3
    assert_ldd_parity(e)
    res, _ = predict(e)
    assert by_name(res, "libh.so").reason.subdir == f"{sub}/"
    # the search path ld.so prints for that directory lists the same subdirectories in the same order
    r = subprocess.run([str(e)], env=env_with(LD_DEBUG="libs"), capture_output=True, text=True, timeout=60)
    line = next(ln for ln in r.stderr.splitlines() if "search path=" in ln and str(d) in ln)
    listed = line.split("search path=", 1)[1].split("\t", 1)[0].split(":")
    want = [f"{d}/glibc-hwcaps/{h}" for h in PROFILE.hwcaps_subdirs] + [f"{d}/{s}" for s in
                                                                        PROFILE.legacy_subdirs] + [str(d)]
    assert listed == want


@requires_root
def test_hwcaps_entries_in_ld_so_cache(tmp_path: Path, opt_dir: Path) -> None:
    if "x86-64-v3" not in PROFILE.hwcaps_subdirs:
        pytest.skip("needs an x86-64-v3 CPU")
    name = "libsoswaphw.so.1"
    shared_lib(opt_dir / name, "int hw(void) { return 1; }\n", soname=name)
    shared_lib(opt_dir / "glibc-hwcaps" / "x86-64-v3" / name, "int hw(void) { return 3; }\n", soname=name)
    shared_lib(opt_dir / "glibc-hwcaps" / "x86-64-v2" / name, "int hw(void) { return 2; }\n", soname=name)
    e = executable(tmp_path / "e", "int hw(void);\nint main(void) { return hw(); }\n",
                   libs=[str(opt_dir / name)])
    e = executable(tmp_path / "e", "int hw(void);\nint main(void) { return hw(); }\n",
                   libs=[f"-L{opt_dir}", f"-l:{name}"])
    conf = CONF_D / f"zz-soswap-{opt_dir.name}.conf"
    with restored_cache():
        try:
            conf.write_text(f"{opt_dir}\n")
            _ldconfig()
            assert run_program(e).status == 3
            res, _ = predict(e)
            lib = by_name(res, name)
            assert lib.reason.rule == "cache" and lib.reason.subdir == "x86-64-v3"
            assert lib.path == f"{opt_dir}/glibc-hwcaps/x86-64-v3/{name}"
            assert_ldd_parity(e)
            r = subprocess.run([PROFILE.interpreter, "--glibc-hwcaps-mask", "x86-64-v2", str(e)],
                               capture_output=True, timeout=60)
            loader = Loader(PROFILE, Environment.from_environ(env_with()).replace(hwcaps_mask=("x86-64-v2",)))
            got = by_name(loader.load(str(e)), name).path
            assert r.returncode == 2 and got == f"{opt_dir}/glibc-hwcaps/x86-64-v2/{name}"
        finally:
            conf.unlink(missing_ok=True)


# -- case 37: set-user-ID programs ------------------------------------------------------------------------


@contextlib.contextmanager
def _public_dir(parent: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="soswap-suid-", dir=parent))
    try:
        os.chmod(d, 0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _as_nobody(prog: Path, env: dict) -> subprocess.CompletedProcess:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is missing")
    return subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(prog)], env=env,
                          capture_output=True, text=True, timeout=60)


def _nobody_env(base: dict) -> Environment:
    import pwd

    pw = pwd.getpwnam("nobody")
    return Environment.from_environ(base, cwd="/").replace(uid=pw.pw_uid, euid=pw.pw_uid, gid=pw.pw_gid,
                                                           egid=pw.pw_gid)


def _suid_prog(root: Path, build: Path) -> Path:
    shared_lib(root / "lib" / "libs37.so", lib_source("s37"), soname="libs37.so")
    e = executable(build / "e", sources_needing("s37"), flags=rpath_flags("$ORIGIN/../lib", old_dtags=True),
                   libs=[f"-L{root / 'lib'}", "-ls37"])
    (root / "bin").mkdir(parents=True, exist_ok=True)
    target = root / "bin" / "e"
    shutil.copy(e, target)
    os.chown(target, 0, 0)
    os.chmod(target, 0o4755)
    for p in (root, root / "lib", root / "bin"):
        os.chmod(p, 0o755)
    os.chmod(root / "lib" / "libs37.so", 0o755)
    return target


@requires_root
def test_case37_setuid_program_ignores_untrusted_origin_and_library_path(tmp_path: Path) -> None:
    with _public_dir("/tmp") as root:
        prog = _suid_prog(root, tmp_path)
        env = env_with(LD_LIBRARY_PATH=str(root / "lib"))
        real = _as_nobody(prog, env)
        loader = Loader(PROFILE, _nobody_env(env))
        res = loader.load(str(prog))
        bound = loader.bind(res)
        assert res.secure
        assert real.returncode == 127 and bound.fatal is not None
        assert bound.fatal.line in real.stderr.splitlines()
        # run by root, the same program is not in secure mode: $ORIGIN works
        assert run_program(prog).status == 0
        assert predict(prog)[1].fatal is None


@requires_root
def test_case37_origin_under_a_trusted_directory_is_honoured(tmp_path: Path) -> None:
    with _public_dir(str(MULTIARCH)) as root:
        prog = _suid_prog(root, tmp_path)
        env = env_with(LD_PRELOAD=f"{root}/lib/libs37.so")  # contains a slash: dropped in secure mode
        real = _as_nobody(prog, env)
        loader = Loader(PROFILE, _nobody_env(env))
        res = loader.load(str(prog))
        bound = loader.bind(res)
        assert res.secure and real.returncode == 0 and bound.fatal is None
        assert not [o for o in res.objects if o.kind == "preload"]
        assert real.stderr == ""
        assert by_name(res, "libs37.so").reason.rule == "rpath"


@requires_root
def test_case37_dst_in_needed_is_refused(tmp_path: Path) -> None:
    with _public_dir("/tmp") as root:
        lib_dir = root / "$ORIGIN"
        shared_lib(lib_dir / "libdst.so", lib_source("dst"))
        write(root / "e.c", sources_needing("dst"))
        run_cc(["-o", "e", "e.c", "$ORIGIN/libdst.so"], cwd=root)
        shutil.copy(lib_dir / "libdst.so", root / "libdst.so")
        prog = root / "e"
        assert run_program(prog).status == 0  # not secure: $ORIGIN/libdst.so is next to the program
        os.chmod(prog, 0o4755)
        os.chmod(root / "libdst.so", 0o755)
        real = _as_nobody(prog, env_with())
        loader = Loader(PROFILE, _nobody_env(env_with()))
        res = loader.load(str(prog))
        assert res.fatal is not None and res.fatal.kind == "dst"
        assert real.returncode == 127 and res.fatal.line in real.stderr.splitlines()


@requires_root
@pytest.mark.parametrize("flag", ["--filter", "--auxiliary"])
def test_case37_dst_in_a_filter_is_refused_too(tmp_path: Path, flag: str) -> None:
    """expand_dst refuses a token in DT_FILTER and DT_AUXILIARY as in DT_NEEDED, before the catch that forgives
    a missing auxiliary filtee: both programs die (the filtee was loaded)."""
    with _public_dir("/tmp") as root:
        shared_lib(root / "lib" / "libx.so", "int x(void) { return 0; }\n", soname="libx.so")
        shared_lib(root / "lib" / "libfilt.so", "int x(void) { return 1; }\n", soname="libfilt.so",
                   flags=[f"-Wl,{flag},$ORIGIN/libx.so"])
        prog = executable(root / "e", "int x(void);\nint main(void) { return x(); }\n",
                          flags=[f"-Wl,-rpath,{root / 'lib'}"], libs=[f"-L{root / 'lib'}", "-lfilt"])
        assert run_program(prog).status == 0  # not secure: the filtee's x() is called
        os.chmod(prog, 0o4755)
        for p in (root, root / "lib"):
            os.chmod(p, 0o755)
        real = _as_nobody(prog, env_with())
        loader = Loader(PROFILE, _nobody_env(env_with()))
        res = loader.load(str(prog))
        assert res.secure and res.fatal is not None and res.fatal.kind == "dst"
        assert real.returncode == 127 and res.fatal.line in real.stderr.splitlines(), real.stderr



@requires_root
@pytest.mark.skipif(shutil.which("setcap") is None, reason="setcap (libcap2-bin) is needed")
def test_file_capabilities_make_a_program_secure_for_other_users(tmp_path: Path) -> None:
    """No set-ID bit, but file capabilities: the kernel sets AT_SECURE for a caller that gains them (not root),
    and $ORIGIN in RUNPATH outside a trusted directory is ignored."""
    with _public_dir("/tmp") as root:
        prog = _suid_prog(root, tmp_path)
        os.chmod(prog, 0o755)  # no set-user-ID bit
        r = subprocess.run(["setcap", "cap_net_bind_service+ep", str(prog)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"setcap failed here: {r.stderr.strip()}")
        env = env_with()
        real = _as_nobody(prog, env)
        loader = Loader(PROFILE, _nobody_env(env))
        res = loader.load(str(prog))
        bound = loader.bind(res)
        assert res.secure and real.returncode == 127 and bound.fatal is not None
        assert bound.fatal.line in real.stderr.splitlines()
        assert run_program(prog).status == 0 and predict(prog)[1].fatal is None  # root gains nothing
