"""The rdeps index keeps only what its trees still need: the watched directories and probed paths of scopes
that were deleted (or whose trees were dropped) go with them, those a kept tree depends on stay, and the
groups per indexed directory (the trees one update computed there, with one loader) are bounded. A file that
could not be opened when its directory was listed (a non-root user, a 0700 program of root) is looked at
again when it becomes readable."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, NamedTuple

import pytest

from soswap.abi.index_codec import pack, unpack
from soswap.abi.rdeps import INDEX_FILE, MAX_GROUPS, RdepsIndex
from soswap.abi.sysdirs import Top
from soswap.loader import Environment, Profile
from support.build import executable, shared_lib
from support.nobody import AS_NOBODY, require_python_as_nobody

from .tree import age, settle

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


class Parts(NamedTuple):
    """``libx.so.1`` and ``prog`` (needs it, RUNPATH ``$ORIGIN/../lib``): copied into each throw-away scope,
    whose searches then list a directory of that scope (and its glibc-hwcaps subdirectories)."""

    lib: Path
    prog: Path


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> Parts:
    d = tmp_path_factory.mktemp("rdeps-pruning-parts")
    lib = shared_lib(d / "lib" / "libx.so.1", "int x(void) { return 1; }\n", soname="libx.so.1")
    prog = executable(d / "bin" / "prog", "int x(void);\nint main(void) { return x() - 1; }\n", libs=[str(lib)],
                      flags=["-Wl,-rpath,$ORIGIN/../lib", "-Wl,--enable-new-dtags"])
    return Parts(lib, prog)


def _scope(root: Path, lib: Path, prog: Path) -> Path:
    """A scope ``root`` with ``bin/prog`` and ``lib/libx.so.1``."""
    (root / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    shutil.copy2(lib, root / "lib" / "libx.so.1")
    shutil.copy2(prog, root / "bin" / "prog")
    return root


class Base(NamedTuple):
    """The scope that is kept: ``root/bin/app`` with RUNPATH ``first:second`` (both outside ``root``: watched,
    not indexed), libfoo.so.1 in ``second`` only."""

    root: Path
    app: Path
    first: Path
    lib: Path


def _base(where: Path) -> Base:
    first, second = where / "first", where / "second"
    first.mkdir(parents=True)
    lib = shared_lib(second / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    app = executable(where / "base" / "bin" / "app", "int foo(void);\nint main(void) { return foo() - 1; }\n",
                     libs=[str(lib)], flags=[f"-Wl,-rpath,{first}:{second}", "-Wl,--enable-new-dtags"])
    for f in where.rglob("*.c"):
        f.unlink()
    return Base(where / "base", app, first, lib)


def _index(state: Path) -> RdepsIndex:
    """The index in ``state``; the tests' files were just written: their ctimes are trusted at once."""
    return RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)


def _update(state: Path, *tops: Path) -> RdepsIndex:
    """One update of ``tops`` by a new index object (a soswap process of its own: its own loader), saved."""
    idx = _index(state)
    idx.update([Top(str(t), True) for t in tops])
    idx.save()
    assert idx.stats.saved, idx.stats.save_error
    return idx


def _stored(state: Path) -> RdepsIndex:
    """The index as the file holds it."""
    idx = _index(state)
    idx.load()
    assert idx.stats.rebuilt is None, idx.stats.rebuilt
    return idx


def _dependents(idx: RdepsIndex, lib: Path, top: Path) -> set:
    return {d.path for d in idx.dependents(str(lib), [Top(str(top), True)])}


def test_deleted_scopes_leave_no_watched_directories_or_probed_paths(tmp_path: Path, parts: Parts) -> None:
    """Scopes indexed once (one process each, as ``soswap check --scope DIR`` runs) and deleted: their trees
    went, but their watched directories and probed paths stayed for good (8 and 1 per scope here), the file
    grew and every update stat-ed them all. They go now: the file holds what the kept trees need, no more."""
    base = _base(tmp_path / "kept")
    alone = _update(tmp_path / "alone", base.root)  # what the kept trees need: an index of them alone
    needed_watched, needed_probed = set(alone.data.watched), set(alone.data.probed)
    assert f"{base.first}/" in needed_watched and str(base.lib) in needed_probed
    size_alone = (tmp_path / "alone" / INDEX_FILE).stat().st_size
    state = tmp_path / "state"
    _update(state, base.root)
    scopes = [_scope(tmp_path / f"scope{i}", parts.lib, parts.prog) for i in range(12)]
    for s in scopes:
        idx = _update(state, s)
        assert _dependents(idx, s / "lib" / "libx.so.1", s) == {str(s / "bin" / "prog")}
    grown = _stored(state)
    assert len(grown.data.watched) >= len(needed_watched) + 12  # each scope watches a directory of its own
    assert any(d.startswith(f"{scopes[0]}/") for d in grown.data.watched)
    for s in scopes:
        shutil.rmtree(s)
    _update(state, base.root)
    kept = _stored(state)
    assert set(kept.data.watched) == needed_watched
    assert set(kept.data.probed) == needed_probed
    assert (state / INDEX_FILE).stat().st_size <= size_alone + 256
    warm = _update(state, base.root)  # nothing left to stat for the deleted scopes, nothing to write
    assert warm.stats.trees == [] and not warm.stats.written
    assert _dependents(warm, base.lib, base.root) == {str(base.app)}


