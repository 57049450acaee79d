"""Counting a running process's user-space instructions with callgrind, for the bench scripts
that measure a window of requests (bench/telemetry_ab_callgrind.py, bench/floor_profile.py):
the valgrind command line a measured process starts under, and one measured window (zero the
counters, run the load, dump, read each dump's total).

It starts and stops nothing itself (smoke.Procs does) and knows nothing of proxies or load.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import smoke

# The dump's last line: `totals: N` (or `summary: N` in older valgrinds), the instructions the
# events counted since the last zeroing.
TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.M)
# `callgrind_control -d` returns before valgrind has written the file: how long to look for it.
DUMP_WAIT = 15.0


def valgrind(out: Path) -> list[str]:
    """The command prefix that runs a program under callgrind with its dumps in `out`
    (`callgrind.out.<pid>[.<n>]`); instruction counts only, no per-instruction or jump data."""
    return ["valgrind", "--tool=callgrind", "--dump-instr=no", "--collect-jumps=no",
            f"--callgrind-out-file={out}/callgrind.out.%p"]


def dumps(out: Path, pid: int) -> set[Path]:
    """The dump files of `pid` in `out` so far."""
    return set(out.glob(f"callgrind.out.{pid}.*"))


def new_dump(out: Path, pid: int, before: set[Path]) -> tuple[Path, int]:
    """The dump of `pid` written since `before` was taken, and its total instructions; waits up
    to DUMP_WAIT for the file to appear complete."""
    deadline = time.monotonic() + DUMP_WAIT
    while time.monotonic() < deadline:
        for path in sorted(dumps(out, pid) - before):
            m = TOTAL.search(path.read_text(errors="replace"))
            if m:
                return path, int(m.group(1))
        time.sleep(0.1)
    raise smoke.SetupError(f"no callgrind dump for pid {pid} in {out}")


def measure(out: Path, pids: list[int], load: Callable[[], object]) -> dict[int, tuple[Path, int]]:
    """One measured window: zeroes each process's counters, runs `load`, then dumps each; per
    pid, the dump written and the instructions it counted during the window."""
    before = {pid: dumps(out, pid) for pid in pids}
    for pid in pids:
        smoke.callgrind_control("-z", pid)
    load()
    counted = {}
    for pid in pids:
        smoke.callgrind_control("-d", pid)
        counted[pid] = new_dump(out, pid, before[pid])
    return counted
