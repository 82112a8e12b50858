"""What integrity costs: a 1 GiB streamed upload with and without checksums.

* One multi-frame CT of ``--big-mib`` MiB (1 GiB by default) is uploaded with
  ``FsspecFile(..., checksum=X)`` for X in none, crc32c (the default), sha256 and
  md5 (``--no-all-algorithms``: none and crc32c) to each of ``--stores``:
  SeaweedFS (S3, which checks the checksums), Azurite 3.37 (a CRC-64 per block
  and per Put Blob, whatever X, which it checks; ``--az-mib``, 256 MiB by
  default, as Azurite keeps everything in memory; plus the default with an MD5
  per block instead, as without anycrc) and fake-gcs-server (GCS: CRC32C, or
  MD5 with md5, on the final request; this server checks none, so it measures
  the client's side only).  Alternating rounds, medians; the overhead is
  relative to ``checksum=None``.
* Memory: peak Python allocations above the start (tracemalloc, every thread; one
  extra, untimed upload per algorithm) and peak RSS above the start during the
  timed uploads (sampled every 5 ms; noisy by a part or two, as freed memory is
  reused).  The checksums are computed over the part buffers the uploader sends
  anyway, so the peak must not move.
* CPU time, next to wall time: the uploading process's (``time.process_time``:
  every thread of this process, so encoding, hashing and the HTTP client) and the
  store server's (its processes' user + system time from ``/proc``: the servers
  run on the same machine, and Azurite computes a checksum of every block itself).
  On a real store the server's share is not on the user's cores; the client's is.
* The bare cost: :class:`aiodicom.Checksum` over the same bytes, in 8 MiB parts.

The acceptance bar of issue 16: CRC32C costs at most 10 % of the upload's
throughput and adds no memory.  Not run in CI.  Run: ``python -m benchmarks
checksum`` (needs ``python tests/servers.py install``); writes
``benchmarks/results/checksum.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import anyio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402  (sets AWS_DEFAULT_REGION before s3fs loads)

import aiodicom  # noqa: E402
from aiodicom.sinks._stores import azure as azure_store  # noqa: E402
from aiodicom.sinks.fsspec import FsspecFile  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    MiB,
    median,
    peak_extra_memory,
    peak_rss_extra,
    save_result,
)
from benchmarks.bench_s3 import ct  # noqa: E402

MD5_BLOCKS = "crc32c-md5-blocks"
"""On Azure: the default checksum with an MD5 per request instead of the CRC-64
(what aiodicom sends where anycrc is missing, and sent before the CRC-64)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the multi-frame")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--stores",
        default="s3,az,gs",
        help="comma-separated: s3 (SeaweedFS), az (Azurite), gs (fake-gcs-server)",
    )
    parser.add_argument(
        "--az-mib",
        type=int,
        default=256,
        help="object size for Azurite, which keeps every byte in memory (12 GB at most)",
    )
    parser.add_argument(
        "--all-algorithms",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also sha256 and md5 (the docs show them)",
    )
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])


def _bare_cost(data: bytes, algorithms: list[str], part: int) -> dict[str, float]:
    """MiB/s of :class:`aiodicom.Checksum` alone over `data`, in `part`-sized bytes."""
    view = memoryview(data)
    parts = [bytes(view[i : i + part]) for i in range(0, len(data), part)]
    speeds = {}
    for algorithm in algorithms:
        checksum = aiodicom.Checksum(algorithm)
        start = time.perf_counter()
        for chunk in parts:
            checksum.update(chunk)
        speeds[algorithm] = len(data) / MiB / (time.perf_counter() - start)
    return speeds


