"""Issue 12's export promises, attacked: names the store would cut, URL roots that
lost their protocol, reports that missed written items, links out of the root,
cancellation held up by slow sources, SIGTERM, raising callbacks, lost GCS
sessions.  Each test failed before its fix (see docs/guarantees.md)."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset

import aiodicom
from aiodicom import NamingError, Status
from aiodicom.sinks import FsspecFile
from tests import datasets
from tests.helpers import BROKEN_DICOM, pydicom_bytes, read_report

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


def _slice(number: int, patient: str = "P", size: int = 16) -> Dataset:
    ds = datasets.ct_slice(size, size)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.55.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    ds.PatientID = patient
    return ds


def _source_folder(folder: Path, count: int, **kwargs: Any) -> Path:
    """`folder` with `count` slices ``000.dcm``... (see :func:`_slice`)."""
    folder.mkdir()
    for number in range(count):
        ds = _slice(number, **{k: v(number) if callable(v) else v for k, v in kwargs.items()})
        ds.save_as(folder / f"{number:03d}.dcm", enforce_file_format=True)
    return folder


def _cli(*args: str) -> subprocess.Popen[bytes]:
    """``python -m aiodicom export ARGS`` in a subprocess, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "aiodicom", "export", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".aiodicom-tmp")]


# --- item 2: names the store's client would cut ----------------------------------------


@pytest.mark.parametrize("store", ["s3", "az"])
async def test_version_like_values_do_not_collapse_objects(
    store: str,
    s3_bucket: str,
    s3_storage_options: dict[str, Any],
    azure_container: str,
    azure_storage_options: dict[str, Any],
) -> None:
    import fsspec

    root, options = (
        (s3_bucket, s3_storage_options)
        if store == "s3"
        else (azure_container, azure_storage_options)
    )
    marker = "versionId" if store == "s3" else "versionid"
    items = [_slice(1, f"X?{marker}=1"), _slice(2, f"X?{marker}=2"), _slice(3, "Y#frag")]
    report = await aiodicom.export(
        items, f"{root}/out", template="{PatientID}.dcm", storage_options=options
    )
    assert report.ok, report.failures
    assert report.written == 3
    fs, _ = fsspec.core.url_to_fs(root, **options)
    fs.invalidate_cache()
    names = sorted(name.rsplit("/", 1)[-1] for name in fs.find(f"{root}/out"))
    assert names == sorted([f"X_{marker}=1.dcm", f"X_{marker}=2.dcm", "Y_frag.dcm"])
    expected = {ds.SOPInstanceUID: pydicom_bytes(ds) for ds in items}
    for item in report.items:
        assert item.destination is not None
        data = fs.cat_file(item.destination)
        assert data == expected[pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID]


