"""The rdeps index: incremental updates (only what changed is read again), trees that follow their members
and new names, corruption (rebuilt, never an error), a cache directory that cannot be written, and several
soswap processes writing it at once."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soswap.abi.index_codec import W_CTIME, W_RELIST, pack
from soswap.abi.rdeps import INDEX_FILE, RACY_NS, VERSION, RdepsIndex
from soswap.abi.sysdirs import Top
from soswap.loader import Environment, Profile
from support.build import executable, requires_root, shared_lib

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


def _index(tree: Tree, state: Path, racy_ns: int = 0) -> RdepsIndex:
    """The index in the cache directory ``state``. The tests' files were written a moment ago: their ctimes
    are trusted at once (``racy_ns=0``), except in the test of the racy rule."""
    return RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=racy_ns)


def _update(tree: Tree, state: Path, racy_ns: int = 0) -> RdepsIndex:
    idx = _index(tree, state, racy_ns)
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
    assert first.stats.written
    when = (tmp_path / "state" / INDEX_FILE).stat().st_mtime_ns
    second = _update(tree, tmp_path / "state")
    assert second.stats.rebuilt is None
    assert (second.stats.reread, second.stats.trees, second.stats.dirs_listed, second.stats.probed) == ([], [], 0, 0)
    assert second.stats.dirs == first.stats.dirs_listed  # each directory lstat-ed once, none listed
    assert _roots(second, tree) == _roots(first, tree)
    # nothing changed: the file is not written again
    assert second.stats.saved and not second.stats.written
    assert (tmp_path / "state" / INDEX_FILE).stat().st_mtime_ns == when


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
    assert idx.info(app).fatal == "libnew.so.1: cannot open shared object file: No such file or directory"
    shutil.copyfile(tree["libnew_build"], tree.root / "lib" / "libnew.so.1")
    age(tree.root, only=[tree.root / "lib" / "libnew.so.1", tree.root / "lib"])
    idx = _update(tree, tmp_path / "state")
    assert idx.stats.reread == [str(tree.root / "lib" / "libnew.so.1")]
    assert app in idx.stats.trees
    assert idx.info(app).fatal is None
    assert str(tree.root / "bin" / ".." / "lib" / "libnew.so.1") in idx.info(app).tree


def _runpath_app(base: Path) -> tuple:
    """``bin/app`` with RUNPATH ``first:second``, two directories outside the indexed ``bin``; libfoo.so.1 is in
    ``second`` only."""
    first, second = base / "first", base / "second"
    first.mkdir(parents=True)
    lib = shared_lib(second / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    app = executable(base / "bin" / "app", "int foo(void);\nint main(void) { return foo() - 1; }\n",
                     libs=[str(lib)], flags=[f"-Wl,-rpath,{first}:{second}", "-Wl,--enable-new-dtags"])
    for f in base.rglob("*.c"):
        f.unlink()
    return app, first, lib


def _dependents(idx: RdepsIndex, lib: Path, top: Path) -> set:
    return {d.path for d in idx.dependents(str(lib), [Top(str(top), True)])}


@pytest.mark.parametrize("where", ["runpath-dir", "hwcaps-subdir"])
def test_a_new_library_in_a_directory_outside_the_index_shadows_a_member(tmp_path: Path, where: str) -> None:
    """A library that appears in a searched directory that is not indexed (an earlier RUNPATH directory, or a
    glibc-hwcaps subdirectory of it that did not exist) is what the program loads now: the index watches every
    directory its trees' searches listed (the blind spot of index format 2)."""
    app, first, old = _runpath_app(tmp_path / "t")
    bindir = app.parent
    state = tmp_path / "state"
    idx = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)
    idx.update([Top(str(bindir), True)])
    idx.save()
    assert _dependents(idx, old, bindir) == {str(app)}
    if where == "runpath-dir":
        shadow = first / "libfoo.so.1"
    else:
        subdirs = Profile.detect().hwcaps_subdirs
        if not subdirs:
            pytest.skip("this CPU supports no glibc-hwcaps level")
        shadow = first / "glibc-hwcaps" / subdirs[0] / "libfoo.so.1"
        shadow.parent.mkdir(parents=True)
    shutil.copyfile(old, shadow)
    idx = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)
    idx.update([Top(str(bindir), True)])
    idx.save()
    assert idx.stats.trees == [str(app)]
    assert _dependents(idx, old, bindir) == set()
    assert _dependents(idx, shadow, bindir) == {str(app)}
    fresh = RdepsIndex(None, Profile.detect(), Environment(cwd="/"))
    fresh.update([Top(str(bindir), True)])
    assert _dependents(fresh, shadow, bindir) == {str(app)}  # as an index built from nothing says
    # and back: the shadowing copy removed, the program loads the old library again
    shadow.unlink()
    idx = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)
    idx.update([Top(str(bindir), True)])
    assert _dependents(idx, old, bindir) == {str(app)}
    # nothing changed since: no tree is computed again, the watched directories are only stat-ed
    idx.save()
    again = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)
    again.update([Top(str(bindir), True)])
    assert again.stats.trees == [] and again.stats.rebuilt is None


