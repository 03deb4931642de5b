"""Running processes as consumers: checked with their own environment, their dlopen'ed plugins included, and
found by default among the processes that map TARGET. The oracle: the same program started again after the
replacement prints exactly the predicted line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from soswap.abi import check_replacement

from .tree import Tree, age, build_tree

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("proc-tree"))


@pytest.fixture
def tree(built: Tree, tmp_path: Path) -> Tree:
    """A private copy of the installed tree (the test replaces its libfoo)."""
    root = tmp_path / "tree"
    shutil.copytree(built.root, root, symlinks=True)
    age(root)
    paths = {k: (root / v.relative_to(built.root)) if str(v).startswith(str(built.root) + "/") else v
             for k, v in built.paths.items()}
    return Tree(root, paths["libfoo"], built.new, paths)


def _install(tree: Tree) -> None:
    tmp = tree.target.with_name(".new")
    shutil.copyfile(tree.new, tmp)
    os.replace(tmp, tree.target)


def _clean_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env.update(extra)
    return env


def _cli(args: List[str], state: Path) -> subprocess.CompletedProcess:
    env = _clean_env(PYTHONPATH=str(ROOT / "src"), SOSWAP_STATE_DIR=str(state))
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_pid_is_checked_with_the_process_environment(tree: Tree, tmp_path: Path, procs) -> None:
    """server finds libfoo only through its own LD_LIBRARY_PATH; soswap runs without one."""
    ready = tmp_path / "ready"
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tree.root / "lib")}
    server = tree["server"]
    p = procs.start([server, ready], env=env, wait_for_file=ready)
    r = _cli(["check", str(tree.new), str(tree.target), "--pid", str(p.pid), "--json"], tmp_path / "st")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    (c,) = doc["consumers"]
    assert (c["pid"], c["path"], c["role"], c["verdict"]) == (p.pid, str(server), "process", "incompatible")
    (problem,) = c["problems"]
    expected = f"{server}: symbol lookup error: {server}: undefined symbol: foo"
    assert (problem["message"], problem["when"]) == (expected, "first-call")
    # the oracle: the program started again after the replacement
    _install(tree)
    again = subprocess.run([str(server), str(tmp_path / "ready2")], env=env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 127
    assert again.stderr.splitlines() == [expected]


def test_default_discovery_finds_the_processes_that_map_target(tree: Tree, tmp_path: Path, procs) -> None:
    ready = tmp_path / "ready"
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tree.root / "lib")}
    p = procs.start([tree["server"], ready], env=env, wait_for_file=ready)
    result = check_replacement(str(tree.target), str(tree.new), processes=True, system=False,
                               environ=_clean_env())
    assert [(c.pid, c.verdict) for c in result.consumers] == [(p.pid, "incompatible")]
    assert result.discovery.sources == ("processes",)


def test_a_plugin_the_process_dlopened_is_checked_with_it(tree: Tree, tmp_path: Path, procs) -> None:
    """host does not link libfoo; the plugin it dlopen()ed does. The process maps libfoo through the plugin."""
    ready = tmp_path / "ready"
    host, plug = tree["host"], tree["plug"]
    env = {"PATH": "/usr/bin:/bin"}
    p = procs.start([host, plug, ready], env=env, wait_for_file=ready)
    result = check_replacement(str(tree.target), str(tree.new), processes=True, system=False,
                               environ=_clean_env())
    (c,) = [c for c in result.consumers if c.pid == p.pid]
    assert c.role == "process" and c.verdict == "incompatible"
    assert c.plugins == (str(plug),)
    (problem,) = c.problems
    assert (problem.when, problem.message) == ("dlopen", f"{plug}: undefined symbol: foo")
    _install(tree)
    again = subprocess.run([str(host), str(plug), str(tmp_path / "ready2")], env=env, capture_output=True,
                           text=True, timeout=30)
    assert again.stdout == f"dlopen: {problem.message}\n"


def test_a_compatible_process(tree: Tree, tmp_path: Path, procs) -> None:
    ready = tmp_path / "ready"
    p = procs.start([tree["host"], tree["plug_ok"], ready], env={"PATH": "/usr/bin:/bin"}, wait_for_file=ready)
    r = _cli(["check", str(tree.new), str(tree.target), "--pid", str(p.pid)], tmp_path / "st")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("compatible: NEW breaks none of the 1 consumer checked")


def test_unknown_pid_is_an_error(tree: Tree, tmp_path: Path) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    r = _cli(["check", str(tree.new), str(tree.target), "--pid", str(pid_max + 1)], tmp_path / "st")
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"soswap: error: --pid {pid_max + 1}: no such process\n"


def test_a_process_without_a_program_to_check_says_why(tree: Tree, tmp_path: Path, procs) -> None:
    """A kernel thread (PID 2, kthreadd) runs no program; a process whose program was deleted runs one nothing
    names any more (what is at the path is checked where there is something: a restart runs that). Each is an
    error that says so, not "no such process" or the loader's "No such file or directory"."""
    r = _cli(["check", str(tree.new), str(tree.target), "--pid", "2"], tmp_path / "st")
    assert r.returncode == 2 and r.stderr == (
        "soswap: error: process 2 runs no program (a kernel thread or a zombie): not checked\n")
    prog = tmp_path / "host"
    shutil.copyfile(tree["host"], prog)
    os.chmod(prog, 0o755)
    ready = tmp_path / "ready"
    p = procs.start([prog, tree["plug_ok"], ready], env={"PATH": "/usr/bin:/bin"}, wait_for_file=ready)
    prog.unlink()
    r = _cli(["check", str(tree.new), str(tree.target), "--pid", str(p.pid)], tmp_path / "st")
    assert r.returncode == 2 and r.stderr == (
        f"soswap: error: process {p.pid}: its program {prog} was deleted since it started: not checked ('soswap "
        "stale' lists it)\n")


