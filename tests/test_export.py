"""aiodicom.export: parity with pydicom.dcmwrite, safe naming, skipping, failures, cancellation."""

from __future__ import annotations

import io
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pydicom
import pytest
from pydicom.dataset import Dataset, FileDataset

from aiodicom import (
    DuplicateDestinationError,
    ExportProgress,
    NamingError,
    SourceSkipped,
    Status,
    Template,
    TemplateError,
    export,
)
from tests import datasets
from tests.datasets import (
    PYDICOM_FILES,
    PYDICOM_NOT_INSTANCES,
    by_source_name,
    not_an_instance,
)
from tests.helpers import pydicom_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def ct(number: int, *, size: int = 64, patient_id: str = "PID-0001") -> FileDataset:
    """A small CT slice with its own SOP Instance UID."""
    ds = datasets.ct_slice(size, size)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.10.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    ds.PatientID = patient_id
    return ds


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------ parity


@pytest.mark.anyio
async def test_every_pydicom_test_file_exports_like_pydicom(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = await export(PYDICOM_FILES, tmp_path, template=by_source_name, force=True)
    assert len(report.items) == len(PYDICOM_FILES)
    assert report.written > 150
    assert report.skipped == len(PYDICOM_NOT_INSTANCES)
    for item in report.items:
        reason = not_an_instance(item.source)
        if reason is not None:  # not DICOM, or a DICOMDIR
            assert item.status is Status.SKIPPED, item.source
            assert isinstance(item.error, SourceSkipped)
            assert item.error.reason == reason
            continue
        try:
            expected: bytes | type[BaseException] = pydicom_bytes(item.source)
        except Exception as exc:
            expected = type(exc)
        if isinstance(expected, bytes):
            assert item.status is Status.WRITTEN, (item.source, item.error)
            assert item.destination is not None
            assert read_bytes(item.destination) == expected, item.source
            assert item.bytes == len(expected)
        else:
            assert item.status is Status.FAILED
            assert isinstance(item.error, expected), (item.source, item.error)
    assert report.bytes_written == sum(p.stat().st_size for p in files_under(tmp_path))


@pytest.mark.anyio
async def test_generated_datasets_export_like_pydicom_with_default_template(
    tmp_path: Path,
) -> None:
    generated = datasets.variety()
    generated.insert(1, datasets.multiframe(3 * 1024 * 1024, odd=True))
    for number, ds in enumerate(generated):
        ds.StudyInstanceUID = "1.2.3"
        ds.SeriesInstanceUID = f"1.2.3.{number % 2}"
        ds.SOPInstanceUID = f"1.2.3.{number % 2}.{number}"
    expected = {ds.SOPInstanceUID: pydicom_bytes(ds) for ds in generated}

    report = await export(generated, tmp_path, concurrency=3)

    assert report.ok, report.failures
    assert report.written == len(generated)
    for ds in generated:
        path = tmp_path / "1.2.3" / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert path.read_bytes() == expected[ds.SOPInstanceUID]
    assert report.bytes_written == sum(len(b) for b in expected.values())


# ------------------------------------------------------------------- sources


@pytest.mark.anyio
async def test_folders_are_searched_recursively_and_globs_expand(tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "a" / "b").mkdir(parents=True)
    for number, folder in enumerate([source, source / "a", source / "a" / "b"]):
        ct(number).save_as(folder / f"{number}.dcm", enforce_file_format=True)
    (source / "a" / "notes.txt").write_text("not DICOM")

    report = await export(source, tmp_path / "out", template="{InstanceNumber}.dcm")
    assert sorted(p.name for p in files_under(tmp_path / "out")) == ["0.dcm", "1.dcm", "2.dcm"]
    assert report.ok
    skipped = [item.source for item in report.items if item.status is Status.SKIPPED]
    assert skipped == [str(source / "a" / "notes.txt")]

    report = await export(
        str(source / "**" / "*.dcm"), tmp_path / "globbed", template="{InstanceNumber}.dcm"
    )
    assert report.ok
    assert report.written == 3


@pytest.mark.anyio
async def test_a_source_that_fails_to_read_is_reported_and_the_rest_succeed(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good.dcm"
    ct(1).save_as(good, enforce_file_format=True)
    junk = tmp_path / "junk.dcm"  # starts like a data set without a preamble
    junk.write_bytes(b"\x08\x00\x05\x00" + b"\x00" * 196)
    missing = tmp_path / "missing.dcm"
    sources: list[Any] = [junk, good, missing, ct(2), 42]

    report = await export(sources, tmp_path / "out", template="{SOPInstanceUID}.dcm")

    assert report.written == 2
    assert report.failed == 3
    assert not report.ok
    errors = {item.source: item.error for item in report.failures}
    assert isinstance(errors[str(junk)], pydicom.errors.InvalidDicomError)
    assert isinstance(errors[str(missing)], FileNotFoundError)
    assert isinstance(errors["42"], TypeError)
    assert len(files_under(tmp_path / "out")) == 2


@pytest.mark.anyio
async def test_file_objects_and_sync_generators_are_sources(tmp_path: Path) -> None:
    buffer = io.BytesIO(pydicom_bytes(ct(1)))

    def generate() -> Iterator[Any]:
        yield buffer
        yield ct(2)

    report = await export(generate(), tmp_path, template="{InstanceNumber}.dcm")
    assert report.ok
    assert (tmp_path / "1.dcm").read_bytes() == buffer.getvalue()
    assert (tmp_path / "2.dcm").read_bytes() == pydicom_bytes(ct(2))


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 3])
async def test_an_async_iterable_is_pulled_with_backpressure(
    tmp_path: Path, concurrency: int
) -> None:
    done = 0
    ahead: list[int] = []

    async def generate() -> AsyncIterator[Dataset]:
        for number in range(30):
            ahead.append(number - done)  # pulled but not finished, before this one
            yield ct(number, size=8)

    def on_progress(progress: ExportProgress) -> None:
        nonlocal done
        done = progress.done

    report = await export(
        generate(),
        tmp_path,
        concurrency=concurrency,
        progress=on_progress,
        template="{InstanceNumber}",
    )
    assert report.written == 30
    # each worker holds one item and the producer at most one more
    assert max(ahead) <= concurrency + 1
    assert max(ahead) >= 1


