"""The sink protocol: where encoded chunks go, and how a write is committed or undone.

A *sink* names a destination; opening it gives a *writer* for one write.  The
driver calls ``write`` for each chunk, then ``commit`` once; if anything fails or
the write is cancelled it calls ``abort`` instead (and never ``commit``).  A writer
must make ``commit`` the only moment the destination changes visibly, or document
why it cannot (a pipe cannot take bytes back).

There are two flavours, like httpx's sync and async transports:

* :class:`Sink` / :class:`Writer` are synchronous.  The driver calls them from a
  single worker thread, the same thread that encodes, so a chunk goes from the
  encoder to the sink with no hop through the event loop.  Use this for blocking
  I/O (files, sockets, blocking SDKs, in-memory buffers).
* :class:`AsyncSink` / :class:`AsyncWriter` are asynchronous and are awaited in the
  event loop; encoding still happens in a worker thread, with backpressure
  (unless the sink declares ``encode_ahead``, below).

Chunks are ``bytes`` or ``memoryview`` (often slices of the caller's Pixel Data).
A writer may take ``len()`` of a chunk and write it; if it must keep it beyond the
call it must copy it, since the caller may change its buffer after the write.

Optional capabilities
---------------------
A sink may also have any of these attributes; the driver reads them through
:func:`capabilities` (and nothing else: it never tests for concrete sink classes),
so a sink you write can opt into each of them:

``check(*, exist_ok)``
    A pre-flight check, called where :func:`pydicom.dcmwrite` opens its file:
    after the dataset has passed pydicom's checks, before encoding.  Raise what
    :meth:`Sink.open` would raise for the destination itself (it exists and
    `exist_ok` is false, its folder is missing...), creating nothing.  So a bad
    destination is reported before an error in the dataset's encoding, in
    pydicom's order.  Runs wherever the dataset is validated (possibly in the
    event loop): keep it to a few cheap system calls.
``retries``
    How often the driver may start the whole write over after the writer raised
    :class:`~aiodicom.RetryableError` (default 0).
``inline_write_limit``
    Writes of at most this many bytes are cheap enough (a memory copy, no I/O) to
    be done in the event loop instead of a worker thread (default 0: never).
``encode_ahead``
    Whether the driver may encode a dataset before the destination has accepted
    its first chunk (default ``True``).  ``False`` for destinations that may refuse
    the first write (a caller's file object that is closed or read-only): the
    dataset is then encoded only as the chunks are written, so a refused first
    write leaves it exactly as :func:`pydicom.dcmwrite` leaves it.  For an
    :class:`AsyncSink` the default is ``False`` (one chunk encoded ahead of each
    ``write``, in a worker thread: backpressure); ``True`` lets the driver encode a
    light dataset (values in memory, cheap to encode) at once, in the event loop
    or in one worker thread, and await the writer's ``write`` for each chunk
    without a thread hop each (a driver-computed checksum is then computed there
    too).
``checksum``
    The checksum algorithm of this sink's writes (``"crc32c"``, ``"sha256"``,
    ``"md5"`` or ``None``), when the sink decides it; without the attribute,
    :func:`aiodicom.dcmwrite`'s ``checksum=`` decides.

A *writer* may have a ``checksum`` attribute: the :class:`~aiodicom.Checksum` it
computes over exactly the bytes it sends (``None`` if it computes none), complete
after ``commit``.  Writers without it get theirs computed by the driver, over the
chunks it hands them, in the same thread (for an async writer: in the encoding
thread, which is the event loop only for a sink that declares ``encode_ahead``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeGuard, runtime_checkable

from .._checksum import normalize_algorithm
from .._core.rules import Chunk
from .._errors import RetryableError

__all__ = [
    "AsyncSink",
    "AsyncWriter",
    "Capabilities",
    "Chunk",
    "RetryableError",
    "Sink",
    "Writer",
    "capabilities",
]


@runtime_checkable
class Writer(Protocol):
    """One synchronous write in progress.  All methods run in one worker thread."""

    def write(self, chunk: Chunk, /) -> None:
        """Write all of `chunk` (not published until :meth:`commit`)."""

    def commit(self) -> None:
        """Publish what was written.  Called once, after the last chunk."""

    def abort(self) -> None:
        """Undo the write: leave the destination as it was.  Must not raise for
        a write that already failed; called at most once, instead of commit."""


@runtime_checkable
class Sink(Protocol):
    """A destination that is written with blocking calls (see :class:`Writer`)."""

    def open(self, *, exist_ok: bool) -> Writer:
        """Start a write.  With ``exist_ok=False`` the writer's commit must fail
        with :class:`FileExistsError` if the destination exists by then (and may
        fail here already, as a fast path).  Runs in a worker thread."""


@runtime_checkable
class AsyncWriter(Protocol):
    """One asynchronous write in progress.  All methods are awaited in the event loop."""

    async def write(self, chunk: Chunk, /) -> None:
        """Write all of `chunk` (not published until :meth:`commit`)."""

    async def commit(self) -> None:
        """Publish what was written.  Called once, after the last chunk."""

    async def abort(self) -> None:
        """Undo the write.  Called shielded from cancellation, instead of commit."""


@runtime_checkable
class AsyncSink(Protocol):
    """A destination that is written with ``await`` (see :class:`AsyncWriter`)."""

    async def open_async(self, *, exist_ok: bool) -> AsyncWriter:
        """Start a write; the same contract as :meth:`Sink.open`."""


_NO_INLINE: Final = 0


@dataclass(frozen=True)
class Capabilities:
    """What the driver may do with a sink beyond the protocol (see the module
    documentation); read with :func:`capabilities`."""

    check: Callable[..., None] | None
    """The pre-flight check (``check(exist_ok=...)``), or ``None``."""
    retries: int
    """Whole-write retries after a :class:`~aiodicom.RetryableError`."""
    inline_write_limit: int
    """Bytes up to which writing in the event loop is cheap."""
    encode_ahead: bool = True
    """Whether a dataset may be encoded before the first chunk is accepted."""
    declares_checksum: bool = False
    """Whether the sink decides its checksum algorithm (then :attr:`checksum`)."""
    checksum: str | None = None
    """The sink's checksum algorithm, if it declares one."""


def capabilities(sink: Any) -> Capabilities:
    """The optional capabilities `sink` declares, with their defaults."""
    check = getattr(sink, "check", None)
    retries = getattr(sink, "retries", 0)
    limit = getattr(sink, "inline_write_limit", _NO_INLINE)
    declares = hasattr(sink, "checksum")
    return Capabilities(
        check=check if callable(check) else None,
        retries=max(0, int(retries or 0)),
        inline_write_limit=max(0, int(limit or 0)),
        encode_ahead=bool(getattr(sink, "encode_ahead", not _async_only(sink))),
        declares_checksum=declares,
        checksum=normalize_algorithm(getattr(sink, "checksum", None)) if declares else None,
    )


def is_sink(obj: Any) -> TypeGuard[Sink]:
    """``isinstance(obj, Sink)``, without the cost of a protocol check (it walks
    the protocol's classes on every call; this is called for every write)."""
    return getattr(obj, "open", None) is not None


def is_async_sink(obj: Any) -> TypeGuard[AsyncSink]:
    """``isinstance(obj, AsyncSink)``, as :func:`is_sink`."""
    return getattr(obj, "open_async", None) is not None


def _async_only(sink: Any) -> bool:
    """Whether `sink` is an :class:`AsyncSink` and not a :class:`Sink`."""
    return is_async_sink(sink) and not is_sink(sink)
