"""The benchmarks' in-process hooks still fit the code they time: ``bench/bench_tree.py --profile`` wraps the
loader's functions by name, and a renamed or moved function stopped it with an AttributeError (it is run only
by hand, so nothing else notices)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_tree_profile_wraps_the_current_loader() -> None:
    bench = _bench("bench_tree")
    files = [f for f in ("/bin/sh", "/usr/bin/env", "/usr/bin/ls") if Path(f).exists()]
    for symbols in (False, True):
        rows = dict(bench.profile(bench.SRC, files, symbols))  # raises if the child fails
        assert rows["total"] > 0
        phases = {k.strip().split(":")[0] for k in rows if k.startswith("  ")}
        assert phases == ({"bind", "elf", "load", "-r"} if symbols else {"bind", "elf", "load"}), rows


def test_ab_tree_times_a_real_run() -> None:
    """``bench/ab_tree.py`` (two revisions in interleaved runs) still starts the command it times, and a run
    that fails is an error, not a fast time."""
    import pytest

    bench = _bench("ab_tree")
    wall, user, system, faults = bench.run_once(bench.SRC, ["--no-cache", "-r", "/usr/bin/ls"])
    assert wall > 0 and user + system > 0 and faults > 100
    with pytest.raises(SystemExit, match="failed"):
        bench.run_once(bench.SRC, ["--no-cache", "/nonexistent/program"])
