"""``soswap check`` when a reference binds another object with NEW than with OLD, and the object it now binds
is not NEW: a symbol NEW dropped that a new dependency of NEW defines with another size, and a symbol of a new
dependency of NEW that comes first in the scope. Each verdict is checked against running the program with NEW
really in place."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List

from soswap.abi import check_replacement
from soswap.abi.problems import ConsumerResult
from support.build import executable, requires_cc, shared_lib

pytestmark = requires_cc


def _env(**extra: str) -> Dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **extra}


def _check(target: Path, new: Path, app: Path, **env: str) -> ConsumerResult:
    result = check_replacement(str(target), str(new), consumers=[str(app)], environ=_env(**env), full=True)
    (consumer,) = [c for c in result.consumers if c.path == str(app)]
    return consumer


def _run_with(target: Path, new: Path, app: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``app`` with NEW renamed over TARGET, then put OLD back."""
    keep = target.with_name(target.name + ".old")
    shutil.copy2(target, keep)
    shutil.copy2(new, target.with_name(".new"))
    os.replace(target.with_name(".new"), target)
    try:
        return subprocess.run([str(app)], env=_env(**env), capture_output=True, text=True, timeout=30)
    finally:
        os.replace(keep, target)


def _kinds(c: ConsumerResult) -> List[str]:
    return [p.kind for p in c.problems]


def test_a_copied_object_that_moves_to_a_new_dependency_with_another_size(tmp_path: Path) -> None:
    """NEW drops ``table`` (4 ints, copied by the program) and needs a new library that defines it with 8:
    ld.so warns about the size and NEW's code reads the program's 16-byte copy. soswap called it compatible
    (a symbol that moved to another library)."""
    lib, new = tmp_path / "lib", tmp_path / "new"
    shared_lib(lib / "libdep.so.1", "int table[8] = {1, 2, 3, 4, 5, 6, 7, 8};\n", soname="libdep.so.1")
    target = shared_lib(lib / "libfoo.so.1", "int table[4] = {1, 2, 3, 4};\n"
                        "int sum(void) { int s = 0; for (int i = 0; i < 4; i++) s += table[i]; return s; }\n",
                        soname="libfoo.so.1")
    newlib = shared_lib(new / "libfoo.so.1", "extern int table[8];\n"
                        "int sum(void) { int s = 0; for (int i = 0; i < 8; i++) s += table[i]; return s; }\n",
                        soname="libfoo.so.1", libs=[f"-L{lib}", "-l:libdep.so.1", f"-Wl,-rpath,{lib}"])
    app = executable(tmp_path / "app", '#include <stdio.h>\nextern int table[4]; int sum(void);\n'
                     'int main(void) { printf("%d %d\\n", table[0], sum()); return 0; }\n',
                     libs=[f"-L{lib}", "-l:libfoo.so.1", f"-Wl,-rpath,{lib}"])
    real = _run_with(target, newlib, app)
    assert real.stdout == "1 10\n" and "has different size in shared object" in real.stderr
    c = _check(target, newlib, app)
    assert c.verdict == "incompatible" and _kinds(c) == ["copy-size"]
    assert c.problems[0].message == real.stderr.strip()


def test_an_object_read_in_place_that_moves_to_a_new_dependency_and_shrinks(tmp_path: Path) -> None:
    """Without a copy relocation (the program reads ``table`` through its GOT): NEW drops the 8-int table and
    its new dependency defines a 2-int one; the program reads past it. soswap called it compatible."""
    lib, new = tmp_path / "lib", tmp_path / "new"
    shared_lib(lib / "libdep.so.1", "int table[2] = {1, 2};\n", soname="libdep.so.1")
    target = shared_lib(lib / "libfoo.so.1", "int table[8] = {1, 2, 3, 4, 5, 6, 7, 8};\nint keep(void) { return 0; }\n",
                        soname="libfoo.so.1")
    newlib = shared_lib(new / "libfoo.so.1", "int keep(void) { return 0; }\n", soname="libfoo.so.1",
                        libs=["-Wl,--no-as-needed", f"-L{lib}", "-l:libdep.so.1", f"-Wl,-rpath,{lib}"])
    app = executable(tmp_path / "app", '#include <stdio.h>\nextern int table[8]; int keep(void);\n'
                     'int main(void) { int s = 0; for (int i = 0; i < 8; i++) s += table[i];\n'
                     '  printf("%d\\n", s + keep()); return 0; }\n',
                     flags=["-mno-direct-extern-access"], libs=[f"-L{lib}", "-l:libfoo.so.1", f"-Wl,-rpath,{lib}"])
    assert subprocess.run([str(app)], env=_env(), capture_output=True, text=True, timeout=30).stdout == "36\n"
    assert _run_with(target, newlib, app).stdout != "36\n"
    c = _check(target, newlib, app)
    assert c.verdict == "incompatible" and _kinds(c) == ["object-shrunk"]


