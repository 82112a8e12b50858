"""aiodicom: write DICOM files from async code, without blocking, wherever they belong.

The whole public API is re-exported here (and sinks in :mod:`aiodicom.sinks`,
the Dask scale-out in :mod:`aiodicom.dask`); modules and packages with a leading
underscore are private.  The layers, one direction::

    _core (sync, no I/O) -> _driver (async) -> sinks -> _export -> dask, cli
"""

from __future__ import annotations

from ._checksum import Checksum
from ._core import EncodePlan, prepare
from ._driver import WriteResult, dcmwrite
from ._errors import (
    ChecksumMismatchError,
    DestinationError,
    DicomWebError,
    DuplicateDestinationError,
    NamingError,
    PartitionError,
    RemoteError,
    RetryableError,
    SourceSkipped,
    TemplateError,
    TransformError,
)
from ._export import (
    DEFAULT_TEMPLATE,
    ExportOptions,
    ExportProgress,
    ExportReport,
    ItemResult,
    Status,
    Template,
    export,
)
from ._version import __version__
from .sinks import AsyncSink, AsyncWriter, Sink, Writer

__all__ = [
    "DEFAULT_TEMPLATE",
    "AsyncSink",
    "AsyncWriter",
    "Checksum",
    "ChecksumMismatchError",
    "DestinationError",
    "DicomWebError",
    "DuplicateDestinationError",
    "EncodePlan",
    "ExportOptions",
    "ExportProgress",
    "ExportReport",
    "ItemResult",
    "NamingError",
    "PartitionError",
    "RemoteError",
    "RetryableError",
    "Sink",
    "SourceSkipped",
    "Status",
    "Template",
    "TemplateError",
    "TransformError",
    "WriteResult",
    "Writer",
    "__version__",
    "dcmwrite",
    "export",
    "prepare",
]

# Public names say where users import them from (reprs, pickles, docs), as anyio
# does; the sink protocol keeps aiodicom.sinks, where it is documented.
for _name in __all__:
    _value = globals()[_name]
    if getattr(_value, "__module__", "").startswith("aiodicom._"):
        _value.__module__ = __name__
del _name, _value
