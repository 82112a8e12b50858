"""Bulk export on Dask: aiodicom.dask.export with 1 and 2 worker processes vs
aiodicom.export on this machine alone.

2,000 CT slices (512x512 uint16, 0.5 MiB each) are first written as files to a
source folder (by ``benchmarks.bench_export.make_sources``).  Each method then
exports the folder to ``Study/Series/SOP.dcm`` under a fresh local destination,
with ``concurrency=16`` per task:

* ``aiodicom.export``: with its defaults (worker processes, one per core; the
  ratio column is named ``vs_single_process`` for this baseline: one machine);
* ``dask-local``: ``aiodicom.dask.export`` without a client (Dask's threaded
  scheduler, in this process);
* ``dask-1-worker`` / ``dask-2-workers``: a ``LocalCluster`` of 1 or 2 worker
  processes with one thread each, started before the clock starts.

The timed part includes listing the source folder on the client and gathering the
report.  Rounds alternate the order of the methods; times are medians.  Every
output is checked (count, and a sample compared byte for byte with the source
written by pydicom).

Run: ``python benchmarks/bench_dask.py`` (``--count 200`` for a quick run).
Writes ``benchmarks/results/dask.json``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
METHODS = ("aiodicom.export", "dask-local", "dask-1-worker", "dask-2-workers")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=2000, help="CT slices (default 2000)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every method")
    parser.add_argument("--concurrency", type=int, default=16, help="items in flight per task")
    parser.add_argument(
        "--partition-size", type=int, default=50, help="items per Dask task (default 50)"
    )
    parser.add_argument("--workdir", help="where sources and outputs go (default: a temp dir)")


def _verify(source: Path, destination: Path, count: int) -> bool:
    import pydicom

    outputs = sorted(p for p in destination.rglob("*.dcm"))
    if len(outputs) != count:
        return False
    by_uid = {p.stem: p for p in outputs}
    for path in sorted(source.iterdir())[:: max(1, count // 20)]:
        ds = pydicom.dcmread(path)
        if by_uid[str(ds.SOPInstanceUID)].read_bytes() != path.read_bytes():
            return False
    return True


def run(args: argparse.Namespace) -> dict[str, Any]:
    import anyio
    from distributed import Client, LocalCluster

    import aiodicom
    import aiodicom.dask
    from benchmarks.bench_export import make_sources

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aiodicom-bench-dask-"))
    source = work / "src"
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    total_bytes = make_sources(source, args.count)
    common: dict[str, Any] = {"concurrency": args.concurrency}

    clusters = {
        name: LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        for name, n in (("dask-1-worker", 1), ("dask-2-workers", 2))
    }
    clients = {name: Client(c, set_as_default=False) for name, c in clusters.items()}
    for client in clients.values():  # imports done before the clock starts
        client.run(importlib.import_module, "aiodicom.dask")
    try:

        def single(dst: Path) -> aiodicom.ExportReport:
            async def main() -> aiodicom.ExportReport:
                return await aiodicom.export(source, dst, **common)

            return anyio.run(main)

        def on_dask(client: Any) -> Callable[[Path], aiodicom.ExportReport]:
            def go(dst: Path) -> aiodicom.ExportReport:
                return aiodicom.dask.export(
                    source, dst, client=client, partition_size=args.partition_size, **common
                )

            return go

        cases: dict[str, Callable[[Path], aiodicom.ExportReport]] = {
            "aiodicom.export": single,
            "dask-local": on_dask(None),
            **{name: on_dask(client) for name, client in clients.items()},
        }
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        verified: dict[str, bool] = dict.fromkeys(METHODS, True)
        for r in range(args.rounds):
            order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
            for name in order:
                dst = work / "dst"
                shutil.rmtree(dst, ignore_errors=True)
                start = time.perf_counter()
                report = cases[name](dst)
                seconds = time.perf_counter() - start
                times[name].append(seconds)
                ok = report.ok and report.written == args.count
                verified[name] &= ok and _verify(source, dst, args.count)
                print(f"  {name:16s} {seconds:7.2f} s  {report.summary()}", file=sys.stderr)
                shutil.rmtree(dst, ignore_errors=True)
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    results: dict[str, Any] = {"count": args.count, "source_mib": round(total_bytes / MiB, 1)}
    base = statistics.median(times["aiodicom.export"])
    for name in METHODS:
        seconds = statistics.median(times[name])
        results[name] = {
            "seconds": round(seconds, 3),
            "mib_per_second": round(total_bytes / MiB / seconds, 1),
            "items_per_second": round(args.count / seconds, 1),
            "vs_single_process": round(base / seconds, 2),
            "verified": verified[name],
            "all_seconds": [round(t, 3) for t in times[name]],
        }
    return results


def _print_table(results: dict[str, Any]) -> None:
    print(f"{results['count']} CT slices, {results['source_mib']} MiB")
    print(f"{'method':16s} {'seconds':>8s} {'MiB/s':>7s} {'items/s':>8s} {'x single':>8s}  ok")
    for name in METHODS:
        row = results[name]
        print(
            f"{name:16s} {row['seconds']:8.2f} {row['mib_per_second']:7.1f} "
            f"{row['items_per_second']:8.1f} {row['vs_single_process']:8.2f}  {row['verified']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    from benchmarks._harness import save_result

    results = run(args)
    _print_table(results)
    print(f"wrote {os.path.relpath(save_result('dask', args, results))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
