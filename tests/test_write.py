"""The driver and the local and memory sinks: atomic publish, rollback, cancellation,
exclusive create under races, odd destinations."""

from __future__ import annotations

import gzip
import io
import os
import threading
from collections.abc import Callable, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import aiofiles
import anyio
import anyio.from_thread
import anyio.lowlevel
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

import aiodicom
from aiodicom.sinks import Chunk
from tests.datasets import random_image
from tests.helpers import (
    AsyncRecordingSink,
    FailingFile,
    RecordingSink,
    WriteOnly,
    drained,
    listing,
    open_fds,
    pydicom_bytes,
)

pytestmark = pytest.mark.anyio


def with_file_pixels(ds: Dataset, fileobj: io.BufferedIOBase) -> Dataset:
    ds = deepcopy(ds)
    ds.PixelData = fileobj
    return ds


# --- local files -------------------------------------------------------------------


async def test_local_path_types(tmp_path: Path) -> None:
    ds = random_image()
    expected = pydicom_bytes(ds, enforce_file_format=True)
    for i, dest in enumerate(
        [str(tmp_path / "a.dcm"), os.fsencode(tmp_path / "b.dcm"), tmp_path / "c.dcm"]
    ):
        await aiodicom.dcmwrite(dest, ds, enforce_file_format=True)
        assert Path(os.fsdecode(dest)).read_bytes() == expected, i
    assert listing(tmp_path) == ["a.dcm", "b.dcm", "c.dcm"]


async def test_new_file_mode_follows_umask(tmp_path: Path) -> None:
    pydicom.dcmwrite(tmp_path / "ref.dcm", random_image(1024))
    await aiodicom.dcmwrite(tmp_path / "ours.dcm", random_image(1024))
    assert (tmp_path / "ours.dcm").stat().st_mode == (tmp_path / "ref.dcm").stat().st_mode


async def test_overwrite_keeps_mode_and_replaces_content(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"old")
    path.chmod(0o640)
    ds = random_image()
    await aiodicom.dcmwrite(path, ds, enforce_file_format=True)
    assert path.read_bytes() == pydicom_bytes(ds, enforce_file_format=True)
    assert path.stat().st_mode & 0o777 == 0o640


async def test_exist_ok_false_and_overwrite_alias(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"old")
    for kwargs in ({"exist_ok": False}, {"overwrite": False}):
        with pytest.raises(FileExistsError) as info:
            await aiodicom.dcmwrite(path, random_image(), **kwargs)
        assert str(info.value) == f"[Errno 17] File exists: '{path}'"
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["x.dcm"]
    await aiodicom.dcmwrite(path, random_image(1024), overwrite=True)
    assert path.read_bytes() != b"old"


