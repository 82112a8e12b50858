"""Every exception class of aiodicom, and the one way each built-in error is built.

Errors that mean what a built-in exception means are raised as that built-in
(:class:`FileExistsError`, :class:`FileNotFoundError`, :class:`PermissionError`...),
as :func:`pydicom.dcmwrite` does; the classes here are for what has no built-in.
The public ones are re-exported by :mod:`aiodicom` (and :mod:`aiodicom.sinks`,
:mod:`aiodicom.dask` where they belong).
"""

from __future__ import annotations

import errno
import os
from typing import Any

__all__ = [
    "DestinationError",
    "DicomWebError",
    "ChecksumMismatchError",
    "DuplicateDestinationError",
    "NamingError",
    "PartitionError",
    "RemoteError",
    "RetryableError",
    "SourceSkipped",
    "TemplateError",
    "TransformError",
    "UsageError",
    "exists_error",
]


def exists_error(destination: str) -> FileExistsError:
    """The one :class:`FileExistsError` every sink raises, naming `destination`
    (a path or a URL) as the user gave it."""
    return FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), destination)


class RetryableError(Exception):
    """A writer's way to say "start the whole write over": the failure was transient
    (it outlasted the writer's own per-request retries, or an upload session was
    lost) and nothing was published.

    The driver has already aborted the writer when it sees this; it then encodes
    and writes the dataset again, up to the sink's ``retries`` attribute times (0
    when the sink has none), with exponential backoff.  That is safe because
    nothing partial is ever committed, and always possible because the dataset can
    be encoded again (pydicom puts buffered values back where they were).  When no
    attempt is left, the caller gets this exception's ``__cause__``.
    """


class DicomWebError(OSError):
    """A DICOMweb server did not store an instance, or refused a request.

    Built like any :class:`OSError` (usually with just a message), plus what the
    server said as keyword arguments; all of it survives pickling.

    Attributes
    ----------
    url : str
        The request's URL.
    status_code : int or None
        The HTTP status.
    failure_reason : int or None
        The instance's FailureReason (0008,1197), if the server sent one.
    detail : str
        What the server said (failure details, or the start of the body).
    """

    def __init__(
        self,
        *args: object,
        url: str = "",
        status_code: int | None = None,
        failure_reason: int | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(*args)
        self.url = url
        self.status_code = status_code
        self.failure_reason = failure_reason
        self.detail = detail


class TemplateError(ValueError):
    """The naming template itself is unusable (raised before any work starts)."""


class NamingError(ValueError):
    """One dataset cannot be named by the template (that item fails)."""


class DuplicateDestinationError(FileExistsError):
    """Two items of one export were named the same destination.

    The first one is exported; the later ones fail with this error instead of
    silently overwriting it.
    """


class DestinationError(Exception):
    """The export's destination cannot be written; raised instead of failing item
    after item with the same error.

    Raised by :func:`aiodicom.export` (and :func:`aiodicom.dask.export`) before any
    source is read, when the pre-flight check of the destination fails (the
    bucket or container does not exist, the credentials are refused, the folder
    cannot be written), and during an export that met the same destination error
    for many items in a row (it stops there).  ``__cause__`` is the error met.

    Attributes
    ----------
    report : ExportReport or None
        What the export did before it stopped (``stopped_early`` is set);
        ``None`` when the pre-flight check failed (nothing was read).
    """

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.report))


class SourceSkipped(Exception):
    """Why an item was skipped without being exported: it is not a DICOM instance.

    It is the :attr:`~aiodicom.ItemResult.error` of a ``skipped`` item: a hidden
    file or folder met while searching a folder (``reason="hidden"``), a file that
    is not DICOM (``"not-dicom"``), or a DICOMDIR, a file-set directory rather than
    an instance (``"dicomdir"``).

    Attributes
    ----------
    reason : str
        ``"hidden"``, ``"not-dicom"`` or ``"dicomdir"``.
    """

    def __init__(self, message: str, reason: str = "not-dicom") -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.reason))


class TransformError(Exception):
    """The export's ``transform`` raised for this item (only that item fails).

    The message is ``"transform <name> failed: Type: message"``; in the process
    where it happened, ``__cause__`` is the exception the transform raised.
    """


class PartitionError(RuntimeError):
    """The Dask task exporting this item did not finish.

    Its worker died more often than Dask allows (``KilledWorker``), the cluster
    was restarted, or the task was cancelled.  Nothing half-written is left at
    any destination; items of the partition that were written before the task
    was lost are in place, complete.  Run the export again with
    ``skip_existing=True`` to finish it.
    """


class RemoteError(Exception):
    """Stands for an item's error that could not be sent back from a worker.

    Its message is ``"Type: message"`` of the original exception.
    """


class UsageError(Exception):
    """A bad command-line argument, found before any work (exit status 2)."""


class ChecksumMismatchError(OSError):
    """The bytes a store received differ from the bytes aiodicom checksummed.

    Raised when a store rejects a write because the checksum aiodicom sent does not
    match what it received (S3 ``BadDigest``, Azure ``Crc64Mismatch`` /
    ``Md5Mismatch``, GCS ``400``),
    or when aiodicom finds the mismatch itself (a store's reported checksum, or
    ``export(verify=True)``).  Nothing was published: the write was aborted like
    any other failed write, and an existing object keeps its old content.

    aiodicom never retries it and never starts the write over: the bytes it would
    send again are the same ones, so only corruption on the wire could go away, and
    the transport's own checksums (TCP, TLS) make that rare enough that a mismatch
    is far more likely a fault the user must see (memory, a proxy rewriting bodies).
    Client libraries may resend a rejected request by their own rules (botocore
    resends a ``BadDigest`` request, up to its ``max_attempts``).

    Attributes
    ----------
    destination : str
        Where the write went.
    algorithm : str
        ``"crc32c"``, ``"sha256"`` or ``"md5"``, or ``"crc64nvme"`` (the CRC-64 that
        Azure checks on every request, whatever the reported checksum).
    expected : str
        aiodicom's checksum of what it sent (base64, as the store's APIs use; Azure's
        CRC-64 in the byte order of its ``x-ms-content-crc64`` header).
    actual : str or None
        The store's checksum of what it received, when it said (base64).
    part : int or None
        The part / block number, for a mismatch on one part of a multipart upload.
    """

    def __init__(
        self,
        destination: str,
        algorithm: str,
        expected: str,
        actual: str | None = None,
        *,
        part: int | None = None,
        detail: str = "",
        verifying: bool = False,
    ) -> None:
        self.destination = destination
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual
        self.part = part
        what = f"part {part} of {destination}" if part is not None else destination
        theirs = (
            f"the store's is {actual}"
            if actual is not None
            else "the store did not report its own"
        )
        if verifying:
            message = (
                f"checksum mismatch reading back {what}: aiodicom wrote {algorithm.upper()} "
                f"{expected}, the stored object's is {actual}"
            )
        else:
            message = (
                f"checksum mismatch writing {what}: aiodicom's {algorithm.upper()} is "
                f"{expected}, {theirs}; the write was aborted, nothing was published"
            )
        if detail:
            message += f" ({detail})"
        super().__init__(errno.EIO, message)
        self.filename = destination

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, ...]:
        # by the public class (no private helper in the pickle), then the rest
        arguments = (self.destination, self.algorithm, self.expected, self.actual)
        state = {"part": self.part, "strerror": self.strerror, "args": self.args}
        return (type(self), arguments, state)
