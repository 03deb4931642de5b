"""Binding results kept between runs (soswap.loader.bindstore, ``soswap tree``'s cache): a warm run answers what
a cold run answers, and every change a binding result depends on is seen — a library replaced by rename, a
library rewritten in place with its size and mtime put back, a new library earlier in the search path — checked
against the real ``ldd -r``. Unusable store files are ignored and rebuilt, never trusted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from loader.helpers import BASE_ENV, CACHE_V1, CACHE_V2, make_loader, program_sets, real_ldd, sources_needing
from soswap.cachefile import decode_part, read_document, write_document
from soswap.loader.bindstore import FILE, FORMAT, RACY_NS, VERSION, BindStore, code_fingerprint
from support.build import executable, requires_cc, rpath_flags, shared_lib

pytestmark = requires_cc

SRC = str(Path(__file__).resolve().parents[2] / "src")
V1, V2 = CACHE_V1, CACHE_V2  # same size; V2 lacks bar
SETS = ("plain", "inplace", "rename", "search", "api")


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Dict[str, Path]:  # type: ignore[no-untyped-def]
    """One program directory per test that changes files, built once and then left to age past the racy
    window, so that the first run stores its results."""
    out = program_sets(tmp_path_factory.mktemp("bindstore"), SETS)
    assert os.path.getsize(out["plain"] / "lib" / "libfoo.so") == os.path.getsize(out["plain"] / "v2" / "libfoo.so")
    time.sleep(RACY_NS / 1e9 + 0.2)
    return out


def tree(*args: str, cache: Path) -> subprocess.CompletedProcess:
    """``soswap tree`` with only the binding cache: the whole-result cache (tests/loader/test_resultstore.py)
    would answer a repeated run before binding is reached."""
    (cache / "trees.json").unlink(missing_ok=True)
    env = dict(BASE_ENV)
    env["PYTHONPATH"] = SRC
    return subprocess.run([sys.executable, "-m", "soswap", "tree", "--cache-dir", str(cache), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def entries(cache: Path) -> Dict[str, object]:
    parts, problem = read_document(str(cache / FILE), FORMAT, VERSION)
    assert parts is not None, problem
    return decode_part(parts[0])["entries"]  # type: ignore[no-any-return]


def test_warm_run_answers_as_a_cold_run(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["plain"]
    cache = tmp_path / "cache"
    progs = [str(d / "prog"), str(d / "prog2"), "/usr/bin/ls"]
    fresh = tree("-r", "--json", "--no-cache", *progs, cache=cache)
    assert not cache.exists()  # --no-cache keeps nothing
    cold = tree("-r", "--json", *progs, cache=cache)
    assert len(entries(cache)) == 3
    warm = tree("-r", "--json", *progs, cache=cache)
    assert json.loads(fresh.stdout) == json.loads(cold.stdout) == json.loads(warm.stdout)
    assert fresh.returncode == cold.returncode == warm.returncode == 0
    # the --ldd form shares the store and keeps ldd's output
    for _ in range(2):
        r = tree("--ldd", "-r", str(d / "prog"), cache=cache)
        assert r.stdout == real_ldd(d / "prog", flag="-r").stdout


def test_in_place_rewrite_with_size_and_mtime_restored(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["inplace"]
    cache = tmp_path / "cache"
    prog, lib = d / "prog", d / "lib" / "libfoo.so"
    assert tree("-r", str(prog), cache=cache).returncode == 0
    assert len(entries(cache)) == 1
    before = os.stat(lib)
    with open(lib, "r+b") as f:  # what `cp v2 lib` does to the inode: same file, new bytes
        f.write((d / "v2" / "libfoo.so").read_bytes())
    os.utime(lib, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(lib)
    same = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
    assert (after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns) == same  # only the ctime tells
    r = tree("-r", str(prog), cache=cache)
    assert "undefined symbol: bar" in r.stdout and r.returncode == 1, r.stdout
    assert "undefined symbol: bar" in real_ldd(prog, flag="-r").stderr + real_ldd(prog, flag="-r").stdout


def test_library_replaced_by_rename(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["rename"]
    cache = tmp_path / "cache"
    prog, lib = d / "prog", d / "lib" / "libfoo.so"
    assert tree("-r", str(prog), cache=cache).returncode == 0
    shutil.copy2(d / "v2" / "libfoo.so", d / "lib" / ".new")
    os.replace(d / "lib" / ".new", lib)
    r = tree("-r", str(prog), cache=cache)
    assert r.returncode == 1 and "undefined symbol: bar" in r.stdout, r.stdout


def test_new_library_earlier_in_the_search_path(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["search"]
    cache = tmp_path / "cache"
    prog = d / "prog"
    args = ("-r", "--library-path", str(d / "empty"), str(prog))
    assert tree(*args, cache=cache).returncode == 0
    shutil.copy2(d / "v2" / "libfoo.so", d / "empty" / "libfoo.so")  # DT_RUNPATH comes after LD_LIBRARY_PATH
    r = tree(*args, cache=cache)
    assert r.returncode == 1 and "undefined symbol: bar" in r.stdout and str(d / "empty") in r.stdout, r.stdout


def test_files_changed_within_the_racy_window_are_not_stored(tmp_path: Path) -> None:
    lib = shared_lib(tmp_path / "lib" / "libfoo.so", V1, soname="libfoo.so")
    prog = executable(tmp_path / "prog", sources_needing("foo"), flags=rpath_flags(str(lib.parent)),
                      libs=[f"-L{lib.parent}", "-lfoo"])
    cache = tmp_path / "cache"
    assert tree("-r", str(prog), cache=cache).returncode == 0
    assert not (cache / FILE).exists()


def test_worker_processes_hand_their_results_to_the_parent(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["plain"]
    cache = tmp_path / "cache"
    r = tree("-r", "-j", "2", str(d / "prog"), str(d / "prog2"), cache=cache)
    assert r.returncode == 0, r.stderr
    assert len(entries(cache)) == 2


def _api_bind(d: Path, store: BindStore):  # type: ignore[no-untyped-def]
    loader = make_loader(env=BASE_ENV)
    loader.bind_store = store
    res = loader.load(str(d / "prog"))
    return loader, res, loader.bind(res, bind_now=True)


def test_store_hits_rebuild_the_same_result(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["api"]
    shutil.copy2(d / "v2" / "libfoo.so", d / "lib" / ".v2")
    os.replace(d / "lib" / ".v2", d / "lib" / "libfoo.so")
    time.sleep(RACY_NS / 1e9 + 0.2)
    first = BindStore.in_cache_dir(str(tmp_path))
    _, _, cold = _api_bind(d, first)
    assert first.misses == 1 and first.save() is None
    second = BindStore.in_cache_dir(str(tmp_path))
    _, res, warm = _api_bind(d, second)
    assert second.hits == 1 and second.misses == 0
    assert warm.load is res
    assert (warm.failures, warm.unresolved, warm.fatal, warm.bindings_checked) == \
           (cold.failures, cold.unresolved, cold.fatal, cold.bindings_checked)
    assert [u.symbol for u in warm.unresolved] == ["bar"]


def _forge(cache: Path, key: str, value: object, code: str) -> None:
    assert write_document(str(cache / FILE), FORMAT, VERSION, [{"code": code, "entries": {key: value}}]) is None


def test_entries_are_checked_before_use(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["plain"]
    store = BindStore.in_cache_dir(str(tmp_path))
    _loader, res, truth = _api_bind(d, store)
    key = store.key(res, True, False, True)
    assert key is not None
    bad_values: List[object] = ["junk", [[["x"]], [], None, 1], [[], [], 5, 1], [[], [[1, 2]], None, 1],
                                [[], [], None, "1"], None, {}]
    for value in bad_values:
        _forge(tmp_path, key, value, code_fingerprint())
        s = BindStore.in_cache_dir(str(tmp_path))
        assert s.get(key, res) is None and s.misses == 1, value
    # a well-formed entry written by other code is not used either
    _forge(tmp_path, key, [[], [], None, 0], "other code")
    s = BindStore.in_cache_dir(str(tmp_path))
    assert s.get(key, res) is None
    assert truth.unresolved == ()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "symlink"])
def test_unusable_store_files_are_ignored_and_rebuilt(sets: Dict[str, Path], tmp_path: Path, damage: str) -> None:
    d = sets["plain"]
    cache = tmp_path / "cache"
    prog = str(d / "prog")
    want = tree("-r", "--json", "--no-cache", prog, cache=cache)
    tree("-r", prog, cache=cache)
    path = cache / FILE
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00not json\n" * 10)
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        path.unlink()
        (tmp_path / "elsewhere").write_bytes(data)
        path.symlink_to(tmp_path / "elsewhere")
    got = tree("-r", "--json", prog, cache=cache)
    assert got.returncode == want.returncode and json.loads(got.stdout) == json.loads(want.stdout)
    assert got.stderr == ""
    store = BindStore(str(path))
    store.load()
    assert store.problem is None and len(entries(cache)) == 1  # rebuilt by the run
    assert not path.is_symlink()


def test_a_store_others_can_write_is_not_trusted(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["plain"]
    cache = tmp_path / "cache"
    prog = str(d / "prog")
    want = tree("-r", prog, cache=cache)
    assert want.returncode == 0
    ((key, value),) = entries(cache).items()
    lie = [[["undefined-symbol", "forged", 0, "forged entry", "forged entry", "startup", True, "forged", None, 127,
             False]], [[0, "forged", None, "startup", False, False]], 0, value[3]]  # type: ignore[index]
    _forge(cache, key, lie, code_fingerprint())
    assert "forged" in tree("-r", prog, cache=cache).stdout  # the control: a file of ours is believed
    _forge(cache, key, lie, code_fingerprint())
    (cache / FILE).chmod(0o664)
    got = tree("-r", prog, cache=cache)
    assert got.returncode == 0 and got.stdout == want.stdout
    store = BindStore(str(cache / FILE))
    assert store.load() == {} or "forged" not in json.dumps(store.load())


def test_the_oldest_unused_entries_go_first(sets: Dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import soswap.loader.bindstore as bindstore

    _loader, res, _ = _api_bind(sets["plain"], BindStore.in_cache_dir(str(tmp_path / "scratch")))
    value = [[], [], None, 0]
    assert write_document(str(tmp_path / FILE), FORMAT, VERSION,
                          [{"code": code_fingerprint(), "entries": {"a": value, "b": value, "c": value}}]) is None
    monkeypatch.setattr(bindstore, "MAX_ENTRIES", 2)
    store = BindStore.in_cache_dir(str(tmp_path))
    assert store.get("b", res) is not None and store.get("zz", res) is None
    store.merge({"d": value})
    assert store.save() is None
    assert list(entries(tmp_path)) == ["b", "d"]  # a and c, older and unused, are gone
