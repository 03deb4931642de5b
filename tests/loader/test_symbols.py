"""Binding and versions (loader.md §(b) cases 21-29): the version check at startup, which definition a
reference binds to, unresolved references at startup or at the first call, weak references, preloads,
copy relocations and the glibc 2.36 ``check_match`` assertion."""

from __future__ import annotations

import os
import shutil
import signal
import struct
from pathlib import Path

import pytest

from loader.helpers import (
    assert_ldd_parity,
    assert_run_prediction,
    by_name,
    env_with,
    make_loader,
    model_ldd,
    predict,
    real_ldd,
    run_program,
)
from support.build import executable, requires_cc, rpath_flags, shared_lib

pytestmark = requires_cc

V1_MAP = "VER_1 { global: foo; local: *; };\n"
V2_MAP = "VER_1 { global: foo; local: *; };\nVER_2 { global: bar; } VER_1;\n"


def _versioned(tmp: Path) -> Path:
    """libv v2 (foo@VER_1, bar@VER_2) to link against; run with v1 (foo only) in the RUNPATH directory."""
    shared_lib(tmp / "v2" / "libv.so", "int foo(void) { return 1; }\nint bar(void) { return 2; }\n",
               soname="libv.so", version_script=V2_MAP)
    shared_lib(tmp / "run" / "libv.so", "int foo(void) { return 1; }\n", soname="libv.so", version_script=V1_MAP)
    return executable(tmp / "e", "int foo(void); int bar(void);\n"
                      "int main(int c, char **v) { return c > 1 ? bar() : foo() - 1; }\n",
                      flags=rpath_flags(str(tmp / "run")), libs=[f"-L{tmp / 'v2'}", "-lv"])


def test_case21_missing_version_fails_at_startup(tmp_path: Path) -> None:
    e = _versioned(tmp_path)
    real = assert_run_prediction(e)
    assert real.status == 1 and "version `VER_2' not found" in real.stderr
    out = assert_ldd_parity(e)
    assert out.status == 0 and "version `VER_2' not found" in out.stdout
    out = assert_ldd_parity(e, flag="-r")
    assert "undefined symbol: bar, version VER_2" in out.stdout


def test_case22_unversioned_reference_binds_the_oldest_version(tmp_path: Path) -> None:
    d = tmp_path / "d"
    src = ('int foo_1(void) { return 1; }\nint foo_2(void) { return 2; }\n'
           '__asm__(".symver foo_1, foo@VER_1");\n__asm__(".symver foo_2, foo@@VER_2");\n')
    script = "VER_1 { local: foo_1; foo_2; };\nVER_2 { } VER_1;\n"
    shared_lib(d / "libw.so", src, soname="libw.so", version_script=script)
    shared_lib(tmp_path / "plain" / "libw.so", "int foo(void) { return 9; }\n", soname="libw.so")
    main = "int foo(void);\nint main(void) { return foo(); }\n"
    old = executable(tmp_path / "old", main, flags=rpath_flags(str(d)), libs=[f"-L{tmp_path / 'plain'}", "-lw"])
    new = executable(tmp_path / "new", main, flags=rpath_flags(str(d)), libs=[f"-L{d}", "-lw"])
    assert run_program(old).status == 1
    assert run_program(new).status == 2
    for prog, want in ((old, "foo@VER_1"), (new, "foo@@VER_2")):
        loader = make_loader()
        res = loader.load(str(prog))
        where, name = loader.lookup(res, "foo")  # type: ignore[misc]
        assert res.objects[where].path == f"{d}/libw.so" and name == want
        assert_ldd_parity(prog, flag="-r")