@pytest.mark.anyio
async def test_a_sync_generator_is_pulled_lazily(tmp_path: Path) -> None:
    pulled = 0
    done = 0
    ahead: list[int] = []

    def generate() -> Iterator[Dataset]:
        nonlocal pulled
        for number in range(20):
            ahead.append(pulled - done)
            pulled += 1
            yield ct(number, size=8)

    def on_progress(progress: ExportProgress) -> None:
        nonlocal done
        done = progress.done

    report = await export(
        generate(), tmp_path, concurrency=2, progress=on_progress, template="{InstanceNumber}"
    )
    assert report.written == 20
    assert max(ahead) <= 3


# -------------------------------------------------------------------- naming

MALICIOUS = {
    "../../etc/x": ".._.._etc_x",
    "/abs": "_abs",
    "a/../../b": "a_.._.._b",
    "..": "__",
    ".": "_",
    "a\\..\\..\\b": "a_.._.._b",
    "C:\\Windows": "C__Windows",
    "x\x00y\nz": "x_y_z",
}


@pytest.mark.anyio
async def test_malicious_values_never_escape_the_root(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "root"
    items = [ct(n, patient_id=value) for n, value in enumerate(MALICIOUS)]
    # values must survive pydicom's own encoding too: LO allows what we test
    report = await export(items, root, template="{PatientID}/{SOPInstanceUID}.dcm")

    assert report.ok, report.failures
    outside = [p for p in files_under(tmp_path) if root not in p.parents]
    assert outside == []
    folders = sorted(p.parent.name for p in files_under(root))
    assert folders == sorted(MALICIOUS.values())
    for path in files_under(root):
        assert path.parent.parent == root


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["", "   "])
async def test_an_empty_value_fails_the_item(tmp_path: Path, value: str) -> None:
    report = await export(
        [ct(1, patient_id=value), ct(2)], tmp_path, template="{PatientID}/{SOPInstanceUID}.dcm"
    )
    assert report.written == 1
    (failure,) = report.failures
    assert isinstance(failure.error, NamingError)
    assert failure.destination is None
    assert [p.parent.name for p in files_under(tmp_path)] == ["PID-0001"]


