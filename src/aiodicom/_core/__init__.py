"""The synchronous core: validate a dataset, then encode it as chunks.  No I/O.

Nothing in this package opens, writes, reads a file or waits (a test checks its
imports); the driver (:mod:`aiodicom._driver`) decides where the work runs and
where the chunks go.
"""

from __future__ import annotations

from .cost import is_light
from .encode import EncodePlan, prepare
from .rules import CHUNK_SIZE, PASSTHROUGH_MIN, VERBATIM_VRS, Chunk

__all__ = [
    "CHUNK_SIZE",
    "PASSTHROUGH_MIN",
    "VERBATIM_VRS",
    "Chunk",
    "EncodePlan",
    "is_light",
    "prepare",
]
