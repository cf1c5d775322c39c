"""``gwray compare`` run as a subprocess and watched from outside, for ``bench/sweep_scale.py``:
its stderr lines with their arrival times, the driver's peak RSS and CPU-seconds (/proc), the
object store's peak use, kills by the compaction module's test hook, and the pairs stage's
figures read off its summary line.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


LAUNCH = """
import os, re, sys, threading, time
def sample(path):  # the object store's use, as Ray reports it, every 5 s; the peak to a file
    import ray
    from ray._private.internal_api import memory_summary
    peak = -1
    while True:
        time.sleep(5)
        try:
            where = ray.is_initialized() and ray.get_runtime_context().gcs_address  # this run's Ray
            m = where and re.search(r"Plasma memory usage (\\d+) MiB",
                                    memory_summary(address=where, stats_only=True))
        except Exception:
            continue
        if m and int(m[1]) > peak:
            peak = int(m[1])
            with open(path, "w") as f:
                f.write(str(peak))
threading.Thread(target=sample, args=(os.environ["GWRAY_BENCH_STORE"],), daemon=True).start()
from gwray.cli import main
sys.exit(main(sys.argv[1:]))
"""
"""The driver: ``gwray.cli`` itself, plus a thread that samples the object store (Ray's
``memory_summary``; across all nodes on a cluster)."""


class Driver:
    """``gwray compare`` as a subprocess in its own session (the embedded Ray's processes join
    it), watched: stderr lines with their arrival times, every 0.5 s the driver's peak RSS
    (VmHWM) and CPU-seconds, and the object store's peak use (:data:`LAUNCH`)."""

    def __init__(self, config: Path, out: Path, env: dict | None = None, address: str | None = None,
                 sets: list[str] = ()):
        cmd = [sys.executable, "-c", LAUNCH, "compare", str(config), "--out", str(out),
               *(a for kv in sets for a in ("--set", kv))]
        self.store_file = Path(tempfile.mkstemp(prefix="gwray-store-")[1])
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
               "GWRAY_BENCH_STORE": str(self.store_file), **(env or {})}
        if address:
            env["RAY_ADDRESS"] = address
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     start_new_session=True)
        self.lines: list[tuple] = []  # (seconds since start, line, driver CPU-s, driver peak RSS)
        self.peak_rss, self.cpu = 0, 0.0
        self._readers = [threading.Thread(target=self._read, args=(s,), daemon=True)
                         for s in (self.proc.stderr, self.proc.stdout)]
        for r in self._readers:
            r.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _read(self, stream) -> None:
        buf = b""
        for chunk in iter(lambda: stream.read1(65536), b""):
            buf += chunk
            *whole, buf = re.split(rb"[\r\n]", buf)
            now = time.perf_counter() - self.t0
            self.lines += [(now, line.decode(errors="replace"), self.cpu, self.peak_rss)
                           for line in whole if line.strip()]

    def _sample(self) -> None:
        while self.proc.poll() is None:
            self._sample_once()
            time.sleep(0.5)

    def _sample_once(self) -> None:
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return
        self.cpu = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        hwm = re.search(r"VmHWM:\s+(\d+) kB", status)  # absent once the process has exited
        self.peak_rss = max(self.peak_rss, int(hwm[1]) * 1024 if hwm else 0)

    def wait(self) -> int:
        """The exit status, once the driver and what it left of its session are gone;
        ``store_peak`` then holds the largest object-store use sampled, in bytes."""
        rc = self.proc.wait()
        text = self.store_file.read_text().strip()
        self.store_file.unlink()
        self.store_peak = max(int(text), 0) * 2**20 if text else 0
        for r in self._readers:
            r.join(timeout=10)
        kill_session(self.proc.pid)
        return rc

    def first(self, pattern: str) -> tuple | None:
        """(seconds, match, driver CPU-s, driver peak RSS) of the first stderr/stdout line
        matching ``pattern``."""
        for t, line, cpu, peak in self.lines:
            m = re.search(pattern, line)
            if m:
                return t, m, cpu, peak
        return None

    def stages(self) -> dict:
        """Seconds each pipeline stage took, from the driver's progress lines."""
        marks = [(name, self.first(pattern)) for name, pattern in (
            ("activations", r"\] run '"), ("pairs", r"\] pairs: "), ("communities", r"\] communities: "),
            ("report", r"\] report: "), ("end", r"\] done: "))]
        marks = [(name, m[0]) for name, m in marks if m]
        return {a: round(tb - ta, 1) for (a, ta), (_, tb) in zip(marks, marks[1:])}

    def tail(self, k: int = 15) -> str:
        return "\n".join(line for _, line, *_ in self.lines[-k:])


def _session(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def kill_session(sid: int) -> None:
    """SIGKILL every process left in session ``sid`` (a killed driver's Ray agents linger)."""
    for _ in range(50):
        pids = _session(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


TOTALS = (r"GW pairs: (\d+) total, (\d+) solved, (\d+) already on disk, (\d+) cost matrices; "
          r"([\d.]+) s wall, ([\d.]+) solver-s on (\d+) workers; (\d+) files in pairs/")


def pairs_stage(d: Driver) -> dict:
    """What the driver's stderr says about its pairs stage (the totals line, the stage's start);
    ``{"solved": 0}`` when it only assembled the matrices (every pair was on disk)."""
    end = d.first(TOTALS)
    if end is None and d.first(r"every pair is in pairs/: assembling"):
        return {"solved": 0}
    if end is None:
        raise RuntimeError(f"no pairs totals line; the driver said:\n{d.tail()}")
    start = d.first(r"pairs: GW of every layer pair")
    m = end[1]
    return {"pairs": int(m[1]), "solved": int(m[2]), "resumed": int(m[3]), "costs": int(m[4]),
            "wall": float(m[5]), "solver": float(m[6]), "workers": int(m[7]), "files": int(m[8]),
            "driver_cpu": end[2] - start[2], "driver_peak_pairs": end[3]}


def progress_after(d: Driver, done_before: int) -> float | None:
    """Seconds from the driver's start to its first progress line past ``done_before`` pairs."""
    for t, line, *_ in d.lines:
        m = re.search(r"GW pairs:.*?(\d+)/(\d+) \[", line)
        if m and int(m[1]) > done_before:
            return t
    return None


def run_compare(config: Path, out: Path, **kw) -> Driver:
    """One ``gwray compare`` to the end (an error if it fails)."""
    d = Driver(config, out, **kw)
    rc = d.wait()
    if rc:
        raise RuntimeError(f"gwray compare exited {rc}:\n{d.tail()}")
    return d


def killed_run(config: Path, out: Path, hook: str) -> Driver:
    """A run whose driver SIGKILLs itself at ``hook`` (the compaction module's test hook)."""
    d = Driver(config, out, env={"GWRAY_TEST_KILL": hook})
    if d.wait() != -signal.SIGKILL:
        raise RuntimeError(f"the driver was not killed at {hook}:\n{d.tail()}")
    return d
