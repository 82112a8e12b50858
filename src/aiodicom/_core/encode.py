"""The synchronous core: validate a dataset, then encode it as a stream of chunks.

Sans-I/O in the spirit of h11: nothing here opens, writes or waits.  :func:`prepare`
performs every check that :func:`pydicom.dcmwrite` performs *before* it writes its
first byte, so bad input raises before any destination is touched.  The returned
:class:`EncodePlan` then yields the encoded file as a sequence of chunks (``bytes``
or ``memoryview``) that concatenate to exactly what :func:`pydicom.dcmwrite` writes.

pydicom's own encoder does the work for every element except the few large
byte-valued ones at the top level of the dataset (Pixel Data, typically).  For those
we emit the element header ourselves (a few lines mirroring
:func:`pydicom.filewriter.write_data_element`) and hand on ``memoryview`` slices of
the caller's buffer, untouched: pydicom would copy the value twice.

Buffered values (file-like objects) may be shared: one dataset written to several
destinations at once, or one open file held by several datasets.  Every access to
such a buffer's position happens under a lock of its own (see :func:`_lock_for`),
and its position is put back after each read, so concurrent writes never read
each other's bytes, and the buffer ends where it started, as pydicom leaves it.
"""

from __future__ import annotations

import threading
import weakref
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from copy import deepcopy
from dataclasses import dataclass
from decimal import Decimal
from struct import Struct
from struct import error as StructError
from typing import Any, Final, cast

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.filebase import DicomBytesIO
from pydicom.fileutil import buffer_remaining, reset_buffer_position
from pydicom.filewriter import (
    _determine_encoding,
    _is_multi_value,
    correct_ambiguous_vr,
    write_data_element,
    write_file_meta_info,
)
from pydicom.multival import MultiValue
from pydicom.tag import _LUT_DESCRIPTOR_TAGS, BaseTag, SequenceDelimiterTag, tag_in_exception
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import AMBIGUOUS_VR, EXPLICIT_VR_LENGTH_32, PersonName

from .rules import CHUNK_SIZE, PASSTHROUGH_MIN, VERBATIM_VRS, Chunk

__all__ = ["EncodePlan", "prepare"]

_PIXEL_DATA: Final = 0x7FE00010

ReadDeferred = Callable[[str, "float | None", int, int], "Iterator[Chunk] | None"]
"""``read(path, timestamp, offset, length)``: the `length` bytes at `offset` of the
file a dataset was read from (its modification time then was `timestamp`), as
chunks, or ``None`` if it cannot give them all (pydicom then reads the value).
The caller supplies it: the core reads nothing itself."""
_DEFLATE_SLICE: Final = 1024 * 1024

_TAG = {True: Struct("<HH"), False: Struct(">HH")}
_UL = {True: Struct("<L"), False: Struct(">L")}
_TAG_UL = {True: Struct("<HHL"), False: Struct(">HHL")}
_TAG_VR_US = {True: Struct("<HH2sH"), False: Struct(">HH2sH")}
_TAG_VR_UL = {True: Struct("<HH2s2xL"), False: Struct(">HH2s2xL")}
_DELIMITER = {
    little: _TAG_UL[little].pack(SequenceDelimiterTag >> 16, SequenceDelimiterTag & 0xFFFF, 0)
    for little in (True, False)
}


@dataclass(frozen=True)
class EncodePlan:
    """A validated dataset, ready to be encoded.

    Create one with :func:`prepare`.  :meth:`chunks` may be iterated once.
    """

    dataset: Dataset
    implicit_vr: bool
    little_endian: bool
    head: bytes
    """Preamble, prefix and File Meta Information: everything before the dataset."""
    deflate: bool
    read_deferred: ReadDeferred | None = None
    """How large deferred values are streamed from the file the dataset was read
    from (see :func:`prepare`); ``None``: pydicom reads them, whole."""

    def chunks(self) -> Generator[Chunk, None, None]:
        """Yield the encoded file, in order, as ``bytes`` or ``memoryview`` chunks.

        The head (preamble, prefix, File Meta Information) comes alone, first,
        before anything of the dataset is encoded: pydicom writes it right after
        opening its destination, so a destination that refuses the first write
        (a closed file object) fails before the dataset is touched, in both.
        """
        if self.head:
            yield self.head
        body = _encode_dataset(
            self.dataset, self.implicit_vr, self.little_endian, self.read_deferred
        )
        if self.deflate:
            body = _deflate(body)
        pending = bytearray()
        for chunk in body:
            if len(chunk) >= PASSTHROUGH_MIN:
                if pending:
                    yield bytes(pending)
                    pending.clear()
                yield chunk
            else:
                pending += chunk
                if len(pending) >= CHUNK_SIZE:
                    yield bytes(pending)
                    pending.clear()
        if pending:
            yield bytes(pending)


