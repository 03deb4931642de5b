"""Ground truth: each case's app really runs against v1 and v2, and shows what abi.md's "observed message"
column says (or what glibc 2.36 on this machine does, where the case's ``machine_note`` says it differs)."""

from __future__ import annotations

import subprocess

import pytest

from .cases import CASE_IDS, FIRST_CALL, STARTUP, Case, Symptom, describe


def _expect(symptom: Symptom, bind_now: bool) -> Symptom:
    """Under LD_BIND_NOW a first-call failure moves to startup: nothing of main() is printed."""
    if bind_now and symptom.when == FIRST_CALL:
        return symptom._replace(when=STARTUP, stdout="")
    return symptom


def check_run(result: subprocess.CompletedProcess[str], symptom: Symptom, v1_stdout: str) -> None:
    info = describe(result)
    if symptom.returncode is not None:
        assert result.returncode == symptom.returncode, info
    if symptom.stdout is not None:
        assert result.stdout == symptom.stdout, info
    if symptom.when == STARTUP:
        assert "start" not in result.stdout, info
    for text in symptom.stderr:
        assert text in result.stderr, info
    if symptom.stderr_empty:
        assert result.stderr == "", info
    if symptom.stdout_differs_from_v1:
        assert result.stdout != v1_stdout and result.stdout.startswith("start\n"), info


@pytest.mark.parametrize("cid", CASE_IDS)
def test_app_runs_against_v1(case: Case, cid: str) -> None:
    check_run(case.run("v1"), case.old_run, "")
    assert case.old_run.returncode == 0


@pytest.mark.parametrize("bind_now", [False, True], ids=["lazy", "bind-now"])
@pytest.mark.parametrize("cid", CASE_IDS)
def test_app_against_v2_shows_the_observed_symptom(case: Case, cid: str, bind_now: bool) -> None:
    v1 = case.run("v1")
    check_run(case.run("v2", bind_now=bind_now), _expect(case.new_run, bind_now), v1.stdout)


@pytest.mark.parametrize("cid", CASE_IDS)
def test_verdict_agrees_with_the_run(case: Case, cid: str) -> None:
    """A case is compatible exactly when the app runs with v2 as with v1 (the policy refusal T22 and the weak
    reference T14 aside, whose outputs are spelled out)."""
    runs = case.new_run.returncode == 0 and case.new_run.stderr == () and not case.new_run.stdout_differs_from_v1
    same = runs and case.new_run.stdout in (case.old_run.stdout, None)
    if cid == "T22":
        assert same and case.verdict == "incompatible"  # runs, refused by policy (SONAME)
    elif cid == "T14":
        assert runs and case.verdict == "compatible"  # the weak reference is NULL now: the app's own fallback
    else:
        assert (case.verdict == "compatible") == same


def test_shrunk_copy_relocation_warns_only_with_ld_warn(abi_cases: dict) -> None:
    """T5 is silent by default; glibc's dl_verbose (LD_WARN) makes it print the size warning, LD_VERBOSE
    does not (the notes say LD_VERBOSE)."""
    if "T5" not in abi_cases:
        pytest.skip("T5 not built")
    case = abi_cases["T5"]
    warning = "Symbol `table' has different size in shared object, consider re-linking"
    assert warning in case.run("v2", extra_env={"LD_WARN": "1"}).stderr
    assert case.run("v2", extra_env={"LD_VERBOSE": "1"}).stderr == ""
    assert case.run("v2").stderr == ""


def test_unversioned_app_binds_to_the_oldest_version(abi_cases: dict) -> None:
    """T21: foo@VERS_1 returns 42, foo@@VERS_2 43; LD_DEBUG=bindings shows the binding into v2 (it names no
    version for an unversioned reference, so the value tells which definition was taken)."""
    if "T21" not in abi_cases:
        pytest.skip("T21 not built")
    case = abi_cases["T21"]
    r = case.run("v2", extra_env={"LD_DEBUG": "bindings"})
    assert "foo=42" in r.stdout and "foo=43" not in r.stdout
    assert f"to {case.new} [0]: normal symbol `foo'" in r.stderr, r.stderr[-2000:]
