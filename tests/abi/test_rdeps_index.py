"""The rdeps index: incremental updates (only what changed is read again), trees that follow their members
and new names, corruption (rebuilt, never an error), and a state directory that cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from soswap.abi.rdeps import INDEX_FILE, RdepsIndex
from soswap.abi.sysdirs import Top
from soswap.loader import Environment, Profile

from .tree import Tree, age, build_tree

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Tree:
    """A private copy of the tree (the tests change it)."""
    built = _built(tmp_path_factory)
    root = tmp_path / "tree"
    shutil.copytree(built.root, root, symlinks=True)
    age(root)
    paths = {k: root / v.relative_to(built.root) if _inside(v, built.root) else v for k, v in built.paths.items()}
    return Tree(root, paths["libfoo"], built.new, paths)


_BUILT: List[Tree] = []


def _built(factory: pytest.TempPathFactory) -> Tree:
    if not _BUILT:
        _BUILT.append(build_tree(factory.mktemp("rdeps-tree")))
    return _BUILT[0]


def _inside(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


def _index(tree: Tree, state: Path) -> RdepsIndex:
    return RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"))


def _update(tree: Tree, state: Path) -> RdepsIndex:
    idx = _index(tree, state)
    idx.update([Top(str(tree.root), True)])
    idx.save()
    assert idx.stats.saved, idx.stats.save_error
    return idx


def _roots(idx: RdepsIndex, tree: Tree) -> set:
    return {d.path for d in idx.dependents(str(tree.target), [Top(str(tree.root), True)])}


def test_second_update_reads_nothing(tree: Tree, tmp_path: Path) -> None:
    first = _update(tree, tmp_path / "state")
    assert first.stats.rebuilt == "missing"
    elves = {str(p) for p in tree.root.rglob("*") if p.is_file() and p.suffix != ".txt"}
    assert set(first.stats.reread) == elves
    second = _update(tree, tmp_path / "state")
    assert second.stats.rebuilt is None
    assert (second.stats.reread, second.stats.trees, second.stats.dirs_listed, second.stats.probed) == ([], [], 0, 0)
    assert _roots(second, tree) == _roots(first, tree)


def test_touching_one_file_rereads_only_it(tree: Tree, tmp_path: Path) -> None:
    _update(tree, tmp_path / "state")
    when = time.time() - 100
    os.utime(tree["app_other"], (when, when))  # same content, new mtime: the key changed
    idx = _update(tree, tmp_path / "state")
    assert idx.stats.reread == [str(tree["app_other"])]
    assert idx.stats.trees == [str(tree["app_other"])]
    assert idx.stats.dirs_listed == 0


def test_a_changed_library_recomputes_the_trees_that_contain_it(tree: Tree, tmp_path: Path) -> None:
    _update(tree, tmp_path / "state")
    when = time.time() - 100
    os.utime(tree["libmid"], (when, when))
    idx = _update(tree, tmp_path / "state")
    assert idx.stats.reread == [str(tree["libmid"])]
    assert set(idx.stats.trees) == {str(tree["libmid"]), str(tree["app_indirect"])}


def test_a_replaced_library_is_seen_through_its_new_inode(tree: Tree, tmp_path: Path) -> None:
    before = _roots(_update(tree, tmp_path / "state"), tree)
    tmp = tree.target.with_name(".libfoo.new")
    shutil.copyfile(tree.new, tmp)
    os.replace(tmp, tree.target)  # like an install: a new inode under the old name
    age(tree.root, only=[tree.target, tree.target.parent])
    idx = _update(tree, tmp_path / "state")
    assert idx.stats.reread == [str(tree.target)]
    assert idx.stats.dirs_listed == 1  # lib/ changed (a rename), nothing else was listed
    assert str(tree["app_direct"]) in idx.stats.trees and str(tree["app_other"]) not in idx.stats.trees
    assert _roots(idx, tree) == before  # the same files still load libfoo.so.1, now the new one


def test_a_new_library_name_resolves_a_missing_dependency(tree: Tree, tmp_path: Path) -> None:
    idx = _update(tree, tmp_path / "state")
    app = str(tree["app_missing"])
    assert idx.files[app]["fatal"] == "libnew.so.1: cannot open shared object file: No such file or directory"
    shutil.copyfile(tree["libnew_build"], tree.root / "lib" / "libnew.so.1")
    age(tree.root, only=[tree.root / "lib" / "libnew.so.1", tree.root / "lib"])
    idx = _update(tree, tmp_path / "state")
    assert idx.stats.reread == [str(tree.root / "lib" / "libnew.so.1")]
    assert app in idx.stats.trees
    assert idx.files[app]["fatal"] is None
    assert str(tree.root / "bin" / ".." / "lib" / "libnew.so.1") in idx.files[app]["tree"]


def test_a_deleted_file_leaves_the_index(tree: Tree, tmp_path: Path) -> None:
    _update(tree, tmp_path / "state")
    os.unlink(tree["plug"])
    age(tree.root, only=[tree["plug"].parent])
    idx = _update(tree, tmp_path / "state")
    assert str(tree["plug"]) not in idx.files
    assert str(tree["plug"]) not in _roots(idx, tree)


def test_fresh_timestamps_are_checked_again(tree: Tree, tmp_path: Path) -> None:
    """The racy rule: a file written less than 2 s before the update may change again within the same
    timestamp tick, so it is read again next time."""
    _update(tree, tmp_path / "state")
    os.utime(tree["app_bar"])  # now
    assert _update(tree, tmp_path / "state").stats.reread == [str(tree["app_bar"])]
    assert _update(tree, tmp_path / "state").stats.reread == [str(tree["app_bar"])]
    age(tree.root, only=[tree["app_bar"]])
    _update(tree, tmp_path / "state")
    assert _update(tree, tmp_path / "state").stats.reread == []


CORRUPTIONS = {
    "garbage": b"\x00\xffnot json at all",
    "truncated": None,  # the real index cut in half
    "empty": b"",
    "array": b"[1, 2, 3]",
    "other-format": json.dumps({"format": "something-else", "version": 1}).encode(),
    "future-version": None,  # the real index with another version number
    "bad-entry": None,  # the real index with one file entry of the wrong type
    "bad-path-ref": None,  # a tree referring to a path index that does not exist
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
def test_a_corrupt_index_is_rebuilt(tree: Tree, tmp_path: Path, how: str) -> None:
    state = tmp_path / "state"
    good = _roots(_update(tree, state), tree)
    path = state / INDEX_FILE
    raw = path.read_bytes()
    data = CORRUPTIONS[how]
    if how == "truncated":
        data = raw[: len(raw) // 2]
    elif how == "future-version":
        doc = json.loads(raw)
        doc["version"] = 99
        data = json.dumps(doc).encode()
    elif how == "bad-entry":
        doc = json.loads(raw)
        doc["files"][next(iter(doc["files"]))]["k"] = "not a key"
        data = json.dumps(doc).encode()
    elif how == "bad-path-ref":
        doc = json.loads(raw)
        entry = next(e for e in doc["files"].values() if e.get("tree"))
        entry["tree"] = [10**6]
        data = json.dumps(doc).encode()
    path.write_bytes(data)
    idx = _update(tree, state)
    assert idx.stats.rebuilt is not None and idx.stats.rebuilt.startswith("corrupt"), idx.stats.rebuilt
    assert _roots(idx, tree) == good
    assert _update(tree, state).stats.rebuilt is None  # written back whole


def test_an_index_path_that_is_a_directory(tree: Tree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / INDEX_FILE).mkdir(parents=True)
    idx = _index(tree, state)
    idx.update([Top(str(tree.root), True)])
    idx.save()
    assert idx.stats.rebuilt.startswith("corrupt")
    assert not idx.stats.saved and idx.stats.save_error
    assert str(tree["app_direct"]) in _roots(idx, tree)


def _cli(args: List[str], state: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["SOSWAP_STATE_DIR"] = state
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_with_a_corrupt_index_and_an_unwritable_state_dir(tree: Tree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / INDEX_FILE).write_bytes(b"{\"format\": \"soswap-rdeps-index\", \"version\": 1, \"files\": 3")
    r = _cli(["rdeps", str(tree.target), "--scope", str(tree.root), "--json"], str(state))
    assert r.returncode == 0 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["index"]["rebuilt"].startswith("corrupt") and doc["summary"]["program"] == 3
    # a state "directory" that is a file: the answer is still given, the index is not saved
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    r = _cli(["check", str(tree.new), str(tree.target), "--scope", str(tree.root), "--json"], str(blocker))
    assert r.returncode == 1 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["discovery"]["index"]["saved"] is False and doc["discovery"]["index"]["save_error"]
    assert doc["verdict"] == "incompatible"