def _update_at(state: Path, top: Path, env: Optional[Environment] = None) -> RdepsIndex:
    idx = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), env or Environment(cwd="/"), racy_ns=0)
    idx.update([Top(str(top), True)])
    idx.save()
    return idx


def _fresh(top: Path, env: Optional[Environment] = None) -> RdepsIndex:
    idx = RdepsIndex(None, Profile.detect(), env or Environment(cwd="/"))
    idx.update([Top(str(top), True)])
    return idx


@pytest.mark.parametrize("first_was", ["other-machine", "dangling-link", "directory"])
def test_a_candidate_that_changes_in_place_is_seen(tmp_path: Path, first_was: str) -> None:
    """The first RUNPATH directory already lists libfoo.so.1, but the search passed it by (another machine,
    skipped), could not open it (a link to nothing) or failed on it (a directory). It becomes a library
    without the directory's names changing: the index stat-s every path its searches stat-ed and sees it."""
    app, first, old = _runpath_app(tmp_path / "t")
    bindir = app.parent
    candidate = first / "libfoo.so.1"
    good = tmp_path / "good.so"
    shutil.copyfile(old, good)
    if first_was == "other-machine":
        data = bytearray(old.read_bytes())
        data[18:20] = (183).to_bytes(2, "little")  # EM_AARCH64: skipped by open_verify
        candidate.write_bytes(bytes(data))
    elif first_was == "dangling-link":
        candidate.symlink_to(tmp_path / "real" / "libfoo.so.1")
    else:
        candidate.mkdir()
    state = tmp_path / "state"
    before = _update_at(state, bindir)
    expected_before = set() if first_was == "directory" else {str(app)}  # EISDIR is fatal: it loads nothing
    assert _dependents(before, old, bindir) == expected_before
    if first_was == "other-machine":
        tmp = first / ".swap"
        shutil.copyfile(good, tmp)
        os.replace(tmp, candidate)  # the same name: the directory lists the same names
    elif first_was == "dangling-link":
        (tmp_path / "real").mkdir()
        shutil.copyfile(good, tmp_path / "real" / "libfoo.so.1")
    else:
        candidate.rmdir()
        shutil.copyfile(good, candidate)
    now = candidate.resolve()
    idx = _update_at(state, bindir)
    assert _dependents(idx, now, bindir) == {str(app)} == _dependents(_fresh(bindir), now, bindir)
    assert _dependents(idx, old, bindir) == set()


def test_a_change_seen_while_updating_another_directory_is_not_lost(tmp_path: Path) -> None:
    """One index, two scopes: the change in a watched directory is found by an update of a scope without the
    program; the program's tree must still be recomputed when its own scope is updated."""
    app, first, old = _runpath_app(tmp_path / "t")
    other = tmp_path / "other"
    other.mkdir()
    state = tmp_path / "state"
    _update_at(state, app.parent)
    shutil.copyfile(old, first / "libfoo.so.1")
    _update_at(state, other)  # sees the watched directory change, computes no tree of the program
    idx = _update_at(state, app.parent)
    assert _dependents(idx, first / "libfoo.so.1", app.parent) == {str(app)}


def test_a_missing_preload_that_appears_is_seen(tmp_path: Path) -> None:
    """The index's environment preloads an absolute path that does not exist yet: a missing preload is no
    object of the tree, its name still counts."""
    app, _first, _old = _runpath_app(tmp_path / "t")
    pre = tmp_path / "pre" / "libpre.so"
    env = Environment(cwd="/", preload=str(pre))
    state = tmp_path / "state"
    _update_at(state, app.parent, env)
    shared_lib(pre, "int pre(void) { return 0; }\n", soname="libpre.so")
    idx = _update_at(state, app.parent, env)
    assert _dependents(idx, pre, app.parent) == {str(app)} == _dependents(_fresh(app.parent, env), pre, app.parent)


