"""How many CPU cores this process may really use: its affinity mask and its cgroup's CPU quota
(a container limited to 4 cores still reports the host's 64 in ``os.cpu_count()``)."""
from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota() -> float | None:
    """Cores allowed by the cgroup (v2 ``cpu.max``, else v1 ``cfs_quota_us``/``cfs_period_us``); None: no limit."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
