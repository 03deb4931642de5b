"""``soswap check`` against the real programs of this system.

A fake ``libz.so.1`` (one version node, two functions) replaces the system's; ``ldd -r`` with the fake first
on ``LD_LIBRARY_PATH`` is the oracle for a sample of real programs that load libz: the version nodes and the
symbols it reports missing are exactly soswap's problems. The whole-system default discovery (every program
and plugin of the system, the running processes) is behind the ``slow`` marker.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import List, Set, Tuple

import pytest

from soswap.abi import check_replacement
from support.build import shared_lib

LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
pytestmark = pytest.mark.skipif(not os.path.exists(LIBZ), reason="no system libz.so.1")


def _ldd(prog: str, env: dict, relocs: bool = False) -> str:
    r = subprocess.run(["ldd", *(["-r"] if relocs else []), prog], capture_output=True, text=True, env=env,
                       timeout=60)
    return r.stdout + r.stderr


def _libz_programs(limit: int = 5, stride: int = 7) -> List[str]:
    """A deterministic sample of /usr/bin programs that load libz (by ldd)."""
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    found: List[str] = []
    seen = 0
    for name in sorted(os.listdir("/usr/bin")):
        p = os.path.join("/usr/bin", name)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb") as f:
            if f.read(4) != b"\x7fELF":
                continue
        if "libz.so.1 =>" not in _ldd(p, env):
            continue
        if seen % stride == 0:
            found.append(p)
            if len(found) >= limit:
                break
        seen += 1
    return found


@pytest.fixture(scope="module")
def fake_libz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fake-libz")
    return shared_lib(d / "libz.so.1", "const char *zlibVersion(void) { return \"1.2.13\"; }\n"
                                       "unsigned long crc32(unsigned long c, const void *b, unsigned n)"
                                       " { (void)b; (void)n; return c; }\n",
                      soname="libz.so.1", version_script="ZLIB_1.2.0 { global: zlibVersion; crc32; local: *; };\n")


_VERSION_RE = re.compile(r"version `([^']+)' not found \(required by ([^)]+)\)")
_SYMBOL_RE = re.compile(r"undefined symbol: ([^,\s]+)(?:, version (\S+))?\s+\(([^)]+)\)")


def _oracle(prog: str, fake: Path) -> Set[Tuple[str, str, str]]:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LD_LIBRARY_PATH": str(fake.parent)}
    out = _ldd(prog, env, relocs=True)
    found = {("version", v, os.path.realpath(who)) for v, who in _VERSION_RE.findall(out)}
    found |= {("undefined-symbol", f"{s}@{v}" if v else s, os.path.realpath(who))
              for s, v, who in _SYMBOL_RE.findall(out)}
    return found


def test_fake_libz_against_real_programs_agrees_with_ldd_r(fake_libz: Path) -> None:
    programs = _libz_programs()
    assert programs, "no program of /usr/bin loads libz"
    result = check_replacement(LIBZ, str(fake_libz), consumers=programs,
                               environ={"PATH": "/usr/bin:/bin", "LD_BIND_NOW": "1"})
    assert result.verdict == "incompatible"
    for c in result.consumers:
        ours = set()
        for p in c.problems:
            if p.kind == "version":
                who = _VERSION_RE.search(p.message or "").group(2)  # type: ignore[union-attr]
                ours.add(("version", p.version, os.path.realpath(who)))
            elif p.kind == "undefined-symbol":
                ours.add(("undefined-symbol", f"{p.symbol}@{p.version}" if p.version else p.symbol,
                          os.path.realpath(p.object)))
        assert ours == _oracle(c.path, fake_libz), c.path
        assert c.verdict == "incompatible" and c.problems[0].fatal


def test_an_identical_copy_is_compatible_with_real_programs(tmp_path: Path) -> None:
    copy = tmp_path / "libz.so.1"
    copy.write_bytes(Path(LIBZ).read_bytes())
    programs = _libz_programs(limit=4, stride=11)
    result = check_replacement(LIBZ, str(copy), consumers=programs, environ={"PATH": "/usr/bin:/bin"})
    assert result.verdict == "compatible"
    assert {c.verdict for c in result.consumers} <= {"compatible", "broken"}
    assert result.diff.changes == ()


@pytest.mark.slow
def test_default_discovery_on_the_whole_system(tmp_path: Path) -> None:
    """Every program and plugin of the system that loads libz, plus the processes that map it; a second run
    reads nothing again."""
    copy = tmp_path / "libz.so.1"
    copy.write_bytes(Path(LIBZ).read_bytes())
    cache = str(tmp_path / "cache")
    first = check_replacement(LIBZ, str(copy), cache_dir=cache)
    assert first.verdict == "compatible"
    assert first.discovery.sources == ("system", "processes")
    programs = {c.path for c in first.consumers if c.role == "program"}
    assert set(_libz_programs(limit=3)) <= programs
    second = check_replacement(LIBZ, str(copy), cache_dir=cache)
    assert second.discovery.index_stats["reread"] == 0  # type: ignore[index]
    assert {c.path for c in second.consumers if c.role == "program"} == programs
