"""Whole ``soswap tree`` results kept between runs (soswap.loader.resultstore): a warm run prints what a cold
run prints, and every change the search or the binding would see drops the kept result — a library replaced
by rename or rewritten in place, a new file earlier in the search path, a flipped directory link that moves
``$ORIGIN``, another environment, a result computed by a worker process. Each check first shows that the
store *is* used (a forged entry of ours is printed), then that the change makes soswap compute afresh."""

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

from loader.helpers import BASE_ENV, CACHE_V1, CACHE_V2, program_sets, real_ldd, sources_needing
from soswap.cachefile import decode_part, read_document, write_document
from soswap.loader.resultstore import FILE, FORMAT, RACY_NS, VERSION
from support.build import executable, requires_cc, requires_root, rpath_flags, shared_lib

pytestmark = requires_cc

SRC = str(Path(__file__).resolve().parents[2] / "src")
V1, V2 = CACHE_V1, CACHE_V2  # same size; V2 lacks bar
SETS = ("plain", "inplace", "rename", "search", "origin", "workers", "env", "setid", "caps")
FORGED = "FORGED-BY-THE-TEST\n"


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> Dict[str, Path]:  # type: ignore[no-untyped-def]
    """One program directory per test that changes files, built once and left to age past the racy window,
    so that the first run keeps its results."""
    out = program_sets(tmp_path_factory.mktemp("resultstore"), SETS)
    # $ORIGIN: one program file, hard-linked into two releases; "current" flips between them
    o = out["origin"]
    for rel, src in (("r1", V1), ("r2", V2)):
        shared_lib(o / rel / "lib" / "libfoo.so", src, soname="libfoo.so")
        (o / rel / "bin").mkdir()
    executable(o / "r1" / "bin" / "app", sources_needing("foo", "bar"), flags=rpath_flags("$ORIGIN/../lib"),
               libs=[f"-L{o / 'r1' / 'lib'}", "-lfoo"])
    os.link(o / "r1" / "bin" / "app", o / "r2" / "bin" / "app")
    (o / "current").symlink_to("r1")
    time.sleep(RACY_NS / 1e9 + 0.2)
    return out


def tree(*args: str, cache: Path, env: Dict[str, str] = BASE_ENV) -> subprocess.CompletedProcess:
    run_env = dict(env)
    run_env["PYTHONPATH"] = SRC
    return subprocess.run([sys.executable, "-m", "soswap", "tree", "--cache-dir", str(cache), *args],
                          env=run_env, capture_output=True, text=True, timeout=120)


def groups(cache: Path) -> List[dict]:
    """The index (part 0) and the groups of the result file."""
    parts, problem = read_document(str(cache / FILE), FORMAT, VERSION)
    assert parts is not None, problem
    return [decode_part(p) for p in parts]


def forge(cache: Path) -> None:
    """Put a line of our own at the start of every kept text result (a file of ours, so it is believed)."""
    index, *gs = groups(cache)
    for g in gs:
        g["lines"].append(FORGED)
        for value in g["entries"].values():
            if isinstance(value[4], list):
                value[4].insert(0, len(g["lines"]) - 1)
    assert write_document(str(cache / FILE), FORMAT, VERSION, [index, *gs]) is None


def kept_and_used(args: List[str], cache: Path, env: Dict[str, str] = BASE_ENV) -> subprocess.CompletedProcess:
    """A cold run that keeps its results, and the control: a warm run prints the (forged) kept result."""
    cold = tree(*args, cache=cache, env=env)
    assert (cache / FILE).exists(), cold.stderr
    forge(cache)
    assert FORGED in tree(*args, cache=cache, env=env).stdout
    return cold


