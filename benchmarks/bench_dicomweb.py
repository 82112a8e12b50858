"""DICOMweb STOW-RS to a local Orthanc: streamed (aiodicom) vs encoded to bytes first.

One large multi-frame instance (1 GiB of Pixel Data by default) is stored in
Orthanc (with its DICOMweb plugin, started here on loopback) two ways:

* ``aiodicom``: ``aiodicom.dcmwrite(DicomWeb(url), ds)``: the multipart body is
  produced from the encoder's chunks as it is sent (chunked transfer encoding);
* ``bytes first``: what DICOMweb clients commonly do: ``pydicom.dcmwrite`` into a
  ``BytesIO``, the whole ``multipart/related`` body built as ``bytes``, then one
  ``httpx`` POST.

For each: wall time, and the peak memory *above* what the dataset itself takes
(tracemalloc peak over all threads, and sampled RSS), each case in a fresh process
so that one case's peak does not hide the other's.  Numbers, not assertions; not
run in CI.

Run: ``python -m benchmarks dicomweb [--mib 1024]`` (or
``python benchmarks/bench_dicomweb.py``); needs Orthanc and its DICOMweb plugin
(``python tests/servers.py install``).  Writes ``benchmarks/results/dicomweb.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._harness import MiB, peak_rss_extra, save_result  # noqa: E402

CASES = ("aiodicom", "bytes first")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mib", type=int, default=1024, help="Pixel Data of the instance, MiB (default 1024)"
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each case (default 1)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.servers import orthanc_server

    results: dict[str, Any] = {"mib": args.mib, "cases": {}}
    with orthanc_server() as url:
        base = url + "/dicom-web"
        for _ in range(args.rounds):
            for case in CASES:
                argv = ["--case", case, "--url", base, "--mib", str(args.mib)]
                out = subprocess.run(
                    [sys.executable, __file__, *argv],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                ).stdout
                measured = json.loads(out.strip().splitlines()[-1])
                results["cases"].setdefault(case, []).append(measured)
    _print(results)
    return results


def _print(results: dict[str, Any]) -> None:
    print(f"one instance, {results['mib']} MiB of Pixel Data, to Orthanc (STOW-RS)")
    print(f"{'case':<12} {'seconds':>8} {'peak extra traced MiB':>22} {'peak extra RSS MiB':>19}")
    for case, runs in results["cases"].items():
        for row in runs:
            print(
                f"{case:<12} {row['seconds']:8.2f} {row['peak_extra_traced_MiB']:22.1f} "
                f"{row['peak_extra_rss_MiB']:19.1f}"
            )


# ----------------------------------------------------------------------------- one case


def _dataset(mib: int) -> Any:
    from pydicom.uid import generate_uid
    from tests import datasets

    ds = datasets.multiframe(mib * MiB)
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    return ds


def _aiodicom(url: str, ds: Any) -> None:
    import anyio

    import aiodicom
    from aiodicom.sinks import DicomWeb

    anyio.run(aiodicom.dcmwrite, DicomWeb(url), ds)


def _bytes_first(url: str, ds: Any) -> None:
    import httpx
    import pydicom

    out = io.BytesIO()
    pydicom.dcmwrite(out, ds)
    boundary = "bench-boundary-0123456789abcdef"
    body = b"".join(
        [
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
            out.getvalue(),
            f"\r\n--{boundary}--\r\n".encode(),
        ]
    )
    del out
    response = httpx.post(
        f"{url}/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=600,
    )
    response.raise_for_status()


def _one_case(case: str, url: str, mib: int) -> dict[str, Any]:
    import gc
    import tracemalloc

    ds = _dataset(mib)
    gc.collect()
    traced = [0, 0]  # at the start, peak

    def send() -> None:
        tracemalloc.start()
        traced[0] = tracemalloc.get_traced_memory()[0]
        (_aiodicom if case == "aiodicom" else _bytes_first)(url, ds)
        traced[1] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    rss_extra, seconds = peak_rss_extra(send)
    return {
        "seconds": seconds,
        "peak_extra_traced_MiB": (traced[1] - traced[0]) / MiB,
        "peak_extra_rss_MiB": rss_extra / MiB,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:  # a child process: one case, one JSON line
        print(json.dumps(_one_case(args.case, args.url, args.mib)))
        return 0
    print(f"-> {save_result('dicomweb', args, run(args))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
