"""``soswap check`` and ``soswap rdeps`` on bad input: one error line, exit status 2, never a traceback; and
the documented shape of the output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from support.build import run_cc

from .cases import Case

ROOT = Path(__file__).resolve().parents[2]


def _cli(args: List[str], tmp_path: Path, cwd: Path = ROOT, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env.update(PYTHONPATH=str(ROOT / "src"), SOSWAP_STATE_DIR=str(tmp_path / "state"), **extra)
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=env, cwd=str(cwd), capture_output=True,
                          timeout=120)


def _one_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.decode(errors="replace").splitlines()
    assert len(lines) == 1 and lines[0].startswith("soswap: error: "), lines
    assert "Traceback" not in lines[0] and "internal error" not in lines[0], lines
    for f in fragments:
        assert f in lines[0], lines


@pytest.fixture
def t1(abi_cases: Dict[str, Case]) -> Case:
    return abi_cases["T1"]


def test_missing_new_and_target(t1: Case, tmp_path: Path) -> None:
    _one_error(_cli(["check", str(tmp_path / "nope.so"), str(t1.old), "--consumer", str(t1.app)], tmp_path),
               "nope.so", "No such file or directory")
    _one_error(_cli(["check", str(t1.new), str(tmp_path / "gone.so"), "--consumer", str(t1.app)], tmp_path),
               "gone.so", "No such file or directory")
    _one_error(_cli(["check", "", str(t1.old), "--consumer", str(t1.app)], tmp_path), "empty file name")


def test_target_that_is_not_a_library(t1: Case, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    _one_error(_cli(["check", str(t1.new), str(text), "--consumer", str(t1.app)], tmp_path), "notes.txt")
    _one_error(_cli(["check", str(t1.new), str(tmp_path), "--consumer", str(t1.app)], tmp_path),
               "not a regular file")
    truncated = tmp_path / "libfoo.so.1"
    truncated.write_bytes(t1.old.read_bytes()[:100])
    _one_error(_cli(["check", str(t1.new), str(truncated), "--consumer", str(t1.app)], tmp_path), str(truncated))


def test_bad_consumers_scopes_and_pids(t1: Case, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    base = ["check", str(t1.new), str(t1.old)]
    _one_error(_cli([*base, "--consumer", str(text)], tmp_path), "notes.txt")
    _one_error(_cli([*base, "--consumer", str(tmp_path / "none")], tmp_path), "No such file or directory")
    _one_error(_cli([*base, "--scope", str(text)], tmp_path), "--scope", "not a directory")
    _one_error(_cli([*base, "--consumer", str(t1.app), "--no-processes"], tmp_path), "--no-processes")
    r = _cli([*base, "--pid", "abc"], tmp_path)
    assert r.returncode == 2 and b"not a process ID" in r.stderr and b"Traceback" not in r.stderr


#: Named consumers execve and dlopen would not load: (how the file is made, what the error line says).
_UNLOADABLE = {
    "object": ("gcc -c", "not a program or shared library (ET_REL: a relocatable object)"),
    "program-typed-rel": ("the program, e_type 1", "not a program or shared library (ET_REL: a relocatable object)"),
    "core": ("the library, e_type 4", "not a program or shared library (ET_CORE: a core dump)"),
    "class": ("the library, EI_CLASS 1", "cannot be loaded: e_phentsize is 0, not the 32 bytes of an Elf32_Phdr "
                                         "(read as ELF64, its header fits: its EI_CLASS byte says ELFCLASS32)"),
    "machine": ("the library, e_machine 0x28", "no dynamic loader for arm ELF64 files here"),
}


def _patched(src: Path, dst: Path, offset: int, value: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] = value
    dst.write_bytes(bytes(data))
    dst.chmod(0o755)
    return dst


@pytest.mark.parametrize("how", sorted(_UNLOADABLE))
def test_a_named_consumer_that_cannot_be_loaded_is_an_error(t1: Case, tmp_path: Path, how: str) -> None:
    """``--consumer`` took an object file, a core file, a 64-bit file whose header says ELFCLASS32 as a program
    or a plugin that "does not load TARGET": exit 0, compatible. Neither execve nor dlopen loads them (soswap
    tree predicts execve's ENOEXEC for each): exit 2, one line naming the file and why."""
    if how == "object":
        src = tmp_path / "lib.c"
        src.write_text("int foo(int x) { return x + 1; }\n")
        bad = tmp_path / "lib.o"
        run_cc(["-c", "-o", str(bad), str(src)])
    elif how == "program-typed-rel":
        bad = _patched(t1.app, tmp_path / "app", 0x10, 1)
    else:
        offset, value = {"core": (0x10, 4), "class": (4, 1), "machine": (0x12, 0x28)}[how]
        bad = _patched(t1.old, tmp_path / "libfoo.so.1", offset, value)
    r = _cli(["check", str(t1.old), str(t1.old), "--consumer", str(bad)], tmp_path)
    _one_error(r, f"soswap: error: {bad}: {_UNLOADABLE[how][1]}")


def test_options_that_take_every_argument_after_them_say_so(t1: Case, tmp_path: Path) -> None:
    """``check --consumer APP NEW TARGET``: argparse gives NEW and TARGET to --consumer; the error says why and
    what to write instead, and that form then works."""
    pair = [str(t1.new), str(t1.old)]
    _one_error(_cli(["check", "--consumer", str(t1.app), *pair], tmp_path),
               "NEW and TARGET are required", "--consumer takes every argument after it; put -- before NEW TARGET")
    _one_error(_cli(["check", "--scope", str(tmp_path), "--consumer", str(t1.app), *pair], tmp_path),
               "--consumer and --scope take every argument after them")
    r = _cli(["check", "--pid", str(os.getpid()), *pair], tmp_path)
    assert r.returncode == 2 and b"put -- before NEW TARGET" in r.stderr, r.stderr
    r = _cli(["check", "--consumer", str(t1.app), "--", *pair], tmp_path)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, (r.stdout, r.stderr)


def test_rdeps_bad_input(t1: Case, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    _one_error(_cli(["rdeps", str(tmp_path / "nope.so")], tmp_path), "No such file or directory")
    _one_error(_cli(["rdeps", str(text)], tmp_path), "notes.txt")
    _one_error(_cli(["rdeps", str(t1.old), "--scope", str(text)], tmp_path), "not a directory")
    _one_error(_cli(["rdeps", "--scope", str(tmp_path), str(t1.old)], tmp_path), "put -- before LIB")


@pytest.mark.parametrize("cut", [0, 16, 64, 200, 1000, 3000])
def test_truncated_new_is_an_error_or_a_verdict_never_a_crash(t1: Case, tmp_path: Path, cut: int) -> None:
    new = tmp_path / "libfoo.so.1"
    new.write_bytes(t1.new.read_bytes()[:cut])
    r = _cli(["check", str(new), str(t1.old), "--consumer", str(t1.app), "--json"], tmp_path,
             LD_LIBRARY_PATH=f"{t1.old.parent}:{t1.deps_dir}")
    assert r.returncode in (1, 2), r.stderr
    if r.returncode == 2:
        _one_error(r)
    else:
        assert json.loads(r.stdout)["verdict"] == "incompatible"


def test_non_utf8_consumer_name_round_trips(t1: Case, tmp_path: Path) -> None:
    odd = os.path.join(os.fsencode(tmp_path), b"app-\xff")
    shutil.copyfile(t1.app, odd)
    os.chmod(odd, 0o755)
    r = _cli(["check", str(t1.new), str(t1.old), "--consumer", os.fsdecode(odd), "--json"], tmp_path,
             LD_LIBRARY_PATH=f"{t1.old.parent}:{t1.deps_dir}")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    (c,) = doc["consumers"]
    assert os.fsencode(c["path"]) == odd
    assert os.fsencode(c["problems"][0]["message"]).startswith(odd + b": symbol lookup error: ")


def test_json_shape(abi_cases: Dict[str, Case], tmp_path: Path) -> None:
    case = abi_cases["T31"]
    args = ["check", str(case.new), str(case.old), "--json"]
    for c in case.consumers:
        args += ["--consumer", str(c)]
    r = _cli(args, tmp_path, LD_LIBRARY_PATH=f"{case.old.parent}:{case.deps_dir}")
    doc = json.loads(r.stdout)
    assert set(doc) == {"target", "new", "verdict", "partial", "summary", "refusals", "self", "consumers",
                        "discovery", "changes"}
    assert doc["partial"] is False
    assert doc["summary"] == {"consumers": 2, "incompatible": 1, "broken": 0, "compatible": 1, "unaffected": 0,
                              "changes": {"breaking": 1, "review": 0, "harmless": 0}}
    first = doc["consumers"][0]
    assert set(first) == {"path", "role", "source", "verdict", "problems", "baseline_count"}
    assert set(first["problems"][0]) == {"kind", "symbol", "version", "when", "message", "object", "fatal",
                                         "silent", "detail"}
    assert doc["self"]["verdict"] == "compatible"
    assert doc["discovery"] == {"sources": ["named"], "index": None, "skipped": [], "unreadable": [],
                                "unaffected": 0, "shortcuts": 1}  # the app: it uses bar only


def test_text_report(abi_cases: Dict[str, Case], tmp_path: Path) -> None:
    case = abi_cases["T26"]
    args = ["check", str(case.new), str(case.old), "--verbose"]
    for c in case.consumers:
        args += ["--consumer", str(c)]
    r = _cli(args, tmp_path, LD_LIBRARY_PATH=f"{case.old.parent}:{case.deps_dir}")
    out = r.stdout.decode()
    assert r.returncode == 1
    assert out.startswith("incompatible: NEW breaks 1 of 1 consumer\n")
    assert f"  {case.app}  [program]\n    first-call  {case.app}: symbol lookup error: " in out
    assert f"unaffected: these consumers do not load TARGET (1):\n  {case.consumers[1]}  [plugin]" in out
    assert out.rstrip().endswith("vtable slots are not compared (docs/check.md).")


def _deb_replacing(path: Path, content: Path, tmp_path: Path, name: str) -> Path:
    tree = tmp_path / f"{name}-tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: 1\nArchitecture: all\n"
                                             "Maintainer: t <t@localhost>\nDescription: t\n")
    dest = tree / str(path).lstrip("/")
    dest.parent.mkdir(parents=True)
    shutil.copyfile(content, dest)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(tmp_path / f"{name}.deb")],
                   check=True, capture_output=True)
    return tmp_path / f"{name}.deb"


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb is needed")
def test_check_deb_says_what_check_new_target_says(abi_cases: Dict[str, Case], tmp_path: Path) -> None:
    """``check --deb`` pairs the package's file with the installed one and checks it as ``check NEW TARGET``
    does; its messages name the package's file instead of NEW."""
    case = abi_cases["T31"]
    consumers = [a for c in case.consumers for a in ("--consumer", str(c))]
    env = {"LD_LIBRARY_PATH": f"{case.old.parent}:{case.deps_dir}"}
    direct = _cli(["check", str(case.new), str(case.old), "--json", *consumers], tmp_path, **env)
    deb = _deb_replacing(case.old, case.new, tmp_path, "t31-new")
    r = _cli(["check", "--deb", str(deb), "--json", *consumers], tmp_path, **env)
    assert r.returncode == direct.returncode == 1, r.stderr
    doc, want = json.loads(r.stdout), json.loads(direct.stdout)
    assert doc["schema"] == "soswap.check-debs/1" and doc["checked"] == 1 and doc["compatible"] is False
    broken = [c for c in want["consumers"] if c["verdict"] == "incompatible"]
    assert [p["consumer"] for p in doc["problems"]] == [c["path"] for c in broken]
    label = f"{deb.name}:{case.old}"
    assert all(p["new"] == label and f": {label} breaks " in p["message"] for p in doc["problems"])
    assert [p["problem"]["message"] for p in doc["problems"]] == [c["problems"][0]["message"] for c in broken]

    same = _deb_replacing(case.old, case.old, tmp_path, "t31-same")
    r = _cli(["check", "--deb", str(same), *consumers], tmp_path, **env)
    assert r.returncode == 0 and r.stdout == b"checked 1 installed ELF file that 1 package would replace: " \
        b"nothing breaks\n", r.stdout + r.stderr
    _one_error(_cli(["check", "--deb", str(same), "--full"], tmp_path), "--full")
    _one_error(_cli(["check"], tmp_path), "NEW and TARGET are required")


def test_help_mentions_the_exit_status(tmp_path: Path) -> None:
    for cmd in ("check", "rdeps"):
        r = _cli([cmd, "--help"], tmp_path)
        assert r.returncode == 0 and b"Exit status" in r.stdout
