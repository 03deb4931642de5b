"""The binding rules and the public "where does this reference bind" API, against the real loader:

* ``_dl_check_protected_symbol`` (glibc 2.36 as Debian 12 ships it): the warnings for a copy relocation against
  protected data and for a canonical function address of a protected function, the error when the library
  needs GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS, and when each strikes (startup, first call, LD_BIND_NOW),
  checked by running the programs and against ``ldd``/``ldd -d``/``ldd -r``;
* the pre-2.41 ``check_match`` assertion at startup for a data reference even under lazy binding;
* ``Loader.references``/``resolve``/``symbol``/``lookup_aborts`` against ``LD_DEBUG=bindings`` and pyelftools;
* what-if substitutes the loader refuses (``Failure.substitute``, ``LoadResult.substitutes_rejected``), checked
  by really installing them;
* loads with substitutions sharing templates and the canonical-directory memo.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
from elftools.elf.elffile import ELFFile

from loader.helpers import (
    BASE_ENV,
    assert_ldd_parity,
    by_name,
    env_with,
    make_loader,
    predict,
    run_program,
)
from soswap.elf import constants as C
from soswap.errors import SoswapError
from soswap.loader import Definition, Reference
from support.build import CC, executable, have_m32, requires_cc, shared_lib

pytestmark = requires_cc

LIB = """{vis}int counter = 1;
{vis}int foo(void) {{ return 42; }}
int get_counter(void) {{ return counter; }}
void *foo_addr(void) {{ return (void *)foo; }}
"""
PROTECTED = '__attribute__((visibility("protected"))) '
#: writes "start" first thing in main (unbuffered), so that a failure before main is told from one after it
APP = """#include <stdio.h>
#include <unistd.h>
extern int counter;
int foo(void);
void *foo_addr(void);
int get_counter(void);
int main(int argc, char **argv) {
    (void)argv;
    write(1, "start\\n", 6);
    counter = 5;
    printf("app=%d lib=%d\\n", counter, get_counter());
    if (argc > 1) printf("foo=%d same=%d\\n", foo(), (void *)foo == foo_addr());
    return 0;
}
"""
#: only a canonical function address (non-PIE): no copy relocation
APP_FUNC = """#include <stdio.h>
#include <unistd.h>
int foo(void);
void *foo_addr(void);
int main(int argc, char **argv) {
    (void)argv;
    write(1, "start\\n", 6);
    if (argc > 1) printf("foo=%d same=%d\\n", foo(), (void *)foo == foo_addr());
    return 0;
}
"""


def _have_indirect_access_flag() -> bool:
    r = subprocess.run([CC, "-mno-direct-extern-access", "-x", "c", "-fsyntax-only", "-"], input="int x;\n",
                       capture_output=True, text=True)
    return r.returncode == 0


def _protected_case(tmp: Path) -> Dict[str, Path]:
    """libfoo in v1 (default visibility: what the programs were linked against), v2 (counter and foo
    protected) and, where gcc can, v3 (protected, built with -mno-direct-extern-access); the PIE and non-PIE
    programs, and the non-PIE one that only takes foo's address."""
    out: Dict[str, Path] = {}
    out["v1"] = shared_lib(tmp / "v1" / "libfoo.so.1", LIB.format(vis=""), soname="libfoo.so.1")
    out["v2"] = shared_lib(tmp / "v2" / "libfoo.so.1", LIB.format(vis=PROTECTED), soname="libfoo.so.1")
    if _have_indirect_access_flag():
        out["v3"] = shared_lib(tmp / "v3" / "libfoo.so.1", LIB.format(vis=PROTECTED), soname="libfoo.so.1",
                               flags=["-mno-direct-extern-access"])
    link = [str(out["v1"])]
    out["pie"] = executable(tmp / "app_pie", APP, libs=link)
    out["nopie"] = executable(tmp / "app_nopie", APP, flags=["-no-pie", "-fno-pic"], libs=link)
    out["func"] = executable(tmp / "app_func", APP_FUNC, flags=["-no-pie", "-fno-pic"], libs=link)
    return out


