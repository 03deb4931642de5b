"""``soswap check -j``: the consumers that must be bound are spread over forked workers, with the same report
as in one process (verdicts, problems, the diff's shortcut count), and bad values are one usage error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest

from support.build import executable, requires_cc, rpath_flags, shared_lib

from .cli import soswap_check

pytestmark = requires_cc
ROOT = Path(__file__).resolve().parents[2]


def _world(tmp_path: Path, count: int) -> List[Path]:
    """libfoo.so.1 (foo, bar) and NEW without bar; ``count`` programs under apps/, every third calling bar,
    every fifth a plugin (a library that calls foo)."""
    old = shared_lib(tmp_path / "v1" / "libfoo.so.1", "int foo(void) { return 1; }\nint bar(void) { return 2; }\n",
                     soname="libfoo.so.1")
    shared_lib(tmp_path / "v2" / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    apps = tmp_path / "apps"
    made = []
    for n in range(count):
        flags = rpath_flags(str(old.parent))
        if n % 5 == 4:
            made.append(shared_lib(apps / f"plugin{n:03d}.so", "int foo(void);\nint p(void) { return foo(); }\n",
                                   libs=[str(old)], flags=flags))
            continue
        call = "bar()" if n % 3 == 0 else "0"
        src = f"int foo(void);\nint bar(void);\nint main(void) {{ return foo() + {call} - 1 - {n % 3 == 0:d}; }}\n"
        made.append(executable(apps / f"app{n:03d}", src, libs=[str(old)], flags=flags))
    return made


def test_workers_give_the_report_of_one_process(tmp_path: Path) -> None:
    _world(tmp_path, 24)
    new, old = str(tmp_path / "v2" / "libfoo.so.1"), str(tmp_path / "v1" / "libfoo.so.1")
    docs = {}
    for jobs in ("1", "3"):
        for full in ((), ("--full",)):
            r = soswap_check(tmp_path, "--scope", str(tmp_path / "apps"), "-j", jobs, *full, "--json", "--", new, old)
            assert r.returncode == 1, r.stderr
            docs[jobs, full] = json.loads(r.stdout)
    for full in ((), ("--full",)):
        one, many = docs["1", full], docs["3", full]
        assert one["consumers"] == many["consumers"]
        assert one["discovery"]["shortcuts"] == many["discovery"]["shortcuts"]
    bad = sorted(Path(c["path"]).name for c in docs["3", ()]["consumers"] if c["verdict"] == "incompatible")
    assert bad == [f"app{n:03d}" for n in range(24) if n % 3 == 0 and n % 5 != 4]
    # without --full the programs that never call bar are proved safe by the diff (not bound); with it, none
    assert docs["3", ()]["discovery"]["shortcuts"] > 0 and docs["3", ("--full",)]["discovery"]["shortcuts"] == 0


@pytest.mark.parametrize("value", ["0", "-2", "x", "1.5", ""])
def test_a_bad_jobs_value_is_one_usage_error(tmp_path: Path, value: str) -> None:
    lib = shared_lib(tmp_path / "libfoo.so.1", "int foo(void) { return 1; }\n", soname="libfoo.so.1")
    r = soswap_check(tmp_path, f"--jobs={value}", str(lib), str(lib))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith("soswap check: error: argument --jobs/-j: not a number of worker "
                                                "processes"), r.stderr
