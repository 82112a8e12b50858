"""How much CPU encoding a dataset will take, estimated without encoding it.

The driver encodes *light* datasets inline, in the event loop: pydicom's encoder
costs about 5-10 µs per element, so a typical image takes the loop 0.3-2.5 ms (its
Pixel Data passes through as a view, whatever its size) and, unlike an encoding
thread, does not make the loop wait for the GIL.  Everything else (big sequences,
long multi-valued elements, deflate, values read lazily from a file or a buffer,
which means I/O) is encoded in a worker thread.
"""

from __future__ import annotations

from typing import Final

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .rules import PASSTHROUGH_MIN, VERBATIM_VRS

__all__ = ["is_light"]

INLINE_BUDGET: Final = 250
"""Cost units (about one element each, 5-10 µs of pydicom's encoder) allowed inline:
a few milliseconds at most, within the loop-latency target (p99 <= 5 ms)."""


def is_light(dataset: Dataset, budget: int = INLINE_BUDGET) -> bool:
    """``True`` if `dataset` is cheap to encode and needs no I/O to read its values."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False
    units = 0
    stack: list[Dataset] = [dataset]
    while stack:
        for elem in stack.pop()._dict.values():
            cost = _cost(elem, stack)
            if cost is None:
                return False
            units += cost
            if units > budget:
                return False
    return True


def _cost(elem: DataElement | RawDataElement, stack: list[Dataset]) -> int | None:
    """Cost units of one element (pushing sequence items on `stack`), or ``None``
    if it cannot be encoded inline at all."""
    value = elem.value
    if isinstance(elem, RawDataElement):
        if value is None:
            return None if elem.length else 1  # deferred read: file I/O
        if len(value) >= PASSTHROUGH_MIN and elem.VR in VERBATIM_VRS:
            return 1
        return 1 + len(value) // 1024  # may need parsing (new encoding or charset)
    if elem.is_buffered:
        return None  # reading a file-like is I/O
    if elem.VR == "SQ":
        stack.extend(item for item in value or () if isinstance(item, Dataset))
        return 1
    if isinstance(value, MultiValue | list | tuple):
        return 1 + len(value) // 4
    if isinstance(value, str):
        return 1 + len(value) // 4096
    if isinstance(value, bytes | bytearray | memoryview):
        size = memoryview(value).nbytes
        if size >= PASSTHROUGH_MIN and elem.VR in VERBATIM_VRS:
            return 1
        return 1 + size // 16384
    return 1