def _env(tmp: Path, which: str, **extra: str) -> Dict[str, str]:
    return env_with(LD_LIBRARY_PATH=str(tmp / which), **extra)


def _lines(text: str) -> List[str]:
    return [ln for ln in text.splitlines() if ln]


def _loader_lines(real_stderr: str) -> List[str]:
    return [ln for ln in _lines(real_stderr) if not ln.startswith(("app=", "foo="))]


def test_protected_data_copy_relocation_warns_at_startup(tmp_path: Path) -> None:
    case = _protected_case(tmp_path)
    for app in ("pie", "nopie"):
        prog = case[app]
        env = _env(tmp_path, "v2")
        real = run_program(prog, env=env)
        _, bound = predict(prog, env=env)
        (f,) = [f for f in bound.failures if f.kind == "protected-copy"]
        lib = f"{tmp_path}/v2/libfoo.so.1"
        assert f.line == f.message == (f"warning: copy relocation against non-copyable protected symbol `counter' "
                                       f"in `{lib}'")
        assert (f.when, f.fatal, f.symbol, f.object, f.name) == ("warning", False, "counter", 0, lib)
        # printed before main runs; the program then runs on with two copies of counter
        assert _lines(real.stderr) == [f.line] and real.stdout == "start\napp=5 lib=1\n" and real.status == 0
        assert bound.fatal is None
        # ldd prints it with -d and -r (copy relocations are processed), not without
        for flag in (None, "-d", "-r"):
            assert_ldd_parity(prog, env=env, flag=flag)
        # with v1 nothing is said
        assert not [f for f in predict(prog, env=_env(tmp_path, "v1"))[1].failures if f.kind.startswith("prot")]


def test_canonical_address_of_a_protected_function_warns_at_its_first_call(tmp_path: Path) -> None:
    case = _protected_case(tmp_path)
    prog = case["nopie"]
    lib = f"{tmp_path}/v2/libfoo.so.1"
    text = f"warning: direct reference to protected function `foo' in `{lib}' may break pointer equality"
    env = _env(tmp_path, "v2")
    _, bound = predict(prog, env=env)
    (f,) = [f for f in bound.failures if f.kind == "protected-function"]
    assert (f.line, f.when, f.fatal, f.symbol) == (text, "first-call", False, "foo")
    # lazily: not at startup; printed when foo is first called (after "start")
    quiet = run_program(prog, env=env)
    assert text not in quiet.stderr and quiet.status == 0
    called = run_program(prog, "x", env=env)
    assert text in called.stderr and called.stdout.startswith("start\n") and called.status == 0
    assert "same=0" in called.stdout  # the pointer equality it warns about really broke
    # under LD_BIND_NOW it is a startup warning, in relocation order after the copy relocation's
    now = _env(tmp_path, "v2", LD_BIND_NOW="1")
    _, bound_now = predict(prog, env=now)
    warnings = [f for f in bound_now.failures if f.kind.startswith("protected")]
    assert [(f.kind, f.when) for f in warnings] == [("protected-copy", "warning"), ("protected-function", "warning")]
    real_now = run_program(prog, env=now)
    assert _loader_lines(real_now.stderr) == [f.line for f in warnings]
    # ldd -r binds every slot: both warnings; ldd -d leaves the slot lazy: only the copy one
    for flag in (None, "-d", "-r"):
        assert_ldd_parity(prog, env=env, flag=flag)
    # a PIE program takes the address through the GOT (st_value 0): no warning
    _, bound_pie = predict(case["pie"], env=now)
    assert [f.kind for f in bound_pie.failures if f.kind.startswith("prot")] == ["protected-copy"]


