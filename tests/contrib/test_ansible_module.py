"""contrib/ansible/library/soswap_stale.py run by a real ``ansible-playbook`` against this machine."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

pytest.importorskip("ansible")

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "contrib" / "ansible" / "library"
LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
PLAY = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - soswap_stale: {args}
      register: r
      ignore_errors: true
    - copy:
        content: "{{{{ r | to_json }}}}"
        dest: {out}
      check_mode: false
"""


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("soswap_stale", LIBRARY / "soswap_stale.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def play(tmp_path: Path):  # type: ignore[no-untyped-def]
    playbook = shutil.which("ansible-playbook", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if playbook is None:
        pytest.skip("ansible-playbook is not installed")
    soswap = tmp_path / "soswap"
    keep = " ".join(f"{k}={os.environ[k]}" for k in ("SOSWAP_CACHE_DIR", "SOSWAP_STATE_DIR") if k in os.environ)
    soswap.write_text(f'#!/bin/sh\nexec env PYTHONPATH={ROOT / "src"} {keep} {sys.executable} -m soswap "$@"\n')
    soswap.chmod(0o755)
    env = dict(os.environ, ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
               ANSIBLE_REMOTE_TEMP=str(tmp_path / "rtmp"), ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_LIBRARY=str(LIBRARY), ANSIBLE_NOCOLOR="1", LC_ALL="C.UTF-8")

    def run(args: Dict[str, Any], *flags: str) -> Dict[str, Any]:
        out = tmp_path / "result.json"
        out.unlink(missing_ok=True)
        book = tmp_path / "play.yml"
        book.write_text(PLAY.format(args=json.dumps({"executable": str(soswap), **args}), out=out))
        r = subprocess.run([playbook, "-i", "localhost,", str(book), *flags], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(out.read_text())  # type: ignore[no-any-return]

    return run


def test_the_module_reports_a_process_that_runs_a_replaced_library(play, procs, tmp_path: Path) -> None:
    from soswap.proc.scan import ScanOptions, scan_stale

    lib = tmp_path / "libansiblez.so"
    shutil.copyfile(LIBZ, lib)
    ready = tmp_path / "ready"
    code = f"import ctypes, time; ctypes.CDLL({str(lib)!r}); open({str(ready)!r}, 'w').close(); time.sleep(600)"
    p = procs.start([sys.executable, "-c", code], wait_for_file=ready)
    new = tmp_path / "new.so"
    new.write_bytes(Path(LIBZ).read_bytes() + b"\0new")
    os.rename(new, lib)

    r = play({})
    assert not r["failed"] and r["changed"] is False
    mine = [s for s in r["stale"] if s["pid"] == p.pid]
    assert len(mine) == 1 and r["count"] >= 1
    assert {(f["path"], f["kind"]) for f in mine[0]["files"]} == {(str(lib), "deleted")}
    proc = scan_stale(ScanOptions(pids=[p.pid], kernel=False)).processes[0]
    if proc.unit is None and proc.container is None:
        assert p.pid in r["processes"][proc.comm]
    elif proc.unit is not None and proc.unit.kind == "system":
        assert proc.unit.name in r["services"]
    assert isinstance(r["reboot_required"], bool)

    checked = play({"restart": True}, "--check")  # a dry run: nothing is restarted, whatever the machine
    assert not checked["failed"] and checked["changed"] == bool(checked["restarted"])


def test_the_module_fails_cleanly(play) -> None:
    from soswap.restart import systemd_running

    r = play({"executable": "/bin/false"})
    assert r["failed"] and r["msg"] == "soswap exited with status 1 and no JSON document"
    if not systemd_running():  # never restart the services of the machine running the tests
        r = play({"restart": True})
        assert r["failed"] and "systemd" in r["msg"]


def test_ansible_doc_reads_the_documentation(tmp_path: Path) -> None:
    doc = shutil.which("ansible-doc", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if doc is None:
        pytest.skip("ansible-doc is not installed")
    env = dict(os.environ, ANSIBLE_HOME=str(tmp_path), ANSIBLE_LIBRARY=str(LIBRARY), LC_ALL="C.UTF-8")
    r = subprocess.run([doc, "-j", "soswap_stale"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)["soswap_stale"]
    assert set(info["doc"]["options"]) == {"restart", "deny", "ignore", "ignore_identical", "executable"}
    assert "reboot_required" in info["return"]


def test_groups_and_restarted_units() -> None:
    mod = _module()
    processes = [
        {"pid": 1, "comm": "systemd", "unit": None, "unit_type": "manager", "container": None},
        {"pid": 10, "comm": "nginx", "unit": "nginx.service", "unit_type": "system", "container": None},
        {"pid": 11, "comm": "nginx", "unit": "nginx.service", "unit_type": "system", "container": None},
        {"pid": 20, "comm": "bash", "unit": "session-3.scope", "unit_type": "session", "session": "3",
         "uid": 0, "container": None},
        {"pid": 30, "comm": "app", "unit": None, "unit_type": None, "container": "docker:abc"},
        {"pid": 40, "comm": "a.out", "unit": None, "unit_type": None, "container": None},
        {"pid": 41, "comm": "a.out", "unit": None, "unit_type": None, "container": None},
    ]
    assert mod.groups(processes) == {"services": ["nginx.service", "systemd-manager"],
                                     "sessions": ["root @ session #3"], "containers": ["docker:abc"],
                                     "processes": {"a.out": [40, 41]}}
    commands = [{"argv": ["systemctl", "daemon-reexec"], "run": True, "returncode": 0},
                {"argv": ["systemctl", "try-restart", "--", "a.service", "b.service"], "run": True, "returncode": 1},
                {"argv": ["systemctl", "--user", "-M", "1000@.host", "daemon-reexec"], "run": False,
                 "returncode": None}]
    assert mod.restarted_units({"dry_run": False, "commands": commands}) == ["systemd-manager"]
    dry = [dict(c, run=False, returncode=None) for c in commands]
    assert mod.restarted_units({"dry_run": True, "commands": dry}) == ["systemd-manager", "a.service", "b.service"]
    tini = [{"pid": 1, "comm": "tini", "unit": None, "unit_type": None, "container": None}]
    assert mod.groups(tini)["processes"] == {"tini": [1]} and mod.groups(tini)["services"] == []


def test_the_result_never_carries_the_reserved_skipped_key(play, tmp_path: Path) -> None:
    """A result with a "skipped" key is shown and counted by Ansible as a skipped task (its handlers do not run,
    `r is skipped` is true): the units not restarted are `not_restarted`."""
    r = play({"restart": True}, "--check")
    assert "skipped" not in r or r["skipped"] is False, r
    assert isinstance(r["not_restarted"], list) and not r["failed"], r


def test_bad_regular_expressions_fail_before_soswap_runs_and_deny_needs_restart(play) -> None:
    r = play({"deny": ["("], "restart": True})
    assert r["failed"] and r["msg"].startswith("bad regular expression '('"), r
    r = play({"deny": ["^nginx"]})
    assert not r["failed"] and any("deny applies to restart" in w for w in r.get("warnings", [])), r


def test_a_regex_that_starts_with_a_dash_is_a_regex(play) -> None:
    """ignore: ['-dbg\\.so'] went to soswap as two words, and argparse took the regex for an option: the task
    failed with soswap's usage text."""
    r = play({"ignore": [r"-dbg\.so"]})
    assert not r.get("failed"), r
    assert "count" in r


def test_a_document_of_another_shape_is_a_failure_message(play, tmp_path: Path) -> None:
    """An executable printing JSON of another shape (another program, a future schema) crashed the module
    ("Module failed: 'processes'")."""
    fake = tmp_path / "fake"
    fake.write_text("#!/bin/sh\necho '[1, 2]'\n")
    fake.chmod(0o755)
    r = play({"executable": str(fake)})
    assert r["failed"] and "does not read" in r["msg"] and "soswap.stale/1" in r["msg"], r
