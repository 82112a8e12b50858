"""Bulk export: aiodicom against what a user would write by hand, each in its own process.

The table of issue 13.  1,000 CT slices (512x512 uint16, 0.5 MiB each) are first
written as files to a source folder.  Each method then reads every file with
``pydicom.dcmread`` and writes it, named ``{SOPInstanceUID}.dcm``:

* ``pydicom-loop``: a plain sequential ``pydicom.dcmread`` + ``pydicom.dcmwrite`` loop;
* ``pydicom-threads16``: a function that reads and writes one file, in a
  ``ThreadPoolExecutor(16)``;
* ``pydicom-processes``: the same function in a ``ProcessPoolExecutor(cpu_count)``
  (local folder only);
* ``aiodicom-cli``: ``aiodicom export SRC DST --template {SOPInstanceUID}.dcm -q``
  with its defaults (worker processes are chosen by itself);
* ``aiodicom-one-by-one`` (local folder only): the same with ``--workers 1
  --concurrency 1``, one process, one item at a time: its per-item overhead
  against the sequential loop.

Destinations: a local folder, and a bucket on a local S3 server (SeaweedFS when
``tests/servers.py install`` has installed it, moto otherwise; the pydicom
baselines write into a BytesIO, then s3fs ``pipe_file``).  Two more cases:
``--large`` (1 GiB multi-frame instances, folder to folder, against ``cp``),
``--many`` (100,000 small items: RSS at item 10,000 and at the end), and the
per-item overhead of one item at a time against the loop with sources and
destination on tmpfs ("overhead", medians of five rounds or more: on disk the
writeback moves a run by half from one round to the next).

The sequential loop is written inline, as a user writes it; the pools call a
function per file, as they must.

Every method runs in its own fresh Python process, so its time and peak memory are
its own: the time starts once the method's modules are imported, for every method;
peak RSS is ``VmHWM``, summed over the worker processes it started.
A first round of every method is run and not counted (the first run of a suite
is the only one on a disk without the writeback of an earlier run). Rounds
alternate the order of the methods; the report gives the best and the
median of the rounds and each method's ratio to the fastest hand-written method
and to the sequential loop (>1: aiodicom faster).

Run: ``python -m benchmarks export`` (``--count 200 --rounds 1`` for a quick run,
``--no-s3`` for the local folder only, ``--only s3`` or ``--only local`` for one
part of the table without the large and many-items cases).  Writes
``benchmarks/results/export.json`` (a partial run: a file in the temporary folder).
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
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import rss, save_result, settle_page_cache  # noqa: E402

MiB = 1024 * 1024
LOCAL_METHODS = (
    "pydicom-loop",
    "pydicom-threads16",
    "pydicom-processes",
    "aiodicom-cli",
    "aiodicom-one-by-one",
)
OURS = ("aiodicom-cli", "aiodicom-one-by-one")
S3_METHODS = ("pydicom-loop", "pydicom-threads16", "aiodicom-cli")
METHODS = LOCAL_METHODS
BASELINES = ("pydicom-loop", "pydicom-threads16", "pydicom-processes")
TEMPLATE = "{SOPInstanceUID}.dcm"


# ------------------------------------------------------------------ source data


def _ct(rows: int, uid: str, frames: int | None = None) -> Any:
    """A CT dataset with its File Meta Information and image attributes (16-bit
    native pixels of `rows` x `rows`), SOP Instance `uid`, no Pixel Data yet."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.Rows = ds.Columns = rows
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def make_sources(folder: Path, count: int) -> int:
    """Write `count` CT slices (0.5 MiB of Pixel Data each); return total bytes."""
    import numpy as np
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(2000)
    pixels = rng.integers(0, 4096, size=(512, 512), dtype="<u2")
    study = generate_uid()
    series = [generate_uid() for _ in range(max(1, count // 100))]
    total = 0
    for number in range(count):
        ds = _ct(512, generate_uid())
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series[number % len(series)]
        ds.PatientName = "Bench^Export"
        ds.PatientID = "BENCH"
        ds.Modality = "CT"
        ds.InstanceNumber = number
        pixels[0, :8] = number  # every slice a little different
        ds.PixelData = pixels.tobytes()
        path = folder / f"{number:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


# --------------------------------------------------------- one method, one process


def _destination(root: str, ds: Any) -> str:
    return f"{root}/{ds.SOPInstanceUID}.dcm"


class _PydicomLocal:
    """What a user writes: read, name, write (picklable, for the process pool)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self, path: str) -> None:
        import pydicom

        ds = pydicom.dcmread(path)
        pydicom.dcmwrite(_destination(self.root, ds), ds)


def _pydicom_local(root: str) -> Callable[[str], None]:
    return _PydicomLocal(root)


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


def _children_peak() -> int:
    """Peak RSS of this process's finished children (the worker processes)."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def child(args: argparse.Namespace) -> None:
    """Run one method once; print a JSON line with seconds and memory."""
    import pydicom  # imported before the baseline RSS, for every method

    options = json.loads(args.storage_options) if args.storage_options else None
    sources = sorted(str(p) for p in Path(args.src).iterdir())
    if options:
        import s3fs
    # imports and clients are not timed, for any method
    if args.method == "pydicom-loop":
        fs = s3fs.S3FileSystem(**options) if options else None
    elif args.method not in OURS:
        one = _pydicom_s3(args.dst, options) if options else _pydicom_local(args.dst)
    else:
        from aiodicom.cli import main as cli

    base = rss()
    start = time.perf_counter()
    if args.method == "pydicom-loop":
        # the loop as a user writes it: inline, the last dataset alive until the
        # next one is read.  (A function per item, as the pools need, made this
        # loop a third slower here: each return freed all its memory, glibc gave
        # the top of the heap back to the system, and the next item faulted it
        # in again.)
        if fs is not None:
            for path in sources:
                ds = pydicom.dcmread(path)
                buffer = io.BytesIO()
                pydicom.dcmwrite(buffer, ds)
                fs.pipe_file(_destination(args.dst, ds), buffer.getvalue())
        else:
            for path in sources:
                ds = pydicom.dcmread(path)
                pydicom.dcmwrite(_destination(args.dst, ds), ds)
    elif args.method == "pydicom-threads16":
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, sources))
    elif args.method == "pydicom-processes":
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(one, sources, chunksize=8))
    else:
        argv = ["export", args.src, args.dst, "--template", TEMPLATE, "-q"]
        if args.method == "aiodicom-one-by-one":
            argv += ["--workers", "1", "--concurrency", "1"]
        for key, value in _flatten(options or {}):
            argv += ["--storage-option", f"{key}={value}"]
        status = cli(argv)
        if status:
            raise SystemExit(f"aiodicom export exited with {status}")
    seconds = time.perf_counter() - start
    peak = rss("VmHWM") + _children_peak()
    print(
        json.dumps(
            {"seconds": seconds, "written": len(sources), "peak_rss": peak, "base_rss": base}
        )
    )


