"""Whole-object retries: a writer raises RetryableError, the driver starts over."""

from __future__ import annotations

import io
from copy import deepcopy
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

import aiodicom
from aiodicom.sinks import Chunk, RetryableError, Writer
from aiodicom.sinks.fsspec import FsspecFile
from tests.datasets import ct_slice, multiframe

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def reference(ds: Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, deepcopy(ds))
    return out.getvalue()


class FlakySink:
    """Publishes on commit; the first `failures` attempts fail after one chunk."""

    def __init__(self, failures: int, retries: int | None) -> None:
        self.failures = failures
        if retries is not None:
            self.retries = retries
        self.attempts = 0
        self.aborts = 0
        self.published: bytes | None = None

    def open(self, *, exist_ok: bool) -> FlakyWriter:
        self.attempts += 1
        return FlakyWriter(self)


class FlakyWriter:
    def __init__(self, sink: FlakySink) -> None:
        self.sink = sink
        self.parts: list[bytes] = []

    def write(self, chunk: Chunk, /) -> None:
        if self.sink.attempts <= self.sink.failures:
            raise RetryableError("upload session lost") from ConnectionResetError("reset")
        self.parts.append(bytes(chunk))

    def commit(self) -> None:
        self.sink.published = b"".join(self.parts)

    def abort(self) -> None:
        self.sink.aborts += 1


def with_file_pixels(ds: Dataset) -> Dataset:
    ds = deepcopy(ds)
    ds.PixelData = io.BytesIO(ds.PixelData)
    return ds


DATASETS = {
    "light": lambda: ct_slice(64, 64),
    "heavy-buffered": lambda: with_file_pixels(multiframe(9 * MiB)),
}


@pytest.mark.parametrize("kind", list(DATASETS))
async def test_retryable_failure_starts_the_whole_write_over(kind: str) -> None:
    ds = DATASETS[kind]()
    sink = FlakySink(failures=2, retries=2)
    await aiodicom.dcmwrite(sink, ds)
    assert sink.attempts == 3
    assert sink.aborts == 2
    expected = ds if kind == "light" else DATASETS["light"]()
    if kind == "light":
        assert sink.published == reference(expected)
    else:
        # the buffered value was read again from where it was
        assert sink.published == reference(ds)
        assert ds.PixelData.tell() == 0


async def test_out_of_retries_raises_the_cause() -> None:
    sink = FlakySink(failures=5, retries=1)
    with pytest.raises(ConnectionResetError, match="reset"):
        await aiodicom.dcmwrite(sink, ct_slice(64, 64))
    assert sink.attempts == 2
    assert sink.aborts == 2
    assert sink.published is None


async def test_sink_without_retries_is_tried_once() -> None:
    sink = FlakySink(failures=1, retries=None)
    with pytest.raises(ConnectionResetError):
        await aiodicom.dcmwrite(sink, ct_slice(64, 64))
    assert sink.attempts == 1


class SessionKiller:
    """Wraps an S3 FsspecFile; on the first attempt, aborts the multipart upload
    from outside once a part has gone out, as an expired or lost session would."""

    def __init__(self, sink: FsspecFile, fs: Any, bucket: str) -> None:
        self.sink = sink
        self.retries = sink.retries
        self.fs = fs
        self.bucket = bucket
        self.attempts = 0

    def open(self, *, exist_ok: bool) -> KillerWriter:
        self.attempts += 1
        return KillerWriter(self, self.sink.open(exist_ok=exist_ok))


class KillerWriter:
    def __init__(self, killer: SessionKiller, writer: Writer) -> None:
        self.killer = killer
        self.writer = writer
        self.written = 0

    def write(self, chunk: Chunk, /) -> None:
        self.writer.write(chunk)
        self.written += len(memoryview(chunk).cast("B"))
        if self.killer.attempts == 1 and self.written > 12 * MiB:
            uploads = self.killer.fs.call_s3("list_multipart_uploads", Bucket=self.killer.bucket)
            for upload in uploads.get("Uploads", []):
                self.killer.fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=self.killer.bucket,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )

    def commit(self) -> None:
        self.writer.commit()

    def abort(self) -> None:
        self.writer.abort()


async def test_s3_lost_upload_session_is_written_again(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import fsspec

    fs, bucket = fsspec.core.url_to_fs(s3_bucket, **s3_storage_options)
    ds = multiframe(20 * MiB)
    url = f"{s3_bucket}/lost.dcm"
    sink = SessionKiller(
        FsspecFile.from_url(url, s3_storage_options, part_size=5 * MiB, retries=2), fs, bucket
    )
    await aiodicom.dcmwrite(sink, ds)
    assert sink.attempts == 2
    fs.invalidate_cache()
    assert fs.cat_file(f"{bucket}/lost.dcm") == reference(ds)
    assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []
