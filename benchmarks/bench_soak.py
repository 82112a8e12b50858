"""Soak: 10,000 small writes through one event loop (local and memory), memory and fd counts.

Run ``python -m benchmarks.bench_soak [--writes N] [--backend asyncio|trio]``.
Prints, per destination kind, the writes per second and the resident memory, open
file descriptors and threads after a warm-up and at the end (and every tenth of
the way), so drift shows as a slope.  Numbers, not assertions: the CI test with a
modest count is tests/test_soak.py.  Also usable as a suite of ``python -m
benchmarks`` (``add_arguments`` / ``run``).
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import aiodicom
from benchmarks._harness import rss

MiB = 1024 * 1024


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def small_dataset() -> Dataset:
    """A 64x64 CT slice (8 KiB of Pixel Data): a small write."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Soak^Test"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(64 * 64, dtype="<u2").tobytes()
    return ds


def _kinds(directory: Path) -> dict[str, Callable[[int], Any]]:
    return {
        "local": lambda i: directory / f"{i % 100}.dcm",
        "bytesio": lambda i: io.BytesIO(),
        "bytearray": lambda i: bytearray(),
        "memory-url": lambda i: f"memory://aiodicom-bench-soak/{i % 100}.dcm",
    }


async def _soak(kind: str, destination: Callable[[int], Any], writes: int) -> dict[str, Any]:
    ds = small_dataset()
    warm = min(500, writes // 10)
    for i in range(warm):
        await aiodicom.dcmwrite(destination(i), ds)
    gc.collect()
    start_rss, start_fds, start_threads = rss(), _fds(), threading.active_count()
    samples = []
    step = max(1, writes // 10)
    started = time.perf_counter()
    for i in range(writes):
        await aiodicom.dcmwrite(destination(i), ds)
        if (i + 1) % step == 0:
            samples.append({"writes": i + 1, "rss_mib": round(rss() / MiB, 1), "fds": _fds()})
    seconds = time.perf_counter() - started
    gc.collect()
    return {
        "kind": kind,
        "writes": writes,
        "seconds": round(seconds, 3),
        "writes_per_second": round(writes / seconds),
        "rss_mib_start": round(start_rss / MiB, 1),
        "rss_mib_end": round(rss() / MiB, 1),
        "rss_growth_kib": round((rss() - start_rss) / 1024),
        "fds_start": start_fds,
        "fds_end": _fds(),
        "threads_start": start_threads,
        "threads_end": threading.active_count(),
        "samples": samples,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--writes", type=int, default=10_000, help="writes per kind")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="aiodicom-soak-") as tmp:

        async def main() -> None:
            for kind, destination in _kinds(Path(tmp)).items():
                results[kind] = await _soak(kind, destination, args.writes)
                print(json.dumps({k: v for k, v in results[kind].items() if k != "samples"}))

        anyio.run(main, backend=args.backend)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args())
