"""Test-only pause points: ``SOSWAP_TEST_PAUSE_AT=STEP`` stops the process (SIGSTOP) at that step, so a test
can kill it there with SIGKILL and check what ``soswap recover`` makes of the state left behind.

Steps: ``checked``, ``journal-staging``, ``temp-created``, ``data-copied``, ``metadata-set``, ``fsynced``,
``linked``, ``staged``, ``journal-prepared``, ``backup:N``, ``verified:N``, ``renamed:N``, ``flags:N``
(N = commit index from 0), ``dirs-synced``, ``committed``, ``cleaned``. The variable is read once, at import;
when it is unset a pause point costs one comparison.
"""

from __future__ import annotations

import os
import signal
from typing import Optional

_PAUSE_AT: Optional[str] = os.environ.get("SOSWAP_TEST_PAUSE_AT") or None


def pause_point(step: str) -> None:
    """Stop here with SIGSTOP when ``SOSWAP_TEST_PAUSE_AT`` names ``step``; otherwise return at once."""
    if _PAUSE_AT is not None and step == _PAUSE_AT:
        os.kill(os.getpid(), signal.SIGSTOP)
