"""A trio program writing many DICOM files concurrently with aiodicom.

Writes each of pydicom's bundled example datasets ``COPIES`` times into a folder,
at most ``LIMIT`` at a time (a ``trio.CapacityLimiter``), with ``exist_ok=False``
so that a name used twice is an error rather than a silent overwrite.  The event
loop stays responsive throughout: a heartbeat task measures the longest stall.

Run: ``python examples/trio_concurrent.py [FOLDER]`` (default ``./trio-out``).
"""

from __future__ import annotations

import os
import sys

import trio
from pydicom import examples
from pydicom.dataset import Dataset

import aiodicom

COPIES = 4
LIMIT = 8
DATASETS = ("ct", "mr", "rgb_color", "palette_color", "jpeg2k", "overlay", "waveform")


def load_datasets() -> dict[str, Dataset]:
    """pydicom's examples (reading them is blocking file I/O: do it before the loop)."""
    return {name: getattr(examples, name) for name in DATASETS}


async def write_all(folder: str, datasets: dict[str, Dataset]) -> list[str]:
    """Write every dataset `COPIES` times into `folder`; return the paths written."""
    await trio.Path(folder).mkdir(parents=True, exist_ok=True)
    limiter = trio.CapacityLimiter(LIMIT)
    written: list[str] = []

    async def write_one(name: str, copy: int) -> None:
        path = os.path.join(folder, f"{name}-{copy}.dcm")
        async with limiter:
            await aiodicom.dcmwrite(path, datasets[name], exist_ok=False)
        written.append(path)

    async with trio.open_nursery() as nursery:
        for name in datasets:
            for copy in range(COPIES):
                nursery.start_soon(write_one, name, copy)
    return sorted(written)


async def main(folder: str = "trio-out") -> list[str]:
    datasets = await trio.to_thread.run_sync(load_datasets)
    stalls: list[float] = []

    async def heartbeat() -> None:
        while True:
            before = trio.current_time()
            await trio.sleep(0.001)
            stalls.append(trio.current_time() - before - 0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat)
        started = trio.current_time()
        written = await write_all(folder, datasets)
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    print(
        f"wrote {len(written)} files into {folder} in {elapsed * 1e3:.0f} ms; "
        f"longest event-loop stall {max(stalls, default=0) * 1e3:.1f} ms"
    )
    return written


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:2])