def test_case23_versioned_library_replaced_by_an_unversioned_build(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shared_lib(tmp_path / "v" / "libv.so", "int foo(void) { return 0; }\n", soname="libv.so",
               version_script=V1_MAP)
    shared_lib(run_dir / "libv.so", "int foo(void) { return 0; }\n", soname="libv.so")
    e = executable(tmp_path / "e", "#include <unistd.h>\nint foo(void);\n"
                   "int main(void) { write(1, \"start\\n\", 6); return foo(); }\n",
                   flags=rpath_flags(str(run_dir)), libs=[f"-L{tmp_path / 'v'}", "-lv"])
    real = run_program(e)
    _, bound = predict(e)
    warning = f"{e}: {run_dir}/libv.so: no version information available (required by {e})"
    assert warning in real.stderr.splitlines()
    assert any(f.line == warning for f in bound.failures)
    # glibc 2.36 aborts in check_match (fixed in 2.41) at the lookup that meets the unversioned library: foo's
    # lazy PLT slot, so at its first call, after main started
    (abort,) = [f for f in bound.failures if f.kind == "assertion"]
    assert (abort.when, abort.fatal, abort.symbol, abort.version) == ("first-call", False, "foo", "VER_1")
    assert bound.fatal is None
    assert real.stdout == "start\n" and real.status == abort.exit_status == 127
    assert abort.line in real.stderr
    # under LD_BIND_NOW the same lookup runs at startup: main never runs
    now = env_with(LD_BIND_NOW="1")
    real_now = run_program(e, env=now)
    _, bound_now = predict(e, env=now)
    assert bound_now.fatal is not None and bound_now.fatal.kind == "assertion" and bound_now.fatal.when == "startup"
    assert real_now.stdout == "" and real_now.status == bound_now.fatal.exit_status == 127
    assert bound_now.fatal.line in real_now.stderr
    assert_ldd_parity(e)
    assert_ldd_parity(e, flag="-d")
    assert_ldd_parity(e, flag="-r")


def _lazy(tmp: Path, *, now: bool) -> Path:
    shared_lib(tmp / "old" / "libf.so", "int f1(void) { return 0; }\nint f2(void) { return 3; }\n", soname="libf.so")
    shared_lib(tmp / "new" / "libf.so", "int f1(void) { return 0; }\n", soname="libf.so")
    return executable(tmp / "e", "int f1(void); int f2(void);\n"
                      "int main(int c, char **v) { return c > 1 ? f2() : f1(); }\n",
                      flags=[*rpath_flags(str(tmp / "new")), *(["-Wl,-z,now"] if now else ["-Wl,-z,lazy"])],
                      libs=[f"-L{tmp / 'old'}", "-lf"])


def test_case24_lazy_call_fails_at_the_first_call(tmp_path: Path) -> None:
    e = _lazy(tmp_path, now=False)
    assert assert_run_prediction(e).status == 0
    real = run_program(e, "x")
    _, bound = predict(e)
    (f2,) = [f for f in bound.failures if f.symbol == "f2"]
    assert f2.when == "first-call" and not f2.fatal
    assert real.status == 127 and f2.line in real.stderr.splitlines()
    assert f2.line == f"{e}: symbol lookup error: {e}: undefined symbol: f2"


def test_case25_bind_now_fails_at_startup(tmp_path: Path) -> None:
    e = _lazy(tmp_path, now=True)
    real = assert_run_prediction(e)
    assert real.status == 127 and "undefined symbol: f2" in real.stderr
    # LD_BIND_NOW has the same effect on the lazy build
    lazy = _lazy(tmp_path / "l", now=False)
    assert assert_run_prediction(lazy, env=env_with(LD_BIND_NOW="1")).status == 127


def test_case26_missing_data_fails_at_startup_even_when_lazy(tmp_path: Path) -> None:
    shared_lib(tmp_path / "old" / "libg.so", "int gv = 4;\nint g(void) { return 0; }\n", soname="libg.so")
    shared_lib(tmp_path / "new" / "libg.so", "int g(void) { return 0; }\n", soname="libg.so")
    e = executable(tmp_path / "e", "extern int gv; int g(void);\nint main(void) { return gv + g(); }\n",
                   flags=[*rpath_flags(str(tmp_path / "new")), "-Wl,-z,lazy"],
                   libs=[f"-L{tmp_path / 'old'}", "-lg"])
    real = assert_run_prediction(e)
    assert real.status == 127 and "undefined symbol: gv" in real.stderr
    assert_ldd_parity(e, flag="-d")
    assert_ldd_parity(e, flag="-r")


def test_case27_missing_weak_reference_is_fine(tmp_path: Path) -> None:
    shared_lib(tmp_path / "old" / "libf.so", "int f1(void) { return 0; }\nint f2(void) { return 3; }\n",
               soname="libf.so")
    shared_lib(tmp_path / "new" / "libf.so", "int f1(void) { return 0; }\n", soname="libf.so")
    e = executable(tmp_path / "e", "int f1(void); __attribute__((weak)) int f2(void);\n"
                   "int main(void) { return f2 ? f2() : f1(); }\n",
                   flags=[*rpath_flags(str(tmp_path / "new")), "-Wl,-z,now"],
                   libs=[f"-L{tmp_path / 'old'}", "-lf"])
    assert assert_run_prediction(e).status == 0
    _, bound = predict(e)
    assert not bound.unresolved
    assert_ldd_parity(e, flag="-r")


def test_case28_ldd_d_misses_functions_ldd_r_reports_them(tmp_path: Path) -> None:
    e = _lazy(tmp_path, now=False)
    d = assert_ldd_parity(e, flag="-d")
    r = assert_ldd_parity(e, flag="-r")
    assert "undefined symbol" not in d.stdout
    assert f"undefined symbol: f2\t({e})" in r.stdout


def test_case29_preload_interposes(tmp_path: Path) -> None:
    shared_lib(tmp_path / "lib" / "libv.so", "int v(void) { return 1; }\n", soname="libv.so")
    pre = shared_lib(tmp_path / "pre" / "libpre.so", "int v(void) { return 7; }\n", soname="libpre.so")
    e = executable(tmp_path / "e", "int v(void);\nint main(void) { return v(); }\n",
                   flags=rpath_flags(str(tmp_path / "lib")), libs=[f"-L{tmp_path / 'lib'}", "-lv"])
    env = env_with(LD_PRELOAD=str(pre))
    assert run_program(e, env=env).status == 7
    loader = make_loader(env=env)
    res = loader.load(str(e))
    assert res.objects[2].path == str(pre) and res.objects[2].kind == "preload"
    where, _ = loader.lookup(res, "v")  # type: ignore[misc]
    assert res.objects[where].path == str(pre)
    assert_ldd_parity(e, env=env)
    # a preload that cannot be found: the warning line, and the program still runs
    env = env_with(LD_PRELOAD="libnothere.so")
    real = assert_run_prediction(e, env=env)
    assert real.status == 1 and "cannot be preloaded" in real.stderr
    assert_ldd_parity(e, env=env)


@pytest.mark.parametrize("broken", ["dependency", "version", "bind-now"])
def test_a_preload_the_ldd_shell_cannot_start_with(tmp_path: Path, broken: str) -> None:
    """LD_PRELOAD reaches the shell that runs the ldd script too: a preload that loads but needs a library
    that is not found, a version its dependency lacks, or (under LD_BIND_NOW) a function nothing defines,
    kills the shell as it starts. ldd then prints only the shell's own error and exits with its status (127,
    or 1 for the version); ``soswap tree --ldd`` showed the whole list (found by bench/fuzz_worlds.py)."""
    dep = shared_lib(tmp_path / "build" / "libdep.so", "int dep_v2(void) { return 2; }\n", soname="libdep.so",
                     version_script="D_1 { local: *; };\nD_2 { global: dep_v2; } D_1;\n")
    if broken == "version":  # the installed libdep.so defines D_1 only
        shared_lib(tmp_path / "lib" / "libdep.so", "int dep_v1(void) { return 1; }\n", soname="libdep.so",
                   version_script="D_1 { global: dep_v1; local: *; };\n")
    pre_src = "int dep_v2(void);\nint pre(void) { return dep_v2(); }\n"
    if broken == "bind-now":
        pre_src = "int nowhere(void);\nint pre(void) { return nowhere(); }\n"
    pre = shared_lib(tmp_path / "lib" / "libpre.so", pre_src, soname="libpre.so",
                     flags=rpath_flags(str(tmp_path / "lib")), libs=[] if broken == "bind-now" else [str(dep)])
    env = env_with(LD_PRELOAD=str(pre), **({"LD_BIND_NOW": "1"} if broken == "bind-now" else {}))
    for flag in (None, "-r"):
        out = assert_ldd_parity("/bin/true", env=env, flag=flag)
        assert out.stdout == "" and out.status == (1 if broken == "version" else 127), out
        assert out.stderr.startswith("/bin/bash: "), out
    real = assert_run_prediction("/bin/true", env=env)  # the program meets the same error
    assert real.status == (1 if broken == "version" else 127)


def test_copy_relocation_size_mismatch_warning(tmp_path: Path) -> None:
    shared_lib(tmp_path / "old" / "libc2.so", "int table[4] = {1, 2, 3, 4};\n", soname="libc2.so")
    shared_lib(tmp_path / "new" / "libc2.so", "int table[8] = {1, 2, 3, 4};\n", soname="libc2.so")
    e = executable(tmp_path / "e", "extern int table[4];\nint main(void) { return table[0] - 1; }\n",
                   flags=[*rpath_flags(str(tmp_path / "new")), "-no-pie", "-fno-pic"],
                   libs=[f"-L{tmp_path / 'old'}", "-lc2"])
    real = run_program(e)
    _, bound = predict(e)
    (w,) = [f for f in bound.failures if f.kind == "copy-size"]
    assert w.line in real.stderr.splitlines()
    assert_ldd_parity(e, flag="-r")


def test_versioned_library_chain_on_the_real_system() -> None:
    """A real program with many versioned references: nothing unresolved, as ldd -r says."""
    prog = shutil.which("ls") or "/usr/bin/ls"
    want = real_ldd(prog, flag="-r")
    _, bound = predict(prog)
    assert bound.fatal is None and not bound.unresolved and bound.bindings_checked > 50
    assert "undefined symbol" not in want.stdout
    res, _ = predict(prog)
    assert by_name(res, "libc.so.6").reason.rule == "cache"


def test_ldd_r_with_a_missing_versioned_library(tmp_path: Path) -> None:
    """Trace mode: versions needed from a library that is not found do not count in l_nversions: references
    whose version index is above every other one are reported without their version, and an object whose only
    version needs are from missing objects has no version table at all: ld.so dies of SIGSEGV relocating it
    (at its first reference bound at startup)."""
    e = _versioned(tmp_path)
    v2 = tmp_path / "v2"
    alone = shared_lib(tmp_path / "libalone.so", "int foo(void);\nint g(void) { return foo(); }\n",
                       soname="libalone.so", flags=["-nostdlib"], libs=[f"-L{v2}", "-lv"])
    late = shared_lib(tmp_path / "liblate.so", "#include <stdio.h>\nint foo(void);\n"
                      "int g(void) { puts(\"x\"); return foo(); }\n", soname="liblate.so",
                      libs=["-Wl,--no-as-needed", "-lc", f"-L{v2}", "-lv"])
    shutil.rmtree(tmp_path / "run")
    shutil.rmtree(v2)
    out = assert_ldd_parity(e, flag="-r")
    assert "libv.so => not found" in out.stdout
    out = assert_ldd_parity(alone, flag="-r")
    assert out.status == 1 and "undefined symbol" not in out.stdout
    # ldd -d leaves its one reference, a PLT slot, unbound: &l_versions[ndx] is never taken, no crash
    assert assert_ldd_parity(alone, flag="-d").status == 0
    out = assert_ldd_parity(late, flag="-r")
    assert f"undefined symbol: foo\t({late})" in out.stdout or "version VER_1" in out.stdout


def test_ldd_d_with_an_object_whose_versions_all_come_from_missing_objects(tmp_path: Path) -> None:
    """Trace mode: libx.so defines no version and needs versions only from a library not found, so it gets no
    l_versyms either (l_nversions 0): check_match takes it as unversioned, and libr.so's data reference to s@V,
    whose version names libx.so, aborts on glibc < 2.41's assertion (ldd -d: data relocations only, so libx.so's
    own PLT reference through its missing version is never bound). soswap said ldd prints nothing more."""
    stub, d = tmp_path / "stub", tmp_path / "d"
    missing = shared_lib(stub / "libmissing.so", "int m(void) { return 1; }\n", soname="libmissing.so",
                         version_script="M1 { global: m; local: *; };", flags=["-nostdlib"])
    shared_lib(d / "libx.so", "extern int m(void);\nint s(void) { return m(); }\n", soname="libx.so",
               flags=["-nostdlib"], libs=[str(missing)])
    versioned = shared_lib(stub / "libx.so", "int s(void) { return 2; }\n", soname="libx.so",
                           version_script="V { global: s; local: *; };", flags=["-nostdlib"])
    libr = shared_lib(d / "libr.so", "extern int s(void);\nint (*ps)(void) = s;\nint r(void) { return s(); }\n",
                      soname="libr.so", flags=["-nostdlib"], libs=[str(versioned)])
    prog = executable(tmp_path / "prog", "int r(void);\nint main(void) { return r(); }\n",
                      libs=["-Wl,--no-as-needed", "-Wl,--allow-shlib-undefined", str(libr), str(d / "libx.so")],
                      flags=rpath_flags(str(d)))
    shutil.rmtree(stub)
    out = assert_ldd_parity(prog, flag="-d")
    if make_loader().profile.glibc_version < (2, 41):
        assert "check_match: Assertion" in out.stdout + out.stderr, out
    assert_ldd_parity(prog, flag="-r")  # libx.so's own reference through its missing version kills ld.so first


def test_a_version_need_naming_a_file_nothing_loads_aborts_ld_so(tmp_path: Path) -> None:
    """The program's DT_NEEDED "libv.so" is turned into "bv.so" (the tail of the same string) while its version
    needs still name libv.so, as a hand-edited or ``patchelf --remove-needed`` file can be: find_needed finds
    nothing and ld.so's ``assert (needed != NULL)`` in _dl_check_map_versions kills it (exit 127)."""
    from elftools.elf.elffile import ELFFile

    lib = shared_lib(tmp_path / "libv.so", "int foo(void) { return 1; }\n", soname="libv.so", version_script=V1_MAP)
    shared_lib(tmp_path / "bv.so", "int foo(void) { return 1; }\n", soname="bv.so", version_script=V1_MAP)
    e = executable(tmp_path / "e", "int foo(void);\nint main(void) { return foo() - 1; }\n",
                   flags=rpath_flags(str(tmp_path)), libs=[str(lib)])
    data = bytearray(e.read_bytes())
    with open(e, "rb") as f:
        elf = ELFFile(f)
        at = elf.get_section_by_name(".dynstr").data().find(b"libv.so\0")
        dyn = elf.get_section_by_name(".dynamic")
        base, count = dyn["sh_offset"], dyn.num_tags()
    for i in range(count):
        tag, value = struct.unpack_from("<qQ", data, base + 16 * i)
        if tag == 1 and value == at:  # DT_NEEDED "libv.so" -> "bv.so"
            struct.pack_into("<Q", data, base + 16 * i + 8, at + 2)
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(data))
    bad.chmod(0o755)
    real = assert_run_prediction(bad)
    assert real.status == 127 and "Assertion `needed != NULL' failed!" in real.stderr
    out = assert_ldd_parity(bad)
    assert out.status == 1
    assert_ldd_parity(bad, flag="-r")