@pytest.mark.anyio
async def test_a_missing_attribute_fails_the_item(tmp_path: Path) -> None:
    ds = ct(1)
    del ds.StudyInstanceUID
    report = await export([ds], tmp_path)
    (failure,) = report.failures
    assert isinstance(failure.error, NamingError)
    assert "StudyInstanceUID" in str(failure.error)
    assert files_under(tmp_path) == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "returned", ["../x.dcm", "/abs.dcm", "a/../../b.dcm", "", "a//b", "a\\b", "ok/./x", b"x"]
)
async def test_a_callable_template_is_checked(tmp_path: Path, returned: Any) -> None:
    report = await export([ct(1)], tmp_path / "root", template=lambda ds: returned)
    (failure,) = report.failures
    assert isinstance(failure.error, NamingError)
    assert not (tmp_path / "root").exists() or files_under(tmp_path) == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "template",
    [
        "{StudyUID}/{SOPInstanceUID}.dcm",
        "{}/{SOPInstanceUID}",
        "{SOPInstanceUID.__class__}",
        "{SOPInstanceUID[0]}",
        "../{SOPInstanceUID}",
        "/abs/{SOPInstanceUID}",
        "a//{SOPInstanceUID}",
        "a\\{SOPInstanceUID}",
        "fixed.dcm",
        "{SOPInstanceUID",
    ],
)
async def test_a_bad_template_raises_before_any_source_is_read(
    tmp_path: Path, template: str
) -> None:
    pulled = []

    async def sources() -> AsyncIterator[Dataset]:
        pulled.append(1)
        yield ct(1)

    with pytest.raises(TemplateError):
        await export(sources(), tmp_path, template=template)
    assert pulled == []


def test_unknown_keywords_get_a_suggestion() -> None:
    with pytest.raises(TemplateError, match=r"did you mean \{StudyInstanceUID\}"):
        Template("{StudyInstanceUUID}/x")


@pytest.mark.anyio
async def test_format_specs_and_multi_values(tmp_path: Path) -> None:
    ds = ct(7)
    report = await export([ds], tmp_path, template="{ImageType}/{InstanceNumber:04d}.dcm")
    assert report.ok, report.failures
    assert (tmp_path / "ORIGINAL_PRIMARY_AXIAL" / "0007.dcm").read_bytes() == pydicom_bytes(ds)


@pytest.mark.anyio
async def test_two_items_with_one_name_are_reported_not_overwritten(tmp_path: Path) -> None:
    first, second = ct(1), ct(1)
    second.PatientID = "someone else"
    report = await export([first, second], tmp_path, concurrency=1)
    assert report.written == 1
    (failure,) = report.failures
    assert isinstance(failure.error, DuplicateDestinationError)
    (path,) = files_under(tmp_path)
    assert path.read_bytes() == pydicom_bytes(first)


# ---------------------------------------------------------- existing outputs