@pytest.mark.parametrize("indexed", ["one-directory", "one-update", "two-updates"])
def test_a_change_a_kept_tree_depends_on_is_still_seen_after_pruning(tmp_path: Path, parts: Parts,
                                                                     indexed: str) -> None:
    """A throw-away program whose search also lists the kept program's first RUNPATH directory, then deleted
    and pruned: the directory is still watched, and a library that appears there, now first in the kept
    program's search, is seen. The throw-away program lies in the kept one's indexed directory (one loader:
    its search lists the directory first, the kept program's search reuses that listing and lists nothing),
    or in a scope of its own indexed by the same update (a loader per directory) or by another one."""
    base = _base(tmp_path / "kept")
    if indexed == "one-directory":
        scope = base.root / "a-tmp"  # walked before base/bin: its tree is computed first
    else:
        scope = tmp_path / "a-scope"
    prog = executable(tmp_path / "build" / "prog", "int x(void);\nint main(void) { return x() - 1; }\n",
                      libs=[str(parts.lib)], flags=[f"-Wl,-rpath,{base.first}:$ORIGIN/../lib",
                                                   "-Wl,--enable-new-dtags"])
    _scope(scope, parts.lib, prog)
    state = tmp_path / "state"
    if indexed == "one-directory":
        first = _update(state, base.root)
        assert first.stats.trees.index(str(scope / "bin" / "prog")) < first.stats.trees.index(str(base.app))
    elif indexed == "one-update":
        _update(state, scope, base.root)
    else:
        _update(state, base.root)
        _update(state, scope)
    shutil.rmtree(scope)
    _update(state, base.root)
    pruned = _stored(state)
    assert f"{base.first}/" in pruned.data.watched  # the kept program's stayed
    if indexed != "one-directory":  # a group of its own: what only it needed went with it
        assert not any(d.startswith(f"{scope}/") for d in pruned.data.watched)
    shadow = base.first / "libfoo.so.1"
    shutil.copyfile(base.lib, shadow)
    idx = _update(state, base.root)
    assert idx.stats.trees == [str(base.app)]
    assert _dependents(idx, shadow, base.root) == {str(base.app)}
    assert _dependents(idx, base.lib, base.root) == set()


def test_a_directory_keeps_few_groups_and_exactly_what_they_need(tmp_path: Path) -> None:
    """Each update that computes trees of an indexed directory adds a group to it (here: one new program each
    time, with a RUNPATH directory of its own). Beyond MAX_GROUPS, the trees of its smallest groups are
    computed again with the new one: the file holds at most MAX_GROUPS groups, exactly the watched directories
    and probed paths an index built at once holds, and a warm update computes nothing."""
    solo = executable(tmp_path / "build" / "solo", "int main(void) { return 0; }\n",
                      flags=["-Wl,-rpath,$ORIGIN/lib", "-Wl,--enable-new-dtags"])
    top = tmp_path / "multi"
    top.mkdir()
    state = tmp_path / "state"
    progs: List[Path] = []
    for k in range(MAX_GROUPS + 4):
        progs.append(top / f"p{k:02}" / "prog")
        progs[-1].parent.mkdir()
        shutil.copy2(solo, progs[-1])
        idx = _update(state, top)
        assert str(progs[-1]) in idx.stats.trees
        assert len(idx.stats.trees) == (1 if k < MAX_GROUPS else 2), idx.stats.trees  # + the smallest group's
    groups = json.loads((state / INDEX_FILE).read_bytes().split(b"\n")[1])["groups"]
    assert len(groups["watched"]) == MAX_GROUPS
    stored = _stored(state)
    at_once = _update(tmp_path / "at-once", top)
    assert set(stored.data.watched) == set(at_once.data.watched)
    assert set(stored.data.probed) == set(at_once.data.probed)
    assert all(f"{p.parent}/lib/" in stored.data.watched for p in progs)
    warm = _update(state, top)
    assert warm.stats.trees == [] and not warm.stats.written
    for p in progs:
        shutil.rmtree(p.parent)
    _update(state, top)
    assert (_stored(state).data.watched, _stored(state).data.probed) == ({}, {})


