"""Small measuring tools shared by the benchmarks: alternating rounds, medians,
peak extra memory, event-loop stalls.  Numbers, never assertions."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import threading
import time
import tracemalloc
from argparse import Namespace
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

MiB = 1024 * 1024


def rss(field: str = "VmRSS") -> int:
    """Resident memory in bytes: now (``VmRSS``) or this process's peak since exec
    (``VmHWM``; ``ru_maxrss`` would carry a parent's peak over fork and exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_extra(fn: Callable[[], Any]) -> tuple[int, float]:
    """(peak RSS above the start, seconds) while `fn` runs, sampled every 5 ms
    and once more at the end."""
    base = rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - start
        stop.set()
        sampler.join()
    return max(peak[0], rss()) - base, elapsed


def settle_page_cache() -> None:
    """Write every dirty page out before a timed run (untimed).

    A method that writes 500 MiB leaves that much in the page cache to be written
    back; the next method, whichever it is, would be throttled by the kernel while
    that writeback runs (measured: the same 1,000 file writes took 0.1 s or 4 s).
    Every method starts from a clean cache, as it would on an idle machine."""
    os.sync()


def alternate(
    cases: dict[str, Callable[[], Any]],
    rounds: int,
    before: Callable[[str], Any] | None = None,
) -> dict[str, list[float]]:
    """Run every case once per round, rotating the order each round (A/B/C, B/C/A...),
    so that drift of a shared, noisy machine hits every case alike.  `before`, if
    given, is called with the case's name before each run, untimed."""
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if before is not None:
                before(name)
            gc.collect()
            settle_page_cache()
            start = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def peak_extra_memory(fn: Callable[[], Any]) -> int:
    """Peak Python-allocated bytes above the starting point while `fn` runs
    (tracemalloc sees every thread, numpy buffers and bytes objects included)."""
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


async def heartbeat_stalls(
    work: Callable[[], Awaitable[Any]], period: float = 0.001
) -> list[float]:
    """Lateness (seconds) of a `period` heartbeat while `work` runs in the same loop."""
    lateness: list[float] = []
    done = anyio.Event()

    async def beat() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await anyio.sleep(period)
            lateness.append(time.perf_counter() - start - period)

    async with anyio.create_task_group() as tg:
        tg.start_soon(beat)
        await anyio.sleep(0.01)
        await work()
        done.set()
    return lateness


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))
    return ordered[index]


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **{name: version(name) for name in ("aiodicom", "pydicom", "anyio", "fsspec")},
        "load_average": os.getloadavg(),
    }


RESULTS = Path(__file__).parent / "results"


def save_result(suite: str, args: Namespace, results: Any) -> Path:
    """Write ``benchmarks/results/<suite>.json``: the machine, the arguments and
    the results, as every suite records them."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{suite}.json"
    record = {"machine": machine(), "args": vars(args), "results": results}
    out.write_text(json.dumps(record, indent=2, default=str))
    return out
