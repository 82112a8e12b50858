"""Error parity with :func:`pydicom.dcmwrite`, and nothing created on bad input.

For every bad input pydicom rejects, :func:`aiodicom.dcmwrite` raises the same
exception type with the same message (and the same warnings, and leaves the
dataset as pydicom leaves it).  Our intended improvement on top: nothing at all is
created or changed at the destination - no file at a path that did not exist, an
existing file keeps its content, a buffer keeps its content and position, and no
temporary file remains in the directory.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

import aiodicom
from tests import datasets
from tests.helpers import (
    Options,
    WriteOnly,
    assert_same,
    error_key,
    listing,
    pydicom_bytes,
    write_aiodicom,
    write_pydicom,
)

pytestmark = pytest.mark.anyio

OLD_CONTENT = b"old content that must survive"

# ---------------------------------------------------------------------------
# Bad datasets and bad options, on every kind of destination


def _command_set() -> Dataset:
    ds = datasets.ct_slice(4, 4)
    ds.add_new(0x00000100, "US", 1)  # CommandField
    return ds


def _command_and_meta() -> Dataset:
    ds = _command_set()
    ds.add_new(0x00020010, "UI", ExplicitVRLittleEndian)
    return ds


def _meta_in_dataset() -> Dataset:
    ds = datasets.ct_slice(4, 4)
    ds.add_new(0x00020010, "UI", ExplicitVRLittleEndian)
    return ds


def _meta_in_plain_dataset() -> Dataset:
    ds = datasets.no_file_meta()
    ds.add_new(0x00020002, "UI", "1.2.3")
    return ds


def _preamble(length: int) -> Callable[[], Dataset]:
    def make() -> Dataset:
        ds = datasets.ct_slice(4, 4)
        ds.preamble = b"\x01" * length
        return ds

    return make


def _meta_with_foreign_element() -> Dataset:
    """file_meta holding a non-group-2 element (FileMetaDataset refuses one, so
    it is slipped in behind its back)."""
    ds = datasets.ct_slice(4, 4)
    ds.file_meta._dict[Tag(0x00080016)] = DataElement(0x00080016, "UI", "1.2.3")
    return ds


def _meta_missing_sop_class() -> Dataset:
    ds = datasets.ct_slice(4, 4)
    del ds.file_meta.MediaStorageSOPClassUID
    del ds.SOPClassUID
    return ds


def _no_transfer_syntax() -> Dataset:
    ds = datasets.ct_slice(4, 4)
    del ds.file_meta.TransferSyntaxUID
    return ds


def _no_meta_no_encoding() -> Dataset:
    return datasets.no_file_meta()


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Dataset]
    options: Options = field(default_factory=Options)
    #: pydicom raises after opening a path (so leaves a file we do not)
    pydicom_creates_file: bool = False


def _kw(**kwargs: Any) -> Options:
    return Options(kwargs=tuple(kwargs.items()))


CASES = [
    Case("command set", _command_set),
    Case("command set before file meta", _command_and_meta),
    Case("file meta in dataset", _meta_in_dataset),
    Case("file meta in plain dataset", _meta_in_plain_dataset),
    Case(
        "force_encoding with enforce_file_format",
        datasets.ct_slice,
        _kw(force_encoding=True, enforce_file_format=True, implicit_vr=True, little_endian=True),
    ),
    Case(
        "write_like_original=False and force_encoding",
        datasets.ct_slice,
        Options(args=(False,), kwargs=(("force_encoding", True),)),
    ),
    Case("preamble too short", _preamble(127)),
    Case("preamble too long", _preamble(129)),
    Case("preamble too long, enforced", _preamble(200), _kw(enforce_file_format=True)),
    Case(
        "implicit VR big endian", _no_meta_no_encoding, _kw(implicit_vr=True, little_endian=False)
    ),
    Case(
        "implicit VR big endian against transfer syntax",
        datasets.ct_slice,
        _kw(implicit_vr=True, little_endian=False),
    ),
    Case("encoding against transfer syntax", datasets.ct_slice, _kw(implicit_vr=True)),
    Case("no encoding at all", _no_meta_no_encoding),
    Case("force_encoding without encoding", datasets.ct_slice, _kw(force_encoding=True)),
    Case(
        "file meta with a foreign element", _meta_with_foreign_element, pydicom_creates_file=True
    ),
    Case(
        "file meta with a foreign element, enforced",
        _meta_with_foreign_element,
        _kw(enforce_file_format=True),
    ),
    Case(
        "file meta without SOP class, enforced",
        _meta_missing_sop_class,
        _kw(enforce_file_format=True),
    ),
    Case(
        "no transfer syntax, explicit little endian, enforced",
        _no_transfer_syntax,
        _kw(enforce_file_format=True, implicit_vr=False, little_endian=True),
    ),
    Case("unknown keyword arguments", datasets.ct_slice, _kw(foo=1, bar=2)),
    Case(
        "unknown keyword with write_like_original",
        datasets.ct_slice,
        _kw(write_like_original=True, compress=True),
    ),
    Case(
        "write_like_original positional and keyword",
        datasets.ct_slice,
        Options(args=(True,), kwargs=(("write_like_original", True),)),
    ),
    Case(
        "write_like_original positional and keyword, disagreeing",
        datasets.ct_slice,
        Options(args=(None,), kwargs=(("write_like_original", False), ("bogus", 1))),
    ),
    Case("keyword errors before dataset errors", _command_set, _kw(foo=1)),
    Case(
        "Pixel Data not encapsulated",
        datasets.unencapsulated_compressed,
        pydicom_creates_file=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_bad_input(case: Case, tmp_path: Path) -> None:
    theirs, ours = tmp_path / "pydicom", tmp_path / "aiodicom"
    theirs.mkdir()
    ours.mkdir()

    # a new path
    target = ours / "new.dcm"
    expected = write_pydicom(case.make(), theirs / "new.dcm", case.options, bytes)
    actual = await write_aiodicom(case.make(), target, case.options, target.read_bytes)
    assert expected.error is not None, f"{case.name}: pydicom accepted it"
    assert_same(expected, actual, f"{case.name} -> new path")
    assert listing(ours) == [], "something was created"
    assert (theirs / "new.dcm").exists() == case.pydicom_creates_file

    # an existing file, both with exist_ok (default) and overwrite=False
    existing = ours / "old.dcm"
    existing.write_bytes(OLD_CONTENT)
    for extra in ((), (("overwrite", True),), (("exist_ok", False),)):
        options = Options(case.options.args, case.options.kwargs + extra)
        actual = await write_aiodicom(case.make(), existing, options, existing.read_bytes)
        if extra != (("exist_ok", False),):  # pydicom 3.0.2 has no 'exist_ok'
            assert_same(expected, actual, f"{case.name} {options} -> existing path")
        assert actual.error is not None
        assert existing.read_bytes() == OLD_CONTENT
        assert listing(ours) == ["old.dcm"], "a temporary file remains"

    # a BytesIO and a DicomBytesIO holding content, positioned mid-way
    for kind in ("BytesIO", "DicomBytesIO"):
        ref: Any = io.BytesIO(OLD_CONTENT) if kind == "BytesIO" else DicomBytesIO(OLD_CONTENT)
        mine: Any = io.BytesIO(OLD_CONTENT) if kind == "BytesIO" else DicomBytesIO(OLD_CONTENT)
        ref.seek(3)
        mine.seek(3)
        expected = write_pydicom(case.make(), ref, case.options, ref.getvalue)
        actual = await write_aiodicom(case.make(), mine, case.options, mine.getvalue)
        assert_same(expected, actual, f"{case.name} -> {kind}")
        assert (mine.getvalue(), mine.tell()) == (OLD_CONTENT, 3)

    # a bytearray (pydicom rejects those: same error as for its BytesIO)
    buffer = bytearray(OLD_CONTENT)
    actual = await write_aiodicom(case.make(), buffer, case.options, lambda: bytes(buffer))
    assert actual.error == expected.error
    assert buffer == OLD_CONTENT


# ---------------------------------------------------------------------------
# Destinations


class _ReadOnly:
    def read(self, n: int = -1) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0


BAD_DESTINATIONS: list[Any] = [
    1,
    None,
    object(),
    1.5,
    [],
    {},
    (1, 2, 3),
    (1, 2),
    ("a", "b"),
    _ReadOnly(),
]


@pytest.mark.parametrize(
    "destination",
    BAD_DESTINATIONS,
    ids=[
        "int",
        "None",
        "object",
        "float",
        "list",
        "dict",
        "tuple",
        "int-pair",
        "str-pair",
        "read-only",
    ],
)
async def test_unusable_destination(destination: Any) -> None:
    with pytest.raises(TypeError, match=r"dcmwrite|DicomIO") as theirs:
        pydicom.dcmwrite(destination, datasets.ct_slice(4, 4))
    with pytest.raises(Exception) as ours:  # noqa: PT011 - compared just below
        await aiodicom.dcmwrite(destination, datasets.ct_slice(4, 4))
    assert error_key(ours.value) == error_key(theirs.value)


async def test_dataset_errors_come_before_destination_errors() -> None:
    """pydicom checks the dataset before it looks at the destination."""
    for make in (_command_set, _preamble(5), _meta_in_dataset):
        with pytest.raises(ValueError, match=r"are not allowed|must be") as theirs:
            pydicom.dcmwrite(None, make())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"are not allowed|must be") as ours:
            await aiodicom.dcmwrite(None, make())
        assert error_key(ours.value) == error_key(theirs.value)


async def test_keyword_errors_come_before_destination_errors() -> None:
    with pytest.raises(TypeError) as theirs:
        pydicom.dcmwrite(None, datasets.ct_slice(4, 4), nonsense=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError) as ours:
        await aiodicom.dcmwrite(None, datasets.ct_slice(4, 4), nonsense=1)
    assert error_key(ours.value) == error_key(theirs.value)
    assert "nonsense" in str(ours.value)


# ---------------------------------------------------------------------------
# exist_ok / overwrite


async def test_exist_ok_and_overwrite_together(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    for exist_ok, overwrite in ((True, True), (False, False), (True, False), (False, True)):
        with pytest.raises(TypeError, match="both 'exist_ok' and 'overwrite'"):
            await aiodicom.dcmwrite(
                target, datasets.ct_slice(4, 4), exist_ok=exist_ok, overwrite=overwrite
            )
    assert listing(tmp_path) == []


async def test_overwrite_false_is_exist_ok_false(tmp_path: Path) -> None:
    theirs, ours = tmp_path / "pydicom.dcm", tmp_path / "aiodicom.dcm"
    theirs.write_bytes(OLD_CONTENT)
    ours.write_bytes(OLD_CONTENT)
    with pytest.raises(FileExistsError) as expected:
        pydicom.dcmwrite(theirs, datasets.ct_slice(4, 4), overwrite=False)
    for keyword in ("overwrite", "exist_ok"):
        with pytest.raises(FileExistsError) as actual:
            await aiodicom.dcmwrite(ours, datasets.ct_slice(4, 4), **{keyword: False})
        message = str(expected.value).replace(str(theirs), str(ours))
        assert str(actual.value) == message
        assert (actual.value.errno, actual.value.filename) == (
            expected.value.errno,
            str(ours),
        )
        assert ours.read_bytes() == OLD_CONTENT
    assert listing(tmp_path) == ["aiodicom.dcm", "pydicom.dcm"]


async def test_overwrite_true_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    target.write_bytes(OLD_CONTENT)
    await aiodicom.dcmwrite(target, datasets.ct_slice(4, 4), overwrite=True)
    assert target.read_bytes() == pydicom_bytes(datasets.ct_slice(4, 4))


async def test_exist_ok_false_new_file(tmp_path: Path) -> None:
    expected = pydicom_bytes(datasets.ct_slice(4, 4))
    for keyword in ("overwrite", "exist_ok"):
        target = tmp_path / f"{keyword}.dcm"
        await aiodicom.dcmwrite(target, datasets.ct_slice(4, 4), **{keyword: False})
        assert target.read_bytes() == expected


async def test_exist_ok_ignored_for_file_objects() -> None:
    """pydicom ignores overwrite for file-likes; so do we."""
    buffer = io.BytesIO()
    await aiodicom.dcmwrite(buffer, datasets.ct_slice(4, 4), exist_ok=False)
    assert buffer.getvalue() == pydicom_bytes(datasets.ct_slice(4, 4), overwrite=False)


# ---------------------------------------------------------------------------
# Intended improvements: bytes paths, storage_options misuse


async def test_bytes_path_accepted(tmp_path: Path) -> None:
    """pydicom 3.0.2 rejects bytes paths; we write them (as the docs promise)."""
    with pytest.raises(TypeError, match="but got bytes"):
        pydicom.dcmwrite(bytes(tmp_path / "p.dcm"), datasets.ct_slice(4, 4))
    reference = tmp_path / "reference.dcm"
    pydicom.dcmwrite(reference, datasets.ct_slice(4, 4))
    target = tmp_path / "b.dcm"
    await aiodicom.dcmwrite(bytes(target), datasets.ct_slice(4, 4))
    assert target.read_bytes() == reference.read_bytes()
    with pytest.raises(FileExistsError):
        await aiodicom.dcmwrite(bytes(target), datasets.ct_slice(4, 4), exist_ok=False)
    assert listing(tmp_path) == ["b.dcm", "reference.dcm"]


@pytest.mark.parametrize("kind", ["str", "bytes", "Path", "BytesIO", "bytearray"])
async def test_storage_options_without_url(kind: str, tmp_path: Path) -> None:
    target = tmp_path / "x.dcm"
    buffer = io.BytesIO(OLD_CONTENT)
    array = bytearray(OLD_CONTENT)
    destination: Any = {
        "str": str(target),
        "bytes": bytes(target),
        "Path": target,
        "BytesIO": buffer,
        "bytearray": array,
    }[kind]
    with pytest.raises(ValueError, match="storage_options"):
        await aiodicom.dcmwrite(
            destination, datasets.ct_slice(4, 4), storage_options={"anon": True}
        )
    assert listing(tmp_path) == []
    assert buffer.getvalue() == OLD_CONTENT
    assert array == OLD_CONTENT


async def test_write_only_destination_accepted() -> None:
    """pydicom needs seek()/tell(); a destination with only write() works for us."""
    with pytest.raises(TypeError, match="but got WriteOnly"):
        pydicom.dcmwrite(WriteOnly(), datasets.ct_slice(4, 4))
    sink = WriteOnly()
    await aiodicom.dcmwrite(sink, datasets.ct_slice(4, 4))
    assert bytes(sink.data) == pydicom_bytes(datasets.ct_slice(4, 4))


async def test_element_error_leaves_existing_file(tmp_path: Path) -> None:
    """pydicom truncates the old file and leaves a partial one; we keep the old file."""
    theirs, ours = tmp_path / "pydicom.dcm", tmp_path / "aiodicom.dcm"
    theirs.write_bytes(OLD_CONTENT)
    ours.write_bytes(OLD_CONTENT)
    with pytest.raises(ValueError, match="encapsulated") as expected:
        pydicom.dcmwrite(theirs, datasets.unencapsulated_compressed())
    with pytest.raises(ValueError, match="encapsulated") as actual:
        await aiodicom.dcmwrite(ours, datasets.unencapsulated_compressed())
    assert error_key(actual.value) == error_key(expected.value)
    assert theirs.read_bytes() != OLD_CONTENT  # pydicom's partial file
    assert ours.read_bytes() == OLD_CONTENT
    assert listing(tmp_path) == ["aiodicom.dcm", "pydicom.dcm"]


async def test_file_meta_dataset_class_name_in_message() -> None:
    """The message names the dataset's class (Dataset vs FileDataset)."""
    for make, cls in ((_meta_in_dataset, "FileDataset"), (_meta_in_plain_dataset, "Dataset")):
        with pytest.raises(ValueError, match=f"'{cls}.file_meta'"):
            await aiodicom.dcmwrite(io.BytesIO(), make())


