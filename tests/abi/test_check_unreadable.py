"""What a user cannot read under the directories ``check`` and ``rdeps`` walk: a directory it cannot list, a file
it cannot open (root's 0700 programs), a directory it can list but not search. Before, the walk left them out
silently: a non-root ``check --scope`` said "compatible: NEW breaks none of the 0 consumers checked", exit 0,
where root found every one of them broken. Each is now listed with the reason, the verdict line says PARTIAL,
``--json`` says ``"partial": true``; the exit status stays that of the consumers checked (as ``stale`` and
``users`` keep theirs when processes cannot be read).

As root the files are root's and the commands run as uid 65534 (setpriv); as another user the files are made
unreadable to their owner (mode 0), and the commands run as that user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple

import pytest

from soswap.abi.rdeps import RACY_NS
from support.build import executable, shared_lib
from support.nobody import AS_NOBODY, require_python_as_nobody

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534
ROOT_USER = os.geteuid() == 0
DENIED = "Permission denied"


class World(NamedTuple):
    """``lib/libfoo.so.1`` (foo, bar), ``new/libfoo.so.1`` (bar only: it breaks every program calling foo), and
    ``scope/``: ``open/app_bar`` (readable, uses bar only), ``priv/`` (a directory the user cannot list, with
    ``app``), ``app_priv`` (a program the user cannot open), ``rx/`` (a directory the user can list but not
    search, with ``app`` and ``sub/``). Every program but app_bar calls foo."""

    top: Path
    target: Path
    new: Path
    scope: Path
    cache: Path


def _deny(path: Path, root_mode: int, own_mode: int) -> None:
    """Make ``path`` unreadable to the user the commands run as (see the module docstring)."""
    path.chmod(root_mode if ROOT_USER else own_mode)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    if ROOT_USER:
        require_python_as_nobody()
    parts = tmp_path / "parts"
    lib = shared_lib(parts / "lib" / "libfoo.so.1", "int foo(int x) { return x + 1; }\nint bar = 3;\n",
                     soname="libfoo.so.1")
    new = shared_lib(parts / "new" / "libfoo.so.1", "int bar = 3;\n", soname="libfoo.so.1")
    top = Path(tempfile.mkdtemp(prefix="soswap-check-unreadable-"))  # not under pytest's 0700 base directory
    top.chmod(0o755)
    target, new_copy = top / "lib" / "libfoo.so.1", top / "new" / "libfoo.so.1"
    for src, dst in ((lib, target), (new, new_copy)):
        dst.parent.mkdir(mode=0o755)
        shutil.copy(src, dst)
    rpath = [f"-Wl,-rpath,{target.parent}"]
    calls_foo = executable(parts / "app", "int foo(int);\nint main(void) { return foo(1) - 2; }\n",
                           libs=[str(lib)], flags=rpath)
    uses_bar = executable(parts / "app_bar", "extern int bar;\nint main(void) { return bar - 3; }\n",
                          libs=[str(lib)], flags=rpath)
    scope = top / "scope"
    for d in (scope, scope / "open", scope / "priv", scope / "rx", scope / "rx" / "sub"):
        d.mkdir(mode=0o755)
    shutil.copy(uses_bar, scope / "open" / "app_bar")
    for dst in (scope / "priv" / "app", scope / "app_priv", scope / "rx" / "app"):
        shutil.copy(calls_foo, dst)
    _deny(scope / "app_priv", 0o700, 0o000)
    _deny(scope / "priv", 0o700, 0o000)
    _deny(scope / "rx", 0o744, 0o644)
    cache = top / "cache"
    cache.mkdir(mode=0o700)
    if ROOT_USER:
        os.chown(cache, NOBODY, NOBODY)
    try:
        yield World(top, target, new_copy, scope, cache)
    finally:
        for d in (scope / "priv", scope / "rx"):
            d.chmod(0o755)
        shutil.rmtree(top)


def _soswap(w: World, *args: str, as_user: bool = True) -> subprocess.CompletedProcess:
    """``python -m soswap ARGS``: as uid 65534 when this test runs as root (``as_user``), else as this user."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "SOSWAP_CACHE_DIR": str(w.cache),
           "HOME": str(w.top)}
    prefix = AS_NOBODY if ROOT_USER and as_user else []
    return subprocess.run([*prefix, sys.executable, "-m", "soswap", *args], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, cwd="/")


def _unreadable(w: World) -> List[Dict[str, str]]:
    s = w.scope
    return [{"path": str(s / "app_priv"), "reason": f"cannot open the file: {DENIED}"},
            {"path": str(s / "priv"), "reason": f"cannot list the directory: {DENIED}"},
            {"path": str(s / "rx" / "app"), "reason": f"cannot look it up: {DENIED}"},
            {"path": str(s / "rx" / "sub"), "reason": f"cannot look it up: {DENIED}"}]


