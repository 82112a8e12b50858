"""Byte parity with :func:`pydicom.dcmwrite`.

Every DICOM file pydicom ships, and every generated dataset of
:mod:`tests.datasets`, is written by both writers under the whole option matrix
(``implicit_vr`` x ``little_endian`` x ``enforce_file_format`` x ``force_encoding``,
plus ``write_like_original`` positional and keyword).  Each writer gets its own
fresh dataset; the two must agree on:

* the bytes written, or the exception (type, and message up to pydicom's
  embedded traceback);
* the warnings (category and message);
* the dataset afterwards (element classes, VRs, undefined-length flags, values);
* the encoding set on a ``DicomBytesIO`` destination.

Where pydicom fails part-way, aiodicom must leave the destination untouched (our
intended improvement), so that is asserted instead of equal partial output.

The matrix loops inside a few tests (one per file), so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO

import aiodicom
from tests import datasets
from tests.helpers import (
    HashingFile,
    Options,
    assert_same,
    record_warnings,
    write_aiodicom,
    write_pydicom,
)

pytestmark = pytest.mark.anyio

# ---------------------------------------------------------------------------
# The option matrix


def option_matrix() -> list[Options]:
    """implicit_vr x little_endian x enforce_file_format x force_encoding, then
    write_like_original positional and keyword (True and False)."""
    out = []
    for implicit_vr in (None, True, False):
        for little_endian in (None, True, False):
            for enforce in (False, True):
                for force in (False, True):
                    out.append(
                        Options(
                            kwargs=(
                                ("implicit_vr", implicit_vr),
                                ("little_endian", little_endian),
                                ("enforce_file_format", enforce),
                                ("force_encoding", force),
                            )
                        )
                    )
    for wlo in (True, False):
        out.append(Options(args=(wlo,)))
        out.append(Options(kwargs=(("write_like_original", wlo),)))
        out.append(Options(args=(wlo,), kwargs=(("implicit_vr", True), ("little_endian", True))))
    return out


MATRIX = option_matrix()

# A few combinations for the costlier destinations (local files, bytearrays).
SHORT_MATRIX = [
    Options(),
    Options(kwargs=(("enforce_file_format", True),)),
    Options(kwargs=(("implicit_vr", False), ("little_endian", False), ("force_encoding", True))),
    Options(kwargs=(("implicit_vr", True), ("little_endian", True))),
    Options(args=(False,)),
]

# ---------------------------------------------------------------------------
# Comparing one dataset factory over a matrix and over destinations


async def compare_buffers(make: Callable[[], Dataset], matrix: list[Options], name: str) -> int:
    """BytesIO and DicomBytesIO destinations, over `matrix`.  Returns the number of
    combinations that pydicom wrote successfully."""
    written = 0
    for options in matrix:
        for kind in ("BytesIO", "DicomBytesIO"):
            context = f"{name} {options} -> {kind}"
            ds_ref, ds_ours = make(), make()
            ref_dest: Any = io.BytesIO() if kind == "BytesIO" else DicomBytesIO()
            our_dest: Any = io.BytesIO() if kind == "BytesIO" else DicomBytesIO()
            expected = write_pydicom(ds_ref, ref_dest, options, ref_dest.getvalue)
            actual = await write_aiodicom(ds_ours, our_dest, options, our_dest.getvalue)
            assert_same(expected, actual, context)
            if actual.error is not None:
                # improvement: a failed write leaves the buffer as it was
                assert our_dest.getvalue() == b"", f"{context}: buffer not rolled back"
            else:
                written += kind == "BytesIO"
            datasets.close_buffers(ds_ref)
            datasets.close_buffers(ds_ours)
    return written


async def compare_other_destinations(
    make: Callable[[], Dataset], matrix: list[Options], name: str, directory: Path
) -> None:
    """A local path and a bytearray (which pydicom rejects: compared to its BytesIO)."""
    for number, options in enumerate(matrix):
        context = f"{name} {options}"
        ref_path = directory / f"pydicom-{number}.dcm"
        our_path = directory / f"aiodicom-{number}.dcm"
        ds_ref, ds_ours = make(), make()
        expected = write_pydicom(ds_ref, ref_path, options, ref_path.read_bytes)
        actual = await write_aiodicom(ds_ours, our_path, options, our_path.read_bytes)
        assert_same(expected, actual, f"{context} -> path")
        if actual.error is not None:
            assert not our_path.exists(), f"{context}: failed write left a file"

        reference = io.BytesIO()
        ds_ref, ds_bytearray = make(), make()
        expected = write_pydicom(ds_ref, reference, options, reference.getvalue)
        target = bytearray(b"already here")

        def written(target: bytearray = target) -> bytes:
            return bytes(target[len(b"already here") :])

        actual = await write_aiodicom(ds_bytearray, target, options, written)
        assert_same(expected, actual, f"{context} -> bytearray")
        if actual.error is not None:
            assert target == b"already here", f"{context}: bytearray not rolled back"
        for ds in (ds_ref, ds_ours, ds_bytearray):
            datasets.close_buffers(ds)
    leftovers = sorted(
        p.name for p in directory.iterdir() if not p.name.startswith(("pydicom-", "aiodicom-"))
    )
    assert not [n for n in leftovers if "tmp" in n], f"temporary files left: {leftovers}"


# ---------------------------------------------------------------------------
# pydicom's own test files


def _shipped_files() -> list[str]:
    """Every file pydicom ships as test data, and its character set files.

    Directories (``dicomdirtests/...``) are listed by pydicom too; they are not
    files and are the only entries left out.  Non-DICOM files (json, txt...) are
    kept: read with ``force=True`` they are still datasets both writers must agree on.
    """
    paths = pydicom.data.get_testdata_files() + pydicom.data.get_charset_files()
    files = sorted({p for p in paths if not os.path.isdir(p)})
    assert all(os.path.isfile(p) for p in files)
    return files


SHIPPED = _shipped_files()


def _reader(path: str) -> Callable[[], Dataset]:
    data = Path(path).read_bytes()
    try:
        pydicom.dcmread(io.BytesIO(data))
        force = False
    except pydicom.errors.InvalidDicomError:
        force = True

    def read() -> Dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), force=force)

    return read


def _short_name(path: str) -> str:
    return os.path.relpath(path, os.path.dirname(pydicom.data.__file__))


def test_shipped_files_are_all_here() -> None:
    """The list is what pydicom ships (guards against a silently empty matrix)."""
    assert len(SHIPPED) > 150
    names = {os.path.basename(p) for p in SHIPPED}
    for expected in ("CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "chrH31.dcm"):
        assert expected in names


@pytest.mark.parametrize("path", SHIPPED, ids=_short_name)
async def test_shipped_file_matrix(path: str) -> None:
    make = _reader(path)
    await compare_buffers(make, MATRIX, _short_name(path))


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "rtplan.dcm"]
)
async def test_shipped_file_to_path_and_bytearray(name: str, tmp_path: Path) -> None:
    path = pydicom.data.get_testdata_file(name)
    assert isinstance(path, str)
    await compare_other_destinations(_reader(path), SHORT_MATRIX, name, tmp_path)


async def test_every_shipped_file_to_path_and_bytearray(tmp_path: Path) -> None:
    """Default options only, all files, local path and bytearray."""
    for number, path in enumerate(SHIPPED):
        directory = tmp_path / str(number)
        directory.mkdir()
        await compare_other_destinations(_reader(path), [Options()], _short_name(path), directory)


# ---------------------------------------------------------------------------
# Generated datasets


@pytest.mark.parametrize("name", sorted(datasets.GENERATED))
async def test_generated_matrix(name: str, tmp_path: Path) -> None:
    factory = datasets.GENERATED[name]
    written = await compare_buffers(lambda: factory(tmp_path), MATRIX, name)
    await compare_other_destinations(lambda: factory(tmp_path), SHORT_MATRIX, name, tmp_path)
    must_fail = {
        "ambiguous_vr_unresolvable",
        "buffered_closed",
        "bytearray_values",
        "noncontiguous_view",
        "unencapsulated_compressed",
    }
    if name in must_fail:
        assert written == 0, f"{name} was meant to exercise an error"
    else:
        assert written > 0, f"{name} was never written successfully"


async def test_long_values_warn_and_change_to_un() -> None:
    """The 'changed to UN' case really happens (so the matrix compares it)."""
    with record_warnings() as rec:
        await aiodicom.dcmwrite(io.BytesIO(), datasets.long_values(), implicit_vr=False)
    messages = [m for _, m in rec.result()]
    assert any("changed from 'LT' to 'UN'" in m for m in messages)
    assert any("changed from 'LO' to 'UN'" in m for m in messages)
    assert not any("from 'UT'" in m for m in messages)


async def test_pixel_data_flag_side_effect() -> None:
    """pydicom sets PixelData.is_undefined_length from the transfer syntax; so do we."""
    ds = datasets.encapsulated_multiframe(2, 100)
    ds["PixelData"].is_undefined_length = False
    await aiodicom.dcmwrite(io.BytesIO(), ds)
    assert ds["PixelData"].is_undefined_length is True
    ds = datasets.ct_slice(8, 8)
    ds["PixelData"].is_undefined_length = True
    await aiodicom.dcmwrite(io.BytesIO(), ds)
    assert ds["PixelData"].is_undefined_length is False


async def test_dicombytesio_gets_encoding() -> None:
    destination = DicomBytesIO()
    await aiodicom.dcmwrite(destination, datasets.big_endian())
    assert (destination.is_implicit_VR, destination.is_little_endian) == (False, False)


# ---------------------------------------------------------------------------
# A 100+ MiB multi-frame: compare digests, not two copies in memory


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.mark.slow
async def test_large_multiframe(tmp_path: Path) -> None:
    """An odd-length 100+ MiB native multi-frame (the even case is in the matrix)."""
    ds = datasets.multiframe(100 * 1024 * 1024 + 3 * 131072, odd=True)
    assert len(ds.PixelData) > 100 * 1024 * 1024

    reference = HashingFile()
    pydicom.dcmwrite(reference, ds)
    ours = HashingFile()
    await aiodicom.dcmwrite(ours, ds)
    assert (ours.length, ours.digest.hexdigest()) == (
        reference.length,
        reference.digest.hexdigest(),
    )

    path = tmp_path / "large.dcm"
    await aiodicom.dcmwrite(path, ds, exist_ok=False)
    assert path.stat().st_size == reference.length
    assert _hash_file(path) == reference.digest.hexdigest()


# ---------------------------------------------------------------------------
# The core's own framing of raw elements


def _pydicom_framing(elem: Any, implicit_vr: bool, little_endian: bool) -> bytes:
    from pydicom.filewriter import write_data_element

    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit_vr, little_endian
    write_data_element(out, elem)
    return out.getvalue()


def test_raw_elements_framed_as_pydicom_frames_them() -> None:
    """Every small raw element of every shipped file, in the encoding it was read
    with, is framed byte for byte as ``write_data_element`` frames it (or left to
    pydicom); most of them take the fast way, so this is not vacuous."""
    from pydicom.dataelem import RawDataElement

    from aiodicom._core.encode import _raw_element

    framed = declined = 0
    for path in SHIPPED:
        dataset = _reader(path)()
        implicit_vr, little_endian = dataset.original_encoding
        if implicit_vr is None or little_endian is None:
            continue
        for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset yields elements)
            elem = dataset.get_item(tag)
            if type(elem) is not RawDataElement or not isinstance(elem.value, bytes):
                continue
            ours = _raw_element(elem, implicit_vr, little_endian)
            if ours is None:
                declined += 1
                continue
            framed += 1
            assert ours == _pydicom_framing(elem, implicit_vr, little_endian), (path, tag)
    assert framed > 20 * declined > 0


@pytest.mark.parametrize("little_endian", [True, False])
@pytest.mark.parametrize("implicit_vr", [True, False])
@pytest.mark.parametrize(
    ("vr", "length", "value"),
    [
        ("LO", 6, b"ABCDEF"),
        ("UN", 0xFFFFFFFF, b"\x01\x02"),  # undefined length: delimiter appended
        ("OB", 4, b"\x00\x01\x02\x03"),
        ("SH", 0, b""),
        ("LO", 5, b"ABCDE"),  # odd: written as it is, no padding
        ("XY", 2, b"ab"),  # an unknown VR is written with a 16-bit length
    ],
)
def test_raw_element_framing_cases(
    vr: str, length: int, value: bytes, implicit_vr: bool, little_endian: bool
) -> None:
    from pydicom.dataelem import RawDataElement

    from aiodicom._core.encode import _raw_element

    elem = RawDataElement(
        pydicom.tag.Tag(0x00091010), vr, length, value, 0, implicit_vr, little_endian
    )
    assert _raw_element(elem, implicit_vr, little_endian) == _pydicom_framing(
        elem, implicit_vr, little_endian
    )


@pytest.mark.parametrize(
    ("tag", "vr", "length", "value"),
    [
        (0x00091010, "LO", 0x10000, b"x" * 0x10000),  # pydicom warns and writes UN
        (0x00091010, "LO", 0xFFFFFFFF, b"ab"),  # 16-bit VR, undefined length
        (0x7FE00010, "OB", 0xFFFFFFFF, b"\xfe\xff\x00\xe0\x00\x00\x00\x00"),  # checked
        (0x00091010, "US or SS", 2, b"\x00\x01"),  # ambiguous: pydicom refuses it
        (0x00091010, "LO", 2, bytearray(b"ab")),  # not bytes
    ],
)
def test_raw_element_framing_left_to_pydicom(tag: int, vr: str, length: int, value: Any) -> None:
    """What pydicom treats specially is left to it (explicit VR little endian)."""
    from pydicom.dataelem import RawDataElement

    from aiodicom._core.encode import _raw_element

    elem = RawDataElement(pydicom.tag.Tag(tag), vr, length, value, 0, False, True)
    assert _raw_element(elem, False, True) is None


def test_plain_file_meta_encoded_as_pydicom_encodes_it(tmp_path: Path) -> None:
    """The File Meta Information of every shipped file and generated dataset
    that the core encodes itself comes out as ``write_file_meta_info`` writes
    it (on pydicom's own deep copy), and the caller's meta is left as it was;
    most take that way."""
    import copy

    from pydicom.filewriter import write_file_meta_info

    from aiodicom._core.encode import _copy_meta, _encode_plain_meta, _plain_meta
    from tests.helpers import dataset_state

    plain = other = built_plain = 0
    built = [factory(tmp_path) for factory in datasets.GENERATED.values()]
    for path in [*SHIPPED, *built]:
        dataset = path if isinstance(path, Dataset) else _reader(path)()
        meta = getattr(dataset, "file_meta", None)
        if not meta:
            continue
        if not _plain_meta(meta):
            other += 1
            continue
        plain += 1
        built_plain += isinstance(path, Dataset)
        before = dataset_state(meta)
        expected = DicomBytesIO()
        expected.is_implicit_VR, expected.is_little_endian = False, True
        write_file_meta_info(expected, copy.deepcopy(meta), enforce_standard=False)
        assert _encode_plain_meta(_copy_meta(meta)) == expected.getvalue(), path
        assert dataset_state(meta) == before, path
    assert plain > 10 * other
    assert built_plain > 5  # meta built in memory is plain too


# ---------------------------------------------------------------------------
# The core's own framing of small in-memory elements


def _value_cases() -> list[tuple[int, str, Any]]:
    """``(tag, VR, value)`` for every kind of value the core frames itself, and
    the odd ones next to them that it must leave to pydicom."""
    from decimal import Decimal

    import numpy as np
    from pydicom.multival import MultiValue
    from pydicom.uid import UID
    from pydicom.valuerep import DS, IS, DSdecimal, DSfloat, PersonName

    tag = 0x00091010
    cases: list[tuple[int, str, Any]] = []
    for vr in ("AE", "AS", "CS", "DA", "DT", "TM", "UR", "LO", "LT", "SH", "ST", "UC", "UT", "UI"):
        cases += [
            (tag, vr, "ABC"),  # odd: padded
            (tag, vr, "ABCD"),
            (tag, vr, ""),
            (tag, vr, "caf\u00e9"),  # not ASCII
            (tag, vr, ["A", "BC", ""]),
            (tag, vr, []),
            (tag, vr, ("A", "B")),
            (tag, vr, np.array(["A", "BC"])),  # NumPy strings: not str, but joined
            (tag, vr, np.array([], dtype=str)),
            (tag, vr, ["A", b"B"]),
            (tag, vr, b"AB"),
            (tag, vr, None),
            (tag, vr, 12),
            (tag, vr, "x" * 0x10001),  # too long for a 16-bit length
        ]
    cases += [
        (tag, "UI", UID("1.2.3")),
        (tag, "UI", [UID("1.2"), "1.23"]),
        (tag, "PN", PersonName("Doe^John")),
        (tag, "PN", PersonName("Doe^Jo")),
        (tag, "PN", PersonName("M\u00fcller^J\u00fcrgen")),
        (tag, "PN", PersonName("")),
        (tag, "PN", [PersonName("A^B"), PersonName("C^D")]),
        (tag, "PN", [PersonName("A^B")]),  # pydicom fails on a list of one
        (tag, "PN", "Doe^John"),
        (tag, "PN", np.array(["A^B", "C^D"])),
        (tag, "DS", DSfloat("1.50")),  # its original string
        (tag, "DS", DSfloat(0.7)),
        (tag, "DS", DSfloat(1 / 3, auto_format=True)),
        (tag, "DS", DSdecimal(Decimal("2.25"))),
        (tag, "DS", DS("  1.5 ")),
        (tag, "DS", [DSfloat("1"), DSfloat(0.7), DSfloat("-2.5")]),
        (tag, "DS", 1.25),
        (tag, "DS", Decimal("3.5")),
        (tag, "DS", ""),
        (tag, "DS", None),
        (tag, "DS", []),
        (tag, "DS", np.array([1.5, 2.0])),
        (tag, "IS", IS("12")),
        (tag, "IS", IS(" 007")),
        (tag, "IS", [IS("1"), IS("-20")]),
        (tag, "IS", 12),
        (tag, "IS", True),
    ]
    for vr, good, bad in [
        ("US", 65535, -1),
        ("SS", -32768, 40000),
        ("UL", 2**32 - 1, 2**32),
        ("SL", -(2**31), 2**31),
        ("UV", 2**64 - 1, -1),
        ("SV", -(2**63), 2**63),
        ("FL", 1.1, "x"),
        ("FD", 1 / 3, "x"),
    ]:
        cases += [
            (tag, vr, good),
            (tag, vr, bad),
            (tag, vr, 0),
            (tag, vr, [good, 0, 1]),
            (tag, vr, [good, bad]),
            (tag, vr, []),
            (tag, vr, ""),
            (tag, vr, None),
            (tag, vr, 1.5),
            (tag, vr, True),
            (tag, vr, np.uint16(7)),
            (tag, vr, np.array([1, 2], dtype=np.uint16)),
            (tag, vr, (1, 2)),
        ]
    cases += [
        (0x00283002, "SS", [4096, -2000, 16]),  # LUT Descriptor: pydicom's own case
        (0x00283002, "SS", -2000),
        (0x00280010, "US", 512),
    ]
    built: list[tuple[int, str, Any]] = []
    for tag_, vr, value in cases:
        if isinstance(value, list):
            built.append((tag_, vr, MultiValue(lambda v: v, value)))
        built.append((tag_, vr, value))
    return built


def _originals(elem: Any) -> list[Any]:
    values = elem.value if isinstance(elem.value, list | tuple) else [elem.value]
    return [getattr(v, "original_string", None) for v in values]


def _framing_or_error(elem: Any, implicit_vr: bool, little_endian: bool, charset: Any) -> Any:
    from pydicom.filewriter import write_data_element

    out = DicomBytesIO()
    out.is_implicit_VR, out.is_little_endian = implicit_vr, little_endian
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_data_element(out, elem, charset)
    except Exception as exc:
        return exc
    return out.getvalue(), [str(w.message) for w in caught]


@pytest.mark.parametrize("charset", ["iso8859", "ISO_IR 100", "ISO_IR 192"])
@pytest.mark.parametrize(
    ("implicit_vr", "little_endian"), [(False, True), (True, True), (False, False)]
)
def test_value_elements_framed_as_pydicom_frames_them(
    implicit_vr: bool, little_endian: bool, charset: str
) -> None:
    """Every in-memory element the core frames itself comes out byte for byte as
    ``write_data_element`` writes it, without a warning from pydicom, and leaves
    the element as pydicom leaves it; what pydicom refuses, warns about or
    treats specially is left to it.  Most cases take the fast way."""
    import copy

    from pydicom.charset import convert_encodings
    from pydicom.dataelem import DataElement

    from aiodicom._core.encode import _value_element
    from tests.helpers import element_state

    framed = declined = 0
    for tag, vr, value in _value_cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                theirs = DataElement(tag, vr, copy.deepcopy(value))
                ours = DataElement(tag, vr, copy.deepcopy(value))
            except Exception:
                continue
        expected = _framing_or_error(theirs, implicit_vr, little_endian, charset)
        got = _value_element(ours, implicit_vr, little_endian, convert_encodings(charset))
        if got is None:
            declined += 1
            continue
        framed += 1
        case = (vr, value, implicit_vr, little_endian)
        assert not isinstance(expected, Exception), (case, expected)
        assert expected == (got, []), case
        assert element_state(ours) == element_state(theirs), case
        assert _originals(ours) == _originals(theirs), case  # PersonName keeps its bytes
    assert framed > 150
    assert declined > 100


@pytest.mark.parametrize(
    "charset", sorted(__import__("aiodicom._core.encode")._core.encode._PLAIN_CHARSETS)
)
def test_plain_character_sets_are_plain(charset: str) -> None:
    """A character set the core frames text with converts without a warning to
    one ASCII-compatible encoding that needs no escape sequences."""
    from pydicom.charset import convert_encodings, encode_string

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encodings = convert_encodings(charset)
    assert len(encodings) == 1
    text = "".join(map(chr, range(32, 127)))
    assert encode_string(text, encodings) == text.encode("ascii")


async def test_other_character_sets_still_warn_per_element_as_pydicom() -> None:
    """With a character set pydicom warns about, it warns for every element it
    writes: the core leaves them all to it, so the warnings are pydicom's."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO-IR 100"  # misspelt: pydicom corrects it, warning
    ds.PatientID = "ID"
    ds.Rows = 2
    ds.Modality = "CT"
    expected = DicomBytesIO()
    with warnings.catch_warnings(record=True) as theirs:
        warnings.simplefilter("always")
        pydicom.dcmwrite(expected, ds, implicit_vr=True, little_endian=True)
    got = bytearray()
    with warnings.catch_warnings(record=True) as ours:
        warnings.simplefilter("always")
        await aiodicom.dcmwrite(got, ds, implicit_vr=True, little_endian=True)
    assert len(theirs) >= 4
    assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
    assert bytes(got) == expected.getvalue()
