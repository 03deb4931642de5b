"""What one :class:`Loader` shares across programs (load templates per program shape, binding memos per
library scope) never changes an answer: a shared loader says exactly what a fresh one says, for system
programs and for fixtures built to defeat the sharing (argv0 in the messages, the program's own RPATH,
``$ORIGIN``, a library that names the program, a symbol only the executable defines); the real loader and
the real ``ldd`` are the oracles."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

from hypothesis import given, settings
from hypothesis import strategies as st

from loader.helpers import (
    BASE_ENV,
    assert_run_prediction,
    env_with,
    make_loader,
    model_ldd,
    real_ldd,
    run_program,
)
from soswap.loader.ldd import RELOCS_FUNCTION, RELOCS_NONE, LddModel
from soswap.loader.symtab import gnu_hash, gnu_hash_reference
from soswap.report.tree import render_text, result_json
from support.build import executable, requires_cc, rpath_flags, shared_lib
from support.systemfiles import elf_files


def _sample(step: int) -> List[str]:
    files = elf_files()
    assert len(files) > 50
    return files[::step]


def _bound_view(b):  # type: ignore[no-untyped-def]
    return (b.failures, b.unresolved, b.fatal, b.bindings_checked)


def _load_view(res):  # type: ignore[no-untyped-def]
    """The result with each parsed file named by its identity (two loaders never share ElfFile objects)."""
    objects = tuple(o._replace(elf=o.elf.identity if o.elf is not None else None) for o in res.objects)
    return (objects, res.scope, res.initfini, res.failures, res.fatal, res.secure, res.trace, res.argv0,
            res.static, res.path)


def test_shared_loader_answers_as_fresh_loaders_on_system_programs() -> None:
    shared = make_loader(cwd="/", env=BASE_ENV)
    shared_loads = 0
    bodies: dict = {}
    for path in _sample(6):
        fresh = make_loader(cwd="/", env=BASE_ENV)
        a = shared.load(path)
        b = fresh.load(path)
        assert _load_view(a) == _load_view(b), path
        ba, bb = shared.bind(a, relocate=False), fresh.bind(b, relocate=False)
        assert _bound_view(ba) == _bound_view(bb), path
        assert render_text(a, ba, bodies=bodies) == render_text(b, bb)
        assert render_text(a, ba, show_all=True, bodies=bodies) == render_text(b, bb, show_all=True)
        assert result_json(a, ba) == result_json(b, bb)
        shared_loads += 1
    # the sample really shared something: fewer load sessions than programs
    assert len(shared._templates) < shared_loads


def test_shared_binding_answers_as_fresh_binding_on_system_programs() -> None:
    shared = make_loader(cwd="/", env=BASE_ENV)
    for path in _sample(16):
        fresh = make_loader(cwd="/", env=BASE_ENV)
        a, b = shared.load(path), fresh.load(path)
        ba, bb = shared.bind(a), fresh.bind(b)
        assert _bound_view(ba) == _bound_view(bb), path
        assert ba.bindings_checked > 0 or a.static, path


def test_shared_ldd_model_prints_as_fresh_models_on_system_programs() -> None:
    for relocs in (RELOCS_NONE, RELOCS_FUNCTION):
        shared = LddModel(make_loader(cwd="/", env=BASE_ENV), relocs)
        for path in _sample(20):
            fresh = LddModel(make_loader(cwd="/", env=BASE_ENV), relocs)
            assert shared.one(path) == fresh.one(path), (relocs, path)


@requires_cc
def test_same_shape_programs_fail_with_their_own_name(tmp_path: Path) -> None:
    shared_lib(tmp_path / "build" / "libgone.so", "int gone(void) { return 0; }\n", soname="libgone.so")
    src = "int gone(void);\nint main(void) { return gone(); }\n"
    progs = [executable(tmp_path / d / "prog", src, libs=[f"-L{tmp_path / 'build'}", "-lgone"])
             for d in ("one", "two")]
    loader = make_loader()
    for prog in progs + progs:
        real = run_program(prog)
        assert real.status == 127
        res = loader.load(str(prog))
        bound = loader.bind(res)
        assert bound.fatal is not None
        assert bound.fatal.line in real.stderr.splitlines()
        assert bound.fatal.line.startswith(f"{prog}: error while loading shared libraries: libgone.so")
    # ldd on both in one call: one model, the same shape twice
    want = real_ldd(*progs)
    got = model_ldd(*progs)
    assert (got.stdout, got.stderr, got.status) == (want.stdout, want.stderr, want.status)


@requires_cc
def test_program_rpath_reason_names_each_program(tmp_path: Path) -> None:
    lib_dir = tmp_path / "lib"
    shared_lib(lib_dir / "libr.so", "int r(void) { return 0; }\n", soname="libr.so")
    src = "int r(void);\nint main(void) { return r(); }\n"
    progs = [executable(tmp_path / name, src, flags=rpath_flags(str(lib_dir), old_dtags=True),
                        libs=[f"-L{lib_dir}", "-lr"]) for name in ("first", "second")]
    loader = make_loader()
    for prog in progs:
        assert run_program(prog).status == 0
        res = loader.load(str(prog))
        text = render_text(res, loader.bind(res, relocate=False))
        assert f"libr.so => {lib_dir}/libr.so  [RPATH {lib_dir}/ of {prog}]" in text


@requires_cc
def test_origin_runpath_resolves_per_program_directory(tmp_path: Path) -> None:
    src = "int o(void);\nint main(void) { return o(); }\n"
    shared_lib(tmp_path / "build" / "libo.so", "int o(void) { return 0; }\n", soname="libo.so")
    shared_lib(tmp_path / "good" / "lib" / "libo.so", "int o(void) { return 0; }\n", soname="libo.so")
    flags = ["-Wl,-rpath,$ORIGIN/lib", "-Wl,--enable-new-dtags"]
    good = executable(tmp_path / "good" / "prog", src, flags=flags, libs=[f"-L{tmp_path / 'build'}", "-lo"])
    bad = executable(tmp_path / "bad" / "prog", src, flags=flags, libs=[f"-L{tmp_path / 'build'}", "-lo"])
    loader = make_loader()
    for prog, status in ((good, 0), (bad, 127), (good, 0)):
        real = run_program(prog)
        assert real.status == status
        res = loader.load(str(prog))
        assert loader.bind(res).loadable == (status == 0)
    want = real_ldd(good, bad)
    got = model_ldd(good, bad)
    assert (got.stdout, got.status) == (want.stdout, want.status)


@requires_cc
def test_library_needing_the_program_by_its_path(tmp_path: Path) -> None:
    # liba.so's DT_NEEDED is the path of program P itself. The main map answers to no name, even under ldd
    # (ld.so P): the name opens P again, as a library, for P and for Q of the same shape alike.
    p = tmp_path / "p"
    shared_lib(p, "int placeholder(void) { return 0; }\n")  # no SONAME: DT_NEEDED records the path
    shared_lib(tmp_path / "liba.so", "int a(void) { return 0; }\n", soname="liba.so",
               libs=["-Wl,--no-as-needed", str(p)])
    src = "int a(void);\nint main(void) { return a(); }\n"
    link = [f"-L{tmp_path}", "-la", "-Wl,--allow-shlib-undefined"]
    os.unlink(p)
    executable(p, src, flags=rpath_flags(str(tmp_path)), libs=link)
    q = executable(tmp_path / "q", src, flags=rpath_flags(str(tmp_path)), libs=link)
    for prog in (p, q):
        assert_run_prediction(prog)
    for order in ((p, q), (q, p), (p, q, p)):
        want = real_ldd(*order)
        assert "cannot dynamically load position-independent executable" in want.stdout
        got = model_ldd(*order)
        assert (got.stdout, got.stderr, got.status) == (want.stdout, want.stderr, want.status), order


@requires_cc
def test_library_needing_the_program_by_its_soname(tmp_path: Path) -> None:
    # liba.so needs "libprog.so", the SONAME of programs P and Q (same shape): it resolves to the main map
    # (_dl_map_object matches a loaded object's DT_SONAME), and each tree shows its own program there
    stub = shared_lib(tmp_path / "stub" / "libprog.so", "int placeholder(void) { return 0; }\n", soname="libprog.so")
    shared_lib(tmp_path / "liba.so", "int a(void) { return 0; }\n", soname="liba.so",
               libs=["-Wl,--no-as-needed", str(stub)])
    src = "int a(void);\nint main(void) { return a(); }\n"
    # liba.so found through LD_LIBRARY_PATH: no reason names the program, the loads share every object
    env = env_with(LD_LIBRARY_PATH=str(tmp_path))
    progs = [executable(tmp_path / name, src, flags=["-Wl,-soname,libprog.so"], libs=[f"-L{tmp_path}", "-la"])
             for name in ("p", "q")]
    os.unlink(stub)
    loader = make_loader(env=env)
    bodies: dict = {}  # as soswap tree keeps them: the trees of one shape are made once
    for prog in (*progs, *progs):
        assert run_program(prog, env=env).status == 0  # libprog.so is the program itself: nothing is opened
        res = loader.load(str(prog))
        assert [o.index for o in res.objects if o.name == "libprog.so"] == []  # no object of its own
        text = render_text(res, loader.bind(res, relocate=False), show_all=True, bodies=bodies)
        assert f"libprog.so => {prog}  (already loaded)" in text, text
        assert str(progs[1] if prog == progs[0] else progs[0]) not in text
    assert len(loader._templates) == 1  # P and Q shared one load


@requires_cc
def test_symbol_only_the_executable_defines(tmp_path: Path) -> None:
    # libhook.so calls hook(), defined by one program (exported) and not by the other: the same library
    # scope, the answer decided by the executable alone.
    lib_dir = tmp_path / "lib"
    shared_lib(lib_dir / "libhook.so", "int hook(void);\nint run_hook(void) { return hook(); }\n",
               soname="libhook.so")
    flags = rpath_flags(str(lib_dir))
    libs = [f"-L{lib_dir}", "-lhook"]
    with_hook = executable(tmp_path / "with", "int run_hook(void);\nint hook(void) { return 0; }\n"
                           "int main(void) { return run_hook(); }\n", flags=[*flags, "-rdynamic"], libs=libs)
    without = executable(tmp_path / "without", "int run_hook(void);\n"
                         "int main(int c, char **v) { return c > 1 ? run_hook() : 0; }\n", flags=flags,
                         libs=[*libs, "-Wl,--allow-shlib-undefined"])
    loader = make_loader()
    for prog in (without, with_hook, without, with_hook):
        assert_run_prediction(prog)
        res = loader.load(str(prog))
        bound = loader.bind(res)
        names = [u.symbol for u in bound.unresolved]
        assert names == ([] if prog == with_hook else ["hook"])
        if prog == without:
            assert bound.unresolved[0].when == "first-call"
            real = run_program(prog, "call")
            assert real.status == 127 and "undefined symbol: hook" in real.stderr
    for order in ((without, with_hook), (with_hook, without)):
        want = real_ldd(*order, flag="-r")
        got = model_ldd(*order, relocs=RELOCS_FUNCTION)
        assert (got.stdout, got.stderr, got.status) == (want.stdout, want.stderr, want.status), order


@requires_cc
def test_library_needing_a_version_of_the_program(tmp_path: Path) -> None:
    # libl.so needs progsym@VPROG_1 from "libprog.so", the SONAME of both programs: one defines the version,
    # the other has no version definitions at all. Same shape, same library, different version check.
    script = "VPROG_1 { global: progsym; local: *; };\n"
    shared_lib(tmp_path / "stub" / "libprog.so", "int progsym(void) { return 0; }\n", soname="libprog.so",
               version_script=script)
    shared_lib(tmp_path / "lib" / "libl.so", "int progsym(void);\nint lfun(void) { return progsym(); }\n",
               soname="libl.so", libs=[f"-L{tmp_path / 'stub'}", "-lprog"])
    src = "int lfun(void);\nint progsym(void) { return 0; }\nint main(void) { return lfun(); }\n"
    flags = ["-Wl,-soname,libprog.so", "-rdynamic"]
    libs = [f"-L{tmp_path / 'lib'}", "-ll", "-Wl,--allow-shlib-undefined"]
    versioned = tmp_path / "versioned.map"
    versioned.write_text(script)
    with_v = executable(tmp_path / "with", src, flags=[*flags, f"-Wl,--version-script={versioned}"], libs=libs)
    without = executable(tmp_path / "without", src, flags=flags, libs=libs)
    env = env_with(LD_LIBRARY_PATH=str(tmp_path / "lib"))  # libl.so is found the same way for both
    loader = make_loader(env=env)
    shared = []
    for prog in (with_v, without, with_v, without):
        real = run_program(prog, env=env)
        assert real.status == 0
        res = loader.load(str(prog))
        shared.append(res.objects[2])
        warnings = [f.line for f in loader.bind(res).failures if f.when == "warning"]
        assert warnings == real.stderr.splitlines()
        assert bool(warnings) == (prog == without)
    assert all(o is shared[0] for o in shared)  # one load shared by both programs
    want = real_ldd(with_v, without, flag="-r", env=env)
    got = model_ldd(with_v, without, relocs=RELOCS_FUNCTION, env=env)
    assert (got.stdout, got.stderr, got.status) == (want.stdout, want.stderr, want.status)


def test_realpath_of_the_file_system_model(tmp_path: Path) -> None:
    # the program's $ORIGIN comes from FileSystem.realpath (directories resolved once, the last component
    # by readlink): it must say what os.path.realpath says
    fsys = make_loader().file_system(make_loader().profile)
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("")
    os.symlink("a/b", tmp_path / "lnk")
    os.symlink("../b/f", tmp_path / "a" / "b" / "g")
    os.symlink("lnk/../x", tmp_path / "h")
    os.symlink("loop", tmp_path / "loop")
    os.symlink(str(tmp_path / "lnk" / "g"), tmp_path / "abs")
    for p in ("lnk/f", "lnk/g", "a/b/g", "h", "lnk/../a/b/f", "loop", "missing", "a//b/./f", "abs"):
        path = f"{tmp_path}/{p}"
        assert fsys.realpath(path) == os.path.realpath(path), p
    for path in _sample(25):
        assert fsys.realpath(path) == os.path.realpath(path), path


def test_long_names_hash_as_glibc_does() -> None:
    for n in (23, 24, 25, 8191, 8192, 9000):
        name = bytes((i * 7 + 33) % 256 for i in range(n))
        assert gnu_hash(name) == gnu_hash_reference(name), n


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_gnu_hash_matches_glibc_loop(name: bytes) -> None:
    assert gnu_hash(name) == gnu_hash_reference(name)


def test_loads_with_equal_substitution_maps_share_one_key() -> None:
    """A transaction's checks each pass an equal ``{path: replacement}`` map of hundreds of files: the load
    templates keyed by it keep one set, not one copy per check (it was 130 MB for 1,221 files)."""
    loader = make_loader()
    subs = {f"/nonexistent/soswap/lib{n}.so": f"/nonexistent/soswap/new/lib{n}.so" for n in range(300)}
    programs = ["/usr/bin/ls", "/usr/bin/cat", "/usr/bin/env"]
    for prog in programs:
        loader.load(prog, substitutions=dict(subs))  # a new, equal map each time
    keys = {id(k[-2]) for k in loader._templates if k[-2] is not None}
    assert len(keys) == 1


def test_released_programs_answer_as_fresh_loaders() -> None:
    """``Loader.release`` forgets a program's tables; loading and binding it again (and the next programs,
    which share its libraries) answers exactly as a fresh loader does."""
    shared = make_loader(cwd="/", env=BASE_ENV)
    paths = _sample(24)
    for path in paths + paths[::-1]:
        fresh = make_loader(cwd="/", env=BASE_ENV)
        a, b = shared.load(path), fresh.load(path)
        ba, bb = shared.bind(a), fresh.bind(b)
        assert _bound_view(ba) == _bound_view(bb), path
        elf = a.objects[0].elf
        shared.release(a)
        held = shared.bind_cache.objects.get(id(elf))  # type: ignore[attr-defined]
        if elf is not None and elf.soname is None:
            assert held is None or held.elf is not elf, path  # the program's tables are gone
            assert elf.dynamic.strtab._data is None, path
        elif elf is not None and not a.static:
            assert held is not None and held.elf is elf, path  # a library FILE stays: others load it


@requires_cc
def test_released_program_rewritten_in_place_is_an_error_not_a_mixed_answer(tmp_path: Path) -> None:
    """A released program is read again only from the same, unchanged file: rewritten in place since, the
    reading fails with one clear error instead of mixing old and new tables."""
    from soswap.errors import ElfError

    lib = shared_lib(tmp_path / "libm1.so", "int m1(void) { return 1; }", soname="libm1.so")
    prog = executable(tmp_path / "prog", "int m1(void); int main(void) { return m1(); }",
                      libs=[str(lib)], flags=rpath_flags(str(tmp_path)))
    loader = make_loader(cwd=tmp_path)
    res = loader.load(str(prog))
    assert not loader.bind(res).unresolved
    loader.release(res)
    elf = res.objects[0].elf
    data = bytearray(prog.read_bytes())
    data[-1] ^= 0xFF  # same size; the mtime moves
    st = prog.stat()
    prog.write_bytes(bytes(data))
    os.utime(prog, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        elf.dynamic.strtab.load()
    except ElfError as exc:
        assert "changed" in str(exc)
    else:
        raise AssertionError("a rewritten file was read as the released one")