def test_indirect_extern_access_turns_the_warning_into_an_error(tmp_path: Path) -> None:
    case = _protected_case(tmp_path)
    if "v3" not in case:
        pytest.skip("gcc cannot build with -mno-direct-extern-access")
    lib = f"{tmp_path}/v3/libfoo.so.1"
    env = _env(tmp_path, "v3")
    for app in ("pie", "nopie"):
        prog = case[app]
        _, bound = predict(prog, env=env)
        err = bound.fatal
        assert err is not None and err.kind == "indirect-extern-access" and err.when == "startup"
        assert err.line == (f"{prog}: counter: {lib}: error due to GNU_PROPERTY_1_NEEDED_INDIRECT_EXTERN_ACCESS")
        assert [f.kind for f in bound.failures][-2:] == ["protected-copy", "indirect-extern-access"]
        real = run_program(prog, env=env)
        assert real.stdout == "" and real.status == err.exit_status == 127
        assert _lines(real.stderr) == [bound.failures[-2].line, err.line]
        for flag in (None, "-d", "-r"):
            assert_ldd_parity(prog, env=env, flag=flag)
    # only a canonical function address: the error strikes at the first call of foo
    prog = case["func"]
    _, bound = predict(prog, env=env)
    assert bound.fatal is None
    err = bound.failures[-1]
    assert (err.kind, err.when, err.fatal, err.symbol) == ("indirect-extern-access", "first-call", False, "foo")
    assert run_program(prog, env=env).status == 0
    real = run_program(prog, "x", env=env)
    assert real.stdout == "start\n" and real.status == 127 and err.line in real.stderr
    for flag in ("-d", "-r"):
        assert_ldd_parity(prog, env=env, flag=flag)


@pytest.mark.parametrize("m32", [False, True])
def test_a_plt_entry_of_type_none_is_fatal_when_bound_lazily(tmp_path: Path, m32: bool) -> None:
    """GNU ld leaves an R_*_NONE entry in .rela.plt/.rel.plt for an undefined function it was told to ignore:
    elf_machine_lazy_rel refuses it ("unexpected PLT reloc type 0x00"); bound now (LD_BIND_NOW, ldd -r) it is
    skipped and the program runs."""
    if m32 and not have_m32():
        pytest.skip("gcc -m32 cannot link (gcc-multilib missing)")
    src = "int missing(void);\nint main(int c, char **v) { if (c > 5) return missing(); return 0; }\n"
    prog = executable(tmp_path / "prog", src, flags=["-Wl,--unresolved-symbols=ignore-all"], m32=m32)
    _, bound = predict(prog)
    err = bound.fatal
    assert err is not None and (err.kind, err.when, err.exit_status) == ("bad-relocation", "startup", 127)
    assert err.line == f"{prog}: error while loading shared libraries: unexpected PLT reloc type 0x00"
    real = run_program(prog)
    assert real.status == 127 and _lines(real.stderr) == [err.line]
    now = env_with(LD_BIND_NOW="1")
    assert predict(prog, env=now)[1].fatal is None and run_program(prog, env=now).status == 0
    for flag in (None, "-d", "-r"):
        assert_ldd_parity(prog, flag=flag)


V1_MAP = "VER_1 { global: *; };\n"


def versioned_then_unversioned(tmp: Path, lib_src: str, main_src: str) -> Tuple[Path, Dict[str, str]]:
    """A program linked against libv.so with version node VER_1, and the environment where it meets libv.so
    built without versions (the pre-2.41 check_match assertion)."""
    shared_lib(tmp / "v" / "libv.so", lib_src, soname="libv.so", version_script=V1_MAP)
    shared_lib(tmp / "run" / "libv.so", lib_src, soname="libv.so")
    e = executable(tmp / "e", main_src, libs=[f"-L{tmp / 'v'}", "-lv"])
    return e, env_with(LD_LIBRARY_PATH=str(tmp / "run"))