def prepare(
    dataset: Dataset,
    *,
    implicit_vr: bool | None = None,
    little_endian: bool | None = None,
    enforce_file_format: bool = False,
    force_encoding: bool = False,
    on_open: Callable[[tuple[bool, bool]], None] | None = None,
    read_deferred: ReadDeferred | None = None,
) -> EncodePlan:
    """Validate `dataset` exactly as :func:`pydicom.dcmwrite` does, then plan it.

    Raises the same exceptions, with the same messages, and has the same effects
    on `dataset` (the Pixel Data undefined-length flag) as pydicom, in the same
    order.  `on_open` is called with ``(implicit_vr, little_endian)`` at the point
    where pydicom opens its destination (so a bad destination is reported after a
    bad dataset, as in pydicom); it must not create anything.  Nothing is written.

    The checks of pydicom's ``write_like_original`` and ``**kwargs`` arguments,
    which come first in pydicom, are the caller's (see ``aiodicom._write``).
    """
    # Mirrors pydicom.filewriter.dcmwrite (3.0) up to the point where it opens `fp`.
    cls_name = dataset.__class__.__name__
    bad_tags = [x >> 16 for x in dataset._dict if x >> 16 in (0, 2)]
    if bad_tags:
        if 0 in bad_tags:
            raise ValueError(
                "Command Set elements (0000,eeee) are not allowed when using "
                "dcmwrite(), use write_dataset() instead"
            )
        raise ValueError(
            "File Meta Information Group elements (0002,eeee) must be in a "
            f"FileMetaDataset instance in the '{cls_name}.file_meta' attribute"
        )

    if force_encoding and enforce_file_format:
        raise ValueError("'force_encoding' cannot be used with 'enforce_file_format'")

    file_meta = FileMetaDataset()
    plain_meta = False
    if hasattr(dataset, "file_meta"):
        # pydicom works on a deep copy, which it changes (the group length, and
        # with enforce_file_format the elements it adds).  Plain meta as read from
        # a file is encoded without changing anything: a copy of its element
        # dictionary keeps the caller's elements as they are, for far less.
        plain_meta = _plain_meta(dataset.file_meta)
        if plain_meta:
            # enforce_file_format sets elements' values: each one copied first
            file_meta = _copy_meta(dataset.file_meta, elements=enforce_file_format)
        else:
            file_meta = deepcopy(dataset.file_meta)

    tsyntax: UID | None = file_meta.get("TransferSyntaxUID", None)
    encoding = _determine_encoding(dataset, tsyntax, implicit_vr, little_endian, force_encoding)
    if not force_encoding and encoding == (True, False):
        raise ValueError("Implicit VR and big endian is not a valid encoding combination")

    preamble = getattr(dataset, "preamble", None)
    if preamble and len(preamble) != 128:
        raise ValueError(f"'{cls_name}.preamble' must be 128-bytes long")

    if enforce_file_format:
        if tsyntax is None:
            if encoding == (True, True):
                file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            elif encoding == (False, False):
                file_meta.TransferSyntaxUID = ExplicitVRBigEndian
            tsyntax = file_meta.get("TransferSyntaxUID", None)

        meta_class = file_meta.get("MediaStorageSOPClassUID", None)
        ds_class = dataset.get("SOPClassUID", None)
        if meta_class is None or (ds_class and ds_class != meta_class):
            file_meta.MediaStorageSOPClassUID = ds_class

        meta_instance = file_meta.get("MediaStorageSOPInstanceUID", None)
        ds_instance = dataset.get("SOPInstanceUID", None)
        if meta_instance is None or (ds_instance and ds_instance != meta_instance):
            file_meta.MediaStorageSOPInstanceUID = ds_instance

        validate_file_meta(file_meta, enforce_standard=True)
        if plain_meta and "FileMetaInformationGroupLength" not in file_meta:
            # as write_file_meta_info(enforce_standard=True) adds it, to set it
            file_meta.FileMetaInformationGroupLength = 0
        if not preamble:
            preamble = b"\x00" * 128

    # PS3.5 Annex A.4: encapsulated Pixel Data has undefined length, native does not
    if (
        tsyntax
        and not tsyntax.is_private
        and tsyntax.is_transfer_syntax
        and "PixelData" in dataset
    ):
        raw = dataset._dict.get(BaseTag(_PIXEL_DATA))
        if (
            read_deferred is not None
            and _streamable(dataset, raw)
            and not tsyntax.is_compressed  # a defined length stays defined
        ):
            pass  # the flag pydicom would set changes nothing: no need to read it
        else:
            with _source_lock(dataset):  # a deferred Pixel Data is read here, as in pydicom
                dataset["PixelData"].is_undefined_length = tsyntax.is_compressed

    if on_open is not None:
        on_open(encoding)

    # pydicom encodes the File Meta Information after opening the file; it only
    # raises for invalid meta, so doing it now moves that error before the open.
    head = bytearray()
    if preamble:
        head += preamble
        head += b"DICM"
    if file_meta and plain_meta:
        head += _encode_plain_meta(file_meta)
    elif file_meta:
        meta = DicomBytesIO()
        meta.is_implicit_VR, meta.is_little_endian = encoding
        write_file_meta_info(meta, file_meta, enforce_standard=enforce_file_format)
        head += meta.getvalue()

    return EncodePlan(
        dataset=dataset,
        implicit_vr=encoding[0],
        little_endian=encoding[1],
        head=bytes(head),
        deflate=tsyntax == DeflatedExplicitVRLittleEndian,
        read_deferred=read_deferred,
    )