@pytest.mark.anyio
async def test_rerunning_with_skip_existing_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for number in range(6):
        ct(number).save_as(source / f"{number}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    first = await export(source, out, skip_existing=True)
    assert first.written == 6
    for item in first.items:  # named from a deferred read, written from a full one
        assert item.destination is not None
        assert read_bytes(item.destination) == pydicom_bytes(item.source)
    stamps = {p: p.stat().st_mtime_ns for p in files_under(out)}
    inodes = {p: p.stat().st_ino for p in files_under(out)}

    again = await export(source, out, skip_existing=True)

    assert again.written == 0
    assert again.skipped == 6
    assert again.ok
    assert all(isinstance(item.error, FileExistsError) for item in again.items)
    assert {p: p.stat().st_mtime_ns for p in files_under(out)} == stamps
    assert {p: p.stat().st_ino for p in files_under(out)} == inodes

    victim = next(iter(stamps))
    victim.unlink()
    resumed = await export(source, out, skip_existing=True)
    assert (resumed.written, resumed.skipped) == (1, 5)
    assert victim.exists()


@pytest.mark.anyio
async def test_skip_existing_with_datasets_in_memory(tmp_path: Path) -> None:
    items = [ct(n) for n in range(3)]
    assert (await export(items, tmp_path, skip_existing=True)).written == 3
    again = await export(items, tmp_path, skip_existing=True)
    assert (again.written, again.skipped) == (0, 3)


@pytest.mark.anyio
async def test_exist_ok_false_fails_existing_items_and_keeps_them(tmp_path: Path) -> None:
    await export([ct(1)], tmp_path, template="{InstanceNumber}.dcm")
    (tmp_path / "1.dcm").write_bytes(b"keep me")
    report = await export(
        [ct(1), ct(2)], tmp_path, template="{InstanceNumber}.dcm", exist_ok=False
    )
    (failure,) = report.failures
    assert isinstance(failure.error, FileExistsError)
    assert (tmp_path / "1.dcm").read_bytes() == b"keep me"
    assert (tmp_path / "2.dcm").exists()


@pytest.mark.anyio
async def test_exist_ok_true_overwrites(tmp_path: Path) -> None:
    (tmp_path / "1.dcm").write_bytes(b"old")
    report = await export([ct(1)], tmp_path, template="{InstanceNumber}.dcm")
    assert report.ok
    assert (tmp_path / "1.dcm").read_bytes() == pydicom_bytes(ct(1))


@pytest.mark.anyio
async def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "1.dcm").write_bytes(b"old")
    items = [ct(1), ct(2), ct(2)]
    report = await export(
        items, tmp_path / "out", template="{InstanceNumber}.dcm", dry_run=True, skip_existing=True
    )
    statuses = sorted(item.status.value for item in report.items)
    assert statuses == ["failed", "planned", "skipped"]
    assert report.dry_run
    assert files_under(tmp_path) == [tmp_path / "out" / "1.dcm"]
    assert (tmp_path / "out" / "1.dcm").read_bytes() == b"old"


# ------------------------------------------------- failure, cancellation, progress


@pytest.mark.anyio
async def test_fail_fast_stops_at_the_first_failure(tmp_path: Path) -> None:
    pulled = 0

    def sources() -> Iterator[Any]:
        nonlocal pulled
        for number in range(50):
            pulled += 1
            yield tmp_path / "missing.dcm" if number == 3 else ct(number, size=8)

    report = await export(
        sources(), tmp_path / "out", concurrency=1, fail_fast=True, template="{InstanceNumber}.dcm"
    )
    assert report.stopped_early
    assert not report.ok
    assert report.failed == 1
    assert report.written == 3
    assert pulled < 10


@pytest.mark.anyio
async def test_progress_is_reported_for_every_item(tmp_path: Path) -> None:
    seen: list[ExportProgress] = []

    async def on_progress(progress: ExportProgress) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(progress)

    items: list[Any] = [ct(n) for n in range(5)] + [tmp_path / "missing"]
    report = await export(items, tmp_path / "out", progress=on_progress, total=6)
    assert [p.done for p in seen] == [1, 2, 3, 4, 5, 6]
    assert seen[-1].written == 5
    assert seen[-1].failed == 1
    assert seen[-1].bytes_written == report.bytes_written
    assert all(p.total == 6 for p in seen)
    assert [p.item for p in seen] == report.items


@pytest.mark.anyio
async def test_cancellation_mid_export_leaves_no_partial_files(tmp_path: Path) -> None:
    big = datasets.multiframe(12 * 1024 * 1024)
    items = []
    for number in range(12):
        ds = deepcopy(big) if number else big
        ds.SOPInstanceUID = f"1.2.3.{number}"
        items.append(ds)
    expected = pydicom_bytes(items[0])

    with anyio.CancelScope() as scope:

        def on_progress(progress: ExportProgress) -> None:
            if progress.done == 2:
                scope.cancel()

        await export(
            items, tmp_path, concurrency=4, progress=on_progress, template="{SOPInstanceUID}.dcm"
        )
    assert scope.cancelled_caught
    written = files_under(tmp_path)
    assert 2 <= len(written) < 12
    for path in written:
        assert not path.name.endswith(".aiodicom-tmp")
        content = path.read_bytes()
        assert len(content) == len(expected)  # each one is whole
        assert content[-1024:] == expected[-1024:]


