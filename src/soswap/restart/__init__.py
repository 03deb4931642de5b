"""soswap.restart: the safe restart policy and the ``systemctl`` calls.

>>> from soswap.proc import scan_stale
>>> from soswap.restart import Policy, execute
>>> plan = Policy().plan(scan_stale())
>>> outcome = execute(plan, dry_run=True)
"""

from soswap.restart.policy import DEFAULT_DENY, Policy, RestartPlan, Skipped, default_policy
from soswap.restart.systemctl import Command, RestartOutcome, execute, systemd_running

__all__ = [
    "DEFAULT_DENY",
    "Command",
    "Policy",
    "RestartOutcome",
    "RestartPlan",
    "Skipped",
    "default_policy",
    "execute",
    "systemd_running",
]