def test_assertion_strikes_at_startup_for_a_data_reference_even_when_lazy(tmp_path: Path) -> None:
    """The pre-2.41 check_match assertion for a copy relocation (always made at startup), against the lazy
    function case of test_symbols.py (first call)."""
    e, env = versioned_then_unversioned(tmp_path, "int var = 3;\nint foo(void) { return 0; }\n",
                                        "#include <unistd.h>\nextern int var;\nint foo(void);\n"
                                        "int main(void) { write(1, \"start\\n\", 6); return var + foo(); }\n")
    real = run_program(e, env=env)
    _, bound = predict(e, env=env)
    aborts = [f for f in bound.failures if f.kind == "assertion"]
    assert len(aborts) == 1  # ld.so stops at the first one: the lazy foo slot is never reached
    assert bound.fatal is aborts[0] and (aborts[0].when, aborts[0].symbol) == ("startup", "var")
    assert real.stdout == "" and real.status == 127 and aborts[0].line in real.stderr
    for flag in (None, "-d", "-r"):
        assert_ldd_parity(e, env=env, flag=flag)


# -- the public reference API ---------------------------------------------------------------------------

_BINDING = re.compile(r"binding file (.*) \[\d+\] to (.*) \[\d+\]: (?:normal|protected) symbol `([^']*)'"
                      r"(?: \[([^\]]*)\])?$")


def _ld_debug_bindings(prog: str, *args: str, env: Dict[str, str]) -> Set[Tuple[str, str, str, Optional[str]]]:
    """(referencing file, defining file, symbol, requested version) of every lookup the real ld.so makes at
    startup with LD_BIND_NOW (ld.so's own and the vDSO's left out)."""
    full = dict(env, LD_DEBUG="bindings", LD_BIND_NOW="1")
    r = subprocess.run([prog, *args], env=full, capture_output=True, text=True, errors="surrogateescape",
                       timeout=60, stdin=subprocess.DEVNULL)
    out = set()
    for line in r.stderr.splitlines():
        m = _BINDING.search(line)
        if m and "ld-linux" not in m.group(1) and "linux-vdso" not in m.group(1):
            out.add((m.group(1), m.group(2), m.group(3), m.group(4)))
    return out


#: ld.so looks these up itself once relocation is done, as the main program (``__rtld_malloc_init_real``):
#: LD_DEBUG shows them as the program's bindings although no relocation of it asks for them.
_RTLD_MALLOC = frozenset(("malloc", "calloc", "realloc", "free"))


def _same_bindings(model: set, real: set, prog: str) -> bool:
    rtld = {w for w in real if w[0] == prog and w[2] in _RTLD_MALLOC}
    return model == (real - rtld) | (model & rtld)


def _model_bindings(prog: str, env: Dict[str, str]) -> Set[Tuple[str, str, str, Optional[str]]]:
    loader = make_loader(env=env)
    res = loader.load(prog)
    out = set()
    for o in res.objects:
        if o.elf is None or not o.found or o.kind in ("vdso", "interpreter"):
            continue
        for ref in loader.references(res, o.index):
            d = loader.resolve(res, o.index, ref)
            if d is None:
                continue  # an unresolved weak reference: ld.so prints no binding
            where = res.objects[d.index]
            out.add((o.path or prog, where.path or prog, ref.name,
                     ref.version.name if ref.version is not None else None))
    return out


def test_resolve_agrees_with_ld_debug_bindings_on_fixtures(tmp_path: Path) -> None:
    case = _protected_case(tmp_path)
    for app in ("pie", "nopie"):
        for which in ("v1", "v2"):
            env = _env(tmp_path, which)
            prog = str(case[app])
            want = _ld_debug_bindings(prog, env=env)
            assert want, "LD_DEBUG printed no binding"
            assert _same_bindings(_model_bindings(prog, env), want, prog)


@pytest.mark.parametrize("prog", ["/usr/bin/ls", "/usr/bin/python3"])
def test_resolve_agrees_with_ld_debug_bindings_on_system_programs(prog: str) -> None:
    if not os.path.exists(prog):
        pytest.skip(f"{prog} is not installed")
    real = os.path.realpath(prog)
    want = _ld_debug_bindings(real, "--version", env=dict(BASE_ENV))
    assert len(want) > 100
    model = _model_bindings(real, dict(BASE_ENV))
    assert _same_bindings(model, want, real), (sorted(model - want)[:10], sorted(want - model)[:10])


