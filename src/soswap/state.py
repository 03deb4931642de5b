"""Where soswap keeps its files, for every package that needs them.

* **State** (transaction journals, the lock): ``--state-dir``, else ``$SOSWAP_STATE_DIR``, else
  ``/var/lib/soswap`` as root, else ``$XDG_STATE_HOME/soswap`` (``~/.local/state/soswap``). Losing it loses
  the rollback history.
* **Cache** (the rdeps index and ``soswap tree``'s binding results: facts about the installed system that
  soswap can always compute again):
  ``--cache-dir``, else ``$SOSWAP_CACHE_DIR``, else ``/var/cache/soswap`` as root, else
  ``$XDG_CACHE_HOME/soswap`` (``~/.cache/soswap``). Shared by every state directory; created on demand, even by
  a dry run (it holds no user state); deleting it only costs one rebuild.
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
    return os.path.join(_xdg("XDG_STATE_HOME", (".local", "state")), "soswap")


def state_dir(explicit: Optional[str] = None) -> str:
    """``explicit`` (made absolute) if given, else :func:`default_state_dir`."""
    return os.path.abspath(explicit) if explicit else default_state_dir()


def default_cache_dir() -> str:
    """The cache directory when none is given: $SOSWAP_CACHE_DIR, /var/cache/soswap (root) or the XDG one."""
    env = os.environ.get("SOSWAP_CACHE_DIR")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return "/var/cache/soswap"
    return os.path.join(_xdg("XDG_CACHE_HOME", (".cache",)), "soswap")


def cache_dir(explicit: Optional[str] = None) -> str:
    """``explicit`` (made absolute) if given, else :func:`default_cache_dir`."""
    return os.path.abspath(explicit) if explicit else default_cache_dir()


def _xdg(variable: str, fallback: tuple) -> str:
    """An XDG base directory: the variable if it holds an absolute path (the spec ignores relative ones),
    else ``~/<fallback>``."""
    value = os.environ.get(variable)
    if value and os.path.isabs(value):
        return value
    return os.path.join(os.path.expanduser("~"), *fallback)