def test_a_process_that_dlopens_target_itself(tree: Tree, tmp_path: Path, procs) -> None:
    """The program dlopen()s libfoo by path: nothing in its tree or its plugins loads TARGET; the process is
    listed as not loading it through any checked consumer, and NEW itself is checked (self)."""
    ready = tmp_path / "ready"
    p = procs.start([tree["host"], tree.target, ready], env={"PATH": "/usr/bin:/bin"}, wait_for_file=ready)
    result = check_replacement(str(tree.target), str(tree.new), pids=[p.pid], environ=_clean_env())
    (c,) = result.consumers
    assert (c.pid, c.verdict) == (p.pid, "unaffected")
    assert "dlopen" in c.note and "self check" in c.note
    assert result.self_check is not None and result.self_check.verdict == "compatible"


HOST = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 2; i < argc; i++)
        if (!dlopen(argv[i], RTLD_NOW | RTLD_GLOBAL)) { printf("dlerror: %s\n", dlerror()); return 3; }
    FILE *f = fopen(argv[1], "w"); if (f) fclose(f);
    for (;;) pause();
}
"""


@pytest.mark.parametrize("how", ["rpath", "loaded", "linked", "linked-through-a-link"])
def test_a_plugin_finding_target_as_the_process_does(tmp_path: Path, procs, how: str) -> None:
    """The plugin's libfoo.so.1 resolves, inside the process, through the program's DT_RPATH (the l_loader
    chain of _dl_map_object), or to the libfoo the program dlopen()ed by path first or links itself (SONAME
    match). Checked on its own it finds no libfoo at all and looked unaffected; the restarted process is the
    oracle."""
    from support.build import executable, shared_lib

    lib, v2 = tmp_path / "lib", tmp_path / "v2"
    if how == "linked-through-a-link":  # TARGET is the real file elsewhere; the program finds lib/libfoo.so.1
        real = shared_lib(tmp_path / "real" / "libfoo.so.1.0", "int foo(void){return 1;} int bar(void){return 2;}\n",
                          soname="libfoo.so.1")
        lib.mkdir()
        (lib / "libfoo.so.1").symlink_to(real)
    else:
        shared_lib(lib / "libfoo.so.1", "int foo(void){return 1;} int bar(void){return 2;}\n",
                   soname="libfoo.so.1")
    new = shared_lib(v2 / "libfoo.so.1", "int foo(void){return 1;}\n", soname="libfoo.so.1")
    plug = shared_lib(tmp_path / "plug" / "plug.so", "int bar(void); int plugf(void){return bar();}\n",
                      libs=[str(lib / "libfoo.so.1")])
    flags = ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{lib}"] if how == "rpath" else []
    links = ["-Wl,--no-as-needed", str(lib / "libfoo.so.1"), "-Wl,--enable-new-dtags", f"-Wl,-rpath,{lib}"]
    host = executable(tmp_path / "bin" / "host", HOST, flags=flags,
                      libs=[*(links if how.startswith("linked") else []), "-ldl"])
    args = [str(lib / "libfoo.so.1"), str(plug)] if how == "loaded" else [str(plug)]
    env = {"PATH": "/usr/bin:/bin"}
    p = procs.start([host, tmp_path / "ready", *args], env=env, wait_for_file=tmp_path / "ready")
    target = os.path.realpath(lib / "libfoo.so.1")
    result = check_replacement(target, str(new), pids=[p.pid], environ=_clean_env())
    (c,) = result.consumers
    assert c.verdict == "incompatible" and c.plugins == (str(plug),), c
    assert [(x.when, x.message) for x in c.problems] == [("dlopen", f"{plug}: undefined symbol: bar")]
    shutil.copyfile(new, target)  # the oracle: the program started again with NEW in place
    again = subprocess.run([str(host), str(tmp_path / "ready2"), *args], env=env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 3 and again.stdout == f"dlerror: {c.problems[0].message}\n"


def test_a_process_that_would_die_at_startup_dlopens_nothing(tmp_path: Path, procs) -> None:
    """Restarted with NEW, the host dies before main (an undefined symbol under -z now): the plugin it had
    dlopen-ed is never loaded, so its own problem is not listed."""
    from support.build import executable, shared_lib

    lib = tmp_path / "lib"
    old = shared_lib(lib / "libq.so", "int foo(void) { return 1; }\nint bar(void) { return 2; }\n", soname="libq.so")
    new = shared_lib(tmp_path / "new" / "libq.so", "int baz(void) { return 3; }\n", soname="libq.so")
    plug = shared_lib(tmp_path / "plug" / "plug.so", "int foo(void);\nint plug(void) { return foo(); }\n",
                      soname="plug.so", libs=[str(old)], flags=[f"-Wl,-rpath,{lib}"])
    ready = tmp_path / "ready"
    host = executable(tmp_path / "host", """#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int bar(void);
