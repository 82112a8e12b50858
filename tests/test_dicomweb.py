"""DICOMweb STOW-RS: the DicomWeb sink and store_many, against a real Orthanc and a fake.

* Orthanc (with its DICOMweb plugin, started by ``tests/servers.py``): instances
  stored through the sink read back byte-identical to ``pydicom.dcmwrite`` (Orthanc
  rewrites nothing: it keeps the file as received, preamble included); a large
  multi-frame instance streamed; faults (Orthanc killed mid-body, a cancellation
  or an encoder error mid-body, a 503 with Retry-After, a malformed response)
  leave nothing half-stored and give the right results.
* A fake server (``tests/fake_dicomweb.py``) replays the duplicate and
  partial-failure answers that Azure's and Google's documentation describe, and
  faults no real server gives on demand (a connection dropped mid-body, 429s).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
from pydicom.uid import generate_uid

import aiodicom
from aiodicom.sinks import DicomWeb, DicomWebError, StowResult, StowStatus, _stow, resolve
from tests import datasets
from tests.fake_dicomweb import (
    Drop,
    FakeDicomWeb,
    Forward,
    Reply,
    Request,
    azure,
    dicom_json,
    failed_item,
    google,
    referenced_item,
    standard,
)
from tests.helpers import MiB, ct, fresh, hooked, pydicom_bytes, raising, stored_file
from tests.servers import _free_port, orthanc_server

pytestmark = pytest.mark.anyio


@pytest.fixture
def fake() -> Iterator[FakeDicomWeb]:
    with FakeDicomWeb(standard) as server:
        yield server
    assert not [r for r in server.requests if r.method == "DELETE"]  # never deletes


async def collect(results: AsyncIterator[StowResult[Any]]) -> list[StowResult[Any]]:
    return [result async for result in results]


# ----------------------------------------------------------------------------- Orthanc

ROUND_TRIP = [
    "ct_slice",
    "multiframe_odd",
    "deflated",
    "big_endian",
    "implicit_little",
    "deep_sequences",
    "encapsulated_multiframe",
    "buffered_pixel_data_even",
    "buffered_encapsulated",
    "long_values",
    "private_tags",
    "odd_length_ob",
    "memoryview_values",
    "deferred_explicit",
    "deflated_from_file",
]
# Not here: buffered_pixel_data_odd and buffered_offset, which Orthanc (DCMTK)
# rejects as "Bad file format" whoever sends them (checked with pydicom's bytes).


@pytest.mark.parametrize("name", ROUND_TRIP)
async def test_round_trip_is_pydicom_bytes(
    orthanc_dicomweb: str, tmp_path: Path, name: str
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long_values: pydicom's own warnings
        ds = fresh(datasets.GENERATED[name](tmp_path))
        expected = pydicom_bytes(ds, copy=False)  # buffered values and views: no copy
        await aiodicom.dcmwrite("dicomweb+" + orthanc_dicomweb, ds)
    assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == expected


async def test_sink_object_with_shared_client(orthanc_dicomweb: str) -> None:
    instances = [ct() for _ in range(3)]
    async with DicomWeb(orthanc_dicomweb) as sink, anyio.create_task_group() as group:
        for ds in instances:
            group.start_soon(functools.partial(aiodicom.dcmwrite, sink, ds))
    for ds in instances:
        assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == pydicom_bytes(ds)


async def test_store_many_round_trip(orthanc_dicomweb: str) -> None:
    instances = [ct() for _ in range(7)]
    sink = DicomWeb(orthanc_dicomweb, batch_count=3)
    items = [(i, functools.partial(aiodicom.prepare, ds)) for i, ds in enumerate(instances)]
    results = await collect(sink.store_many(items))
    assert [r.label for r in results] == list(range(7))
    assert all(r.status is StowStatus.STORED and r.error is None for r in results)
    for ds, result in zip(instances, results, strict=True):
        expected = pydicom_bytes(ds)
        assert result.sop_instance_uid == ds.SOPInstanceUID
        assert result.bytes == len(expected)
        assert result.retrieve_url is not None
        assert result.retrieve_url.endswith(ds.SOPInstanceUID)
        assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == expected


async def test_large_multiframe_streamed(orthanc_dicomweb: str) -> None:
    ds = fresh(datasets.multiframe(64 * MiB))
    expected = hashlib.sha256(pydicom_bytes(ds)).hexdigest()
    async with DicomWeb(orthanc_dicomweb) as sink:
        await aiodicom.dcmwrite(sink, ds)
    stored = await stored_file(orthanc_dicomweb, ds.SOPInstanceUID)
    assert stored is not None
    assert hashlib.sha256(stored).hexdigest() == expected


async def test_orthanc_400_lists_what_it_stored(orthanc_dicomweb: str) -> None:
    """Orthanc answers 400 to a request with an unreadable part, and stores (and
    lists) the readable ones: the list wins over the status code."""
    good = ct()
    results = await collect(
        DicomWeb(orthanc_dicomweb).store_many([("good", pydicom_bytes(good)), ("junk", b"junk")])
    )
    assert [(r.label, r.status) for r in results] == [
        ("good", StowStatus.STORED),
        ("junk", StowStatus.FAILED),
    ]
    assert isinstance(results[1].error, DicomWebError)
    assert results[1].error.status_code == 400
    assert await stored_file(orthanc_dicomweb, good.SOPInstanceUID) == pydicom_bytes(good)


async def test_orthanc_reports_no_duplicates_check_exists_does(orthanc_dicomweb: str) -> None:
    first = ct()
    await aiodicom.dcmwrite(DicomWeb(orthanc_dicomweb), first, exist_ok=False)
    second = deepcopy(first)
    second.PatientName = "Other^Bytes"
    # Orthanc answers 200 and keeps the first: exist_ok=False cannot see it...
    await aiodicom.dcmwrite(DicomWeb(orthanc_dicomweb), second, exist_ok=False)
    assert await stored_file(orthanc_dicomweb, first.SOPInstanceUID) == pydicom_bytes(first)
    # ...unless the sink searches first
    checking = DicomWeb(orthanc_dicomweb, check_exists=True)
    with pytest.raises(FileExistsError) as caught:
        await aiodicom.dcmwrite(checking, second, exist_ok=False)
    assert caught.value.filename.endswith(f"/instances/{first.SOPInstanceUID}")
    assert await checking.exists(first.SOPInstanceUID)
    assert not await checking.exists(generate_uid())
    new = ct()
    items = [("old", pydicom_bytes(second)), ("new", pydicom_bytes(new))]
    results = await collect(checking.store_many(items, exist_ok=False))
    assert [(r.label, r.status) for r in results] == [
        ("old", StowStatus.EXISTS),
        ("new", StowStatus.STORED),
    ]
    assert isinstance(results[0].error, FileExistsError)
    assert await stored_file(orthanc_dicomweb, first.SOPInstanceUID) == pydicom_bytes(first)


async def test_orthanc_killed_mid_body(tmp_path: Path) -> None:
    """Orthanc dies while the body is streaming: nothing is stored; with retries the
    write goes through to the restarted server, once, complete."""
    port = _free_port()
    servers = contextlib.ExitStack()
    folder = str(tmp_path)

    def crash_and_restart() -> None:
        servers.close()  # SIGKILL, mid-request
        servers.enter_context(orthanc_server(folder, port, crash=True))

    with servers:
        url = servers.enter_context(orthanc_server(folder, port, crash=True))
        base = url + "/dicom-web"
        # 24 MiB of Pixel Data read 4 MiB at a time: the crash comes after 8 MiB
        ds, expected = hooked(24 * MiB, 3, crash_and_restart)
        with pytest.raises(ConnectionError, match="nothing was stored"):
            await aiodicom.dcmwrite(DicomWeb(base, retries=0), ds)
        assert await stored_file(base, ds.SOPInstanceUID) is None

        ds, expected = hooked(24 * MiB, 3, crash_and_restart)
        await aiodicom.dcmwrite(DicomWeb(base, retries=2), ds)
        assert await stored_file(base, ds.SOPInstanceUID) == expected


async def test_cancelled_mid_body_stores_nothing(orthanc_dicomweb: str) -> None:
    with anyio.CancelScope() as scope:

        def cancel() -> None:
            anyio.from_thread.run_sync(scope.cancel)

        ds, expected = hooked(16 * MiB, 3, cancel)
        await aiodicom.dcmwrite("dicomweb+" + orthanc_dicomweb, ds)
    assert scope.cancelled_caught
    assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) is None
    # the dataset can be written again, completely
    await aiodicom.dcmwrite("dicomweb+" + orthanc_dicomweb, ds)
    assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == expected


async def test_encoder_error_mid_body_stores_nothing(orthanc_dicomweb: str) -> None:
    ds, _ = hooked(16 * MiB, 3, raising)
    with pytest.raises(OSError, match="disk on fire"):
        await aiodicom.dcmwrite("dicomweb+" + orthanc_dicomweb, ds)
    assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) is None


async def test_store_many_failing_instance_abandons_its_request(orthanc_dicomweb: str) -> None:
    """An instance whose encoding fails mid-part is not stored; Orthanc stores each
    instance as soon as its part has arrived, so the ones before it in the request
    are (complete), and their result says they may have been: they are not resent."""
    good = [ct() for _ in range(3)]
    bad, _ = hooked(12 * MiB, 2, raising)
    items = [
        ("a", functools.partial(aiodicom.prepare, good[0])),
        ("b", functools.partial(aiodicom.prepare, good[1])),
        ("bad", functools.partial(aiodicom.prepare, bad)),
        ("c", functools.partial(aiodicom.prepare, good[2])),
    ]
    results = await collect(DicomWeb(orthanc_dicomweb).store_many(items))
    assert [(r.label, r.status) for r in results] == [
        ("a", StowStatus.FAILED),
        ("b", StowStatus.FAILED),
        ("bad", StowStatus.FAILED),
        ("c", StowStatus.STORED),
    ]
    a, b, failed, _ = results
    assert isinstance(failed.error, OSError)
    assert "disk on fire" in str(failed.error)
    for result in (a, b):
        assert isinstance(result.error, ConnectionAbortedError)
        assert "may have been stored" in str(result.error)
        assert "'bad'" in str(result.error)
        assert result.attempts == 1
    assert await stored_file(orthanc_dicomweb, bad.SOPInstanceUID) is None
    for ds in good:  # whole, never half
        assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == pydicom_bytes(ds)


async def test_store_many_cancelled_mid_batch(orthanc_dicomweb: str) -> None:
    first, second = ct(), ct()
    results: list[StowResult[str]] = []
    with anyio.CancelScope() as scope:

        def cancel() -> None:
            anyio.from_thread.run_sync(scope.cancel)

        third, _ = hooked(12 * MiB, 2, cancel)
        items = [
            ("1", pydicom_bytes(first)),
            ("2", pydicom_bytes(second)),
            ("3", aiodicom.prepare(third)),
        ]
        async for result in DicomWeb(orthanc_dicomweb).store_many(items):
            results.append(result)
    assert scope.cancelled_caught
    assert results == []
    assert await stored_file(orthanc_dicomweb, third.SOPInstanceUID) is None
    for ds in (first, second):  # complete parts: stored whole by Orthanc, or not at all
        assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) in (None, pydicom_bytes(ds))


async def test_503_with_retry_after_then_stored(orthanc_dicomweb: str) -> None:
    with FakeDicomWeb() as proxy:
        proxy.plan = [Reply(503, b"busy", {"Retry-After": "1"})]
        proxy.responder = lambda fake, request: _forward(orthanc_dicomweb, request)
        ds = ct()
        await aiodicom.dcmwrite(DicomWeb(proxy.url), ds)
        first, second = proxy.stow_requests
        assert second.started - first.started >= 1.0  # Retry-After was honoured
    assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == pydicom_bytes(ds)


def _forward(base: str, request: Request) -> Reply:
    response = httpx.post(
        f"{base}/studies",
        content=request.body,
        headers={"Content-Type": request.headers["content-type"], "Accept": "application/json"},
    )
    return Reply(response.status_code, response.content, {"Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, b"<html>proxy says hi"), (200, b"{not json"), (202, b"\x00\xff garbage")],
)
async def test_malformed_response(orthanc_dicomweb: str, status: int, body: bytes) -> None:
    """The server stored the instance and sent a body nobody can read: a 200 still
    means "all stored" (PS3.18), a 202 leaves the instance's fate unknown."""
    with FakeDicomWeb() as proxy:

        def garble(reply: Reply) -> Reply:
            assert reply.status == 200
            return Reply(status, body, {"Content-Type": "application/dicom+json"})

        url = f"{orthanc_dicomweb}/studies"
        proxy.plan = [Forward(url, garble), Forward(url, garble)]
        ds, other = ct(), ct()
        if status == 200:
            await aiodicom.dcmwrite(DicomWeb(proxy.url), ds)
            results = await collect(DicomWeb(proxy.url).store_many([("x", pydicom_bytes(other))]))
            assert results[0].status is StowStatus.STORED
        else:
            with pytest.raises(DicomWebError, match="did not say whether this one was stored"):
                await aiodicom.dcmwrite(DicomWeb(proxy.url), ds)
            results = await collect(DicomWeb(proxy.url).store_many([("x", pydicom_bytes(other))]))
            assert results[0].status is StowStatus.FAILED
            assert isinstance(results[0].error, DicomWebError)
            assert results[0].error.status_code == 202
        assert len(proxy.stow_requests) == 2  # not retried
    assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == pydicom_bytes(ds)
    assert await stored_file(orthanc_dicomweb, other.SOPInstanceUID) == pydicom_bytes(other)


