"""Generators of test datasets, shared by the test modules.

Every function builds a *fresh* dataset on each call, so a test can hand one copy
to :func:`pydicom.dcmwrite` and another to :func:`aiodicom.dcmwrite` and then
compare the side effects of the two writes.  Functions that need a file on disk
(buffered values, deferred reads) take the directory to put it in.

:data:`GENERATED` maps a name to a factory ``(directory) -> Dataset`` for every
small dataset here; the parity tests run each one through the whole option matrix.
"""

from __future__ import annotations

import copy
import functools
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

__all__ = [
    "GENERATED",
    "PYDICOM_FILES",
    "PYDICOM_NOT_INSTANCES",
    "not_an_instance",
    "PYDICOM_ROOT",
    "ambiguous_vr",
    "big_endian",
    "buffered_pixel_data",
    "buffered_variants",
    "by_source_name",
    "bytearray_values",
    "close_buffers",
    "closed_buffer",
    "ct_slice",
    "deep_sequences",
    "deferred_from_file",
    "deflated",
    "deflated_from_file",
    "deflated_views",
    "encapsulated_buffered",
    "encapsulated_multiframe",
    "long_values",
    "memoryview_values",
    "multiframe",
    "noncontiguous_view",
    "implicit_little",
    "no_file_meta",
    "odd_length_ob",
    "private_tags",
    "racer",
    "random_image",
    "raw_from_file",
    "unencapsulated_compressed",
    "variety",
]

_SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1234567890123456789"


def _file_meta(transfer_syntax: UID, sop_class: UID = CTImageStorage) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(_SOP_INSTANCE)
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _file_dataset(
    transfer_syntax: UID, sop_class: UID = CTImageStorage, preamble: bytes | None = None
) -> FileDataset:
    ds = FileDataset(
        "generated",
        Dataset(),
        file_meta=_file_meta(transfer_syntax, sop_class),
        preamble=b"\x00" * 128 if preamble is None else preamble,
    )
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = UID(_SOP_INSTANCE)
    return ds