async def test_dcmwrite_refuses_a_key_s3fs_would_cut(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import s3fs

    with pytest.raises(ValueError, match="version"):
        await aiodicom.dcmwrite(
            f"{s3_bucket}/X?versionId=1/a.dcm", _slice(1), storage_options=s3_storage_options
        )
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.invalidate_cache()
    assert fs.find(s3_bucket) == []


async def test_a_callable_template_with_url_syntax_fails_the_item(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    report = await aiodicom.export(
        [_slice(1)],
        f"{s3_bucket}/out",
        template=lambda ds: "a?versionId=3.dcm",
        storage_options=s3_storage_options,
    )
    (failure,) = report.failures
    assert isinstance(failure.error, NamingError)


# --- item 3: URL roots keep their protocol --------------------------------------------


@pytest.mark.parametrize("root", ["memory://", "memory:///", "memory://x/"])
async def test_memory_roots_write_to_memory_never_to_disk(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fsspec

    monkeypatch.chdir(tmp_path)
    ds = _slice(7)
    report = await aiodicom.export([ds], root, template="{SOPInstanceUID}.dcm")
    assert report.ok, report.failures
    (item,) = report.items
    assert item.destination is not None
    assert item.destination.startswith("memory://")
    assert list(tmp_path.iterdir()) == []  # nothing under a local "memory:" folder
    fs = fsspec.filesystem("memory")
    assert fs.cat_file(item.destination) == pydicom_bytes(ds)
    fs.rm(item.destination)


# --- item 5: the fail-fast report lists every written item -----------------------------


@pytest.mark.parametrize("attempt", range(4))
async def test_fail_fast_report_lists_every_file_on_disk(tmp_path: Path, attempt: int) -> None:
    folder = _source_folder(tmp_path / "in", 60)
    (folder / f"{20 + attempt:03d}.dcm").write_bytes(BROKEN_DICOM)
    report = await aiodicom.export(
        folder, tmp_path / "out", template="{SOPInstanceUID}.dcm", fail_fast=True, workers=1
    )
    assert report.stopped_early
    on_disk = {p.name for p in (tmp_path / "out").glob("*.dcm")}
    listed = {
        Path(i.destination).name
        for i in report.items
        if i.status is Status.WRITTEN and i.destination is not None
    }
    assert on_disk == listed
    sources = {Path(i.destination).name: i.source for i in report.items if i.destination}
    for name in on_disk:
        expected = pydicom_bytes(pydicom.dcmread(sources[name]))
        assert (tmp_path / "out" / name).read_bytes() == expected
    assert _temp_files(tmp_path) == []


# --- item 7: containment on resolved paths -------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_link_inside_the_root_cannot_lead_items_out(tmp_path: Path, workers: int) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "P").symlink_to(outside, target_is_directory=True)
    (out / "Q.dcm").symlink_to(outside / "q.dcm")
    sources = _source_folder(tmp_path / "in", 70, patient=lambda n: "P" if n % 2 else "Q")
    report = await aiodicom.export(
        sources, out, template="{PatientID}/{SOPInstanceUID}.dcm", workers=workers
    )
    assert list(outside.iterdir()) == []
    assert report.failed == 35  # every item of patient P (the odd numbers)
    assert report.written == 35
    assert all(isinstance(i.error, NamingError) for i in report.failures)
    assert all(int(Path(i.source).stem) % 2 for i in report.failures)
    report = await aiodicom.export([_slice(1, "Q")], out, template="{PatientID}.dcm")
    (failure,) = report.failures
    assert isinstance(failure.error, NamingError)
    assert list(outside.iterdir()) == []


async def test_a_link_that_appears_during_the_export_cannot_lead_items_out(
    tmp_path: Path,
) -> None:
    """A folder of the destination replaced by a link to elsewhere while the
    export runs: the items after it fail, nothing goes through the link."""
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    sources = _source_folder(tmp_path / "in", 6)

    def progress(now: aiodicom.ExportProgress) -> None:
        if now.done == 2:
            (out / "P").rename(tmp_path / "moved")
            (out / "P").symlink_to(outside, target_is_directory=True)

    report = await aiodicom.export(
        sources,
        out,
        template="{PatientID}/{SOPInstanceUID}.dcm",
        concurrency=1,
        progress=progress,
    )
    assert list(outside.iterdir()) == []
    assert [r.status for r in report.items] == [Status.WRITTEN] * 2 + [Status.FAILED] * 4
    assert all(isinstance(i.error, NamingError) for i in report.failures)


# --- item 14: cancellation is not held up by slow sources ------------------------------


def _slow_generator(path: Path) -> Iterator[str]:
    yield str(path)
    time.sleep(8)  # a slow listing, a slow network share...
    yield str(path)


class _SlowFile(io.RawIOBase):
    """A source file object whose reads take long (a stalled network mount)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        time.sleep(0.5)
        return self._data.readinto(buffer)


async def test_cancel_returns_promptly_with_a_slow_generator(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    _slice(1).save_as(path, enforce_file_format=True)
    started = time.monotonic()
    with anyio.move_on_after(1.0):
        await aiodicom.export(_slow_generator(path), tmp_path / "out", workers=1)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("concurrency", [16, 1])  # 1: read, name and write in one hop
async def test_cancel_returns_promptly_with_a_slow_read(tmp_path: Path, concurrency: int) -> None:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, _slice(1, size=256))
    started = time.monotonic()
    with anyio.move_on_after(1.0):
        await aiodicom.export(
            [io.BufferedReader(_SlowFile(buffer.getvalue()), buffer_size=512)],
            tmp_path / "out",
            concurrency=concurrency,
        )
    assert time.monotonic() - started < 2.0
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*")) == []


# --- item 16: a raising progress callback raises its own exception ---------------------


class _CallbackError(Exception):
    pass


@pytest.mark.parametrize("workers", [1, 2])
async def test_a_raising_progress_callback_raises_itself(tmp_path: Path, workers: int) -> None:
    def progress(_: Any) -> None:
        raise _CallbackError("boom")

    sources = _source_folder(tmp_path / "in", 70)
    with pytest.raises(_CallbackError, match="boom"):
        await aiodicom.export(
            sources,
            tmp_path / "out",
            progress=progress,
            template="{SOPInstanceUID}.dcm",
            workers=workers,
        )
    assert _temp_files(tmp_path) == []


# --- item 15: SIGTERM stops the CLI cleanly --------------------------------------------


@pytest.mark.parametrize(
    ("workers", "jobs", "count", "started"),
    [
        ("1", "2", 400, 1),
        ("2", "2", 400, 1),
        # one item at a time: the command line's progress bar lets results come
        # back in batches, and the report must still list every file on disk
        ("1", "1", 600, 20),
    ],
)
def test_sigterm_stops_the_cli_like_ctrl_c(
    tmp_path: Path, workers: str, jobs: str, count: int, started: int
) -> None:
    sources = _source_folder(tmp_path / "in", count, size=256 if count == 400 else 64)
    report_path = tmp_path / "report.json"
    process = _cli(
        str(sources),
        str(tmp_path / "out"),
        *("--template", "{SOPInstanceUID}.dcm", "--report", str(report_path)),
        *("--workers", workers, "-j", jobs),
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "out").exists() or len(list((tmp_path / "out").glob("*.dcm"))) < started:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err.decode()
    assert b"Traceback" not in err
    assert b"interrupted" in out
    summary, items = read_report(report_path)
    assert summary["stopped_early"] is True
    listed = {Path(i["destination"]).name for i in items if i["status"] == "written"}
    on_disk = {p.name for p in (tmp_path / "out").glob("*.dcm")}
    assert on_disk == listed
    assert len(on_disk) < count
    assert _temp_files(tmp_path) == []


# --- item 17: a lost GCS upload session is started over --------------------------------


async def test_a_lost_gcs_session_starts_the_upload_over(
    gcs_bucket: str, gcs_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiodicom.sinks._stores.gcs import GCSStore

    original = GCSStore.upload_part
    lost: list[int] = []

    async def lose_the_session_once(
        self: GCSStore, number: int, offset: int, data: bytes, *rest: Any
    ) -> Any:
        if number == 2 and not lost:
            # the session expires: the server no longer knows its upload id
            lost.append(number)
            location = self.location
            assert location is not None
            self.location = re.sub(r"upload_id=[^&]+", "upload_id=expired", location)
        return await original(self, number, offset, data, *rest)

    monkeypatch.setattr(GCSStore, "upload_part", lose_the_session_once)
    ds = datasets.multiframe(2 * 1024 * 1024)
    sink = FsspecFile.from_url(
        f"{gcs_bucket}/lost.dcm", gcs_storage_options, part_size=256 * 1024, retries=2
    )
    await aiodicom.dcmwrite(sink, ds)
    assert lost == [2]
    import gcsfs

    fs = gcsfs.GCSFileSystem(**gcs_storage_options)
    assert fs.cat_file(f"{gcs_bucket}/lost.dcm") == pydicom_bytes(ds)


# --- issue 13: the report goes to disk as items finish; memory keeps failures only ------


async def test_a_streamed_report_and_only_failures_in_memory(tmp_path: Path) -> None:
    from tests.helpers import read_report

    items: list[Any] = [_slice(number) for number in range(30)]
    items.insert(10, Path(tmp_path / "missing.dcm"))
    report = await aiodicom.export(
        items,
        tmp_path / "out",
        template="{SOPInstanceUID}.dcm",
        report=tmp_path / "report.jsonl",
        keep_items=False,
    )
    assert (report.written, report.failed, report.done) == (30, 1, 31)
    assert [item.status for item in report.items] == [Status.FAILED]  # failures only
    assert report.bytes_written == sum(p.stat().st_size for p in (tmp_path / "out").iterdir())
    summary, lines = read_report(tmp_path / "report.jsonl")
    assert len(lines) == 31
    assert summary["written"] == 30
    assert summary["bytes_written"] == report.bytes_written
    assert {line["status"] for line in lines} == {"written", "failed"}


# --- item 15: a process killed outright leaves nothing; stale leftovers are swept -----

_KILLED_WRITER = """
import io, os, sys
import anyio
sys.path.insert(0, sys.argv[3])
import aiodicom
from tests import datasets

class Stalling(io.RawIOBase):
    # Pixel Data that arrives slowly: half of it, then a wait for the kill
    def __init__(self, size):
        self.size, self.position = size, 0
    def readable(self):
        return True
    def seekable(self):
        return True
    def tell(self):
        return self.position
    def seek(self, offset, whence=0):
        base = {0: 0, 1: self.position, 2: self.size}[whence]
        self.position = base + offset
        return self.position
    def readinto(self, buffer):
        if self.position >= 8 * 1024 * 1024:
            print("writing", flush=True)
            import time
            time.sleep(60)
        n = max(0, min(len(buffer), self.size - self.position))
        buffer[:n] = b"\\x01" * n
        self.position += n
        return n

ds = datasets.ct_slice(16, 16)
ds.PixelData = io.BufferedReader(Stalling(16 * 1024 * 1024))
anyio.run(lambda: aiodicom.dcmwrite(sys.argv[1], ds, exist_ok=sys.argv[2] == "1"))
"""


@pytest.mark.parametrize(
    ("exist_ok", "existing"),
    [(True, True), (True, False), (False, False)],  # exclusive + existing fails at once
)
def test_a_killed_writer_leaves_no_temporary_file(
    tmp_path: Path, exist_ok: bool, existing: bool
) -> None:
    target = tmp_path / "out.dcm"
    if existing:
        target.write_bytes(b"old")
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(target), "1" if exist_ok else "0", str(ROOT)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"writing\n"  # 8 MiB written, mid-write
    process.kill()
    process.wait()
    expected = ["out.dcm"] if existing else []
    assert sorted(os.listdir(tmp_path)) == expected
    if existing:
        assert target.read_bytes() == b"old"


async def test_export_removes_stale_temporary_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".x.dcm.deadbeef.aiodicom-tmp"
    fresh = out / ".y.dcm.cafef00d.aiodicom-tmp"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written by another export")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    report = await aiodicom.export([_slice(1)], out, template="{SOPInstanceUID}.dcm", workers=1)
    assert report.ok
    assert not stale.exists()
    assert fresh.exists()  # written to recently: not a leftover


# --- sweep of the error mapping: only a failed exclusive create is FileExistsError ----


async def test_azure_leased_blob_is_not_reported_as_existing(
    azure_container: str, azure_storage_options: dict[str, Any]
) -> None:
    from azure.storage.blob import BlobServiceClient

    container = azure_container.removeprefix("az://")
    service = BlobServiceClient.from_connection_string(azure_storage_options["connection_string"])
    blob = service.get_blob_client(container, "leased.dcm")
    blob.upload_blob(b"old")
    lease = blob.acquire_lease()
    try:
        with pytest.raises(Exception) as caught:  # noqa: PT011 (the type is the point)
            await aiodicom.dcmwrite(
                f"{azure_container}/leased.dcm",
                _slice(1),
                exist_ok=True,
                storage_options=azure_storage_options,
            )
        assert not isinstance(caught.value, FileExistsError), caught.value
        assert blob.download_blob().readall() == b"old"
    finally:
        lease.release()


def test_azure_conflicts_other_than_an_existing_blob_keep_their_error() -> None:
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

    from aiodicom.sinks._stores.azure import _is_exists

    def conflict(cls: type[Exception], code: str | None) -> Exception:
        error = cls(message=f"{code}")
        error.error_code = code  # type: ignore[attr-defined]
        return error

    assert _is_exists(conflict(ResourceExistsError, "BlobAlreadyExists"))
    assert _is_exists(conflict(ResourceModifiedError, "ConditionNotMet"))
    assert _is_exists(conflict(ResourceExistsError, None))
    for code in ("LeaseIdMissing", "PendingCopyOperation", "OperationNotAllowedInCurrentState"):
        assert not _is_exists(conflict(ResourceExistsError, code))


# --- issue 13: large values stream from the source file, memory stays bounded ---------


def _large_sources(folder: Path) -> list[Path]:
    """Source files with values beyond the streaming size: a 24 MiB multi-frame
    (odd length, padded), the same in Implicit VR and in Big Endian, and a large
    OB value besides the Pixel Data."""
    from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

    folder.mkdir()
    paths = []
    for number, syntax in enumerate([None, ImplicitVRLittleEndian, ExplicitVRBigEndian]):
        ds = datasets.multiframe(24 * 1024 * 1024, odd=number == 0)
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.66.{number}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if syntax is not None:
            ds.file_meta.TransferSyntaxUID = syntax
        if number == 0:
            ds.add_new(0x00091010, "OB", b"\x07" * (6 * 1024 * 1024 + 1))
            ds.add_new(0x00090010, "LO", "aiodicom test")
        path = folder / f"{number}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
        del ds
    return paths


@pytest.mark.parametrize("workers", [1, 2])
async def test_large_values_stream_from_the_source_with_bounded_memory(
    tmp_path: Path, workers: int
) -> None:
    import tracemalloc

    sources = _large_sources(tmp_path / "in")
    expected = {p.name: pydicom_bytes(pydicom.dcmread(p)) for p in sources}
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        report = await aiodicom.export(
            [str(p) for p in sources],
            tmp_path / "out",
            template="{SOPInstanceUID}.dcm",
            workers=workers,
            concurrency=1,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok, report.failures
    by_source = {Path(i.source).name: Path(i.destination or "") for i in report.items}
    for name, data in expected.items():
        assert by_source[name].read_bytes() == data
    if workers == 1:  # the values never were in this process's memory at once
        assert peak - base < 16 * 1024 * 1024, peak - base


def test_report_to_a_reader_that_goes_away(tmp_path: Path) -> None:
    """``aiodicom export ... --report - | head -2``: the report stops, the export
    finishes, no traceback."""
    sources = _source_folder(tmp_path / "in", 300)
    process = _cli(
        str(sources),
        str(tmp_path / "out"),
        *("--template", "{SOPInstanceUID}.dcm", "--report", "-", "-q", "--workers", "1"),
    )
    assert process.stdout is not None
    assert process.stderr is not None
    first = process.stdout.readline()
    assert json.loads(first)["status"] == "written"
    process.stdout.close()  # the reader goes away, as head does
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0, err.decode()
    assert b"Traceback" not in err
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 300


# --- one item at a time: read, name and write in one worker-thread hop -------------


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.05, 0.1, 0.2])
async def test_cancelling_one_item_at_a_time_reports_every_file_it_leaves(
    tmp_path: Path, delay: float
) -> None:
    """Cancelled at any moment (while an item is read, named or written), an
    export of one item at a time leaves only whole files, and each of them was
    reported written: a write is rolled back, or committed and counted."""
    big = datasets.multiframe(4 * 1024 * 1024)
    items = []
    for number in range(40):
        ds = copy.deepcopy(big) if number else big
        ds.SOPInstanceUID = f"1.2.3.{number}"
        items.append(ds)
    expected = pydicom_bytes(items[0])
    reported: list[aiodicom.ItemResult] = []

    def on_progress(progress: aiodicom.ExportProgress) -> None:
        assert progress.item is not None
        reported.append(progress.item)

    with anyio.move_on_after(delay):
        await aiodicom.export(
            items,
            tmp_path / "out",
            concurrency=1,
            progress=on_progress,
            template="{SOPInstanceUID}.dcm",
        )
    on_disk = sorted(p for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert _temp_files(tmp_path) == []
    for path in on_disk:
        content = path.read_bytes()
        assert len(content) == len(expected)
        assert content[-4096:] == expected[-4096:]
    written = sorted(
        Path(r.destination) for r in reported if r.status is Status.WRITTEN and r.destination
    )
    assert written == on_disk


async def test_one_item_at_a_time_decides_names_after_failed_items(tmp_path: Path) -> None:
    """Items that fail before they have a name, or are refused a taken one, do
    not hold up the names of the items after them."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "0-broken.dcm").write_bytes(BROKEN_DICOM)
    for number, (name, instance) in enumerate([("a", 1), ("b", 2), ("c", 1), ("d", 3)]):
        ds = _slice(number)
        ds.InstanceNumber = instance
        ds.save_as(folder / f"{number + 1}-{name}.dcm", enforce_file_format=True)
    report = await aiodicom.export(
        folder, tmp_path / "out", concurrency=1, template="{InstanceNumber}.dcm"
    )
    assert [r.status for r in report.items] == [
        Status.FAILED,
        Status.WRITTEN,
        Status.WRITTEN,
        Status.FAILED,
        Status.WRITTEN,
    ]
    assert isinstance(report.items[3].error, aiodicom.DuplicateDestinationError)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.dcm", "2.dcm", "3.dcm"]
    suffixed = await aiodicom.export(
        folder,
        tmp_path / "out2",
        concurrency=1,
        template="{InstanceNumber}.dcm",
        on_conflict="suffix",
    )
    assert [r.status for r in suffixed.items].count(Status.WRITTEN) == 4
    assert (tmp_path / "out2" / "1-1.dcm").read_bytes() == (folder / "3-c.dcm").read_bytes()


async def test_one_item_at_a_time_runs_a_transform_in_source_order(tmp_path: Path) -> None:
    folder = _source_folder(tmp_path / "in", 6)
    seen: list[int] = []

    def transform(ds: Dataset) -> Dataset:
        seen.append(int(ds.InstanceNumber))
        ds.PatientID = "ANON"
        return ds

    report = await aiodicom.export(folder, tmp_path / "out", concurrency=1, transform=transform)
    assert report.written == 6
    assert seen == list(range(6))
    assert all(pydicom.dcmread(p).PatientID == "ANON" for p in (tmp_path / "out").rglob("*.dcm"))


async def test_one_item_at_a_time_gives_up_a_slow_second_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``skip_existing`` a local item is first read without its large
    values (to name it), then again in full to be written; a cancel gives up
    that second read at once too, and nothing is written."""
    from aiodicom._export import run as run_module

    folder = _source_folder(tmp_path / "in", 1)
    real = run_module.read_source
    second_reads: list[float] = []

    def slow_second_read(source: Any, *, force: bool, defer_size: int | None = None) -> Any:
        if defer_size != run_module.DEFER_SIZE:
            second_reads.append(time.monotonic())
            time.sleep(2.0)
        return real(source, force=force, defer_size=defer_size)

    monkeypatch.setattr(run_module, "read_source", slow_second_read)
    started = time.monotonic()
    with anyio.move_on_after(0.5):
        await aiodicom.export(folder, tmp_path / "out", skip_existing=True, concurrency=1)
    assert time.monotonic() - started < 1.5
    assert second_reads  # the cancel came during the second read
    await anyio.sleep(2.5)  # the abandoned read ends, and writes nothing
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").rglob("*.dcm")) == []


def _broken_transform(ds: Dataset) -> Any:
    if ds.InstanceNumber == 3:
        raise ValueError("no")
    if ds.InstanceNumber == 4:
        return "not a dataset"
    ds.PatientID = "ANON"
    return ds


_SCENARIOS: dict[str, dict[str, Any]] = {
    "plain": {},
    "suffix": {"on_conflict": "suffix"},
    "skip_existing": {"skip_existing": True},
    "exist_ok=False": {"exist_ok": False},
    "dry_run": {"dry_run": True},
    "dry_run skip_existing": {"dry_run": True, "skip_existing": True},
    "verify": {"verify": True},
    "transform": {"transform": _broken_transform},
    "no checksum": {"checksum": None},
    "memory": {"to": "memory"},
}


@pytest.mark.parametrize("scenario", sorted(_SCENARIOS))
async def test_one_item_at_a_time_ends_as_the_default_does(tmp_path: Path, scenario: str) -> None:
    """Whatever the options, an export of one item at a time (one thread hop
    per item) reports the same results and leaves the same files as the
    default concurrency: failed reads, files that are not DICOM, a name taken
    twice, files already there."""
    import fsspec

    options = dict(_SCENARIOS[scenario])
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "00-broken.dcm").write_bytes(BROKEN_DICOM)
    (folder / "01-junk.txt").write_bytes(b"junk")
    for number in range(8):
        ds = _slice(number, patient=f"P{number % 3}")
        ds.InstanceNumber = number if number != 6 else 2  # 6 takes 2's name
        ds.save_as(folder / f"{number + 2:02d}.dcm", enforce_file_format=True)
    template = "{PatientID}/{InstanceNumber}.dcm"
    to_memory = options.pop("to", None) == "memory"

    async def run(concurrency: int) -> tuple[list[Any], dict[str, bytes]]:
        if to_memory:
            root = f"memory://one-at-a-time-{scenario}-{concurrency}"
        else:
            root = str(tmp_path / f"out{concurrency}")
            # files already there: one to keep or skip, one to replace
            (tmp_path / f"out{concurrency}" / "P1").mkdir(parents=True)
            (tmp_path / f"out{concurrency}" / "P1" / "1.dcm").write_bytes(b"old")
        report = await aiodicom.export(
            folder, root, template=template, concurrency=concurrency, **options
        )
        results = sorted(
            (
                os.path.basename(r.source),
                r.status,
                None if r.destination is None else r.destination[len(root) :],
                type(r.error).__name__ if r.error else None,
                r.bytes,
                r.checksum,
            )
            for r in report.items
        )
        if to_memory:
            fs = fsspec.filesystem("memory")
            base = root.removeprefix("memory://")
            files = {p.split(base, 1)[1]: fs.cat_file(p) for p in fs.find(base)}
        else:
            files = {
                str(p.relative_to(root)): p.read_bytes()
                for p in Path(root).rglob("*")
                if p.is_file()
            }
        return results, files

    one, default = await run(1), await run(16)
    assert one == default
    assert any(status is Status.WRITTEN for _, status, *_ in one[0]) or "dry_run" in scenario


async def test_one_item_at_a_time_stops_at_the_first_failure(tmp_path: Path) -> None:
    """With ``fail_fast`` (or a raising progress callback), nothing after the
    failing item starts: exactly the items before it are written."""
    folder = _source_folder(tmp_path / "in", 6)
    (folder / "002.dcm").write_bytes(BROKEN_DICOM)
    report = await aiodicom.export(folder, tmp_path / "out", concurrency=1, fail_fast=True)
    assert [r.status for r in report.items] == [Status.WRITTEN, Status.WRITTEN, Status.FAILED]
    assert report.stopped_early
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 2

    def progress(now: aiodicom.ExportProgress) -> None:
        if now.done == 4:
            raise _CallbackError

    with pytest.raises(_CallbackError):
        await aiodicom.export(folder, tmp_path / "out2", concurrency=1, progress=progress)
    assert len(list((tmp_path / "out2").rglob("*.dcm"))) == 3  # items 0, 1 and 3


async def test_a_folder_removed_during_the_export_is_made_again(tmp_path: Path) -> None:
    """The export makes the folders it needs for every item, not only the first
    time: one removed while it runs comes back, and the items after it are
    written (a file put in its place fails them at the destination)."""
    import shutil as _shutil

    out = tmp_path / "out"
    sources = _source_folder(tmp_path / "in", 6)

    def progress(now: aiodicom.ExportProgress) -> None:
        if now.done == 2:
            _shutil.rmtree(out / "P")

    report = await aiodicom.export(
        sources,
        out,
        template="{PatientID}/{InstanceNumber}.dcm",
        concurrency=1,
        progress=progress,
    )
    assert report.written == 6
    assert sorted(p.name for p in (out / "P").iterdir()) == [f"{n}.dcm" for n in range(2, 6)]

    def blocked(now: aiodicom.ExportProgress) -> None:
        if now.done == 2:
            _shutil.rmtree(out / "P")
            (out / "P").write_bytes(b"not a folder")

    report = await aiodicom.export(
        sources,
        out,
        template="{PatientID}/{InstanceNumber}.dcm",
        concurrency=1,
        progress=blocked,
    )
    assert [r.status for r in report.items] == [Status.WRITTEN] * 2 + [Status.FAILED] * 4
    assert all(isinstance(r.error, OSError) for r in report.failures)


# --- one item at a time: one worker thread for the run, results handed back in batches --


def _broken_folder(folder: Path, count: int, broken: int) -> Path:
    """`count` slices named in order, the one at `broken` not DICOM."""
    folder.mkdir()
    for number in range(count):
        path = folder / f"{number:03d}.dcm"
        if number == broken:
            path.write_bytes(BROKEN_DICOM)
        else:
            _slice(number).save_as(path, enforce_file_format=True)
    return folder


async def test_one_item_at_a_time_fail_fast_starts_nothing_after_the_failure(
    tmp_path: Path,
) -> None:
    """Results come back in batches, but a failed item is handed back alone and
    the thread waits: no item after it is written."""
    folder = _broken_folder(tmp_path / "in", 40, broken=5)
    report = await aiodicom.export(
        folder, tmp_path / "out", concurrency=1, fail_fast=True, template="{InstanceNumber}.dcm"
    )
    assert report.stopped_early
    assert [r.status for r in report.items] == [Status.WRITTEN] * 5 + [Status.FAILED]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{n}.dcm" for n in range(5)]


async def test_one_item_at_a_time_a_callback_hears_of_each_item_before_the_next(
    tmp_path: Path,
) -> None:
    """With a progress callback, no batch: when it hears of item k, item k + 1
    has not been written."""
    folder = _source_folder(tmp_path / "in", 40)
    out = tmp_path / "out"
    seen: list[tuple[int, int]] = []

    def on_progress(progress: aiodicom.ExportProgress) -> None:
        seen.append((progress.written, len(list(out.iterdir()))))

    await aiodicom.export(
        folder, out, concurrency=1, progress=on_progress, template="{InstanceNumber}.dcm"
    )
    assert seen == [(n, n) for n in range(1, 41)]


@pytest.mark.parametrize("delay", [0.0, 0.01, 0.03, 0.1, 0.3])
async def test_one_item_at_a_time_cancelled_counts_every_result_it_finished(
    tmp_path: Path, delay: float
) -> None:
    """Cancelled with results not yet handed back (no callback: batches), every
    file left on disk is in the streamed report."""
    folder = _source_folder(tmp_path / "in", 300)
    report = tmp_path / "report.jsonl"
    with anyio.move_on_after(delay):
        await aiodicom.export(
            folder,
            tmp_path / "out",
            concurrency=1,
            workers=1,
            report=report,
            template="{SOPInstanceUID}.dcm",
        )
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    listed = {Path(i["destination"]).name for i in lines if i.get("status") == "written"}
    on_disk = (
        {p.name for p in (tmp_path / "out").glob("*.dcm")}
        if (tmp_path / "out").exists()
        else set()
    )
    assert on_disk == listed
    assert _temp_files(tmp_path) == []


async def test_one_item_at_a_time_pulls_a_generator_in_a_list_as_items_are_done(
    tmp_path: Path,
) -> None:
    """A list is queued ahead, but not a generator of yours inside it."""
    done = 0
    ahead: list[int] = []

    def generate() -> Iterator[Dataset]:
        for number in range(30):
            ahead.append(number - done)
            yield _slice(number)

    def on_item(progress: aiodicom.ExportProgress) -> None:
        nonlocal done
        done = progress.done

    report = await aiodicom.export(
        [generate()],
        tmp_path / "out",
        concurrency=1,
        progress=on_item,
        template="{InstanceNumber}",
    )
    assert report.written == 30
    assert max(ahead) <= 2
