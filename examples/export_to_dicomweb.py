"""Export a folder of DICOM files to a DICOMweb server (STOW-RS), many per request.

    python examples/export_to_dicomweb.py URL [FOLDER]
    python examples/export_to_dicomweb.py http://localhost:8042/dicom-web ~/scans

URL is the server's DICOMweb base URL (Orthanc: ``http://HOST:8042/dicom-web``;
Google: ``https://healthcare.googleapis.com/v1/projects/P/locations/L/datasets/D/
dicomStores/S/dicomWeb``; Azure: ``https://WORKSPACE-SERVICE.dicom.azurehealthcareapis.com/v2``).
A bearer token, if the server needs one, is read from ``DICOMWEB_TOKEN``.  Without
FOLDER, pydicom's example files are sent.

Each file is read and encoded in a worker thread while its request streams, four
requests are in flight, and every instance gets its own result: stored, exists
(the server holds it already) or failed, with the server's reason.  Works the same
under trio (``anyio.run(main, ..., backend="trio")``).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import anyio
import pydicom
from anyio.streams.memory import MemoryObjectReceiveStream
from pydicom.data import get_testdata_file

import aiodicom
from aiodicom.sinks import DicomWeb, StowResult, StowStatus

PYDICOM_EXAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "waveform_ecg.dcm"]
REQUESTS_IN_FLIGHT = 4


def encode(path: Path) -> aiodicom.EncodePlan:
    """Read one file and plan its encoding (called in a worker thread, once per
    attempt, so that a retried instance is read again instead of kept in memory)."""
    return aiodicom.prepare(pydicom.dcmread(path), enforce_file_format=True)


async def send_all(
    sink: DicomWeb, items: MemoryObjectReceiveStream[tuple[Path, object]]
) -> list[StowResult[Path]]:
    """One worker: requests of up to `sink.batch_count` instances, one after another."""
    results = []
    async with items:
        async for result in sink.store_many(items):
            note = f" ({result.error})" if result.error else ""
            print(f"{result.status:<7} {result.label}{note}")
            results.append(result)
    return results


async def main(url: str, paths: Iterable[Path]) -> int:
    sink = DicomWeb(url, token=os.environ.get("DICOMWEB_TOKEN"), batch_count=16)
    send, receive = anyio.create_memory_object_stream[tuple[Path, object]](REQUESTS_IN_FLIGHT)
    results: list[StowResult[Path]] = []

    async def worker(items: MemoryObjectReceiveStream[tuple[Path, object]]) -> None:
        results.extend(await send_all(sink, items))

    async with sink, anyio.create_task_group() as group:  # one connection pool
        for _ in range(REQUESTS_IN_FLIGHT):
            group.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for path in paths:
                await send.send((path, functools.partial(encode, path)))

    counts = {status: sum(r.status is status for r in results) for status in StowStatus}
    print(", ".join(f"{n} {status}" for status, n in counts.items()))
    return 0 if counts[StowStatus.FAILED] == 0 else 1


def files(folder: str | None) -> list[Path]:
    if folder is None:
        return [Path(get_testdata_file(name)) for name in PYDICOM_EXAMPLES]
    return sorted(p for p in Path(folder).expanduser().rglob("*") if p.is_file())


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        sys.exit(__doc__)
    sys.exit(anyio.run(main, sys.argv[1], files(sys.argv[2] if len(sys.argv) == 3 else None)))
