"""``soswap check`` on every case T1–T34, against what really happens.

For each case the installed library is a copy of v1 in ``live/``; the check runs against it; then NEW really
replaces it (rename over the old file, like an install) and the program runs. The verdict must match, and the
messages soswap predicts must be exactly the lines ld.so prints (or, for a plugin, what ``dlerror()`` says),
at the time it says (startup: nothing of ``main`` ran; first call: ``main`` had started).

The ELF-only blind spots (T32 signature, T33 struct layout, T34 vtable) are asserted as such: soswap says
compatible while the program misbehaves (docs/check.md says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from soswap.abi import check_replacement
from soswap.abi.problems import CheckResult, ConsumerResult

from .cases import CASE_IDS, Case

ROOT = Path(__file__).resolve().parents[2]
#: ELF-level blind spots: no ELF check can see them (abi.md §4, docs/check.md).
BLIND = {"T32", "T33", "T34"}
#: Refused by policy although the program runs (SONAME change).
POLICY = {"T22"}


class Live:
    """A copy of the case with the installed library in ``live/`` (so that NEW can really replace it)."""

    def __init__(self, case: Case, tmp: Path) -> None:
        self.case = case
        self.dir = tmp / "live"
        self.dir.mkdir()
        self.target = self.dir / case.old.name
        shutil.copyfile(case.old, self.target)

    def environ(self, **extra: str) -> Dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
               "LD_LIBRARY_PATH": f"{self.dir}:{self.case.deps_dir}"}
        env.update(extra)
        return env

    def check(self, **extra: str) -> CheckResult:
        return check_replacement(str(self.target), str(self.case.new),
                                 consumers=[str(c) for c in self.case.consumers], environ=self.environ(**extra))

    def install(self) -> None:
        tmp = self.dir / ".new"
        shutil.copyfile(self.case.new, tmp)
        os.replace(tmp, self.target)

    def run(self, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.case.app), *self.case.args], env=self.environ(**extra),
                              cwd=str(self.case.root), capture_output=True, text=True, errors="replace",
                              timeout=30, stdin=subprocess.DEVNULL)


def _app(result: CheckResult, case: Case) -> ConsumerResult:
    for c in result.consumers:
        if c.path == str(case.app):
            return c
    raise AssertionError(f"the app is not among the consumers: {[c.path for c in result.consumers]}")


def _lines(text: str) -> List[str]:
    return [line for line in text.splitlines() if line]


def _loud(c: ConsumerResult) -> List[str]:
    return [p.message for p in c.problems if p.message is not None and not p.silent]


def _describe(result: CheckResult, run: Optional[subprocess.CompletedProcess] = None) -> str:
    out = [f"verdict {result.verdict}"]
    for c in result.consumers:
        out.append(f"  {c.path} {c.verdict}")
        out.extend(f"    {p.when} fatal={p.fatal} silent={p.silent} {p.kind}: {p.message}" for p in c.problems)
    if run is not None:
        out.append(f"run rc={run.returncode}\n--- stdout\n{run.stdout}--- stderr\n{run.stderr}")
    return "\n".join(out)


@pytest.mark.parametrize("cid", CASE_IDS)
def test_verdict_agrees_with_the_case(case: Case, cid: str, tmp_path: Path) -> None:
    live = Live(case, tmp_path)
    result = live.check()
    if cid in BLIND:
        assert result.verdict == "compatible", _describe(result)
        assert case.verdict == "incompatible" and not case.elf_visible
    else:
        assert result.verdict == case.verdict, _describe(result)
    if cid in POLICY:
        assert [c.kind for c in result.refusals] == ["soname-changed"]
        assert _app(result, case).verdict == "compatible"


@pytest.mark.parametrize("cid", CASE_IDS)
def test_messages_are_what_ld_so_prints_after_the_replacement(case: Case, cid: str, tmp_path: Path) -> None:
    live = Live(case, tmp_path)
    result = live.check()
    app = _app(result, case)
    live.install()
    run = live.run()
    info = _describe(result, run)
    stderr = _lines(run.stderr)
    if app.verdict == "compatible":
        assert run.stderr == "", info
        if cid not in BLIND | {"T14", "T31"}:
            assert run.returncode == 0 and run.stdout == case.old_run.stdout, info
        return
    assert app.verdict == "incompatible", info
    loud = _loud(app)
    # every line ld.so printed was predicted, word for word
    for line in stderr:
        assert line in loud, info
    fatal = [p for p in app.problems if p.fatal]
    if fatal:
        assert fatal[0].when == "startup", info
        assert fatal[0].message in stderr, info
        assert "start" not in run.stdout, info
        return
    warnings = [p for p in app.problems if p.when == "startup" and p.message is not None and not p.silent]
    for p in warnings:
        assert p.message in stderr, info
    lazy = [p for p in app.problems if p.when == "first-call"]
    if any(not p.silent for p in lazy):
        # the program started, then died at the first call of a missing function
        assert run.stdout.startswith("start\n"), info
        assert any(p.message in stderr for p in lazy), info
        assert run.returncode == 127, info
    for p in app.problems:
        if p.silent:
            assert p.message is None or p.message not in run.stderr, info


@pytest.mark.parametrize("cid", CASE_IDS)
def test_bind_now_moves_first_call_problems_to_startup(case: Case, cid: str, tmp_path: Path) -> None:
    live = Live(case, tmp_path)
    result = live.check(LD_BIND_NOW="1")
    app = _app(result, case)
    # what ld.so reports moves to startup; a call into data still crashes when it is made
    assert all(p.when != "first-call" for p in app.problems if not p.silent), _describe(result)
    live.install()
    run = live.run(LD_BIND_NOW="1")
    info = _describe(result, run)
    loud = _loud(app)
    for line in _lines(run.stderr):
        assert line in loud, info
    if any(p.fatal for p in app.problems):
        assert "start" not in run.stdout, info
        first = next(p for p in app.problems if p.fatal)
        assert first.message in run.stderr, info


def test_plugin_message_is_what_dlerror_returns(abi_cases: Dict[str, Case], tmp_path: Path) -> None:
    """T31: the plugin is checked as dlopen(RTLD_NOW) loads it; the program prints dlerror()."""
    case = abi_cases["T31"]
    live = Live(case, tmp_path)
    result = live.check()
    plug = next(c for c in result.consumers if c.path == str(case.consumers[1]))
    assert plug.role == "plugin" and plug.verdict == "incompatible"
    assert [(p.kind, p.symbol, p.when) for p in plug.problems] == [("undefined-symbol", "foo", "dlopen")]
    live.install()
    run = live.run()
    assert f"dlopen: {plug.problems[0].message}\n" in run.stdout, run.stdout


def test_shrunk_copy_is_silent_but_ld_warn_prints_the_predicted_line(abi_cases: Dict[str, Case],
                                                                     tmp_path: Path) -> None:
    case = abi_cases["T5"]
    live = Live(case, tmp_path)
    (problem,) = _app(live.check(), case).problems
    assert problem.kind == "copy-size" and problem.silent and problem.when == "startup"
    live.install()
    assert live.run().stderr == ""
    assert _lines(live.run(LD_WARN="1").stderr) == [problem.message]


@pytest.mark.parametrize("cid,kind", [("T6", "type-changed"), ("T7", "type-changed"), ("T12", "protected-copy"),
                                      ("T4", "copy-size")])
def test_problems_ld_so_does_not_report_as_errors(abi_cases: Dict[str, Case], tmp_path: Path, cid: str,
                                                  kind: str) -> None:
    """Checks of soswap's own (binding level): the program starts, then misbehaves."""
    case = abi_cases[cid]
    live = Live(case, tmp_path)
    problems = _app(live.check(), case).problems
    assert [p.kind for p in problems] == [kind], problems
    assert not problems[0].fatal
    live.install()
    run = live.run()
    assert run.stdout.startswith("start\n")
    assert run.stdout != case.old_run.stdout or run.returncode != 0 or run.stderr


