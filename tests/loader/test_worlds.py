"""Random worlds of real libraries (bench/fuzz_worlds.py): search paths of every kind on every object, copies
that differ, links, versions, preloads; the real ``ldd``, ``ldd -r`` and the program itself are the oracles.
The benchmark runs hundreds of worlds; CI runs a fixed few, and checks that they meet what they are there to
meet (libraries found and not found, versions and symbols missing)."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

from support.build import requires_cc

pytestmark = requires_cc

ROOT = Path(__file__).resolve().parent.parent.parent


def _fuzz_worlds():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("fuzz_worlds_under_test", ROOT / "bench" / "fuzz_worlds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_random_worlds_match_ldd_and_the_programs(tmp_path: Path) -> None:
    fw = _fuzz_worlds()
    met: Counter = Counter()
    differences = []
    for seed in range(1, 25):
        root = tmp_path / f"w{seed}"
        root.mkdir()
        world = fw.build_world(random.Random(seed), root)
        for found in (fw.ldd_difference(world, fw._PROFILE, None), fw.ldd_difference(world, fw._PROFILE, "-r"),
                      fw.run_difference(world, fw._PROFILE)):
            if found is not None and not found.startswith(fw.KNOWN):  # docs/tree.md, known differences
                differences.append(f"seed {seed}:\n{world.description}\n{found}")
        r = subprocess.run(["ldd", "-r", world.program], cwd=root, env=world.env, capture_output=True, text=True,
                           timeout=60)
        said = r.stdout + r.stderr
        for what in ("libw", "not found", "version `", "undefined symbol: g_", "undefined symbol: d_"):
            met[what] += what in said
        met["found"] += "libw" in said.replace("=> not found", "")
    assert not differences, "\n\n".join(differences)
    assert all(met[k] >= 2 for k in ("found", "not found", "version `", "undefined symbol: g_",
                                     "undefined symbol: d_")), met


#: Worlds drawn with filters (``--filters``) where a loaded library has a DT_FILTER or DT_AUXILIARY entry.
_FILTER_SEEDS = [1, 4, 7, 9, 13, 31, 36, 40]


def test_random_worlds_with_filters(tmp_path: Path) -> None:
    """Worlds whose libraries carry DT_FILTER and DT_AUXILIARY entries naming the others (or nothing there):
    identical to ``ldd``, ``ldd -r`` and the program, and they do load filters."""
    fw = _fuzz_worlds()
    differences = []
    filters = 0
    for seed in _FILTER_SEEDS:
        root = tmp_path / f"f{seed}"
        root.mkdir()
        world = fw.build_world(random.Random(seed), root, random.Random(-seed))
        for found in (fw.ldd_difference(world, fw._PROFILE, None), fw.ldd_difference(world, fw._PROFILE, "-r"),
                      fw.run_difference(world, fw._PROFILE)):
            if found is not None:
                differences.append(f"seed {seed}:\n{world.description}\n{found}")
        res = fw._loader(world, fw._PROFILE).load(world.program, argv0=world.program)
        filters += any(o.found and o.elf is not None and o.kind in ("library", "preload")
                       and (o.elf.dynamic.filters or o.elf.dynamic.auxiliary) for o in res.objects)
    assert not differences, "\n\n".join(differences)
    assert filters >= 6, f"only {filters} of the worlds load a filter (the generator changed)"


#: Filter worlds whose libraries, given to ldd as FILEs with copies of them and of the program, met loads the
#: model missed: a filtee of the FILE asked for again (mapped twice), with TLS (init_tls), or in a ring (the
#: copies exhaust the mappings: 7.6 s of ldd each way for seed 7), or with version needs, which the version
#: check (from the main map on) never looks at (73, 92), so that relocating it with DT_VERSYM kills ld.so (130),
#: and a versioned lookup that reaches it takes it as unversioned (no l_versyms): the check_match assertion (349).
_MANY_SEEDS = [7, 11, 12, 16, 73, 92, 130, 349]


def test_random_worlds_as_many_files(tmp_path: Path) -> None:
    """``ldd [-r] FILE...`` over the program, a copy of it, some library files and a copy of one: the shared
    loads of FILEs of one shape, libraries as FILEs with their filters, the FILE: headers."""
    fw = _fuzz_worlds()
    differences = []
    for seed in _MANY_SEEDS:
        root = tmp_path / f"m{seed}"
        root.mkdir()
        world = fw.build_world(random.Random(seed), root, random.Random(-seed))
        files = fw.many_files(world)
        for flag in (None, "-r"):
            found = fw.ldd_difference(world, fw._PROFILE, flag, files)
            if found is not None and not found.startswith(fw.KNOWN):
                differences.append(f"seed {seed}:\n{world.description}\n{found}")
    assert not differences, "\n\n".join(differences)


#: Worlds (of the generator as it is) where ``ldd -r`` reads past the program's ``l_versions``: into the vDSO's
#: array (its ``LINUX_2.6``), and onto a pointer taken as the hash with no name (``, version `` and nothing).
_PAST_THE_ARRAY = [(16, ", version LINUX_2.6\t"), (151, ", version \t")]


def test_ldd_r_reading_past_a_version_array(tmp_path: Path) -> None:
    """Trace mode sizes an object's ``l_versions`` by the versions of the files found; a reference through a
    version of a missing file with a higher index reads what follows in ld.so's start-up heap: the arrays of
    the next objects in link-map order (binding.VersionArena). ldd prints what it reads there."""
    fw = _fuzz_worlds()
    for seed, printed in _PAST_THE_ARRAY:
        root = tmp_path / f"w{seed}"
        root.mkdir()
        world = fw.build_world(random.Random(seed), root)
        assert fw.reads_past_versions(world, fw._PROFILE), f"seed {seed} no longer reads past (the generator changed)"
        r = subprocess.run(["ldd", "-r", world.program], cwd=root, env=world.env, capture_output=True, text=True,
                           timeout=60)
        assert printed in r.stdout, f"seed {seed}: ldd -r no longer prints {printed!r} (the generator changed)"
        assert fw.ldd_difference(world, fw._PROFILE, "-r") is None