def _server_cpu_seconds() -> float:
    """User + system CPU seconds of this process's descendants that are running
    (the store server started for the benchmark), read from ``/proc``."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
    me, total = os.getpid(), 0
    for pid, tick in ticks.items():
        ancestor = parents.get(pid, 0)
        while ancestor > 1 and ancestor != me:
            ancestor = parents.get(ancestor, 0)
        if ancestor == me:
            total += tick
    return total / os.sysconf("SC_CLK_TCK")


def _timed(fn: Any) -> tuple[int, float, float, float]:
    """(peak RSS above the start, wall seconds, client CPU seconds, server CPU
    seconds) of one call of `fn`."""
    client, server = time.process_time(), _server_cpu_seconds()
    peak, seconds = peak_rss_extra(fn)
    return peak, seconds, time.process_time() - client, _server_cpu_seconds() - server


def run(args: argparse.Namespace) -> dict[str, Any]:
    algorithms: list[str | None] = [None, "crc32c"]
    if args.all_algorithms:
        algorithms += ["sha256", "md5"]
    big = ct(256, 256, frames=args.big_mib * MiB // (256 * 256 * 2))
    size_mib = len(big.PixelData) / MiB
    results: dict[str, Any] = {
        "object_MiB": size_mib,
        "bare_checksum_MiB_per_s": _bare_cost(
            # crc64nvme: the CRC-64 every request to Azure carries, whatever X is
            big.PixelData,
            [a for a in algorithms if a] + ["crc64nvme"],
            args.part_mib * MiB,
        ),
    }
    print(f"bare checksums (MiB/s): {results['bare_checksum_MiB_per_s']}")
    for store in args.stores.split(","):
        if store == "az" and args.az_mib != args.big_mib:
            big = ct(256, 256, frames=args.az_mib * MiB // (256 * 256 * 2))
            size_mib = len(big.PixelData) / MiB
        results[store] = {"object_MiB": size_mib}
        results[store].update(_one_store(store, big, size_mib, algorithms, args))
    return results


def _one_store(
    store: str, big: Any, size_mib: float, algorithms: list[str | None], args: argparse.Namespace
) -> dict[str, Any]:
    """Upload `big` once per algorithm and round to a fresh server of `store`."""
    import fsspec

    server = {
        "s3": servers.seaweedfs_server,
        "az": servers.azure_server,
        "gs": servers.gcs_server,
    }[store]()
    with server as endpoint:
        options, scheme = (
            {
                "s3": servers.s3_options,
                "az": servers.azure_options,
                "gs": servers.gcs_options,
            }[store](endpoint),
            store,
        )
        fs = fsspec.filesystem(scheme, **options)
        bucket = servers.fresh_name("bench")
        fs.mkdir(bucket)

        if store == "az":
            # what Azure cost before the CRC-64: the default with an MD5 per request
            # (as without anycrc)
            algorithms = [*algorithms, MD5_BLOCKS]

        def upload(algorithm: str | None) -> None:
            url = f"{scheme}://{bucket}/big-{uuid.uuid4().hex[:8]}.dcm"
            md5_blocks = algorithm == MD5_BLOCKS
            sink = FsspecFile.from_url(
                url,
                options,
                checksum="crc32c" if md5_blocks else algorithm,
                part_size=args.part_mib * MiB,
                concurrency=args.concurrency,
            )
            with (
                mock.patch.object(azure_store, "crc64nvme_available", return_value=False)
                if md5_blocks
                else contextlib.nullcontext()
            ):
                anyio.run(aiodicom.dcmwrite, sink, big, backend=args.backend)
            fs.rm(url)

        times: dict[str, list[float]] = {str(a): [] for a in algorithms}
        client: dict[str, list[float]] = {str(a): [] for a in algorithms}
        server: dict[str, list[float]] = {str(a): [] for a in algorithms}
        peaks: dict[str, list[int]] = {str(a): [] for a in algorithms}
        upload(None)  # warm up: connections, imports, the server's first allocations
        for r in range(args.rounds):
            order = algorithms[r % len(algorithms) :] + algorithms[: r % len(algorithms)]
            for algorithm in order:
                peak, seconds, cpu, cpu_server = _timed(partial(upload, algorithm))
                times[str(algorithm)].append(seconds)
                client[str(algorithm)].append(cpu)
                server[str(algorithm)].append(cpu_server)
                peaks[str(algorithm)].append(peak)
        traced = {str(a): peak_extra_memory(partial(upload, a)) for a in algorithms}
    base = median(times["None"])
    base_client, base_server = median(client["None"]), median(server["None"])
    per_store = {}
    for name, runs in times.items():
        seconds = median(runs)
        client_s, server_s = median(client[name]), median(server[name])
        extra_client, extra_server = client_s - base_client, server_s - base_server
        per_store[name] = {
            "median_s": seconds,
            "runs_s": runs,
            "MiB_per_s": size_mib / seconds,
            "overhead_pct": 100 * (seconds - base) / base,
            "client_cpu_s": client_s,
            "client_cpu_runs_s": client[name],
            "client_cpu_overhead_pct": 100 * extra_client / base_client,
            "server_cpu_s": server_s,
            "server_cpu_runs_s": server[name],
            "server_cpu_overhead_pct": 100 * extra_server / base_server,
            # of the CPU time the checksums add, the share spent in the uploading
            # process (the rest is the server's checking)
            "client_share_of_extra_cpu_pct": (
                100 * extra_client / (extra_client + extra_server)
                if extra_client + extra_server > 0
                else 0.0
            ),
            "peak_rss_extra_MiB": max(peaks[name]) / MiB,
            "tracemalloc_peak_MiB": traced[name] / MiB,
        }
        print(
            f"{store} checksum={name:17}: {size_mib / seconds:7.1f} MiB/s, "
            f"overhead {per_store[name]['overhead_pct']:+5.1f} % "
            f"(client CPU {client_s:5.2f} s {per_store[name]['client_cpu_overhead_pct']:+5.1f} %, "
            f"server CPU {server_s:5.2f} s {per_store[name]['server_cpu_overhead_pct']:+5.1f} %), "
            f"peak RSS +{max(peaks[name]) / MiB:.0f} MiB, "
            f"allocations +{traced[name] / MiB:.0f} MiB"
        )
    return per_store


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(f"wrote {save_result('checksum', args, run(args))}")


if __name__ == "__main__":
    main()
