"""The bad-input catalogue: every input aiodicom rejects (dataset, options,
destination, URL, storage options, export template and settings), with the error
it gives, and the proof that nothing was created anywhere.

Where pydicom rejects the same call, the error is pydicom's (same type, same
message).  Each case runs against a fresh directory, a fresh ``memory://``
folder and a fresh S3 bucket, and all three are compared before and after.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import pydicom
import pytest
from pydicom.dataset import Dataset

import aiodicom
from tests.datasets import ct_slice, no_file_meta, unencapsulated_compressed

pytestmark = pytest.mark.anyio


@dataclass
class Place:
    """Where things could be created by mistake: a folder, memory://, a bucket."""

    tmp: Path
    memory: str
    s3: str
    s3_options: dict[str, Any]
    fs_s3: Any = field(init=False)

    def __post_init__(self) -> None:
        self.fs_s3 = fsspec.filesystem("s3", **self.s3_options)
        fsspec.filesystem("memory").mkdir(self.memory)

    def snapshot(self) -> tuple[list[str], list[str], list[str], list[str]]:
        memory = fsspec.filesystem("memory")
        self.fs_s3.invalidate_cache()
        bucket = self.s3.removeprefix("s3://")
        uploads = self.fs_s3.call_s3("list_multipart_uploads", Bucket=bucket)
        return (
            sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*")),
            sorted(memory.find(self.memory)),
            sorted(self.fs_s3.find(bucket)),
            [u["Key"] for u in uploads.get("Uploads", [])],
        )


@pytest.fixture
def place(tmp_path: Path, s3_bucket: str, s3_storage_options: dict[str, Any]) -> Place:
    (tmp_path / "a-file").write_bytes(b"not a folder")
    (tmp_path / "folder").mkdir()
    return Place(tmp_path, f"memory://aiodicom-bad-{tmp_path.name}", s3_bucket, s3_storage_options)


@dataclass
class Case:
    """One rejected call: ``dcmwrite(destination(place), dataset(), **kwargs)``."""

    name: str
    destination: Callable[[Place], Any]
    error: type[BaseException]
    message: str  # a regular expression the message must match
    dataset: Callable[[], Any] = lambda: ct_slice(8, 8)
    kwargs: Callable[[Place], dict[str, Any]] = lambda p: {}
    pydicom_too: bool = False  # pydicom rejects the same call: same type and message

    def __repr__(self) -> str:
        return self.name


def _local(p: Place) -> Path:
    return p.tmp / "out.dcm"


def _with(**attrs: Any) -> Callable[[], Dataset]:
    def make() -> Dataset:
        ds = ct_slice(8, 8)
        for key, value in attrs.items():
            if key == "file_meta_missing_class":
                del ds.file_meta.MediaStorageSOPClassUID
                del ds.SOPClassUID
            else:
                setattr(ds, key, value)
        return ds

    return make


def _command_set() -> Dataset:
    ds = ct_slice(8, 8)
    ds.add_new(0x00000100, "US", 1)
    return ds


def _meta_in_dataset() -> Dataset:
    ds = ct_slice(8, 8)
    ds.add_new(0x00020010, "UI", "1.2.840.10008.1.2.1")
    return ds


def _no_sop_class() -> Dataset:
    ds = ct_slice(8, 8)
    del ds.file_meta.MediaStorageSOPClassUID
    del ds.SOPClassUID
    return ds


DATASET_CASES = [
    Case(
        "command-set",
        _local,
        ValueError,
        r"Command Set elements \(0000,eeee\)",
        _command_set,
        pydicom_too=True,
    ),
    Case(
        "meta-in-dataset",
        _local,
        ValueError,
        r"File Meta Information Group elements",
        _meta_in_dataset,
        pydicom_too=True,
    ),
    Case(
        "bad-preamble",
        _local,
        ValueError,
        r"preamble' must be 128-bytes long",
        _with(preamble=b"\x00" * 127),
        pydicom_too=True,
    ),
    Case(
        "no-sop-class-enforced",
        _local,
        AttributeError,
        r"missing or have an empty value: \(0002,0002\) Media Storage SOP Class UID",
        _no_sop_class,
        lambda p: {"enforce_file_format": True},
        pydicom_too=True,
    ),
    Case(
        "unencapsulated-compressed",
        _local,
        ValueError,
        r"hasn't been encapsulated",
        unencapsulated_compressed,
        pydicom_too=True,
    ),
    Case(
        "not-a-dataset",
        _local,
        AttributeError,
        r"'str' object has no attribute",
        lambda: "not a dataset",
        pydicom_too=True,
    ),
]

