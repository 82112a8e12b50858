"""Bulk export: aiodicom.export vs a pydicom.dcmwrite loop and a ThreadPoolExecutor(16).

2,000 CT slices (512x512 uint16, 0.5 MiB each) are first written as files to a
source folder.  Each method then reads every file with ``pydicom.dcmread`` and
writes it to ``Study/Series/SOP.dcm`` under a fresh destination:

* ``pydicom-loop``: a plain sequential ``pydicom.dcmwrite`` loop;
* ``pydicom-threads16``: the same function in a ``ThreadPoolExecutor(16)``;
* ``aiodicom.export``: ``await aiodicom.export(folder, destination, concurrency=16)``.

Destinations: a local folder, and a bucket on a local S3 server (moto, started
here; the pydicom baselines write into a BytesIO, then s3fs ``pipe_file``).

Every method runs in its own fresh Python process, so its peak memory is its own:
the report gives the peak RSS (``VmHWM``: ``ru_maxrss`` would carry over the
parent's peak across fork and exec) and the peak above the RSS the process had
just before the export started (imports done, nothing read yet).
Rounds alternate the order of the methods; times are medians.

Run: ``python benchmarks/bench_export.py`` (or ``python -m benchmarks export``);
``--count 200`` for a quick run, ``--no-s3`` for the local folder only.  Writes
``benchmarks/results/export.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import rss, save_result  # noqa: E402

MiB = 1024 * 1024
METHODS = ("pydicom-loop", "pydicom-threads16", "aiodicom.export")
TEMPLATE = "{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"


# ------------------------------------------------------------------ source data


def make_sources(folder: Path, count: int) -> int:
    """Write `count` CT slices (0.5 MiB of Pixel Data each); return total bytes."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(2000)
    pixels = rng.integers(0, 4096, size=(512, 512), dtype="<u2")
    study = generate_uid()
    series = [generate_uid() for _ in range(max(1, count // 100))]
    total = 0
    for number in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series[number % len(series)]
        ds.PatientName = "Bench^Export"
        ds.PatientID = "BENCH"
        ds.Modality = "CT"
        ds.InstanceNumber = number
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.SamplesPerPixel = 1
        ds.PixelRepresentation = 0
        ds.PhotometricInterpretation = "MONOCHROME2"
        pixels[0, :8] = number  # every slice a little different
        ds.PixelData = pixels.tobytes()
        path = folder / f"{number:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


# --------------------------------------------------------- one method, one process


def _destination(root: str, ds: Any) -> str:
    return f"{root}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def _pydicom_local(root: str) -> Callable[[str], None]:
    import pydicom

    def one(path: str) -> None:
        ds = pydicom.dcmread(path)
        target = _destination(root, ds)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        pydicom.dcmwrite(target, ds)

    return one


def _pydicom_s3(root: str, options: dict[str, Any]) -> Callable[[str], None]:
    import pydicom
    import s3fs

    fs = s3fs.S3FileSystem(**options)

    def one(path: str) -> None:
        ds = pydicom.dcmread(path)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds)
        fs.pipe_file(_destination(root, ds), buffer.getvalue())

    return one


def child(args: argparse.Namespace) -> None:
    """Run one method once; print a JSON line with seconds and memory."""
    import anyio
    import pydicom  # noqa: F401  (imports before the baseline RSS)

    import aiodicom

    options = json.loads(args.storage_options) if args.storage_options else None
    sources = sorted(str(p) for p in Path(args.src).iterdir())
    if args.method == "aiodicom.export":
        if options:
            import s3fs  # noqa: F401
    else:
        one = _pydicom_s3(args.dst, options) if options else _pydicom_local(args.dst)

    base = rss()
    start = time.perf_counter()
    if args.method == "pydicom-loop":
        for path in sources:
            one(path)
        written = len(sources)
    elif args.method == "pydicom-threads16":
        with ThreadPoolExecutor(16) as pool:
            written = sum(1 for _ in pool.map(one, sources))
    else:

        async def main() -> aiodicom.ExportReport:
            return await aiodicom.export(
                args.src,
                args.dst,
                template=TEMPLATE,
                concurrency=args.concurrency,
                storage_options=options,
            )

        report = anyio.run(main, backend=args.backend)
        if not report.ok:
            raise SystemExit(f"export failed: {report.failures[:3]}")
        written = report.written
    seconds = time.perf_counter() - start
    peak = rss("VmHWM")
    print(json.dumps({"seconds": seconds, "written": written, "peak_rss": peak, "base_rss": base}))


def _run_child(
    method: str, src: Path, dst: str, args: argparse.Namespace, options: dict[str, Any] | None
) -> dict[str, Any]:
    argv = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--src",
        str(src),
        "--dst",
        dst,
        "--concurrency",
        str(args.concurrency),
        "--backend",
        args.backend,
    ]
    if options:
        argv += ["--storage-options", json.dumps(options)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------- the suite


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, default=2000, help="CT slices (0.5 MiB each)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every method")
    parser.add_argument("--concurrency", type=int, default=16, help="aiodicom.export's")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--no-s3", action="store_true", help="local folder only")
    parser.add_argument("--workdir", default=None, help="where the files go (default: temp)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-export-", dir=args.workdir))
    try:
        src = work / "src"
        src.mkdir()
        total = make_sources(src, args.count)
        print(f"{args.count} source files, {total / MiB:.0f} MiB in {src}", flush=True)
        results: dict[str, Any] = {
            "count": args.count,
            "source_mib": round(total / MiB, 1),
            "local": _suite(args, src, total, work, None),
        }
        if not args.no_s3:
            from tests import servers

            with servers.s3_server() as endpoint:
                results["s3"] = _suite(args, src, total, work, servers.s3_options(endpoint))
        _print_table(results)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _suite(
    args: argparse.Namespace, src: Path, total: int, work: Path, options: dict[str, Any] | None
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for r in range(args.rounds):
        order = METHODS[r % 3 :] + METHODS[: r % 3]
        for method in order:
            dst, check = _fresh_destination(work, method, options)
            result = _run_child(method, src, dst, args, options)
            result["verified"] = check(args.count)
            runs[method].append(result)
            print(
                f"  {'s3' if options else 'local'} {method}: {result['seconds']:.2f} s, "
                f"peak RSS {result['peak_rss'] / MiB:.0f} MiB "
                f"(+{(result['peak_rss'] - result['base_rss']) / MiB:.0f})",
                flush=True,
            )
            _clean(dst, options)
    out: dict[str, Any] = {}
    for method, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        out[method] = {
            "seconds": round(seconds, 3),
            "mib_per_second": round(total / MiB / seconds, 1),
            "items_per_second": round(args.count / seconds, 1),
            "peak_rss_mib": round(max(r["peak_rss"] for r in results) / MiB, 1),
            "peak_above_start_mib": round(
                max(r["peak_rss"] - r["base_rss"] for r in results) / MiB, 1
            ),
            "verified": all(r["verified"] for r in results),
            "all_seconds": [round(r["seconds"], 3) for r in results],
        }
    return out


def _fresh_destination(
    work: Path, method: str, options: dict[str, Any] | None
) -> tuple[str, Callable[[int], bool]]:
    """A new destination and a check: all files there, equal to pydicom's bytes."""
    import pydicom

    def expected(data: bytes) -> bool:
        """`data` equals what pydicom.dcmwrite writes for its source file."""
        number = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).InstanceNumber
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, pydicom.dcmread(work / "src" / f"{number:06d}.dcm"))
        return buffer.getvalue() == data

    if options is None:
        folder = work / f"out-{method}"
        folder.mkdir()

        def check_local(count: int) -> bool:
            files = sorted(p for p in folder.rglob("*.dcm"))
            return len(files) == count and all(
                expected(p.read_bytes()) for p in files[:: max(1, count // 20)]
            )

        return str(folder), check_local

    import s3fs

    fs = s3fs.S3FileSystem(**options)
    bucket = f"bench-{method.replace('.', '-')}-{os.getpid()}-{time.monotonic_ns()}"
    fs.mkdir(bucket)

    def check_s3(count: int) -> bool:
        fs.invalidate_cache()
        keys = sorted(fs.find(bucket))
        return len(keys) == count and all(
            expected(fs.cat_file(key)) for key in keys[:: max(1, count // 20)]
        )

    return f"s3://{bucket}", check_s3


def _clean(dst: str, options: dict[str, Any] | None) -> None:
    if options is None:
        shutil.rmtree(dst, ignore_errors=True)
        return
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.rm(dst, recursive=True)


def _print_table(results: dict[str, Any]) -> None:
    print(f"\n{results['count']} CT slices, {results['source_mib']} MiB")
    print(
        f"{'destination':<8} {'method':<20} {'seconds':>8} {'MiB/s':>7} {'items/s':>8} "
        f"{'peak RSS':>9} {'above start':>12} {'ok':>3}"
    )
    for where in ("local", "s3"):
        for method, r in results.get(where, {}).items():
            print(
                f"{where:<8} {method:<20} {r['seconds']:>8.2f} {r['mib_per_second']:>7.1f} "
                f"{r['items_per_second']:>8.1f} {r['peak_rss_mib']:>6.0f} MiB "
                f"{r['peak_above_start_mib']:>8.0f} MiB {'yes' if r['verified'] else 'NO':>3}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    parser.add_argument("--storage-options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.method = args.child
        child(args)
        return 0
    print(f"-> {save_result('export', args, run(args))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