def test_definitions_are_the_symbols_pyelftools_reads(tmp_path: Path) -> None:
    case = _protected_case(tmp_path)
    loader = make_loader(env=_env(tmp_path, "v2"))
    res = loader.load(str(case["nopie"]))
    seen = 0
    tables: Dict[str, list] = {}
    for ref in loader.references(res, 0):
        d = loader.resolve(res, 0, ref)
        if d is None:
            assert ref.weak, ref.name  # __gmon_start__ and friends: weak, defined nowhere
            continue
        assert isinstance(d, Definition) and isinstance(ref, Reference)
        path = res.objects[d.index].path
        if path not in tables:
            with open(path, "rb") as f:
                tables[path] = list(ELFFile(f).get_section_by_name(".dynsym").iter_symbols())
        s = tables[path][d.symbol_index]
        assert s.name == d.name == ref.name
        assert (s["st_size"], s["st_value"]) == (d.size, d.value)
        assert C.STT_NAMES[d.type] == s["st_info"]["type"].replace("STT_", "")
        assert "STV_" + C.STV_NAMES[d.visibility] == s["st_other"]["visibility"]
        assert d.shndx != C.SHN_UNDEF
        seen += 1
    assert seen >= 4
    # counter and foo: protected in v2, the program's copy of counter is its own 4-byte object
    refs = {(r.name, r.copy): r for r in loader.references(res, 0)}
    counter = loader.resolve(res, 0, refs[("counter", True)])
    foo = loader.resolve(res, 0, refs[("foo", False)])
    assert counter is not None and foo is not None
    assert (counter.visibility, counter.type, foo.visibility, foo.type) == (
        C.STV_PROTECTED, C.STT_OBJECT, C.STV_PROTECTED, C.STT_FUNC)
    mine = loader.symbol(res, 0, refs[("counter", True)].symbol_index)
    assert mine is not None and mine.index == 0 and mine.size == 4 and mine.shndx != C.SHN_UNDEF
    lib = by_name(res, "libfoo.so.1")
    assert res.objects[counter.index] is lib and counter.version is None and counter.versioned_name == "counter"


def test_versioned_definitions_and_the_aborting_lookup(tmp_path: Path) -> None:
    """``resolve`` names the version of the definition; where glibc 2.36 aborts in check_match it returns None
    (no exception leaks) and ``lookup_aborts`` names the object."""
    shared_lib(tmp_path / "v" / "libv.so", "int foo(void) { return 0; }\n", soname="libv.so",
               version_script=V1_MAP)
    shared_lib(tmp_path / "run" / "libv.so", "int foo(void) { return 0; }\n", soname="libv.so")
    e = executable(tmp_path / "e", "int foo(void);\nint main(void) { return foo(); }\n",
                   libs=[f"-L{tmp_path / 'v'}", "-lv"])
    good = make_loader(env=env_with(LD_LIBRARY_PATH=str(tmp_path / "v")))
    res = good.load(str(e))
    (ref,) = [r for r in good.references(res, 0) if r.name == "foo"]
    assert ref.version is not None and (ref.version.name, ref.version.filename) == ("VER_1", "libv.so")
    assert ref.lazy and ref.plt and not ref.copy and not ref.weak
    d = good.resolve(res, 0, ref)
    assert d is not None and d.versioned_name == "foo@@VER_1" and not d.hidden
    assert good.lookup_aborts(res, 0, ref) is None
    assert good.lookup(res, "foo") == (d.index, "foo@@VER_1")
    bad = make_loader(env=env_with(LD_LIBRARY_PATH=str(tmp_path / "run")))
    res = bad.load(str(e))
    (ref,) = [r for r in bad.references(res, 0) if r.name == "foo"]
    assert bad.resolve(res, 0, ref) is None
    assert bad.lookup(res, "foo") is None
    where = bad.lookup_aborts(res, 0, ref)
    assert where is not None and res.objects[where].path == f"{tmp_path}/run/libv.so"
    with pytest.raises(SoswapError):
        bad.references(res, len(res.objects))