def test_a_tls_reference_bound_to_a_variable_that_is_not_tls_kills_ld_so(tmp_path: Path) -> None:
    """The program was linked against ``__thread int tvar``; the library it runs with defines a plain ``int
    tvar`` and no TLS segment. R_X86_64_TPOFF64's CHECK_STATIC_TLS allocates static TLS for that library,
    whose TLS alignment is 0: ld.so dies of SIGFPE while relocating (``tree -r``; ``ldd -r`` prints the list and
    fails)."""
    shared_lib(tmp_path / "old" / "libt.so", "__thread int tvar = 1;\n", soname="libt.so")
    shared_lib(tmp_path / "new" / "libt.so", "int tvar = 1;\n", soname="libt.so")
    e = executable(tmp_path / "e", "extern __thread int tvar;\nint main(void) { return tvar - 1; }\n",
                   flags=rpath_flags(str(tmp_path / "new")), libs=[f"-L{tmp_path / 'old'}", "-lt"])
    assert run_program(e).status == -signal.SIGFPE
    _, bound = predict(e)
    fatal = bound.fatal
    assert fatal is not None and fatal.kind == "crash" and fatal.exit_status == 128 + signal.SIGFPE
    assert "TLS reference to `tvar'" in fatal.line
    out = assert_ldd_parity(e, flag="-r")
    assert out.status == 1 and "libt.so => " in out.stdout
    # linked and run against the TLS variable: nothing to say
    ok = executable(tmp_path / "ok", "extern __thread int tvar;\nint main(void) { return tvar - 1; }\n",
                    flags=rpath_flags(str(tmp_path / "old")), libs=[f"-L{tmp_path / 'old'}", "-lt"])
    assert predict(ok)[1].fatal is None and run_program(ok).status == 0


