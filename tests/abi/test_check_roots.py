"""Processes under another root directory (a chroot; a chroot in a mount namespace of its own, as containers
are) checked as consumers: with the root's own ld.so, libc, search directories and paths (QA round: they were
judged with the host's, refusing what runs and accepting what fails, or left out as "not checked"). The
oracle: the program started again in its root after the replacement."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from support.build import executable, requires_cc, requires_root, shared_lib

pytestmark = [requires_cc, requires_root,
              pytest.mark.skipif(shutil.which("chroot") is None or os.uname().machine != "x86_64",
                                 reason="chroot on x86_64 is needed")]
ROOT = Path(__file__).resolve().parents[2]
LIBDIR = "/lib/x86_64-linux-gnu"
PROGRAM = r"""
#include <stdio.h>
#include <unistd.h>
int qa_f(void);
int main(int argc, char **argv) {
    if (argc > 1) { FILE *f = fopen(argv[1], "w"); if (f) fclose(f); }
    if (argc > 2) { printf("%d\n", qa_f()); return 0; }
    for (;;) pause();
}
"""


def _root(tmp: Path) -> Path:
    """A minimal root: the host's ld.so and libc (copied), a program in /opt/qa/bin that finds libqa.so.1 in
    /opt/qa/lib through $ORIGIN, and libdeponly.so.1 that only this root has (in its system directory)."""
    root = tmp / "root"
    (root / LIBDIR.lstrip("/")).mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    ldso = os.path.realpath("/lib64/ld-linux-x86-64.so.2")
    shutil.copy(ldso, root / LIBDIR.lstrip("/") / "ld-linux-x86-64.so.2")
    os.symlink(f"{LIBDIR}/ld-linux-x86-64.so.2", root / "lib64/ld-linux-x86-64.so.2")
    shutil.copy(os.path.realpath(f"{LIBDIR}/libc.so.6"), root / LIBDIR.lstrip("/") / "libc.so.6")
    shared_lib(root / "usr/lib/x86_64-linux-gnu/libdeponly.so.1", "int dep_only(void) { return 7; }\n",
               soname="libdeponly.so.1")
    lib = shared_lib(root / "opt/qa/lib/libqa.so.1", "int qa_f(void) { return 1; }\n", soname="libqa.so.1")
    # an absolute RUNPATH: $ORIGIN needs /proc/self/exe (_dl_get_origin), and this root has no /proc
    executable(root / "opt/qa/bin/qaprog", PROGRAM, libs=[str(lib)], flags=["-Wl,-rpath,/opt/qa/lib"])
    return root


def _news(tmp: Path, root: Path) -> Dict[str, Path]:
    """NEW versions of libqa.so.1: one needing libdeponly.so.1 (only in the root: loads there), one needing
    libhostdep.so.1 through an absolute RUNPATH of a host directory (not in the root: fails there)."""
    built = tmp / "build"
    dep = shared_lib(built / "libdeponly.so.1", "int dep_only(void) { return 7; }\n", soname="libdeponly.so.1")
    hostdeps = tmp / "hostdeps"
    hostdep = shared_lib(hostdeps / "libhostdep.so.1", "int host_dep(void) { return 9; }\n",
                         soname="libhostdep.so.1")
    return {
        "root-only dependency": shared_lib(built / "a" / "libqa.so.1",
                                           "int dep_only(void);\nint qa_f(void) { return dep_only(); }\n",
                                           soname="libqa.so.1", libs=[str(dep)]),
        "host-only dependency": shared_lib(built / "b" / "libqa.so.1",
                                           "int host_dep(void);\nint qa_f(void) { return host_dep(); }\n",
                                           soname="libqa.so.1", libs=[str(hostdep), f"-Wl,-rpath,{hostdeps}"]),
    }


def _soswap(args: List[str], tmp: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env.update(PYTHONPATH=str(ROOT / "src"), SOSWAP_STATE_DIR=str(tmp / "state"), SOSWAP_CACHE_DIR=str(tmp / "cache"))
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def _check(args: List[str], tmp: Path) -> dict:
    r = _soswap(["check", "--json", *args], tmp)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _install_dry_run(tmp: Path, *paths: Path) -> subprocess.CompletedProcess:
    return _soswap(["install", "--dry-run", "--no-report", *map(str, paths)], tmp)


def _runs_after_replacement(root: Path, new: Path) -> bool:
    """The oracle: NEW installed at its place, the program started again in its root."""
    target = root / "opt/qa/lib/libqa.so.1"
    kept = target.with_name("libqa.so.1.kept")
    shutil.copy2(target, kept)
    try:
        shutil.copy(new, target)
        r = subprocess.run(["chroot", str(root), "/opt/qa/bin/qaprog", "/ready-again", "call"], capture_output=True,
                           text=True, timeout=30)
        return r.returncode == 0
    finally:
        os.replace(kept, target)


@pytest.mark.parametrize("namespace", [False, True], ids=["chroot", "chroot-in-own-mount-namespace"])
def test_a_process_under_another_root_is_checked_with_that_roots_loader(tmp_path: Path, procs,
                                                                      namespace: bool) -> None:
    if namespace and shutil.which("unshare") is None:
        pytest.skip("unshare is needed")
    root = _root(tmp_path)
    news = _news(tmp_path, root)
    argv = ["chroot", str(root), "/opt/qa/bin/qaprog", "/ready"]
    if namespace:
        argv = ["unshare", "-m", "--propagation", "private", *argv]
    p = procs.start(argv, wait_for_file=root / "ready")
    target = str(root / "opt/qa/lib/libqa.so.1")
    for what, new in news.items():
        doc = _check(["--pid", str(p.pid), "--", str(new), target], tmp_path)
        (c,) = doc["consumers"]
        expected = "compatible" if what == "root-only dependency" else "incompatible"
        assert (c["pid"], c["path"], c["verdict"]) == (p.pid, "/opt/qa/bin/qaprog", expected), (what, c)
        assert "checked with its own ld.so" in c["note"], c
        here = f"/proc/{p.pid}/root" if namespace else str(root)
        assert c["root"] == here, c
        # NEW itself is loaded where TARGET is, in that root (the host has no libdeponly.so.1)
        assert (doc["self"]["verdict"], doc["self"]["root"]) == (expected, here), doc["self"]
        assert _runs_after_replacement(root, new) == (expected == "compatible"), what
        if expected == "incompatible":
            assert c["problems"][0]["message"] == (
                "/opt/qa/bin/qaprog: error while loading shared libraries: libhostdep.so.1: cannot open shared "
                "object file: No such file or directory"), c


def test_origin_of_a_program_in_a_root_without_proc(tmp_path: Path) -> None:
    """ld.so takes the main program's $ORIGIN from readlink("/proc/self/exe") (_dl_get_origin), else from
    LD_ORIGIN_PATH, else it is unknown and the RUNPATH element is dropped: in a chroot without /proc a program
    whose libraries are in $ORIGIN/../lib does not start. The loader emulation of such a root (what the check
    of a process there uses) says the same, with the same line."""
    from soswap.loader import Environment, Loader, Profile

    root = tmp_path / "root"
    _root(tmp_path)
    lib = root / "opt/qa/lib/libqa.so.1"
    executable(root / "opt/qa/bin/origin", PROGRAM, libs=[str(lib)], flags=["-Wl,-rpath,$ORIGIN/../lib"])
    real = subprocess.run(["chroot", str(root), "/opt/qa/bin/origin", "/ready", "call"], capture_output=True,
                          text=True, timeout=30, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert real.returncode == 127, real
    profile = Profile.detect(str(root))
    assert not os.path.lexists(os.path.join(profile.fs.host("/proc"), "self"))
    loader = Loader(profile.replace(proc_self_exe=False), Environment(cwd="/"))
    bound = loader.bind(loader.load("/opt/qa/bin/origin"), relocate=False)
    assert bound.fatal is not None and bound.fatal.line == real.stderr.strip(), (bound.fatal, real.stderr)
    given = subprocess.run(["chroot", str(root), "/opt/qa/bin/origin", "/ready", "call"], capture_output=True,
                           text=True, timeout=30,
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LD_ORIGIN_PATH": "/opt/qa/bin"})
    assert given.returncode == 0, given
    loader = Loader(profile.replace(proc_self_exe=False), Environment(cwd="/", origin_path="/opt/qa/bin"))
    assert loader.bind(loader.load("/opt/qa/bin/origin"), relocate=False).fatal is None


TWO = r"""
int qa_f(void);
int qb_f(void);
int main(int argc, char **argv) {
    (void)argc; FILE *f = fopen(argv[1], "w"); if (f) fclose(f);
    if (argc > 2) return qa_f() + qb_f() == 0;
    for (;;) pause();
}
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is needed")
def test_a_transaction_whose_consumer_lives_in_a_container(tmp_path: Path, procs) -> None:
    """install libqa.so.1 libqb.so.1 DIR where the new libqa needs a function only the new libqb has: a
    consumer in a mount namespace of its own was checked with the new libqa and the *old* libqb (the other
    file of the transaction was put in place for plain chroots only), and the install refused (QA regression
    round)."""
    root = _root(tmp_path)
    lib = root / "opt/qa/lib"
    qb = shared_lib(lib / "libqb.so.1", "int qb_f(void) { return 1; }\n", soname="libqb.so.1")
    executable(root / "opt/qa/bin/two", "#include <stdio.h>\n#include <unistd.h>\n" + TWO,
               libs=[str(lib / "libqa.so.1"), str(qb)], flags=["-Wl,-rpath,/opt/qa/lib"])
    new = tmp_path / "new"
    new_qb = shared_lib(new / "libqb.so.1", "int qb_f(void) { return 2; }\nint qb_new(void) { return 3; }\n",
                        soname="libqb.so.1")
    shared_lib(new / "libqa.so.1", "int qb_new(void);\nint qa_f(void) { return qb_new(); }\n",
               soname="libqa.so.1", libs=[str(new_qb)])
    p = procs.start(["unshare", "-m", "--propagation", "private", "chroot", str(root), "/opt/qa/bin/two",
                     "/ready"], wait_for_file=root / "ready")
    r = _install_dry_run(tmp_path, new / "libqa.so.1", new / "libqb.so.1", lib)
    assert r.returncode == 0 and p.pid, r.stdout + r.stderr


@requires_cc
def test_a_daemon_that_chroots_itself_is_checked_as_a_host_process(tmp_path: Path, procs) -> None:
    """Started from the host, then chroot() into a directory that holds its own program: its libraries are the
    host's (mapped before the chroot), and a restart runs it from the host again. It was checked with the
    chroot's libraries (QA regression round)."""
    root = _root(tmp_path)
    news = _news(tmp_path, root)
    code = (r"#include <stdio.h>" "\n" r"#include <unistd.h>" "\n" "int qa_f(void);\n"
            "int main(int argc, char **argv) { if (argc > 5) return qa_f();\n"
            "  if (chroot(argv[1]) || chdir(\"/\")) return 2;\n"
            "  FILE *f = fopen(\"/ready\", \"w\"); if (f) fclose(f); for (;;) pause(); }\n")
    host_lib = shared_lib(tmp_path / "hostlib" / "libqa.so.1", "int qa_f(void) { return 1; }\n",
                          soname="libqa.so.1")
    daemon = executable(root / "opt/qa/bin/selfchroot", code, libs=[str(host_lib)],
                        flags=[f"-Wl,-rpath,{host_lib.parent}"])
    p = procs.start([daemon, str(root)], wait_for_file=root / "ready")
    # TARGET: the host library it maps; NEW needs libhostdep.so.1, found on the host only
    doc = _check(["--pid", str(p.pid), "--", str(news["host-only dependency"]), str(host_lib)], tmp_path)
    (c,) = doc["consumers"]
    assert (c["verdict"], c.get("root")) == ("compatible", None), c


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare is needed")
def test_a_transaction_that_adds_a_file_in_the_consumers_root(tmp_path: Path, procs) -> None:
    """The new libqa needs libqc.so.1, which the same transaction adds next to it: in a container the added
    file was never put in place (it has no identity yet) and the install was refused (second regression
    round). Its place is found by its directory's."""
    root = _root(tmp_path)
    lib = root / "opt/qa/lib"
    p = procs.start(["unshare", "-m", "--propagation", "private", "chroot", str(root), "/opt/qa/bin/qaprog",
                     "/ready"], wait_for_file=root / "ready")
    new = tmp_path / "new"
    qc = shared_lib(new / "libqc.so.1", "int qc_f(void) { return 5; }\n", soname="libqc.so.1")
    shared_lib(new / "libqa.so.1", "int qc_f(void);\nint qa_f(void) { return qc_f(); }\n",
               soname="libqa.so.1", libs=[str(qc), "-Wl,-rpath,/opt/qa/lib"])
    r = _install_dry_run(tmp_path, new / "libqa.so.1", new / "libqc.so.1", lib)
    assert r.returncode == 0 and p.pid, (r.stdout + r.stderr)[-3000:]


