"""What this process may use of the machine it runs on.

On a cluster node the scheduler pins a job to some of the cores (SLURM's ``--cpus-per-task``,
cgroups, ``taskset``); ``os.cpu_count()`` still says how many the node has, so worker pools sized
by it oversubscribe the job's cores. Everything in llamagene that sizes a pool asks here.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