def test_concurrency_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        anyio.run(lambda: export([], tmp_path, concurrency=0))


def test_a_destination_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder"):
        anyio.run(lambda: export([], tmp_path / "file"))


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="nosuchproto"):
        anyio.run(lambda: export([], "nosuchproto://bucket/x"))


def test_the_report_summarises() -> None:
    report = anyio.run(lambda: export([], "memory://empty"))
    assert report.ok
    assert report.to_dict()["summary"]["written"] == 0
    assert "0 written" in report.summary()


# ---------------------------------------------------------------- fsspec URLs


def memory_root() -> str:
    return f"memory://export-{uuid.uuid4().hex[:12]}"


@pytest.mark.anyio
async def test_every_pydicom_test_file_exports_to_memory_like_pydicom() -> None:
    import fsspec

    root = memory_root()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = await export(PYDICOM_FILES, root, template=by_source_name, force=True)
    fs = fsspec.filesystem("memory")
    assert report.written > 150
    assert report.skipped == len(PYDICOM_NOT_INSTANCES)
    for item in report.items:
        if item.status is Status.WRITTEN:
            assert item.destination is not None
            assert item.destination.startswith(root + "/")
            stored = fs.cat_file(item.destination)
            assert stored == pydicom_bytes(item.source), item.source
            assert item.bytes == len(stored)
    assert len(fs.find(root)) == report.written


