"""Argument types shared by several commands (argparse ``type=`` functions: a bad value is one usage error)."""

from __future__ import annotations

import argparse
import math
from typing import Optional

#: timers and deadlines beyond this overflow time_t on the way (setitimer, monotonic deadlines); a year
MAX_SECONDS = 365 * 24 * 3600


def seconds(text: str) -> float:
    """A duration in seconds: a finite number, 0 or more (``nan`` and ``inf`` would wait forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r} (0 or more)")
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"too many seconds: {text!r} (at most {MAX_SECONDS}, a year)")
    return value


def directory_name(text: str) -> str:
    """A directory to keep things in: not empty (an unset shell variable, which would fall back to the
    default directory unseen)."""
    if not text:
        raise argparse.ArgumentTypeError("empty directory name")
    return text


def positive_jobs(text: str) -> int:
    """``-j/--jobs``: a number of worker processes, 1 or more (1: none, the work is done in the process)."""
    value = _decimal(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"not a number of worker processes: {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a number of worker processes: {text!r} (1 or more)")
    return value


def process_id(text: str) -> int:
    """A process ID: a decimal number above 0 (``--pid``)."""
    value = _decimal(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(f"not a process ID: {text!r}")
    return value


def count(text: str) -> int:
    """A count: a decimal number, 0 or more (``history -n``)."""
    value = _decimal(text)
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (0 or more)")
    return value


def _decimal(text: str) -> Optional[int]:
    """``text`` as a decimal integer (None: it is none)."""
    try:
        return int(text, 10)
    except ValueError:
        return None
