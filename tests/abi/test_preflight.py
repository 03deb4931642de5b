"""``soswap.abi.preflight``: the ``soswap install`` seam. Each installed ELF destination is checked against its
consumers with the other files of the transaction in place; the rdeps index lives in the shared cache directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from soswap.abi import PreflightProblem, preflight
from soswap.abi.rdeps import INDEX_FILE
from support.build import shared_lib

from .tree import FOO_BAR, Tree, age, build_tree

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("preflight-tree"))


def _scope(tree: Tree) -> dict:
    return {"scope": [str(tree.root)], "processes": False, "system": False}


def test_problems_name_each_broken_consumer(tree: Tree, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    problems = preflight([(str(tree.new), str(tree.target))], cache_dir=str(cache), **_scope(tree))
    assert all(isinstance(p, PreflightProblem) for p in problems)
    assert {p.consumer for p in problems} == {str(tree["app_direct"]), str(tree["app_indirect"]), str(tree["plug"])}
    plug = next(p for p in problems if p.consumer == str(tree["plug"]))
    assert str(plug) == (f"{tree.target}: NEW breaks plugin {tree['plug']} at dlopen: "
                         f"{tree['plug']}: undefined symbol: foo")
    assert plug.to_json()["problem"] == {"kind": "undefined-symbol", "symbol": "foo", "version": None,
                                         "when": "dlopen", "message": f"{tree['plug']}: undefined symbol: foo"}
    assert (cache / "rdeps-index.json").is_file()  # the cache is created on demand (it holds no user state)


def test_files_that_are_not_installed_elf_files_are_not_checked(tree: Tree, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n" * 10)
    assert preflight([(str(tree.new), str(tmp_path / "brand-new.so")), (str(script), str(tmp_path / "x.sh"))],
                     **_scope(tree)) == []


def test_object_files_and_kernel_modules_are_not_checked(tree: Tree, tmp_path: Path) -> None:
    """ld.so never loads an ET_REL file (.o, .ko): it has no consumers, and installing one is never refused."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed")
    objs = []
    for n in (1, 2):
        (tmp_path / "m.c").write_text(f"int f(void) {{ return {n}; }}\n")
        subprocess.run(["gcc", "-c", "-o", str(tmp_path / f"m{n}.o"), str(tmp_path / "m.c")], check=True)
        objs.append(str(tmp_path / f"m{n}.o"))
    assert preflight([(objs[1], objs[0])], **_scope(tree)) == []
    problems = preflight([(objs[1], str(tree.target))], **_scope(tree))  # but an object file over a library
    assert problems[0].kind == "refused" and "e_type DYN -> REL" in problems[0].message
    assert any("only ET_DYN and ET_EXEC can be loaded" in p.message for p in problems[1:])


def test_a_source_that_is_not_elf_refuses(tree: Tree, tmp_path: Path) -> None:
    bogus = tmp_path / "libfoo.so.1"
    bogus.write_text("not a library\n" * 10)
    (p,) = preflight([(str(bogus), str(tree.target))], **_scope(tree))
    assert p.kind == "unchecked" and str(tree.target) in p.message and str(bogus) in p.message


def test_the_other_files_of_the_transaction_are_in_place(tree: Tree, tmp_path: Path) -> None:
    """NEW libfoo needs libhelper.so.1, installed by the same transaction into lib/ (a new file): compatible
    together, refused alone (T23 without and with the helper)."""
    root = tmp_path / "tree"
    shutil.copytree(tree.root, root, symlinks=True)
    age(root)
    helper = shared_lib(tmp_path / "src" / "libhelper.so.1", "int helper(void) { return 1; }\n",
                        soname="libhelper.so.1")
    # NEW finds its new dependency next to itself (RUNPATH $ORIGIN), as ld.so would once both are installed
    new = shared_lib(tmp_path / "src" / "libfoo.so.1",
                     FOO_BAR + "int helper(void);\nint h(void) { return helper(); }\n", soname="libfoo.so.1",
                     libs=[str(helper)], flags=["-Wl,-rpath,$ORIGIN", "-Wl,--enable-new-dtags"])
    target = root / "lib" / "libfoo.so.1"
    scope = {"scope": [str(root)], "processes": False, "system": False}
    alone = preflight([(str(new), str(target))], **scope)
    assert alone and all(p.problem is not None and p.problem["kind"] == "not-found" for p in alone)
    assert preflight([(str(new), str(target)), (str(helper), str(root / "lib" / "libhelper.so.1"))], **scope) == []