def test_a_second_copy_of_the_dynamic_linker_crashes_the_program(tmp_path: Path) -> None:
    """ld.so preloaded under its real path (not the PT_INTERP path): ld.so's own map has no device and inode,
    so it is loaded a second time, first in the scope; libc's `_rtld_global_ro` binds to the copy's data, never
    set up, and the program dies of SIGFPE in libc's start-up code. ldd, in trace mode, runs no start-up code."""
    interp = "/lib64/ld-linux-x86-64.so.2"
    real = os.path.realpath(interp)
    if real == interp or not os.path.exists(real):
        pytest.skip("the interpreter is not reached through another path here")
    e = executable(tmp_path / "e", "int main(void) { return 0; }\n")
    env = env_with(LD_PRELOAD=real)
    assert run_program(e, env=env).status == -signal.SIGFPE
    _, bound = predict(e, env=env)
    fatal = bound.fatal
    assert fatal is not None and fatal.kind == "crash" and fatal.exit_status == 128 + signal.SIGFPE
    assert "a second copy of the dynamic linker" in fatal.line
    assert predict(e)[1].fatal is None  # without the preload
    # the shell running the ldd script dies of it first: ldd prints nothing; a shell shows 128 + SIGFPE
    want, got = real_ldd(e, env=env), model_ldd(e, env=env)
    assert (want.stdout, want.stderr, want.status) == ("", "", -signal.SIGFPE)
    assert (got.stdout, got.stderr, got.status) == ("", "", 128 + signal.SIGFPE)


