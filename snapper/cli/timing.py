"""Where a command's time goes (``-v``): its phases, from the start of the process, on stderr.

A one-box ``snapper snap`` spends most of its time before it snaps anything (the interpreter,
torch and the model), so the first phase is measured from when the process started, read
from ``/proc`` (Linux), not from when ``main`` was called: that is the part a user waits for
and cannot see otherwise.
"""

from __future__ import annotations

import os
import sys
import time

_IMPORTED = time.perf_counter()  # the fallback start where /proc cannot say


def process_age() -> tuple[float, bool]:
    """Seconds since this process started and whether that is the real start (``/proc``) or
    only since this module was imported (other systems: the interpreter's start-up and the
    imports before it are then missing)."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")), True  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED, False


class Phases:
    """Wall time per phase of one command; the first phase ends when this is built."""

    def __init__(self, first: str = "imports") -> None:
        age, real = process_age()
        self.rows: list[tuple[str, float]] = [(f"{first} (since the process started)" if real
                                               else f"{first} (since snapper.cli.timing was imported)", age)]
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        """The phase ``name`` ends now."""
        now = time.perf_counter()
        self.rows.append((name, now - self._last))
        self._last = now

    def report(self, prog: str) -> str:
        total = sum(s for _, s in self.rows)
        width = max(len(n) for n, _ in self.rows)
        lines = [f"{prog}: where the time went"]
        lines += [f"  {n:<{width}}  {s:7.3f} s  {100 * s / total:5.1f}%" for n, s in self.rows]
        lines.append(f"  {'total':<{width}}  {total:7.3f} s")
        return "\n".join(lines)

    def print(self, prog: str) -> None:
        print(self.report(prog), file=sys.stderr)
