"""Property-based parity with hypothesis: for generated datasets and options,
:func:`aiodicom.dcmwrite` gives exactly the bytes of :func:`pydicom.dcmwrite`, or
raises the same exception type with the same message (and then leaves the
destination as it was).

Generated: standard elements of every VR family, private elements of any VR
(multi-valued, empty, odd-length), ambiguous VRs (``US or SS``, ``OB or OW``,
``US or OW``), sequences nested to a random depth with defined and undefined
lengths, Specific Character Sets with non-ASCII text, random File Meta
Information (transfer syntax, SOP class/instance, missing pieces), preambles
(absent, valid, wrong length), and random ``implicit_vr`` / ``little_endian`` /
``enforce_file_format`` / ``force_encoding``.

The examples are derandomized (the same ones on every run, so CI is stable) and
few (``AIODICOM_HYPOTHESIS_EXAMPLES``, default 60, raises them for a longer hunt).
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
)

import aiodicom

pytestmark = pytest.mark.anyio

EXAMPLES = int(os.environ.get("AIODICOM_HYPOTHESIS_EXAMPLES", "60"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- values per VR ------------------------------------------------------------------

_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"))
_ANY_TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\\\x00"),
    max_size=12,
)
_TEXT = st.one_of(_ASCII.map(lambda s: s[:16]), _ANY_TEXT)


def _multi(values: st.SearchStrategy[Any], max_size: int = 4) -> st.SearchStrategy[Any]:
    """A single value, an empty value, or several values."""
    return st.one_of(values, st.lists(values, min_size=0, max_size=max_size))


_STRING_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "AE": _multi(_ASCII.map(lambda s: s[:16])),
    "AS": st.sampled_from(["", "035Y", "002W", "35Y", "1234"]),
    "CS": _multi(st.sampled_from(["ORIGINAL", "PRIMARY", "", "A B", "lower", "X" * 17])),
    "DA": _multi(st.sampled_from(["20240131", "", "2024", "bad-date", "19700101-"])),
    "DS": _multi(
        st.one_of(
            st.sampled_from(["1.5", "-0", "1e3", " 2 ", "", "abc", "1" * 17]),
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            st.integers(-(10**6), 10**6),
        )
    ),
    "DT": st.sampled_from(["20240131101530.123+0100", "", "2024"]),
    "IS": _multi(st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(["", "12", "x"]))),
    "LO": _multi(_TEXT),
    "LT": _TEXT,
    "PN": _multi(st.one_of(st.sampled_from(["Doe^Jane", "", "Yamada^Tarou=山田^太郎"]), _TEXT)),
    "SH": _multi(_TEXT),
    "ST": _TEXT,
    "TM": _multi(st.sampled_from(["101530.123456", "", "1015", "25"])),
    "UC": _multi(_TEXT),
    "UI": _multi(st.sampled_from(["1.2.840.10008.5.1.4.1.1.2", "", "1.2.3.", "1" * 65])),
    "UR": st.sampled_from(["http://example.com/a b", ""]),
    "UT": _TEXT,
}
_INT_RANGES = {
    "US": (0, 2**16 - 1),
    "SS": (-(2**15), 2**15 - 1),
    "UL": (0, 2**32 - 1),
    "SL": (-(2**31), 2**31 - 1),
    "UV": (0, 2**64 - 1),
    "SV": (-(2**63), 2**63 - 1),
}
_NUMBER_VALUES: dict[str, st.SearchStrategy[Any]] = {
    vr: _multi(st.integers(lo, hi)) for vr, (lo, hi) in _INT_RANGES.items()
}
_NUMBER_VALUES["FL"] = _multi(st.floats(width=32, allow_nan=False))
_NUMBER_VALUES["FD"] = _multi(st.floats(allow_nan=False))
_NUMBER_VALUES["AT"] = _multi(st.integers(0, 2**32 - 1))
_BYTES_VALUES: dict[str, st.SearchStrategy[Any]] = {
    vr: st.binary(max_size=9) for vr in ("OB", "OW", "OD", "OF", "OL", "OV", "UN")
}
VALUES = {**_STRING_VALUES, **_NUMBER_VALUES, **_BYTES_VALUES}

# Standard elements, one per VR family (the tag fixes the VR)
STANDARD = {
    0x00080054: "AE",
    0x00101010: "AS",
    0x00080008: "CS",
    0x00080020: "DA",
    0x00281050: "DS",
    0x0008002A: "DT",
    0x00200013: "IS",
    0x00100020: "LO",
    0x00204000: "LT",
    0x00100010: "PN",
    0x00200010: "SH",
    0x00080081: "ST",
    0x00080030: "TM",
    0x0020000D: "UI",
    0x00081190: "UR",
    0x00280010: "US",
    0x00189219: "SS",
    0x00181063: "DS",
}
# Elements whose VR pydicom resolves from other elements (or cannot)
AMBIGUOUS = {
    0x00280106: "US or SS",  # Smallest Image Pixel Value
    0x00280107: "US or SS",  # Largest Image Pixel Value
    0x7FE00010: "OB or OW",  # Pixel Data
    0x00283006: "US or OW",  # LUT Data
}
CHARSETS = [
    None,
    "ISO_IR 100",
    "ISO_IR 192",
    "ISO_IR 6",
    ["", "ISO 2022 IR 87"],
    "GB18030",
    "ISO_IR 144",
    "NOT A CHARSET",
]


# --- datasets as plain descriptions ---------------------------------------------------


@dataclass(frozen=True)
class Elem:
    tag: int
    vr: str
    value: Any
    undefined: bool = False  # sequences only


@dataclass(frozen=True)
class Items:
    """A sequence's items: each a tuple of elements, and its length flag."""

    items: tuple[tuple[tuple[Elem, ...], bool], ...]