_GROUP_LENGTH: Final = 0x00020000
_RECODED_VRS: Final = AMBIGUOUS_VR | {"SQ"}
"""VRs that ``correct_ambiguous_vr`` acts on."""


def _plain_meta(file_meta: Any) -> bool:
    """Whether ``write_file_meta_info(fp, file_meta, enforce_standard=False)``
    would change nothing but the group length's value: a ``FileMetaDataset`` of
    group 2 elements only (else pydicom raises), none of them buffered, in its
    own encoding (explicit VR little endian) or else with nothing for pydicom to
    correct or convert (no raw element, sequence or ambiguous VR), whose group
    length, if any, is a 4-byte ``UL`` (so the new one is written over it
    exactly, as pydicom does)."""
    if type(file_meta) is not FileMetaDataset:
        return False
    # Not in its own encoding (built in memory, say), pydicom corrects ambiguous
    # VRs and converts raw elements first: plain if there is nothing to do.
    recoded = (
        file_meta.original_encoding != (False, True)
        or file_meta.original_character_set != file_meta._character_set
    )
    for tag, elem in file_meta._dict.items():
        if tag >> 16 != 2:
            return False
        if recoded and (type(elem) is not DataElement or elem.VR in _RECODED_VRS):
            return False
        if type(elem) is RawDataElement:
            if tag == _GROUP_LENGTH and (elem.VR != "UL" or len(elem.value or b"") != 4):
                return False
        elif type(elem) is DataElement:
            if elem.is_buffered:
                return False
            if tag == _GROUP_LENGTH and (elem.VR != "UL" or type(elem.value) is not int):
                return False
        else:
            return False
    return True


def _copy_meta(file_meta: FileMetaDataset, *, elements: bool = False) -> FileMetaDataset:
    """A copy of plain `file_meta` (see :func:`_plain_meta`) whose element
    dictionary is its own: reading an element converts it in the copy only.
    With `elements`, each ``DataElement`` is copied too (shallowly: values are
    replaced, never changed in place), so that setting a value in the copy
    leaves the caller's element alone (``enforce_file_format`` sets some)."""
    copy = FileMetaDataset.__new__(FileMetaDataset)
    copy.__dict__.update(file_meta.__dict__)
    if elements:
        copy._dict = {
            tag: _copy_element(elem) if type(elem) is DataElement else elem
            for tag, elem in file_meta._dict.items()
        }
    else:
        copy._dict = dict(file_meta._dict)
    return copy


def _copy_element(elem: DataElement) -> DataElement:
    copy = DataElement.__new__(DataElement)
    copy.__dict__.update(elem.__dict__)
    return copy


