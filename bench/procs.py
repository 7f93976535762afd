"""What the processes of a running Certbus cost, read from /proc: memory (PSS) and CPU time, each
process counted with the processes it started (audit's pkilint worker, PostgreSQL's backends)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children_by_parent() -> dict[int, list[int]]:
    """Every live process's direct children, by parent pid (one pass over /proc)."""
    found: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        fields = _stat_fields(int(stat.parent.name))
        if fields is not None:
            found.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return found


def children(pid: int) -> list[int]:
    """The processes `pid` started that are alive now (direct children)."""
    return _children_by_parent().get(pid, [])


def pss_kib(pid: int) -> int:
    """A process's proportional resident set (PSS, KiB): its private pages plus its share of
    pages it shares with others, so that PostgreSQL's backends, which all touch the same shared
    buffers, add up to what they really hold (their RSS would count those buffers once each).
    0 if the process is gone."""
    return _kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def _kib(path: str, field: str) -> int:
    """The KiB figure of the line starting with `field` in a /proc file; 0 if it cannot be read."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(pid: int) -> int:
    """PSS of `pid` and its direct children (KiB)."""
    return pss_kib(pid) + sum(pss_kib(c) for c in children(pid))


def cpu_s(pid: int) -> float:
    """CPU time (user + system, seconds) `pid` has used so far, with that of the children it has
    waited for; 0 if it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    return sum(int(f) for f in fields[11:15]) / TICKS_PER_S


class CpuMeter:
    """CPU time used by named groups of processes between `start()` and `stop()`.

    Each group is read as the processes it names, with their live children, at both ends; a
    process there at the end but not at the start (a backend opened meanwhile) counts in full, one
    gone by the end counts what it had used at the start as nothing more (it cannot be read)."""

    def __init__(self) -> None:
        self._before: dict[str, dict[int, float]] = {}
        self.used_s: dict[str, float] = {}

    @staticmethod
    def _read(groups: Mapping[str, Iterable[int]]) -> dict[str, dict[int, float]]:
        read: dict[str, dict[int, float]] = {}
        by_parent = _children_by_parent()
        for name, pids in groups.items():
            tree = {p for pid in pids for p in (pid, *by_parent.get(pid, []))}
            read[name] = {p: cpu_s(p) for p in tree}
        return read

    def start(self, groups: Mapping[str, Iterable[int]]) -> None:
        self._before = self._read(groups)

    def stop(self, groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
        after = self._read(groups)
        self.used_s = {
            name: sum(max(0.0, now - self._before.get(name, {}).get(pid, 0.0)) for pid, now in pids.items() if now)
            for name, pids in after.items()
        }
        return self.used_s


def machine_context_switches() -> int:
    """Context switches the whole machine has made since boot (/proc/stat `ctxt`): every wake-up of
    a process, by a message or a reply, is one or two of them, so their count per certificate shows
    how many times the work was handed from process to process, more steadily than CPU time does on
    a shared machine."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    return 0


def rss_kib(pid: int) -> int:
    """A process's resident set (VmRSS, KiB) now; 0 if it is gone."""
    return _kib(f"/proc/{pid}/status", "VmRSS:")


class RssPeak:
    """The highest resident set of a process while a block runs (sampled every `every_s` in a
    thread), as growth over what it held when the block began: `with RssPeak(pid) as peak: ...`,
    then `peak.growth_mib`."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        self._pid, self._every_s = pid, every_s
        self.before_kib = self.peak_kib = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self._every_s):
            self.peak_kib = max(self.peak_kib, rss_kib(self._pid))

    def __enter__(self) -> RssPeak:
        self.before_kib = self.peak_kib = rss_kib(self._pid)
        self._thread = threading.Thread(target=self._sample, name="rss-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_kib = max(self.peak_kib, rss_kib(self._pid))

    @property
    def growth_mib(self) -> float:
        return round((self.peak_kib - self.before_kib) / 1024, 1)
