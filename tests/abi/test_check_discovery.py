"""Consumer discovery: ``--scope`` over an installed tree (programs, a library loaded by a program, plugins
nothing loads), ``soswap rdeps`` on the same tree, and the verdicts against what the programs really do."""

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
from soswap.abi.rdeps import RdepsIndex
from soswap.abi.sysdirs import Top
from soswap.loader import Environment, Profile

from .tree import Tree, build_tree, settle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("scope-tree"))


def _cli(args: List[str], state: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["SOSWAP_STATE_DIR"] = str(state)
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def _by_path(doc: Dict) -> Dict[str, Dict]:
    return {c["path"]: c for c in doc["consumers"]}


def test_rdeps_lists_programs_plugins_and_libraries(tree: Tree, tmp_path: Path) -> None:
    idx = RdepsIndex(None, Profile.detect(), Environment(cwd="/"))
    tops = [Top(str(tree.root), True)]
    idx.update(tops)
    got = {(d.path, d.role, d.direct) for d in idx.dependents(str(tree.target), tops)}
    assert got == {
        (str(tree["app_direct"]), "program", True),
        (str(tree["app_bar"]), "program", True),
        (str(tree["app_indirect"]), "program", False),
        (str(tree["plug"]), "plugin", True),
        (str(tree["plug_ok"]), "plugin", True),
        (str(tree["libmid"]), "library", True),
    }


def test_rdeps_agrees_with_ldd(tree: Tree) -> None:
    """Oracle: each indexed tree is what ``ldd`` lists (the vDSO aside)."""
    idx = RdepsIndex(None, Profile.detect(), Environment(cwd="/"))
    idx.update([Top(str(tree.root), True)])
    for name in ("app_direct", "app_indirect", "app_other"):
        out = subprocess.run(["ldd", str(tree[name])], capture_output=True, text=True, timeout=30,
                             env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}).stdout
        from_ldd = set()
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if len(parts) > 2 and parts[1] == "=>" else parts[0]
            if path.startswith("/"):
                from_ldd.add(os.path.realpath(path))
        ours = {os.path.realpath(m) for m in idx.info(str(tree[name])).tree}
        assert ours == from_ldd, (name, out)


def test_check_scope_finds_and_judges_every_consumer(tree: Tree, tmp_path: Path) -> None:
    r = _cli(["check", str(tree.new), str(tree.target), "--scope", str(tree.root), "--json"], tmp_path / "st")
    assert r.returncode == 1, r.stderr
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    got = {path: (c["role"], c["verdict"]) for path, c in _by_path(doc).items()}
    assert got == {
        str(tree["app_direct"]): ("program", "incompatible"),
        str(tree["app_indirect"]): ("program", "incompatible"),
        str(tree["app_bar"]): ("program", "compatible"),
        str(tree["plug"]): ("plugin", "incompatible"),
        str(tree["plug_ok"]): ("plugin", "compatible"),
    }
    c = _by_path(doc)
    assert [p["message"] for p in c[str(tree["plug"])]["problems"]] == [f"{tree['plug']}: undefined symbol: foo"]
    (p,) = c[str(tree["app_indirect"])]["problems"]
    # ld.so names it as found: through RUNPATH $ORIGIN/../lib
    assert p["object"] == str(tree.root / "bin" / ".." / "lib" / "libmid.so.1") and p["when"] == "first-call"
    assert doc["discovery"]["sources"] == ["scope"]
    assert doc["discovery"]["index"]["files"] >= 10


def test_scope_verdicts_match_the_programs_run_with_new(tree: Tree, tmp_path: Path) -> None:
    """Copy the tree, check it, install NEW for real, run every program: the broken ones print exactly the
    predicted line; the others run."""
    root = tmp_path / "copy"
    shutil.copytree(tree.root, root, symlinks=True)
    target = root / "lib" / "libfoo.so.1"
    result = check_replacement(str(target), str(tree.new), scope=[str(root)], keep_index=False,
                               environ={"PATH": "/usr/bin:/bin"})
    shutil.copyfile(tree.new, root / "lib" / ".new")
    os.replace(root / "lib" / ".new", target)
    programs = [c for c in result.consumers if c.role == "program"]
    assert len(programs) == 3
    for c in programs:
        run = subprocess.run([c.path], capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
        if c.verdict == "compatible":
            assert run.returncode == 0 and run.stderr == "", (c, run)
        else:
            assert run.returncode == 127, (c, run)
            assert run.stderr.splitlines() == [c.problems[0].message], (c, run)


def test_rdeps_cli_text_and_json(tree: Tree, tmp_path: Path) -> None:
    settle(tree.root)
    r = _cli(["rdeps", str(tree.target), "--scope", str(tree.root)], tmp_path / "st")
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith(f"{tree.target} (libfoo.so.1): 6 dependents (3 programs, 2 plugins, 1 libraries)")
    assert f"  {tree['app_indirect']}  (indirect)" in r.stdout
    r = _cli(["rdeps", str(tree.target), "--scope", str(tree.root), "--json"], tmp_path / "st")
    doc = json.loads(r.stdout)
    assert doc["summary"] == {"program": 3, "plugin": 2, "library": 1}
    assert doc["index"]["reread"] == 0 and doc["index"]["trees"] == 0  # the second run reuses the index
    assert {d["path"] for d in doc["dependents"]} >= {str(tree["app_direct"]), str(tree["plug"])}


def test_rdeps_of_a_library_nobody_loads(tree: Tree, tmp_path: Path) -> None:
    r = _cli(["rdeps", str(tree["libother"]), "--scope", str(tree.root / "plugins"), "--json"], tmp_path / "st")
    assert r.returncode == 0
    assert json.loads(r.stdout)["dependents"] == []