def test_warm_run_prints_what_a_cold_run_prints(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["plain"]
    cache = tmp_path / "cache"
    progs = [str(d / "prog"), str(d / "prog2"), "/usr/bin/ls", str(d / "missing"), str(d / "lib")]
    for opts in ([], ["-r"], ["--json"], ["-r", "--json"], ["--all"]):
        fresh = tree(*opts, "--no-cache", *progs, cache=tmp_path / "none")
        assert not (tmp_path / "none").exists()  # --no-cache keeps nothing
        cold = tree(*opts, *progs, cache=cache)
        warm = tree(*opts, *progs, cache=cache)
        assert fresh.stdout == cold.stdout == warm.stdout, opts
        assert fresh.stderr == cold.stderr == warm.stderr and "missing" in warm.stderr
        assert fresh.returncode == cold.returncode == warm.returncode == 2
    # each option set is a group of its own; errors (missing, a directory) are never kept
    index, *gs = groups(cache)
    assert len(gs) == 5 == len(index["groups"]) and len({s for _code, s in index["groups"]}) == 5
    assert all(sorted(g["entries"]) == sorted(progs[:3]) for g in gs)
    json.loads(tree("--json", *progs, cache=cache).stdout)


def test_a_json_result_is_kept_as_its_text(sets: Dict[str, Path], tmp_path: Path) -> None:
    """``--json`` keeps each result as the one line of JSON it prints; a kept value that is not one JSON object
    on one line is not used (the run computes that result again)."""
    d = sets["plain"]
    cache = tmp_path / "cache"
    progs = [str(d / "prog"), str(d / "prog2")]
    cold = tree("--json", *progs, cache=cache)
    index, *gs = groups(cache)
    (g,) = gs
    for p in progs:
        assert isinstance(g["entries"][p][4], str) and json.loads(g["entries"][p][4])["file"] == p
    forged = '{"file": "forged"}'
    g["entries"][progs[0]][4] = forged  # believed: a file of ours, and one object on one line
    g["entries"][progs[1]][4] = '{"file": "forged"}\n], "x": {'  # would break the document: not used
    assert write_document(str(cache / FILE), FORMAT, VERSION, [index, g]) is None
    warm = tree("--json", *progs, cache=cache)
    results = json.loads(warm.stdout)["results"]
    assert results[0] == {"file": "forged"}
    assert results[1] == json.loads(cold.stdout)["results"][1]


def test_in_place_rewrite_with_size_and_mtime_restored(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["inplace"]
    cache = tmp_path / "cache"
    prog, lib = d / "prog", d / "lib" / "libfoo.so"
    kept_and_used(["-r", str(prog)], cache)
    before = os.stat(lib)
    with open(lib, "r+b") as f:  # what `cp v2 lib` does to the inode: same file, new bytes
        f.write((d / "v2" / "libfoo.so").read_bytes())
    os.utime(lib, ns=(before.st_atime_ns, before.st_mtime_ns))
    r = tree("-r", str(prog), cache=cache)
    assert FORGED not in r.stdout and "undefined symbol: bar" in r.stdout and r.returncode == 1, r.stdout
    assert "undefined symbol: bar" in real_ldd(prog, flag="-r").stderr + real_ldd(prog, flag="-r").stdout


def test_library_replaced_by_rename(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["rename"]
    cache = tmp_path / "cache"
    prog = d / "prog"
    kept_and_used(["-r", str(prog)], cache)
    shutil.copy2(d / "v2" / "libfoo.so", d / "lib" / ".new")
    os.replace(d / "lib" / ".new", d / "lib" / "libfoo.so")
    r = tree("-r", str(prog), cache=cache)
    assert FORGED not in r.stdout and r.returncode == 1 and "undefined symbol: bar" in r.stdout, r.stdout


def test_new_library_earlier_in_the_search_path(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["search"]
    cache = tmp_path / "cache"
    args = ["--library-path", str(d / "empty"), str(d / "prog")]
    kept_and_used(args, cache)
    shutil.copy2(d / "v2" / "libfoo.so", d / "empty" / "libfoo.so")  # LD_LIBRARY_PATH comes before RUNPATH
    r = tree(*args, cache=cache)
    assert FORGED not in r.stdout and f"{d / 'empty'}/libfoo.so" in r.stdout, r.stdout
    assert r.stdout == tree("--no-cache", *args, cache=tmp_path / "fresh").stdout


def test_a_flipped_directory_link_moves_origin(sets: Dict[str, Path], tmp_path: Path) -> None:
    """The same inode run through another directory link gets another $ORIGIN (``_dl_get_origin`` resolves
    links): kept results of the old place must not answer for the new one."""
    o = sets["origin"]
    cache = tmp_path / "cache"
    app = str(o / "current" / "bin" / "app")
    kept_and_used(["-r", app], cache)
    (o / "next").symlink_to("r2")
    os.replace(o / "next", o / "current")
    r = tree("-r", app, cache=cache)
    assert FORGED not in r.stdout and f"{o / 'r2' / 'bin' / '..' / 'lib' / 'libfoo.so'}" in r.stdout, r.stdout
    assert r.returncode == 1 and "undefined symbol: bar" in r.stdout


def test_the_environment_is_part_of_the_key(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["env"]
    cache = tmp_path / "cache"
    kept_and_used([str(d / "prog")], cache)
    env = dict(BASE_ENV, LD_LIBRARY_PATH=str(d / "v2"))
    r = tree(str(d / "prog"), cache=cache, env=env)
    assert FORGED not in r.stdout and f"{d / 'v2'}/libfoo.so" in r.stdout
    cwd = tree("--cwd", str(d), "prog", cache=cache)  # a relative FILE is the working directory's
    assert FORGED not in cwd.stdout and cwd.returncode == 0


def test_results_of_worker_processes_are_watched_too(sets: Dict[str, Path], tmp_path: Path) -> None:
    """With -j 2 each program is computed in its own worker: what the workers' searches saw is kept."""
    d = sets["workers"]
    cache = tmp_path / "cache"
    args = ["-j", "2", "-r", "/usr/bin/ls", str(d / "prog")]
    kept_and_used(args, cache)
    shutil.copy2(d / "v2" / "libfoo.so", d / "lib" / ".new")
    os.replace(d / "lib" / ".new", d / "lib" / "libfoo.so")
    r = tree(*args, cache=cache)
    # the results of one run stand or fall together: /usr/bin/ls is computed again too
    assert FORGED not in r.stdout and "undefined symbol: bar" in r.stdout and r.returncode == 1, r.stdout


def test_set_id_bits_change_the_answer(sets: Dict[str, Path], tmp_path: Path) -> None:
    """A set-group-ID program run by another group is secure: LD_LIBRARY_PATH no longer counts."""
    d = sets["setid"]
    cache = tmp_path / "cache"
    env = dict(BASE_ENV, LD_LIBRARY_PATH=str(d / "v2"))
    kept_and_used([str(d / "prog")], cache, env=env)
    os.chown(d / "prog", 0, 65534)
    os.chmod(d / "prog", 0o2755)
    r = tree(str(d / "prog"), cache=cache, env=env)
    assert FORGED not in r.stdout and f"{d / 'lib'}/libfoo.so" in r.stdout, r.stdout


def test_what_if_runs_and_racy_files_keep_nothing(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["plain"]
    cache = tmp_path / "cache"
    tree("--replace", f"{d / 'lib' / 'libfoo.so'}={d / 'v2' / 'libfoo.so'}", str(d / "prog"), cache=cache)
    assert not (cache / FILE).exists()
    young = tmp_path / "young"
    lib = shared_lib(young / "lib" / "libfoo.so", V1, soname="libfoo.so")
    prog = executable(young / "prog", sources_needing("foo"), flags=rpath_flags(str(lib.parent)),
                      libs=[f"-L{lib.parent}", "-lfoo"])
    assert tree(str(prog), cache=cache).returncode == 0
    assert not (cache / FILE).exists()


def test_a_store_others_can_write_is_not_trusted(sets: Dict[str, Path], tmp_path: Path) -> None:
    d = sets["plain"]
    cache = tmp_path / "cache"
    cold = kept_and_used([str(d / "prog")], cache)
    forge(cache)
    (cache / FILE).chmod(0o666)
    r = tree(str(d / "prog"), cache=cache)
    assert FORGED not in r.stdout and r.stdout == cold.stdout
    (cache / FILE).write_bytes(b"\x00garbage\n")
    (cache / FILE).chmod(0o600)
    r = tree(str(d / "prog"), cache=cache)
    assert r.stdout == cold.stdout and r.stderr == "" and groups(cache)  # rebuilt


def test_groups_of_other_settings_are_kept_unless_damaged(sets: Dict[str, Path], tmp_path: Path) -> None:
    """Other settings' groups are written back as read, without being decoded: only when their checksum still
    matches (a damaged part must not be signed anew)."""
    d = sets["plain"]
    cache = tmp_path / "cache"
    prog = str(d / "prog")
    first = tree(prog, cache=cache)
    tree("-r", prog, cache=cache)
    _index, *gs = groups(cache)
    assert len(gs) == 2
    raw = (cache / FILE).read_bytes()
    lines = raw.split(b"\n")
    oldest = 2 + len(gs)  # header, index, the -r group, then the first run's group
    assert b"libfoo.so" in lines[oldest - 1]
    lines[oldest - 1] = lines[oldest - 1].replace(b"libfoo.so", b"libfoX.so", 1)  # same length, bad checksum
    (cache / FILE).write_bytes(b"\n".join(lines))
    tree("--all", prog, cache=cache)  # new settings: computed and written, with the -r group but not the damaged one
    _index, *gs = groups(cache)
    assert len(gs) == 2 and all("libfoX" not in json.dumps(g) for g in gs)
    again = tree(prog, cache=cache)
    assert again.stdout == first.stdout and again.returncode == first.returncode


@requires_root
def test_a_noexec_remount_and_dropped_capabilities_are_seen(sets: Dict[str, Path], tmp_path: Path) -> None:
    """Neither changes a stat result: a bind mount of the library directory remounted noexec (ld.so cannot
    map the library, the real program fails) and a root without capabilities (it cannot read a library
    only its owner may read). The first is in the mount-table digest, the second in the settings."""
    d = sets["plain"]
    cache = tmp_path / "cache"
    args = ["-r", str(d / "prog")]
    kept_and_used(args, cache)
    lib = d / "lib"
    subprocess.run(["mount", "--bind", str(lib), str(lib)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,noexec", str(lib)], check=True)
        r = tree(*args, cache=cache)
        assert FORGED not in r.stdout and r.returncode == 1, r.stdout
        assert r.stdout == tree("--no-cache", *args, cache=tmp_path / "fresh").stdout
        run = subprocess.run([str(d / "prog")], capture_output=True, text=True, timeout=60)
        assert run.returncode == 127 and "failed to map segment" in run.stderr
    finally:
        subprocess.run(["umount", str(lib)], check=True)
    if shutil.which("setpriv") is None:
        return
    private = sets["caps"]
    (private / "lib" / "libfoo.so").chmod(0o600)
    os.chown(private / "lib" / "libfoo.so", 12345, 12345)
    time.sleep(RACY_NS / 1e9 + 0.2)  # past the racy window again, so that the cold run keeps its result
    args = [str(private / "prog")]
    kept_and_used(args, cache)
    env = dict(BASE_ENV, PYTHONPATH=SRC)
    r = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "soswap", "tree",
                        "--cache-dir", str(cache), *args], env=env, capture_output=True, text=True, timeout=120)
    assert FORGED not in r.stdout and r.returncode == 1 and "libfoo.so => not found" in r.stdout, r.stdout


def test_a_forged_store_with_unprintable_or_impossible_values_is_ignored(sets: Dict[str, Path],
                                                                         tmp_path: Path) -> None:
    """A store of ours (so believed) whose checksums match but whose values cannot be used: a path with a NUL,
    a line no output can print. The group is ignored, computed afresh and written again; no internal error."""
    d = sets["plain"]
    cache = tmp_path / "cache"
    cold = tree(str(d / "prog"), cache=cache)
    for damage in ("nul", "surrogate"):
        index, *gs = groups(cache)
        for g in gs:
            if damage == "nul":
                g["probes"].append(["/tmp/a\x00b", 2])
            else:
                g["lines"].append("\ud800\n")
        assert write_document(str(cache / FILE), FORMAT, VERSION, [index, *gs]) is None
        r = tree(str(d / "prog"), cache=cache)
        assert r.returncode == 0 and r.stdout == cold.stdout and r.stderr == "", (damage, r.stderr)
        assert "\\u0000" not in (cache / FILE).read_text() and "\\ud800" not in (cache / FILE).read_text()
