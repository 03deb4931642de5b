"""The ABI test cases T1–T34 of the reference notes (abi.md §(b)), built for real with gcc.

``build_case(tmp_path, "T1")`` builds, under ``tmp_path/T1``:

* ``v1/libfoo.so.1`` — the installed library (OLD) and ``v2/libfoo.so.1`` — its replacement (NEW);
* ``deps/`` — libraries installed for both (a dependency, a sibling library, a plugin), possibly empty;
* ``app`` — the program, linked against v1;
* ``build/`` — sources, version scripts, and libraries used only at link time (never on the run path).

and returns a :class:`Case`: the paths, the expected verdict for the app (compatible or not), whether an
ELF-only checker can see the problem at all, and the runtime behaviour observed on this machine (glibc 2.36)
when the app runs against v1 and against v2. ``Case.run("v2")`` runs it (``LD_LIBRARY_PATH=v2:deps``, plus
``LD_BIND_NOW=1`` with ``bind_now=True``). The program prints ``start`` first thing in ``main``, unbuffered, so
a failure before ``main`` (startup) is told apart from one at the first call.

Where glibc 2.36 differs from the notes, the case says so in ``machine_note``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import pytest

from support.build import CC, have_m32

CXX = os.environ.get("CXX", "g++")

#: The case identifiers, in order. T30 is EI_OSABI=FreeBSD; T30b is its GNU counterpart (runs).
CASE_IDS: Tuple[str, ...] = (*(f"T{i}" for i in range(1, 31)), "T30b", *(f"T{i}" for i in range(31, 35)))

# When the failure strikes (``Symptom.when``).
NONE = "none"              # runs as with v1
STARTUP = "startup"        # before main: ld.so fails while loading or relocating
FIRST_CALL = "first-call"  # at the first call of the symbol (lazy PLT); at startup under LD_BIND_NOW
DLOPEN = "dlopen"          # dlopen() of a consumer fails; the program reports it
RUNTIME = "runtime"        # loads and runs, then misbehaves (wrong value, crash) where the symbol is used

COMPATIBLE = "compatible"
INCOMPATIBLE = "incompatible"


class Symptom(NamedTuple):
    """What a run shows. ``returncode`` is exact (negative: killed by that signal); ``stdout`` is exact when
    given; every string of ``stderr`` must appear in the standard error; ``stderr_empty``: nothing at all."""

    when: str
    returncode: Optional[int]
    stdout: Optional[str]
    stderr: Tuple[str, ...] = ()
    stdout_differs_from_v1: bool = False
    stderr_empty: bool = False


@dataclass(frozen=True)
class Case:
    """One built case. Paths are absolute."""

    id: str
    title: str
    root: Path
    old: Path
    new: Path
    app: Path
    args: Tuple[str, ...]
    deps_dir: Path
    #: files linked against v1 that use the library: the app, and plugins or siblings where the case has them
    consumers: Tuple[Path, ...]
    #: the right answer for the app: does replacing v1 by v2 break it?
    verdict: str
    #: False for the ELF-only blind spots (signatures, struct layouts, vtables): no ELF-level check sees them
    elf_visible: bool
    old_run: Symptom
    new_run: Symptom
    #: abi.md's "observed message" column for this case
    observed: str
    #: where this machine (glibc 2.36, gcc 12, binutils 2.40) differs from the notes, or how it was confirmed
    machine_note: str = ""
    extra: Dict[str, Path] = field(default_factory=dict)

    def library_dirs(self, which: str) -> Tuple[Path, ...]:
        """The LD_LIBRARY_PATH directories of a run against ``v1`` or ``v2``."""
        if which not in ("v1", "v2"):
            raise ValueError(which)
        return (self.old.parent if which == "v1" else self.new.parent, self.deps_dir)

    def env(self, which: str, bind_now: bool = False, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """A minimal environment for running the app against ``which``."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
               "LD_LIBRARY_PATH": ":".join(str(d) for d in self.library_dirs(which))}
        if bind_now:
            env["LD_BIND_NOW"] = "1"
        env.update(extra or {})
        return env

    def run(self, which: str, bind_now: bool = False, extra_env: Optional[Dict[str, str]] = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run the app against ``v1`` or ``v2`` and return its exit status and output."""
        return subprocess.run([str(self.app), *self.args], env=self.env(which, bind_now, extra_env),
                              cwd=str(self.root), capture_output=True, text=True, errors="replace",
                              timeout=timeout, stdin=subprocess.DEVNULL)


# -- building ---------------------------------------------------------------------------------------------


def _compile(compiler: str, args: Sequence[str]) -> None:
    r = subprocess.run([compiler, *args], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"{compiler} {' '.join(args)} failed:\n{r.stderr}")


class _Builder:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.build = root / "build"
        self.v1 = root / "v1"
        self.v2 = root / "v2"
        self.deps = root / "deps"
        for d in (self.build, self.v1, self.v2, self.deps):
            d.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def _src(self, stem: str, text: str, cxx: bool) -> Path:
        self._n += 1
        p = self.build / f"{self._n:02d}-{stem}.{'cc' if cxx else 'c'}"
        p.write_text(text)
        return p

    def lib(self, out: Path, source: str, *, soname: Optional[str] = "libfoo.so.1", vmap: Optional[str] = None,
            link: Sequence[str] = (), flags: Sequence[str] = (), cxx: bool = False, m32: bool = False) -> Path:
        """Compile ``source`` into the shared library ``out`` (built in build/, then copied into place)."""
        src = self._src(out.name, source, cxx)
        built = src.with_suffix(".so")
        args = ["-shared", "-fPIC", "-O1", "-o", str(built)]
        if m32:
            args.insert(0, "-m32")
        if soname:
            args.append(f"-Wl,-soname,{soname}")
        if vmap is not None:
            vm = src.with_suffix(".map")
            vm.write_text(vmap)
            args.append(f"-Wl,--version-script={vm}")
        args.extend(flags)
        args.append(str(src))
        args.extend(link)
        _compile(CXX if cxx else CC, args)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(built, out)
        return out

    def exe(self, source: str, *, link: Sequence[str] = (), flags: Sequence[str] = (), cxx: bool = False,
            name: str = "app") -> Path:
        """Compile the program ``root/name`` (PIE, lazy binding: Debian's defaults)."""
        src = self._src(name, source, cxx)
        out = self.root / name
        args = ["-O1", "-o", str(out), *flags, str(src), *link, f"-Wl,-rpath-link,{self.deps}"]
        _compile(CXX if cxx else CC, args)
        return out

    def patch(self, src: Path, dst: Path, offset: int, data: bytes) -> Path:
        """Copy ``src`` to ``dst`` with ``data`` written at ``offset`` (an ELF header field)."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        raw = bytearray(src.read_bytes())
        raw[offset:offset + len(data)] = data
        dst.write_bytes(bytes(raw))
        return dst


def _app(decls: str, body: str) -> str:
    return f"""#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dlfcn.h>
{decls}
int main(int argc, char **argv) {{
    (void)argc; (void)argv;
    setvbuf(stdout, NULL, _IONBF, 0);
    puts("start");
{body}
    return 0;
}}
"""


FOO_BAR = "int foo(void) { return 42; }\nint bar(void) { return 7; }\n"
BAR_ONLY = "int bar(void) { return 7; }\n"
APP_FOO_BAR = _app("int foo(void);\nint bar(void);",
                   '    printf("bar=%d\\n", bar());\n    printf("foo=%d\\n", foo());')
OUT_FOO_BAR = "start\nbar=7\nfoo=42\n"
RUNS = Symptom(NONE, 0, OUT_FOO_BAR, stderr_empty=True)
MAP_V1 = "VERS_1 { global: foo; bar; local: *; };\n"


def _runs(stdout: str) -> Symptom:
    return Symptom(NONE, 0, stdout, stderr_empty=True)


def _standard(b: _Builder, v1_src: str, v2_src: str, *, v1_map: Optional[str] = None, v2_map: Optional[str] = None,
              v2_soname: str = "libfoo.so.1", app: str = APP_FOO_BAR) -> Tuple[Path, Path, Path]:
    old = b.lib(b.v1 / "libfoo.so.1", v1_src, vmap=v1_map)
    new = b.lib(b.v2 / "libfoo.so.1", v2_src, vmap=v2_map, soname=v2_soname)
    prog = b.exe(app, link=[str(old)])
    return old, new, prog


def _case(b: _Builder, cid: str, title: str, old: Path, new: Path, app: Path, *, verdict: str, old_run: Symptom,
          new_run: Symptom, observed: str, elf_visible: bool = True, args: Sequence[str] = (),
          consumers: Sequence[Path] = (), machine_note: str = "", extra: Optional[Dict[str, Path]] = None) -> Case:
    return Case(cid, title, b.root, old, new, app, tuple(args), b.deps, (app, *consumers), verdict, elf_visible,
                old_run, new_run, observed, machine_note, dict(extra or {}))


# -- the cases --------------------------------------------------------------------------------------------


def _t1(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, BAR_ONLY)
    return _case(b, "T1", "remove foo, which the app calls", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(FIRST_CALL, 127, "start\nbar=7\n",
                                 (f"{app}: symbol lookup error: {app}: undefined symbol: foo",)),
                 observed="undefined symbol: foo")


def _t2(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR + "int unused(void) { return 1; }\n", FOO_BAR)
    return _case(b, "T2", "remove unused, which nobody uses", old, new, app, verdict=COMPATIBLE, old_run=RUNS,
                 new_run=RUNS, observed="runs (the removed export is still a library-level break)")


def _t3(b: _Builder) -> Case:
    app_src = _app("int foo(void);\nextern int counter;",
                   '    printf("counter=%d\\n", counter);\n    printf("foo=%d\\n", foo());')
    old, new, app = _standard(b, FOO_BAR + "int counter = 3;\n", FOO_BAR, app=app_src)
    return _case(b, "T3", "remove int counter, which the app reads", old, new, app, verdict=INCOMPATIBLE,
                 old_run=_runs("start\ncounter=3\nfoo=42\n"),
                 new_run=Symptom(STARTUP, 127, "", (f"{app}: symbol lookup error: {app}: undefined symbol: counter",)),
                 observed="undefined symbol: counter, at load (data relocations are resolved at startup)")


def _table_lib(n: int) -> str:
    values = ", ".join(str(i + 1) for i in range(n))
    return (f"int table[{n}] = {{{values}}};\n"
            f"int lib_sum(void) {{ int s = 0; for (int i = 0; i < {n}; i++) s += table[i]; return s; }}\n")


def _t4(b: _Builder) -> Case:
    app_src = _app("extern int table[4];\nint lib_sum(void);",
                   '    printf("app=%d\\n", table[0] + table[1] + table[2] + table[3]);\n'
                   '    printf("lib=%d\\n", lib_sum());')
    old, new, app = _standard(b, _table_lib(4), _table_lib(8), app=app_src)
    return _case(b, "T4", "int table[4] -> [8], the app has a COPY relocation", old, new, app,
                 verdict=INCOMPATIBLE, old_run=_runs("start\napp=10\nlib=10\n"),
                 new_run=Symptom(RUNTIME, 0, None,
                                 (f"{app}: Symbol `table' has different size in shared object, consider re-linking",)),
                 observed="\"different size\" warning; only the old size is copied and the library reads past "
                          "the app's copy")


def _t5(b: _Builder) -> Case:
    app_src = _app("extern int table[8];",
                   '    int s = 0;\n    for (int i = 0; i < 8; i++) s += table[i];\n    printf("sum=%d\\n", s);')
    old, new, app = _standard(b, _table_lib(8), _table_lib(4), app=app_src)
    return _case(b, "T5", "table[8] -> [4]", old, new, app, verdict=INCOMPATIBLE, old_run=_runs("start\nsum=36\n"),
                 new_run=Symptom(RUNTIME, 0, "start\nsum=10\n", stderr_empty=True),
                 observed="silent garbage (the warning needs LD_WARN)",
                 machine_note="the copy takes NEW's 4 ints, the app's last 4 stay zero: sum 10 instead of 36; "
                              "LD_WARN=1 prints the 'different size' warning, LD_VERBOSE does not")


def _t6(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, "int foo = 5;\n" + BAR_ONLY)
    return _case(b, "T6", "foo FUNC -> int foo OBJECT", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(RUNTIME, -signal.SIGSEGV, "start\nbar=7\n"),
                 observed="SIGSEGV: the call jumps into data",
                 machine_note="the PLT slot binds to the data address (check_match accepts OBJECT for a call); "
                              "the call faults in both lazy and BIND_NOW modes")


def _t7(b: _Builder) -> Case:
    app_src = _app("extern int tv;", '    printf("tv=%d\\n", tv);')
    old, new, app = _standard(b, "int tv = 5;\n", "__thread int tv = 5;\n", app=app_src)
    return _case(b, "T7", "int tv -> __thread int tv", old, new, app, verdict=INCOMPATIBLE,
                 old_run=_runs("start\ntv=5\n"),
                 new_run=Symptom(RUNTIME, 0, f"start\ntv={0x464C457F}\n", stderr_empty=True),
                 observed="reads 0x464c457f, the ELF header")


def _t8(b: _Builder) -> Case:
    v2 = ("static int foo_impl(void) { return 42; }\n"
          "static int (*resolve_foo(void))(void) { return foo_impl; }\n"
          "int foo(void) __attribute__((ifunc(\"resolve_foo\")));\n" + BAR_ONLY)
    old, new, app = _standard(b, FOO_BAR, v2)
    return _case(b, "T8", "foo becomes an IFUNC", old, new, app, verdict=COMPATIBLE, old_run=RUNS, new_run=RUNS,
                 observed="runs: ld.so runs the resolver")


def _t9(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, "__attribute__((weak)) int foo(void) { return 42; }\n" + BAR_ONLY)
    return _case(b, "T9", "foo GLOBAL -> WEAK", old, new, app, verdict=COMPATIBLE, old_run=RUNS, new_run=RUNS,
                 observed="runs")


def _t10(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, "__attribute__((visibility(\"hidden\"))) int foo(void) { return 42; }\n"
                              + BAR_ONLY)
    return _case(b, "T10", "foo made hidden", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(FIRST_CALL, 127, "start\nbar=7\n",
                                 (f"{app}: symbol lookup error: {app}: undefined symbol: foo",)),
                 observed="undefined symbol: foo (no longer exported)")


def _t11(b: _Builder) -> Case:
    lib = ("{vis}int foo(void) {{ return 42; }}\nint bar(void) {{ return 7; }}\n"
           "void *foo_addr(void) {{ return (void *)foo; }}\n")
    app_src = _app("int foo(void);\nvoid *foo_addr(void);",
                   '    printf("foo=%d\\n", foo());\n    printf("same=%d\\n", (void *)foo == foo_addr());')
    old, new, app = _standard(b, lib.format(vis=""), lib.format(vis="__attribute__((visibility(\"protected\"))) "),
                              app=app_src)
    out = "start\nfoo=42\nsame=1\n"
    return _case(b, "T11", "foo protected (function)", old, new, app, verdict=COMPATIBLE, old_run=_runs(out),
                 new_run=_runs(out), observed="runs, function pointers still compare equal (PIE app)")


def _t12(b: _Builder) -> Case:
    lib = "{vis}int counter = 1;\nint get_counter(void) {{ return counter; }}\n"
    app_src = _app("extern int counter;\nint get_counter(void);",
                   '    counter = 5;\n    printf("app=%d lib=%d\\n", counter, get_counter());')
    old, new, app = _standard(b, lib.format(vis=""), lib.format(vis="__attribute__((visibility(\"protected\"))) "),
                              app=app_src)
    return _case(b, "T12", "counter protected, the app has a COPY relocation", old, new, app,
                 verdict=INCOMPATIBLE, old_run=_runs("start\napp=5 lib=5\n"),
                 new_run=Symptom(RUNTIME, 0, "start\napp=5 lib=1\n",
                                 ("warning: copy relocation against non-copyable protected symbol `counter' in "
                                  f"`{new}'",)),
                 observed="\"copy relocation against non-copyable protected symbol\"; app and library use "
                          "different copies",
                 machine_note="only a warning: the program runs on, writes its copy (5) while the library reads "
                              "its own (1)")


def _t13(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, FOO_BAR + "int foo2(void) { return 2; }\n")
    return _case(b, "T13", "add foo2", old, new, app, verdict=COMPATIBLE, old_run=RUNS, new_run=RUNS,
                 observed="runs")


def _t14(b: _Builder) -> Case:
    app_src = _app("int foo(void);\nint opt(void) __attribute__((weak));",
                   '    printf("foo=%d\\n", foo());\n    printf("opt=%d\\n", opt ? opt() : -1);')
    old, new, app = _standard(b, FOO_BAR + "int opt(void) { return 9; }\n", FOO_BAR, app=app_src)
    return _case(b, "T14", "remove opt, which the app references weakly", old, new, app, verdict=COMPATIBLE,
                 old_run=_runs("start\nfoo=42\nopt=9\n"), new_run=_runs("start\nfoo=42\nopt=-1\n"),
                 observed="runs: the weak reference resolves to NULL (abidiff/abicompat: false positive)")


def _t15(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, FOO_BAR, v1_map=MAP_V1,
                              v2_map="VERS_2 { global: foo; bar; local: *; };\n")
    return _case(b, "T15", "VERS_1{foo} -> VERS_2{foo}", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(STARTUP, 1, "",
                                 (f"{app}: {new}: version `VERS_1' not found (required by {app})",)),
                 observed="version 'VERS_1' not found",
                 machine_note="ld.so exits with status 1 for a version error, not 127 as for a missing library "
                              "or symbol")


def _t16(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, FOO_BAR, v1_map=MAP_V1,
                              v2_map="VERS_1 { global: bar; local: *; };\nVERS_2 { global: foo; } VERS_1;\n")
    return _case(b, "T16", "foo moves VERS_1 -> VERS_2, VERS_1 kept for bar", old, new, app,
                 verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(FIRST_CALL, 127, "start\nbar=7\n",
                                 (f"{app}: symbol lookup error: {app}: undefined symbol: foo, version VERS_1",)),
                 observed="undefined symbol: foo, version VERS_1")


COMPAT_FOO = ("int foo_v1(void) { return 42; }\nint foo_v2(void) { return 43; }\n"
              "__asm__(\".symver foo_v1,foo@VERS_1\");\n__asm__(\".symver foo_v2,foo@@VERS_2\");\n" + BAR_ONLY)
MAP_V2_COMPAT = "VERS_1 { global: foo; bar; local: *; };\nVERS_2 { global: foo; } VERS_1;\n"


def _t17(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, COMPAT_FOO, v1_map=MAP_V1, v2_map=MAP_V2_COMPAT)
    return _case(b, "T17", "foo@VERS_1 kept (.symver), foo@@VERS_2 added", old, new, app, verdict=COMPATIBLE,
                 old_run=RUNS, new_run=RUNS, observed="runs: old binaries bind to foo@VERS_1")


def _t18(b: _Builder) -> Case:
    v2 = "int foo_impl(void) { return 42; }\n__asm__(\".symver foo_impl,foo@VERS_1\");\n" + BAR_ONLY
    # foo must stay in the node's global list: with only "bar" there, "local: *" hides foo@VERS_1 too
    old, new, app = _standard(b, FOO_BAR, v2, v1_map=MAP_V1, v2_map=MAP_V1)
    return _case(b, "T18", "foo@@VERS_1 -> hidden foo@VERS_1 only", old, new, app, verdict=COMPATIBLE,
                 old_run=RUNS, new_run=RUNS, observed="runs: versioned references still match (new links fail)")


def _t19(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, FOO_BAR, v2_map=MAP_V1)
    return _case(b, "T19", "unversioned -> VERS_1{foo}", old, new, app, verdict=COMPATIBLE, old_run=RUNS,
                 new_run=RUNS, observed="runs")


def _t20(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, FOO_BAR, v1_map=MAP_V1)
    return _case(b, "T20", "versioned -> unversioned", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(FIRST_CALL, 127, "start\n",
                                 (f"{app}: {new}: no version information available (required by {app})",
                                  "Inconsistency detected by ld.so: dl-lookup.c: 107: check_match: Assertion "
                                  "`version->filename == NULL || ! _dl_name_match_p (version->filename, map)' "
                                  "failed!")),
                 observed="warning, then the ld.so assertion in check_match",
                 machine_note="NEW still has DT_VERSYM (it needs __cxa_finalize@GLIBC_2.2.5), yet the "
                              "assertion fires at the first lookup: the warning at startup, the abort at the "
                              "first call (at startup under LD_BIND_NOW)")


def _t21(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, COMPAT_FOO, v2_map=MAP_V2_COMPAT)
    return _case(b, "T21", "unversioned app; v2 has foo@VERS_1 and foo@@VERS_2", old, new, app,
                 verdict=COMPATIBLE, old_run=RUNS, new_run=RUNS,
                 observed="runs and binds to foo@VERS_1 (42, not 43)")


def _t22(b: _Builder) -> Case:
    old, new, app = _standard(b, FOO_BAR, FOO_BAR, v2_soname="libfoo.so.2")
    return _case(b, "T22", "SONAME libfoo.so.1 -> libfoo.so.2, file keeps the old name", old, new, app,
                 verdict=INCOMPATIBLE, old_run=RUNS, new_run=RUNS,
                 observed="runs (ld.so opens by file name), but ldconfig would move the libfoo.so.1 link: "
                          "refuse by policy")


def _t23(b: _Builder) -> Case:
    helper = b.lib(b.build / "libhelper.so.1", "int helper(void) { return 1; }\n", soname="libhelper.so.1")
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR)
    new = b.lib(b.v2 / "libfoo.so.1", "int helper(void);\nint foo(void) { return 41 + helper(); }\n" + BAR_ONLY,
                link=[str(helper)])
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    return _case(b, "T23", "v2 adds DT_NEEDED libhelper.so.1, which is not installed", old, new, app,
                 verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(STARTUP, 127, "",
                                 (f"{app}: error while loading shared libraries: libhelper.so.1: cannot open "
                                  "shared object file: No such file or directory",)),
                 observed="cannot open shared object file (abidiff/abicompat: nothing)")


def _t24(b: _Builder) -> Case:
    b.lib(b.deps / "libdep.so.1", "int dep_a(void) { return 1; }\n", soname="libdep.so.1")
    newdep = b.lib(b.build / "newdep" / "libdep.so.1", "int dep_a(void) { return 1; }\nint dep_b(void) { return 1; }\n",
                   soname="libdep.so.1")
    old = b.lib(b.v1 / "libfoo.so.1", "int dep_a(void);\nint foo(void) { return 41 + dep_a(); }\n" + BAR_ONLY,
                link=[str(b.deps / "libdep.so.1")])
    new = b.lib(b.v2 / "libfoo.so.1", "int dep_b(void);\nint foo(void) { return 41 + dep_b(); }\n" + BAR_ONLY,
                link=[str(newdep)])
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    return _case(b, "T24", "v2 calls dep_b, which the installed libdep lacks", old, new, app,
                 verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(FIRST_CALL, 127, "start\nbar=7\n",
                                 (f"{app}: symbol lookup error: {new}: undefined symbol: dep_b",)),
                 observed="undefined symbol: dep_b")


def _t25(b: _Builder) -> Case:
    b.lib(b.deps / "libdep.so.1", "int dep_a(void) { return 1; }\n", soname="libdep.so.1",
          vmap="DEP_1.0 { global: dep_a; local: *; };\n")
    newdep = b.lib(b.build / "newdep" / "libdep.so.1",
                   "int dep_a(void) { return 1; }\nint dep_b(void) { return 1; }\n", soname="libdep.so.1",
                   vmap="DEP_1.0 { global: dep_a; local: *; };\nDEP_2.0 { global: dep_b; } DEP_1.0;\n")
    old = b.lib(b.v1 / "libfoo.so.1", "int dep_a(void);\nint foo(void) { return 41 + dep_a(); }\n" + BAR_ONLY,
                link=[str(b.deps / "libdep.so.1")])
    new = b.lib(b.v2 / "libfoo.so.1", "int dep_b(void);\nint foo(void) { return 41 + dep_b(); }\n" + BAR_ONLY,
                link=[str(newdep)])
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    dep = b.deps / "libdep.so.1"
    return _case(b, "T25", "v2 needs DEP_2.0, which the installed libdep lacks", old, new, app,
                 verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(STARTUP, 1, "",
                                 (f"{app}: {dep}: version `DEP_2.0' not found (required by {new})",)),
                 observed="version 'DEP_2.0' not found (required by libfoo.so.1)",
                 machine_note="exit status 1, like every version error")


def _t26(b: _Builder) -> Case:
    libbar = b.lib(b.deps / "libbar.so.1", "int bar(void) { return 7; }\n", soname="libbar.so.1")
    libuse = b.lib(b.deps / "libuse.so", "int bar(void);\nint use(void) { return bar() + 1; }\n", soname="libuse.so")
    old = b.lib(b.v1 / "libfoo.so.1", "int foo(void) { return 42; }\n",
                link=["-Wl,--no-as-needed", str(libbar), "-Wl,--as-needed"])
    new = b.lib(b.v2 / "libfoo.so.1", "int foo(void) { return 42; }\n")
    app = b.exe(_app("int foo(void);\nint use(void);",
                     '    printf("foo=%d\\n", foo());\n    printf("use=%d\\n", use());'),
                link=[str(old), str(libuse)])
    return _case(b, "T26", "v2 drops DT_NEEDED libbar; the sibling libuse.so is underlinked", old, new, app,
                 verdict=INCOMPATIBLE, old_run=_runs("start\nfoo=42\nuse=8\n"),
                 new_run=Symptom(FIRST_CALL, 127, "start\nfoo=42\n",
                                 (f"{app}: symbol lookup error: {libuse}: undefined symbol: bar",)),
                 observed="libuse.so: undefined symbol: bar", consumers=[libuse])


def _t27(b: _Builder) -> Case:
    libbar = b.lib(b.deps / "libbar.so.1", "int foo(void) { return 42; }\n", soname="libbar.so.1")
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR)
    new = b.lib(b.v2 / "libfoo.so.1", BAR_ONLY, link=["-Wl,--no-as-needed", str(libbar), "-Wl,--as-needed"])
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    return _case(b, "T27", "foo moved to libbar.so.1, which v2 now needs", old, new, app, verdict=COMPATIBLE,
                 old_run=RUNS, new_run=RUNS,
                 observed="runs: foo is found in libbar through the global scope (abidiff/abicompat: false "
                          "positive)")


def _t28(b: _Builder) -> Case:
    if not have_m32():
        pytest.skip("gcc -m32 cannot link (gcc-multilib missing)")
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR)
    new = b.lib(b.v2 / "libfoo.so.1", FOO_BAR, m32=True)
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    return _case(b, "T28", "v2 built with -m32", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(STARTUP, 127, "",
                                 (f"{app}: error while loading shared libraries: libfoo.so.1: wrong ELF class: "
                                  "ELFCLASS32",)),
                 observed="wrong ELF class: ELFCLASS32")


def _t29(b: _Builder) -> Case:
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR)
    new = b.patch(old, b.v2 / "libfoo.so.1", 18, (183).to_bytes(2, "little"))  # e_machine = EM_AARCH64
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    return _case(b, "T29", "e_machine patched to AArch64", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(STARTUP, 127, "",
                                 (f"{app}: error while loading shared libraries: libfoo.so.1: cannot open shared "
                                  "object file: No such file or directory",)),
                 observed="cannot open shared object file (skipped silently)")


def _t30(b: _Builder, osabi: int) -> Case:
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR)
    new = b.patch(old, b.v2 / "libfoo.so.1", 7, bytes([osabi]))  # EI_OSABI
    app = b.exe(APP_FOO_BAR, link=[str(old)])
    if osabi == 3:
        return _case(b, "T30b", "EI_OSABI = 3 (GNU)", old, new, app, verdict=COMPATIBLE, old_run=RUNS,
                     new_run=RUNS, observed="runs")
    return _case(b, "T30", "EI_OSABI = 9 (FreeBSD)", old, new, app, verdict=INCOMPATIBLE, old_run=RUNS,
                 new_run=Symptom(STARTUP, 127, "",
                                 (f"{app}: error while loading shared libraries: {new}: ELF file OS ABI invalid",)),
                 observed="ELF file OS ABI invalid")


def _t31(b: _Builder) -> Case:
    old = b.lib(b.v1 / "libfoo.so.1", FOO_BAR)
    new = b.lib(b.v2 / "libfoo.so.1", BAR_ONLY)
    plug = b.lib(b.deps / "plug.so", "int foo(void);\nint plug(void) { return foo() + 1; }\n", soname="plug.so",
                 link=[str(old)])
    body = ('    printf("bar=%d\\n", bar());\n'
            '    void *h = dlopen(argv[1], RTLD_NOW);\n'
            '    if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }\n'
            '    int (*p)(void) = (int (*)(void))dlsym(h, "plug");\n'
            '    printf("plug=%d\\n", p());')
    app = b.exe(_app("int bar(void);", body), link=[str(old)])
    return _case(b, "T31", "a plugin dlopen'ed with RTLD_NOW uses the removed foo", old, new, app,
                 verdict=INCOMPATIBLE, old_run=_runs("start\nbar=7\nplug=43\n"),
                 new_run=Symptom(DLOPEN, 1, f"start\nbar=7\ndlopen: {plug}: undefined symbol: foo\n"),
                 observed="dlopen: ./plug.so: undefined symbol: foo", args=[str(plug)], consumers=[plug])


def _t32(b: _Builder) -> Case:
    # The call comes first in main, so the second argument register still holds argv: never 2.
    app_src = """#include <stdio.h>
long scale(long);
int main(int argc, char **argv) {
    long r = scale(21);
    (void)argc; (void)argv;
    setvbuf(stdout, NULL, _IONBF, 0);
    puts("start");
    printf("scale=%ld\\n", r);
    return 0;
}
"""
    old = b.lib(b.v1 / "libfoo.so.1", "long scale(long x) { return x * 2; }\n")
    new = b.lib(b.v2 / "libfoo.so.1", "long scale(long x, long y) { return x * y; }\n")
    app = b.exe(app_src, link=[str(old)], flags=["-O0"])
    return _case(b, "T32", "long scale(long) -> scale(long, long)", old, new, app, verdict=INCOMPATIBLE,
                 elf_visible=False, old_run=_runs("start\nscale=42\n"),
                 new_run=Symptom(RUNTIME, 0, None, stdout_differs_from_v1=True, stderr_empty=True),
                 observed="garbage (ELF-only: blind spot)")


def _t33(b: _Builder) -> Case:
    v1 = "struct S { int a; };\nvoid s_init(struct S *s) { s->a = 1; }\n"
    v2 = ("#include <string.h>\nstruct S { int a; char pad[256]; };\n"
          "void s_init(struct S *s) { memset(s, 0, sizeof *s); s->a = 1; }\n")
    app_src = _app("struct S { int a; };\nvoid s_init(struct S *s);\n"
                   "__attribute__((noinline)) static int get(void) { struct S s; s_init(&s); return s.a; }",
                   '    printf("a=%d\\n", get());')
    old = b.lib(b.v1 / "libfoo.so.1", v1)
    new = b.lib(b.v2 / "libfoo.so.1", v2)
    app = b.exe(app_src, link=[str(old)], flags=["-O0", "-fno-stack-protector"])
    return _case(b, "T33", "a struct the caller allocates grows from 4 to 260 bytes", old, new, app,
                 verdict=INCOMPATIBLE, elf_visible=False, old_run=_runs("start\na=1\n"),
                 new_run=Symptom(RUNTIME, -signal.SIGSEGV, "start\n"),
                 observed="SIGSEGV (ELF-only: blind spot)",
                 machine_note="built with -fno-stack-protector so the smashed return address (zeros) faults; "
                              "with -fstack-protector the same bug is caught as SIGABRT")


def _t34(b: _Builder) -> Case:
    if shutil.which(CXX) is None:
        pytest.skip(f"no C++ compiler ({CXX})")
    v1 = ("struct Shape { virtual ~Shape(); virtual int area() const; };\n"
          "Shape::~Shape() {}\nint Shape::area() const { return 12; }\n"
          "Shape *make_shape() { return new Shape; }\n")
    v2 = ("struct Shape { virtual ~Shape(); virtual int perimeter() const; virtual int area() const; };\n"
          "Shape::~Shape() {}\nint Shape::perimeter() const { return 14; }\nint Shape::area() const { return 12; }\n"
          "Shape *make_shape() { return new Shape; }\n")
    app_src = ("#include <cstdio>\n"
               "struct Shape { virtual ~Shape(); virtual int area() const; };\nShape *make_shape();\n"
               "int main() {\n    setvbuf(stdout, nullptr, _IONBF, 0);\n    std::puts(\"start\");\n"
               "    Shape *s = make_shape();\n    std::printf(\"area=%d\\n\", s->area());\n    delete s;\n"
               "    return 0;\n}\n")
    old = b.lib(b.v1 / "libfoo.so.1", v1, cxx=True)
    new = b.lib(b.v2 / "libfoo.so.1", v2, cxx=True)
    app = b.exe(app_src, link=[str(old)], cxx=True)
    return _case(b, "T34", "C++: a virtual method inserted before area()", old, new, app, verdict=INCOMPATIBLE,
                 elf_visible=False, old_run=_runs("start\narea=12\n"),
                 new_run=Symptom(RUNTIME, 0, "start\narea=14\n", stderr_empty=True),
                 observed="the wrong method is called (ELF-only: \"symbol added\")",
                 machine_note="the app calls slot 2 of the vtable, now perimeter(): area=14. soswap diff also "
                              "reports the vtable object _ZTV5Shape growing (a hint, not a per-consumer proof)")


_BUILDERS = {
    "T1": _t1, "T2": _t2, "T3": _t3, "T4": _t4, "T5": _t5, "T6": _t6, "T7": _t7, "T8": _t8, "T9": _t9,
    "T10": _t10, "T11": _t11, "T12": _t12, "T13": _t13, "T14": _t14, "T15": _t15, "T16": _t16, "T17": _t17,
    "T18": _t18, "T19": _t19, "T20": _t20, "T21": _t21, "T22": _t22, "T23": _t23, "T24": _t24, "T25": _t25,
    "T26": _t26, "T27": _t27, "T28": _t28, "T29": _t29, "T30": lambda b: _t30(b, 9), "T30b": lambda b: _t30(b, 3),
    "T31": _t31, "T32": _t32, "T33": _t33, "T34": _t34,
}


def build_case(tmp_path: Path, case_id: str) -> Case:
    """Build case ``case_id`` (``"T1"``…``"T34"``, ``"T30b"``) under ``tmp_path/case_id``."""
    if case_id not in _BUILDERS:
        raise KeyError(f"unknown case {case_id!r}; known: {', '.join(CASE_IDS)}")
    root = Path(tmp_path) / case_id
    return _BUILDERS[case_id](_Builder(root))


def build_all(tmp_path: Path, ids: Sequence[str] = CASE_IDS) -> Dict[str, Case]:
    """Build several cases; those that cannot be built here (no -m32, no C++) are left out."""
    out: Dict[str, Case] = {}
    for cid in ids:
        try:
            out[cid] = build_case(tmp_path, cid)
        except pytest.skip.Exception:
            continue
    return out


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A run's status and output, for assertion messages."""
    return f"rc={result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


def lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line]
