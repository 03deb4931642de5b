"""``soswap check`` on replacements whose damage ld.so does not report, or reports only in a context the diff
alone misses: each verdict against what really happens after NEW replaces TARGET (the program run, or the
plugin dlopen-ed by a host). Found by a QA round that compared verdicts with reality."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

from soswap.abi import check_replacement
from soswap.abi.problems import CheckResult
from support.build import executable, requires_cc, shared_lib

pytestmark = requires_cc

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
HOST = r"""#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlerror: %s\n", dlerror()); return 1; }
    int (*run)(void) = (int (*)(void))dlsym(h, "run");
    printf("run=%d\n", run());
    return 0;
}
"""


def replace(target: Path, new: Path) -> None:
    """What an install does: a copy renamed over TARGET."""
    tmp = target.with_name(".swap")
    shutil.copyfile(new, tmp)
    os.replace(tmp, target)


def check(target: Path, new: Path, consumers: List[Path], **kw: object) -> CheckResult:
    return check_replacement(str(target), str(new), consumers=[str(c) for c in consumers], environ=dict(ENV),
                             system=False, processes=False, keep_index=False, **kw)  # type: ignore[arg-type]


def problems(result: CheckResult) -> Dict[str, List[tuple]]:
    return {c.path: [(p.kind, p.when) for p in c.problems] for c in result.consumers}


def test_a_function_moved_out_of_new_but_still_called_by_it(tmp_path: Path) -> None:
    """NEW stops defining foo and its bar() still calls foo: every consumer of bar dies at the first call,
    also one that never names foo (the diff shortcut used to call it compatible)."""
    old = shared_lib(tmp_path / "lib" / "libfoo.so.1", "int foo(void){return 1;} int bar(void){return foo()+1;}\n",
                     soname="libfoo.so.1")
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", "int foo(void); int bar(void){return foo()+1;}\n",
                     soname="libfoo.so.1")
    app = executable(tmp_path / "app", '#include <stdio.h>\nint bar(void);\n'
                     'int main(void){ puts("start"); fflush(stdout); return bar() - 2; }\n',
                     libs=[str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    for full in (False, True):
        result = check(old, new, [app], full=full)
        assert result.verdict == "incompatible"
        (c,) = result.consumers
        assert [(p.kind, p.when, p.symbol) for p in c.problems] == [("undefined-symbol", "first-call", "foo")]
        line = c.problems[0].message
    assert result.self_check is not None and result.self_check.verdict == "review"
    assert "a consumer above fails on them too" in (result.self_check.note or "")
    replace(old, new)
    run = subprocess.run([str(app)], capture_output=True, text=True, timeout=60)
    assert run.stdout == "start\n" and run.returncode == 127 and line in run.stderr


def test_a_new_dependency_found_through_the_consumers_runpath_is_no_refusal(tmp_path: Path) -> None:
    """NEW needs libhelper.so.1, which the program loads itself (found through its RUNPATH): the program runs,
    so NEW's own load from TARGET's place failing is a review note, not a refusal."""
    helper = shared_lib(tmp_path / "hdir" / "libhelper.so.1", "int helper(void){return 5;}\n",
                        soname="libhelper.so.1")
    old = shared_lib(tmp_path / "lib" / "libfoo.so.1", "int foo(void){return 1;}\n", soname="libfoo.so.1")
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", "int helper(void); int foo(void){return helper();}\n",
                     soname="libfoo.so.1", libs=[str(helper)])
    app = executable(tmp_path / "app", '#include <stdio.h>\nint foo(void); int helper(void);\n'
                     'int main(void){ printf("foo=%d %d\\n", foo(), helper()); return 0; }\n',
                     libs=[str(old), str(helper)],
                     flags=["-Wl,--enable-new-dtags", f"-Wl,-rpath,{old.parent}:{helper.parent}"])
    result = check(old, new, [app])
    assert result.verdict == "compatible" and [c.verdict for c in result.consumers] == ["compatible"]
    s = result.self_check
    assert s is not None and s.verdict == "review" and [p.kind for p in s.problems] == ["not-found"]
    assert "every consumer checked loads NEW" in (s.note or "")
    # with no consumer that loads NEW, the self check still counts
    assert check(old, new, []).verdict == "incompatible"
    replace(old, new)
    run = subprocess.run([str(app)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout == "foo=5 5\n"


def _plugin_world(tmp_path: Path, new_source: str, new_flags: List[str]):  # type: ignore[no-untyped-def]
    """libfoo.so.1 (OLD and NEW), a plugin that needs it, and a host program that dlopens the plugin and
    does not load libfoo itself."""
    old = shared_lib(tmp_path / "lib" / "libfoo.so.1", "int foo(void){return 1;}\n", soname="libfoo.so.1")
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", new_source, soname="libfoo.so.1", flags=new_flags)
    plug = shared_lib(tmp_path / "plug" / "plug.so", "int foo(void); int run(void){return foo();}\n",
                      soname="plug.so", libs=[str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    host = executable(tmp_path / "host", HOST, libs=["-ldl"])
    return old, new, plug, host


def test_dlopen_refuses_a_dependency_linked_nodlopen(tmp_path: Path) -> None:
    old, new, plug, host = _plugin_world(tmp_path, "int foo(void){return 2;}\n", ["-Wl,-z,nodlopen"])
    result = check(old, new, [plug])
    (c,) = result.consumers
    assert c.verdict == "incompatible" and [(p.kind, p.when) for p in c.problems] == [("noopen", "dlopen")]
    replace(old, new)
    run = subprocess.run([str(host), str(plug)], capture_output=True, text=True, timeout=60)
    assert run.stdout == f"dlerror: {c.problems[0].message}\n"


def test_dlopen_refuses_initial_exec_tls_beyond_the_static_surplus(tmp_path: Path) -> None:
    """4 KiB of initial-exec TLS cannot be allocated by dlopen (the surplus is 1664 bytes); 1 KiB can."""
    for size, fits in ((1024, True), (4096, False)):
        d = tmp_path / str(size)
        src = (f'__attribute__((tls_model("initial-exec"))) __thread char buf[{size}];\n'
               "int foo(void){return 3 + buf[0];}\n")
        old, new, plug, host = _plugin_world(d, src, [])
        result = check(old, new, [plug])
        (c,) = result.consumers
        replace(old, new)
        run = subprocess.run([str(host), str(plug)], capture_output=True, text=True, timeout=60)
        if fits:
            assert c.verdict == "compatible" and run.stdout == "run=3\n", (c, run.stdout)
        else:
            assert c.verdict == "incompatible" and [(p.kind, p.when) for p in c.problems] == [
                ("static-tls", "dlopen")]
            assert run.stdout == f"dlerror: {c.problems[0].message}\n"
    # a program loads it at start-up, where static TLS is sized for it: no problem
    app = executable(tmp_path / "app", "int foo(void); int main(void){return foo() - 3;}\n",
                     libs=[str(tmp_path / "4096" / "new" / "libfoo.so.1")],
                     flags=[f"-Wl,-rpath,{tmp_path / '4096' / 'lib'}"])
    assert subprocess.run([str(app)], timeout=60).returncode == 0


MATH_APP = r"""#include <math.h>
#include <stdio.h>
#include <stdlib.h>
int foo(void);
int main(int argc, char **argv) {
    double x = atof(argc > 1 ? argv[1] : "2.718281828");
    puts("start"); fflush(stdout);
    printf("foo=%d log=%.3f\n", foo(), log(x));
    return 0;
}
"""


def _math_world(tmp_path: Path, new_source: str):  # type: ignore[no-untyped-def]
    """A program linked with libfoo.so.1 before libm.so.6, calling libm's log@GLIBC_2.29."""
    old = shared_lib(tmp_path / "lib" / "libfoo.so.1", "int foo(void){return 1;}\n", soname="libfoo.so.1")
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", new_source, soname="libfoo.so.1", flags=["-fno-builtin"])
    app = executable(tmp_path / "app", MATH_APP, libs=["-Wl,--no-as-needed", str(old), "-lm"],
                     flags=[f"-Wl,-rpath,{old.parent}"])
    return old, new, app