def test_a_transaction_checks_as_each_file_alone_with_the_others_in_place(tree: Tree, tmp_path: Path) -> None:
    """preflight shares one /proc pass and the loaders (hence loads and bindings) between the files of one
    transaction: the problems must be exactly those of separate checks, each with the others in place."""
    from soswap.abi import check_replacement
    from soswap.abi.preflight import problems_of

    lib = tree.root / "lib"
    mid, other = tmp_path / "libmid.so.1", tmp_path / "libother.so.1"
    shutil.copyfile(lib / "libmid.so.1", mid)
    shutil.copyfile(lib / "libother.so.1", other)
    pairs = [(str(tree.new), str(tree.target)), (str(mid), str(lib / "libmid.so.1")),
             (str(other), str(lib / "libother.so.1"))]
    scope = _scope(tree)
    together = preflight(pairs, **scope)
    alone = []
    for source, dest in pairs:
        others = {d: s for s, d in pairs if d != dest}
        alone.extend(problems_of(check_replacement(dest, source, also=others, **scope)))
    assert together == alone and len(together) >= 3


def test_a_consumer_the_transaction_replaces_is_checked_in_its_new_version(tree: Tree, tmp_path: Path) -> None:
    """NEW libfoo drops what app_direct uses; the same transaction replaces app_direct by a program that does
    not use it (app_bar's build): app_direct is then loaded as its new version, and nothing breaks for it."""
    alone = preflight([(str(tree.new), str(tree.target))], **_scope(tree))
    assert str(tree["app_direct"]) in {p.consumer for p in alone}
    new_app = tmp_path / "app_direct"
    shutil.copyfile(tree["app_bar"], new_app)
    together = preflight([(str(tree.new), str(tree.target)), (str(new_app), str(tree["app_direct"]))],
                         **_scope(tree))
    assert str(tree["app_direct"]) not in {p.consumer for p in together}
    assert {p.consumer for p in together} == {p.consumer for p in alone} - {str(tree["app_direct"])}


def _install(args: list, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LD_")}
    full.update(PYTHONPATH=str(ROOT / "src"), SOSWAP_STATE_DIR=str(tmp_path / "state"), **env)
    return subprocess.run([sys.executable, "-m", "soswap", "install", *map(str, args)], env=full,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _copy(tree: Tree, tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(tree.root, root, symlinks=True)
    return root


def test_install_refuses_with_the_loader_messages_and_changes_nothing(tree: Tree, tmp_path: Path) -> None:
    """The real CLI, default discovery plus --scope: the consumers NEW breaks are listed with ld.so's words,
    exit 1, the file is untouched (a dry run says the same); --force installs, and the programs the preflight
    named then fail exactly as it said."""
    root = _copy(tree, tmp_path)
    target = root / "lib" / "libfoo.so.1"
    before = target.read_bytes()
    own_cache = tmp_path / "own-cache"
    for extra in ([], ["--dry-run", "--cache-dir", str(own_cache)]):
        r = _install([*extra, "--scope", root, "--", tree.new, target], tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert target.read_bytes() == before
        out = r.stdout + r.stderr
        app = root / "bin" / "app_direct"
        assert f"{app}: symbol lookup error: {app}: undefined symbol: foo" in out
        assert f"{root / 'plugins' / 'plug.so'}: undefined symbol: foo" in out
        assert str(root / "bin" / "app_bar") not in out  # compatible: not listed
    assert os.listdir(own_cache) == [INDEX_FILE]  # --cache-dir: the preflight's index went there
    assert not (tmp_path / "state" / "tx").exists() or os.listdir(tmp_path / "state" / "tx") == []
    r = _install(["--force", "--scope", root, "--", tree.new, target], tmp_path)
    assert r.returncode == 0, r.stderr
    run = subprocess.run([str(root / "bin" / "app_direct")], capture_output=True, text=True, timeout=30)
    assert run.returncode == 127
    assert run.stderr.strip() == f"{root / 'bin' / 'app_direct'}: symbol lookup error: " \
                                 f"{root / 'bin' / 'app_direct'}: undefined symbol: foo"


def test_install_refuses_when_a_running_process_would_break(tree: Tree, tmp_path: Path, procs) -> None:
    """No --scope: only the default discovery (the running processes and the system) finds the consumer, a
    process that maps TARGET through its own LD_LIBRARY_PATH."""
    root = _copy(tree, tmp_path)
    target = root / "lib" / "libfoo.so.1"
    ready = tmp_path / "ready"
    p = procs.start([tree["server"], ready], env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(root / "lib")},
                    wait_for_file=ready)
    r = _install([tree.new, target], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"process {p.pid}" in r.stdout + r.stderr
    assert target.read_bytes() == (tree.root / "lib" / "libfoo.so.1").read_bytes()
    assert _install(["--no-check", tree.new, target], tmp_path).returncode == 0  # the escape hatch