def test_new_adds_a_bigger_copied_object_that_preempts_another_library(tmp_path: Path) -> None:
    """NEW adds ``table`` (8 ints), which comes before libbar's (4 ints) the program copied: soswap said so,
    and that ld.so prints nothing, while ld.so prints the size warning."""
    lib, new = tmp_path / "lib", tmp_path / "new"
    target = shared_lib(lib / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    newlib = shared_lib(new / "libfoo.so.1", "int foo(void) { return 1; }\nint table[8] = {1, 2, 3, 4, 5, 6, 7, 8};\n",
                        soname="libfoo.so.1")
    shared_lib(lib / "libbar.so.1", "int table[4] = {1, 2, 3, 4};\n", soname="libbar.so.1")
    app = executable(tmp_path / "app", '#include <stdio.h>\nextern int table[4]; int foo(void);\n'
                     'int main(void) { printf("%d\\n", table[0] + foo()); return 0; }\n',
                     libs=["-Wl,--no-as-needed", f"-L{lib}", "-l:libfoo.so.1", "-l:libbar.so.1", f"-Wl,-rpath,{lib}"])
    real = _run_with(target, newlib, app)
    assert "has different size in shared object" in real.stderr
    c = _check(target, newlib, app)
    assert c.verdict == "incompatible" and _kinds(c) == ["preempted", "copy-size"]
    assert c.problems[1].message == real.stderr.strip() and "ld.so says nothing" not in c.problems[0].detail


def test_a_new_dependency_of_new_preempts_another_librarys_function(tmp_path: Path) -> None:
    """NEW needs one more library, which defines ``helper`` as data; breadth first, it comes before libz,
    whose function ``helper`` libother calls: the call jumps into data. soswap called it compatible."""
    lib, new = tmp_path / "lib", tmp_path / "new"
    target = shared_lib(lib / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    shared_lib(lib / "libq.so.1", "int helper = 42;\n", soname="libq.so.1")
    shared_lib(lib / "libz.so.1", "int helper(void) { return 2; }\n", soname="libz.so.1")
    shared_lib(lib / "libother.so.1", "int helper(void);\nint other(void) { return helper(); }\n",
               soname="libother.so.1", libs=["-Wl,--no-as-needed", f"-L{lib}", "-l:libz.so.1", f"-Wl,-rpath,{lib}"])
    newlib = shared_lib(new / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1",
                        libs=["-Wl,--no-as-needed", f"-L{lib}", "-l:libq.so.1", f"-Wl,-rpath,{lib}"])
    app = executable(tmp_path / "app", '#include <stdio.h>\nint foo(void); int other(void);\n'
                     'int main(void) { printf("%d\\n", foo() + other()); return 0; }\n',
                     libs=["-Wl,--no-as-needed", f"-L{lib}", "-l:libfoo.so.1", "-l:libother.so.1",
                           f"-Wl,-rpath,{lib}", f"-Wl,-rpath-link,{lib}"])
    assert subprocess.run([str(app)], env=_env(), capture_output=True, text=True, timeout=30).stdout == "3\n"
    assert _run_with(target, newlib, app).returncode == -11
    c = _check(target, newlib, app)
    assert c.verdict == "incompatible" and _kinds(c) == ["type-changed"]
    assert "libq.so.1's OBJECT helper" in c.problems[0].detail


def test_a_protected_function_is_a_review_note_for_a_non_pie_program(tmp_path: Path) -> None:
    """NEW makes ``foo`` protected; a non-PIE program uses its PLT entry as foo's address: ld.so warns that
    pointer equality may break, and it does. Compatible (abi.md T11), with the warning as a review note; the
    note soswap gave ("NEW's own calls of foo no longer reach ./app's foo") named a definition the program
    does not have."""
    lib, new = tmp_path / "lib", tmp_path / "new"
    src = "{vis} int foo(void) {{ return 1; }}\nvoid *addr(void) {{ return (void *)foo; }}\n"
    target = shared_lib(lib / "libfoo.so.1", src.format(vis=""), soname="libfoo.so.1")
    newlib = shared_lib(new / "libfoo.so.1", src.format(vis='__attribute__((visibility("protected")))'),
                        soname="libfoo.so.1")
    app = executable(tmp_path / "app", '#include <stdio.h>\nint foo(void); void *addr(void);\n'
                     'int main(void) { printf("%d\\n", (void *)foo == addr()); return 0; }\n',
                     flags=["-no-pie", "-fno-pie"], libs=[f"-L{lib}", "-l:libfoo.so.1", f"-Wl,-rpath,{lib}"])
    real = _run_with(target, newlib, app, LD_BIND_NOW="1")  # the warning comes with the PLT slot's binding
    assert real.stdout == "0\n" and "may break pointer equality" in real.stderr
    c = _check(target, newlib, app, LD_BIND_NOW="1")
    assert c.verdict == "compatible" and not c.problems
    assert "may break pointer equality" in c.note and "no longer reach" not in c.note