def test_weak_reference_and_symbol_moved_into_a_new_dependency(abi_cases: Dict[str, Case], tmp_path: Path) -> None:
    """T14 and T27: abidiff/abicompat report incompatible; the consumer's scope says otherwise."""
    for cid in ("T14", "T27"):
        case = abi_cases[cid]
        sub = tmp_path / cid
        sub.mkdir()
        result = Live(case, sub).check()
        assert result.verdict == "compatible", _describe(result)
        assert result.diff.breaking, "the library-level diff still lists the removal"


def test_missing_new_dependency_is_fatal_at_startup(abi_cases: Dict[str, Case], tmp_path: Path) -> None:
    """T23: NEW needs libhelper.so.1, which is not installed (abidiff: nothing to report)."""
    case = abi_cases["T23"]
    live = Live(case, tmp_path)
    result = live.check()
    first = _app(result, case).problems[0]
    assert (first.kind, first.when, first.fatal) == ("not-found", "startup", True)
    assert first.message.endswith("libhelper.so.1: cannot open shared object file: No such file or directory")
    assert result.self_check is not None and result.self_check.verdict == "incompatible"


def test_underlinked_sibling_is_blamed_on_its_own_message(abi_cases: Dict[str, Case], tmp_path: Path) -> None:
    """T26: NEW drops DT_NEEDED libbar; libuse.so relied on it. The sibling itself does not load TARGET."""
    case = abi_cases["T26"]
    live = Live(case, tmp_path)
    result = live.check()
    (p,) = _app(result, case).problems
    libuse = str(case.consumers[1])
    assert p.object == libuse and p.symbol == "bar" and p.when == "first-call"
    assert p.message == f"{case.app}: symbol lookup error: {libuse}: undefined symbol: bar"
    sibling = next(c for c in result.consumers if c.path == libuse)
    assert sibling.verdict == "unaffected"