def test_a_program_interpreter_that_appears_is_seen(tmp_path: Path) -> None:
    """PT_INTERP names a file that is not there yet (the program cannot start); it is installed later."""
    interp = tmp_path / "interp" / "ld.so"
    app = executable(tmp_path / "bin" / "app", "int main(void) { return 0; }\n",
                     flags=[f"-Wl,--dynamic-linker={interp}"])
    state = tmp_path / "state"
    assert "does not exist" in (_update_at(state, app.parent).info(str(app)).fatal or "")
    interp.parent.mkdir()
    shutil.copyfile(Path("/lib64/ld-linux-x86-64.so.2").resolve(), interp)
    interp.chmod(0o755)
    assert _update_at(state, app.parent).info(str(app)).fatal is None


def test_a_watched_directory_changed_too_recently_is_listed_again(tmp_path: Path) -> None:
    """The racy rule for watched directories: a directory whose ctime is younger than the racy window when it
    is listed is stored as "list again" (a second change within the same clock tick would keep its ctime)."""
    app, first, old = _runpath_app(tmp_path / "t")
    bindir = app.parent
    state = tmp_path / "state"
    racy = 300_000_000
    time.sleep(0.35)  # every file built is older than the window

    def update() -> RdepsIndex:
        idx = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=racy)
        idx.update([Top(str(bindir), True)])
        idx.save()
        return idx

    row = update().data.watched[f"{first}/"]
    assert row[W_CTIME] == first.stat().st_ctime_ns  # trusted
    (first / "unrelated").write_bytes(b"")  # the directory changes now
    idx = update()
    assert idx.data.watched[f"{first}/"][W_CTIME] == W_RELIST  # listed, but too recently to be trusted
    shadow = first / "libfoo.so.1"
    shutil.copyfile(old, shadow)
    idx = update()
    assert idx.stats.trees == [str(app)] and _dependents(idx, shadow, bindir) == {str(app)}


def test_a_deleted_file_leaves_the_index(tree: Tree, tmp_path: Path) -> None:
    _update(tree, tmp_path / "state")
    os.unlink(tree["plug"])
    age(tree.root, only=[tree["plug"].parent])
    idx = _update(tree, tmp_path / "state")
    assert idx.info(str(tree["plug"])) is None
    assert str(tree["plug"]) not in _roots(idx, tree)


def test_one_index_answers_for_its_latest_update(tree: Tree, tmp_path: Path) -> None:
    """dependents() builds its tables once for many targets (a transaction's checks); an update of the same
    index object drops them."""
    tops = [Top(str(tree.root), True)]
    idx = _index(tree, tmp_path / "state")
    idx.update(tops)
    before = _roots(idx, tree)
    assert str(tree["plug"]) in before and _roots(idx, tree) == before
    os.unlink(tree["plug"])
    age(tree.root, only=[tree["plug"].parent])
    idx.update(tops)
    assert _roots(idx, tree) == before - {str(tree["plug"])}


def test_fresh_timestamps_are_checked_again(tree: Tree, tmp_path: Path) -> None:
    """The racy rule: a file changed less than 2 s before the update may change again within the same
    timestamp tick, so it is read again next time. The rule looks at the ctime, which ``utime`` cannot set
    back: a file whose mtime was restored (``cp -p``) is still fresh."""
    state = tmp_path / "state"
    _update(tree, state)
    os.utime(tree["app_bar"], (time.time() - 100, time.time() - 100))  # an old mtime, a ctime of now
    assert _update(tree, state, racy_ns=RACY_NS).stats.reread == [str(tree["app_bar"])]
    assert _update(tree, state, racy_ns=RACY_NS).stats.reread == [str(tree["app_bar"])]
    # the same files a little later: trusted (a window of 0 s stands for "2 s have passed")
    assert _update(tree, state).stats.reread == [str(tree["app_bar"])]
    assert _update(tree, state).stats.reread == []


def test_a_file_rewritten_in_place_with_its_mtime_restored(tree: Tree, tmp_path: Path) -> None:
    """``cp -p NEW OLD`` keeps OLD's inode, may keep its size, and sets its mtime back: the ctime still
    changes, so the file is read again and the trees that load it are computed again."""
    state = tmp_path / "state"
    _update(tree, state)
    lib = tree["libmid"]
    st = lib.stat()
    data = bytearray(lib.read_bytes())
    data[-1] ^= 0xFF  # same size, other content (the last byte: section headers, not loaded)
    with open(lib, "r+b") as f:
        f.write(data)
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = lib.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
    idx = _update(tree, state)
    assert idx.stats.reread == [str(lib)] and idx.stats.dirs_listed == 0
    assert str(tree["app_indirect"]) in idx.stats.trees