OPTION_CASES = [
    Case(
        "force-and-enforce",
        _local,
        ValueError,
        r"'force_encoding' cannot be used with 'enforce_file_format'",
        kwargs=lambda p: {"force_encoding": True, "enforce_file_format": True},
        pydicom_too=True,
    ),
    Case(
        "implicit-big-endian",
        _local,
        ValueError,
        r"Implicit VR and big endian is not a valid encoding combination",
        no_file_meta,
        lambda p: {"implicit_vr": True, "little_endian": False},
        pydicom_too=True,
    ),
    Case(
        "unknown-keyword",
        _local,
        TypeError,
        r"Invalid keyword argument\(s\) for dcmwrite\(\): colour",
        kwargs=lambda p: {"colour": "blue"},
        pydicom_too=True,
    ),
    Case(
        "exist-ok-and-overwrite",
        _local,
        TypeError,
        r"got both 'exist_ok' and 'overwrite'",
        kwargs=lambda p: {"exist_ok": True, "overwrite": True},
    ),
    Case(
        "write-like-original-twice",
        _local,
        TypeError,
        r"'write_like_original' cannot be used as both",
        kwargs=lambda p: {"write_like_original": True, "__positional_wlo": True},
        pydicom_too=True,
    ),
]

DESTINATION_CASES = [
    Case(
        "int",
        lambda p: 5,
        TypeError,
        r"Expected a file path, file-like or writeable buffer, "
        r"but got int",
        pydicom_too=True,
    ),
    Case("none", lambda p: None, TypeError, r"but got NoneType", pydicom_too=True),
    Case(
        "filesystem-without-path",
        lambda p: fsspec.filesystem("memory"),
        TypeError,
        r"an fsspec filesystem needs a path too",
    ),
    Case(
        "a-directory",
        lambda p: p.tmp / "folder",
        IsADirectoryError,
        r"Is a directory",
        pydicom_too=True,
    ),
    Case(
        "missing-directory",
        lambda p: p.tmp / "nope" / "x.dcm",
        FileNotFoundError,
        r"No such file or directory",
        pydicom_too=True,
    ),
    Case(
        "parent-is-a-file",
        lambda p: p.tmp / "a-file" / "x.dcm",
        NotADirectoryError,
        r"Not a directory",
        pydicom_too=True,
    ),
    Case(
        "empty-path",
        lambda p: "",
        FileNotFoundError,
        r"No such file or directory: ''",
        pydicom_too=True,
    ),
    Case(
        "name-too-long",
        lambda p: p.tmp / ("n" * 256),
        OSError,
        r"File name too long",
        pydicom_too=True,
    ),
    Case(
        "exists-exclusive",
        lambda p: p.tmp / "a-file",
        FileExistsError,
        r"File exists",
        kwargs=lambda p: {"exist_ok": False},
        pydicom_too=True,
    ),
    Case(
        "text-mode-file",
        lambda p: io.StringIO(),
        TypeError,
        r"string argument expected",
        pydicom_too=True,
    ),
    Case(
        "closed-buffer",
        lambda p: _closed(io.BytesIO()),
        ValueError,
        r"I/O operation on closed file",
        pydicom_too=True,
    ),
    Case(
        "exists-exclusive-memory-url",
        lambda p: f"{p.memory}/taken.dcm",
        FileExistsError,
        r"File exists",
        kwargs=lambda p: {"exist_ok": False},
    ),
    Case("memory-url-is-a-folder", lambda p: f"{p.memory}/sub", IsADirectoryError, r"sub"),
]

URL_CASES = [
    Case(
        "unknown-protocol",
        lambda p: "nosuchproto://bucket/x.dcm",
        ValueError,
        r"Protocol not known: nosuchproto",
    ),
    Case(
        "missing-bucket",
        lambda p: "s3://aiodicom-no-such-bucket/x.dcm",
        FileNotFoundError,
        r"",
        kwargs=lambda p: {"storage_options": p.s3_options},
    ),
    Case(
        "exists-exclusive-s3",
        lambda p: f"{p.s3}/taken.dcm",
        FileExistsError,
        r"File exists",
        kwargs=lambda p: {"exist_ok": False, "storage_options": p.s3_options},
    ),
]

STORAGE_OPTION_CASES = [
    Case(
        "storage-options-for-a-path",
        _local,
        ValueError,
        r"'storage_options' is only for fsspec URL destinations, not for PosixPath",
        kwargs=lambda p: {"storage_options": {"key": "k"}},
    ),
    Case(
        "storage-options-for-a-buffer",
        lambda p: io.BytesIO(),
        ValueError,
        r"not for BytesIO",
        kwargs=lambda p: {"storage_options": {"key": "k"}},
    ),
    Case(
        "storage-options-for-a-pair",
        lambda p: (fsspec.filesystem("memory"), "x.dcm"),
        ValueError,
        r"not for tuple",
        kwargs=lambda p: {"storage_options": {"key": "k"}},
    ),
]

ALL_CASES = DATASET_CASES + OPTION_CASES + DESTINATION_CASES + URL_CASES + STORAGE_OPTION_CASES


def _closed(buffer: io.BytesIO) -> io.BytesIO:
    buffer.close()
    return buffer


