"""The core's shared rules: what a chunk is, how big chunks are, and which values
pass through the encoder untouched (the one pass-through rule, used by the encoder
and by the cost estimate alike)."""

from __future__ import annotations

from typing import Final

__all__ = ["CHUNK_SIZE", "PASSTHROUGH_MIN", "VERBATIM_VRS", "Chunk"]

Chunk = bytes | memoryview
"""One piece of the encoded file.  Sinks may only take ``len()`` of it and write it."""

CHUNK_SIZE: Final = 4 * 1024 * 1024
"""Small elements are coalesced into chunks of about this size, and large values
are handed on in slices of this size (so cancellation is checked often)."""

PASSTHROUGH_MIN: Final = 64 * 1024
"""Byte values at least this long bypass pydicom's copy and pass through as slices."""

# VRs whose pydicom writer is write_OBvalue / write_OWvalue / write_UN (see
# pydicom.filewriter.writers): the value is written verbatim (plus one pad byte
# when odd), so it may pass through untouched.
VERBATIM_VRS: Final = frozenset(
    {
        "OB",
        "OD",
        "OF",
        "OL",
        "OW",
        "OV",
        "UN",
        "OB or OW",
        "US or OW",
        "US or SS or OW",
        "US or SS",
    }
)
