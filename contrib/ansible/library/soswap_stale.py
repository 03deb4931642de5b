#!/usr/bin/python
# Ansible module: find the processes that run old code (deleted, replaced, modified or truncated files) with
# soswap, group them as needrestart does, and optionally restart their services. See docs/ansible.md.

from __future__ import annotations

import json
import re

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: soswap_stale
short_description: Find processes that run old code, and restart their services
description:
  - Runs C(soswap stale --json) on the target and returns the processes that still run deleted, replaced,
    modified or truncated executables and libraries, grouped as services, user sessions, containers and
    processes outside any unit, with whether a newer kernel waits for a reboot.
  - With O(restart=true), restarts the affected system services as C(soswap stale --restart) does (one
    batched C(systemctl try-restart), never units on the deny-list or with RefuseManualStop=yes;
    PID 1 gets C(systemctl daemon-reexec)). Sessions, containers and loose processes are only reported.
  - Check mode runs the restart as a dry run; RV(changed) then says whether anything would be restarted.
options:
  restart:
    description: Restart the system services that run old code.
    type: bool
    default: false
  deny:
    description: Regular expressions of units never to restart, added to soswap's deny-list.
    type: list
    elements: str
    default: []
  ignore:
    description: Regular expressions of mapped paths to ignore.
    type: list
    elements: str
    default: []
  ignore_identical:
    description: Do not report a file whose new version has the same content (a reinstall).
    type: bool
    default: false
  executable:
    description: The soswap command (a name looked up in PATH, or an absolute path).
    type: str
    default: soswap
requirements: [soswap on the target]
"""

EXAMPLES = r"""
- name: What runs old code?
  soswap_stale:
  register: stale

- name: Restart the services after the upgrade (dry run with --check)
  soswap_stale:
    restart: true
    deny: ['^postgresql']

- name: Reboot when a newer kernel is installed
  ansible.builtin.reboot:
  when: stale.reboot_required
"""

RETURN = r"""
count: {description: Number of processes that run old code., type: int, returned: always}
services: {description: System units (systemd-manager for PID 1)., type: list, elements: str, returned: always}
sessions: {description: User sessions and user managers., type: list, elements: str, returned: always}
containers: {description: Containers., type: list, elements: str, returned: always}
processes: {description: "Processes outside any unit: comm -> PIDs.", type: dict, returned: always}
stale: {description: "Each process: pid, comm, exe, unit, container, files (path, kind).", type: list, returned: always}
reboot_required: {description: A newer kernel is installed than the one running., type: bool, returned: always}
kernel: {description: "The kernel check (status, state, running, expected, reason).", type: dict, returned: always}
partial: {description: Some processes could not be read., type: bool, returned: always}
restarted: {description: Units restarted (in check mode, to be restarted)., type: list, returned: always}
not_restarted: {description: "Units not restarted, with the reason (unit, reason).", type: list, returned: always}
"""

_SYSTEM_KINDS = ("system", "manager")


def _user(uid: object) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name  # type: ignore[arg-type]
    except (KeyError, TypeError, ImportError):
        return str(uid)


def groups(processes: list) -> dict:
    """needrestart's four groups (as ``soswap stale --batch`` and the apt hook print them)."""
    services, sessions, containers, loose = set(), set(), set(), {}
    for p in processes:
        kind = p.get("unit_type")
        if p.get("container") and kind not in _SYSTEM_KINDS:
            containers.add(p["container"])
        elif kind == "manager" or (kind is None and p["pid"] == 1 and p.get("comm") == "systemd"):
            services.add("systemd-manager")
        elif kind == "system":
            services.add(p["unit"])
        elif kind == "session":
            sessions.add(f"{_user(p.get('uid'))} @ session #{p.get('session')}")
        elif kind in ("user-manager", "user"):
            sessions.add(f"{_user(p.get('uid'))} @ user manager service")
        else:
            loose.setdefault(p.get("comm") or "?", []).append(p["pid"])
    return {"services": sorted(services), "sessions": sorted(sessions), "containers": sorted(containers),
            "processes": dict(sorted(loose.items()))}