# ----------------------------------------------------------------------------- Azure


async def test_azure_duplicate_is_file_exists(fake: FakeDicomWeb) -> None:
    fake.responder = azure
    ds = ct()
    sink = DicomWeb(fake.url)
    await aiodicom.dcmwrite(sink, ds, exist_ok=False)
    for exist_ok in (False, True):  # POST never replaces on Azure
        with pytest.raises(FileExistsError) as caught:
            await aiodicom.dcmwrite(sink, ds, exist_ok=exist_ok)
        assert caught.value.filename == f"{fake.url}/instances/{ds.SOPInstanceUID}"
        cause = caught.value.__cause__
        assert isinstance(cause, DicomWebError)
        assert cause.failure_reason == 45070
        assert cause.status_code == 409
    assert len(fake.stow_requests) == 3  # a duplicate is not retried


async def test_azure_upsert_replaces(fake: FakeDicomWeb) -> None:
    fake.responder = azure
    ds = ct()
    await aiodicom.dcmwrite(DicomWeb(fake.url), ds)
    ds.PatientName = "Replaced"
    await aiodicom.dcmwrite(DicomWeb(fake.url, upsert=True), ds)
    assert [r.method for r in fake.stow_requests] == ["POST", "PUT"]
    assert fake.stored[ds.SOPInstanceUID] == pydicom_bytes(ds)
    with pytest.raises(ValueError, match="upsert"):
        await aiodicom.dcmwrite(DicomWeb(fake.url, upsert=True), ds, exist_ok=False)


async def test_azure_202_partial_success(fake: FakeDicomWeb) -> None:
    a, b, c = ct(), ct(), ct()
    items = [("a", pydicom_bytes(a)), ("b", pydicom_bytes(b)), ("c", pydicom_bytes(c))]

    def answer(server: FakeDicomWeb, request: Request) -> Reply:
        pa, pb, pc = request.parts
        body = dicom_json(
            referenced=[referenced_item(server, pa)],
            failed=[failed_item(pb, 45070), failed_item(pc, 43264)],
        )
        return Reply(202, body, {"Content-Type": "application/dicom+json"})

    fake.responder = answer
    results = await collect(DicomWeb(fake.url).store_many(items))
    ra, rb, rc = results
    assert (ra.status, ra.failure_reason, ra.error) == (StowStatus.STORED, None, None)
    assert ra.retrieve_url == f"{fake.url}/instances/{a.SOPInstanceUID}"
    assert (rb.status, rb.failure_reason) == (StowStatus.EXISTS, 45070)
    assert isinstance(rb.error, FileExistsError)
    assert (rc.status, rc.failure_reason) == (StowStatus.FAILED, 43264)
    assert isinstance(rc.error, DicomWebError)
    assert rc.error.failure_reason == 43264
    assert rc.sop_instance_uid == c.SOPInstanceUID
    assert len(fake.stow_requests) == 1  # none of it is retryable


async def test_azure_warning_is_stored(
    fake: FakeDicomWeb, caplog: pytest.LogCaptureFixture
) -> None:
    def answer(server: FakeDicomWeb, request: Request) -> Reply:
        item = referenced_item(server, request.parts[0], warning=45063)
        item["00741048"] = {
            "vr": "SQ",
            "Value": [{"00000902": {"vr": "LO", "Value": ["DICOM100: (0008,0020) bad date"]}}],
        }
        return Reply(202, dicom_json([item], []), {"Content-Type": "application/dicom+json"})

    fake.responder = answer
    ds = ct()
    with caplog.at_level(logging.WARNING, logger="aiodicom"):
        await aiodicom.dcmwrite(DicomWeb(fake.url), ds)  # stored: no error
    assert f"stored {ds.SOPInstanceUID} with WarningReason 45063 (0xB007)" in caplog.text
    [result] = await collect(DicomWeb(fake.url).store_many([("w", pydicom_bytes(ds))]))
    assert (result.status, result.warning_reason) == (StowStatus.STORED, 45063)


# ----------------------------------------------------------------------------- Google


@pytest.mark.parametrize("xml", [True, False], ids=["xml", "json"])
async def test_google_duplicates(fake: FakeDicomWeb, xml: bool) -> None:
    fake.responder = functools.partial(google, xml=xml)
    ds = ct()
    sink = DicomWeb(fake.url)
    await aiodicom.dcmwrite(sink, ds, exist_ok=False)
    # the same bytes again: Google accepts them silently (exist_ok=False cannot tell)
    await aiodicom.dcmwrite(sink, ds, exist_ok=False)
    other = deepcopy(ds)
    other.PatientName = "Other^Bytes"
    with pytest.raises(FileExistsError) as caught:
        await aiodicom.dcmwrite(sink, other, exist_ok=False)
    cause = caught.value.__cause__
    assert isinstance(cause, DicomWebError)
    assert (cause.status_code, cause.failure_reason) == (409, 272)
    [result] = await collect(sink.store_many([(1, pydicom_bytes(other))]))
    assert (result.status, result.failure_reason) == (StowStatus.EXISTS, 272)
    assert fake.stored[ds.SOPInstanceUID] == pydicom_bytes(ds)


