"""S3 uploads to a local moto server: aiodicom vs pydicom.dcmwrite + s3fs pipe.

* 200 CT slices (0.5 MiB each), one by one and 16 at a time, against
  ``pydicom.dcmwrite`` into a BytesIO followed by s3fs ``pipe_file``, sequentially
  and in a ThreadPoolExecutor(16).  Alternating rounds, medians.
* One large multi-frame (1 GiB by default): upload time and peak extra memory
  (tracemalloc, all threads; and sampled RSS) for aiodicom's streaming multipart
  upload and for the BytesIO + pipe baseline.

Run: ``python -m benchmarks s3`` (or ``python benchmarks/bench_s3.py``); needs the
servers installed by ``python tests/servers.py install``.  Writes
``benchmarks/results/s3.json``.
"""

from __future__ import annotations

import argparse
import io
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests import servers  # noqa: E402  (sets AWS_DEFAULT_REGION before s3fs loads)

import aiodicom  # noqa: E402
from aiodicom.sinks.fsspec import FsspecFile  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    MiB,
    alternate,
    median,
    peak_extra_memory,
    peak_rss_extra,
    save_result,
)


def ct(rows: int = 512, columns: int = 512, frames: int | None = None, seed: int = 0) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = f"Bench^{seed}"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames is None:
        rng = np.random.default_rng(seed)
        ds.PixelData = rng.integers(0, 4096, rows * columns, dtype="<u2").tobytes()
    else:  # bytes built without a second full-size copy
        frame = np.arange(rows * columns, dtype="<u2").tobytes()
        ds.PixelData = frame * frames
    return ds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the multi-frame")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import s3fs

    with servers.s3_server() as endpoint:
        options = servers.s3_options(endpoint)
        fs = s3fs.S3FileSystem(**options)
        bucket = servers.fresh_name("bench")
        fs.mkdir(bucket)
        slices = [ct(seed=i) for i in range(args.slices)]
        n = args.concurrency

        def keys() -> list[str]:
            run_id = uuid.uuid4().hex[:8]
            return [f"{bucket}/{run_id}/{i:04d}.dcm" for i in range(len(slices))]

        def aiodicom_sequential() -> None:
            async def main() -> None:
                for ds, key in zip(slices, keys(), strict=True):
                    await aiodicom.dcmwrite(f"s3://{key}", ds, storage_options=options)

            anyio.run(main, backend=args.backend)

        def aiodicom_concurrent() -> None:
            async def main() -> None:
                limiter = anyio.Semaphore(n)

                async def one(ds: Dataset, key: str) -> None:
                    async with limiter:
                        await aiodicom.dcmwrite(f"s3://{key}", ds, storage_options=options)

                async with anyio.create_task_group() as tg:
                    for ds, key in zip(slices, keys(), strict=True):
                        tg.start_soon(one, ds, key)

            anyio.run(main, backend=args.backend)

        def pipe_one(ds: Dataset, key: str) -> None:
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, ds)
            fs.pipe_file(key, buffer.getvalue())

        def pydicom_sequential() -> None:
            for ds, key in zip(slices, keys(), strict=True):
                pipe_one(ds, key)

        def pydicom_threads() -> None:
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(pipe_one, slices, keys()))

        cases = {
            "aiodicom, one by one": aiodicom_sequential,
            f"aiodicom, {n} at a time": aiodicom_concurrent,
            "pydicom + s3fs pipe, sequential": pydicom_sequential,
            f"pydicom + s3fs pipe, ThreadPoolExecutor({n})": pydicom_threads,
        }
        times = alternate(cases, args.rounds)
        slice_mib = len(slices[0].PixelData) / MiB
        many = {
            name: {
                "median_s": median(t),
                "runs_s": t,
                "files_per_s": len(slices) / median(t),
                "MiB_per_s": len(slices) * slice_mib / median(t),
            }
            for name, t in times.items()
        }
        slices.clear()  # free them before the large upload

        big = ct(256, 256, frames=args.big_mib * MiB // (256 * 256 * 2))
        big_mib = len(big.PixelData) / MiB

        uploaded: list[str] = []

        def big_key() -> str:
            uploaded.append(f"{bucket}/big-{uuid.uuid4().hex[:8]}.dcm")
            return uploaded[-1]

        def aiodicom_big(**kwargs: Any) -> Any:
            def go() -> None:
                sink = FsspecFile.from_url(f"s3://{big_key()}", options, **kwargs)
                anyio.run(aiodicom.dcmwrite, sink, big, backend=args.backend)

            return go

        def pydicom_big() -> None:
            pipe_one(big, big_key())

        large: dict[str, Any] = {}
        for name, fn in [
            ("aiodicom (8 MiB parts, concurrency 1: default)", aiodicom_big()),
            ("aiodicom (8 MiB parts, concurrency 4)", aiodicom_big(concurrency=4)),
            ("pydicom + s3fs pipe", pydicom_big),
        ]:
            rss, seconds = peak_rss_extra(fn)
            fs.rm(uploaded.pop())  # keep moto's memory in check
            traced = peak_extra_memory(fn)
            fs.rm(uploaded.pop())
            large[name] = {
                "seconds": seconds,
                "MiB_per_s": big_mib / seconds,
                "peak_extra_traced_MiB": traced / MiB,
                "peak_extra_rss_MiB": rss / MiB,
            }

    _print_table(many, large, args.slices, big_mib)
    return {
        "slices": {"count": args.slices, "MiB_each": slice_mib, "cases": many},
        "multiframe": {"MiB": big_mib, "cases": large},
    }


def _print_table(many: dict[str, Any], large: dict[str, Any], count: int, big_mib: float) -> None:
    print(f"\n{count} CT slices of 0.5 MiB to moto S3 (median of rounds)")
    print(f"{'case':48} {'seconds':>8} {'files/s':>8}")
    for name, row in many.items():
        print(f"{name:48} {row['median_s']:8.2f} {row['files_per_s']:8.1f}")
    print(f"\none multi-frame of {big_mib:.0f} MiB")
    print(f"{'case':48} {'seconds':>8} {'MiB/s':>8} {'traced MiB':>11} {'RSS MiB':>8}")
    for name, row in large.items():
        print(
            f"{name:48} {row['seconds']:8.2f} {row['MiB_per_s']:8.1f} "
            f"{row['peak_extra_traced_MiB']:11.1f} {row['peak_extra_rss_MiB']:8.1f}"
        )
    print()


def main(argv: list[str] | None = None) -> int:
    """Stand-alone run: the same numbers and JSON as ``python -m benchmarks s3``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    print(f"-> {save_result('s3', args, run(args))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
