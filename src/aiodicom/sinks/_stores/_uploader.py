"""Streaming upload to object stores: parts, pipelining, retries, exclusive create.

One :class:`PartWriter` drives any object store through a small :class:`Store`
adapter (``_s3``, ``_gcs``, ``_azure``).  The writer is called from one worker
thread; the store's coroutines run on the fsspec filesystem's own event loop
(``fs.loop``), so this works the same under asyncio and trio.
:class:`AsyncPartWriter` is the same writer awaited from an event loop (bulk
export): an object sent in one request costs one trip to ``fs.loop`` and back,
and no worker thread.

* Chunks are copied into a part buffer of ``part_size`` bytes.  A full part is
  handed to the loop for upload and a new buffer is started, so encoding goes on
  while the part travels.  At most ``concurrency`` parts are in flight: memory stays
  near ``(2 * concurrency + 1) * part_size`` (the HTTP client copies a part once as
  it sends it) whatever the object's size.
* An object that fits in one part is sent in one request (``put``), with the
  store's exclusive-create precondition when ``exist_ok`` is false.  A larger
  object starts a multipart / resumable / block upload; before it starts, an
  exclusive write checks that the object does not exist yet (a doomed 1 GiB upload
  fails after one part is encoded, not after the upload).  The precondition on the
  final request keeps it correct under races.
* Each request is retried on transient errors (connection errors, 5xx, throttling)
  with exponential backoff and jitter, on top of the client library's own retries;
  a part is kept until its upload succeeded, so retrying it is safe.  Permanent
  errors (403, missing bucket, precondition failed) are not retried.
* ``abort`` cancels parts in flight and discards the upload session (S3 abort, GCS
  session DELETE, Azure: the uncommitted blob deleted when no committed one exists).
* Integrity: each part is checksummed in its buffer once it is full, while the
  previous part is still travelling (no second pass over the data, no copy); the
  ``bytes`` object handed to the HTTP client is then copied from that buffer, so
  what the store checks against our checksum includes that copy.  The store
  sends what it can check: per part (S3 ``x-amz-checksum-*`` / ``Content-MD5``,
  Azure ``x-ms-content-crc64``, or ``Content-MD5`` without ``anycrc``) and for
  the whole object (S3 full-object CRC32C or composite SHA-256 at completion, GCS
  ``crc32c`` / ``md5Hash``, Azure's blob MD5 with ``checksum="md5"``).  A store
  that finds a mismatch
  rejects the request; the store adapter raises
  :class:`~aiodicom.ChecksumMismatchError`, which is never retried, and the
  driver aborts the upload as for any other failure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sys
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from ..._checksum import Algorithm, Checksum, StoreAlgorithm
from ..._core.rules import Chunk
from ..._errors import ChecksumMismatchError, RetryableError, exists_error
from ..._retry import RetryPolicy

__all__ = [
    "AsyncPartWriter",
    "Checksums",
    "Options",
    "PartWriter",
    "Store",
    "StoreBase",
    "probe",
]

Checksums = dict[str, Checksum]
"""Checksums of one part or of the whole object, by algorithm."""

logger = logging.getLogger("aiodicom")

T = TypeVar("T")

# Transient for every store; each store adds its client's own (5xx, throttling...).
_TRANSIENT: Final = (ConnectionError, TimeoutError, asyncio.TimeoutError)


class Options:
    """Upload settings shared by all object stores (see :class:`~aiodicom.sinks.FsspecFile`)."""

    __slots__ = (
        "checksum",
        "concurrency",
        "content_type",
        "metadata",
        "part_size",
        "retries",
        "upload_args",
    )

    def __init__(
        self,
        *,
        part_size: int,
        concurrency: int,
        retries: int,
        content_type: str,
        metadata: dict[str, str],
        upload_args: dict[str, Any],
        checksum: Algorithm | None = "crc32c",
    ) -> None:
        self.part_size = part_size
        self.concurrency = concurrency
        self.retries = retries
        self.content_type = content_type
        self.metadata = metadata
        self.upload_args = upload_args
        self.checksum = checksum


class Store(Protocol):
    """One object being written to one store.  Coroutines run on the store's loop.

    They raise the client library's own errors; :meth:`translate` is the one
    place that turns those into ours (``FileExistsError`` for a failed exclusive
    precondition, ``FileNotFoundError`` for a missing bucket...), applied by the
    writer to every request that fails for good.  The exception: a store that
    rejects a checksum makes the adapter raise
    :class:`~aiodicom.ChecksumMismatchError` itself (only it knows which checksum
    it sent), which the writer never retries.

    Checksums: :meth:`checksums` says which algorithms the store sends for a
    part and for the whole object; the writer computes them and passes them as
    ``sums`` (one part's) and ``whole`` (the whole object's, complete only at
    :meth:`put` and :meth:`complete`).
    """

    loop: asyncio.AbstractEventLoop
    part_size_multiple: int  # parts must be a multiple of this (GCS: 256 KiB)
    min_part_size: int
    ordered: bool  # parts must be sent one at a time, in order (GCS)

    async def prepare(self) -> None:
        """Connect (create sessions, clients); called once before anything else."""

    async def exists(self) -> bool:
        """Whether the object exists now (the cheap fast-path check)."""

    def checksums(
        self, algorithm: Algorithm | None
    ) -> tuple[StoreAlgorithm | None, tuple[Algorithm, ...]]:
        """The algorithms sent for the user's `algorithm` (``None``: none at all):
        one per part (or ``None``) and those of the whole object."""

    async def put(self, data: bytes, exclusive: bool, whole: Checksums) -> None:
        """Upload the whole object in one request."""

    async def start(self, exclusive: bool) -> None:
        """Start a multipart / resumable / block upload."""

    async def upload_part(self, number: int, offset: int, data: bytes, sums: Checksums) -> Any:
        """Upload part `number` (1-based) at byte `offset`; return what complete needs."""

    async def complete(
        self,
        parts: list[Any],
        offset: int,
        last: bytes,
        exclusive: bool,
        sums: Checksums,
        whole: Checksums,
    ) -> None:
        """Upload the `last` part (checksums `sums`) and publish the object."""

    async def cancel(self) -> None:
        """Discard the upload started by :meth:`start`, if any."""

    async def probe(self) -> None:
        """Check that the object could be written, leaving nothing behind."""

    def is_transient(self, exc: BaseException) -> bool:
        """Whether retrying the request that raised `exc` may succeed (besides
        connection errors and timeouts, which always are)."""

    def is_session_lost(self, exc: BaseException) -> bool:
        """Whether `exc` says the upload session is gone (the object can only be
        written by starting over)."""

    def translate(self, exc: Exception) -> Exception:
        """The exception to show the user for `exc` (itself if nothing fits)."""

    def invalidate(self) -> None:
        """Forget cached listings of the object's directory (after commit)."""


