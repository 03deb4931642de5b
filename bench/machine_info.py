"""The machine line the benchmarks print with their figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine(processes: bool = False) -> str:
    """CPU model, CPU count, kernel, Python and load average (and the number of processes in /proc)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()
    text = (f"{cpu or platform.processor()}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if processes:
        text += f", {sum(1 for n in os.listdir('/proc') if n.isdigit())} processes"
    return text