def _encode_plain_meta(file_meta: FileMetaDataset) -> bytes:
    """``write_file_meta_info(fp, file_meta, enforce_standard=False)``'s bytes
    for plain `file_meta` (see :func:`_plain_meta`), without changing it: the
    elements in tag order, then the group length set to the length after it."""
    parts = []
    for tag in sorted(file_meta._dict, key=int):
        try:  # tag_in_exception, entered only on an error
            elem: DataElement | RawDataElement = file_meta.get_item(tag)
            if type(elem) is RawDataElement:
                encoded = _raw_element(elem, False, True)
            else:
                encoded = _value_element(cast(DataElement, elem), False, True, _DEFAULT_ENCODINGS)
            if encoded is None:
                buffer = _new_buffer((False, True))
                write_data_element(buffer, elem, default_encoding)
                encoded = buffer.getvalue()
            parts.append(encoded)
        except Exception:
            with tag_in_exception(BaseTag(tag)):
                raise
    out = b"".join(parts)
    if _GROUP_LENGTH in file_meta._dict:
        # pydicom sets the value to the length after this 12-byte element and
        # writes the element again over the first one
        out = (
            _TAG_VR_US[True].pack(0x0002, 0x0000, b"UL", 4)
            + _UL[True].pack(len(out) - 12)
            + out[12:]
        )
    return out


def _deflate(body: Iterator[Chunk]) -> Iterator[Chunk]:
    """Deflate `body` as a stream; zlib's output does not depend on how it is split."""
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    total = 0
    for chunk in body:
        view = memoryview(chunk)
        # small slices keep each compressed output (and zlib's buffer) small
        for start in range(0, len(view), _DEFLATE_SLICE):
            out = compressor.compress(view[start : start + _DEFLATE_SLICE])
            if out:
                total += len(out)
                yield out
    out = compressor.flush()
    total += len(out)
    if out:
        yield out
    if total % 2:
        yield b"\x00"


def _encode_dataset(
    dataset: Dataset,
    implicit_vr: bool,
    little_endian: bool,
    read_deferred: ReadDeferred | None = None,
) -> Iterator[Chunk]:
    """Yield the top-level `dataset` encoded like ``pydicom.filewriter.write_dataset``.

    Elements go through pydicom's ``write_data_element`` into a small buffer, except
    large verbatim byte values, which are framed here and handed on uncopied.
    """
    encoding = (implicit_vr, little_endian)
    get_item: Callable[[BaseTag], DataElement | RawDataElement] = dataset.get_item
    # deferred values of a dataset read from a buffer are read back from it
    source = _source_lock(dataset)
    if (
        encoding != dataset.original_encoding
        or dataset.original_character_set != dataset._character_set
    ):
        with source:
            dataset = correct_ambiguous_vr(dataset, little_endian)
        get_item = dataset.__getitem__

    charset = dataset.get("SpecificCharacterSet", default_encoding)
    plain = charset is default_encoding or (type(charset) is str and charset in _PLAIN_CHARSETS)
    encodings = convert_encodings(charset) if plain else []
    buffer = _new_buffer(encoding)
    for tag in sorted(dataset.keys(), key=int):  # BaseTag compares in Python
        if tag.element == 0 and tag.group > 6:
            continue
        try:  # tag_in_exception(tag), entered only on an error (it costs per element)
            raw = dataset._dict.get(tag)
            if read_deferred is not None and get_item == dataset.get_item:
                stream = _stream_deferred(dataset, raw, implicit_vr, little_endian, read_deferred)
                if stream is not None:
                    if buffer.tell():
                        yield buffer.getvalue()
                        buffer = _new_buffer(encoding)
                    yield from stream
                    continue
            if _is_deferred(raw):
                with source:
                    elem = get_item(tag)
            else:
                elem = get_item(tag)
            # small elements the core frames itself, else None
            encoded = None
            if type(elem) is RawDataElement:
                encoded = _raw_element(elem, implicit_vr, little_endian)
            elif plain and type(elem) is DataElement:
                encoded = _value_element(elem, implicit_vr, little_endian, encodings)
            if encoded is not None:
                buffer.write(encoded)
                if buffer.tell() >= CHUNK_SIZE:
                    yield buffer.getvalue()
                    buffer = _new_buffer(encoding)
                continue
            passthrough = _passthrough(elem, implicit_vr, little_endian)
            if passthrough is None:
                # pydicom reads any buffered value in it (nested in a sequence,
                # say): hold their locks for the whole element (no yield inside)
                buffers = _buffers_in(elem)
                if buffers:
                    with _holding(buffers):
                        write_data_element(buffer, elem, charset)
                else:
                    write_data_element(buffer, elem, charset)
                if buffer.tell() >= CHUNK_SIZE:
                    yield buffer.getvalue()
                    buffer = _new_buffer(encoding)
                continue
            if buffer.tell():
                yield buffer.getvalue()
                buffer = _new_buffer(encoding)
            yield from passthrough
        except Exception:
            with tag_in_exception(tag):
                raise

    if buffer.tell():
        yield buffer.getvalue()


