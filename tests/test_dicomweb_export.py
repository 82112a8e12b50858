"""Bulk export to a DICOMweb server: ``aiodicom.export`` and ``aiodicom export`` with a
``dicomweb+http(s)://`` destination.

* Against a real Orthanc (its DICOMweb plugin): every instance stored is
  byte-identical to ``pydicom.dcmwrite`` (read back with ``/instances/{id}/file``);
  requests hold many instances (counted by a recording proxy, the fake server in
  ``tests/fake_dicomweb.py`` passing them on); a cancellation mid-export stores
  nothing half and reports what may have been stored; the command line as a user
  runs it (exit status, report lines, progress lines).
* Against the fake server: the Azure duplicate (45070) and per-instance failures
  mapped to item results, ``skip_existing`` (the search, and the server's word),
  ``concurrency`` requests in flight, the batch limits, ``fail_fast``, the dry run,
  ``storage_options`` reaching the sink, and the options refused before any work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from copy import deepcopy
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

import aiodicom
from aiodicom import Checksum, DicomWebError, ExportProgress, Status
from aiodicom.cli import main
from tests import datasets
from tests.fake_dicomweb import (
    FakeDicomWeb,
    Reply,
    Request,
    azure,
    dicom_json,
    failed_item,
    forwarding,
    google,
    referenced_item,
    standard,
)
from tests.helpers import (
    BROKEN_DICOM,
    MiB,
    ct,
    fresh,
    hooked,
    pydicom_bytes,
    read_report,
    stored_file,
)

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("ignore::UserWarning")]

SRC = str(Path(aiodicom.__file__).resolve().parents[1])  # the aiodicom under test


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def fake() -> Any:
    with FakeDicomWeb(standard) as server:
        yield server
    assert not [r for r in server.requests if r.method == "DELETE"]  # never deletes


def scans(folder: Path, *, studies: int = 2, per_study: int = 3, big: bool = False) -> list[Path]:
    """A folder of DICOM files, sorted by study (as a PACS export is), plus other
    kinds of instance (with `big`, one with 6 MiB of Pixel Data, which the export
    streams from the file); returns the files in the order the export lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    instances: list[Dataset] = []
    for _ in range(studies):
        study, series = generate_uid(), generate_uid()
        for number in range(per_study):
            ds = ct(16)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.InstanceNumber = number
            instances.append(ds)
    for make in (
        datasets.deflated,
        datasets.big_endian,
        datasets.implicit_little,
        datasets.encapsulated_multiframe,
        datasets.private_tags,
    ):
        instances.append(fresh(make()))
    if big:
        instances.append(fresh(datasets.multiframe(6 * MiB, odd=True)))
    paths = []
    for number, ds in enumerate(instances):
        path = folder / f"{number:03d}.dcm"
        pydicom.dcmwrite(path, ds)
        paths.append(path)
    return paths


def uid_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def uid_in(url: str | None) -> str:
    """The SOP Instance UID at the end of an instance's URL."""
    assert url is not None
    return url.rsplit("/", 1)[-1]


def dw(url: str) -> str:
    return "dicomweb+" + url


# ----------------------------------------------------------------------------- Orthanc


async def test_folder_to_orthanc_batched_byte_identical(
    orthanc_dicomweb: str, tmp_path: Path
) -> None:
    """Every instance stored as pydicom writes it; a file pydicom refuses fails alone;
    requests hold several instances, in source order (counted by a recording proxy)."""
    paths = scans(tmp_path / "scans", big=True)
    (tmp_path / "scans" / "notes.txt").write_bytes(BROKEN_DICOM)
    seen: list[ExportProgress] = []
    with FakeDicomWeb(forwarding(f"{orthanc_dicomweb}/studies")) as proxy:
        report = await aiodicom.export(
            tmp_path / "scans",
            dw(proxy.url),
            storage_options={"batch_count": 4},
            concurrency=2,
            progress=seen.append,
            report=tmp_path / "report.jsonl",
        )
        requests = proxy.stow_requests
    assert (report.written, report.skipped, report.failed) == (len(paths), 0, 1)
    assert [p.done for p in seen] == list(range(1, len(paths) + 2))  # progress per item
    [failure] = report.failures
    assert failure.source.endswith("notes.txt")
    assert failure.destination is None
    assert type(failure.error).__name__ == "InvalidDicomError"

    # batched: fewer requests than instances, at most 4 each, each in source order
    # (the sources are handed out one at a time to the two requests in flight)
    order = [uid_of(path) for path in paths]
    assert len(requests) < len(paths)
    sent = []
    for request in requests:
        uids = [part.sop_instance_uid for part in request.parts]
        assert 1 <= len(uids) <= 4
        assert uids == sorted(uids, key=order.index)
        sent += uids
    assert sorted(sent) == sorted(order)  # each once

    by_source = {item.source: item for item in report.items}
    for path in paths:
        item = by_source[str(path)]
        expected = pydicom_bytes(path)
        uid = uid_of(path)
        assert item.status is Status.WRITTEN
        assert item.bytes == len(expected)
        assert item.checksum == _crc32c(expected)
        assert item.destination is not None
        assert item.destination.startswith(orthanc_dicomweb + "/studies/")  # RetrieveURL
        assert item.destination.endswith(f"/instances/{uid}")
        assert await stored_file(orthanc_dicomweb, uid) == expected

    summary, lines = read_report(tmp_path / "report.jsonl")
    assert (summary["written"], summary["failed"]) == (len(paths), 1)
    assert sorted(line["source"] for line in lines) == sorted(by_source)


