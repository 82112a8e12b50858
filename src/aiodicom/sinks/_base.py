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
  event loop; encoding still happens in a worker thread, with backpressure.

Chunks are ``bytes`` or ``memoryview`` (often slices of the caller's Pixel Data).
A writer may take ``len()`` of a chunk and write it; if it must keep it beyond the
call it must copy it, since the caller may change its buffer after the write.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = ["AsyncSink", "AsyncWriter", "Chunk", "RetryableError", "Sink", "Writer"]

Chunk = bytes | memoryview


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