def _flatten(options: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in options.items():
        if isinstance(value, dict):
            out += _flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


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
    parser.add_argument("--count", type=int, default=1000, help="CT slices (0.5 MiB each)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every method")
    parser.add_argument("--no-s3", action="store_true", help="local folder only")
    parser.add_argument(
        "--only",
        choices=["local", "s3"],
        default=None,
        help="run only this part of the table (no large or many-items case either)",
    )
    parser.add_argument(
        "--s3-server", choices=["seaweedfs", "moto"], default=None, help="default: seaweedfs"
    )
    parser.add_argument("--workdir", default=None, help="where the files go (default: temp)")
    parser.add_argument(
        "--large-mib", type=int, default=1024, help="size of each large instance (0: skip)"
    )
    parser.add_argument("--large-count", type=int, default=2, help="large instances")
    parser.add_argument("--many", type=int, default=100_000, help="small items (0: skip)")


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
            "cores": len(os.sched_getaffinity(0)),
        }
        if args.only in (None, "local"):
            results["local"] = _suite(args, src, total, work, None, LOCAL_METHODS)
        if not args.no_s3 and args.only in (None, "s3"):
            from tests import servers

            server = args.s3_server or (
                "seaweedfs" if hasattr(servers, "seaweedfs_server") else "moto"
            )
            start = servers.seaweedfs_server if server == "seaweedfs" else servers.s3_server
            with start() as endpoint:
                options = servers.s3_options(endpoint)
                results["s3"] = _suite(args, src, total, work, options, S3_METHODS)
                results["s3"]["server"] = server
        shutil.rmtree(src)
        if args.large_mib and args.only is None:
            results["large"] = _large(args, work)
        if args.many and args.only is None:
            results["many"] = _many(args, work)
        if args.only in (None, "local"):
            overhead = _overhead(args)
            if overhead is not None:
                results["overhead"] = overhead
        _print_table(results)
        return results
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _suite(
    args: argparse.Namespace,
    src: Path,
    total: int,
    work: Path,
    options: dict[str, Any] | None,
    methods: tuple[str, ...],
) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    # Round -1 is not counted: the first run of a suite is the only one that
    # starts on a disk no earlier run has left writeback on (measured: the loop
    # took 0.94 s in it and 1.27-1.30 s in every later round), which made
    # whichever method came first look best.
    for r in range(-1, args.rounds):
        shift = r % len(methods)
        order = methods[shift:] + methods[:shift]
        for method in order:
            dst, check = _fresh_destination(work, method, options)
            settle_page_cache()
            result = _run_child(method, src, dst, args, options)
            result["verified"] = check(args.count)
            if r >= 0:
                runs[method].append(result)
            print(
                f"  {'s3' if options else 'local'} {method}"
                f"{' (warm-up, not counted)' if r < 0 else ''}: {result['seconds']:.2f} s, "
                f"peak RSS {result['peak_rss'] / MiB:.0f} MiB "
                f"(+{(result['peak_rss'] - result['base_rss']) / MiB:.0f})",
                flush=True,
            )
            _clean(dst, options)
    out: dict[str, Any] = {}
    for method, results in runs.items():
        seconds = min(r["seconds"] for r in results)
        out[method] = {
            "seconds": round(seconds, 3),
            "median_seconds": round(statistics.median(r["seconds"] for r in results), 3),
            "mib_per_second": round(total / MiB / seconds, 1),
            "items_per_second": round(args.count / seconds, 1),
            "peak_rss_mib": round(max(r["peak_rss"] for r in results) / MiB, 1),
            "peak_above_start_mib": round(
                max(r["peak_rss"] - r["base_rss"] for r in results) / MiB, 1
            ),
            "verified": all(r["verified"] for r in results),
            "all_seconds": [round(r["seconds"], 3) for r in results],
        }
    best = min(out[m]["seconds"] for m in methods if m in BASELINES)
    ours = out["aiodicom-cli"]["seconds"]
    out["ratios"] = {
        "vs_best_baseline": round(best / ours, 2),
        "vs_loop": round(out["pydicom-loop"]["seconds"] / ours, 2),
        "vs_threads16": round(out["pydicom-threads16"]["seconds"] / ours, 2),
    }
    if "aiodicom-one-by-one" in out:
        # one process, one item at a time: its time per item against the loop's
        out["ratios"]["one_by_one_time_vs_loop"] = round(
            out["aiodicom-one-by-one"]["seconds"] / out["pydicom-loop"]["seconds"], 2
        )
    # The same from the medians: on a disk, one round in a few escapes the
    # writeback of what the others wrote, and the best rounds are then luck.
    median = {m: out[m]["median_seconds"] for m in methods}
    best_median = min(median[m] for m in methods if m in BASELINES)
    out["ratios_of_medians"] = {
        "vs_best_baseline": round(best_median / median["aiodicom-cli"], 2),
        "vs_loop": round(median["pydicom-loop"] / median["aiodicom-cli"], 2),
        "vs_threads16": round(median["pydicom-threads16"] / median["aiodicom-cli"], 2),
    }
    if "aiodicom-one-by-one" in median:
        out["ratios_of_medians"]["one_by_one_time_vs_loop"] = round(
            median["aiodicom-one-by-one"] / median["pydicom-loop"], 2
        )
    return out