def test_a_symbol_new_adds_takes_over_a_call_to_another_library(tmp_path: Path) -> None:
    """NEW adds `log`: with the program's log@GLIBC_2.29 it comes before libm in the scope (an unversioned
    definition satisfies a versioned reference from another file, check_match), and ld.so says nothing.
    Data there: the call jumps into it (SIGSEGV). A function: another function runs (a wrong result)."""
    for kind, src in (("data", "int foo(void){return 1;} int log[4] = {1, 2, 3, 4};\n"),
                      ("function", "int foo(void){return 1;} double log(double x){return 42.0;}\n")):
        d = tmp_path / kind
        old, new, app = _math_world(d, src)
        for full in (False, True):
            result = check(old, new, [app], full=full)
            (c,) = result.consumers
            want = "type-changed" if kind == "data" else "preempted"
            assert c.verdict == "incompatible", (kind, full)
            assert [(p.kind, p.when, p.symbol) for p in c.problems] == [(want, "first-call", "log")]
            assert "libm.so.6" in c.problems[0].detail
        replace(old, new)
        run = subprocess.run([str(app)], capture_output=True, text=True, timeout=60)
        if kind == "data":
            assert run.stdout == "start\n" and run.returncode < 0
        else:
            assert run.stdout == "start\nfoo=1 log=42.000\n"  # not 1.000: NEW's log ran