class StoreBase:
    """What every store adapter keeps: its filesystem and loop, the object's path,
    bucket (or container) and key, the URL it is reported under, and the options."""

    def __init__(self, fs: Any, path: str, url: str, options: Options) -> None:
        self.fs = fs
        self.loop: asyncio.AbstractEventLoop = fs.loop
        self.path = path
        self.url = url
        self.bucket, self.key, version = fs.split_path(path)
        if version is not None or f"{self.bucket}/{self.key}" != path.strip("/"):
            # s3fs reads "key?versionId=1" as object "key", version "1"; adlfs the same
            # with "?versionid=": writing there would overwrite another object
            raise ValueError(
                f"cannot write {url!r}: the store's client reads it as object "
                f"{self.key!r} in {self.bucket!r}" + (f", version {version!r}" if version else "")
            )
        self.options = options

    def invalidate(self) -> None:
        """Forget cached listings of the object's directory (after commit)."""
        self.fs.invalidate_cache(self.path)


def probe(store: Store, url: str, options: Options) -> None:
    """Run ``store.probe()`` (after ``prepare``) with the writer's retries and
    error translation (blocking)."""
    writer = PartWriter(store, url, True, options)
    writer._call(store.probe)


class PartWriter:
    """A :class:`~aiodicom.sinks.Writer` streaming to a :class:`Store`."""

    def __init__(self, store: Store, url: str, exist_ok: bool, options: Options) -> None:
        self._store = store
        self._url = url
        self._exclusive = not exist_ok
        self._options = options
        size = max(options.part_size, store.min_part_size)
        multiple = store.part_size_multiple
        self._part_size = -(-size // multiple) * multiple
        self._concurrency = 1 if store.ordered else max(1, options.concurrency)
        self._buffer = bytearray()
        self._offset = 0  # bytes handed to parts so far
        self._parts: list[Any] = []
        self._pending: deque[concurrent.futures.Future[Any]] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._finished = False
        algorithm = options.checksum
        self._part_algorithm, whole = store.checksums(algorithm)
        names = {*whole, *((algorithm,) if algorithm else ())}
        # the whole object's checksums; a CRC32C that is also sent per part is
        # combined from the parts' instead of computed twice
        self._whole: Checksums = {name: Checksum(name) for name in sorted(names)}
        self.checksum: Checksum | None = self._whole[algorithm] if algorithm else None
        """The checksum of the object (the user's algorithm), complete after commit."""
        # connecting (``store.prepare``) is done by the first request, in the same
        # trip to the store's loop: an object sent in one request costs one trip
        self._prepared = False

    # -- Writer protocol (worker thread) ------------------------------------------

    def write(self, chunk: Chunk, /) -> None:
        view = memoryview(chunk).cast("B")
        part_size = self._part_size
        while view:
            if len(self._buffer) >= part_size:
                self._send_part()
            take = part_size - len(self._buffer)
            self._buffer += view[:take]
            view = view[take:]

    def commit(self) -> None:
        if not self._started:  # one request: its checksums are the object's
            data = bytes(self._buffer)
            self._buffer = bytearray()
            self._run(self.put_coroutine(data))
            self._committed()
            return
        store, last = self._store, bytes(self._buffer)
        self._buffer = bytearray()
        sums = self._checksum(last, part=True)
        while self._pending:
            self._parts.append(self._pending.popleft().result())
        self._call(
            store.complete, self._parts, self._offset, last, self._exclusive, sums, self._whole
        )
        self._committed()

    @property
    def one_request(self) -> bool:
        """Whether the object is still to be sent in one request (no part was sent)."""
        return not self._started

    def fits(self, size: int) -> bool:
        """Whether an object of `size` bytes, with nothing written here yet, is
        sent in one request."""
        return not self._started and not self._buffer and size <= self._part_size

    def put_coroutine(self, data: bytes) -> Coroutine[Any, Any, None]:
        """The request that sends `data` as the whole object (nothing may have been
        written here), checksummed now, for the store's loop; then
        :meth:`committed`."""
        sums = self._checksum(data, part=False)
        return self._retrying(self._store.put, data, self._exclusive, {**sums, **self._whole})

    def committed(self) -> None:
        """The object is published."""
        self._committed()

    def _committed(self) -> None:
        self._finished = True
        self._store.invalidate()

    def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._buffer = bytearray()
        if self._pending or self._tasks:  # parts in flight (none for a single request)
            try:
                self._run(self._cancel_in_flight())
            except Exception:
                logger.exception("aiodicom: cancelling part uploads to %s failed", self._url)
        if self._started:
            try:
                self._call(self._store.cancel)
            except Exception:
                logger.exception("aiodicom: discarding the upload to %s failed", self._url)

    # -- internals ----------------------------------------------------------------

    def _send_part(self) -> None:
        store = self._store
        if not self._started:
            if self._exclusive and self._call(store.exists):
                raise exists_error(self._url)
            self._call(store.start, self._exclusive)
            self._started = True
        # checksummed in place before waiting for a free slot, so the hashes run
        # while the previous part travels (hashlib releases the GIL); the bytes
        # sent are copied from this buffer afterwards, a copy the store's check
        # then covers too
        sums = self._checksum(self._buffer)
        while len(self._pending) >= self._concurrency:
            self._parts.append(self._pending.popleft().result())
        # bytes, not the bytearray: HTTP clients slice a bytearray body (a copy)
        data = bytes(self._buffer)
        self._buffer = bytearray()
        number = len(self._parts) + len(self._pending) + 1
        coro = self._tracked(self._retrying(store.upload_part, number, self._offset, data, sums))
        self._offset += len(data)
        self._pending.append(asyncio.run_coroutine_threadsafe(coro, store.loop))

    def _checksum(self, data: bytes | bytearray, *, part: bool = True) -> Checksums:
        """Checksum `data`, the part about to be sent (in place: no copy), for the
        part and for the whole object; return the part's checksums.  For a
        single-request upload (`part` false) the part's algorithm is computed only
        where the whole object's checksums lack it (Azure's MD5 when the user
        chose another)."""
        sums: Checksums = {}
        algorithm = self._part_algorithm
        if algorithm is not None and (part or algorithm not in self._whole):
            sums[algorithm] = Checksum(algorithm)
            sums[algorithm].update(data)
        for name, whole in self._whole.items():
            if name == algorithm == "crc32c" and name in sums:
                whole.extend(sums[name])  # CRC32C combines: no second computation
            else:
                whole.update(data)
        return sums

    def _call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the store's loop with retries; wait for it."""
        return self._run(self._retrying(func, *args))

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._store.loop).result()

    async def _retrying(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await func(*args)``, retried on transient errors; errors that stay are
        translated once, here, by the store."""
        store = self._store
        attempts = RetryPolicy(self._options.retries).start()
        name = getattr(func, "__name__", "request")
        while True:
            try:
                if not self._prepared:
                    await store.prepare()
                    self._prepared = True
                return await func(*args)
            except (asyncio.CancelledError, ChecksumMismatchError):
                raise
            except Exception as exc:
                transient = isinstance(exc, _TRANSIENT) or store.is_transient(exc)
                delay = attempts.next_delay() if transient else None
                if delay is None:
                    error = store.translate(exc)
                    if not (transient or store.is_session_lost(exc)):
                        if error is exc:
                            raise
                        raise error from exc
                    # the driver may start the whole object over
                    if error is not exc:
                        error.__cause__ = exc
                    raise RetryableError(f"{name} to {self._url} failed: {exc}") from error
                logger.warning(
                    "aiodicom: %s to %s failed (%s); retry %d of %d",
                    name,
                    self._url,
                    exc,
                    attempts.number,
                    self._options.retries,
                )
                await asyncio.sleep(delay)

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            return await coro
        finally:
            self._tasks.discard(task)

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_INLINE_COMMIT: Final = 1024 * 1024
"""An object up to this size is joined and checksummed in the event loop at
commit (about a millisecond at most: an MD5, for Azure); a larger one in a
worker thread."""


class AsyncPartWriter:
    """A :class:`PartWriter` awaited from an event loop (an
    :class:`~aiodicom.sinks.AsyncWriter`), without a worker thread for an object
    that fits in one part.

    Such an object's chunks are kept right here (immutable ones without a copy)
    and joined once at commit; its one request is sent on the store's loop and
    awaited: one trip between the loops per object.  An object that needs more
    than one part goes on in worker threads, through the blocking writer, as a
    :class:`~aiodicom.sinks.Sink`'s would.  The commit is shielded from
    cancellation, as a worker thread's would be: once the request is sent,
    whether the object was published is known before anything else.  Runs on
    asyncio and trio.
    """

    def __init__(self, writer: PartWriter) -> None:
        self._writer = writer
        self._chunks: list[bytes | memoryview] = []
        self._size = 0
        self._threaded = False  # the blocking writer took over, in worker threads

    @property
    def checksum(self) -> Checksum | None:
        """The checksum of the object, complete after commit."""
        return self._writer.checksum

    async def write(self, chunk: Chunk, /) -> None:
        size = memoryview(chunk).nbytes
        if not self._threaded and self._writer.fits(self._size + size):
            self._chunks.append(_kept(chunk))
            self._size += size
            return
        chunks = [*self._chunks, chunk]
        self._chunks, self._size, self._threaded = [], 0, True
        await anyio.to_thread.run_sync(self._write_all, chunks)

    def _put(self, chunks: list[bytes | memoryview]) -> Coroutine[Any, Any, None]:
        """The one request for the whole object: `chunks` joined, checksummed."""
        data = chunks[0] if len(chunks) == 1 and type(chunks[0]) is bytes else b"".join(chunks)
        return self._writer.put_coroutine(data)

    def _write_all(self, chunks: list[Any]) -> None:
        for chunk in chunks:
            self._writer.write(chunk)

    async def commit(self) -> None:
        writer = self._writer
        if self._threaded:
            await anyio.to_thread.run_sync(writer.commit)
            return
        chunks, self._chunks = self._chunks, []
        if self._size > _INLINE_COMMIT:
            # joining and checksumming (Azure: an MD5) take a few milliseconds per
            # MiB: a worker thread's, not the event loop's
            # (in a tuple: anyio refuses a coroutine returned by a thread on trio)
            (put,) = await anyio.to_thread.run_sync(lambda: (self._put(chunks),))
        else:
            put = self._put(chunks)
        future = submit(put, writer._store.loop)
        with anyio.CancelScope(shield=True):
            await wait_future(future)
        writer.committed()

    async def abort(self) -> None:
        self._chunks = []
        if self._threaded:
            await anyio.to_thread.run_sync(self._writer.abort)
        else:
            self._writer.abort()  # nothing was sent: no I/O


def _kept(chunk: Chunk) -> bytes | memoryview:
    """`chunk`, to be kept after the write returns: as it is if no one can change
    it (``bytes``, or a view of ``bytes``), else a copy (see the Writer protocol)."""
    if type(chunk) is bytes:
        return chunk
    view = memoryview(chunk)
    if type(view.obj) is bytes:
        return view
    return bytes(view)


async def wait_future(future: concurrent.futures.Future[T]) -> T:
    """Wait for `future` (done in another thread) in this event loop, asyncio or
    trio, without a worker thread: its completion wakes this loop."""
    if not future.done():
        done = anyio.Event()
        inbox = _inbox()
        future.add_done_callback(lambda _: inbox.post(done))
        await done.wait()
    return future.result()


class _Wakes:
    """Calls handed to an event loop from other threads, with one wake-up for all
    those that arrive before the loop runs them.

    Waking a loop from another thread writes to its self-pipe, which releases the
    GIL: under load the writer then waits for it behind every other thread, once
    per call.  Here a call that finds a wake-up already on its way only joins the
    list.
    """

    def __init__(self, wake: Callable[[Callable[[], None]], object]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._calls: list[Callable[[], None]] = []

    def call(self, function: Callable[[], None]) -> None:
        """Have the loop call `function` (from any thread)."""
        with self._lock:
            self._calls.append(function)
            if len(self._calls) > 1:
                return  # the wake-up for the first one runs this one too
        try:
            self._wake(self._run)
        except BaseException:  # the loop is gone: later calls must not wait on this one
            with self._lock:
                self._calls.clear()
            raise

    def _run(self) -> None:
        with self._lock:
            calls, self._calls = self._calls, []
        for function in calls:
            try:
                function()
            except Exception:  # one failing call must not keep the others from running
                logger.exception("aiodicom: a call handed to an event loop failed")


def _trio_wake() -> Callable[[Callable[[], None]], object] | None:
    """Trio's way to hand a call to the running loop from another thread, or
    ``None`` when the loop running is not trio's (trio is then not needed: a
    trio loop has imported it already)."""
    trio: Any = sys.modules.get("trio")
    if trio is None:
        return None
    try:
        token = trio.lowlevel.current_trio_token()
    except RuntimeError:  # not in a trio run
        return None
    wake: Callable[[Callable[[], None]], object] = token.run_sync_soon
    return wake


class _Inbox:
    """Sets events of one export loop (asyncio or trio) from other threads."""

    def __init__(self) -> None:
        self._wakes = _Wakes(_trio_wake() or asyncio.get_running_loop().call_soon_threadsafe)

    def post(self, event: anyio.Event) -> None:
        self._wakes.call(event.set)


_INBOX: RunVar[_Inbox] = RunVar("aiodicom_upload_inbox")


def _inbox() -> _Inbox:
    try:
        return _INBOX.get()
    except LookupError:
        inbox = _Inbox()
        _INBOX.set(inbox)
        return inbox


_OUTBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wakes] = (
    weakref.WeakKeyDictionary()
)
_OUTBOXES_LOCK = threading.Lock()


def submit(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
) -> concurrent.futures.Future[T]:
    """``asyncio.run_coroutine_threadsafe(coro, loop)``, with one wake-up of
    `loop` for all the coroutines submitted before it runs them."""
    with _OUTBOXES_LOCK:
        wakes = _OUTBOXES.get(loop)
        if wakes is None:
            wakes = _OUTBOXES[loop] = _Wakes(loop.call_soon_threadsafe)
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def start() -> None:
        if not future.set_running_or_notify_cancel():
            coro.close()
            return
        task = loop.create_task(coro)

        def done(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                future.cancel()
            elif task.exception() is not None:
                future.set_exception(task.exception())
            else:
                future.set_result(task.result())

        task.add_done_callback(done)

    wakes.call(start)
    return future