async def test_google_272_for_another_reason_is_a_failure(fake: FakeDicomWeb) -> None:
    def answer(server: FakeDicomWeb, request: Request) -> Reply:
        item = failed_item(request.parts[0], 272, t00090097="Invalid DICOM: bad VR")
        return Reply(409, dicom_json([], [item]), {"Content-Type": "application/dicom+json"})

    fake.responder = answer
    with pytest.raises(DicomWebError, match="bad VR") as caught:
        await aiodicom.dcmwrite(DicomWeb(fake.url), ct(), exist_ok=False)
    assert caught.value.failure_reason == 272
    assert not isinstance(caught.value, FileExistsError)


# ----------------------------------------------------------------------------- status codes


@pytest.mark.parametrize(
    ("status", "stored"), [(200, True), (202, False), (204, False), (400, False), (409, False)]
)
async def test_empty_bodies(fake: FakeDicomWeb, status: int, stored: bool) -> None:
    fake.plan = [Reply(status), Reply(status)]
    if stored:
        await aiodicom.dcmwrite(DicomWeb(fake.url), ct())
    else:
        with pytest.raises(DicomWebError) as caught:
            await aiodicom.dcmwrite(DicomWeb(fake.url), ct())
        assert caught.value.status_code == status
    [result] = await collect(DicomWeb(fake.url).store_many([(0, pydicom_bytes(ct()))]))
    assert result.ok is stored
    assert len(fake.stow_requests) == 2


async def test_out_of_resources_is_retried(fake: FakeDicomWeb) -> None:
    def busy_once(server: FakeDicomWeb, request: Request) -> Reply:
        if len(server.stow_requests) % 2:  # the 1st, 3rd... request of the test
            failed = [failed_item(part, 0xA700) for part in request.parts]
            return Reply(409, dicom_json([], failed), {"Content-Type": "application/dicom+json"})
        return standard(server, request)

    fake.responder = busy_once
    ds = ct()
    await aiodicom.dcmwrite(DicomWeb(fake.url), ds)
    [result] = await collect(DicomWeb(fake.url).store_many([(0, pydicom_bytes(ct()))]))
    assert (result.status, result.attempts) == (StowStatus.STORED, 2)
    assert len(fake.stow_requests) == 4
    assert fake.stored[ds.SOPInstanceUID] == pydicom_bytes(ds)


async def test_duplicate_reasons() -> None:
    def entry(reason: int, *texts: str) -> _stow.Entry:
        return _stow.Entry("1.2.3", failure_reason=reason, texts=list(texts))

    assert _stow.is_duplicate(entry(45070))
    assert _stow.is_duplicate(entry(0x0111))
    assert _stow.is_duplicate(entry(0x0110, "An instance already exists in this store"))
    assert not _stow.is_duplicate(entry(0x0110, "cannot parse"))
    assert not _stow.is_duplicate(entry(45071))
    assert not _stow.is_duplicate(entry(0xC000))


async def test_429_retried_then_given_up(fake: FakeDicomWeb) -> None:
    fake.plan = [Reply(429, b"", {"Retry-After": "0"}) for _ in range(10)]
    with pytest.raises(DicomWebError) as caught:
        await aiodicom.dcmwrite(DicomWeb(fake.url, retries=2), ct())
    assert caught.value.status_code == 429
    assert len(fake.stow_requests) == 3
    [result] = await collect(DicomWeb(fake.url, retries=1).store_many([(0, pydicom_bytes(ct()))]))
    assert result.status is StowStatus.FAILED
    assert result.attempts == 2
    assert len(fake.stow_requests) == 5


async def test_retry_after_beyond_the_deadline_is_not_waited_for(fake: FakeDicomWeb) -> None:
    fake.plan = [Reply(503, b"", {"Retry-After": "3600"})] * 2
    started = time.monotonic()
    with pytest.raises(DicomWebError):
        await aiodicom.dcmwrite(DicomWeb(fake.url, deadline=30), ct())
    sink = DicomWeb(fake.url, deadline=30)
    [result] = await collect(sink.store_many([(0, pydicom_bytes(ct()))]))
    assert result.status is StowStatus.FAILED
    assert time.monotonic() - started < 30
    assert len(fake.stow_requests) == 2


async def test_retry_after_as_http_date() -> None:
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    assert _stow.retry_after(date) == pytest.approx(5, abs=1.5)
    assert _stow.retry_after("7") == 7
    assert _stow.retry_after("soon") is None


async def test_dropped_mid_body_is_retried(fake: FakeDicomWeb) -> None:
    ds = fresh(datasets.multiframe(32 * MiB))
    fake.plan = [Drop(after=64 * 1024)]
    await aiodicom.dcmwrite(DicomWeb(fake.url), ds)
    first, second = fake.stow_requests
    assert not first.complete
    assert second.complete
    assert fake.stored[ds.SOPInstanceUID] == pydicom_bytes(ds)


async def test_batch_dropped_mid_body(fake: FakeDicomWeb) -> None:
    """Only the instance being sent is known not to be stored: it is retried; the
    ones before it in the request may have been stored, and are not resent."""
    small = [pydicom_bytes(ct()), pydicom_bytes(ct())]
    big = fresh(datasets.multiframe(32 * MiB))
    fake.plan = [Drop(after=sum(map(len, small)) + 1024 * 1024)]
    items = [("a", small[0]), ("b", small[1]), ("big", functools.partial(aiodicom.prepare, big))]
    results = await collect(DicomWeb(fake.url).store_many(items))
    assert [(r.label, r.status, r.attempts) for r in results] == [
        ("a", StowStatus.FAILED, 1),
        ("b", StowStatus.FAILED, 1),
        ("big", StowStatus.STORED, 2),
    ]
    assert all("may have been stored" in str(r.error) for r in results[:2])
    first, second = fake.stow_requests
    assert not first.complete
    assert [p.sop_instance_uid for p in second.parts] == [big.SOPInstanceUID]
    assert fake.stored[big.SOPInstanceUID] == pydicom_bytes(big)


async def test_dropped_after_body_is_not_retried(fake: FakeDicomWeb) -> None:
    fake.plan = [Drop(after=None), Drop(after=None)]
    with pytest.raises(ConnectionError, match="may have been stored"):
        await aiodicom.dcmwrite(DicomWeb(fake.url), ct())
    [result] = await collect(DicomWeb(fake.url).store_many([(0, pydicom_bytes(ct()))]))
    assert result.status is StowStatus.FAILED
    assert isinstance(result.error, ConnectionError)
    assert [r.complete for r in fake.stow_requests] == [True, True]


async def test_one_shot_source_is_not_retried(fake: FakeDicomWeb) -> None:
    fake.plan = [Reply(503), Reply(503)]
    once, again = pydicom_bytes(ct()), pydicom_bytes(ct())
    results = await collect(
        DicomWeb(fake.url).store_many(
            [("once", iter([once])), ("again", functools.partial(bytes, again))]
        )
    )
    assert [(r.label, r.status, r.attempts) for r in results] == [
        ("once", StowStatus.FAILED, 1),
        ("again", StowStatus.STORED, 3),
    ]
    assert [len(r.parts) for r in fake.stow_requests] == [2, 1, 1]


# ----------------------------------------------------------------------------- batching


async def test_batch_limits(fake: FakeDicomWeb) -> None:
    instances = [pydicom_bytes(ct()) for _ in range(5)]
    items = list(enumerate(instances))
    results = await collect(DicomWeb(fake.url, batch_count=2).store_many(items))
    assert [r.label for r in results] == [0, 1, 2, 3, 4]
    assert [len(r.parts) for r in fake.stow_requests] == [2, 2, 1]
    fake.requests.clear()
    await collect(DicomWeb(fake.url, batch_bytes=len(instances[0])).store_many(items))
    assert [len(r.parts) for r in fake.stow_requests] == [1, 1, 1, 1, 1]
    assert all(r.complete for r in fake.stow_requests)


async def test_same_instance_twice_goes_in_two_requests(fake: FakeDicomWeb) -> None:
    data = pydicom_bytes(ct())
    results = await collect(DicomWeb(fake.url).store_many([(1, data), (2, data)]))
    assert [r.status for r in results] == [StowStatus.STORED] * 2
    assert [len(r.parts) for r in fake.stow_requests] == [1, 1]


