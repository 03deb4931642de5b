"""``soswap.abi.preflight``: the ``soswap install`` seam. Each installed ELF destination is checked against its
consumers with the other files of the transaction in place; a dry run creates no state directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from soswap.abi import PreflightProblem, preflight
from support.build import shared_lib

from .tree import FOO_BAR, Tree, age, build_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return build_tree(tmp_path_factory.mktemp("preflight-tree"))


def _scope(tree: Tree) -> dict:
    return {"scope": [str(tree.root)], "processes": False, "system": False}


def test_problems_name_each_broken_consumer(tree: Tree, tmp_path: Path) -> None:
    state = tmp_path / "state"
    problems = preflight([(str(tree.new), str(tree.target))], state_dir=str(state), **_scope(tree))
    assert all(isinstance(p, PreflightProblem) for p in problems)
    assert {p.consumer for p in problems} == {str(tree["app_direct"]), str(tree["app_indirect"]), str(tree["plug"])}
    plug = next(p for p in problems if p.consumer == str(tree["plug"]))
    assert str(plug) == (f"{tree.target}: NEW breaks plugin {tree['plug']} at dlopen: "
                         f"{tree['plug']}: undefined symbol: foo")
    assert plug.to_json()["problem"] == {"kind": "undefined-symbol", "symbol": "foo", "version": None,
                                         "when": "dlopen", "message": f"{tree['plug']}: undefined symbol: foo"}
    assert not state.exists()  # the preflight never creates the state directory


def test_files_that_are_not_installed_elf_files_are_not_checked(tree: Tree, tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n" * 10)
    assert preflight([(str(tree.new), str(tmp_path / "brand-new.so")), (str(script), str(tmp_path / "x.sh"))],
                     **_scope(tree)) == []


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