def _raw_element(elem: RawDataElement, implicit_vr: bool, little_endian: bool) -> bytes | None:
    """A small raw element framed as ``write_data_element`` frames it (the value
    as it is), or ``None`` for pydicom to do it: anything but the plain cases
    (not ``bytes``; large, for the uncopied pass-through; an ambiguous or
    non-ASCII VR, which pydicom refuses; a 16-bit length it would change to UN or
    cannot hold; an undefined length with a 16-bit VR, or on Pixel Data, which
    pydicom checks first).

    Only for the encoding the element was read with: ``write_data_element``
    writes a raw element's bytes unchanged, and nothing else about it differs.
    """
    value = elem.value
    if type(value) is not bytes or len(value) >= PASSTHROUGH_MIN:
        return None
    tag = elem.tag
    undefined = elem.length == 0xFFFFFFFF
    if undefined and tag == _PIXEL_DATA:
        return None
    length = 0xFFFFFFFF if undefined else len(value)
    vr = elem.VR or ""  # looked at only with an explicit VR
    if not implicit_vr and (len(vr) != 2 or not vr.isascii()):
        return None
    head = _head(tag, vr, length, implicit_vr, little_endian)
    if head is None:
        return None
    if undefined:
        return head + value + _DELIMITER[little_endian]
    return head + value


