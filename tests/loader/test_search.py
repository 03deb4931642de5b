"""The search order of ``_dl_map_object``: RPATH chain, LD_LIBRARY_PATH, RUNPATH, cache, system dirs, DSTs
(loader.md §(b) cases 1-14, 30-32). Each fixture is checked against ``ldd`` and, where the program's own
start differs from ldd's view, against running it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from loader.helpers import (
    PROFILE,
    assert_ldd_parity,
    assert_run_prediction,
    by_name,
    env_with,
    lib_source,
    model_ldd,
    predict,
    real_ldd,
    run_program,
    sources_needing,
)
from support.build import executable, requires_cc, rpath_flags, run_cc, shared_lib, write

pytestmark = requires_cc


def _ab(tmp: Path, *, exe_flags, exe_libs=("-la",), lib_a_flags=()) -> Path:
    """liba (needs libb) and libb in tmp/d; the program needs liba (and what exe_libs adds)."""
    d = tmp / "d"
    shared_lib(d / "libb.so", lib_source("b"), soname="libb.so")
    shared_lib(d / "liba.so", lib_source("a", calls=["b"]), soname="liba.so", libs=[f"-L{d}", "-lb"],
               flags=list(lib_a_flags))
    return executable(tmp / "e", sources_needing("a"), flags=list(exe_flags),
                      libs=[f"-L{d}", *exe_libs, "-Wl,--no-as-needed"])


def test_case01_runpath_is_not_inherited(tmp_path: Path) -> None:
    d = tmp_path / "d"
    e = _ab(tmp_path, exe_flags=rpath_flags(str(d)))
    out = assert_ldd_parity(e)
    assert "libb.so => not found" in out.stdout
    real = assert_run_prediction(e)
    assert real.status == 127 and "libb.so: cannot open shared object file" in real.stderr
    res, _ = predict(e)
    assert res.fatal is not None and res.fatal.kind == "not-found" and res.fatal.name == "libb.so"


def test_case02_rpath_is_inherited(tmp_path: Path) -> None:
    d = tmp_path / "d"
    e = _ab(tmp_path, exe_flags=rpath_flags(str(d), old_dtags=True))
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 0
    res, _ = predict(e)
    libb = by_name(res, "libb.so")
    assert libb.reason.rule == "rpath" and res.objects[libb.reason.owner].kind == "executable"


def test_case03_bfs_loads_libb_in_the_programs_context(tmp_path: Path) -> None:
    d = tmp_path / "d"
    # The program itself needs liba then libb: breadth-first, libb is found through the program's RUNPATH
    # before liba's own request is processed.
    shared_lib(d / "libb.so", lib_source("b"), soname="libb.so")
    shared_lib(d / "liba.so", lib_source("a", calls=["b"]), soname="liba.so", libs=[f"-L{d}", "-lb"])
    e = executable(tmp_path / "e", sources_needing("a", "b"), flags=rpath_flags(str(d)),
                   libs=[f"-L{d}", "-la", "-lb"])
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 0
    res, _ = predict(e)
    libb = by_name(res, "libb.so")
    assert libb.loader == 0 and libb.reason.rule == "runpath"


def test_case04_loaders_runpath_disables_the_rpath_chain(tmp_path: Path) -> None:
    d1, d3 = tmp_path / "d1", tmp_path / "d3"
    shared_lib(d1 / "libb.so", lib_source("b"), soname="libb.so")
    shared_lib(d3 / "liba.so", lib_source("a", calls=["b"]), soname="liba.so",
               libs=[f"-L{d1}", "-lb"], flags=rpath_flags("/nonexistent"))
    e = executable(tmp_path / "e", sources_needing("a"), flags=rpath_flags(str(d3), str(d1), old_dtags=True),
                   libs=[f"-L{d3}", "-la"])
    out = assert_ldd_parity(e)
    assert "libb.so => not found" in out.stdout
    assert assert_run_prediction(e).status == 127


def test_case05_rpath_of_the_grandparent(tmp_path: Path) -> None:
    b, c = tmp_path / "b", tmp_path / "c"
    shared_lib(c / "libgc.so", lib_source("gc"), soname="libgc.so")
    shared_lib(b / "libgb.so", lib_source("gb", calls=["gc"]), soname="libgb.so", libs=[f"-L{c}", "-lgc"])
    e = executable(tmp_path / "e", sources_needing("gb"), flags=rpath_flags(str(b), str(c), old_dtags=True),
                   libs=[f"-L{b}", "-lgb"])
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 0
    res, _ = predict(e)
    assert by_name(res, "libgc.so").reason.owner == 0


def test_case06_l_loader_chain(tmp_path: Path) -> None:
    b, c = tmp_path / "b", tmp_path / "c"
    shared_lib(c / "libgd.so", lib_source("gd"), soname="libgd.so")
    shared_lib(c / "libgc.so", lib_source("gc", calls=["gd"]), soname="libgc.so", libs=[f"-L{c}", "-lgd"])
    shared_lib(b / "libgb.so", lib_source("gb", calls=["gc"]), soname="libgb.so", libs=[f"-L{c}", "-lgc"],
               flags=rpath_flags(str(c), old_dtags=True))
    e = executable(tmp_path / "e", sources_needing("gb"), flags=rpath_flags(str(b)),
                   libs=[f"-L{b}", "-lgb", f"-Wl,-rpath-link,{c}"])
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 0
    res, _ = predict(e)
    gd = by_name(res, "libgd.so")
    # libgd was requested by libgc (no paths); it is found through libgb's RPATH, libgc's loader
    assert gd.reason.rule == "rpath" and res.objects[gd.reason.owner].name == "libgb.so"


@pytest.mark.parametrize("old_dtags, winner", [(False, "v2"), (True, "v1")])
def test_case07_08_ld_library_path_vs_runpath_and_rpath(tmp_path: Path, old_dtags: bool, winner: str) -> None:
    for v, value in (("v1", 1), ("v2", 2)):
        shared_lib(tmp_path / v / "libv.so", f"int v(void) {{ return {value}; }}\n", soname="libv.so")
    e = executable(tmp_path / "e", "int v(void);\nint main(void) { return v(); }\n",
                   flags=rpath_flags(str(tmp_path / "v1"), old_dtags=old_dtags),
                   libs=[f"-L{tmp_path / 'v1'}", "-lv"])
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "v2"))
    assert_ldd_parity(e, env=env)
    real = run_program(e, env=env)
    assert real.status == (2 if winner == "v2" else 1)
    res, _ = predict(e, env=env)
    assert by_name(res, "libv.so").path == f"{tmp_path / winner}/libv.so"


def test_case09_origin_of_a_library_reached_through_a_symlink(tmp_path: Path) -> None:
    real_dir, link_dir = tmp_path / "real", tmp_path / "link"
    shared_lib(real_dir / "libf.so", lib_source("f"), soname="libf.so")
    shared_lib(real_dir / "libg.so", lib_source("g", calls=["f"]), soname="libg.so",
               libs=[f"-L{real_dir}", "-lf"], flags=rpath_flags("$ORIGIN", old_dtags=True))
    link_dir.mkdir()
    os.symlink("../real/libg.so", link_dir / "libg.so")
    e = executable(tmp_path / "bin" / "e", sources_needing("g"), flags=rpath_flags("$ORIGIN/../link"),
                   libs=[f"-L{real_dir}", "-lg", f"-Wl,-rpath-link,{real_dir}"])
    out = assert_ldd_parity(e)
    assert "libf.so => not found" in out.stdout
    assert assert_run_prediction(e).status == 127
    res, _ = predict(e)
    # the directory of the name it was found under, not normalised and not resolved
    assert by_name(res, "libg.so").origin == f"{tmp_path}/bin/../link"


def test_case10_origin_of_the_program_through_a_symlink(tmp_path: Path) -> None:
    app = tmp_path / "app"
    shared_lib(app / "libg.so", lib_source("g"), soname="libg.so")
    e = executable(app / "e", sources_needing("g"), flags=rpath_flags("$ORIGIN"), libs=[f"-L{app}", "-lg"])
    (tmp_path / "bin").mkdir()
    link = tmp_path / "bin" / "e"
    os.symlink(e, link)
    # Run by the kernel: $ORIGIN is the canonical directory (/proc/self/exe): it works.
    assert assert_run_prediction(link).status == 0
    # Through ldd (ld.so ./prog, glibc < 2.42): the directory of the name as given: not found.
    out = assert_ldd_parity(link)
    assert "libg.so => not found" in out.stdout


def test_case11_empty_runpath_element_is_the_cwd(tmp_path: Path) -> None:
    d = tmp_path / "D"
    shared_lib(d / "libc11.so", lib_source("c11"), soname="libc11.so")
    e = executable(tmp_path / "e", sources_needing("c11"), flags=rpath_flags("/nonexistent", ""),
                   libs=[f"-L{d}", "-lc11"])
    assert assert_run_prediction(e, cwd=d).status == 0
    assert assert_run_prediction(e, cwd=tmp_path).status == 127
    assert_ldd_parity(e, cwd=d)
    assert_ldd_parity(e, cwd=tmp_path)


def test_case12_lib_and_platform_tokens(tmp_path: Path) -> None:
    x = tmp_path / "x"
    lib_dir = x / PROFILE.lib / PROFILE.platform  # type: ignore[operator]
    shared_lib(lib_dir / "libt12.so", lib_source("t12"), soname="libt12.so")
    e = executable(tmp_path / "e", sources_needing("t12"), flags=rpath_flags(f"{x}/$LIB/${{PLATFORM}}"),
                   libs=[f"-L{lib_dir}", "-lt12"])
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 0
    # The expansion ld.so itself reports (LD_DEBUG=libs) is the directory soswap found the library in.
    r = subprocess.run([str(e)], env=env_with(LD_DEBUG="libs"), capture_output=True, text=True, timeout=60)
    res, _ = predict(e)
    found = by_name(res, "libt12.so")
    assert found.reason.directory == f"{lib_dir}/"
    # ld.so prints the expanded list, ending with the directory itself
    assert f":{lib_dir}\t\t(RUNPATH from file {e})" in r.stderr


def test_case13_soname_less_library_linked_by_relative_path(tmp_path: Path) -> None:
    shared_lib(tmp_path / "libn.so", lib_source("n"))
    write(tmp_path / "e.c", sources_needing("n"))
    run_cc(["-o", "e", "e.c", "./libn.so"], cwd=tmp_path)
    e = tmp_path / "e"
    assert assert_run_prediction(e, cwd=tmp_path).status == 0
    elsewhere = tmp_path / "sub"
    elsewhere.mkdir()
    assert assert_run_prediction(e, cwd=elsewhere).status == 127
    assert_ldd_parity(e, cwd=tmp_path)
    assert_ldd_parity(e, cwd=elsewhere)


def test_case14_wrong_class_candidate_is_skipped(tmp_path: Path, m32: None) -> None:
    w32, w64 = tmp_path / "w32", tmp_path / "w64"
    shared_lib(w32 / "libw.so", lib_source("w"), soname="libw.so", m32=True)
    shared_lib(w64 / "libw.so", lib_source("w"), soname="libw.so")
    e = executable(tmp_path / "e", sources_needing("w"), flags=rpath_flags(str(w32), str(w64)),
                   libs=[f"-L{w64}", "-lw"])
    assert_ldd_parity(e)
    assert assert_run_prediction(e).status == 0
    res, _ = predict(e)
    assert by_name(res, "libw.so").path == f"{w64}/libw.so"


def test_case30_program_with_nodefaultlib(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shared_lib(d / "libn30.so", lib_source("n30"), soname="libn30.so")
    e = executable(tmp_path / "e", sources_needing("n30"),
                   flags=[*rpath_flags(str(d)), "-Wl,-z,nodefaultlib"], libs=[f"-L{d}", "-ln30"])
    out = assert_ldd_parity(e)
    assert "libc.so.6 => not found" in out.stdout
    real = assert_run_prediction(e)
    assert "libc.so.6" in real.stderr


def test_case31_library_with_nodefaultlib(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shared_lib(d / "libn31.so", "#include <math.h>\ndouble n31(double x) { return cos(x); }\n",
               soname="libn31.so", libs=["-Wl,--no-as-needed", "-lm"], flags=["-Wl,-z,nodefaultlib"])
    e = executable(tmp_path / "e", "double n31(double);\nint main(int c, char **v) { return (int) n31(c); }\n",
                   flags=rpath_flags(str(d)), libs=[f"-L{d}", "-ln31"])
    out = assert_ldd_parity(e)
    assert "libm.so.6 => not found" in out.stdout
    assert assert_run_prediction(e).status == 127


def test_case32_soname_without_its_link(tmp_path: Path) -> None:
    d = tmp_path / "d"
    shared_lib(d / "libx.so", lib_source("x32"), soname="libx.so.1")
    e = executable(tmp_path / "e", sources_needing("x32"), flags=rpath_flags(str(d)), libs=[f"-L{d}", "-lx"])
    out = assert_ldd_parity(e)
    assert "libx.so.1 => not found" in out.stdout
    assert assert_run_prediction(e).status == 127


def test_ldd_of_several_files_and_of_odd_arguments(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _ab(tmp_path, exe_flags=rpath_flags(str(d), old_dtags=True))
    (tmp_path / "text").write_text("#!/bin/sh\n")
    (tmp_path / "dir").mkdir()
    os.symlink("nowhere", tmp_path / "dangling")
    files = ["e", "text", "dir", "missing", "dangling", "/usr/bin/true"]
    want = real_ldd(*files, cwd=tmp_path)
    got = model_ldd(*files, cwd=tmp_path)
    assert got == want
    assert want.status == 1