def test_a_symbol_moved_into_new_with_its_version_is_no_takeover(tmp_path: Path) -> None:
    """NEW adds foo@@V1, the very version the program's reference (to libbar's foo@@V1) asks for: a move on
    purpose (as glibc moved libpthread's symbols into libc); the program still runs."""
    script = "V1 { global: *; };\n"
    bar = shared_lib(tmp_path / "dep" / "libbar.so.1", "int bar_foo(void){return 7;} int foo(void){return 7;}\n",
                     soname="libbar.so.1", version_script=script)
    old = shared_lib(tmp_path / "lib" / "libnew.so.1", "int other(void){return 1;}\n", soname="libnew.so.1",
                     version_script=script)
    new = shared_lib(tmp_path / "new" / "libnew.so.1", "int other(void){return 1;} int foo(void){return 7;}\n",
                     soname="libnew.so.1", version_script=script)
    app = executable(tmp_path / "app", "int foo(void); int other(void);\n"
                     "int main(void){ return foo() + other() - 8; }\n",
                     libs=["-Wl,--no-as-needed", str(old), str(bar)],
                     flags=[f"-Wl,-rpath,{old.parent}:{bar.parent}"])
    result = check(old, new, [app])
    assert [c.verdict for c in result.consumers] == ["compatible"], result.consumers
    replace(old, new)
    assert subprocess.run([str(app)], timeout=60).returncode == 0


def test_a_removed_function_that_now_binds_another_librarys_data(tmp_path: Path) -> None:
    """NEW drops foo; libbar, also loaded, has a data object foo: the call binds it and crashes. When libbar
    has a function foo instead, the symbol moved there: compatible, and the program runs."""
    for kind, bar_src in (("data", "int foo[4] = {1, 2, 3, 4}; int bar(void){return 0;}\n"),
                          ("function", "int foo(void){return 1;} int bar(void){return 0;}\n")):
        d = tmp_path / kind
        bar = shared_lib(d / "dep" / "libbar.so.1", bar_src, soname="libbar.so.1")
        old = shared_lib(d / "lib" / "libfoo.so.1", "int foo(void){return 1;}\n", soname="libfoo.so.1")
        new = shared_lib(d / "new" / "libfoo.so.1", "int gone(void){return 1;}\n", soname="libfoo.so.1")
        app = executable(d / "app", '#include <stdio.h>\nint foo(void); int bar(void);\n'
                         'int main(void){ puts("start"); fflush(stdout); return foo() + bar() - 1; }\n',
                         libs=["-Wl,--no-as-needed", str(old), str(bar)],
                         flags=[f"-Wl,-rpath,{old.parent}:{bar.parent}"])
        result = check(old, new, [app])
        (c,) = result.consumers
        replace(old, new)
        run = subprocess.run([str(app)], capture_output=True, text=True, timeout=60)
        if kind == "data":
            assert c.verdict == "incompatible"
            assert [(p.kind, p.when) for p in c.problems] == [("type-changed", "first-call")]
            assert str(bar) in c.problems[0].detail
            assert run.stdout == "start\n" and run.returncode < 0
        else:
            assert c.verdict == "compatible" and run.returncode == 0