def _rewrite_core(path: Path, change: Any) -> None:
    """Apply ``change`` to the core part of the index file and write it back with checksums that match."""
    head, core, extras, _ = path.read_bytes().split(b"\n")
    doc = json.loads(core)
    change(doc)
    core = json.dumps(doc).encode()
    header = json.loads(head)
    header["parts"] = [[len(b), hashlib.sha256(b).hexdigest()] for b in (core, extras)]
    path.write_bytes(json.dumps(header).encode() + b"\n" + core + b"\n" + extras + b"\n")


def _no_groups(doc: Dict[str, Any]) -> None:
    del doc["groups"]


def _tree_in_no_group(doc: Dict[str, Any]) -> None:
    doc["groups"]["files"] = pack([len(doc["files"]["name"]), -1], "i")


def _id_out_of_range(doc: Dict[str, Any]) -> None:
    doc["groups"]["watched"][0] = pack([len(doc["watched"]["path"])], "i")


@pytest.mark.parametrize("damage", [_no_groups, _tree_in_no_group, _id_out_of_range])
def test_damaged_groups_rebuild_the_index(tmp_path: Path, damage: Any) -> None:
    """The groups decide what may be dropped: a file whose groups are missing or wrong is rebuilt."""
    base = _base(tmp_path / "kept")
    state = tmp_path / "state"
    _update(state, base.root)
    groups = json.loads((state / INDEX_FILE).read_bytes().split(b"\n")[1])["groups"]
    assert unpack(groups["files"], "i") == [1, 0]  # one file, in group 0
    _rewrite_core(state / INDEX_FILE, damage)
    idx = _update(state, base.root)
    assert (idx.stats.rebuilt or "").startswith("corrupt"), idx.stats.rebuilt
    assert _dependents(idx, base.lib, base.root) == {str(base.app)}
    assert _stored(state).data.watched.keys() >= {f"{base.first}/"}


def _rdeps_as_nobody(lib: Path, scope: Path, cache: Path) -> Dict[str, Any]:
    """``soswap rdeps --json --scope SCOPE -- LIB`` run by uid/gid 65534 with its own cache directory."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "SOSWAP_CACHE_DIR": str(cache)}
    r = subprocess.run([*AS_NOBODY, sys.executable, "-m", "soswap", "rdeps", "--json", "--scope", str(scope), "--",
                        str(lib)], env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc: Dict[str, Any] = json.loads(r.stdout)
    assert doc["index"]["rebuilt"] in (None, "missing") and doc["index"]["saved"], doc["index"]
    return doc


def test_a_program_made_readable_is_found_by_a_non_root_index(parts: Parts) -> None:
    """As a user, a 0700 program of root cannot be opened when its directory is listed. ``chmod 755`` sets the
    program's ctime, not its directory's, so the directory is not listed again: the program stayed out of the
    index for good. It is kept with the ELF files, keyed and lstat-ed like them, and read once readable."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a file of root that uid 65534 cannot read, and a switch to uid 65534")
    require_python_as_nobody()
    top = Path(tempfile.mkdtemp(prefix="soswap-rdeps-unreadable-"))  # not under pytest's 0700 base directory
    try:
        top.chmod(0o755)
        scope = _scope(top / "scope", parts.lib, parts.prog)
        for d in (scope, scope / "bin", scope / "lib"):
            d.chmod(0o755)
        (scope / "lib" / "libx.so.1").chmod(0o644)
        prog = scope / "bin" / "prog"
        prog.chmod(0o700)
        cache = top / "cache"
        cache.mkdir(mode=0o700)
        os.chown(cache, NOBODY, NOBODY)
        age(scope)
        settle(scope)  # every key trusted: a directory seen too recently would be listed again anyway
        lib = scope / "lib" / "libx.so.1"
        first = _rdeps_as_nobody(lib, scope, cache)
        assert first["dependents"] == [] and first["index"]["files"] == 1  # the unreadable file is no ELF file yet
        again = _rdeps_as_nobody(lib, scope, cache)
        assert again["index"]["reread"] == 0 and again["index"]["dirs_listed"] == 0 and again["dependents"] == []
        prog.chmod(0o755)
        settle(scope)
        made_readable = _rdeps_as_nobody(lib, scope, cache)
        assert made_readable["index"]["dirs_listed"] == 0  # the directory did not change: the file's ctime did
        assert [(d["path"], d["role"]) for d in made_readable["dependents"]] == [(str(prog), "program")]
        assert made_readable["index"]["files"] == 2
    finally:
        shutil.rmtree(top)