def test_a_tls_descriptor_bound_to_a_plain_variable_kills_ld_so(tmp_path: Path) -> None:
    """-mtls-dialect=gnu2: a library reaches ``__thread int tvar`` through R_X86_64_TLSDESC, which ld.so
    resolves at load time with TRY_STATIC_TLS: against a library without a TLS segment, SIGFPE at startup."""
    shared_lib(tmp_path / "old" / "libt.so", "__thread int tvar = 1;\n", soname="libt.so")
    shared_lib(tmp_path / "new" / "libt.so", "int tvar = 1;\n", soname="libt.so")
    use = shared_lib(tmp_path / "use" / "libuse.so", "extern __thread int tvar;\nint get(void) { return tvar; }\n",
                     soname="libuse.so", libs=[f"-L{tmp_path / 'old'}", "-lt"],
                     flags=["-mtls-dialect=gnu2", *rpath_flags(str(tmp_path / "new"))])
    e = executable(tmp_path / "e", "int get(void);\nint main(void) { return get() - 1; }\n",
                   flags=[f"-Wl,-rpath-link,{tmp_path / 'old'}", *rpath_flags(str(tmp_path / "use"),
                                                                            str(tmp_path / "new"))],
                   libs=[str(use)])
    assert run_program(e).status == -signal.SIGFPE
    fatal = predict(e)[1].fatal
    assert fatal is not None and fatal.kind == "crash" and "TLS reference to `tvar'" in fatal.line


