"""Where soswap keeps its state (the rdeps index lives there).

The same rule as ``soswap.replace.statedir`` (which sits above ``soswap.abi`` and cannot be imported here):
``--state-dir``, else ``$SOSWAP_STATE_DIR``, else ``/var/lib/soswap`` as root, else ``$XDG_STATE_HOME/soswap``
(``~/.local/state/soswap``).
"""

from __future__ import annotations

import os
from typing import Optional


def state_dir(explicit: Optional[str] = None) -> str:
    """The state directory: ``explicit`` if given, else the default of the running user."""
    if explicit:
        return os.path.abspath(explicit)
    env = os.environ.get("SOSWAP_STATE_DIR")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return "/var/lib/soswap"
    xdg = os.environ.get("XDG_STATE_HOME")
    if not xdg or not os.path.isabs(xdg):
        xdg = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(xdg, "soswap")
