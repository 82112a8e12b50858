"""Whole-object retries: a writer raises RetryableError, the driver starts over."""

from __future__ import annotations

import io
from copy import deepcopy
from typing import Any

import pytest
from pydicom.dataset import Dataset

import aiodicom
from aiodicom.sinks import RetryableError
from aiodicom.sinks.fsspec import FsspecFile
from tests.datasets import ct_slice, multiframe
from tests.helpers import RecordingSink, pydicom_bytes

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024


def session_lost(message: str) -> RetryableError:
    """What a writer raises when its upload session is gone: start over."""
    error = RetryableError("upload session lost")
    error.__cause__ = ConnectionResetError("reset")
    error.__suppress_context__ = True
    return error


def flaky(failures: int, retries: int | None) -> RecordingSink:
    """Publishes on commit; the first `failures` attempts fail at their first chunk."""
    return RecordingSink(fail_at=1, failing_attempts=failures, error=session_lost, retries=retries)


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
    sink = flaky(failures=2, retries=2)
    await aiodicom.dcmwrite(sink, ds)
    assert sink.attempts == 3
    assert sink.aborts == 2
    expected = ds if kind == "light" else DATASETS["light"]()
    if kind == "light":
        assert sink.published == pydicom_bytes(expected)
    else:
        # the buffered value was read again from where it was
        assert sink.published == pydicom_bytes(ds)
        assert ds.PixelData.tell() == 0


async def test_out_of_retries_raises_the_cause() -> None:
    sink = flaky(failures=5, retries=1)
    with pytest.raises(ConnectionResetError, match="reset"):
        await aiodicom.dcmwrite(sink, ct_slice(64, 64))
    assert sink.attempts == 2
    assert sink.aborts == 2
    assert sink.published is None


async def test_sink_without_retries_is_tried_once() -> None:
    sink = flaky(failures=1, retries=None)
    with pytest.raises(ConnectionResetError):
        await aiodicom.dcmwrite(sink, ct_slice(64, 64))
    assert sink.attempts == 1


async def test_s3_lost_upload_session_is_written_again(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import fsspec

    fs, bucket = fsspec.core.url_to_fs(s3_bucket, **s3_storage_options)
    ds = multiframe(20 * MiB)
    url = f"{s3_bucket}/lost.dcm"
    inner = FsspecFile.from_url(url, s3_storage_options, part_size=5 * MiB, retries=2)

    def kill_session(written: int) -> None:
        """On the first attempt, once a part has gone out, abort the multipart
        upload from outside, as an expired or lost session would."""
        if sink.attempts == 1 and written > 12 * MiB:
            uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket)
            for upload in uploads.get("Uploads", []):
                fs.call_s3(
                    "abort_multipart_upload",
                    Bucket=bucket,
                    Key=upload["Key"],
                    UploadId=upload["UploadId"],
                )

    sink = RecordingSink(inner, retries=inner.retries, on_write=kill_session, keep="nothing")
    await aiodicom.dcmwrite(sink, ds)
    assert sink.attempts == 2
    fs.invalidate_cache()
    assert fs.cat_file(f"{bucket}/lost.dcm") == pydicom_bytes(ds)
    assert fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", []) == []