JIT = r"""
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int qa_f(void);
int main(int argc, char **argv) {
    int fd = memfd_create("jit", 0);
    if (fd < 0 || ftruncate(fd, 4096) || mmap(0, 4096, PROT_READ | PROT_EXEC, MAP_SHARED, fd, 0) == MAP_FAILED)
        return 2;
    if (argc > 5) return qa_f();
    FILE *f = fopen(argv[1], "w"); if (f) fclose(f);
    for (;;) pause();
}
"""


def test_jit_code_is_no_sign_of_a_program_started_outside_its_root(tmp_path: Path, procs) -> None:
    """An executable memfd mapping (JIT code) looked like code mapped from outside the chroot: the process
    was checked as a host process, with the host's loader (second regression round)."""
    root = _root(tmp_path)
    news = _news(tmp_path, root)
    executable(root / "opt/qa/bin/jit", JIT, libs=[str(root / "opt/qa/lib/libqa.so.1")],
               flags=["-Wl,-rpath,/opt/qa/lib"])
    p = procs.start(["chroot", str(root), "/opt/qa/bin/jit", "/ready"], wait_for_file=root / "ready")
    assert "/memfd:jit" in Path(f"/proc/{p.pid}/maps").read_text()
    doc = _check(["--pid", str(p.pid), "--", str(news["root-only dependency"]), str(root / "opt/qa/lib/libqa.so.1")],
                 tmp_path)
    (c,) = doc["consumers"]
    assert (c["verdict"], c.get("root")) == ("compatible", str(root)), c