async def test_sources_of_every_kind(fake: FakeDicomWeb) -> None:
    instances = [ct() for _ in range(6)]
    data = [pydicom_bytes(ds) for ds in instances]

    async def chunks(blob: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(blob), 7):  # the File Meta split across tiny chunks
            yield blob[start : start + 7]

    items: list[tuple[str, Any]] = [
        ("bytes", data[0]),
        ("plan", aiodicom.prepare(instances[1])),
        ("factory", functools.partial(aiodicom.prepare, instances[2])),
        ("list", [memoryview(data[3])[:100], memoryview(data[3])[100:]]),
        ("generator", (data[4][i : i + 3] for i in range(0, len(data[4]), 3))),
        ("async", chunks(data[5])),
    ]
    results = await collect(DicomWeb(fake.url).store_many(items))
    assert all(r.ok for r in results), results
    for ds, blob, result in zip(instances, data, results, strict=True):
        assert result.sop_instance_uid == ds.SOPInstanceUID
        assert fake.stored[ds.SOPInstanceUID] == blob


async def test_bad_source_fails_alone(fake: FakeDicomWeb) -> None:
    good = pydicom_bytes(ct())
    results = await collect(DicomWeb(fake.url).store_many([("bad", 42), ("good", good)]))
    assert results[0].status is StowStatus.FAILED
    assert isinstance(results[0].error, TypeError)
    assert results[1].ok


async def test_items_that_raise_end_after_what_was_sent(fake: FakeDicomWeb) -> None:
    first, second = pydicom_bytes(ct()), pydicom_bytes(ct())

    async def items() -> AsyncIterator[tuple[int, bytes]]:
        yield 1, first
        yield 2, second
        raise RuntimeError("source gone")

    seen: list[StowResult[int]] = []

    async def consume() -> None:
        async for result in DicomWeb(fake.url).store_many(items()):
            seen.append(result)

    with pytest.raises(RuntimeError, match="source gone"):
        await consume()
    assert [(r.label, r.ok) for r in seen] == [(1, True), (2, True)]


# ----------------------------------------------------------------------------- requests


async def test_auth_headers_and_chunked_body(fake: FakeDicomWeb) -> None:
    tokens = iter(f"token-{i}" for i in range(100))
    threads: list[threading.Thread] = []

    async def async_provider() -> str:
        return next(tokens)

    def sync_provider() -> str:  # may block (google-auth refreshes over HTTP)
        threads.append(threading.current_thread())
        return next(tokens)

    await aiodicom.dcmwrite(DicomWeb(fake.url, token=sync_provider), ct())
    assert threads != [threading.current_thread()]  # called in a worker thread
    await aiodicom.dcmwrite(DicomWeb(fake.url, token=async_provider), ct())
    await aiodicom.dcmwrite(DicomWeb(fake.url, token="static"), ct())
    await aiodicom.dcmwrite(
        DicomWeb(fake.url, basic_auth=("user", "pass"), headers={"X-Tenant": "t1"}), ct()
    )
    headers = [r.headers for r in fake.stow_requests]
    assert [h["authorization"] for h in headers] == [
        "Bearer token-0",
        "Bearer token-1",
        "Bearer static",
        "Basic dXNlcjpwYXNz",
    ]
    assert headers[3]["x-tenant"] == "t1"
    for h in headers:
        assert h["transfer-encoding"] == "chunked"
        assert "content-length" not in h
        assert h["content-type"].startswith('multipart/related; type="application/dicom"')
        assert h["accept"] == "application/dicom+json"
    # a provider is called for every request, so a refreshed token is used
    sink = DicomWeb(fake.url, token=lambda: next(tokens))
    await collect(sink.store_many([(0, pydicom_bytes(ct()))]))
    await collect(sink.store_many([(0, pydicom_bytes(ct()))]))
    assert [r.headers["authorization"] for r in fake.stow_requests[-2:]] == [
        "Bearer token-2",
        "Bearer token-3",
    ]


def _certificate(folder: Path, name: str) -> tuple[str, str]:
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


