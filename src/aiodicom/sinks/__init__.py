"""Sinks: where encoded DICOM goes.

The protocol (:class:`Sink`, :class:`Writer`, :class:`AsyncSink`,
:class:`AsyncWriter` and the optional capabilities) is in ``_protocol``; what
turns a destination into a sink is :func:`resolve`.  One module per kind of
destination: :mod:`~aiodicom.sinks.local`, :mod:`~aiodicom.sinks.memory`,
:mod:`~aiodicom.sinks.fsspec` (object stores through ``_stores``),
:mod:`~aiodicom.sinks.dicomweb` (DICOMweb STOW-RS).
"""

from __future__ import annotations

from ._protocol import (
    AsyncSink,
    AsyncWriter,
    Capabilities,
    Chunk,
    RetryableError,
    Sink,
    Writer,
    capabilities,
)
from ._resolve import is_url, resolve
from .dicomweb import DicomWeb, DicomWebError, StowResult, StowStatus
from .fsspec import FsspecFile
from .local import LocalFile
from .memory import AsyncFileObject, Bytearray, FileObject

__all__ = [
    "AsyncFileObject",
    "AsyncSink",
    "AsyncWriter",
    "Bytearray",
    "Capabilities",
    "Chunk",
    "DicomWeb",
    "DicomWebError",
    "FileObject",
    "FsspecFile",
    "LocalFile",
    "RetryableError",
    "Sink",
    "StowResult",
    "StowStatus",
    "Writer",
    "capabilities",
    "is_url",
    "resolve",
]

# Public names defined in private modules say where users import them from.
for _name in (
    "AsyncSink",
    "AsyncWriter",
    "Capabilities",
    "Sink",
    "StowResult",
    "StowStatus",
    "Writer",
    "capabilities",
    "is_url",
    "resolve",
):
    globals()[_name].__module__ = __name__
del _name