VER_2 = "VER_1 { local: *; };\nVER_2 { global: ver; } VER_1;\n"


def test_new_itself_is_checked_in_each_root_its_consumers_live_in(tmp_path: Path, procs) -> None:
    """Consumers in two chroots that share TARGET's directory (a bind mount): NEW itself was loaded with the
    host's libraries, and a NEW needing what only the roots have was refused (second regression round). Here
    NEW's RUNPATH names a directory that holds libver.so.1 with node VER_2 in the roots, and with VER_1 only on
    the host."""
    deps = tmp_path / "deps"
    shared_lib(deps / "libver.so.1", "int ver(void) { return 1; }\n", soname="libver.so.1",
               version_script="VER_1 { global: ver; local: *; };")
    roots = []
    for name in ("a", "b"):
        here = tmp_path / name
        here.mkdir()
        root = _root(here)
        shared_lib(root / str(deps).lstrip("/") / "libver.so.1", "int ver(void) { return 2; }\n",
                   soname="libver.so.1", version_script=VER_2)
        roots.append(root)
    shared = roots[1] / "opt/qa/lib"
    shutil.rmtree(shared)
    shared.mkdir()
    subprocess.run(["mount", "--bind", str(roots[0] / "opt/qa/lib"), str(shared)], check=True)
    try:
        ps = [procs.start(["chroot", str(r), "/opt/qa/bin/qaprog", "/ready"], wait_for_file=r / "ready")
              for r in roots]
        root_ver = shared_lib(tmp_path / "verbuild" / "libver.so.1", "int ver(void) { return 2; }\n",
                              soname="libver.so.1", version_script=VER_2)
        new = shared_lib(tmp_path / "new" / "libqa.so.1", "int ver(void);\nint qa_f(void) { return ver(); }\n",
                         soname="libqa.so.1", libs=[str(root_ver), f"-Wl,-rpath,{deps}"])
        args = [a for p in ps for a in ("--pid", str(p.pid))]
        doc = _check([*args, "--", str(new), str(roots[0] / "opt/qa/lib/libqa.so.1")], tmp_path)
        assert [c["verdict"] for c in doc["consumers"]] == ["compatible", "compatible"], doc["consumers"]
        assert doc["self"]["verdict"] == "compatible" and doc["self"]["root"] in map(str, roots), doc["self"]
        assert doc["verdict"] == "compatible"
    finally:
        procs.stop_all()
        subprocess.run(["umount", str(shared)], capture_output=True)


FD_CODE = JIT.replace('int fd = memfd_create("jit", 0);\n    if (fd < 0 || ftruncate(fd, 4096) || mmap(',
                      'int fd = 3;\n    if (mmap(')


def test_code_mapped_from_a_file_passed_in_from_outside_says_nothing_of_where_it_started(tmp_path: Path,
                                                                                      procs) -> None:
    """A file outside the chroot, open on an inherited descriptor and mapped executable, made a process started
    in the chroot look like a daemon that chroot()ed itself: it was checked with the host's loader (third
    regression round). Where its dynamic loader comes from decides."""
    root = _root(tmp_path)
    news = _news(tmp_path, root)
    executable(root / "opt/qa/bin/fdcode", FD_CODE, libs=[str(root / "opt/qa/lib/libqa.so.1")],
               flags=["-Wl,-rpath,/opt/qa/lib"])
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\xc3" * 4096)
    p = procs.start(["bash", "-c", f'exec 3<"{outside}"; exec chroot "{root}" /opt/qa/bin/fdcode /ready'],
                    wait_for_file=root / "ready")
    assert str(outside) in Path(f"/proc/{p.pid}/maps").read_text()
    doc = _check(["--pid", str(p.pid), "--", str(news["root-only dependency"]), str(root / "opt/qa/lib/libqa.so.1")],
                 tmp_path)
    (c,) = doc["consumers"]
    assert (c["verdict"], c.get("root")) == ("compatible", str(root)), c