int main(int argc, char **argv) {
    if (argc > 3) return bar();  /* bound at startup (-z now), called never */
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
    close(open(argv[2], O_CREAT | O_WRONLY, 0644));
    for (;;) pause();
}
""", libs=[str(old), "-ldl"], flags=[f"-Wl,-rpath,{lib}", "-Wl,-z,now"])
    p = procs.start([host, plug, ready], env={"PATH": "/usr/bin:/bin"}, wait_for_file=ready)
    result = check_replacement(str(old), str(new), pids=[p.pid], environ=_clean_env())
    (c,) = [c for c in result.consumers if c.pid == p.pid]
    assert c.verdict == "incompatible" and c.plugins == (), c.problems
    assert [(x.when, x.symbol) for x in c.problems] == [("startup", "bar")], c.problems
    shutil.copyfile(new, lib / ".new")
    os.replace(lib / ".new", old)
    again = subprocess.run([str(host), str(plug), str(tmp_path / "ready2")], capture_output=True, text=True,
                           timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert again.returncode == 127 and "undefined symbol: bar" in again.stderr and again.stdout == ""


TITLED = r"""
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
int foo(void);
int main(int argc, char **argv) {
    if (foo() != 42) return 1;
    /* setproctitle as nginx does it: the title over argv and the environment, the rest NUL */
    char ready[4096];
    snprintf(ready, sizeof ready, "%s", argv[1]);
    char *start = argv[0], *end = argv[0];
    for (char **a = argv; *a; a++) end = *a + strlen(*a) + 1;
    for (char **e = environ; *e; e++) end = *e + strlen(*e) + 1;
    memset(start, 0, end - start);
    snprintf(start, end - start, "titled: master process titled -c /etc/titled.conf");
    int fd = open(ready, O_CREAT | O_WRONLY, 0644);
    if (fd >= 0) close(fd);
    for (;;) pause();
}
"""


def test_a_process_whose_title_overwrote_its_environment(tree: Tree, tmp_path: Path, procs) -> None:
    """A daemon found libfoo through LD_LIBRARY_PATH, then wrote its process title over argv and environ
    (nginx, redis): /proc/PID/environ has no LD_LIBRARY_PATH any more, and the program's tree without it does
    not load TARGET. The process maps TARGET: it is checked with the directories of what it maps first, and
    argv[0] (overwritten) is its program's path. It was called 'unaffected' and NEW 'compatible'."""
    from support.build import executable

    prog = executable(tmp_path / "bin" / "titled", TITLED, libs=[str(tree.target)])
    ready = tmp_path / "ready"
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tree.root / "lib")}
    p = procs.start([prog, ready], env=env, wait_for_file=ready)
    assert b"LD_LIBRARY_PATH" not in Path(f"/proc/{p.pid}/environ").read_bytes()
    r = _cli(["check", str(tree.new), str(tree.target), "--pid", str(p.pid), "--json"], tmp_path / "st")
    assert r.returncode == 1, r.stdout + r.stderr
    (c,) = json.loads(r.stdout)["consumers"]
    assert (c["pid"], c["verdict"]) == (p.pid, "incompatible")
    assert "process title" in c["note"]
    (problem,) = c["problems"]
    expected = f"{prog}: symbol lookup error: {prog}: undefined symbol: foo"
    assert problem["message"] == expected
    _install(tree)  # the oracle: started again by its path, as a service manager does
    again = subprocess.run([str(prog), str(tmp_path / "ready2")], env=env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 127 and again.stderr.splitlines() == [expected]


def _titled_pair(tmp: Path):  # type: ignore[no-untyped-def]
    """libbar in A (bar, bar2) and in B (bar only), libfoo (TARGET) in B, a NEW libfoo that needs bar2 at
    startup, libpre (bar2) in P, and a retitling daemon that needs libbar then libfoo."""
    from support.build import executable, shared_lib

    bar_src = "int bar(void) { return 1; }\n"
    shared_lib(tmp / "A" / "libbar.so.1", bar_src + "int bar2(void) { return 2; }\n", soname="libbar.so.1")
    barb = shared_lib(tmp / "B" / "libbar.so.1", bar_src, soname="libbar.so.1")
    target = shared_lib(tmp / "B" / "libfoo.so.1", "int foo(void) { return 42; }\n", soname="libfoo.so.1")
    new = shared_lib(tmp / "new" / "libfoo.so.1", "int bar2(void);\nint (*volatile p)(void) = bar2;\n"
                     "int foo(void) { return 40 + p(); }\n", soname="libfoo.so.1",
                     libs=[str(tmp / "A" / "libbar.so.1")])
    shared_lib(tmp / "P" / "libpre.so", "int bar2(void) { return 2; }\n", soname="libpre.so")
    prog = executable(tmp / "bin" / "daemon",
                      "#include <dlfcn.h>\n" + TITLED.replace("int foo(void);", "int foo(void);\nint bar(void);")
                      .replace("if (foo() != 42) return 1;",
                               "if (bar() != 1 || foo() < 40) return 1;\n"
                               "    if (argc > 2 && !dlopen(argv[2], RTLD_NOW | RTLD_LOCAL)) return 1;"),
                      libs=[str(barb), str(target), "-ldl"])
    return target, new, prog


def test_a_retitled_daemon_that_restarts_fine_is_not_refused(tmp_path: Path, procs) -> None:
    """The reconstruction must not invent a breakage: with LD_LIBRARY_PATH=A:B its libbar is A's (bar2 there),
    and maps' address order lists B first. It restarts fine with NEW (checked by doing it)."""
    target, new, prog = _titled_pair(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": f"{tmp_path / 'A'}:{tmp_path / 'B'}"}
    p = procs.start([prog, tmp_path / "ready"], env=env, wait_for_file=tmp_path / "ready")
    r = _cli(["check", str(new), str(target), "--pid", str(p.pid), "--json"], tmp_path / "st")
    (c,) = json.loads(r.stdout)["consumers"]
    assert c["verdict"] == "compatible", c
    shutil.copyfile(new, target)  # the oracle: NEW in place, started again (it raises if it dies first)
    procs.start([prog, tmp_path / "ready2"], env=env, wait_for_file=tmp_path / "ready2")


@pytest.mark.parametrize("how", ["preload", "rtld-local-plugin"])
def test_a_symbol_another_mapped_object_defines_is_named_not_dropped(tmp_path: Path, procs, how: str) -> None:
    """NEW lacks bar2, which another object the retitled daemon maps defines. A preload its lost environment
    named (the restart works) and a plugin it dlopen-ed with RTLD_LOCAL (the restart fails) look the same from
    /proc: the problem stays (refusing can be forced; calling it safe was an outage) and the note names the
    object."""
    target, new, prog = _titled_pair(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tmp_path / "B")}
    if how == "preload":
        env["LD_PRELOAD"] = str(tmp_path / "P" / "libpre.so")
        p = procs.start([prog, tmp_path / "ready"], env=env, wait_for_file=tmp_path / "ready")
    else:
        p = procs.start([prog, tmp_path / "ready", str(tmp_path / "P" / "libpre.so")], env=env,
                        wait_for_file=tmp_path / "ready")
    r = _cli(["check", str(new), str(target), "--pid", str(p.pid), "--json"], tmp_path / "st")
    (c,) = json.loads(r.stdout)["consumers"]
    assert c["verdict"] == "incompatible" and [x["symbol"] for x in c["problems"]] == ["bar2"], c
    assert "libpre.so" in c["note"]


def test_a_process_that_maps_target_and_cannot_be_checked_is_listed_and_warned_about(tree: Tree, tmp_path: Path,
                                                                                     procs) -> None:
    """The text report said only "(1 not checked)" and install said nothing: a process left out of the check is
    listed with the reason, and install's preflight passes it on as a warning (QA round)."""
    from soswap.abi.preflight import REVIEW_NOTE, problems_of
    from soswap.report.abi import check_to_text

    server = tmp_path / "server-copy"
    shutil.copy(tree["server"], server)
    ready = tmp_path / "ready"
    p = procs.start([server, ready], env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tree.root / "lib")},
                    wait_for_file=ready)
    server.unlink()  # its program is gone: what would a restart run? nothing to check
    result = check_replacement(str(tree.target), str(tree.new), processes=True, system=False,
                               environ=_clean_env())
    assert [pid for pid, _ in result.discovery.skipped_processes] == [p.pid]
    text = "\n".join(check_to_text(result))
    assert f"not checked: these processes map TARGET (1):\n  pid {p.pid}: process {p.pid}: its program" in text
    notes = [x for x in problems_of(result) if x.kind == REVIEW_NOTE]
    assert [(x.pid, x.message.startswith(f"{tree.target}: process {p.pid}: its program")) for x in notes] == \
        [(p.pid, True)]