def test_new_linked_bsymbolic_loses_the_programs_copy_and_its_interposer(tmp_path: Path) -> None:
    """The same source linked -Bsymbolic: NEW's inc() increments NEW's counter while the program reads its
    copy (0, not 2): incompatible. NEW's bar() calls NEW's foo, not the program's replacement (2, not 101):
    said as a review note."""
    src = "int counter; void inc(void){ counter++; } int foo(void){return 1;} int bar(void){return foo()+1;}\n"
    old = shared_lib(tmp_path / "lib" / "libfoo.so.1", src, soname="libfoo.so.1")
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", src, soname="libfoo.so.1", flags=["-Wl,-Bsymbolic"])
    flags = [f"-Wl,-rpath,{old.parent}"]
    copy = executable(tmp_path / "copy", '#include <stdio.h>\nextern int counter; void inc(void);\n'
                      'int main(void){ inc(); inc(); printf("%d\\n", counter); return 0; }\n',
                      libs=[str(old)], flags=flags)
    interpose = executable(tmp_path / "interpose", '#include <stdio.h>\nint bar(void);\n'
                           'int foo(void){return 100;}\nint main(void){ printf("%d\\n", bar()); return 0; }\n',
                           libs=[str(old)], flags=[*flags, "-rdynamic"])
    plain = executable(tmp_path / "plain", '#include <stdio.h>\nint bar(void);\n'
                       'int main(void){ printf("%d\\n", bar()); return 0; }\n', libs=[str(old)], flags=flags)
    result = check(old, new, [copy, interpose, plain])
    got = {Path(c.path).name: [(p.kind, p.when, p.symbol) for p in c.problems] for c in result.consumers}
    assert got == {"copy": [("interposition-lost", "startup", "counter")], "interpose": [], "plain": []}
    assert all("-Bsymbolic" in p.detail for c in result.consumers for p in c.problems)
    # a function the program defines too is a review note, not a break: most often it is the same code (a
    # program exporting its bundled zlib's crc32, and Ubuntu's libraries are linked -Bsymbolic-functions)
    notes = {Path(c.path).name: (c.verdict, c.note) for c in result.consumers}
    assert notes["interpose"] == ("compatible", f"review: NEW's own calls of foo no longer reach {interpose}'s foo")
    before = [subprocess.run([str(p)], capture_output=True, text=True, timeout=60).stdout
              for p in (copy, interpose, plain)]
    replace(old, new)
    after = [subprocess.run([str(p)], capture_output=True, text=True, timeout=60).stdout
             for p in (copy, interpose, plain)]
    assert before == ["2\n", "101\n", "2\n"] and after == ["0\n", "2\n", "2\n"]