def test_sibling_loaders_share_the_binding_caches(tmp_path: Path) -> None:
    case = _protected_case(tmp_path)
    a = make_loader(env=_env(tmp_path, "v1"))
    b = a.sibling(a.env.replace(library_path=str(tmp_path / "v2")))
    assert b.bind_cache is a.bind_cache and b.cache is a.cache
    ra, rb = a.load(str(case["pie"])), b.load(str(case["pie"]))
    assert by_name(rb, "libfoo.so.1").path == f"{tmp_path}/v2/libfoo.so.1"
    fresh = make_loader(env=_env(tmp_path, "v2"))
    assert [f.line for f in b.bind(rb).failures] == [f.line for f in fresh.bind(fresh.load(str(case["pie"]))).failures]
    assert not a.bind(ra).failures


# -- substitutes the loader refuses ----------------------------------------------------------------------

def _app_and_lib(tmp: Path) -> Tuple[Path, Path]:
    lib = shared_lib(tmp / "lib" / "libfoo.so.1", "int foo(void) { return 42; }\n", soname="libfoo.so.1")
    app = executable(tmp / "app", "int foo(void);\nint main(void) { return foo() != 42; }\n",
                     flags=[f"-Wl,-rpath,{tmp / 'lib'}"], libs=[str(lib)])
    return app, lib


def _patched(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    raw = bytearray(src.read_bytes())
    raw[offset:offset + len(data)] = data
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(raw))
    return dst


def _installed(tmp: Path, app: Path, target: Path, new: Path) -> str:
    """Really put ``new`` at ``target`` (keeping the old file aside), run the app, put the old file back."""
    keep = tmp / "keep.so"
    shutil.copyfile(target, keep)
    try:
        shutil.copyfile(new, target)
        return run_program(app).stderr
    finally:
        shutil.copyfile(keep, target)


@pytest.mark.parametrize("what", ["machine", "osabi", "class"])
def test_a_refused_substitute_is_flagged(tmp_path: Path, what: str) -> None:
    app, target = _app_and_lib(tmp_path)
    if what == "machine":
        new = _patched(target, tmp_path / "new" / "libfoo.so.1", 18, (183).to_bytes(2, "little"))  # AArch64
        kind, tail = "not-found", "cannot open shared object file: No such file or directory"
    elif what == "osabi":
        new = _patched(target, tmp_path / "new" / "libfoo.so.1", 7, bytes([9]))  # FreeBSD
        kind, tail = "bad-file", "ELF file OS ABI invalid"
    else:
        if not have_m32():
            pytest.skip("gcc -m32 cannot link (gcc-multilib missing)")
        new = shared_lib(tmp_path / "new" / "libfoo.so.1", "int foo(void) { return 42; }\n", soname="libfoo.so.1",
                         m32=True)
        kind, tail = "wrong-class", "wrong ELF class: ELFCLASS32"
    loader = make_loader()
    res = loader.load(str(app), substitutions={str(target): str(new)})
    f = res.fatal
    assert f is not None and (f.kind, f.substitute) == (kind, True) and f.line.endswith(tail)
    assert res.substitutes_rejected == (str(target),)
    assert not any(o.substituted for o in res.objects)
    # the same line once NEW is really there
    assert f.line in _installed(tmp_path, app, target, new)
    # the same program without the substitution: nothing refused, nothing flagged
    plain = loader.load(str(app))
    assert plain.fatal is None and plain.substitutes_rejected == ()