@pytest.mark.parametrize("own_align, verdict", [(4096, "compatible"), (0, "incompatible")])
def test_a_plugin_tls_alignment_is_judged_against_the_process_static_tls_block(tmp_path: Path, procs,
                                                                               own_align: int, verdict: str) -> None:
    """dlopen refuses a static TLS block aligned more than the process's static TLS block, which
    _dl_determine_tlsoffset aligns to the largest of 64 and its start-up objects' TLS alignments: a host whose own
    TLS is aligned to 4096 loads a plugin needing a library aligned to 256; one without TLS does not."""
    from support.build import executable, shared_lib

    src = '__thread char tv[16] __attribute__((aligned(A), tls_model("initial-exec"))) = {1};\n' \
          "int get(void) { return tv[0]; }\n"
    lib = tmp_path / "lib"
    old = shared_lib(lib / "libtls.so", src.replace("(A)", "(8)"), soname="libtls.so")
    new = shared_lib(tmp_path / "new" / "libtls.so", src.replace("(A)", "(256)"), soname="libtls.so")
    plug = shared_lib(tmp_path / "plug" / "plug.so", "int get(void);\nint plug(void) { return get(); }\n",
                      soname="plug.so", libs=[str(old)], flags=[f"-Wl,-rpath,{lib}"])
    own = f"__thread char own[8] __attribute__((aligned({own_align}))) = {{2}};\n" if own_align else ""
    host = executable(tmp_path / "host", own + """#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("%s\\n", dlerror()); return 1; }
    if (argc > 2) { close(open(argv[2], O_CREAT | O_WRONLY, 0644)); for (;;) pause(); }
    return 0;
}
""", libs=["-ldl"])
    truth = subprocess.run([str(host), str(plug)], capture_output=True, text=True, timeout=30,
                           env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(new.parent)})
    assert (truth.returncode == 0) == (verdict == "compatible"), truth.stdout
    ready = tmp_path / "ready"
    p = procs.start([host, plug, ready], env={"PATH": "/usr/bin:/bin"}, wait_for_file=ready)
    result = check_replacement(str(old), str(new), pids=[p.pid], environ=_clean_env())
    (c,) = [c for c in result.consumers if c.pid == p.pid]
    assert c.verdict == verdict, c.problems
    if verdict == "incompatible":  # what dlerror() says, NEW being at TARGET's place
        assert truth.stdout == f"{new}: cannot allocate memory in static TLS block\n"
        assert [x.message for x in c.problems] == [f"{old}: cannot allocate memory in static TLS block"]


