"""Processes of the local stack: is a recorded PID still ours, and what a service's process
tree costs in memory (Linux ``/proc``; elsewhere ``ps`` for command lines, no memory figures).

A service is started in its own session, so its process group holds the server and whatever
it spawned (uvicorn workers); the worker's flow runs are its descendants.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any


def cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def alive(record: dict[str, Any]) -> bool:
    """The PID file's process still runs, and runs the command we started (not a reused PID)."""
    pid = int(record["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: never ours
    cmd = cmdline(pid)
    return cmd is not None and record.get("marker", "") in cmd


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every process we can see (Linux /proc)."""
    table = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(d.name)] = (int(fields[1]), int(fields[2]))
    return table


def memory_kb(pid: int) -> int:
    """Proportional set size (shared pages split between their users), else RSS, in KiB."""
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return int(line.split()[1])
        except (OSError, ValueError):
            continue
    return 0


def service_processes(rec: dict[str, Any], table: dict[int, tuple[int, int]]) -> list[int]:
    """The service's process group and every descendant (flow runs of the worker included)."""
    pgid = int(rec.get("pgid", rec["pid"]))
    found = {p for p, (_, g) in table.items() if g == pgid} | {int(rec["pid"])}
    grew = True
    while grew:
        children = {p for p, (pp, _) in table.items() if pp in found} - found
        grew = bool(children)
        found |= children
    return sorted(p for p in found if p in table)
