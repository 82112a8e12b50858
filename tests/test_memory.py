"""Regression tests (not timed) for the zero-copy promise and for leaving pydicom alone."""

from __future__ import annotations

import hashlib
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
from aiodicom.sinks import Chunk
from tests.test_write import make_dataset

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
EXTRA_LIMIT = 8 * MiB


class HashingSink:
    """Keeps nothing but a running digest, so only the writer's own memory shows."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def open(self, *, exist_ok: bool) -> HashingSink:
        return self

    def write(self, chunk: Chunk, /) -> None:
        self.digest.update(chunk)
        self.size += len(memoryview(chunk).cast("B"))

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


class HashingFile(io.RawIOBase):
    """A write-only file object for pydicom that keeps only a digest."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.digest.update(b)
        return len(memoryview(b).cast("B"))

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0


@pytest.fixture(scope="module")
def dataset_200mib() -> Dataset:
    return make_dataset(200 * MiB + 1)


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
    sink = HashingSink()
    extra = await _peak_extra(lambda: aiodicom.dcmwrite(sink, dataset_200mib))
    assert extra < EXTRA_LIMIT, f"{extra / MiB:.1f} MiB extra"
    reference = HashingFile()
    pydicom.dcmwrite(reference, deepcopy(dataset_200mib))
    assert sink.digest.hexdigest() == reference.digest.hexdigest()


async def test_200mib_local_file_does_not_copy(dataset_200mib: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    extra = await _peak_extra(lambda: aiodicom.dcmwrite(path, dataset_200mib))
    assert extra < EXTRA_LIMIT, f"{extra / MiB:.1f} MiB extra"
    assert path.stat().st_size > 200 * MiB


async def test_deflated_200mib_streams_with_bounded_memory(dataset_200mib: Dataset) -> None:
    ds = deepcopy(dataset_200mib)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    sink = HashingSink()
    extra = await _peak_extra(lambda: aiodicom.dcmwrite(sink, ds))
    # zlib's own state is ~256 KiB; one 4 MiB input slice is a view, not a copy
    assert extra < EXTRA_LIMIT, f"{extra / MiB:.1f} MiB extra"
    reference = HashingFile()
    pydicom.dcmwrite(reference, deepcopy(ds))
    assert sink.digest.hexdigest() == reference.digest.hexdigest()


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
    ds = make_dataset(16 * MiB + 1)
    alone = io.BytesIO()
    pydicom.dcmwrite(alone, deepcopy(ds))
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
    assert results == [alone.getvalue()] * 5
    assert all((tmp_path / f"{i}.dcm").read_bytes() == alone.getvalue() for i in range(5))
    assert pydicom.filewriter.write_data_element.__module__ == "pydicom.filewriter"