def test_a_refused_substitute_without_a_failure_is_still_named(tmp_path: Path) -> None:
    """NEW is skipped (another machine) and the search goes on to another copy: no failure, yet the loader
    says it refused NEW."""
    app, target = _app_and_lib(tmp_path)
    other = shared_lib(tmp_path / "other" / "libfoo.so.1", "int foo(void) { return 42; }\n", soname="libfoo.so.1")
    new = _patched(target, tmp_path / "new" / "libfoo.so.1", 18, (183).to_bytes(2, "little"))
    loader = make_loader(env=env_with(LD_LIBRARY_PATH=f"{target.parent}:{other.parent}"))
    res = loader.load(str(app), substitutions={str(target): str(new)})
    assert res.fatal is None and by_name(res, "libfoo.so.1").path == str(other)
    assert res.substitutes_rejected == (str(target),)
    accepted = loader.load(str(app), substitutions={str(target): str(other)})
    assert accepted.substitutes_rejected == () and by_name(accepted, "libfoo.so.1").substituted


# -- loads with substitutions share templates ------------------------------------------------------------

def _view(res):  # type: ignore[no-untyped-def]
    objects = tuple(o._replace(elf=o.elf.identity if o.elf is not None else None) for o in res.objects)
    return (objects, res.scope, res.initfini, res.failures, res.fatal, res.argv0, res.substitutes_rejected)


def test_loads_with_the_same_substitutions_share_templates_and_directories(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    lib = shared_lib(tmp_path / "lib" / "libfoo.so.1", "int foo(void) { return 1; }\nint bar(void) { return 2; }\n",
                     soname="libfoo.so.1")
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    progs = [executable(tmp_path / f"p{n}", f"int {f}(void);\nint main(void) {{ return {f}(); }}\n",
                        flags=[f"-Wl,-rpath,{tmp_path / 'lib'}"], libs=[str(lib)])
             for n, f in enumerate(("foo", "bar", "foo"))]
    subst = {str(lib): str(new)}
    shared = make_loader()
    first = shared.load(str(progs[0]), substitutions=dict(subst))
    calls: List[str] = []
    real_realpath = os.path.realpath

    def counting(p, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(p)
        return real_realpath(p, *a, **k)

    monkeypatch.setattr(os.path, "realpath", counting)
    later = [shared.load(str(p), substitutions=dict(subst)) for p in progs[1:]]
    monkeypatch.undo()
    # the same shape and set: the libraries' entries are shared, no directory is resolved again
    assert all(r.objects[1] is first.objects[1] for r in later)
    assert calls == []
    for p, r in zip(progs, [first, *later]):
        fresh = make_loader().load(str(p), substitutions=dict(subst))
        assert _view(r) == _view(fresh)
        assert by_name(r, "libfoo.so.1").substituted
    # another set is another template
    other = shared.load(str(progs[0]), substitutions={str(lib): str(lib)})
    assert other.objects[1] is not first.objects[1]
    # and the bindings are the fresh loader's: bar is missing from NEW
    b = shared.bind(later[0])
    assert [u.symbol for u in b.unresolved] == ["bar"]


def test_a_bad_file_after_a_refused_substitute_is_not_the_substitute(tmp_path: Path) -> None:
    """NEW is skipped (another machine); the search goes on and dies on another, broken copy: the failure names
    that file and is not flagged, the refusal of NEW is still recorded."""
    app, target = _app_and_lib(tmp_path)
    broken = tmp_path / "broken" / "libfoo.so.1"
    broken.parent.mkdir()
    broken.write_bytes(b"\x7fELF" + b"\0" * 20)
    new = _patched(target, tmp_path / "new" / "libfoo.so.1", 18, (183).to_bytes(2, "little"))
    env = env_with(LD_LIBRARY_PATH=f"{target.parent}:{broken.parent}")
    res = make_loader(env=env).load(str(app), substitutions={str(target): str(new)})
    f = res.fatal
    assert f is not None and f.kind == "bad-file" and f.line.endswith(f"{broken}: file too short")
    assert not f.substitute and res.substitutes_rejected == (str(target),)
    keep = tmp_path / "keep.so"
    shutil.copyfile(target, keep)
    try:
        shutil.copyfile(new, target)
        real = run_program(app, env=env)
    finally:
        shutil.copyfile(keep, target)
    assert real.status == 127 and f.line in real.stderr