def restarted_units(restart: dict) -> list:
    """The units a (dry or real) restart acted on: ``try-restart`` arguments and ``daemon-reexec`` of PID 1."""
    units = []
    for c in restart.get("commands", []):
        argv = c["argv"]
        if not restart["dry_run"] and not (c["run"] and c["returncode"] == 0):
            continue
        if "try-restart" in argv:
            units.extend(argv[argv.index("--") + 1:] if "--" in argv else argv[argv.index("try-restart") + 1:])
        elif argv[-1:] == ["daemon-reexec"] and "--user" not in argv:
            units.append("systemd-manager")
    return units


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "restart": {"type": "bool", "default": False},
            "deny": {"type": "list", "elements": "str", "default": []},
            "ignore": {"type": "list", "elements": "str", "default": []},
            "ignore_identical": {"type": "bool", "default": False},
            "executable": {"type": "str", "default": "soswap"},
        },
        supports_check_mode=True,
    )
    p = module.params
    for regex in p["deny"] + p["ignore"]:
        try:
            re.compile(regex)
        except re.error as exc:
            module.fail_json(msg=f"bad regular expression {regex!r}: {exc}")
    if p["deny"] and not p["restart"]:
        module.warn("deny applies to restart: true only; it is ignored here")
    argv = [module.get_bin_path(p["executable"], required=True), "stale", "--json"]
    for regex in p["ignore"]:
        argv.append(f"--ignore={regex}")  # (one word: a regex starting with '-' is no option)
    if p["ignore_identical"]:
        argv.append("--ignore-identical")
    if p["restart"]:
        argv.append("--restart")
        for regex in p["deny"]:
            argv.append(f"--deny={regex}")
        if module.check_mode:
            argv.append("--dry-run")
    rc, out, err = module.run_command(argv)
    # 0 nothing stale, 1 something stale (or a refusal, with no document); 2 error (docs/exit-codes.md), which
    # after a failed systemctl call of the restart comes with the whole document
    try:
        doc = json.loads(out) if rc in (0, 1, 2) and out.strip() else None
    except ValueError:
        doc = None
    if doc is None:
        module.fail_json(msg=err.strip() or f"soswap exited with status {rc} and no JSON document", rc=rc, cmd=argv)
    if not (isinstance(doc, dict) and doc.get("schema") == "soswap.stale/1" and isinstance(doc.get("processes"), list)):
        shown = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        module.fail_json(msg=f"{argv[0]} printed a JSON document this module does not read (schema {shown!r}, not "
                             "'soswap.stale/1'): another program, or another soswap version", rc=rc, cmd=argv)
    processes = doc["processes"]
    kernel = doc.get("kernel")
    result = {
        "changed": False,
        "count": len(processes),
        **groups(processes),
        "stale": [{"pid": x["pid"], "comm": x["comm"], "exe": x["exe"], "unit": x["unit"],
                   "container": x["container"], "files": [{"path": f["path"], "kind": f["kind"]} for f in x["files"]]}
                  for x in processes],
        "reboot_required": bool(kernel and kernel["status"] in (2, 3)),
        "kernel": kernel,
        "partial": doc.get("partial", False),
        "restarted": [],
        # not "skipped": Ansible reserves that key, and a result carrying it is shown and counted as skipped
        "not_restarted": [],
    }
    restart = doc.get("restart")
    if restart is not None:
        result["restarted"] = restarted_units(restart)
        result["not_restarted"] = restart.get("skipped", [])
        result["changed"] = bool(result["restarted"])
        failed = [c for c in restart.get("commands", []) if c["run"] and c["returncode"] != 0]
        if failed:
            module.fail_json(msg="restart failed: " + "; ".join(
                f"{' '.join(c['argv'])}: {c['error'] or 'status ' + str(c['returncode'])}" for c in failed), **result)
    if rc == 2:  # an error after the document was written (not a restart): soswap's error line says what
        module.fail_json(msg=err.strip() or "soswap exited with status 2", rc=rc, cmd=argv, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
