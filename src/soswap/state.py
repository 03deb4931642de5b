"""Where soswap keeps its state (transaction journals, the rdeps index), for every package that needs it.

``--state-dir``, else ``$SOSWAP_STATE_DIR``, else ``/var/lib/soswap`` as root, else ``$XDG_STATE_HOME/soswap``
(``~/.local/state/soswap``).
"""

from __future__ import annotations

import os
from typing import Optional


def default_state_dir() -> str:
    """The state directory when none is given: $SOSWAP_STATE_DIR, /var/lib/soswap (root) or the XDG one."""
    env = os.environ.get("SOSWAP_STATE_DIR")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return "/var/lib/soswap"
    xdg = os.environ.get("XDG_STATE_HOME")
    if not xdg or not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "soswap")


def state_dir(explicit: Optional[str] = None) -> str:
    """``explicit`` (made absolute) if given, else :func:`default_state_dir`."""
    return os.path.abspath(explicit) if explicit else default_state_dir()