async def test_tls_verify_and_client_certificate(tmp_path: Path) -> None:
    server_cert, server_key = _certificate(tmp_path, "server")
    client_cert, client_key = _certificate(tmp_path, "client")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(client_cert)
    with FakeDicomWeb(standard, tls=context) as server:
        assert server.url.startswith("https://")
        mutual = {"verify": server_cert, "cert": (client_cert, client_key), "retries": 0}
        ds = ct()
        await aiodicom.dcmwrite(DicomWeb(server.url, **mutual), ds)
        assert server.stored[ds.SOPInstanceUID] == pydicom_bytes(ds)
        # a file holding both the certificate and its key works too
        both = tmp_path / "client-both.pem"
        both.write_text(Path(client_cert).read_text() + Path(client_key).read_text())
        await aiodicom.dcmwrite(DicomWeb(server.url, verify=server_cert, cert=str(both)), ct())
        with pytest.raises(ConnectionError, match="nothing was stored"):  # unknown CA
            await aiodicom.dcmwrite(DicomWeb(server.url, cert=mutual["cert"], retries=0), ct())
        with pytest.raises(ConnectionError):  # no client certificate
            await aiodicom.dcmwrite(DicomWeb(server.url, verify=server_cert, retries=0), ct())
        own = ssl.create_default_context(cafile=server_cert)
        own.load_cert_chain(client_cert, client_key)
        await aiodicom.dcmwrite(DicomWeb(server.url, verify=own), ct())
        assert len(server.stored) == 3


async def test_your_own_client(fake: FakeDicomWeb) -> None:
    async with httpx.AsyncClient(headers={"X-From": "mine"}) as client:
        sink = DicomWeb(fake.url, client=client, token="t")
        await aiodicom.dcmwrite(sink, ct())
        [result] = await collect(sink.store_many([(0, pydicom_bytes(ct()))]))
        assert result.ok
        assert not client.is_closed  # yours: never closed by aiodicom
        await aiodicom.dcmwrite(sink, ct())
    assert [r.headers["x-from"] for r in fake.stow_requests] == ["mine"] * 3
    assert [r.headers["authorization"] for r in fake.stow_requests] == ["Bearer t"] * 3
    with pytest.raises(ValueError, match="your own client"):
        DicomWeb(fake.url, client=httpx.AsyncClient(), verify=False)


async def test_timeout_waiting_for_the_response(fake: FakeDicomWeb) -> None:
    """The body was sent, the answer does not come: the instance may be stored, so
    it is not sent again."""

    def slow(server: FakeDicomWeb, request: Request) -> Reply:
        time.sleep(1.0)
        return standard(server, request)

    fake.responder = slow
    with pytest.raises(TimeoutError, match="may have been stored"):
        await aiodicom.dcmwrite(DicomWeb(fake.url, timeout=0.2), ct())
    assert len(fake.stow_requests) == 1


async def test_write_returns_only_when_the_chunk_is_sent(fake: FakeDicomWeb) -> None:
    """A chunk may be a view of the caller's buffer: once write() returns, changing
    the buffer must not change what the server gets."""
    ds = ct()
    data = pydicom_bytes(ds)
    sink = DicomWeb(fake.url)
    writer = await sink.open_async(exist_ok=True)
    buffer = bytearray(64 * 1024)
    for start in range(0, len(data), len(buffer)):
        piece = data[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        await writer.write(memoryview(buffer)[: len(piece)])
        buffer[:] = b"\xff" * len(buffer)  # the caller reuses its buffer
    await writer.commit()
    assert fake.stored[ds.SOPInstanceUID] == data


async def test_url_and_storage_options() -> None:
    sink = resolve(
        "dicomweb+https://pacs.example.org/dicom-web/",
        {"token": "t", "headers": {"X": "1"}, "verify": False, "batch_count": 5, "retries": 1},
    )
    assert isinstance(sink, DicomWeb)
    assert sink.url == "https://pacs.example.org/dicom-web"
    assert sink.studies_url == "https://pacs.example.org/dicom-web/studies"
    assert (sink.batch_count, sink.retries) == (5, 1)
    assert resolve("dicomweb+http://127.0.0.1:8042/dicom-web").url == (  # type: ignore[union-attr]
        "http://127.0.0.1:8042/dicom-web"
    )
    with pytest.raises(TypeError, match="unexpected keyword argument 'key'"):
        resolve("dicomweb+https://h/p", {"key": "s3-style"})
    with pytest.raises(ValueError, match="basic_auth"):
        DicomWeb("https://h/p", token="t", basic_auth=("u", "p"))
    with pytest.raises(ValueError, match="http"):
        DicomWeb("ftp://h/p")


async def test_bad_storage_option_is_reported() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        await aiodicom.dcmwrite("dicomweb+https://h/p", ct(), storage_options={"nope": 1})


def test_aiodicom_imports_without_httpx() -> None:
    code = (
        "import sys, aiodicom, aiodicom.sinks; "
        "assert 'httpx' not in sys.modules, 'httpx imported'; "
        "sys.modules['httpx'] = None; "
        "from aiodicom.sinks import DicomWeb\n"
        "try:\n    DicomWeb('https://h/p')\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "install aiodicom's 'dicomweb' extra (pip install '.[dicomweb]' in a checkout)" in out