def test_file_meta_is_validated_type() -> None:
    """Sanity: the helper datasets are what the cases claim."""
    assert isinstance(datasets.ct_slice(4, 4).file_meta, FileMetaDataset)
    assert 0x00080016 in _meta_with_foreign_element().file_meta


# ---------------------------------------------------------------------------
# Precedence: pydicom opens a path after its dataset checks but *before* it
# encodes the File Meta Information and the elements, so an unopenable path
# (existing with overwrite=False, a directory, a missing parent) wins over an
# invalid file meta or a bad element.


def _existing(directory: Path) -> tuple[Path, dict[str, Any]]:
    path = directory / "old.dcm"
    path.write_bytes(OLD_CONTENT)
    return path, {"overwrite": False}


def _a_directory(directory: Path) -> tuple[Path, dict[str, Any]]:
    return directory, {}


def _missing_parent(directory: Path) -> tuple[Path, dict[str, Any]]:
    return directory / "missing" / "x.dcm", {}


@pytest.mark.parametrize(
    "make",
    [_meta_with_foreign_element, datasets.unencapsulated_compressed],
    ids=["invalid-file-meta", "bad-element"],
)
@pytest.mark.parametrize(
    "where",
    [_existing, _a_directory, _missing_parent],
    ids=["existing-overwrite-false", "directory", "missing-parent"],
)
async def test_open_errors_precede_encoding_errors(
    make: Callable[[], Dataset],
    where: Callable[[Path], tuple[Path, dict[str, Any]]],
    tmp_path: Path,
) -> None:
    destination, kwargs = where(tmp_path)
    with pytest.raises(OSError, match=r"Errno") as theirs:
        pydicom.dcmwrite(destination, make(), **kwargs)
    with pytest.raises(Exception) as ours:  # noqa: PT011 - compared just below
        await aiodicom.dcmwrite(destination, make(), **kwargs)
    assert error_key(ours.value) == error_key(theirs.value)