def _ct_tags(ds: Dataset, rows: int, columns: int, frames: int | None = None) -> None:
    """Realistic CT tags (patient, study, series, image plane, pixel module)."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = "20240131"
    ds.StudyTime = "101530.123456"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "CT"
    ds.Manufacturer = "aiodicom tests"
    ds.ReferringPhysicianName = "Müller^Jürgen"
    ds.PatientName = "Doe^Jane^^Dr."
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.SliceThickness = "1.25"
    ds.KVP = "120"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.StudyID = "S1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 42
    ds.ImagePositionPatient = [-250.0, -250.0, 123.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.SliceLocation = "123.5"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = columns
    ds.PixelSpacing = [0.976562, 0.976562]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"


def ct_slice(rows: int = 512, columns: int = 512) -> FileDataset:
    """A 512x512 uint16 CT slice (0.5 MiB of Pixel Data), Explicit VR Little Endian."""
    ds = _file_dataset(ExplicitVRLittleEndian)
    _ct_tags(ds, rows, columns)
    rng = np.random.default_rng(512)
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype="<u2").tobytes()
    return ds


def multiframe(n_bytes: int, *, odd: bool = False) -> FileDataset:
    """A native multi-frame CT of about `n_bytes` of Pixel Data.

    With ``odd=True`` the Pixel Data is one byte longer than the frames (an
    odd-length value that pydicom pads).  The value is ``bytes`` produced without
    a second copy in memory.
    """
    rows = columns = 256
    frame = rows * columns * 2
    frames = max(1, n_bytes // frame)
    ds = _file_dataset(ExplicitVRLittleEndian)
    _ct_tags(ds, rows, columns, frames)
    pattern = np.arange(frame // 2, dtype="<u2").tobytes()
    data = pattern * frames
    if odd:
        data += b"\x01"
    ds.PixelData = data
    return ds


def deflated(size: int = 64) -> FileDataset:
    """A `size` x `size` CT slice in the Deflated Explicit VR Little Endian
    transfer syntax (from 256 on, the Pixel Data passes through uncopied)."""
    ds = ct_slice(size, size)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def big_endian(size: int = 64) -> FileDataset:
    """A CT slice in Explicit VR Big Endian (Pixel Data byte-swapped by hand)."""
    ds = ct_slice(size, size)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    pixels = np.frombuffer(ds.PixelData, dtype="<u2")
    ds.PixelData = pixels.astype(">u2").tobytes()
    ds.SmallestImagePixelValue = 0  # US or SS: resolved from PixelRepresentation
    ds.LargestImagePixelValue = 4095
    return ds


def _nested(depth: int, undefined: bool) -> Dataset:
    item = Dataset()
    item.CodeValue = f"C{depth}"
    item.CodeMeaning = f"level {depth} ÄÖÜ"
    item.CodingSchemeDesignator = "99TEST"
    item.is_undefined_length_sequence_item = undefined
    if depth:
        child = _nested(depth - 1, not undefined)
        seq = Sequence([child, _nested(0, undefined)])
        item.ConceptCodeSequence = seq
        item["ConceptCodeSequence"].is_undefined_length = undefined
    return item


def deep_sequences(depth: int = 12) -> FileDataset:
    """Sequences nested `depth` deep, alternating defined and undefined lengths."""
    ds = _file_dataset(ExplicitVRLittleEndian, SecondaryCaptureImageStorage)
    ds.PatientName = "Nested^Seq"
    ds.ContentSequence = Sequence([_nested(depth, True), _nested(2, False)])
    ds["ContentSequence"].is_undefined_length = True
    ds.ReferencedImageSequence = Sequence([])  # empty sequence
    empty_item = Dataset()
    ds.ProcedureCodeSequence = Sequence([empty_item])
    return ds


def encapsulated_multiframe(frames: int = 8, frame_size: int = 40_001) -> FileDataset:
    """Encapsulated (RLE Lossless) multi-frame with a Basic Offset Table and odd frames."""
    ds = _file_dataset(RLELossless)
    _ct_tags(ds, 64, 64, frames)
    rng = np.random.default_rng(frames)
    data = [rng.integers(0, 256, size=frame_size + i, dtype="u1").tobytes() for i in range(frames)]
    ds.PixelData = encapsulate(data)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def buffered_pixel_data(
    directory: Path, *, odd: bool = False, n_bytes: int = 300_000
) -> FileDataset:
    """Pixel Data given as an open (buffered) file, as pydicom allows for OB/OW.

    The file is left open: the caller owns it through the dataset.
    """
    path = directory / f"pixels-{'odd' if odd else 'even'}-{n_bytes}.raw"
    rng = np.random.default_rng(n_bytes)
    path.write_bytes(rng.integers(0, 256, size=n_bytes + odd, dtype="u1").tobytes())
    ds = ct_slice(8, 8)
    ds.PixelData = open(path, "rb")  # noqa: SIM115 - the dataset holds it open
    ds["PixelData"].VR = "OB" if odd else "OW"
    return ds


def encapsulated_buffered(directory: Path) -> FileDataset:
    """Encapsulated Pixel Data as an open file (undefined length, checked by peeking)."""
    ds = encapsulated_multiframe(3, 30_000)
    path = directory / "encapsulated.raw"
    path.write_bytes(ds.PixelData)
    ds.PixelData = open(path, "rb")  # noqa: SIM115
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def closed_buffer(directory: Path) -> FileDataset:
    """Pixel Data as a file that has been closed: pydicom raises."""
    ds = buffered_pixel_data(directory, n_bytes=1000)
    ds.PixelData.close()
    return ds


def buffered_variants(directory: Path, *, position: int = 0, n_bytes: int = 1000) -> FileDataset:
    """Pixel Data as an open file positioned at `position` (pydicom writes what
    remains from there), or an empty file with ``n_bytes=0``."""
    ds = buffered_pixel_data(directory, n_bytes=n_bytes)
    ds.PixelData.seek(position)
    return ds


def long_values() -> FileDataset:
    """Values over 64 KiB: short-length VRs (changed to UN in explicit VR, with
    pydicom's warning) next to 32-bit-length ones (UT, OB, OW, UN) that are not.

    A deep copy of one template (building the multi-valued elements is slow).
    """
    return copy.deepcopy(_long_values_template())


@functools.cache
def _long_values_template() -> FileDataset:
    ds = _file_dataset(ExplicitVRLittleEndian, SecondaryCaptureImageStorage)
    ds.PatientName = "Long^Values"
    ds.add_new(0x00204000, "LT", "long text " * 7000)  # LT: 16-bit length
    ds.add_new(0x00091010, "LO", "PRIVATE CREATOR")
    ds.add_new(0x00091011, "LO", ["x" * 63] * 1100)  # multi-valued LO, > 64 KiB
    ds.add_new(0x00091012, "US", list(range(32_800)))  # 65600 bytes of US
    ds.add_new(0x00091013, "UT", "unlimited " * 8000)  # UT: 32-bit length, stays UT
    ds.add_new(0x00091014, "UN", b"\x01\x02" * 40_000)
    ds.add_new(0x00091015, "UN", b"\x03" * 70_001)  # odd UN: never padded
    ds.add_new(0x00091016, "OW", b"\x00\x01" * 50_000)
    ds.add_new(0x00091017, "FD", [0.5] * 8200)  # 65600 bytes of FD
    return ds


def ambiguous_vr(*, bits_allocated: bool = True) -> Dataset:
    """Elements whose VR depends on other elements (US or SS, OB or OW, US or OW).

    A plain :class:`Dataset` (no original encoding), so writing it explicit VR
    resolves them; without BitsAllocated the Pixel Data VR cannot be resolved and
    pydicom raises.
    """
    ds = Dataset()
    ds.file_meta = _file_meta(ExplicitVRLittleEndian, SecondaryCaptureImageStorage)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = UID(_SOP_INSTANCE)
    ds.SamplesPerPixel = 1
    ds.Rows = ds.Columns = 16
    if bits_allocated:
        ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.add_new(0x00280106, "US or SS", b"\x00\x80")  # SmallestImagePixelValue
    ds.add_new(0x00280107, "US or SS", b"\xff\x7f")  # LargestImagePixelValue
    ds.add_new(0x7FE00010, "OB or OW", b"\x01\x00" * 256)
    lut = Dataset()
    lut.LUTDescriptor = [4, 0, 16]
    lut.add_new(0x00283006, "US or OW", b"\x01\x00\x02\x00\x03\x00\x04\x00")
    ds.ModalityLUTSequence = Sequence([lut])
    return ds


def private_tags() -> FileDataset:
    """Private creators and private elements, including a private sequence."""
    ds = ct_slice(16, 16)
    block = ds.private_block(0x0011, "AIODICOM TEST", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "UL", 12345)
    block.add_new(0x03, "OB", b"\x00\x01\x02")
    inner = Dataset()
    inner.add_new(0x00110010, "LO", "AIODICOM TEST")
    inner.add_new(0x00111001, "SH", "inner")
    block.add_new(0x04, "SQ", Sequence([inner]))
    ds.add_new(0x00131010, "UN", b"no creator")  # private element without creator
    return ds


def odd_length_ob() -> FileDataset:
    """Odd-length OB values, small and over 64 KiB (pydicom pads them to even)."""
    ds = ct_slice(16, 16)
    ds.add_new(0x00091010, "LO", "AIODICOM ODD")
    ds.add_new(0x00091011, "OB", b"\x01\x02\x03")
    ds.add_new(0x00091012, "OB", b"\x05" * 100_001)
    ds.add_new(0x7FE00010, "OB", b"\x07" * 65_537)
    return ds


def memoryview_values() -> FileDataset:
    """``memoryview`` values (byte and 16-bit formats) for OB, OW and Pixel Data."""
    ds = ct_slice(16, 16)
    ds.add_new(0x00091010, "LO", "AIODICOM VIEWS")
    ds.add_new(0x00091011, "OB", memoryview(b"\x01" * 70_001))
    words = np.arange(40_000, dtype="<u2")
    ds.add_new(0x00091012, "OW", memoryview(words))  # format 'H', 80 kB
    ds.add_new(0x00091013, "OB", memoryview(b"abc"))
    ds.PixelData = memoryview(bytearray(b"\x02\x01" * 70_000))
    return ds


def bytearray_values() -> FileDataset:
    """A ``bytearray`` value: pydicom turns it into a MultiValue and cannot write it."""
    ds = ct_slice(16, 16)
    ds.add_new(0x00091010, "LO", "AIODICOM BYTEARRAY")
    ds.add_new(0x00091011, "OB", bytearray(b"\x01" * 101))
    return ds


def noncontiguous_view() -> FileDataset:
    """A non-contiguous ``memoryview`` value: pydicom raises ``BufferError``."""
    ds = ct_slice(16, 16)
    ds.add_new(0x00091010, "LO", "AIODICOM STRIDED")
    ds.add_new(0x00091011, "OW", memoryview(np.arange(80_000, dtype="<u2"))[::2])
    return ds


def unencapsulated_compressed() -> FileDataset:
    """A compressed transfer syntax with native Pixel Data: pydicom raises."""
    ds = ct_slice(64, 64)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def deflated_views() -> FileDataset:
    """:func:`memoryview_values` in the deflated transfer syntax (views of 16-bit
    items must be deflated as bytes)."""
    ds = memoryview_values()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


def no_file_meta() -> Dataset:
    """A plain :class:`Dataset`: no ``file_meta``, no ``preamble``."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = UID(_SOP_INSTANCE)
    ds.PatientName = "No^Meta"
    ds.PatientID = "NM1"
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated = 8
    ds.PixelData = bytes(range(16))
    return ds


def implicit_little(size: int = 32) -> FileDataset:
    """A CT slice in Implicit VR Little Endian."""
    ds = ct_slice(size, size)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def variety() -> list[FileDataset]:
    """One small dataset of each main kind: explicit little endian, deflated, big
    endian, deep sequences, encapsulated frames, long values (fresh each call)."""
    return [
        ct_slice(),
        deflated(),
        big_endian(),
        deep_sequences(),
        encapsulated_multiframe(),
        long_values(),
    ]


def random_image(n_bytes: int = 512 * 512 * 2, seed: int = 0) -> Dataset:
    """A minimal image dataset with `n_bytes` of random native Pixel Data (and a
    new SOP Instance UID each call); `seed` picks the pixels and the patient name."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = f"Test^Seed{seed}"
    ds.Columns = 512
    ds.Rows = min(max(1, n_bytes // 1024), 512)
    ds.NumberOfFrames = max(1, n_bytes // (512 * 512 * 2))
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4096, n_bytes // 2, dtype="<u2").tobytes()
    return ds


def racer(i: int, pixels: int = 32 * 1024) -> FileDataset:
    """Racer number `i` of an exclusive-create race: a multi-frame of `pixels`
    bytes whose patient name tells the racers apart (importable by the
    subprocesses of a race across processes)."""
    ds = multiframe(pixels)
    ds.PatientName = f"Racer^{i}"
    return ds


def _write_reference(ds: Dataset, path: Path) -> None:
    ds.save_as(path, enforce_file_format=True)


def raw_from_file(directory: Path, *, implicit: bool = False) -> FileDataset:
    """A dataset read back from a file: its elements are still ``RawDataElement``."""
    path = directory / f"raw-{'implicit' if implicit else 'explicit'}.dcm"
    if not path.exists():
        _write_reference(implicit_little() if implicit else long_values(), path)
    return dcmread(path)


def deferred_from_file(directory: Path, *, implicit: bool = False) -> FileDataset:
    """As :func:`raw_from_file`, with large values deferred (read at write time)."""
    path = directory / f"deferred-{'implicit' if implicit else 'explicit'}.dcm"
    if not path.exists():
        source = implicit_little() if implicit else odd_length_ob()
        _write_reference(source, path)
    return dcmread(path, defer_size=1024)


def deflated_from_file(directory: Path) -> FileDataset:
    """A deflated dataset read back from a file (raw elements, deflate on write)."""
    path = directory / "deflated.dcm"
    if not path.exists():
        _write_reference(deflated(), path)
    return dcmread(path)


def _in_directory(factory: Callable[[], Dataset]) -> Callable[[Path], Dataset]:
    def build(directory: Path) -> Dataset:
        return factory()

    build.__name__ = factory.__name__
    return build


GENERATED: dict[str, Callable[[Path], Dataset]] = {
    "ct_slice": _in_directory(ct_slice),
    "multiframe_odd": lambda d: multiframe(300_000, odd=True),
    "multiframe_even": lambda d: multiframe(300_000),
    "deflated": _in_directory(deflated),
    "deflated_large": lambda d: deflated(256),
    "deflated_views": _in_directory(deflated_views),
    "big_endian_large": lambda d: big_endian(256),
    "implicit_large": lambda d: implicit_little(256),
    "big_endian": _in_directory(big_endian),
    "implicit_little": _in_directory(implicit_little),
    "deep_sequences": _in_directory(deep_sequences),
    "encapsulated_multiframe": _in_directory(encapsulated_multiframe),
    "buffered_pixel_data_even": lambda d: buffered_pixel_data(d),
    "buffered_pixel_data_odd": lambda d: buffered_pixel_data(d, odd=True),
    "buffered_encapsulated": encapsulated_buffered,
    "buffered_closed": closed_buffer,
    "buffered_offset": lambda d: buffered_variants(d, position=101),
    "buffered_empty": lambda d: buffered_variants(d, n_bytes=0),
    "long_values": _in_directory(long_values),
    "ambiguous_vr": _in_directory(ambiguous_vr),
    "ambiguous_vr_unresolvable": lambda d: ambiguous_vr(bits_allocated=False),
    "private_tags": _in_directory(private_tags),
    "odd_length_ob": _in_directory(odd_length_ob),
    "memoryview_values": _in_directory(memoryview_values),
    "bytearray_values": _in_directory(bytearray_values),
    "noncontiguous_view": _in_directory(noncontiguous_view),
    "unencapsulated_compressed": _in_directory(unencapsulated_compressed),
    "no_file_meta": _in_directory(no_file_meta),
    "raw_explicit": raw_from_file,
    "raw_implicit": lambda d: raw_from_file(d, implicit=True),
    "deferred_explicit": deferred_from_file,
    "deferred_implicit": lambda d: deferred_from_file(d, implicit=True),
    "deflated_from_file": deflated_from_file,
}
"""Every small generated dataset, by name: ``factory(directory) -> Dataset``."""


def close_buffers(ds: Dataset) -> None:
    """Close any open file held as a buffered value at the top level of `ds`."""
    for elem in ds._dict.values():
        value = getattr(elem, "value", None)
        if isinstance(value, io.IOBase):
            value.close()


# --- pydicom's own test files, as export sources ---------------------------------------

PYDICOM_FILES = sorted(f for f in get_testdata_files() if os.path.isfile(f))
"""Every file pydicom ships as test data (folders left out)."""
PYDICOM_ROOT = os.path.commonpath(PYDICOM_FILES)
PYDICOM_NOT_INSTANCES = {
    # not DICOM
    "README.txt": "not-dicom",
    "crayons.icc": "not-dicom",
    "dicomdirtests/README.txt": "not-dicom",
    "dicomdirtests/TINY_ALPHA/README": "not-dicom",
    "no_meta.dcm": "not-dicom",  # starts with a stray byte: no data set starts so
    "rtplan.dump": "not-dicom",
    "rtstruct.dump": "not-dicom",
    "test1.json": "not-dicom",
    "test_PN.json": "not-dicom",
    "zipMR.gz": "not-dicom",
    # file-set directories, not instances
    "dicomdirtests/DICOMDIR": "dicomdir",
    "dicomdirtests/DICOMDIR-bigEnd": "dicomdir",
    "dicomdirtests/DICOMDIR-empty.dcm": "dicomdir",
    "dicomdirtests/DICOMDIR-implicit": "dicomdir",
    "dicomdirtests/DICOMDIR-nooffset": "dicomdir",
    "dicomdirtests/DICOMDIR-nopatient": "dicomdir",
    "dicomdirtests/DICOMDIR-reordered": "dicomdir",
    "dicomdirtests/TINY_ALPHA/DICOMDIR": "dicomdir",
}
"""pydicom's test files an export skips (relative to :data:`PYDICOM_ROOT`), and
why (:attr:`aiodicom.SourceSkipped.reason`)."""


def not_an_instance(path: str) -> str | None:
    """Why an export skips pydicom's test file `path`, or ``None``."""
    return PYDICOM_NOT_INSTANCES.get(os.path.relpath(path, PYDICOM_ROOT).replace(os.sep, "/"))


def by_source_name(dataset: Dataset) -> str:
    """An export template naming outputs after their source file under
    :data:`PYDICOM_ROOT` (pydicom's test files share UIDs).  Module-level, so Dask
    workers can import it."""
    return os.path.relpath(dataset.filename, PYDICOM_ROOT).replace(os.sep, "/")