def _check_json(w: World, *extra: str) -> Dict[str, Any]:
    r = _soswap(w, "check", "--json", *extra, "--scope", str(w.scope), "--", str(w.new), str(w.target))
    assert r.returncode == 0 and r.stderr == "", (r.returncode, r.stderr)
    doc: Dict[str, Any] = json.loads(r.stdout)
    return doc


def test_check_scope_lists_what_it_cannot_read_and_says_partial(world: World) -> None:
    w = world
    if ROOT_USER:  # the oracle: whoever can read them finds three programs NEW breaks
        r = _soswap(w, "check", "--no-index", "--scope", str(w.scope), "--", str(w.new), str(w.target), as_user=False)
        assert r.returncode == 1 and r.stdout.startswith("incompatible: NEW breaks 3 of 4 consumers\n"), r.stdout
    doc = _check_json(w, "--no-index")
    assert doc["verdict"] == "compatible" and doc["summary"]["compatible"] == 1  # app_bar: the one it can read
    assert doc["partial"] is True
    assert doc["discovery"]["unreadable"] == _unreadable(w)
    r = _soswap(w, "check", "--no-index", "--scope", str(w.scope), "--", str(w.new), str(w.target))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == ("compatible: NEW breaks none of the 1 consumer checked; PARTIAL: not checked: 4 unreadable "
                        "files or directories (listed below)")
    at = lines.index("not checked: could not be read, may be consumers of TARGET (4):")
    assert lines[at + 1:at + 5] == [f"  {u['path']}: {u['reason']}" for u in _unreadable(w)]


def test_a_warm_index_still_lists_what_it_cannot_read(world: World) -> None:
    """The unreadable files are kept in the index (lstat-ed like ELF files), unlistable directories are tried
    again, a directory that cannot be searched is listed again: a run that reads nothing new says the same."""
    w = world
    time.sleep(RACY_NS / 1e9 + 0.05)  # every ctime out of the racy window: the second run trusts every key
    first = _check_json(w)
    again = _check_json(w)
    assert again["discovery"]["index"]["reread"] == 0 and again["discovery"]["index"]["rebuilt"] is None
    for doc in (first, again):
        assert doc["partial"] is True and doc["discovery"]["unreadable"] == _unreadable(w), doc["discovery"]


def test_rdeps_lists_what_it_cannot_read(world: World) -> None:
    w = world
    r = _soswap(w, "rdeps", "--json", "--no-index", "--scope", str(w.scope), "--", str(w.target))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc = json.loads(r.stdout)
    assert [d["path"] for d in doc["dependents"]] == [str(w.scope / "open" / "app_bar")]
    assert doc["partial"] is True and doc["unreadable"] == _unreadable(w)
    r = _soswap(w, "rdeps", "--no-index", "--scope", str(w.scope), "--", str(w.target))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].endswith("; PARTIAL: 4 unreadable files or directories (listed below)")
    assert f"not read: these may load LIB (4):\n  {w.scope / 'app_priv'}: cannot open the file: {DENIED}\n" \
        in r.stdout


def test_a_scope_directory_that_cannot_be_listed_is_an_error(world: World) -> None:
    w = world
    priv = w.scope / "priv"
    for cmd in (["check", "--no-index", "--scope", str(priv), "--", str(w.new), str(w.target)],
                ["rdeps", "--no-index", "--scope", str(priv), "--", str(w.target)]):
        r = _soswap(world, *cmd)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"soswap: error: --scope {priv}: {DENIED}\n")


def test_install_preflight_warns_once_about_what_it_cannot_read(world: World) -> None:
    """The preflight passes what its walk could not read on as one review note (install prints it as a
    warning), once for the whole transaction, never as a refusal."""
    w = world
    code = ("import json, sys\nfrom soswap.abi.preflight import preflight\n"
            "ps = preflight([(sys.argv[1], sys.argv[2])], scope=[sys.argv[3]], processes=False, system=False)\n"
            "print(json.dumps([p.to_json() for p in ps]))\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "SOSWAP_CACHE_DIR": str(w.cache),
           "HOME": str(w.top)}
    r = subprocess.run([*(AS_NOBODY if ROOT_USER else []), sys.executable, "-c", code, str(w.new), str(w.target),
                        str(w.scope)], env=env, capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0, r.stderr
    (note,) = json.loads(r.stdout)
    assert note["kind"] == "review" and note["message"] == (
        f"{w.target}: not checked: {w.scope / 'app_priv'} (cannot open the file: {DENIED}) and 3 more could not "
        "be read: any may be a program or plugin that loads it (soswap check lists them)")