def _crc32c(data: bytes) -> Checksum:
    checksum = Checksum("crc32c")
    checksum.update(data)
    return checksum


async def test_cancelled_mid_export_stores_nothing_half(
    orthanc_dicomweb: str, tmp_path: Path
) -> None:
    """A cancellation while an instance streams: that instance is not stored; the
    ones sent whole before it in the request are reported as possibly stored (not
    as written); the rest are not listed.  Running again with skip_existing
    finishes the job."""
    first, second, after = ct(), ct(), ct()
    seen: list[ExportProgress] = []
    with anyio.CancelScope() as scope:

        def cancel() -> None:
            anyio.from_thread.run_sync(scope.cancel)

        big, big_bytes = hooked(12 * MiB, 2, cancel)  # cancels at its 2nd 4 MiB read
        sources = [first, second, big, after]
        await aiodicom.export(
            sources,
            dw(orthanc_dicomweb),
            concurrency=1,
            progress=seen.append,
            report=tmp_path / "report.jsonl",
        )
    assert scope.cancelled_caught
    assert await stored_file(orthanc_dicomweb, big.SOPInstanceUID) is None
    assert await stored_file(orthanc_dicomweb, after.SOPInstanceUID) is None
    assert [uid_in(p.item.destination) for p in seen] == [
        first.SOPInstanceUID,
        second.SOPInstanceUID,
    ]
    for progress in seen:
        assert progress.item.status is Status.FAILED
        assert isinstance(progress.item.error, ConnectionAbortedError)
        assert "may have been stored" in str(progress.item.error)
        assert "cancelled" in str(progress.item.error)
    lines = (tmp_path / "report.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the two results, streamed; no summary: it never ended
    for ds in (first, second):  # whole, or not at all
        assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) in (None, pydicom_bytes(ds))

    report = await aiodicom.export(sources, dw(orthanc_dicomweb), skip_existing=True)
    assert report.failed == 0
    assert report.written + report.skipped == 4
    assert await stored_file(orthanc_dicomweb, big.SOPInstanceUID) == big_bytes
    for ds in (first, second, after):
        assert await stored_file(orthanc_dicomweb, ds.SOPInstanceUID) == pydicom_bytes(ds)


async def test_no_clobber_and_skip_existing_search_orthanc(orthanc_dicomweb: str) -> None:
    """Orthanc reports no duplicates: exist_ok=False and skip_existing search first."""
    old, new = ct(), ct()
    await aiodicom.dcmwrite(dw(orthanc_dicomweb), old)
    changed = deepcopy(old)
    changed.PatientName = "Other^Bytes"
    report = await aiodicom.export([changed, new], dw(orthanc_dicomweb), exist_ok=False)
    refused, written = report.items  # one request: results in order
    assert refused.status is Status.FAILED
    assert isinstance(refused.error, FileExistsError)
    assert written.status is Status.WRITTEN
    report = await aiodicom.export([changed, new], dw(orthanc_dicomweb), skip_existing=True)
    assert (report.skipped, report.written) == (2, 0)
    assert await stored_file(orthanc_dicomweb, old.SOPInstanceUID) == pydicom_bytes(old)


