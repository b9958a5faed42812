"""What else used the CPU while qcli measured: a run that was disturbed says so.

Linux counts every CPU's busy time in ``/proc/stat``; the process's own CPU time comes from
``time.process_time()``. Busy time beyond the process's own is another program's (or the
kernel's) work: ``other_cores`` is that amount divided by the wall time, in cores. Where
``/proc/stat`` cannot be read, only the load average (if any) is reported and nothing is flagged.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

DISTURBED_CORES = 0.25  # another program's use, in cores, beyond which the timings are suspect


def _busy_seconds() -> float | None:
    """CPU-seconds all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    busy = sum(values[:3]) + sum(values[5:8])  # skip idle (3) and iowait (4); guest is in user
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Noise:
    """CPU use during a measurement, besides this process's own."""

    seconds: float  # wall time measured
    own_cores: float  # this process's CPU time per wall second
    other_cores: float | None  # everything else's, in cores (None: /proc/stat unreadable)
    load_average: float | None  # 1-minute load average at the end
    disturbed: bool
    reason: str | None  # why the run is flagged, with the figure


def _noise(seconds: float, own: float, others: float | None, load: float | None) -> Noise:
    disturbed = others is not None and others > DISTURBED_CORES
    reason = (
        f"other programs used {others:.2f} of {os.cpu_count()} cores while qcli measured (over "
        f"{DISTURBED_CORES:g} counts as disturbed): timings and ratios may be off"
        if disturbed
        else None
    )
    return Noise(
        round(seconds, 3), round(own, 3), None if others is None else round(others, 3), load, disturbed, reason
    )


class Monitor:
    """``with Monitor() as m: ...`` then ``m.noise``."""

    def __enter__(self) -> Monitor:
        self.wall, self.own, self.busy = time.monotonic(), time.process_time(), _busy_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self.wall, 1e-9)
        own = (time.process_time() - self.own) / wall
        busy = _busy_seconds()
        others = None
        if self.busy is not None and busy is not None:
            others = max(0.0, (busy - self.busy) / wall - own)
        try:
            load: float | None = round(os.getloadavg()[0], 2)
        except OSError:
            load = None
        self.noise = _noise(wall, own, others, load)
