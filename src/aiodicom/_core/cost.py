"""How much CPU encoding a dataset will take, estimated without encoding it.

The driver encodes *light* datasets inline, in the event loop: pydicom's encoder
costs about 5-10 µs per element, so a typical image takes the loop 0.3-2.5 ms (its
Pixel Data passes through as a view, whatever its size) and, unlike an encoding
thread, does not make the loop wait for the GIL.  Everything else (big sequences,
long multi-valued elements, large values that pydicom copies, deflate, values read
lazily from a file or a buffer, which means I/O) is encoded in a worker thread.

Every value is priced by its size wherever it is: only a large byte value at the
top level of the dataset, of a VR whose value surely passes through the encoder
untouched (see :mod:`aiodicom._core.rules`), is free; the same value in a sequence
item, in the File Meta Information, or of any other type (an ``array.array``, a
NumPy array, a ``str``) is copied by pydicom, once per level of nesting.
"""

from __future__ import annotations

from typing import Any, Final

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from .rules import PASSTHROUGH_MIN, VERBATIM_VRS

__all__ = ["is_light"]

INLINE_BUDGET: Final = 250
"""Cost units (about one element each, 5-10 µs of pydicom's encoder) allowed inline:
a few milliseconds at most, within the loop-latency target (p99 <= 5 ms)."""

BYTES_PER_UNIT: Final = 8 * 1024
"""Bytes of a value pydicom copies per cost unit, at the top level; a value nested
``d`` levels deep costs ``d + 1`` times as much (each level copies it once more).
Measured: 1 MiB of OB in a sequence item takes the encoder about 1 ms."""

_SURE_PASSTHROUGH_VRS: Final = frozenset(
    {vr for vr in VERBATIM_VRS if vr in EXPLICIT_VR_LENGTH_32} | {"OB or OW"}
)
"""VRs of :data:`~aiodicom._core.rules.VERBATIM_VRS` whose large top-level values
pass through under *any* encoding: a 32-bit length in explicit VR, and "OB or OW",
which is resolved to one of the two before writing (or raises).  "US or SS" and the
like may resolve to a numeric VR, whose large values pydicom encodes itself."""


def is_light(dataset: Dataset, budget: int = INLINE_BUDGET) -> bool:
    """``True`` if `dataset` is cheap to encode and needs no I/O to read its values."""
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False
    units = 0
    # (dataset, depth): 0 is the top level; the File Meta Information is copied
    # (deepcopy) and encoded by pydicom, so it is priced like a nested dataset
    stack: list[tuple[Dataset, int]] = [(dataset, 0)]
    if isinstance(meta, Dataset):
        stack.append((meta, 1))
    while stack:
        current, depth = stack.pop()
        for elem in current._dict.values():
            cost = _cost(elem, depth, stack, budget - units)
            if cost is None:
                return False
            units += cost
            if units > budget:
                return False
    return True


def _cost(
    elem: DataElement | RawDataElement,
    depth: int,
    stack: list[tuple[Dataset, int]],
    left: int,
) -> int | None:
    """Cost units of one element (pushing sequence items on `stack`), or ``None``
    if it cannot be encoded inline at all.  `left` is what remains of the budget:
    pricing stops looking once the element is known to cost more."""
    value = elem.value
    if isinstance(elem, RawDataElement):
        if value is None:
            return None if elem.length else 1  # deferred read: file I/O
        if depth == 0 and len(value) >= PASSTHROUGH_MIN and elem.VR in _SURE_PASSTHROUGH_VRS:
            return 1
        # copied, and parsed when the encoding or character set changes
        return 1 + len(value) * (depth + 1) // 1024
    if elem.is_buffered:
        return None  # reading a file-like is I/O
    if elem.VR == "SQ":
        count = len(value or ())
        if 1 + count > left:
            return 1 + count  # too many items: not even worth listing them
        stack.extend((item, depth + 1) for item in value or () if isinstance(item, Dataset))
        return 1 + count  # an item costs an element, even an empty one
    if depth == 0 and elem.VR in _SURE_PASSTHROUGH_VRS and _passes_through(value):
        return 1
    return _value_cost(value, depth, left)


def _passes_through(value: Any) -> bool:
    """As the encoder's pass-through test: a large contiguous bytes-like value."""
    if not isinstance(value, bytes | bytearray | memoryview):
        return False
    view = memoryview(value)
    return view.c_contiguous and view.nbytes >= PASSTHROUGH_MIN


def _value_cost(value: Any, depth: int, left: int) -> int:
    """Units for a value pydicom encodes itself, by its size in bytes or items."""
    if isinstance(value, str):
        return 1 + len(value) * (depth + 1) // BYTES_PER_UNIT
    if value is None or isinstance(value, int | float):
        return 1
    try:
        size = memoryview(value).nbytes  # bytes, bytearray, array.array, ndarray...
    except TypeError:
        pass
    else:
        return 1 + size * (depth + 1) // BYTES_PER_UNIT
    try:
        count = len(value)
    except TypeError:
        return 1
    cost = 1 + count // 4  # MultiValue, list, tuple: a few µs per item
    if cost > left:
        return cost
    for item in value:  # items that are long themselves (strings, bytes)
        cost += _value_cost(item, depth, left - cost) - 1
        if cost > left:
            break
    return cost