def test_a_rebuild_that_no_longer_reads_its_exported_variable_is_compatible(tmp_path: Path) -> None:
    """NEW stopped reading foo_data (a bug-fix rebuild): no relocation names it any more, which ELF cannot
    tell from a link-time binding; without -Bsymbolic nothing diverges. Compatible, with a review note (it
    was called incompatible, and install refused the rebuild)."""
    old = shared_lib(tmp_path / "lib" / "libfoo.so.1", "int foo_data = 5; int foo_a(int x){return x+1;}\n"
                     "int foo_b(int x){return foo_a(x)*2+foo_data;}\n", soname="libfoo.so.1", flags=["-O2"])
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", "int foo_data = 5; int foo_a(int x){return x+1;}\n"
                     "int foo_b(int x){return (x+1)*2+5;}\n", soname="libfoo.so.1", flags=["-O2"])
    prog = executable(tmp_path / "prog", '#include <stdio.h>\nint foo_a(int); int foo_b(int); extern int foo_data;\n'
                      'int main(void){ printf("%d %d %d\\n", foo_a(1), foo_b(2), foo_data); return 0; }\n',
                      libs=[str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    result = check(old, new, [prog])
    (c,) = result.consumers
    assert c.verdict == "compatible" and c.note.startswith("review: NEW no longer looks foo_data up"), c
    before = subprocess.run([str(prog)], capture_output=True, text=True, timeout=60).stdout
    replace(old, new)
    assert subprocess.run([str(prog)], capture_output=True, text=True, timeout=60).stdout == before == "2 11 5\n"


USER = "struct s { int a; int b; }; extern struct s g;\nint use(void){ return g.b; }\n"


def _struct_case(tmp_path: Path, new_source: str) -> tuple:
    """libfoo defines ``g`` (``{int a; int b;}``); libuse, built for that layout, reads ``g.b`` through its GOT (no
    copy relocation: a shared library never has one); the program prints what libuse reads."""
    old = shared_lib(tmp_path / "lib" / "libfoo.so.1", "struct s { int a; int b; } g = {1, 2};\n",
                     soname="libfoo.so.1")
    new = shared_lib(tmp_path / "new" / "libfoo.so.1", new_source, soname="libfoo.so.1")
    use = shared_lib(tmp_path / "lib" / "libuse.so", USER, libs=[str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    prog = executable(tmp_path / "prog", '#include <stdio.h>\nint use(void);\n'
                      'int main(void){ printf("b=%d\\n", use()); return 0; }\n',
                      libs=[str(use), str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    assert subprocess.run([str(prog)], capture_output=True, text=True, timeout=60).stdout == "b=2\n"
    return old, new, use, prog


def test_a_data_object_that_shrank_is_read_past_its_end(tmp_path: Path) -> None:
    """NEW's g lost a member: libuse reads g.b past NEW's object (ld.so says nothing): object-shrunk."""
    old, new, use, prog = _struct_case(tmp_path, "struct s { int a; } g = {1}; int after = 77;\n")
    result = check(old, new, [prog])
    assert result.verdict == "incompatible"
    (c,) = result.consumers
    assert [(p.kind, p.when, p.symbol, p.object) for p in c.problems] == [
        ("object-shrunk", "first-call", "g", str(use))]
    replace(old, new)
    run = subprocess.run([str(prog)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == "" and run.stdout != "b=2\n"


def test_a_data_object_that_grew_is_a_review_note(tmp_path: Path) -> None:
    """NEW's g grew: appended members keep libuse right, a member inserted before b makes it read the wrong one.
    Both look the same in ELF (only the size changed), so both are compatible with a review note, listed
    without --verbose (it was silent: jammy's libtinfo replaced by Debian's broke python3's curses this way)."""
    from soswap.report.abi import check_to_text

    for source, seen in (("struct s { int a; int b; int c; } g = {1, 2, 3};\n", "b=2\n"),
                         ("struct s { int a; int x; int b; } g = {1, 99, 2};\n", "b=99\n")):
        case = tmp_path / seen.strip()
        old, new, use, prog = _struct_case(case, source)
        result = check(old, new, [prog])
        (c,) = result.consumers
        assert result.verdict == "compatible" and c.verdict == "compatible" and not c.problems
        assert c.note == (f"review: g grew from 8 to 12 bytes in NEW and {use} reads it in place: compatible if "
                          "members were only appended, wrong data if any moved"), c
        text = "\n".join(check_to_text(result))
        assert "compatible, to review (1):" in text and f"{prog}  [program] (review: g grew" in text
        replace(old, new)
        assert subprocess.run([str(prog)], capture_output=True, text=True, timeout=60).stdout == seen


def test_new_with_a_plt_entry_ld_so_refuses_is_not_proved_safe_by_the_diff(tmp_path: Path) -> None:
    """NEW was linked with --unresolved-symbols=ignore-all: its .rela.plt holds an R_X86_64_NONE that ld.so
    refuses to bind lazily. No symbol or version changed, so the diff's shortcut called it safe without binding;
    the diff now names it (plt-reloc-refused), and the check binds and finds what running finds."""
    src = ("#include <stdio.h>\nint missing(void);\n"
           "int main(int c, char **v) { if (c > 5) return missing(); puts(\"ok\"); return 0; }\n")
    old = executable(tmp_path / "bin" / "prog", src.replace("if (c > 5) return missing(); ", ""))
    new = executable(tmp_path / "new" / "prog", src, flags=["-Wl,--unresolved-symbols=ignore-all"])
    result = check(old, new, [])
    assert result.verdict == "incompatible"
    assert "plt-reloc-refused" in [c.kind for c in result.diff.changes]
    assert result.self_check is not None and any(
        p.message and p.message.endswith("unexpected PLT reloc type 0x00") for p in result.self_check.problems)
    replace(old, new)
    os.chmod(old, 0o755)
    run = subprocess.run([str(old)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 127 and run.stderr.endswith("unexpected PLT reloc type 0x00\n")


def test_install_says_a_review_note_and_installs(tmp_path: Path) -> None:
    """install's preflight passes on check's review notes as warnings (it showed nothing) and does not refuse."""
    import sys

    old, new, use, prog = _struct_case(tmp_path, "struct s { int a; int x; int b; } g = {1, 99, 2};\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"),
               SOSWAP_STATE_DIR=str(tmp_path / "state"), SOSWAP_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "soswap", "install", "--no-report", "--consumer", str(prog), "--",
                        str(new), str(old)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (f"soswap: warning: {old}: compatible with program {prog}, to review: g grew from 8 to 12 bytes in NEW "
            f"and {use} reads it in place") in r.stderr, r.stderr
