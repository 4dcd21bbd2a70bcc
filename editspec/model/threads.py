"""How many CPU threads torch may use in a command's process: no more than the cores other work leaves free.

On a small machine that another job already keeps busy, torch's thread pool is slower than one
thread: every parallel operation waits for the thread whose core is taken.  README command 1
beside a one-thread job on a 2-core machine: `editspec compile specs/examples/first.edit` took
575.8 s with torch's 2 threads and 27.5 s with 1 (docs/benchmarks.md#threads-on-a-busy-machine).
Torch reads `OMP_NUM_THREADS` when it starts, so the command sets it before torch is imported;
a value the user set is left alone.
"""
from __future__ import annotations

import os
import sys
import time


def fitting_threads(cores: int, busy: float) -> int:
    """Threads for `cores` usable cores of which about `busy` are taken by other work: at least one.

    >>> fitting_threads(2, 1.1), fitting_threads(2, 0.2), fitting_threads(8, 3.0), fitting_threads(2, 5.0)
    (1, 2, 5, 1)
    """
    return max(1, min(cores, cores - int(busy + 0.5)))


def _cpu_times() -> tuple[int, int]:
    """(all, idle) jiffies of the machine's CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait


def busy_cores(cores: int, window: float = 0.1) -> float:
    """How many cores other processes keep busy now: the machine's CPU use over `window` seconds while this
    process sleeps (an earlier command's lingering load average does not count); the 1-minute load average
    where /proc/stat is missing."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(window)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    spent = total1 - total0
    return cores * (spent - (idle1 - idle0)) / spent if spent > 0 else 0.0


def fit_threads_to_machine(environ=os.environ) -> int | None:
    """Set `OMP_NUM_THREADS` to the cores other processes leave free, where it is unset and that is fewer than
    the usable cores; returns the count set (None: nothing changed).  Call before torch is imported."""
    if "OMP_NUM_THREADS" in environ:
        return None
    try:
        cores = len(os.sched_getaffinity(0))
        busy = busy_cores(cores)
    except (AttributeError, OSError):  # no affinity or load figures on this platform
        return None
    threads = fitting_threads(cores, busy)
    if threads >= cores:
        return None
    environ["OMP_NUM_THREADS"] = str(threads)
    print(f"editspec: about {busy:.1f} of {cores} cores are busy, so torch uses {threads} thread(s) "
          "(set OMP_NUM_THREADS to choose)", file=sys.stderr)
    return threads
