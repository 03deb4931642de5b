"""Where the rdeps index lives: a cache directory shared by every state directory and every command
($SOSWAP_CACHE_DIR, /var/cache/soswap as root, $XDG_CACHE_HOME/soswap otherwise), created on demand (a dry run
too: it holds no user state), and one walk of the directories for all the files of a transaction."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from soswap.abi import check_replacement
from soswap.abi.rdeps import INDEX_FILE, environment_for_index, open_index
from soswap.loader import Profile
from soswap.state import cache_dir, default_cache_dir, state_dir
from support.build import requires_root
from support.nobody import require_python_as_nobody

from .tree import Tree, build_tree, settle

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("cache-tree"))


def _as_nobody(code: str, env: Dict[str, str]) -> str:
    """Run ``code`` in a Python of uid/gid 65534 (a real non-root user); its stdout."""
    require_python_as_nobody()
    full = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), **env}
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                       env=full, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_environment_names_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SOSWAP_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == str(tmp_path / "c")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SOSWAP_CACHE_DIR", "relative")
    assert default_cache_dir() == str(tmp_path / "relative")
    assert cache_dir("given") == str(tmp_path / "given")


@requires_root
def test_root_uses_var_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOSWAP_CACHE_DIR")
    monkeypatch.delenv("SOSWAP_STATE_DIR", raising=False)
    assert default_cache_dir() == "/var/cache/soswap"
    assert state_dir() == "/var/lib/soswap"  # state and cache are apart


@requires_root
def test_a_user_uses_the_xdg_cache(tmp_path: Path) -> None:
    code = "from soswap.state import default_cache_dir as d; print(d())"
    home = str(tmp_path / "home")
    assert _as_nobody(code, {"HOME": home}) == f"{home}/.cache/soswap"
    assert _as_nobody(code, {"HOME": home, "XDG_CACHE_HOME": "/srv/xdg"}) == "/srv/xdg/soswap"
    # a relative XDG_CACHE_HOME is ignored (XDG base directory specification)
    assert _as_nobody(code, {"HOME": home, "XDG_CACHE_HOME": "rel"}) == f"{home}/.cache/soswap"


def _soswap(args: list, env: Dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    full.update(PYTHONPATH=str(ROOT / "src"), **env)
    return subprocess.run([sys.executable, "-m", "soswap", *args], env=full, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_a_dry_run_creates_the_cache_and_every_state_dir_shares_it(tree: Tree, tmp_path: Path) -> None:
    """``install --dry-run`` changes nothing the user owns (no state directory) but creates the cache with the
    index of the system; an install with another state directory uses the same index (and keeps none of its
    own)."""
    cache = tmp_path / "cache" / "soswap"
    dest = tmp_path / "dest"
    dest.mkdir()
    shutil.copyfile(tree["libother"], dest / "libother.so.1")
    first = _soswap(["install", "--dry-run", str(tree["libother"]), str(dest / "libother.so.1")],
                    {"SOSWAP_CACHE_DIR": str(cache), "SOSWAP_STATE_DIR": str(tmp_path / "state1")})
    assert first.returncode == 0, first.stderr
    index = cache / INDEX_FILE
    assert index.is_file() and not (tmp_path / "state1").exists()
    assert oct(cache.stat().st_mode & 0o777) == "0o700" and oct(index.stat().st_mode & 0o777) == "0o600"
    second = _soswap(["install", "--no-backup", str(tree["libother"]), str(dest / "libother.so.1")],
                     {"SOSWAP_CACHE_DIR": str(cache), "SOSWAP_STATE_DIR": str(tmp_path / "state2")})
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "state2").is_dir() and not list((tmp_path / "state2").rglob(INDEX_FILE))
    assert os.listdir(cache) == [INDEX_FILE]
    r = _soswap(["rdeps", "--json", str(tree["libother"])], {"SOSWAP_CACHE_DIR": str(cache)})
    assert json.loads(r.stdout)["index"]["rebuilt"] is None


def test_check_and_rdeps_share_the_cache(tree: Tree, tmp_path: Path) -> None:
    """``soswap check`` builds the index, ``soswap rdeps`` reads it (nothing re-read), in the same cache."""
    settle(tree.root)  # files younger than 2 s would be checked again (the racy rule)
    env = {"SOSWAP_CACHE_DIR": str(tmp_path / "cache")}
    r = _soswap(["check", "--json", str(tree.new), str(tree.target), "--scope", str(tree.root)], env)
    doc = json.loads(r.stdout)
    assert doc["discovery"]["index"]["path"] == str(tmp_path / "cache" / INDEX_FILE)
    r = _soswap(["rdeps", "--json", str(tree.target), "--scope", str(tree.root)], env)
    doc = json.loads(r.stdout)
    assert doc["index"]["rebuilt"] is None and doc["index"]["dirs_listed"] == 0


def test_the_files_of_a_transaction_share_one_walk(tree: Tree, tmp_path: Path) -> None:
    """Checks given the same index (as the preflight gives every file of a transaction) walk the directories
    once: nothing is installed between them."""
    profile = Profile.detect()
    index = open_index(str(tmp_path / "cache"), profile, environment_for_index({"PATH": "/usr/bin:/bin"}))
    scope = [str(tree.root)]
    first = check_replacement(str(tree.target), str(tree.new), scope=scope, index=index)
    walked = index.stats.dirs
    assert walked == 5  # bin, lib, plugins, share and the top
    second = check_replacement(str(tree["libmid"]), str(tree["libmid"]), scope=scope, index=index)
    assert index.stats.dirs == walked
    assert first.verdict == "incompatible" and second.verdict == "compatible"
    assert {c.path for c in second.consumers} == {str(tree["app_indirect"])}
