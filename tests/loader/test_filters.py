"""DT_FILTER and DT_AUXILIARY (dl-deps.c): the filtee goes before its filter in the search list and in the chain
of loaded objects (what ldd prints); in trace mode a missing filtee is a "not found" entry there, while the
program itself dies of a missing DT_FILTER filtee and ignores a missing DT_AUXILIARY one. ``ldd``, ``ldd -r``
and running the program are the oracles."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from loader.helpers import assert_ldd_parity, assert_run_prediction, env_with, make_loader, model_ldd, predict, real_ldd
from soswap.elf import ElfFile
from support.build import executable, requires_cc, shared_lib

SRC = str(Path(__file__).resolve().parents[2] / "src")

pytestmark = requires_cc

X = "int x(void) { return 0; }\n"
Y = "int y(void) { return 0; }\n"
MAIN_X = "int x(void);\nint main(void) { return x(); }\n"


def _filters(tmp_path: Path, *flags: str, needs: List[str] = ()) -> Path:  # type: ignore[assignment]
    """A program that calls x() from libfilt.so (built with ``flags``: --filter/--auxiliary), found through
    RUNPATH $ORIGIN, needing ``needs`` after libfilt.so; the filtees libx.so/liby.so are in lib/."""
    shared_lib(tmp_path / "lib" / "libx.so", X, soname="libx.so")
    shared_lib(tmp_path / "lib" / "liby.so", Y, soname="liby.so")
    shared_lib(tmp_path / "libfilt.so", X, soname="libfilt.so", flags=list(flags))
    return executable(tmp_path / "prog", MAIN_X, flags=["-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags",
                                                        "-Wl,--no-as-needed"],
                      libs=[f"-L{tmp_path}", "-lfilt", f"-L{tmp_path / 'lib'}", *[f"-l{n}" for n in needs]])


@pytest.mark.parametrize("flag", ["--filter", "--auxiliary"])
@pytest.mark.parametrize("found", [False, True])
def test_one_filtee_found_or_missing(tmp_path: Path, flag: str, found: bool) -> None:
    prog = _filters(tmp_path, f"-Wl,{flag},libx.so")
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "lib")) if found else None
    for relocs in (None, "-r"):
        out = assert_ldd_parity(prog, env=env, flag=relocs)
    assert out.status == 0
    lines = out.stdout.splitlines()
    at = [n for n, line in enumerate(lines) if line.startswith("\tlibx.so =>")]
    assert at and lines[at[0] + 1].startswith("\tlibfilt.so =>")  # right before its filter
    real = assert_run_prediction(prog, env=env)
    assert (real.status == 127) == (flag == "--filter" and not found)
    if found:
        res, _ = predict(prog, env=env)
        names = [o.name for o in res.objects]
        assert names.index("libx.so") + 1 == names.index("libfilt.so")
        filt = next(o for o in res.objects if o.name == "libfilt.so")
        assert filt.needed_names == ("libx.so",)  # the tree's label for the filtee


def test_two_filtees_keep_their_order_before_the_filter(tmp_path: Path) -> None:
    prog = _filters(tmp_path, "-Wl,--auxiliary,libx.so", "-Wl,--auxiliary,liby.so")  # ld keeps one --filter
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "lib"))
    out = assert_ldd_parity(prog, env=env)
    order = [line.split()[0] for line in out.stdout.splitlines()]
    assert order.index("libx.so") < order.index("liby.so") < order.index("libfilt.so")
    assert_ldd_parity(prog, flag="-r", env=env)
    assert assert_ldd_parity(prog).stdout.count("=> not found") == 2  # both missing
    assert_run_prediction(prog, env=env)


@pytest.mark.parametrize("needs", [["x"], ["y", "x"]])
def test_a_filtee_the_program_also_needs_later_moves_before_the_filter(tmp_path: Path, needs: List[str]) -> None:
    """libx.so is already in the list behind libfilt.so (a DT_NEEDED of the program after it): dl-deps.c moves
    it before the filter, in the search list and in the chain."""
    prog = _filters(tmp_path, "-Wl,--filter,libx.so", needs=needs)
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "lib"))
    for relocs in (None, "-r"):
        assert_ldd_parity(prog, env=env, flag=relocs)
    assert_run_prediction(prog, env=env)
    res, _ = predict(prog, env=env)
    names = [res.objects[i].name for i in res.scope]
    assert names.index("libx.so") < names.index("libfilt.so")


def test_a_filter_library_given_to_ldd(tmp_path: Path) -> None:
    """ldd of the filter library itself: no DT_NEEDED, so "statically linked", even with its filtee missing."""
    _filters(tmp_path, "-Wl,--filter,libx.so")
    out = assert_ldd_parity(tmp_path / "libfilt.so")
    assert out.status == 0


def _soswap(*args: str) -> subprocess.CompletedProcess:
    """The CLI in a process of its own, bounded in time and memory: a loop in the model would hang CI (or fill
    the machine's memory) rather than fail the test."""
    return subprocess.run([sys.executable, "-m", "soswap", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": SRC},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)))


@pytest.mark.parametrize("ring", [2, 3])
def test_filters_that_filter_one_another_crash_ld_so(tmp_path: Path, ring: int) -> None:
    """lib0 filters lib1, which filters lib2 ... which filters lib0: each walk moves the next one before the one
    walked, which walks it again, for ever (dl-deps.c), an alloca each turn: ld.so dies of SIGSEGV with nothing
    printed, ldd prints nothing for the program and exits 1. soswap predicts it, and does not loop itself."""
    lib = tmp_path / "lib"
    for k in range(ring):
        tag = "--filter" if k % 2 == 0 else "--auxiliary"
        shared_lib(lib / f"lib{k}.so", f"int f{k}(void) {{ return {k}; }}\n", soname=f"lib{k}.so",
                   flags=[f"-Wl,{tag},lib{(k + 1) % ring}.so"])
    prog = executable(tmp_path / "prog", "int f0(void);\nint main(void) { return f0(); }\n",
                      flags=["-Wl,-rpath,$ORIGIN/lib", "-Wl,--disable-new-dtags", "-Wl,--no-as-needed"],
                      libs=[f"-L{lib}", *[f"-l{k}" for k in range(ring)]])
    r = _soswap("tree", str(prog))  # first the CLI, bounded
    assert "fails at startup: ld.so crashes (SIGSEGV, stack overflow): the filters of" in r.stdout, r.stdout
    assert "exit status 139" in r.stdout and r.returncode == 1
    real = assert_run_prediction(prog)
    assert real.status == -signal.SIGSEGV
    for relocs in (None, "-r"):
        out = assert_ldd_parity(prog, flag=relocs)
        assert (out.stdout, out.status) == ("", 1)


def test_a_filter_ring_with_a_library_not_found_ends_ldd_only_when_its_stack_does(tmp_path: Path) -> None:
    """In trace mode a library not found is no error: lib0 of the ring needs one, and each time the ring walks
    lib0 again, ``_dl_map_object`` searches for it again (it skips the objects it faked) and appends a new
    "not found" entry. The list never repeats and every turn is slower than the last: with the default 8 MiB
    stack ldd ran for 9 minutes here. Under a 256 KiB stack ld.so dies of SIGSEGV in a fraction of a second,
    printing nothing, and ldd exits 1: soswap predicts that end at once. The program itself stops at the
    missing library (not found is fatal outside trace mode)."""
    stub = tmp_path / "stub"
    shared_lib(stub / "libgone.so", "int gone(void) { return 0; }\n", soname="libgone.so")
    lib = tmp_path / "lib"
    shared_lib(lib / "lib0.so", "int f0(void) { return 0; }\n", soname="lib0.so",
               flags=["-Wl,--filter,lib1.so", "-Wl,--no-as-needed"], libs=[f"-L{stub}", "-lgone"])
    shared_lib(lib / "lib1.so", "int f1(void) { return 1; }\n", soname="lib1.so", flags=["-Wl,--auxiliary,lib0.so"])
    prog = executable(tmp_path / "prog", "int f0(void);\nint main(void) { return f0(); }\n",
                      flags=["-Wl,-rpath,$ORIGIN/lib", "-Wl,--disable-new-dtags", "-Wl,--no-as-needed"],
                      libs=[f"-L{lib}", "-l0", "-l1"])
    (stub / "libgone.so").unlink()
    small = 256 * 1024
    for flag in ([], ["-r"]):
        r = subprocess.run(["ldd", *flag, str(prog)], capture_output=True, text=True, timeout=60,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_STACK, (small, small)))
        model = _soswap("tree", "--ldd", *flag, str(prog))
        assert (r.stdout, r.returncode) == ("", 1), r
        assert (model.stdout, model.stderr, model.returncode) == (r.stdout, r.stderr, r.returncode)
    res = make_loader().load(str(prog), trace=True, argv0=str(prog))
    assert res.fatal is not None and res.fatal.kind == "crash" and "the filters of" in res.fatal.line
    real = assert_run_prediction(prog)
    assert real.status == 127 and "libgone.so: cannot open shared object file" in real.stderr


# -- objects linked before the main map ----------------------------------------------------------------------
# dl-deps.c links a filtee right before its filter: a filtee of the FILE itself goes before the main map, off
# the chain _dl_map_object searches from (_ns_loaded), and the main map of an explicit ld.so run has no file
# identity (_dl_map_object_from_fd). Such an object is never found again: a later request maps another copy.


def _filter_file(tmp_path: Path, flag: str, filtee_src: str = X) -> Path:
    """libfilt.so, a FILE with ``flag`` (--filter/--auxiliary) libx.so, that also needs libdep.so, which needs
    libx.so: all three found through libfilt.so's RUNPATH."""
    d = tmp_path / "d"
    x = shared_lib(d / "libx.so", filtee_src, soname="libx.so")
    dep = shared_lib(d / "libdep.so", "int x(void);\nint dep(void) { return x(); }\n", soname="libdep.so",
                     libs=[str(x)], flags=[f"-Wl,-rpath,{d}"])
    return shared_lib(d / "libfilt.so", X, soname="libfilt.so", libs=[str(dep)],
                      flags=[f"-Wl,{flag},libx.so", f"-Wl,-rpath,{d}", "-Wl,--no-as-needed"])


@pytest.mark.parametrize("flag", ["--filter", "--auxiliary"])
def test_a_filtee_of_the_file_asked_for_again_is_mapped_twice(tmp_path: Path, flag: str) -> None:
    """libx.so, filtee of the FILE, lies before the main map; libdep.so's DT_NEEDED libx.so maps a second copy,
    which ldd lists (the first stays unlisted). soswap had found the first again: no libx.so line."""
    lib = _filter_file(tmp_path, flag)
    for relocs in (None, "-r"):
        out = assert_ldd_parity(lib, flag=relocs)
    assert out.stdout.count("\tlibx.so => ") == 1
    res, _ = predict(lib)
    assert [o.name for o in res.objects].count("libx.so") == 2


def test_a_tls_filtee_before_the_main_map_fails_init_tls(tmp_path: Path) -> None:
    """The filtee before the main map has thread-local storage: init_tls counts the TLS modules from the main map,
    misses it, and ld.so aborts after the version check (rtld.c: ``i == GL(dl_tls_max_dtv_idx)``)."""
    lib = _filter_file(tmp_path, "--auxiliary", "__thread int t;\nint x(void) { return t; }\n")
    for relocs in (None, "-r"):
        out = assert_ldd_parity(lib, flag=relocs)
    assert "init_tls: Assertion `i == GL(dl_tls_max_dtv_idx)' failed!" in out.stdout
    r = _soswap("tree", "--no-cache", "--json", str(lib))
    fatal = json.loads(r.stdout)["results"][0]["fatal"]
    assert fatal["kind"] == "assertion" and "init_tls" in fatal["message"]


def test_filters_before_the_main_map_that_ask_for_each_other_run_out_of_mappings(tmp_path: Path) -> None:
    """libw1.so (the FILE) filters libw0.so, which filters libw1.so.1 (libw1.so by another name): neither is found
    again before the main map, so each turn maps two new copies, until the process has no mapping left and the
    search list cannot be allocated (ld.so: 15,600 copies, 7.6 s here). soswap predicts it at once (a bound of
    4,096 objects); the copies it drew made the tree 4,096 levels deep, now cut at 64."""
    d = tmp_path / "d"
    w1 = shared_lib(d / "libw1.so", '#include <stdio.h>\nint x(void) { return puts("x"); }\n', soname="libw1.so",
                    flags=["-Wl,--filter,libw0.so", f"-Wl,-rpath,{d}"])  # DT_NEEDED libc.so.6: a tree is drawn
    shared_lib(d / "libw0.so", Y, soname="libw0.so", flags=["-Wl,--filter,libw1.so.1", f"-Wl,-rpath,{d}"])
    os.symlink("libw1.so", d / "libw1.so.1")
    # Where the mappings run out decides the message: the search list's allocation (seen from a shell), or the
    # copy whose segment could not be mapped, when that allocation still fits (seen under pytest: longer paths)
    want, got = real_ldd(w1), model_ldd(w1)
    assert want.status == got.status == 1 and want.stderr == got.stderr == ""
    assert want.stdout.endswith(("error while loading shared libraries: cannot allocate symbol search list: "
                                 "Cannot allocate memory\n",
                                 "error while loading shared libraries: libw1.so.1: failed to map segment from "
                                 "shared object\n"))
    assert got.stdout == f"{w1}: error while loading shared libraries: cannot allocate symbol search list: " \
                         "Cannot allocate memory\n"
    r = _soswap("tree", "--no-cache", str(w1))
    assert r.returncode == 1 and "cannot allocate symbol search list" in r.stdout
    assert max(map(len, r.stdout.splitlines())) < 1000 and "not drawn below 64 levels" in r.stdout


def test_ldd_r_reports_what_a_filtee_of_the_file_cannot_resolve(tmp_path: Path) -> None:
    """libw1.so, filtee of the FILE libw0.so (so before the main map, and out of the version check), references
    d0, which the FILE no longer defines: ``ldd -r`` relocates it all the same and reports the symbol. (With a
    thread-local reference there instead, ld.so was seen dying of SIGSEGV: not modelled, docs/tree.md.)"""
    d = tmp_path / "d"
    stub = shared_lib(tmp_path / "stub" / "libw0.so", "int d0 = 1;\nint f0(void) { return 0; }\n", soname="libw0.so")
    shared_lib(d / "libw1.so", "extern int d0;\nint f1(void) { return d0; }\n", soname="libw1.so",
               libs=[str(stub)], flags=[f"-Wl,-rpath,{d}"])
    lib = shared_lib(d / "libw0.so", "int f0(void) { return 0; }\n", soname="libw0.so",
                     flags=["-Wl,--filter,libw1.so", f"-Wl,-rpath,{d}"])
    assert assert_ldd_parity(lib).status == 0
    out = assert_ldd_parity(lib, flag="-r")
    assert f"undefined symbol: d0\t({d / 'libw1.so'})" in out.stdout


@requires_cc
def test_ldd_r_dies_relocating_a_versioned_filtee_of_the_file(tmp_path: Path) -> None:
    """The same filtee with symbol versioning: never version-checked, it has no l_versions array, and its first
    relocation through a version index reads address 24 × ndx: ld.so dies of SIGSEGV (ldd: status 1, nothing
    after what it printed). soswap said "undefined symbol: d0" and status 0."""
    d = tmp_path / "d"
    stub = shared_lib(tmp_path / "stub" / "libw0.so", "int d0 = 1;\nint f0(void) { return 0; }\n", soname="libw0.so")
    shared_lib(d / "libw1.so", "extern int d0;\nint f1(void) { return d0; }\n", soname="libw1.so",
               version_script="V1 { global: f1; local: *; };", libs=[str(stub)], flags=[f"-Wl,-rpath,{d}"])
    lib = shared_lib(d / "libw0.so", "int f0(void) { return 0; }\n", soname="libw0.so",
                     flags=["-Wl,--filter,libw1.so", f"-Wl,-rpath,{d}"])
    out = assert_ldd_parity(lib, flag="-r")
    assert out.status == 1 and "undefined symbol" not in out.stdout, out
    assert assert_ldd_parity(lib, flag="-d").status == 1  # GLOB_DAT is relocated at once without -r too
    _res, bound = predict(lib)
    assert bound.fatal is not None and bound.fatal.kind == "crash" and bound.fatal.exit_status == 139, bound.fatal
    assert "no version array" in bound.fatal.message
    with ElfFile.open(sys.executable) as exe:
        rtld = exe.interpreter
    if rtld:  # the loader itself, run on the FILE as ldd does without tracing: the same fault
        assert subprocess.run([rtld, str(lib)], capture_output=True).returncode == -signal.SIGSEGV


@requires_cc
def test_a_versioned_lookup_reaching_a_filtee_of_the_file_hits_the_check_match_assertion(tmp_path: Path) -> None:
    """A filtee of the FILE is never version-checked, so ld.so gives it no l_versyms either, and check_match takes
    it as an object without versioning: a versioned reference whose version names it (libw2.so's f4@V4 from
    "libw4.so") reaches it first in the scope, and glibc < 2.41 aborts on its assertion. soswap said the program
    starts (fuzz_worlds --many --filters, seeds 344 and 349)."""
    d = tmp_path / "d"
    # no relocations of its own: nothing of it faults for want of l_versions
    w4 = shared_lib(d / "libw4.so", "int f4(void) { return 4; }\n", soname="libw4.so",
                    version_script="V4 { global: f4; local: *; };", flags=["-nostdlib"])
    # its own search finds a second copy of the same file: the filtee lies before the main map, where
    # _dl_map_object's name and inode matches do not look
    w2 = shared_lib(d / "libw2.so", "extern int f4(void);\nint (*p2)(void) = f4;\nint f2(void) { return f4(); }\n",
                    soname="libw2.so", libs=[str(w4)], flags=[f"-Wl,-rpath,{d}"])
    lib = shared_lib(d / "libw0.so", "int f0(void) { return 0; }\n", soname="libw0.so", libs=[str(w2)],
                     flags=["-Wl,--auxiliary,libw4.so", f"-Wl,-rpath,{d}", "-Wl,--no-as-needed"])
    res, bound = predict(lib)
    if res.profile.glibc_version >= (2, 41):
        pytest.skip("glibc 2.41 dropped the check_match assertion")
    out = assert_ldd_parity(lib, flag="-r")
    assert "check_match: Assertion" in out.stdout + out.stderr, out
    assert bound.fatal is not None and bound.fatal.kind == "assertion", bound.fatal
    with ElfFile.open(sys.executable) as exe:
        rtld = exe.interpreter
    if rtld:  # the loader itself, run on the FILE: the same abort
        run = subprocess.run([rtld, str(lib)], capture_output=True, text=True)
        assert run.returncode == 127 and "check_match: Assertion" in run.stderr, run