async def test_missing_directory_is_pydicoms_error(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "x.dcm"
    with pytest.raises(FileNotFoundError) as ours:
        await aiodicom.dcmwrite(path, random_image(1024))
    with pytest.raises(FileNotFoundError) as theirs:
        pydicom.dcmwrite(path, random_image(1024))
    assert str(ours.value) == str(theirs.value)
    assert listing(tmp_path) == []


async def test_symlink_target_is_replaced_link_kept(tmp_path: Path) -> None:
    target = tmp_path / "target.dcm"
    target.write_bytes(b"old")
    link = tmp_path / "link.dcm"
    link.symlink_to(target)
    ds = random_image()
    await aiodicom.dcmwrite(link, ds, enforce_file_format=True)
    assert link.is_symlink()
    assert target.read_bytes() == pydicom_bytes(ds, enforce_file_format=True)
    assert listing(tmp_path) == ["link.dcm", "target.dcm"]


async def test_dev_null_is_written_in_place() -> None:
    await aiodicom.dcmwrite("/dev/null", random_image())
    assert os.path.exists("/dev/null")
    assert not Path("/dev/null").is_file()


async def test_fifo_receives_pydicoms_bytes(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    ds = random_image()
    with drained(fifo) as received:
        await aiodicom.dcmwrite(fifo, ds, enforce_file_format=True)
    assert bytes(received) == pydicom_bytes(ds, enforce_file_format=True)


async def test_fsync_option(tmp_path: Path) -> None:
    ds = random_image()
    path = tmp_path / "x.dcm"
    await aiodicom.dcmwrite(
        aiodicom.sinks.LocalFile(path, fsync=True), ds, enforce_file_format=True
    )
    assert path.read_bytes() == pydicom_bytes(ds, enforce_file_format=True)


async def test_32_concurrent_exclusive_writers_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "race.dcm"
    datasets = [random_image(256 * 1024, seed=i) for i in range(32)]
    outcomes: list[BaseException | None] = [None] * 32

    async def write(i: int) -> None:
        try:
            await aiodicom.dcmwrite(path, datasets[i], exist_ok=False, enforce_file_format=True)
        except FileExistsError as exc:
            outcomes[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(32):
            tg.start_soon(write, i)

    winners = [i for i, outcome in enumerate(outcomes) if outcome is None]
    assert len(winners) == 1
    assert all(isinstance(o, FileExistsError) for i, o in enumerate(outcomes) if i != winners[0])
    assert path.read_bytes() == pydicom_bytes(datasets[winners[0]], enforce_file_format=True)
    assert listing(tmp_path) == ["race.dcm"]


# --- failure and cancellation part-way, for every sink ----------------------------


class Destination:
    """One kind of destination: how to make it, and what it holds."""

    def __init__(
        self,
        name: str,
        make: Callable[[Path], Any],
        content: Callable[[Any, Path], bytes],
        rolls_back: bool = True,
    ) -> None:
        self.name = name
        self.make = make
        self.content = content
        self.rolls_back = rolls_back

    def __repr__(self) -> str:
        return self.name


def _bytesio(_: Path) -> io.BytesIO:
    buffer = io.BytesIO(b"0123456789")
    buffer.seek(4)
    return buffer


def _dicombytesio(_: Path) -> DicomBytesIO:
    buffer = DicomBytesIO(b"0123456789")
    buffer.seek(10)
    return buffer


def _existing_file(tmp_path: Path) -> Path:
    path = tmp_path / "existing.dcm"
    path.write_bytes(b"previous content")
    return path


DESTINATIONS = [
    Destination("new-file", lambda t: t / "new.dcm", lambda d, t: d.read_bytes()),
    Destination("existing-file", _existing_file, lambda d, t: d.read_bytes()),
    Destination("bytesio", _bytesio, lambda d, t: d.getvalue() + bytes([d.tell()])),
    Destination("dicombytesio", _dicombytesio, lambda d, t: d.getvalue() + bytes([d.tell()])),
    Destination("bytearray", lambda t: bytearray(b"previous"), lambda d, t: bytes(d)),
    Destination(
        "user-sink", lambda t: RecordingSink(published=b"previous"), lambda d, t: d.published
    ),
    Destination(
        "user-async-sink",
        lambda t: AsyncRecordingSink(published=b"previous"),
        lambda d, t: d.published,
    ),
]


def _before(dest: Destination, target: Any, tmp_path: Path) -> bytes:
    if dest.name == "new-file":
        return b"<absent>"
    return dest.content(target, tmp_path)


def _after(dest: Destination, target: Any, tmp_path: Path) -> bytes:
    if dest.name == "new-file":
        return b"<absent>" if not target.exists() else target.read_bytes()
    return dest.content(target, tmp_path)


PIXELS = 6 * 4 * 1024 * 1024 + 3  # several 4 MiB chunks, odd length


@pytest.fixture(scope="module")
def big_dataset() -> Dataset:
    ds = random_image(PIXELS - 3)
    return ds


@pytest.mark.parametrize("dest", DESTINATIONS, ids=repr)
@pytest.mark.parametrize("fail_at", [1, 3, 6])
async def test_failure_part_way_leaves_nothing(
    dest: Destination, fail_at: int, tmp_path: Path, big_dataset: Dataset
) -> None:
    target = dest.make(tmp_path)
    before = _before(dest, target, tmp_path)
    fds = len(open_fds())
    source = FailingFile(bytes(PIXELS), fail_at)
    ds = with_file_pixels(big_dataset, source)
    with pytest.raises(OSError, match="disk on fire"):
        await aiodicom.dcmwrite(target, ds, enforce_file_format=True)
    assert source.reads >= fail_at
    assert _after(dest, target, tmp_path) == before
    assert [n for n in listing(tmp_path) if "aiodicom" in n] == []
    assert len(open_fds()) <= fds  # no growth; a GC may close an earlier test's socket


@pytest.mark.parametrize("dest", DESTINATIONS, ids=repr)
@pytest.mark.parametrize("cancel_at", [1, 2, 5])
async def test_cancellation_part_way_leaves_nothing(
    dest: Destination, cancel_at: int, tmp_path: Path, big_dataset: Dataset
) -> None:
    target = dest.make(tmp_path)
    before = _before(dest, target, tmp_path)
    fds = len(open_fds())
    with anyio.CancelScope() as scope:
        source = FailingFile(
            bytes(PIXELS), cancel_at, on_read=lambda: anyio.from_thread.run_sync(scope.cancel)
        )
        await aiodicom.dcmwrite(target, with_file_pixels(big_dataset, source))
    assert scope.cancelled_caught
    # prompt: cancelled within a chunk or two of the request, not at the end
    assert source.reads <= cancel_at + 2
    assert _after(dest, target, tmp_path) == before
    assert [n for n in listing(tmp_path) if "aiodicom" in n] == []
    assert len(open_fds()) <= fds  # no growth; a GC may close an earlier test's socket


@pytest.mark.parametrize("deadline", [0.0, 0.001, 0.01, 0.05])
async def test_move_on_after_during_large_write(tmp_path: Path, deadline: float) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"previous")
    ds = random_image(64 * 1024 * 1024)
    with anyio.move_on_after(deadline):
        await aiodicom.dcmwrite(path, ds)
    # either untouched or complete, never in between
    assert path.read_bytes() in (b"previous", pydicom_bytes(ds))
    assert listing(tmp_path) == ["x.dcm"]


async def test_threads_do_not_leak(tmp_path: Path) -> None:
    ds = random_image(1024)
    await aiodicom.dcmwrite(tmp_path / "warm.dcm", ds)
    threads = threading.active_count()
    for i in range(20):
        with pytest.raises(FileExistsError):
            await aiodicom.dcmwrite(tmp_path / "warm.dcm", ds, exist_ok=False)
        await aiodicom.dcmwrite(io.BytesIO(), ds)
        await aiodicom.dcmwrite(tmp_path / f"{i}.dcm", ds)
    assert threading.active_count() <= threads + 1


# --- memory and file-like destinations --------------------------------------------


async def test_bytesio_written_at_position_like_pydicom() -> None:
    ds = random_image(2048)
    ours, theirs = io.BytesIO(b"prefix-"), io.BytesIO(b"prefix-")
    ours.seek(3)
    theirs.seek(3)
    await aiodicom.dcmwrite(ours, ds)
    pydicom.dcmwrite(theirs, deepcopy(ds))
    assert ours.getvalue() == theirs.getvalue()
    assert ours.tell() == theirs.tell()
    assert not ours.closed


async def test_bytearray_is_appended() -> None:
    ds = random_image(2048)
    buffer = bytearray(b"head")
    await aiodicom.dcmwrite(buffer, ds)
    assert bytes(buffer) == b"head" + pydicom_bytes(ds)


async def test_dicombytesio_gets_encoding_like_pydicom() -> None:
    ds = random_image(2048)
    ours, theirs = DicomBytesIO(), DicomBytesIO()
    await aiodicom.dcmwrite(ours, ds, implicit_vr=False, little_endian=True)
    pydicom.dcmwrite(theirs, deepcopy(ds), implicit_vr=False, little_endian=True)
    assert ours.getvalue() == theirs.getvalue()
    assert (ours.is_little_endian, ours.is_implicit_VR) == (True, False)


async def test_write_only_destination() -> None:
    ds = random_image()
    sink = WriteOnly()
    await aiodicom.dcmwrite(sink, ds, enforce_file_format=True)
    assert bytes(sink.data) == pydicom_bytes(ds, enforce_file_format=True)


async def test_gzip_file_like_pydicom(tmp_path: Path) -> None:
    ds = random_image()
    with gzip.GzipFile(tmp_path / "ours.gz", "wb", mtime=0) as f:
        await aiodicom.dcmwrite(f, ds, enforce_file_format=True)
    with gzip.GzipFile(tmp_path / "theirs.gz", "wb", mtime=0) as f:
        pydicom.dcmwrite(f, deepcopy(ds), enforce_file_format=True)
    assert gzip.decompress((tmp_path / "ours.gz").read_bytes()) == pydicom_bytes(
        ds, enforce_file_format=True
    )


async def test_os_pipe() -> None:
    ds = random_image()
    read_fd, write_fd = os.pipe()
    with drained(read_fd) as received, open(write_fd, "wb", buffering=0) as pipe:
        await aiodicom.dcmwrite(pipe, ds, enforce_file_format=True)
    assert bytes(received) == pydicom_bytes(ds, enforce_file_format=True)


async def test_anyio_async_file(tmp_path: Path) -> None:
    ds = random_image()
    async with await anyio.open_file(tmp_path / "x.dcm", "wb") as f:
        await aiodicom.dcmwrite(f, ds, enforce_file_format=True)
    assert (tmp_path / "x.dcm").read_bytes() == pydicom_bytes(ds, enforce_file_format=True)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_aiofiles_file(tmp_path: Path) -> None:
    # aiofiles is asyncio-only
    ds = random_image()
    async with aiofiles.open(tmp_path / "x.dcm", "wb") as f:
        await aiodicom.dcmwrite(f, ds, enforce_file_format=True)
    assert (tmp_path / "x.dcm").read_bytes() == pydicom_bytes(ds, enforce_file_format=True)


async def test_async_file_rolled_back_on_failure(tmp_path: Path, big_dataset: Dataset) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"previous")
    async with await anyio.open_file(path, "r+b") as f:
        await f.seek(0, os.SEEK_END)
        ds = with_file_pixels(big_dataset, FailingFile(bytes(PIXELS), 3))
        with pytest.raises(OSError, match="disk on fire"):
            await aiodicom.dcmwrite(f, ds)
        assert await f.tell() == len(b"previous")
    assert path.read_bytes() == b"previous"


async def test_user_sink_receives_uncopied_pixel_slices() -> None:
    ds = random_image(8 * 1024 * 1024)
    pixels = ds.PixelData
    spy = RecordingSink(keep="chunks")
    await aiodicom.dcmwrite(spy, ds)
    views = [c for c in spy.chunks if isinstance(c, memoryview)]
    assert views, "Pixel Data should pass through as memoryview slices"
    assert all(v.obj is pixels for v in views)
    assert b"".join(bytes(c) for c in spy.chunks) == pydicom_bytes(ds)


def iter_chunks(ds: Dataset) -> Iterator[Chunk]:
    return aiodicom.prepare(ds).chunks()


def test_core_chunks_concatenate_to_pydicoms_bytes() -> None:
    ds = random_image(3 * 1024 * 1024 + 17)
    assert b"".join(bytes(c) for c in iter_chunks(ds)) == pydicom_bytes(ds)


class _EncodeAheadSink:
    """An async sink that opts into ``encode_ahead`` and keeps what it is given."""

    encode_ahead = True

    def __init__(self) -> None:
        self.committed: bytes | None = None

    async def open_async(self, *, exist_ok: bool) -> _KeepingWriter:
        return _KeepingWriter(self)


class _KeepingWriter:
    def __init__(self, sink: _EncodeAheadSink) -> None:
        self.sink = sink
        self.chunks: list[bytes] = []

    async def write(self, chunk: Chunk, /) -> None:
        self.chunks.append(bytes(chunk))
        await anyio.lowlevel.checkpoint()

    async def commit(self) -> None:
        self.sink.committed = b"".join(self.chunks)

    async def abort(self) -> None:
        self.chunks = []


class _PlainAsyncSink(_EncodeAheadSink):
    encode_ahead = False


def test_encode_ahead_defaults_to_false_for_async_sinks_only() -> None:
    from aiodicom.sinks import capabilities

    class Declares:
        async def open_async(self, *, exist_ok: bool) -> Any: ...

    class Sync:
        def open(self, *, exist_ok: bool) -> Any: ...

    assert capabilities(Declares()).encode_ahead is False
    assert capabilities(Sync()).encode_ahead is True
    assert capabilities(_EncodeAheadSink()).encode_ahead is True


def test_export_wrappers_keep_the_sinks_encode_ahead() -> None:
    from aiodicom._export.destination import CountingAsyncSink, CountingSink
    from aiodicom.sinks import FileObject, capabilities

    assert capabilities(CountingAsyncSink(_EncodeAheadSink())).encode_ahead is True
    assert capabilities(CountingAsyncSink(_PlainAsyncSink())).encode_ahead is False
    assert capabilities(CountingSink(FileObject(io.BytesIO()))).encode_ahead is False


@pytest.mark.parametrize("sink_class", [_EncodeAheadSink, _PlainAsyncSink])
@pytest.mark.parametrize("kind", ["light", "deflated"])
async def test_async_sink_with_or_without_encode_ahead_gets_pydicoms_bytes(
    sink_class: type[_EncodeAheadSink], kind: str
) -> None:
    from aiodicom._core import is_light
    from tests.datasets import deflated, multiframe

    ds = multiframe(2 * 1024 * 1024) if kind == "light" else deflated(64)
    assert is_light(ds) is (kind == "light")
    sink = sink_class()
    result = await aiodicom.dcmwrite(sink, ds)
    assert sink.committed == pydicom_bytes(ds)
    assert result.bytes == len(sink.committed)
    assert result.checksum is not None
    assert result.checksum.b64 == _crc32c_b64(sink.committed)


def _crc32c_b64(data: bytes) -> str:
    from aiodicom import Checksum

    checksum = Checksum("crc32c")
    checksum.update(data)
    return checksum.b64