_PLAIN_CHARSETS: Final = frozenset({"ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
"""Values of *Specific Character Set* with which pydicom's ``write_data_element``
neither warns (``convert_encodings``) nor encodes an ASCII text differently from
ASCII (one encoding, no escape sequences): the ones :func:`_value_element` may
stand in for it with.  With any other value every element goes to pydicom, which
warns (or raises) for each element as it always has."""

_DEFAULT_ENCODINGS: Final = convert_encodings(default_encoding)
_PADDED_STRINGS: Final = {
    **dict.fromkeys(("AE", "AS", "CS", "DA", "DT", "TM", "UR"), b" "),  # write_string
    **dict.fromkeys(("LO", "LT", "SH", "ST", "UC", "UT"), b" "),  # write_text
    "UI": b"\0",  # write_UI
}
_NUMBER_STRINGS: Final = frozenset({"DS", "IS"})  # write_number_string
_NUMBER_TYPES: Final = (int, float, Decimal)
_STR_TYPES: Final = frozenset({str, UID})  # what write_string encodes as it is
_NUMBERS: Final = {
    "FD": "d",
    "FL": "f",
    "SL": "l",
    "SS": "h",
    "SV": "q",
    "UL": "L",
    "US": "H",
    "UV": "Q",
}
_PACK: Final = {
    (little, vr): Struct(("<" if little else ">") + fmt)
    for little in (True, False)
    for vr, fmt in _NUMBERS.items()
}


def _value_element(
    elem: DataElement, implicit_vr: bool, little_endian: bool, encodings: list[str]
) -> bytes | None:
    """A small in-memory element whose value pydicom's writer encodes without
    looking at anything else, framed as ``write_data_element`` frames it; or
    ``None`` for pydicom to do it.

    Covered: ASCII ``str`` (and ``UID``) values, single or multi-valued, of the
    string and text VRs; ``PersonName`` values (encoded by themselves with
    `encodings`, as pydicom has them do); DS/IS numbers (their
    ``original_string`` or ``str()``, as pydicom writes them); ``int`` and
    ``float`` values of the binary number VRs.  Those are the elements of a
    typical dataset built in memory, which pydicom's general writer encodes at
    some microseconds each.  Anything else (dates, sequences, bytes, non-ASCII
    text, empty or undefined lengths, a 16-bit length it would overflow, a value
    ``struct`` refuses) is left to pydicom, with its own errors and warnings.
    Only for a dataset whose character set is in :data:`_PLAIN_CHARSETS`.
    """
    vr = elem.VR
    value = elem._value
    if value is None or elem.is_undefined_length:
        return None
    multi = _is_multi_value(value)
    out: bytes
    if vr in _PADDED_STRINGS:
        if multi:  # a list, a MultiValue, a tuple, a NumPy array
            if len(value) == 0 or not all(type(v) in _STR_TYPES for v in value):
                return None
            text = "\\".join(value)
        elif type(value) in _STR_TYPES and value:
            text = value
        else:
            return None
        if not text.isascii():
            return None
        out = text.encode("ascii")
        if len(out) % 2:
            out += _PADDED_STRINGS[vr]
    elif vr == "PN":
        # write_PN: each PersonName encodes itself (and keeps the result), with
        # the encodings pydicom converts the character set to
        if multi:
            # one value in a list: write_PN takes the list for the name and fails
            if len(value) < 2 or not all(type(v) is PersonName for v in value):
                return None
            out = b"\\".join([v.encode(encodings) for v in value])
        elif type(value) is PersonName and value:
            out = value.encode(encodings)
        else:
            return None
        if len(out) % 2:
            out += b" "
    elif vr in _NUMBER_STRINGS:
        # the numbers pydicom converts DS and IS values to (not iterable: one
        # value), or a list of them
        if multi:
            if len(value) == 0 or not all(isinstance(v, _NUMBER_TYPES) for v in value):
                return None
            text = "\\".join(
                v.original_string if hasattr(v, "original_string") else str(v) for v in value
            )
        elif isinstance(value, _NUMBER_TYPES):
            text = value.original_string if hasattr(value, "original_string") else str(value)
        else:
            return None
        if type(text) is not str or not text.isascii():
            return None
        out = text.encode("ascii")
        if len(out) % 2:
            out += b" "
    elif vr in _NUMBERS:
        pack = _PACK[little_endian, vr]
        try:
            if type(value) is int or type(value) is float:
                out = pack.pack(value)
            elif type(value) is MultiValue or type(value) is list:
                if len(value) == 0 or (vr == "SS" and elem.tag in _LUT_DESCRIPTOR_TAGS):
                    return None
                if not all(type(v) is int or type(v) is float for v in value):
                    return None
                out = b"".join([pack.pack(v) for v in value])
            else:
                return None
        except (StructError, OverflowError):
            return None  # pydicom raises its own error for it
    else:
        return None
    head = _head(elem.tag, vr, len(out), implicit_vr, little_endian)
    return None if head is None else head + out


def _head(tag: int, vr: str, length: int, implicit_vr: bool, little_endian: bool) -> bytes | None:
    """The header ``write_data_element`` writes before a value of `length` bytes
    (``0xFFFFFFFF``: undefined), or ``None`` where a 16-bit length cannot hold it
    (pydicom then changes the VR to UN, with a warning, or refuses)."""
    if implicit_vr:
        return _TAG_UL[little_endian].pack(tag >> 16, tag & 0xFFFF, length)
    if vr in EXPLICIT_VR_LENGTH_32:
        return _TAG_VR_UL[little_endian].pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    if length > 0xFFFF:
        return None
    return _TAG_VR_US[little_endian].pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _new_buffer(encoding: tuple[bool, bool]) -> DicomBytesIO:
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = encoding
    return buffer


def _slices(view: memoryview) -> Iterator[memoryview]:
    for start in range(0, len(view), CHUNK_SIZE):
        yield view[start : start + CHUNK_SIZE]


def _passthrough(
    elem: DataElement | RawDataElement, implicit_vr: bool, little_endian: bool
) -> Iterator[Chunk] | None:
    """Return the chunks of a large verbatim element, or ``None`` to let pydicom do it.

    Only cases where ``write_data_element`` writes the value verbatim qualify, and
    only where the header can be derived without any of its special cases (VR
    change to UN, ambiguous VR error, 16-bit explicit length).
    """
    vr = elem.VR or ""  # a raw element read as implicit VR has none
    if not implicit_vr and vr not in EXPLICIT_VR_LENGTH_32:
        return None  # 16-bit length, VR change to UN or ambiguous VR: pydicom's job

    if isinstance(elem, RawDataElement):
        # pydicom writes a raw value as it is, whatever its VR: no padding.
        value = elem.value
        if not isinstance(value, bytes | bytearray) or len(value) < PASSTHROUGH_MIN:
            return None
        view = memoryview(value)
        length = len(view)
        undefined = elem.length == 0xFFFFFFFF
        pad = False
    elif vr not in VERBATIM_VRS:
        return None
    elif elem.is_buffered:
        if vr == "UN":
            return None
        # pydicom's write_data_element looks at `is_empty` first, which checks the
        # buffer and raises "Invalid buffer for ..." (closed, unseekable...)
        with _lock_for(elem.value):
            elem.is_empty  # noqa: B018
        return _buffered(elem, implicit_vr, little_endian)
    else:
        value = elem.value
        if not isinstance(value, bytes | bytearray | memoryview) or elem.is_empty:
            return None
        view = memoryview(value)
        if not view.c_contiguous:
            return None
        view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if view.nbytes < PASSTHROUGH_MIN:
            return None
        pad = view.nbytes % 2 == 1 and vr != "UN"
        length = view.nbytes + pad
        undefined = elem.is_undefined_length

    if undefined and elem.tag == _PIXEL_DATA:
        _check_encapsulated(value[:4], little_endian)

    def chunks() -> Iterator[Chunk]:
        yield _header(elem.tag, vr, length, undefined, implicit_vr, little_endian)
        yield from _slices(view)
        yield _trailer(pad, undefined, little_endian)

    return chunks()


def _buffered(elem: DataElement, implicit_vr: bool, little_endian: bool) -> Iterator[Chunk]:
    """Stream a buffered (file-like) value the way pydicom writes one.

    pydicom puts the *unpadded* remaining length in the header and still appends a
    pad byte after an odd-length value; we reproduce that byte for byte.

    Each read is made at an absolute offset under the buffer's lock, and the
    position is put back at once: other writes of the same buffer, running at the
    same time, neither see nor disturb it, and the buffer ends where it started
    (as pydicom leaves it after a write), also when the write fails or stops.
    """
    buffer = elem.value
    lock = _lock_for(buffer)
    undefined = elem.is_undefined_length
    with lock:
        first = b""
        if undefined and elem.tag == _PIXEL_DATA:
            with reset_buffer_position(buffer):
                first = buffer.read(4)
        start = buffer.tell()
        length = buffer_remaining(buffer)
    if undefined and elem.tag == _PIXEL_DATA:
        _check_encapsulated(first, little_endian)
    yield _header(elem.tag, elem.VR, length, undefined, implicit_vr, little_endian)
    offset = start
    while True:
        with lock:
            try:
                buffer.seek(offset)
                chunk = buffer.read(CHUNK_SIZE)
            except BaseException:
                _seek_quietly(buffer, start)
                raise
            buffer.seek(start)
        if not chunk:
            break
        offset += len(chunk)
        yield chunk
    yield _trailer((offset - start) % 2 == 1, undefined, little_endian)


def _seek_quietly(buffer: Any, position: int) -> None:
    """Put `buffer` back at `position` if it still can be (its own error wins)."""
    with suppress(Exception):  # closed or broken: the read's error is what matters
        buffer.seek(position)


_LOCKS_GUARD: Final = threading.Lock()
_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_SHARED_LOCK: Final = threading.RLock()


def _lock_for(buffer: Any) -> threading.RLock:
    """The lock that guards `buffer`'s position, one per buffer object for as long
    as it lives (one shared lock for objects that cannot be weakly referenced)."""
    with _LOCKS_GUARD:
        try:
            lock = _LOCKS.get(buffer)
            if lock is None:
                lock = _LOCKS[buffer] = threading.RLock()
        except TypeError:  # unhashable, or no weak references
            return _SHARED_LOCK
        return lock


@contextmanager
def _holding(buffers: Iterable[Any]) -> Iterator[None]:
    """Hold the locks of all `buffers`, taken in one global order (no deadlock
    between two writes that need the same locks)."""
    locks = {id(lock): lock for lock in map(_lock_for, buffers)}
    with ExitStack() as stack:
        for key in sorted(locks):
            stack.enter_context(locks[key])
        yield


def _buffers_in(elem: DataElement | RawDataElement) -> list[Any]:
    """The buffered values pydicom would read to write `elem` (in its sequences)."""
    found: list[Any] = []
    if isinstance(elem, RawDataElement):
        return found
    if elem.is_buffered:
        found.append(elem.value)
    elif elem.VR == "SQ":
        stack = [item for item in elem.value or () if isinstance(item, Dataset)]
        while stack:
            for inner in stack.pop()._dict.values():
                if isinstance(inner, RawDataElement):
                    continue
                if inner.is_buffered:
                    found.append(inner.value)
                elif inner.VR == "SQ":
                    stack.extend(i for i in inner.value or () if isinstance(i, Dataset))
    return found


def _is_deferred(elem: DataElement | RawDataElement | None) -> bool:
    return isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0


def _streamable(dataset: Dataset, raw: DataElement | RawDataElement | None) -> bool:
    """Whether `raw` is a large deferred value of a dataset read from a file path,
    which the caller's reader can stream: defined length, pass-through size."""
    return (
        isinstance(raw, RawDataElement)
        and raw.value is None
        and raw.length != 0xFFFFFFFF
        and raw.length >= PASSTHROUGH_MIN
        and isinstance(getattr(dataset, "filename", None), str)
    )


def _stream_deferred(
    dataset: Dataset,
    raw: DataElement | RawDataElement | None,
    implicit_vr: bool,
    little_endian: bool,
    read_deferred: ReadDeferred,
) -> Iterator[Chunk] | None:
    """The chunks of a deferred raw value, streamed from its file: the header
    pydicom writes for a raw element (its value as it is, no padding), then the
    value's bytes as `read_deferred` hands them on.  ``None`` if pydicom must
    read it (too small, undefined length, a VR whose header it rewrites)."""
    if not _streamable(dataset, raw):
        return None
    assert isinstance(raw, RawDataElement)
    vr = raw.VR or ""
    if not implicit_vr and vr not in EXPLICIT_VR_LENGTH_32:
        return None  # 16-bit length, VR change to UN or ambiguous VR: pydicom's job
    if raw.tag == _PIXEL_DATA and raw.length == 0xFFFFFFFF:
        return None
    filename, timestamp = dataset.filename, getattr(dataset, "timestamp", None)
    assert isinstance(filename, str)
    value = read_deferred(filename, timestamp, raw.value_tell, raw.length)
    if value is None:
        return None

    def chunks() -> Iterator[Chunk]:
        yield _header(raw.tag, vr, raw.length, False, implicit_vr, little_endian)
        yield from value

    return chunks()


def _source_lock(dataset: Dataset) -> Any:
    """The lock of the buffer `dataset` was read from, where pydicom reads its
    deferred values back (seeking it), or a no-op context when it reopens a path.

    Mirrors ``pydicom.dataset.Dataset.__getitem__``: the source is the open buffer
    if there is one (``dcmread`` of a file object), else the file name."""
    filename = getattr(dataset, "filename", None)
    buffer = getattr(dataset, "buffer", None)
    source = filename or buffer
    if filename and buffer and not getattr(buffer, "closed", False):
        source = buffer
    if source is None or isinstance(source, str | bytes) or hasattr(source, "__fspath__"):
        return nullcontext()
    return _lock_for(source)


def _check_encapsulated(first: Any, little_endian: bool) -> None:
    # Same test and message as pydicom's write_data_element (see pydicom #238).
    tag = b"\xfe\xff\x00\xe0" if little_endian else b"\xff\xfe\xe0\x00"
    if not first.startswith(tag):
        raise ValueError(
            "The (7FE0,0010) 'Pixel Data' element value hasn't been "
            "encapsulated as required for a compressed transfer syntax - "
            "see pydicom.encaps.encapsulate() for more information"
        )


def _header(
    tag: int, vr: str, length: int, undefined: bool, implicit_vr: bool, little_endian: bool
) -> bytes:
    """Tag, VR and 32-bit length of an element, as ``write_data_element`` frames it."""
    out = _TAG[little_endian].pack(tag >> 16, tag & 0xFFFF)
    if not implicit_vr:
        out += vr.encode(default_encoding) + b"\x00\x00"
    return out + _UL[little_endian].pack(0xFFFFFFFF if undefined else length)


def _trailer(pad: bool, undefined: bool, little_endian: bool) -> bytes:
    out = b"\x00" if pad else b""
    if undefined:
        out += _TAG[little_endian].pack(
            SequenceDelimiterTag >> 16, SequenceDelimiterTag & 0xFFFF
        ) + _UL[little_endian].pack(0)
    return out
