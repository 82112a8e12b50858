"""aiodicom: write DICOM files from async code, without blocking, wherever they belong.

The public API fits here; everything else is private (leading underscore) or lives
in :mod:`aiodicom.sinks`.
"""

from __future__ import annotations

from ._encode import EncodePlan, prepare
from ._version import __version__
from ._write import dcmwrite
from .export import ExportProgress, ExportReport, ItemResult, Status, export
from .sinks import AsyncSink, AsyncWriter, Sink, Writer

__all__ = [
    "AsyncSink",
    "AsyncWriter",
    "EncodePlan",
    "ExportProgress",
    "ExportReport",
    "ItemResult",
    "Sink",
    "Status",
    "Writer",
    "__version__",
    "dcmwrite",
    "export",
    "prepare",
]
