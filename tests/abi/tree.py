"""A small installed tree of programs, libraries and plugins around ``lib/libfoo.so.1``, built with gcc.

::

    bin/app_direct     needs libfoo, calls foo and bar                      -> breaks (foo removed)
    bin/app_bar        needs libfoo, calls bar only                         -> compatible
    bin/app_indirect   needs libmid; libmid needs libfoo and calls foo      -> breaks, in libmid
    bin/app_other      needs libother only                                  -> not a consumer
    bin/app_missing    needs libnew.so.1, which is not installed            -> not a consumer (does not start)
    lib/libfoo.so.1    OLD: foo, bar
    lib/libmid.so.1    needs libfoo (a library loaded by app_indirect)
    lib/libother.so.1
    plugins/plug.so    needs libfoo, calls foo; nothing loads it            -> plugin, breaks at dlopen
    plugins/plug_ok.so needs libfoo, calls bar                              -> plugin, compatible
    share/notes.txt    not ELF
    new/libfoo.so.1    NEW: bar only (outside the tree)
    host               a program that dlopen()s argv[1] with RTLD_NOW, then waits (outside the tree)
    server             needs libfoo without RUNPATH (found through LD_LIBRARY_PATH), waits (outside the tree)

Every object finds its dependencies through ``RUNPATH $ORIGIN/../lib`` (or ``$ORIGIN``), so no environment is
needed, except ``server``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence

from support.build import executable, shared_lib

ORIGIN_LIB = ["-Wl,-rpath,$ORIGIN/../lib", "-Wl,--enable-new-dtags"]

FOO_BAR = "int foo(void) { return 42; }\nint bar(void) { return 7; }\n"
BAR_ONLY = "int bar(void) { return 7; }\n"

WAIT = """#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
static void ready(const char *path) { int fd = open(path, O_CREAT | O_WRONLY, 0644); if (fd >= 0) close(fd); }
"""


class Tree(NamedTuple):
    root: Path
    target: Path
    new: Path
    paths: Dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


def build_tree(base: Path) -> Tree:
    root = base / "tree"
    p: Dict[str, Path] = {}
    lib = root / "lib"
    p["libfoo"] = shared_lib(lib / "libfoo.so.1", FOO_BAR, soname="libfoo.so.1")
    p["libmid"] = shared_lib(lib / "libmid.so.1", "int foo(void);\nint mid(void) { return foo() + 1; }\n",
                             soname="libmid.so.1", libs=[str(p["libfoo"])], flags=["-Wl,-rpath,$ORIGIN",
                                                                                  "-Wl,--enable-new-dtags"])
    p["libother"] = shared_lib(lib / "libother.so.1", "int other(void) { return 3; }\n", soname="libother.so.1")
    newlib = shared_lib(base / "build" / "libnew.so.1", "int fresh(void) { return 5; }\n", soname="libnew.so.1")
    p["libnew_build"] = newlib
    bin_ = root / "bin"
    main_fb = ("#include <stdio.h>\nint foo(void);\nint bar(void);\n"
               "int main(void) { printf(\"%d %d\\n\", bar(), foo()); return 0; }\n")
    p["app_direct"] = executable(bin_ / "app_direct", main_fb, libs=[str(p["libfoo"])], flags=ORIGIN_LIB)
    p["app_bar"] = executable(bin_ / "app_bar", "#include <stdio.h>\nint bar(void);\n"
                              "int main(void) { printf(\"%d\\n\", bar()); return 0; }\n",
                              libs=[str(p["libfoo"])], flags=ORIGIN_LIB)
    p["app_indirect"] = executable(bin_ / "app_indirect", "#include <stdio.h>\nint mid(void);\n"
                                   "int main(void) { printf(\"%d\\n\", mid()); return 0; }\n",
                                   libs=[str(p["libmid"])], flags=[*ORIGIN_LIB, f"-Wl,-rpath-link,{lib}"])
    p["app_other"] = executable(bin_ / "app_other", "#include <stdio.h>\nint other(void);\n"
                                "int main(void) { printf(\"%d\\n\", other()); return 0; }\n",
                                libs=[str(p["libother"])], flags=ORIGIN_LIB)
    p["app_missing"] = executable(bin_ / "app_missing", "#include <stdio.h>\nint fresh(void);\n"
                                  "int main(void) { printf(\"%d\\n\", fresh()); return 0; }\n",
                                  libs=[str(newlib)], flags=ORIGIN_LIB)
    plugins = root / "plugins"
    p["plug"] = shared_lib(plugins / "plug.so", "int foo(void);\nint plug(void) { return foo() + 1; }\n",
                           soname="plug.so", libs=[str(p["libfoo"])], flags=ORIGIN_LIB)
    p["plug_ok"] = shared_lib(plugins / "plug_ok.so", "int bar(void);\nint plug(void) { return bar() + 1; }\n",
                              soname="plug_ok.so", libs=[str(p["libfoo"])], flags=ORIGIN_LIB)
    share = root / "share"
    share.mkdir(parents=True, exist_ok=True)
    (share / "notes.txt").write_text("not an ELF file, but long enough to be probed for the ELF magic\n" * 2)
    new = shared_lib(base / "new" / "libfoo.so.1", BAR_ONLY, soname="libfoo.so.1")
    p["host"] = executable(base / "host", WAIT + """#include <dlfcn.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
    ready(argv[2]);
    for (;;) pause();
}
""")
    p["server"] = executable(base / "server", WAIT + """int foo(void);
int main(int argc, char **argv) {
    (void)argc;
    if (foo() != 42) return 1;
    ready(argv[1]);
    for (;;) pause();
}
""", libs=[str(p["libfoo"])])
    # strip the build leftovers (sources, maps) out of the tree: only what an install would leave
    for f in root.rglob("*.c"):
        f.unlink()
    age(root)
    return Tree(root, p["libfoo"], new, p)


def age(root: Path, seconds: float = 300.0, only: Optional[Sequence[Path]] = None) -> None:
    """Move mtimes into the past (every file, then every directory under ``root``; or only the paths in
    ``only``). The index's racy rule looks at ctimes, which cannot be set back: see :func:`settle`."""
    when = time.time() - seconds
    if only is not None:
        for p in only:
            os.utime(p, (when, when), follow_symlinks=False)
        return
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (when, when), follow_symlinks=False)
    for dirpath, _dirnames, _ in sorted(os.walk(root), key=lambda t: -len(t[0])):
        os.utime(dirpath, (when, when))


def settle(root: Path) -> None:
    """Wait until every ctime under ``root`` is older than the index's racy window (2 s), so that an index
    built now trusts every file and directory (a second run then reads nothing again)."""
    from soswap.abi.rdeps import RACY_NS

    newest = max(os.lstat(os.path.join(d, n)).st_ctime_ns for d, dirs, files in os.walk(root)
                 for n in [".", *dirs, *files])
    wait = (newest + RACY_NS - time.time_ns()) / 1e9
    if wait > 0:
        time.sleep(wait + 0.01)