@pytest.mark.parametrize("where", [_existing, _a_directory, _missing_parent])
async def test_open_errors_for_a_good_dataset(
    where: Callable[[Path], tuple[Path, dict[str, Any]]], tmp_path: Path
) -> None:
    destination, kwargs = where(tmp_path)
    with pytest.raises(OSError, match=r"Errno") as theirs:
        pydicom.dcmwrite(destination, datasets.ct_slice(4, 4), **kwargs)
    with pytest.raises(OSError, match=r"Errno") as ours:
        await aiodicom.dcmwrite(destination, datasets.ct_slice(4, 4), **kwargs)
    assert error_key(ours.value) == error_key(theirs.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == (
        ["old.dcm"] if where is _existing else []
    )


@pytest.mark.parametrize(
    "options",
    [Options(args=(True,)), Options(kwargs=(("write_like_original", False),))],
    ids=["positional", "keyword"],
)
async def test_write_like_original_under_future(
    options: Options, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pydicom's 'future' behaviour on, write_like_original is refused outright."""
    monkeypatch.setattr(pydicom.config, "_use_future", True)
    expected = write_pydicom(datasets.ct_slice(4, 4), io.BytesIO(), options, bytes)
    buffer = io.BytesIO()
    actual = await write_aiodicom(datasets.ct_slice(4, 4), buffer, options, buffer.getvalue)
    assert expected.error is not None
    assert expected.error[1].startswith("'write_like_original' is no longer accepted")
    assert_same(expected, actual, f"future {options}")
    assert buffer.getvalue() == b""