# ------------------------------------------- per-item overhead, without the disk

OVERHEAD_METHODS = ("pydicom-loop", "aiodicom-one-by-one")
OVERHEAD_ROUNDS = 5


def _overhead(args: argparse.Namespace) -> dict[str, Any] | None:
    """One item at a time against the loop, sources and destination in memory
    (tmpfs): the disk's writeback makes a run on disk vary by half from one round
    to the next, which hides a per-item overhead of some tens of microseconds.
    Medians of at least five alternating rounds; ``None`` without ``/dev/shm``."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shutil.disk_usage(shm).free < 3 * args.count * MiB:
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-export-overhead-", dir=shm))
    try:
        src = work / "src"
        src.mkdir()
        make_sources(src, args.count)
        rounds = max(args.rounds, OVERHEAD_ROUNDS)
        seconds: dict[str, list[float]] = {m: [] for m in OVERHEAD_METHODS}
        for r in range(rounds):
            order = OVERHEAD_METHODS[r % 2 :] + OVERHEAD_METHODS[: r % 2]
            for method in order:
                dst, check = _fresh_destination(work, method, None)
                result = _run_child(method, src, dst, args, None)
                if not check(args.count):
                    raise RuntimeError(f"{method} wrote other bytes than pydicom")
                seconds[method].append(result["seconds"])
                print(f"  tmpfs {method}: {result['seconds']:.3f} s", flush=True)
                shutil.rmtree(dst)
        median = {m: statistics.median(v) for m, v in seconds.items()}
        return {
            "where": "tmpfs",
            "rounds": rounds,
            "median_seconds": {m: round(v, 3) for m, v in median.items()},
            "all_seconds": {m: [round(x, 3) for x in v] for m, v in seconds.items()},
            "microseconds_per_item": {
                m: round(v / args.count * 1e6, 1) for m, v in median.items()
            },
            "one_by_one_time_vs_loop": round(
                median["aiodicom-one-by-one"] / median["pydicom-loop"], 2
            ),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------- large instances vs cp


def _make_large(folder: Path, count: int, mib: int) -> int:
    """`count` multi-frame CT instances of `mib` MiB, written without holding one
    in memory (the Pixel Data is a file-like value pydicom streams)."""
    import pydicom
    from pydicom.uid import generate_uid

    frame = 512 * 512 * 2
    frames = max(1, mib * MiB // frame)
    total = 0
    for number in range(count):
        pixels = folder / f"pixels-{number}.raw"
        block = os.urandom(frame)
        with open(pixels, "wb") as stream:
            for _ in range(frames):
                stream.write(block)
        ds = _ct(512, generate_uid(), frames)
        with open(pixels, "rb") as value:
            ds.PixelData = value
            path = folder / f"{number:03d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
        pixels.unlink()
        total += path.stat().st_size
    return total


def _large_child(args: argparse.Namespace) -> None:
    """One method on the large instances: ``cp`` or the aiodicom CLI."""
    from aiodicom.cli import main as cli

    base = rss()
    start = time.perf_counter()
    if args.method == "cp":
        subprocess.run(["cp", "-r", args.src, args.dst], check=True)
    else:
        if cli(["export", args.src, args.dst, "--template", TEMPLATE, "-q"]):
            raise SystemExit("aiodicom export failed")
    seconds = time.perf_counter() - start
    peak = rss("VmHWM") + _children_peak()
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "base_rss": base}))


def _large(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    src = work / "large-src"
    src.mkdir()
    total = _make_large(src, args.large_count, args.large_mib)
    print(f"{args.large_count} large instances, {total / MiB:.0f} MiB", flush=True)
    methods = ("cp", "aiodicom-cli")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for method in methods[r % 2 :] + methods[: r % 2]:
            dst = work / f"large-out-{method}"
            argv = [sys.executable, __file__, "--large-child", method]
            argv += ["--src", str(src), "--dst", str(dst)]
            settle_page_cache()
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode:
                raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[method].append(result)
            print(f"  large {method}: {result['seconds']:.2f} s", flush=True)
            shutil.rmtree(dst, ignore_errors=True)
    out: dict[str, Any] = {"instances": args.large_count, "mib_each": args.large_mib}
    for method, results in runs.items():
        seconds = min(r["seconds"] for r in results)
        out[method] = {
            "seconds": round(seconds, 3),
            "mib_per_second": round(total / MiB / seconds, 1),
            "peak_above_start_mib": round(
                max(r["peak_rss"] - r["base_rss"] for r in results) / MiB, 1
            ),
            "all_seconds": [round(r["seconds"], 3) for r in results],
        }
    out["throughput_vs_cp"] = round(out["cp"]["seconds"] / out["aiodicom-cli"]["seconds"], 2)
    shutil.rmtree(src)
    return out


# ------------------------------------------------------- memory over many items


def _tree_rss() -> int:
    """Resident memory of this process and its children (worker processes)."""
    me = os.getpid()
    total = rss()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            if parent == me:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


def _many_child(args: argparse.Namespace) -> None:
    """Export `args.count` small items; RSS (with workers) at item 10,000 and 1,000
    items before the end, the report streamed to a file, as the CLI does."""
    import anyio

    import aiodicom

    samples: dict[str, int] = {}

    def progress(p: Any) -> None:
        if p.done == 10_000:
            samples["at_10000"] = _tree_rss()
        if p.done == args.count - 1000:  # near the end, worker processes still running
            samples["at_end"] = _tree_rss()

    async def main() -> Any:
        return await aiodicom.export(
            args.src,
            args.dst,
            template=TEMPLATE,
            progress=progress,
            report=os.path.join(os.path.dirname(args.dst), "many-report.jsonl"),
            keep_items=False,
        )

    start = time.perf_counter()
    report = anyio.run(main)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "written": report.written, **samples}))


def _many(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pydicom
    from pydicom.uid import generate_uid

    src = work / "many-src"
    src.mkdir()
    prefix = generate_uid()[:40]
    ds = _ct(8, prefix)
    ds.PixelData = bytes(128)
    for number in range(args.many):
        ds.SOPInstanceUID = f"{prefix}.{number}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        pydicom.dcmwrite(src / f"{number:06d}.dcm", ds, enforce_file_format=True)
    print(f"{args.many} small items", flush=True)
    dst = work / "many-out"
    argv = [sys.executable, __file__, "--many-child", "aiodicom-cli", "--src", str(src)]
    argv += ["--dst", str(dst), "--count", str(args.many)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"many failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(src)
    shutil.rmtree(dst, ignore_errors=True)
    growth = result["at_end"] - result["at_10000"]
    print(f"  many: {result['seconds']:.1f} s, RSS growth {growth / MiB:.1f} MiB", flush=True)
    return {
        "items": args.many,
        "seconds": round(result["seconds"], 2),
        "rss_at_10000_mib": round(result["at_10000"] / MiB, 1),
        "rss_at_end_mib": round(result["at_end"] / MiB, 1),
        "rss_growth_mib": round(growth / MiB, 1),
    }


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
    bucket = f"bench-{method.replace('.', '-')}-{os.getpid()}-{time.monotonic_ns()}"[:63]
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
            if method in ("ratios", "ratios_of_medians", "server"):
                continue
            print(
                f"{where:<8} {method:<20} {r['seconds']:>8.2f} {r['mib_per_second']:>7.1f} "
                f"{r['items_per_second']:>8.1f} {r['peak_rss_mib']:>6.0f} MiB "
                f"{r['peak_above_start_mib']:>8.0f} MiB {'yes' if r['verified'] else 'NO':>3}"
            )
        if where in results:
            print(f"{where} ratios (>1: aiodicom faster): {results[where]['ratios']}")
            print(f"{where} ratios of medians: {results[where]['ratios_of_medians']}")
    if "large" in results:
        print(f"large: {results['large']}")
    if "many" in results:
        print(f"many: {results['many']}")
    if "overhead" in results:
        print(f"overhead (tmpfs): {results['overhead']['microseconds_per_item']} µs per item")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--child", choices=LOCAL_METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--large-child", choices=("cp", "aiodicom-cli"), help=argparse.SUPPRESS)
    parser.add_argument("--many-child", choices=("aiodicom-cli",), help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    parser.add_argument("--storage-options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.method = args.child
        child(args)
        return 0
    if args.large_child:
        args.method = args.large_child
        _large_child(args)
        return 0
    if args.many_child:
        _many_child(args)
        return 0
    print(f"-> {save(args, run(args))}")
    return 0


def save(args: argparse.Namespace, results: dict[str, Any]) -> Path:
    """Write the results: ``benchmarks/results/export.json`` for a full run; a
    partial one (``--only``) goes to the temporary folder, never in place of the
    full results (nor into the chart)."""
    if getattr(args, "only", None) is None:
        return save_result("export", args, results)
    partial = Path(tempfile.gettempdir()) / f"aiodicom-bench-export-{args.only}.json"
    partial.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return partial


if __name__ == "__main__":
    sys.exit(main())