@pytest.mark.anyio
async def test_url_sources_prefixes_and_globs(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    source = memory_root()
    for number in range(3):
        fs.pipe_file(f"{source}/in/{number}.dcm", pydicom_bytes(ct(number)))
    fs.pipe_file(f"{source}/in/readme.txt", b"hello")

    report = await export(f"{source}/in/*.dcm", tmp_path / "a", template="{InstanceNumber}.dcm")
    assert report.ok
    assert report.written == 3
    assert (tmp_path / "a" / "2.dcm").read_bytes() == pydicom_bytes(ct(2))

    report = await export(f"{source}/in", tmp_path / "b", template="{InstanceNumber}.dcm")
    assert report.written == 3
    assert report.ok
    (skipped,) = [item for item in report.items if item.status is Status.SKIPPED]
    assert skipped.source.startswith("memory://")
    assert skipped.source.endswith(f"{source.removeprefix('memory://')}/in/readme.txt")
    assert isinstance(skipped.error, SourceSkipped)


@pytest.mark.anyio
async def test_every_pydicom_test_file_exports_to_s3_like_pydicom(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import s3fs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = await export(
            PYDICOM_FILES,
            f"{s3_bucket}/archive",
            template=by_source_name,
            force=True,
            storage_options=s3_storage_options,
        )
    fs = s3fs.S3FileSystem(**s3_storage_options)
    assert report.written > 150
    for item in report.items:
        if item.status is Status.WRITTEN:
            assert item.destination is not None
            assert fs.cat_file(item.destination) == pydicom_bytes(item.source)
    assert len(fs.find(f"{s3_bucket}/archive")) == report.written

    fs.invalidate_cache()
    stamps = {key: info["LastModified"] for key, info in fs.find(s3_bucket, detail=True).items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = await export(
            PYDICOM_FILES,
            f"{s3_bucket}/archive",
            template=by_source_name,
            force=True,
            skip_existing=True,
            storage_options=s3_storage_options,
        )
    assert again.written == 0
    assert again.skipped == report.written + len(PYDICOM_NOT_INSTANCES)
    fs.invalidate_cache()
    assert {k: i["LastModified"] for k, i in fs.find(s3_bucket, detail=True).items()} == stamps


@pytest.mark.anyio
async def test_cancelling_an_s3_export_of_single_request_objects_reports_each_one_stored(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    """Objects sent in one request, awaited in the event loop: a cancellation
    leaves only complete objects, and every one of them was reported written."""
    import s3fs

    items = []
    for number in range(24):
        ds = datasets.multiframe(512 * 1024)
        ds.SOPInstanceUID = f"1.2.3.{number}"
        items.append(ds)
    written: set[str] = set()

    with anyio.CancelScope() as scope:

        def on_progress(progress: ExportProgress) -> None:
            if progress.item.status is Status.WRITTEN:
                assert progress.item.destination is not None
                written.add(progress.item.destination)
            scope.cancel()

        await export(
            items,
            s3_bucket,
            concurrency=8,
            progress=on_progress,
            template="{SOPInstanceUID}.dcm",
            storage_options=s3_storage_options,
            exist_ok=False,
        )
    assert scope.cancelled_caught
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.invalidate_cache()
    stored = {f"s3://{key}" for key in fs.find(s3_bucket)}
    assert 1 <= len(stored) < len(items)
    assert stored == written
    for key in stored:
        number = int(key.rsplit(".", 2)[-2])
        assert fs.cat_file(key) == pydicom_bytes(items[number])


@pytest.mark.anyio
async def test_large_single_request_objects_are_checksummed_off_the_event_loop(
    s3_bucket: str, s3_storage_options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object sent in one request is joined and checksummed in the event loop
    only when it is small; a larger one (an Azure MD5 of a few MiB takes several
    milliseconds) in a worker thread.  The bytes are pydicom's either way."""
    import threading

    import s3fs

    from aiodicom.sinks._stores import _uploader

    where: dict[int, bool] = {}
    put = _uploader.AsyncPartWriter._put

    def recording(self: Any, chunks: list[Any]) -> Any:
        size = sum(memoryview(chunk).nbytes for chunk in chunks)
        where[size] = threading.current_thread() is threading.main_thread()
        return put(self, chunks)

    monkeypatch.setattr(_uploader.AsyncPartWriter, "_put", recording)
    small, large = datasets.multiframe(256 * 1024), datasets.multiframe(3 * 1024 * 1024)
    small.SOPInstanceUID, large.SOPInstanceUID = "1.2.3.1", "1.2.3.2"

    report = await export(
        [small, large],
        s3_bucket,
        template="{SOPInstanceUID}.dcm",
        storage_options=s3_storage_options,
    )

    assert report.written == 2, report.failures
    sizes = {item.destination: item.bytes for item in report.items}
    assert where == {
        sizes[f"{s3_bucket}/1.2.3.1.dcm"]: True,  # in the event loop
        sizes[f"{s3_bucket}/1.2.3.2.dcm"]: False,  # in a worker thread
    }
    fs = s3fs.S3FileSystem(**s3_storage_options)
    assert fs.cat_file(f"{s3_bucket}/1.2.3.2.dcm") == pydicom_bytes(large)


@pytest.mark.anyio
async def test_cancelling_an_s3_export_leaves_no_partial_objects(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import s3fs

    big = datasets.multiframe(11 * 1024 * 1024)  # three 5 MiB parts each
    items = []
    for number in range(6):
        ds = deepcopy(big) if number else big
        ds.SOPInstanceUID = f"1.2.3.{number}"
        items.append(ds)
    size = len(pydicom_bytes(items[0]))

    with anyio.CancelScope() as scope:

        def on_progress(progress: ExportProgress) -> None:
            scope.cancel()

        await export(
            items,
            s3_bucket,
            concurrency=3,
            progress=on_progress,
            template="{SOPInstanceUID}.dcm",
            storage_options=s3_storage_options,
            upload_options={"part_size": 5 * 1024 * 1024},
        )
    assert scope.cancelled_caught
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.invalidate_cache()
    sizes = [info["size"] for info in fs.find(s3_bucket, detail=True).values()]
    assert 1 <= len(sizes) < 6
    assert set(sizes) == {size}
    bucket = s3_bucket.removeprefix("s3://")
    uploads = fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])
    assert uploads == []