def test_a_process_started_as_ld_so_program_is_checked_as_that_program(tmp_path: Path, procs) -> None:
    """``ld.so --library-path D [--preload L] ./app``: /proc/PID/exe is ld.so, and the program was checked
    as a plugin ld.so dlopen-ed, its --preload ignored (a library defining the symbol NEW drops: restarted, it
    runs; soswap refused) and the message dlerror()'s, not the "symbol lookup error" ld.so prints."""
    from support.build import executable, shared_lib

    lib, new = tmp_path / "lib", tmp_path / "new"
    target = shared_lib(lib / "libfoo.so.1", "int foo(void) { return 1; }\nint keep(void) { return 0; }\n",
                        soname="libfoo.so.1")
    newlib = shared_lib(new / "libfoo.so.1", "int keep(void) { return 0; }\n", soname="libfoo.so.1")
    bar = shared_lib(lib / "libbar.so", "int foo(void) { return 7; }\n")
    executable(tmp_path / "app", '#include <stdio.h>\n#include <unistd.h>\nint foo(void);\n'
               'int main(int c, char **v) { FILE *f = fopen(v[1], "w"); if (f) fclose(f);\n'
               '  if (c > 2) pause(); printf("%d\\n", foo()); return 0; }\n',
               libs=[f"-L{lib}", "-l:libfoo.so.1"])  # no RUNPATH: found through --library-path
    ld_so = "/lib64/ld-linux-x86-64.so.2"
    if not os.path.exists(ld_so):
        pytest.skip("x86-64 ld.so")
    env = {"PATH": "/usr/bin:/bin"}
    runs = {}
    for name, extra in (("plain", []), ("preload", ["--preload", str(bar)])):
        argv = [ld_so, "--library-path", str(lib), *extra, "./app", str(tmp_path / f"ready-{name}")]
        p = procs.start([*argv, "wait"], env=env, cwd=tmp_path, wait_for_file=tmp_path / f"ready-{name}")
        r = _cli(["check", str(newlib), str(target), "--pid", str(p.pid), "--json"], tmp_path / "st")
        (c,) = json.loads(r.stdout)["consumers"]
        runs[name] = (argv, r.returncode, c)
    _install_new = tmp_path / ".new"
    shutil.copyfile(newlib, _install_new)
    os.replace(_install_new, target)
    argv, rc, c = runs["preload"]
    again = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert again.returncode == 0 and again.stdout == "7\n"
    assert rc == 0 and c["verdict"] == "compatible", c
    argv, rc, c = runs["plain"]
    again = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert again.returncode == 127
    assert rc == 1 and [p["message"] for p in c["problems"]] == again.stderr.splitlines(), (c, again.stderr)