@st.composite
def _element(draw: st.DrawFn, private: bool, index: int) -> Elem:
    if private:
        vr = draw(st.sampled_from(sorted(VALUES)))
        return Elem(0x00091000 + index, vr, draw(VALUES[vr]))
    tag = draw(st.sampled_from(sorted(STANDARD)))
    vr = STANDARD[tag]
    return Elem(tag, vr, draw(VALUES[vr]))


def _elements(depth: int) -> st.SearchStrategy[tuple[Elem, ...]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[Elem, ...]:
        out: dict[int, Elem] = {}
        for i in range(draw(st.integers(0, 5))):
            elem = draw(_element(private=draw(st.booleans()), index=i))
            out[elem.tag] = elem
        if out and any(t >> 16 == 0x0009 for t in out):
            out[0x00090010] = Elem(0x00090010, "LO", "AIODICOM HYPOTHESIS")
        if depth > 0 and draw(st.booleans()):
            n = draw(st.integers(0, 2))
            items = tuple((draw(_elements(depth - 1)), draw(st.booleans())) for _ in range(n))
            out[0x0040A730] = Elem(0x0040A730, "SQ", Items(items), draw(st.booleans()))
        return tuple(out[t] for t in sorted(out))

    return build()


@dataclass(frozen=True)
class Case:
    elements: tuple[Elem, ...]
    ambiguous: tuple[Elem, ...]
    charset: Any
    meta: tuple[tuple[str, Any], ...] | None
    preamble: bytes | None
    plain: bool  # a plain Dataset (no original encoding) or one "read" from a file
    original: tuple[bool, bool] | None


@st.composite
def cases(draw: st.DrawFn) -> Case:
    elements = draw(_elements(depth=draw(st.integers(0, 3))))
    ambiguous = []
    for tag, vr in AMBIGUOUS.items():
        if draw(st.booleans()):
            size = draw(st.integers(0, 5)) * 2 + draw(st.sampled_from([0, 0, 1]))
            ambiguous.append(Elem(tag, vr, bytes(range(size))))
    meta: list[tuple[str, Any]] | None = None
    if draw(st.booleans()):
        meta = []
        syntax = draw(
            st.sampled_from(
                [
                    None,
                    ExplicitVRLittleEndian,
                    ImplicitVRLittleEndian,
                    ExplicitVRBigEndian,
                    DeflatedExplicitVRLittleEndian,
                    RLELossless,
                    "1.2.3.4.5",  # private / unknown
                ]
            )
        )
        if syntax is not None:
            meta.append(("TransferSyntaxUID", syntax))
        if draw(st.booleans()):
            meta.append(("MediaStorageSOPClassUID", draw(st.sampled_from([CTImageStorage, ""]))))
        if draw(st.booleans()):
            meta.append(("MediaStorageSOPInstanceUID", "1.2.3.4"))
        if draw(st.booleans()):
            meta.append(("ImplementationVersionName", draw(st.sampled_from(["X" * 17, "AIO"]))))
    return Case(
        elements=elements,
        ambiguous=tuple(ambiguous),
        charset=draw(st.sampled_from(CHARSETS)),
        meta=tuple(meta) if meta is not None else None,
        preamble=draw(st.sampled_from([None, b"\x00" * 128, b"\x01" * 127, b""])),
        plain=draw(st.booleans()),
        original=draw(st.sampled_from([None, (True, True), (False, True), (False, False)])),
    )


def _fill(ds: Dataset, elements: tuple[Elem, ...]) -> None:
    for elem in elements:
        if elem.vr == "SQ":
            items = []
            for item_elems, undefined in elem.value.items:
                item = Dataset()
                _fill(item, item_elems)
                item.is_undefined_length_sequence_item = undefined
                items.append(item)
            ds.add_new(elem.tag, "SQ", Sequence(items))
            ds[elem.tag].is_undefined_length = elem.undefined
        else:
            ds.add_new(elem.tag, elem.vr, elem.value)


def build(case: Case) -> Dataset:
    """A fresh dataset for `case` (built twice: one for each writer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = Dataset()
        if case.charset is not None:
            ds.SpecificCharacterSet = case.charset
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = "1.2.3.4"
        ds.BitsAllocated = 16
        ds.PixelRepresentation = 1
        _fill(ds, case.elements)
        _fill(ds, case.ambiguous)
        if case.meta is not None:
            ds.file_meta = FileMetaDataset()
            for keyword, value in case.meta:
                setattr(ds.file_meta, keyword, value)
        if case.preamble is not None:
            ds.preamble = case.preamble
        if not case.plain and case.original is not None:
            ds._read_implicit, ds._read_little = case.original
            ds._read_charset = "iso8859"
    return ds


OPTIONS = st.fixed_dictionaries(
    {
        "implicit_vr": st.sampled_from([None, True, False]),
        "little_endian": st.sampled_from([None, True, False]),
        "enforce_file_format": st.booleans(),
        "force_encoding": st.booleans(),
    }
)


def _message(exc: Exception) -> str:
    """The message, without the traceback pydicom's ``tag_in_exception`` appends
    (its frames name the writer's own source files, which differ by design)."""
    return str(exc).split("\nTraceback (most recent call last):")[0]


def _outcome_pydicom(case: Case, options: dict[str, Any]) -> tuple[str, Any]:
    out = io.BytesIO(b"prefix")
    out.seek(6)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pydicom.dcmwrite(out, build(case), **options)
    except Exception as exc:
        return "raised", (type(exc), _message(exc))
    return "bytes", out.getvalue()


async def _outcome_aiodicom(case: Case, options: dict[str, Any]) -> tuple[str, Any]:
    out = io.BytesIO(b"prefix")
    out.seek(6)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await aiodicom.dcmwrite(out, build(case), **options)
    except Exception as exc:
        # "or nothing at all": the buffer is rolled back to what it held
        assert out.getvalue() == b"prefix"
        assert out.tell() == 6
        return "raised", (type(exc), _message(exc))
    return "bytes", out.getvalue()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the encoder is loop-agnostic
@SETTINGS
@given(case=cases(), options=OPTIONS)
async def test_same_bytes_or_same_error_as_pydicom(case: Case, options: dict[str, Any]) -> None:
    theirs = _outcome_pydicom(case, options)
    ours = await _outcome_aiodicom(case, options)
    assert ours == theirs


@pytest.mark.parametrize("anyio_backend", ["trio"])
@settings(SETTINGS, max_examples=max(10, EXAMPLES // 4))
@given(case=cases(), options=OPTIONS)
async def test_same_bytes_or_same_error_on_trio(case: Case, options: dict[str, Any]) -> None:
    """A smaller run on trio: the same answers whatever the event loop."""
    assert await _outcome_aiodicom(case, options) == _outcome_pydicom(case, options)


def test_generator_reaches_both_outcomes() -> None:
    """The strategy is not degenerate: it produces writable datasets and rejected
    ones, deep sequences and every kind of option."""
    seen: set[str] = set()

    @settings(SETTINGS, max_examples=150)
    @given(case=cases(), options=OPTIONS)
    def probe(case: Case, options: dict[str, Any]) -> None:
        seen.add(_outcome_pydicom(case, options)[0])
        if any(e.vr == "SQ" for e in case.elements):
            seen.add("sequence")
        if case.ambiguous:
            seen.add("ambiguous")

    probe()
    assert seen >= {"bytes", "raised", "sequence", "ambiguous"}