def test_a_directory_whose_mtime_was_set_back_is_listed_again(tree: Tree, tmp_path: Path) -> None:
    """``tar -x`` and ``rsync -t`` restore a directory's mtime after adding files to it: the directory's
    ctime changed all the same."""
    state = tmp_path / "state"
    _update(tree, state)
    plugins = tree["plug"].parent
    st = plugins.stat()
    shutil.copyfile(tree["plug_ok"], plugins / "plug_new.so")
    os.utime(plugins, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert plugins.stat().st_mtime_ns == st.st_mtime_ns
    idx = _update(tree, state)
    assert idx.stats.dirs_listed == 1 and idx.stats.reread == [str(plugins / "plug_new.so")]
    assert str(plugins / "plug_new.so") in _roots(idx, tree)


def test_a_directory_replaced_by_another_is_listed_again(tree: Tree, tmp_path: Path) -> None:
    """A directory renamed over another one is another inode, even with the same timestamps."""
    state = tmp_path / "state"
    _update(tree, state)
    plugins = tree["plug"].parent
    other = tree.root / "plugins.new"
    shutil.copytree(plugins, other)
    shutil.copyfile(tree["plug_ok"], other / "plug_more.so")
    shutil.rmtree(plugins)
    os.rename(other, plugins)
    idx = _update(tree, state)
    assert str(plugins / "plug_more.so") in _roots(idx, tree)
    assert str(plugins) in {str(Path(p).parent) for p in idx.stats.reread}


def test_a_non_elf_file_turned_into_an_elf_file_in_place_is_not_seen(tree: Tree, tmp_path: Path) -> None:
    """The documented blind spot (docs/check.md): files that are not ELF files are not looked at again while
    their directory does not change, so writing a plugin into an existing non-ELF file is missed until the
    directory changes; an index built from scratch sees it."""
    state = tmp_path / "state"
    _update(tree, state)
    notes = tree.root / "share" / "notes.txt"
    with open(notes, "r+b") as f:  # same inode, same directory entry
        f.truncate(0)
        f.write(tree["plug"].read_bytes())
    assert str(notes) not in _roots(_update(tree, state), tree)
    fresh = RdepsIndex(None, Profile.detect(), Environment(cwd="/"))
    fresh.update([Top(str(tree.root), True)])
    assert str(notes) in _roots(fresh, tree)
def _parts(path: Path) -> List[bytes]:
    """The header, core and extras lines of the index file."""
    lines = path.read_bytes().split(b"\n")
    assert len(lines) == 4 and lines[-1] == b""
    return lines[:3]


def _write(path: Path, core: bytes, extras: bytes, **header: object) -> None:
    """An index file with these parts and a header whose checksums match them."""
    doc = {"format": "soswap-rdeps-index", "version": VERSION,
           "parts": [[len(b), hashlib.sha256(b).hexdigest()] for b in (core, extras)]}
    doc.update(header)
    path.write_bytes(json.dumps(doc).encode() + b"\n" + core + b"\n" + extras + b"\n")


CORRUPTIONS = ["garbage", "truncated", "empty", "array", "other-format", "future-version", "edited",
               "bad-entry", "bad-path-ref", "bad-dir-order", "bad-base64", "foreign-owner", "group-writable"]


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupt_index_is_rebuilt(tree: Tree, tmp_path: Path, how: str) -> None:
    """Whatever is wrong with the file, the answer is the same as with a good index, the reason is given, and
    the file is written back whole. A well-formed file with matching checksums is still checked item by item
    (bad-entry, bad-path-ref, bad-dir-order, bad-base64)."""
    state = tmp_path / "state"
    good = _roots(_update(tree, state), tree)
    path = state / INDEX_FILE
    raw = path.read_bytes()
    _head, core, extras = _parts(path)
    doc = json.loads(core)
    if how == "garbage":
        path.write_bytes(b"\x00\xffnot json at all")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "array":
        path.write_bytes(b"[1, 2, 3]\n[]")
    elif how == "other-format":
        _write(path, core, extras, format="something-else")
    elif how == "future-version":
        _write(path, core, extras, version=99)
    elif how == "edited":  # one byte changed, the checksum no longer matches
        i = core.index(b'"profile"') + 2
        _write(path, core, extras)
        path.write_bytes(path.read_bytes().replace(core, core[:i] + b"P" + core[i + 1:]))
    else:
        if how == "bad-entry":
            doc["files"]["name"][0] = 42
        elif how == "bad-path-ref":
            n = len(doc["files"]["name"])
            doc["files"]["tree_off"] = pack([0] + [1] * n)
            doc["files"]["tree"] = pack([10**6])
        elif how == "bad-dir-order":
            doc["dirs"]["parent"] = pack([len(doc["dirs"]["name"]) - 1] * len(doc["dirs"]["name"]))
        elif how == "bad-base64":
            doc["dirs"]["ctime"] = "not base64!"
        _write(path, json.dumps(doc).encode(), extras)
        if how == "foreign-owner":
            os.chown(path, 65534, 65534)
        elif how == "group-writable":
            os.chmod(path, 0o664)
    idx = _update(tree, state)
    reason = idx.stats.rebuilt or ""
    if how == "future-version":
        assert reason == f"version 99 (this soswap writes {VERSION})"
    elif how in ("foreign-owner", "group-writable"):
        assert reason.startswith("corrupt: owned by uid") and reason.endswith("not trusted"), reason
    else:
        assert reason.startswith("corrupt"), reason
    assert _roots(idx, tree) == good
    again = _update(tree, state)
    assert again.stats.rebuilt is None  # written back whole (replaced: our owner, mode 0600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("how", ["edited", "wrong-types", "other-core"])
def test_corrupt_extras_are_found_when_they_are_needed(tree: Tree, tmp_path: Path, how: str) -> None:
    """The extras (names of non-ELF files, names trees requested, ld.so.cache) are decoded only when
    something changed: a damaged extras part costs nothing while nothing changes, and rebuilds the index
    (with the right answer) the first time something does."""
    state = tmp_path / "state"
    good = _roots(_update(tree, state), tree)
    path = state / INDEX_FILE
    _head, core, extras = _parts(path)
    if how == "edited":
        _write(path, core, extras)
        path.write_bytes(path.read_bytes().replace(extras, extras.replace(b"notes.txt", b"NOTES.txt")))
    else:
        doc = json.loads(extras)
        if how == "wrong-types":
            doc["others"] = [1] * len(doc["others"])
        else:
            doc["ldcache"] = {"libbogus.so.1": ["/nowhere/libbogus.so.1"]}
        _write(path, core, json.dumps(doc).encode())
    quiet = _update(tree, state)
    assert quiet.stats.rebuilt is None and _roots(quiet, tree) == good
    (tree.root / "share" / "more.txt").write_text("a new name in share/\n")
    idx = _update(tree, state)
    assert (idx.stats.rebuilt or "").startswith("corrupt"), idx.stats.rebuilt
    assert _roots(idx, tree) == good
    assert _update(tree, state).stats.rebuilt is None


def test_an_index_path_that_is_a_directory(tree: Tree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / INDEX_FILE).mkdir(parents=True)
    idx = _index(tree, state)
    idx.update([Top(str(tree.root), True)])
    idx.save()
    assert idx.stats.rebuilt.startswith("corrupt")
    assert not idx.stats.saved and idx.stats.save_error
    assert str(tree["app_direct"]) in _roots(idx, tree)


@requires_root
def test_an_unwritable_cache_directory_keeps_the_index_in_memory(tree: Tree, tmp_path: Path) -> None:
    """An immutable cache directory (EPERM even for root): the answer is right, nothing is written, no temp
    file is left, the reason is given."""
    state = tmp_path / "state"
    state.mkdir()
    if subprocess.run(["chattr", "+i", str(state)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        idx = _index(tree, state)
        idx.update([Top(str(tree.root), True)])
        idx.save()
        assert not idx.stats.saved and "cannot write" in (idx.stats.save_error or "")
        assert str(tree["app_direct"]) in _roots(idx, tree)
        assert os.listdir(state) == []
    finally:
        subprocess.run(["chattr", "-i", str(state)], check=True)


def test_temporary_files_of_killed_writers_are_removed(tree: Tree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    old, young = state / ".soswap-cache-killed.tmp", state / ".soswap-cache-writing.tmp"
    old.write_text("partial")
    young.write_text("partial")
    when = time.time() - 3600
    os.utime(old, (when, when))
    _update(tree, state)
    assert sorted(os.listdir(state)) == [".soswap-cache-writing.tmp", INDEX_FILE]


def test_writers_at_the_same_time_never_leave_a_torn_file(tree: Tree, tmp_path: Path) -> None:
    """Six soswap processes update the same cache at once, each with its own directory (so each writes):
    the last writer wins, the file is always whole (the next run reads it without rebuilding), no temporary
    file is left, and every answer was right."""
    cache = tmp_path / "cache"
    scopes = []
    for i in range(6):
        scopes.append(tmp_path / f"copy{i}")
        shutil.copytree(tree.root, scopes[-1], symlinks=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env.update(PYTHONPATH=str(ROOT / "src"), SOSWAP_CACHE_DIR=str(cache))
    children = [subprocess.Popen([sys.executable, "-m", "soswap", "rdeps", str(s / "lib" / "libfoo.so.1"),
                                  "--scope", str(s), "--json"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE) for s in scopes]
    try:
        outs = [c.communicate(timeout=120) for c in children]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
    for (out, err), child in zip(outs, children):
        assert child.returncode == 0 and err == b"", err
        assert json.loads(out)["summary"] == {"program": 3, "plugin": 2, "library": 1}
    assert os.listdir(cache) == [INDEX_FILE]
    r = _cli(["rdeps", str(scopes[0] / "lib" / "libfoo.so.1"), "--scope", str(scopes[0]), "--json"], str(cache))
    assert json.loads(r.stdout)["index"]["rebuilt"] is None


def _cli(args: List[str], cache: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["SOSWAP_CACHE_DIR"] = cache
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_cli_with_a_corrupt_index_and_an_unwritable_cache_dir(tree: Tree, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / INDEX_FILE).write_bytes(b"{\"format\": \"soswap-rdeps-index\", \"version\": 2, \"files\": 3")
    r = _cli(["rdeps", str(tree.target), "--scope", str(tree.root), "--json"], str(cache))
    assert r.returncode == 0 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["index"]["rebuilt"].startswith("corrupt") and doc["summary"]["program"] == 3
    # a cache "directory" that is a file: the answer is still given, the index is not saved
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    r = _cli(["check", str(tree.new), str(tree.target), "--scope", str(tree.root), "--json"], str(blocker))
    assert r.returncode == 1 and r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["discovery"]["index"]["saved"] is False and doc["discovery"]["index"]["save_error"]
    assert doc["verdict"] == "incompatible"
    # --cache-dir names it on the command line
    r = _cli(["rdeps", str(tree.target), "--scope", str(tree.root), "--json", "--cache-dir", str(tmp_path / "c2")],
             str(blocker))
    assert r.returncode == 0 and json.loads(r.stdout)["index"]["path"] == str(tmp_path / "c2" / INDEX_FILE)
    assert (tmp_path / "c2" / INDEX_FILE).is_file()


def test_soswap_backups_and_temporaries_are_not_indexed(tree: Tree, tmp_path: Path) -> None:
    """``.NAME.bak-TXID`` (the previous version an install keeps) and ``.NAME.new-TXID`` are never loaded:
    not consumers. Other hidden ELF files are (a plugin may have any name)."""
    state = tmp_path / "state"
    lib = tree.root / "lib"
    os.link(tree["libmid"], lib / ".libmid.so.1.bak-20261130-024512-123456")
    shutil.copyfile(tree["plug"], tree["plug"].parent / ".libplug.so.new-20261130-024512-123456")
    shutil.copyfile(tree["plug"], tree["plug"].parent / ".hidden-plugin.so")
    idx = _update(tree, state)
    roots = set(idx.roots([Top(str(tree.root), True)]))
    assert str(tree["plug"].parent / ".hidden-plugin.so") in roots
    assert not {r for r in roots if ".bak-" in r or ".new-" in r}
    assert str(tree["plug"].parent / ".hidden-plugin.so") in _roots(idx, tree)


def test_corrupt_extras_found_only_when_saving(tree: Tree, tmp_path: Path) -> None:
    """Another environment recomputes every tree without listing a directory: the extras are decoded only to
    write the index back. Damaged, the file is removed (the answer is still right) and the next run
    rebuilds it."""
    state = tmp_path / "state"
    good = _roots(_update(tree, state), tree)
    path = state / INDEX_FILE
    _head, core, extras = _parts(path)
    doc = json.loads(extras)
    doc["req"] = [7] * len(doc["req"])
    _write(path, core, json.dumps(doc).encode())
    other_env = RdepsIndex(str(path), Profile.detect(), Environment(cwd="/", library_path="/nonexistent"),
                           racy_ns=0)
    other_env.update([Top(str(tree.root), True)])
    assert other_env.stats.rebuilt is None and len(other_env.stats.trees) == 10
    assert _roots(other_env, tree) == good
    other_env.save()
    assert not other_env.stats.saved and "rebuilt next time" in (other_env.stats.save_error or "")
    assert not path.exists()
    assert _update(tree, state).stats.rebuilt == "missing"


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                     | st.text(max_size=12) | st.sampled_from(["", "/", "AAAA", "AAAAAAAAAAA=", "a/b"]),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                  max_size=3), max_leaves=6)


def _locations(doc: object, out: list) -> list:
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((doc, k))
            _locations(v, out)
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out.append((doc, i))
            _locations(v, out)
    return out


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    base = tmp_path_factory.mktemp("rdeps-fuzz")
    built = _built(tmp_path_factory)
    root = base / "tree"
    shutil.copytree(built.root, root, symlinks=True)
    tree = Tree(root, root / "lib" / "libfoo.so.1", built.new, {})
    good = _roots(_update(tree, base / "state"), tree)
    return tree, base / "state" / INDEX_FILE, good


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(part=st.sampled_from([1, 2]), pick=st.integers(0, 10**6), value=_JSON)
def test_any_value_anywhere_in_a_checksummed_index_never_escapes(fuzz_base: tuple, part: int, pick: int,
                                                                value: object) -> None:
    """Any JSON value at any place of either part, with checksums that match (a file written by a bug, or by
    its owner): the update rebuilds or goes on, never raises, and the file it writes back is sound."""
    tree, path, good = fuzz_base
    _head, core, extras = _parts(path)
    docs = [json.loads(core), json.loads(extras)]
    where = _locations(docs[part - 1], [])
    container, key = where[pick % len(where)]
    container[key] = value
    saved = path.read_bytes()
    try:
        _write(path, json.dumps(docs[0]).encode(), json.dumps(docs[1]).encode())
        idx = _index(tree, path.parent)
        idx.update([Top(str(tree.root), True)])
        idx.dependents(str(tree.target), [Top(str(tree.root), True)])
        (tree.root / "share" / "fuzz.txt").write_text("a change, so that the extras are read\n")
        idx = _index(tree, path.parent)
        idx.update([Top(str(tree.root), True)])
        idx.save()
        assert idx.stats.rebuilt is None or idx.stats.rebuilt.startswith(("corrupt", "version")), idx.stats.rebuilt
        assert _roots(_update(tree, path.parent), tree) == good  # written back sound
    finally:
        path.write_bytes(saved)
        (tree.root / "share" / "fuzz.txt").unlink(missing_ok=True)


@pytest.mark.parametrize("column", ["subs", "elves"])
@pytest.mark.parametrize("listing", ["/", "bin/", "a//b", "..", "."])
def test_a_listing_with_a_name_that_is_not_one_component_is_corrupt(fuzz_base: tuple, column: str,
                                                                    listing: str) -> None:
    """Found by the fuzz test above: an empty directory's subdirectory listing made "/" (checksums matching)
    named a subdirectory "", and the update wrote back every program under it as ``bin//app``. A listed name
    must be one path component; else the index is rebuilt."""
    _head, core, extras = _parts(fuzz_base[1])
    doc = json.loads(core)
    rows = doc["dirs"][column]
    rows[next(i for i, names in enumerate(rows) if not names)] = listing
    _assert_rebuilt(fuzz_base, doc, extras)


@pytest.mark.parametrize("column", ["subs", "elves"])
def test_a_listing_that_leaves_out_stored_rows_is_corrupt(fuzz_base: tuple, column: str) -> None:
    """Found by the fuzz test above: with the root's subdirectory listing emptied (checksums matching), the
    walk skipped every directory below and the index lost every dependent. Each stored directory must be
    listed by its parent and each ELF file by its directory; else the index is rebuilt."""
    _head, core, extras = _parts(fuzz_base[1])
    doc = json.loads(core)
    listing = doc["dirs"][column]
    row = next(i for i, names in enumerate(listing) if names)
    listing[row] = ""
    _assert_rebuilt(fuzz_base, doc, extras)


def _assert_rebuilt(fuzz_base: tuple, doc: dict, extras: bytes) -> None:
    """The index written with ``doc`` as its core (checksums matching) is taken as corrupt and rebuilt, and
    what the update writes back finds the same dependents as before."""
    tree, path, good = fuzz_base
    saved = path.read_bytes()
    try:
        _write(path, json.dumps(doc).encode(), extras)
        idx = _index(tree, path.parent)
        idx.update([Top(str(tree.root), True)])
        assert idx.stats.rebuilt is not None and idx.stats.rebuilt.startswith("corrupt"), idx.stats.rebuilt
        idx.save()
        assert _roots(_update(tree, path.parent), tree) == good
    finally:
        path.write_bytes(saved)


@requires_root
def test_a_library_directory_that_is_a_mount_point_is_walked(tmp_path: Path) -> None:
    """/usr/lib/x86_64-linux-gnu mounted on its own (an overlay, a bind mount) inside /usr/lib, both indexed:
    the walk of the outer directory stops at the mount, so the inner one is walked as its own top (its plugins
    were never checked), and an update of the outer one does not forget it."""
    outer = tmp_path / "lib"
    inner = outer / "multiarch"
    inner.mkdir(parents=True)
    lib = shared_lib(outer / "libq.so.1", "int q(void) { return 1; }\n", soname="libq.so.1")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "soswap-test", str(inner)], check=True)
    try:
        prog = executable(inner / "prog", "int q(void);\nint main(void) { return q(); }\n", libs=[str(lib)],
                          flags=[f"-Wl,-rpath,{outer}"])
        state = tmp_path / "state"
        tops = [Top(str(outer), True), Top(str(inner), True)]
        idx = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)
        idx.update(tops)
        idx.save()
        assert _dependents(idx, lib, outer) == {str(prog)}
        (outer / "new-file").write_text("x")  # the outer directory changed: its walk forgets what it did not see
        idx = RdepsIndex(str(state / INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)
        idx.update(tops)
        assert _dependents(idx, lib, outer) == {str(prog)}
    finally:
        if subprocess.run(["umount", str(inner)]).returncode != 0:  # a descriptor still open: detach it
            subprocess.run(["umount", "-l", str(inner)], check=True)


def test_rdeps_says_when_the_index_was_not_saved(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "lib" / "libq.so.1", "int q(void) { return 1; }\n", soname="libq.so.1")
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("x")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"),
               SOSWAP_CACHE_DIR=str(blocked))
    r = subprocess.run([sys.executable, "-m", "soswap", "rdeps", "--scope", str(lib.parent), "--", str(lib)],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("index: ")]
    assert ", not saved (" in line


_OUT_OF_DESCRIPTORS = r"""
import os, sys
from soswap.abi.rdeps import INDEX_FILE, RdepsIndex
from soswap.abi.sysdirs import Top
from soswap.errors import ResourceError
from soswap.loader import Environment, Profile

state, root, spare = sys.argv[1], sys.argv[2], int(sys.argv[3])
idx = RdepsIndex(os.path.join(state, INDEX_FILE), Profile.detect(), Environment(cwd="/"), racy_ns=0)
empty = os.path.join(state, "empty")
os.makedirs(empty, exist_ok=True)
RdepsIndex(None, Profile.detect(), Environment(cwd="/")).update([Top(empty, True)])  # the lazy imports
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
for fd in held[:spare]:
    os.close(fd)
try:
    idx.update([Top(root, True)])
except ResourceError as exc:
    print("refused:", exc)
    sys.exit(3)
idx.save()
print("updated")
"""


def test_running_out_of_descriptors_is_an_error_never_an_answer(tree: Tree, tmp_path: Path) -> None:
    # Out of descriptors, every file looked like no ELF file and every directory unreadable: 0 dependents,
    # exit 0, and that index was saved and trusted by the next run. Now it is an error, and nothing is kept.
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for spare in (0, 1, 2):
        r = subprocess.run([sys.executable, "-c", _OUT_OF_DESCRIPTORS, str(state), str(tree.root), str(spare)],
                           env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 3 and "Too many open files" in r.stdout, (r.stdout, r.stderr)
        assert not (state / INDEX_FILE).exists()
    os.rmdir(state / "empty")
    assert _roots(_update(tree, state), tree) == _roots(_update(tree, tmp_path / "fresh"), tree) != set()


def test_glibc_tunables_are_part_of_the_index_environment() -> None:
    """GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX2 chooses other glibc-hwcaps subdirectories: the trees kept for an
    environment without it were reused (QA: a program listed by the index under the wrong library)."""
    from soswap.abi.rdeps import env_fingerprint

    plain = Environment.from_environ({}, cwd="/")
    tuned = Environment.from_environ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, cwd="/")
    assert env_fingerprint(plain) != env_fingerprint(tuned)
    assert env_fingerprint(plain) == env_fingerprint(Environment.from_environ({"GLIBC_TUNABLES": "x=1"}, cwd="/"))


def test_a_file_still_being_written_is_looked_at_again(tree: Tree, tmp_path: Path) -> None:
    """A program still empty when the index ran (a linker, a download, a preallocated copy) was recorded as
    "not an ELF file", and its directory's ctime does not move when the writing ends: it was never read again."""
    _update(tree, tmp_path / "state")
    late = tree.root / "bin" / "late"
    late.parent.mkdir(exist_ok=True)
    late.write_bytes(b"")
    _update(tree, tmp_path / "state")
    with open(late, "r+b") as f:  # written in place: the directory is not touched
        f.write(Path(tree["app_other"]).read_bytes())
    late.chmod(0o755)
    idx = _update(tree, tmp_path / "state")
    assert str(late) in idx.stats.reread
    assert str(late) in _roots(idx, tree) or str(tree["app_other"]) not in _roots(idx, tree)
