"""Export a folder of DICOM files to a DICOMweb server (STOW-RS), many per request.

    python examples/export_to_dicomweb.py URL [FOLDER]
    python examples/export_to_dicomweb.py http://localhost:8042/dicom-web ~/scans

URL is the server's DICOMweb base URL (Orthanc: ``http://HOST:8042/dicom-web``;
Google: ``https://healthcare.googleapis.com/v1/projects/P/locations/L/datasets/D/
dicomStores/S/dicomWeb``; Azure: ``https://WORKSPACE-SERVICE.dicom.azurehealthcareapis.com/v2``).
A bearer token, if the server needs one, is read from ``DICOMWEB_TOKEN``.  Without
FOLDER, pydicom's example files are sent.

``aiodicom.export`` does the work: up to 16 files per request (in source order), four
requests in flight, each file read and encoded in a worker thread while its request
streams, and a result per instance: written (with the server's RetrieveURL), or
failed with the server's reason.  The same from a shell::

    aiodicom export FOLDER dicomweb+URL -j 4 --storage-option-json batch_count=16

Works the same under trio (``anyio.run(main, ..., backend="trio")``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
from pydicom.data import get_testdata_file

import aiodicom

PYDICOM_EXAMPLES = ["CT_small.dcm", "MR_small.dcm", "rtdose.dcm", "waveform_ecg.dcm"]


def show(progress: aiodicom.ExportProgress) -> None:
    item = progress.item
    note = f" ({item.error})" if item.error else ""
    print(f"{item.status:<7} {item.source} -> {item.destination}{note}")


async def main(url: str, paths: Sequence[Path]) -> int:
    report = await aiodicom.export(
        paths,
        "dicomweb+" + url,
        storage_options={"token": os.environ.get("DICOMWEB_TOKEN"), "batch_count": 16},
        concurrency=4,  # requests in flight
        enforce_file_format=True,  # STOW-RS takes DICOM files: File Meta Information
        progress=show,
    )
    print(report.summary())
    return 0 if report.ok else 1


def files(folder: str | None) -> list[Path]:
    if folder is None:
        return [Path(get_testdata_file(name)) for name in PYDICOM_EXAMPLES]
    return sorted(p for p in Path(folder).expanduser().rglob("*") if p.is_file())


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        sys.exit(__doc__)
    sys.exit(anyio.run(main, sys.argv[1], files(sys.argv[2] if len(sys.argv) == 3 else None)))
