"""Export a folder of DICOM files to a local folder or object storage, with progress.

    python examples/export_folder.py                   # pydicom's examples -> exported-example
    python examples/export_folder.py /data/scans out/  # a folder of your own
    python examples/export_folder.py /data/scans memory://out
    python examples/export_folder.py /data/scans s3://bucket/prefix   # needs s3fs + credentials

Runs the export twice: the second run skips everything the first one wrote, which
is how an interrupted export is resumed.  Works the same under trio
(``anyio.run(main, backend="trio")``).
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
from pydicom.data import get_testdata_file

import aiodicom

PYDICOM_EXAMPLES = [
    "CT_small.dcm",
    "MR_small.dcm",
    "examples_jpeg2k.dcm",
    "examples_overlay.dcm",
    "examples_rgb_color.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "waveform_ecg.dcm",
]


def show(progress: aiodicom.ExportProgress) -> None:
    """Called after every item: print one line per item."""
    item = progress.item
    line = f"[{progress.done:>4}/{progress.total or '?'}] {item.status:<7} {item.source}"
    if item.error is not None and item.status is aiodicom.Status.FAILED:
        line += f"  ({type(item.error).__name__}: {item.error})"
    print(line)


async def main(source: Any, destination: str) -> int:
    total = len(source) if isinstance(source, list) else None
    for attempt in ("first run", "second run (nothing left to do)"):
        print(f"--- {attempt}")
        report = await aiodicom.export(
            source,
            destination,
            template="{PatientID}/{Modality}/{SOPInstanceUID}.dcm",
            concurrency=8,
            skip_existing=True,  # re-running resumes instead of rewriting
            progress=show,
            total=total,
        )
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    args = sys.argv[1:]
    if args:
        source: Any = args[0]
    else:
        source = [get_testdata_file(name) for name in PYDICOM_EXAMPLES]
    destination = args[1] if len(args) > 1 else "exported-example"
    sys.exit(anyio.run(main, source, destination))