def _cli(args: List[str], env: Dict[str, str], cwd: Path) -> Tuple[int, str, str]:
    full = dict(env)
    full["PYTHONPATH"] = str(ROOT / "src")
    r = subprocess.run([sys.executable, "-m", "soswap", *args], env=full, cwd=str(cwd), capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("cid", CASE_IDS)
def test_cli_json_verdict_and_exit_status(case: Case, cid: str, tmp_path: Path) -> None:
    live = Live(case, tmp_path)
    env = live.environ(SOSWAP_STATE_DIR=str(tmp_path / "state"))
    args = ["check", str(case.new), str(live.target), "--json"]
    for c in case.consumers:
        args += ["--consumer", str(c)]
    rc, out, err = _cli(args, env, case.root)
    assert err == ""
    doc = json.loads(out)
    expected = "compatible" if cid in BLIND else case.verdict
    assert doc["verdict"] == expected
    assert rc == (0 if expected == "compatible" else 1)
    assert {c["path"] for c in doc["consumers"]} == {str(c) for c in case.consumers}
    for c in doc["consumers"]:
        assert set(c) >= {"path", "verdict", "problems"}
        for p in c["problems"]:
            assert set(p) >= {"kind", "symbol", "version", "when", "message"}
            assert p["when"] in ("startup", "first-call", "dlopen")
    for ch in doc["changes"]:
        assert set(ch) >= {"kind", "symbol", "version", "severity"}


@pytest.mark.parametrize("cid", CASE_IDS)
def test_the_diff_shortcut_never_changes_a_verdict(case: Case, cid: str, tmp_path: Path) -> None:
    """Consumers the diff proves safe are not bound (the shortcut); binding them anyway (full=True) gives
    the same verdicts and problems."""
    live = Live(case, tmp_path)
    quick = live.check()
    full = check_replacement(str(live.target), str(case.new), consumers=[str(c) for c in case.consumers],
                             environ=live.environ(), full=True)
    assert [(c.path, c.verdict, c.problems) for c in quick.consumers] == \
        [(c.path, c.verdict, c.problems) for c in full.consumers]
    assert quick.verdict == full.verdict


@pytest.mark.parametrize("cid", CASE_IDS)
def test_the_index_shortcut_never_changes_a_verdict(case: Case, cid: str, tmp_path: Path) -> None:
    """Consumers found through the rdeps index (``--scope``) that the diff proves safe on the tree the index
    recorded are not even loaded again; binding every one (full=True) gives the same consumers, verdicts and
    problems, and the app's verdict is the case's."""
    live = Live(case, tmp_path)
    scope = [str(case.root)]
    quick = check_replacement(str(live.target), str(case.new), scope=scope, environ=live.environ(),
                              keep_index=False)
    full = check_replacement(str(live.target), str(case.new), scope=scope, environ=live.environ(),
                             keep_index=False, full=True)
    assert [(c.path, c.verdict, c.problems) for c in quick.consumers] == \
        [(c.path, c.verdict, c.problems) for c in full.consumers]
    assert quick.verdict == full.verdict == live.check().verdict  # as with the named consumers


@pytest.mark.parametrize("how", ["unmappable", "tls-to-plain"])
def test_nothing_is_listed_after_what_ends_the_run(tmp_path: Path, how: str) -> None:
    """A NEW that cannot be mapped ends the load; a TLS variable become a plain one kills ld.so with SIGFPE:
    the consumer's problems stop there (no lookups against a library never loaded, no silent misbehaviour
    after a crash), as the program, really run, shows."""
    from support.build import executable, shared_lib

    if how == "unmappable":
        src = "int foo(void) { return 1; }\n"
        old = shared_lib(tmp_path / "lib" / "libq.so", src, soname="libq.so")
        new = tmp_path / "new" / "libq.so"
        new.parent.mkdir()
        from soswap.elf import ElfFile
        from soswap.elf import constants as C

        elf = ElfFile.open(old)
        second = [i for i, seg in enumerate(elf.segments) if seg.type == C.PT_LOAD][1]
        data = bytearray(old.read_bytes())
        at = elf.header.phoff + second * 56 + 8
        data[at:at + 8] = (elf.segments[second].offset + 8).to_bytes(8, "little")
        new.write_bytes(bytes(data))
        main = "int foo(void);\nint main(void) { return foo() - 1; }\n"
    else:
        old = shared_lib(tmp_path / "lib" / "libq.so", "__thread int tvar = 1;\n", soname="libq.so")
        new = shared_lib(tmp_path / "new" / "libq.so", "int tvar = 1;\n", soname="libq.so")
        main = "extern __thread int tvar;\nint main(void) { return tvar - 1; }\n"
    app = executable(tmp_path / "app", main, libs=[str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    result = check_replacement(str(old), str(new), consumers=[str(app)], environ={"PATH": "/usr/bin:/bin"})
    (c,) = result.consumers
    assert c.verdict == "incompatible" and len(c.problems) == 1, c.problems
    shutil.copyfile(new, old.with_name(".swap"))
    os.replace(old.with_name(".swap"), old)
    run = subprocess.run([str(app)], capture_output=True, text=True, timeout=60)
    if how == "unmappable":
        assert run.returncode == 127 and c.problems[0].message and c.problems[0].message in run.stderr
    else:
        assert run.returncode < 0 and c.problems[0].kind == "crash"


def test_a_tls_variable_become_plain_breaks_a_library_user_at_its_first_use(tmp_path: Path) -> None:
    """A library reaches ``__thread int tvar`` through __tls_get_addr (DTPMOD64/DTPOFF64): with a plain
    ``int tvar`` it gets module 0 and dies when it first reads the variable, after main started."""
    from support.build import executable, shared_lib

    old = shared_lib(tmp_path / "lib" / "libq.so", "__thread int tvar = 1;\n", soname="libq.so")
    new = shared_lib(tmp_path / "new" / "libq.so", "int tvar = 1;\n", soname="libq.so")
    use = shared_lib(tmp_path / "lib" / "libuse.so", "extern __thread int tvar;\nint get(void) { return tvar; }\n",
                     soname="libuse.so", libs=[str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    app = executable(tmp_path / "app", '#include <stdio.h>\nint get(void);\n'
                     'int main(void) { puts("start"); fflush(stdout); return get() - 1; }\n',
                     libs=[str(use)], flags=[f"-Wl,-rpath,{old.parent}"])
    result = check_replacement(str(old), str(new), consumers=[str(app)], environ={"PATH": "/usr/bin:/bin"})
    (c,) = result.consumers
    assert c.verdict == "incompatible"
    assert [(p.kind, p.when, p.symbol) for p in c.problems] == [("type-changed", "first-call", "tvar")]
    shutil.copyfile(new, old.with_name(".swap"))
    os.replace(old.with_name(".swap"), old)
    run = subprocess.run([str(app)], capture_output=True, text=True, timeout=60)
    assert run.stdout == "start\n" and run.returncode < 0  # main ran, then the first read of tvar killed it


def test_a_plugin_losing_a_tls_variable_fails_at_its_first_use_not_at_dlopen(tmp_path: Path) -> None:
    """dlopen of the plugin succeeds (its DTPMOD64 gets module 0); it dies when it first reads the variable."""
    from support.build import executable, shared_lib

    old = shared_lib(tmp_path / "lib" / "libq.so", "__thread int tvar = 1;\n", soname="libq.so")
    new = shared_lib(tmp_path / "new" / "libq.so", "int tvar = 1;\n", soname="libq.so")
    plug = shared_lib(tmp_path / "plug" / "plug.so", "extern __thread int tvar;\nint get(void) { return tvar; }\n",
                      soname="plug.so", libs=[str(old)], flags=[f"-Wl,-rpath,{old.parent}"])
    result = check_replacement(str(old), str(new), consumers=[str(plug)], environ={"PATH": "/usr/bin:/bin"})
    (c,) = result.consumers
    assert c.role == "plugin" and c.verdict == "incompatible"
    assert [(p.kind, p.when) for p in c.problems] == [("type-changed", "first-call")]
    host = executable(tmp_path / "host", """#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    void *h = dlopen(argv[1], RTLD_NOW);
    if (!h) { printf("dlopen: %s\\n", dlerror()); return 1; }
    puts("loaded"); fflush(stdout);
    int (*get)(void) = (int (*)(void))dlsym(h, "get");
    return get();
}
""", libs=["-ldl"])
    shutil.copyfile(new, old.with_name(".swap"))
    os.replace(old.with_name(".swap"), old)
    run = subprocess.run([str(host), str(plug)], capture_output=True, text=True, timeout=60)
    assert run.stdout == "loaded\n" and run.returncode < 0  # dlopen succeeded, the first read killed it