# ----------------------------------------------------------------------------- the CLI


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "aiodicom", "export", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_cli_exports_a_folder_to_orthanc(orthanc_dicomweb: str, tmp_path: Path) -> None:
    paths = scans(tmp_path / "scans", studies=2, per_study=4)
    (tmp_path / "scans" / "junk.dcm").write_bytes(BROKEN_DICOM)
    result = run_cli(
        str(tmp_path / "scans"), dw(orthanc_dicomweb), "--report", "r.jsonl", "-v", cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert f"{len(paths)} written, 0 skipped, 1 failed" in result.stdout
    # progress on stderr (not a terminal: a line per item with -v, failures once,
    # as they happen)
    assert "\r" not in result.stderr
    assert result.stderr.count("junk.dcm") == 1
    assert result.stderr.count(f"written {tmp_path / 'scans'}") == len(paths)
    assert f"-> {orthanc_dicomweb}/studies/" in result.stderr
    summary, lines = read_report(tmp_path / "r.jsonl")
    assert (summary["written"], summary["failed"]) == (len(paths), 1)
    statuses = {Path(line["source"]).name: line["status"] for line in lines}
    assert statuses == {**{p.name: "written" for p in paths}, "junk.dcm": "failed"}
    for line in lines:
        if line["status"] == "written":
            assert line["checksum_algorithm"] == "crc32c"
            assert line["bytes"] > 0
    for path in paths:
        assert anyio.run(stored_file, orthanc_dicomweb, uid_of(path)) == pydicom_bytes(path)

    # run again, resuming: everything is there (found by the search), nothing is sent
    (tmp_path / "scans" / "junk.dcm").unlink()
    result = run_cli(
        str(tmp_path / "scans"), dw(orthanc_dicomweb), "--skip-existing", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"0 written, {len(paths)} skipped, 0 failed" in result.stdout


def test_cli_stopped_by_sigterm_mid_export(orthanc_dicomweb: str, tmp_path: Path) -> None:
    """SIGTERM while instances stream: exit 143; the report lists what finished and
    what may have been stored; nothing else is in Orthanc, and nothing half."""
    import httpx

    source = tmp_path / "in"
    source.mkdir()
    patient = generate_uid()
    expected = {}
    for number in range(12):
        ds = fresh(datasets.multiframe(8 * MiB))
        ds.PatientID = patient
        path = source / f"{number:02d}.dcm"
        pydicom.dcmwrite(path, ds)
        expected[str(ds.SOPInstanceUID)] = path
    rest = orthanc_dicomweb.removesuffix("/dicom-web")
    query = {"Level": "Instance", "Query": {"PatientID": patient}}
    options = ["-j", "2", "--storage-option-json", "batch_count=3", "--report", "r.jsonl"]
    process = subprocess.Popen(
        [sys.executable, "-m", "aiodicom", "export", str(source), dw(orthanc_dicomweb), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        while not httpx.post(f"{rest}/tools/find", json=query).json():
            assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert stdout.startswith("interrupted: ")
    summary, lines = read_report(tmp_path / "r.jsonl")
    assert summary["stopped_early"] is True
    assert lines  # Orthanc had one: it was sent whole, and is listed
    listed = {uid_in(line["destination"]): line for line in lines}
    for uid, path in expected.items():
        stored = anyio.run(stored_file, orthanc_dicomweb, uid)
        line = listed.get(uid)
        if line is None:  # in flight or not started: not stored
            assert stored is None, path
        elif line["status"] == "written":
            assert stored == pydicom_bytes(path)
        else:
            assert line["status"] == "failed"
            assert "may have been stored" in line["error"]
            assert stored in (None, pydicom_bytes(path))


def test_cli_refuses_what_does_not_apply_before_any_work(
    fake: FakeDicomWeb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans(tmp_path / "scans", studies=1, per_study=2)
    source, url = str(tmp_path / "scans"), dw(fake.url)
    report = tmp_path / "r.jsonl"
    for extra, message in [
        (["--template", "{PatientID}/{SOPInstanceUID}.dcm"], "template does not apply"),
        (["--verify"], "verify is not available"),
        (["--storage-option", "endpoint_url=http://x"], "endpoint_url"),
        (["--storage-option-json", "upsert=true", "--skip-existing"], "upsert=True"),
        (["--storage-option-json", "batch_count=0"], "batch_count"),
    ]:
        assert main(["export", source, url, "--report", str(report), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("aiodicom export: error: "), err
        assert message in err, err
        assert err.count("\n") == 1
    assert fake.requests == []
    assert not report.exists()


def test_cli_dry_run_names_instance_urls_and_sends_nothing(
    fake: FakeDicomWeb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = scans(tmp_path / "scans", studies=1, per_study=3)
    assert main(["export", str(tmp_path / "scans"), dw(fake.url), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for path in paths:
        assert f"planned {path} -> {fake.url}/studies/" in out
        assert f"/instances/{uid_of(path)}\n" in out
    assert f"{len(paths)} would write" in out
    assert fake.requests == []


# ----------------------------------------------------------------------------- the fake


async def test_concurrency_is_requests_in_flight(fake: FakeDicomWeb) -> None:
    """Three requests of three instances, all open at once: the server answers none
    before the three have arrived."""
    together = threading.Barrier(3, timeout=120)

    def answer_together(server: FakeDicomWeb, request: Request) -> Reply:
        together.wait()
        return standard(server, request)

    fake.responder = answer_together
    instances = [ct() for _ in range(9)]
    report = await aiodicom.export(
        instances, dw(fake.url), storage_options={"batch_count": 3}, concurrency=3
    )
    assert report.written == 9
    assert report.ok
    order = [ds.SOPInstanceUID for ds in instances]
    groups = [[part.sop_instance_uid for part in r.parts] for r in fake.stow_requests]
    assert [len(group) for group in groups] == [3, 3, 3]
    assert all(group == sorted(group, key=order.index) for group in groups)  # source order
    assert sorted(uid for group in groups for uid in group) == sorted(order)


async def test_batch_bytes_bounds_a_request(fake: FakeDicomWeb) -> None:
    instances = [ct() for _ in range(5)]
    size = len(pydicom_bytes(instances[0]))
    report = await aiodicom.export(
        instances, dw(fake.url), storage_options={"batch_bytes": 2 * size}, concurrency=1
    )
    assert report.written == 5
    # a request takes no further instance once it holds batch_bytes: 2 + 2 + 1
    assert [len(r.parts) for r in fake.stow_requests] == [2, 2, 1]


async def test_per_instance_failure_and_warnings(fake: FakeDicomWeb) -> None:
    """A 202 with one instance in FailedSOPSequence: that item fails with the
    server's reason, the others are written (named by their RetrieveURL)."""
    instances = [ct() for _ in range(3)]
    bad = instances[1].SOPInstanceUID

    def answer(server: FakeDicomWeb, request: Request) -> Reply:
        referenced = [
            referenced_item(server, p) for p in request.parts if p.sop_instance_uid != bad
        ]
        failed = [
            failed_item(p, 0xC122, t00081196="no")
            for p in request.parts
            if p.sop_instance_uid == bad
        ]
        return Reply(
            202, dicom_json(referenced, failed), {"Content-Type": "application/dicom+json"}
        )

    fake.responder = answer
    # one request in flight: the three instances share it (see test_concurrency_...)
    report = await aiodicom.export(instances, dw(fake.url), concurrency=1)
    assert len(fake.stow_requests) == 1
    results = {uid_in(item.destination): item for item in report.items}
    for ds in instances:
        item = results[ds.SOPInstanceUID]
        if ds.SOPInstanceUID == bad:
            assert item.status is Status.FAILED
            assert isinstance(item.error, DicomWebError)
            assert item.error.failure_reason == 0xC122
            assert item.error.status_code == 202
            assert item.destination == (
                f"{fake.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                f"/instances/{bad}"
            )
            assert item.bytes == 0
            assert item.checksum is None
        else:
            assert item.status is Status.WRITTEN
            assert item.destination == f"{fake.url}/instances/{ds.SOPInstanceUID}"
            assert item.bytes == len(pydicom_bytes(ds))


async def test_azure_duplicates(fake: FakeDicomWeb) -> None:
    """Azure refuses a duplicate with FailureReason 45070: FileExistsError; with
    skip_existing the item is skipped, found by the search (and not sent) or, with
    the search off, by the server's refusal."""
    fake.responder = azure
    old, new = ct(), ct()
    fake.stored[old.SOPInstanceUID] = b"already there"

    # one request in flight, so both share one request and its answer
    report = await aiodicom.export([old, new], dw(fake.url), concurrency=1)
    assert [item.status for item in report.items] == [Status.FAILED, Status.WRITTEN]
    error = report.items[0].error
    assert isinstance(error, FileExistsError)
    assert isinstance(error.__cause__, DicomWebError)
    assert error.__cause__.failure_reason == 45070

    fake.requests.clear()
    new2 = ct()
    report = await aiodicom.export([old, new2], dw(fake.url), skip_existing=True, concurrency=1)
    assert [item.status for item in report.items] == [Status.SKIPPED, Status.WRITTEN]
    assert isinstance(report.items[0].error, FileExistsError)
    assert report.ok
    searches = [r for r in fake.requests if r.method == "GET"]
    assert [r.query["SOPInstanceUID"] for r in searches] == [
        [old.SOPInstanceUID],
        [new2.SOPInstanceUID],
    ]
    [request] = fake.stow_requests
    assert [p.sop_instance_uid for p in request.parts] == [new2.SOPInstanceUID]

    fake.requests.clear()
    new3 = ct()
    report = await aiodicom.export(
        [old, new3],
        dw(fake.url),
        skip_existing=True,
        concurrency=1,
        storage_options={"check_exists": False},
    )
    assert [item.status for item in report.items] == [Status.SKIPPED, Status.WRITTEN]
    cause = report.items[0].error.__cause__  # type: ignore[union-attr]
    assert isinstance(cause, DicomWebError)
    assert cause.failure_reason == 45070
    assert not [r for r in fake.requests if r.method == "GET"]


async def test_google_duplicate_with_other_bytes(fake: FakeDicomWeb) -> None:
    """Google refuses other bytes under a stored UID (409, reason 272): failed, or
    skipped with skip_existing (here with the search off, the server's word)."""
    fake.responder = google
    old = ct()
    fake.stored[old.SOPInstanceUID] = b"other bytes"
    [item] = (await aiodicom.export([old], dw(fake.url))).items
    assert item.status is Status.FAILED
    assert isinstance(item.error, FileExistsError)
    options = {"check_exists": False}
    report = await aiodicom.export(
        [old], dw(fake.url), skip_existing=True, storage_options=options
    )
    assert [item.status for item in report.items] == [Status.SKIPPED]


async def test_retried_files_are_read_again(fake: FakeDicomWeb, tmp_path: Path) -> None:
    """A 503 sends the request's instances again: files are read again for it (not
    kept in memory meanwhile), and the same bytes arrive."""
    paths = scans(tmp_path / "scans", studies=1, per_study=3)
    fake.plan = [Reply(503, b"busy", {"Retry-After": "0"})]
    report = await aiodicom.export(tmp_path / "scans", dw(fake.url), concurrency=1)
    assert report.written == len(paths)
    first, second = fake.stow_requests
    assert [p.data for p in first.parts] == [p.data for p in second.parts]
    assert [p.data for p in second.parts] == [pydicom_bytes(path) for path in paths]
    assert [item.bytes for item in report.items] == [len(p.data) for p in second.parts]


async def test_fail_fast_counts_the_whole_answer_then_stops(fake: FakeDicomWeb) -> None:
    fake.responder = azure
    instances = [ct() for _ in range(8)]
    fake.stored[instances[1].SOPInstanceUID] = b"already there"
    report = await aiodicom.export(
        instances,
        dw(fake.url),
        storage_options={"batch_count": 4},
        concurrency=1,
        fail_fast=True,
    )
    assert report.stopped_early
    # the first answer's four results are all counted; no other request is sent
    assert [item.status for item in report.items] == [
        Status.WRITTEN,
        Status.FAILED,
        Status.WRITTEN,
        Status.WRITTEN,
    ]
    assert len(fake.stow_requests) == 1


async def test_dry_run_sends_nothing(fake: FakeDicomWeb) -> None:
    old, new = ct(), ct()
    fake.stored[old.SOPInstanceUID] = b"there"
    report = await aiodicom.export([old, new], dw(fake.url), dry_run=True)
    assert [item.status for item in report.items] == [Status.PLANNED, Status.PLANNED]
    assert sorted(item.destination or "" for item in report.items) == sorted(
        f"{fake.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
        for ds in (old, new)
    )
    assert fake.requests == []
    report = await aiodicom.export([old, new], dw(fake.url), dry_run=True, skip_existing=True)
    statuses = {uid_in(item.destination): item.status for item in report.items}
    assert statuses == {old.SOPInstanceUID: Status.SKIPPED, new.SOPInstanceUID: Status.PLANNED}
    assert {r.method for r in fake.requests} == {"GET"}


async def test_storage_options_are_the_sinks_arguments(fake: FakeDicomWeb) -> None:
    await aiodicom.export(
        [ct()], dw(fake.url), storage_options={"token": "T0K", "headers": {"X-Trace": "7"}}
    )
    [request] = fake.stow_requests
    assert request.headers["authorization"] == "Bearer T0K"
    assert request.headers["x-trace"] == "7"


async def test_same_instance_twice_is_a_duplicate_destination(fake: FakeDicomWeb) -> None:
    ds = ct()
    report = await aiodicom.export([ds, ds], dw(fake.url))
    assert [item.status for item in report.items] == [Status.FAILED, Status.WRITTEN] or [
        item.status for item in report.items
    ] == [Status.WRITTEN, Status.FAILED]
    [failed] = report.failures
    assert isinstance(failed.error, aiodicom.DuplicateDestinationError)
    assert sum(len(r.parts) for r in fake.stow_requests) == 1


@pytest.mark.parametrize("batch_count", [1, 64])
async def test_of_two_items_with_one_uid_the_first_in_source_order_is_sent(
    fake: FakeDicomWeb, tmp_path: Path, batch_count: int
) -> None:
    """The first item's read ends only after the second has been read, so the
    second would be sent first if reads decided; the first in source order is
    sent, the second fails as a duplicate."""
    first, second = ct(), ct()
    second.SOPInstanceUID = first.SOPInstanceUID
    second.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    first.InstanceNumber, second.InstanceNumber = 1, 2
    paths = [tmp_path / "1.dcm", tmp_path / "2.dcm"]
    for path, ds in zip(paths, (first, second), strict=True):
        pydicom.dcmwrite(path, ds)
    second_read = threading.Event()

    def first_after_second(ds: Dataset) -> None:
        if int(ds.InstanceNumber) == 2:
            second_read.set()
        elif not second_read.is_set():
            # a safety net, not a measure: an export that reads one item at a
            # time would wait here for ever
            second_read.wait(20)

    report = await aiodicom.export(
        paths,
        dw(fake.url),
        concurrency=2,
        storage_options={"batch_count": batch_count},
        transform=first_after_second,
    )

    assert second_read.is_set()
    by_source = {item.source: item for item in report.items}
    assert by_source[str(paths[0])].status is Status.WRITTEN
    duplicate = by_source[str(paths[1])]
    assert duplicate.status is Status.FAILED
    assert isinstance(duplicate.error, aiodicom.DuplicateDestinationError)
    [part] = [part for request in fake.stow_requests for part in request.parts]
    assert part.data == pydicom_bytes(paths[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"template": "{PatientID}/{SOPInstanceUID}.dcm"}, ValueError, "template does not apply"),
        ({"template": lambda ds: "x.dcm"}, ValueError, "template does not apply"),
        ({"verify": True}, ValueError, "verify is not available"),
        ({"upload_options": {"part_size": 8}}, ValueError, "upload_options"),
        ({"storage_options": {"anon": True}}, TypeError, "anon"),
        ({"storage_options": {"upsert": True}, "exist_ok": False}, ValueError, "upsert"),
    ],
)
async def test_refused_before_any_work(
    fake: FakeDicomWeb, tmp_path: Path, kwargs: dict[str, Any], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        await aiodicom.export([ct()], dw(fake.url), report=tmp_path / "r.jsonl", **kwargs)
    assert fake.requests == []
    assert not (tmp_path / "r.jsonl").exists()


async def test_missing_sop_instance_uid_fails_the_item(fake: FakeDicomWeb) -> None:
    ds = ct()
    del ds.SOPInstanceUID
    report = await aiodicom.export([ds, ct()], dw(fake.url))
    assert [item.status for item in report.items] == [Status.FAILED, Status.WRITTEN]
    assert isinstance(report.items[0].error, aiodicom.NamingError)


def test_dry_run_report(tmp_path: Path) -> None:
    with FakeDicomWeb(standard) as server:
        paths = scans(tmp_path / "s", studies=1, per_study=2)
        assert (
            main(
                [
                    "export",
                    str(tmp_path / "s"),
                    dw(server.url),
                    "--dry-run",
                    "-q",
                    "--report",
                    str(tmp_path / "r.jsonl"),
                ]
            )
            == 0
        )
    summary, lines = read_report(tmp_path / "r.jsonl")
    assert summary["dry_run"] is True
    assert [line["status"] for line in lines] == ["planned"] * len(paths)
    assert all(line["destination"].startswith(server.url + "/studies/") for line in lines)