def _shadow_own_definition(lib: Path) -> None:
    """Give ``lib`` a hidden copy of ``foo@@VER_2`` just before the default one in its hash chain, the one its
    own call to ``foo`` names (foo@VER_1's .dynsym row becomes it). No linker writes such a table; ld.so's
    ``do_lookup_x`` stops at the hidden copy and skips the object."""
    from elftools.elf.elffile import ELFFile

    with open(lib, "rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        versym = elf.get_section_by_name(".gnu.version")
        rela = elf.get_section_by_name(".rela.plt")
        foos = [n for n in range(dynsym.num_symbols()) if dynsym.get_symbol(n).name == "foo"]
        slots = [(n, r["r_info_sym"]) for n, r in enumerate(rela.iter_relocations())
                 if r["r_info_sym"] in foos]
        sym_at, ent = dynsym["sh_offset"], dynsym["sh_entsize"]
        ver_at, rela_at, rela_ent = versym["sh_offset"], rela["sh_offset"], rela["sh_entsize"]
    assert len(foos) == 2 and len(slots) == 1
    data = bytearray(lib.read_bytes())
    slot, named = slots[0]
    low, high = sorted(foos)
    default_ver = struct.unpack_from("<H", data, ver_at + 2 * named)[0] & 0x7FFF
    # the higher row is the default foo@@VER_2 the call names, the lower one its hidden copy
    for n in (low, high):
        struct.pack_into("<H", data, ver_at + 2 * n, default_ver)
    data[sym_at + low * ent + 5] = 2  # st_other = STV_HIDDEN
    data[sym_at + high * ent + 5] = 0
    info_at = rela_at + slot * rela_ent + 8
    r_info = struct.unpack_from("<Q", data, info_at)[0]
    struct.pack_into("<Q", data, info_at, (high << 32) | (r_info & 0xFFFFFFFF))
    lib.write_bytes(bytes(data))


def test_a_hidden_copy_first_in_the_chain_hides_the_objects_own_definition(tmp_path: Path) -> None:
    # A reference through the object's own definition is taken as resolvable without a chain walk
    # (ObjectSymbols.foreign_positions) unless a hidden symbol of that name could come first.
    src = ("int foo(void);\nint foo_1(void) { return 1; }\nint foo_2(void) { return 2; }\n"
           '__asm__(".symver foo_1, foo@VER_1");\n__asm__(".symver foo_2, foo@@VER_2");\n'
           "int call(void) { return foo(); }\n")
    script = "VER_1 { global: call; local: foo_1; foo_2; };\nVER_2 { } VER_1;\n"
    lib = shared_lib(tmp_path / "libx.so", src, soname="libx.so", version_script=script)
    e = executable(tmp_path / "e", "int call(void);\nint main(void) { return call() - 2; }\n",
                   flags=rpath_flags(str(tmp_path)), libs=[f"-L{tmp_path}", "-lx"])
    assert run_program(e).status == 0
    _shadow_own_definition(lib)
    real = assert_run_prediction(e, env=env_with(LD_BIND_NOW="1"))
    assert real.status == 127 and "undefined symbol: foo, version VER_2" in real.stderr
    out = assert_ldd_parity(e, flag="-r")
    assert "undefined symbol: foo, version VER_2" in out.stdout
