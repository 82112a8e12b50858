"""Regression tests (not timed) for the zero-copy promise and for leaving pydicom alone."""

from __future__ import annotations

import io
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

import aiodicom
from tests.datasets import random_image
from tests.helpers import HashingFile, RecordingSink, pydicom_bytes

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
EXTRA_LIMIT = 8 * MiB


@pytest.fixture(scope="module")
def dataset_200mib() -> Dataset:
    return random_image(200 * MiB + 1)


async def _peak_extra(coro_factory: object) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        await coro_factory()  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


async def test_200mib_write_does_not_copy_pixel_data(dataset_200mib: Dataset) -> None:
    sink = RecordingSink(keep="digest")
    extra = await _peak_extra(lambda: aiodicom.dcmwrite(sink, dataset_200mib))
    assert extra < EXTRA_LIMIT, f"{extra / MiB:.1f} MiB extra"
    reference = HashingFile()
    pydicom.dcmwrite(reference, deepcopy(dataset_200mib))
    assert sink.sha256.hexdigest() == reference.digest.hexdigest()


async def test_200mib_local_file_does_not_copy(dataset_200mib: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    extra = await _peak_extra(lambda: aiodicom.dcmwrite(path, dataset_200mib))
    assert extra < EXTRA_LIMIT, f"{extra / MiB:.1f} MiB extra"
    assert path.stat().st_size > 200 * MiB


async def test_deflated_200mib_streams_with_bounded_memory(dataset_200mib: Dataset) -> None:
    ds = deepcopy(dataset_200mib)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    sink = RecordingSink(keep="digest")
    extra = await _peak_extra(lambda: aiodicom.dcmwrite(sink, ds))
    # zlib's own state is ~256 KiB; one 4 MiB input slice is a view, not a copy
    assert extra < EXTRA_LIMIT, f"{extra / MiB:.1f} MiB extra"
    reference = HashingFile()
    pydicom.dcmwrite(reference, deepcopy(ds))
    assert sink.sha256.hexdigest() == reference.digest.hexdigest()


def test_zlib_output_does_not_depend_on_the_split() -> None:
    data = bytes(range(256)) * 40_000

    def deflate(pieces: Iterator[bytes]) -> bytes:
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return b"".join(compressor.compress(p) for p in pieces) + compressor.flush()

    whole = deflate(iter([data]))
    assert deflate(data[i : i + 7919] for i in range(0, len(data), 7919)) == whole


async def test_concurrent_plain_pydicom_is_unaffected(tmp_path: Path) -> None:
    """pydicom is never patched: a plain dcmwrite in another thread, at the same time
    as ours, writes exactly what it writes alone."""
    ds = random_image(16 * MiB + 1)
    alone = pydicom_bytes(ds)
    results: list[bytes] = []
    start = threading.Barrier(2)

    def plain() -> None:
        start.wait()
        for _ in range(5):
            out = io.BytesIO()
            pydicom.dcmwrite(out, deepcopy(ds))
            results.append(out.getvalue())

    thread = threading.Thread(target=plain)
    thread.start()
    start.wait()
    for i in range(5):
        await aiodicom.dcmwrite(tmp_path / f"{i}.dcm", ds)
    thread.join()
    assert results == [alone] * 5
    assert all((tmp_path / f"{i}.dcm").read_bytes() == alone for i in range(5))
    assert pydicom.filewriter.write_data_element.__module__ == "pydicom.filewriter"