def _prepare(case: Case, place: Place) -> tuple[Any, dict[str, Any], tuple[Any, ...]]:
    memory = fsspec.filesystem("memory")
    memory.pipe_file(f"{place.memory}/taken.dcm", b"taken")
    memory.mkdir(f"{place.memory}/sub")
    memory.pipe_file(f"{place.memory}/sub/inner", b"x")
    place.fs_s3.pipe_file(f"{place.s3.removeprefix('s3://')}/taken.dcm", b"taken")
    kwargs = case.kwargs(place)
    positional: tuple[Any, ...] = ()
    if kwargs.pop("__positional_wlo", False):
        positional = (True,)
    return case.destination(place), kwargs, positional


@pytest.mark.parametrize("case", ALL_CASES, ids=repr)
async def test_rejected_with_a_clear_error_and_nothing_created(case: Case, place: Place) -> None:
    destination, kwargs, positional = _prepare(case, place)
    before = place.snapshot()
    buffer_before = (
        destination.getvalue()
        if isinstance(destination, io.BytesIO) and not destination.closed
        else None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(case.error) as ours:
            await aiodicom.dcmwrite(destination, case.dataset(), *positional, **kwargs)
    assert re.search(case.message, str(ours.value)), str(ours.value)
    assert place.snapshot() == before
    if buffer_before is not None:
        assert destination.getvalue() == buffer_before
    if case.pydicom_too:
        pydicom_kwargs = dict(kwargs)
        if "exist_ok" in pydicom_kwargs:
            pydicom_kwargs["overwrite"] = pydicom_kwargs.pop("exist_ok")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(case.error) as theirs:
                pydicom.dcmwrite(
                    case.destination(place), case.dataset(), *positional, **pydicom_kwargs
                )
        assert type(ours.value) is type(theirs.value)
        assert _message(ours.value) == _message(theirs.value)


def _message(exc: BaseException) -> str:
    """Without the traceback pydicom's ``tag_in_exception`` appends to messages
    (its frames name each writer's own source files)."""
    return str(exc).split("\nTraceback (most recent call last):")[0]


def test_catalogue_covers_every_family() -> None:
    families = [DATASET_CASES, OPTION_CASES, DESTINATION_CASES, URL_CASES, STORAGE_OPTION_CASES]
    assert all(families)
    names = [c.name for c in ALL_CASES]
    assert len(names) == len(set(names))


# --- export: template, destination and settings ------------------------------------------

EXPORT_CASES: list[tuple[str, dict[str, Any], type[BaseException], str]] = [
    ("unknown-keyword", {"template": "{Nope}.dcm"}, ValueError, r"unknown DICOM keyword \{Nope\}"),
    ("unclosed-field", {"template": "{PatientName"}, ValueError, r"expected '\}'"),
    ("parent-component", {"template": "../{SOPInstanceUID}"}, ValueError, r"unsafe file name"),
    ("absolute", {"template": "/abs/{SOPInstanceUID}"}, ValueError, r"absolute path"),
    (
        "unknown-conversion",
        {"template": "{SOPInstanceUID!z}"},
        ValueError,
        r"unknown conversion !z",
    ),
    ("no-field", {"template": "same.dcm"}, ValueError, r"has no \{Keyword\} field"),
    ("concurrency-zero", {"concurrency": 0}, ValueError, r"concurrency must be a positive"),
    ("concurrency-bool", {"concurrency": True}, ValueError, r"concurrency must be a positive"),
    (
        "storage-options-local",
        {"storage_options": {"key": "k"}},
        ValueError,
        r"only for fsspec URL destinations",
    ),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "error", "message"), EXPORT_CASES, ids=[c[0] for c in EXPORT_CASES]
)
async def test_export_rejects_before_reading_anything(
    name: str, kwargs: dict[str, Any], error: type[BaseException], message: str, place: Place
) -> None:
    pulled: list[int] = []

    def sources() -> Any:
        pulled.append(1)
        yield ct_slice(8, 8)

    before = place.snapshot()
    with pytest.raises(error, match=message):
        await aiodicom.export(sources(), place.tmp / "export", **kwargs)
    assert pulled == []
    assert place.snapshot() == before


@pytest.mark.parametrize(
    ("destination", "error", "message"),
    [
        (5, TypeError, r"fsspec URL prefix or a callable name -> sink, not int"),
        ("nosuchproto://x", ValueError, r"Protocol not known: nosuchproto"),
        ("a-file", ValueError, r"exists and is not a folder"),
    ],
)
async def test_export_rejects_bad_destinations(
    destination: Any, error: type[BaseException], message: str, place: Place
) -> None:
    if destination == "a-file":
        destination = place.tmp / "a-file"
    before = place.snapshot()
    with pytest.raises(error, match=message):
        await aiodicom.export([ct_slice(8, 8)], destination)
    assert place.snapshot() == before


async def test_export_bad_upload_options_fail_before_anything_and_write_nothing(
    place: Place,
) -> None:
    read: list[int] = []

    def sources() -> Any:
        read.append(1)
        yield ct_slice(8, 8)

    with pytest.raises(ValueError, match="part_size must be positive"):
        await aiodicom.export(sources(), f"{place.memory}/export", upload_options={"part_size": 0})
    assert read == []
    assert [p for p in fsspec.filesystem("memory").find(place.memory) if "export" in p] == []
