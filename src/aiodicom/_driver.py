"""The async driver: run the core where it cannot stall the event loop, feed a sink.

A synchronous :class:`~aiodicom.sinks.Sink` is driven from one worker thread:
validate, open, encode and write each chunk, commit.  No chunk crosses a thread
boundary, and the event loop only waits.  Cancellation is checked between chunks
(``anyio.from_thread.check_cancelled``), so it is prompt; on any exception or
cancellation the writer is aborted in that same thread before the error
propagates, which is as shielded as it gets.

*Light* datasets (see :mod:`aiodicom._core.cost`: a typical image, whatever the size of
its Pixel Data) are validated and encoded inline instead, which takes the loop
a millisecond or two and spares it from waiting for the GIL behind encoding
threads; only the sink's I/O then runs in the worker thread.  Sinks that declare
writes cheap (in-memory buffers) are written inline as the chunks are encoded, up
to their limit, and the rest of the write goes on in a worker thread.  Sinks that
may refuse the first write (caller-owned file objects) are never encoded ahead of
their writes, so a refused write leaves the dataset as pydicom leaves it.

Writes into one caller-owned object (a file object, a ``bytearray``) started from
one event loop take turns, in the order they started: appends and writes "at the
current position" would otherwise interleave.

The driver knows sinks only through the protocol and the optional capabilities
of :func:`aiodicom.sinks.capabilities` (pre-flight check, retries, inline writes).

An :class:`~aiodicom.sinks.AsyncSink` is awaited in the event loop while a worker
thread encodes one chunk at a time (pull-based: the encoder never runs ahead by
more than one chunk, which is the backpressure).  Its ``abort`` runs shielded.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.lowlevel import RunVar
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.filebase import DicomIO
from pydicom.misc import warn_and_log

from ._checksum import DEFAULT_ALGORITHM, Checksum, normalize_algorithm
from ._core import Chunk, EncodePlan, is_light, prepare
from ._errors import RetryableError
from ._retry import RetryPolicy
from .sinks import AsyncSink, Capabilities, Sink, Writer, capabilities, resolve
from .sinks._protocol import is_sink

__all__ = ["WriteResult", "dcmwrite"]

logger = logging.getLogger("aiodicom")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What :func:`aiodicom.dcmwrite` wrote.

    Attributes
    ----------
    destination : str
        The path or URL written (for a buffer, file object or sink of your own:
        its ``repr``).
    bytes : int
        How many bytes were written.
    checksum : Checksum or None
        The checksum of exactly those bytes, computed while they were written
        (``None`` with ``checksum=None``).  For an object store it is the checksum
        the store was given to check (see "Integrity" in the guarantees).
    """

    destination: str
    bytes: int
    checksum: Checksum | None


class _Unset:
    def __repr__(self) -> str:
        return repr(DEFAULT_ALGORITHM)


_CHECKSUM_DEFAULT: Final = cast(str, _Unset())


class _DefaultTrue:
    """``exist_ok``'s default: true, but tells "not given" apart from ``True``."""

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "True"


_EXIST_OK_DEFAULT: Final = cast(bool, _DefaultTrue())


async def dcmwrite(
    destination: Any,
    dataset: Dataset,
    /,
    __write_like_original: bool | None = None,
    *,
    implicit_vr: bool | None = None,
    little_endian: bool | None = None,
    enforce_file_format: bool = False,
    force_encoding: bool = False,
    exist_ok: bool = _EXIST_OK_DEFAULT,
    storage_options: dict[str, Any] | None = None,
    checksum: str | None = _CHECKSUM_DEFAULT,
    **kwargs: Any,
) -> WriteResult:
    """Write `dataset` to `destination` without blocking the event loop.

    The async twin of :func:`pydicom.dcmwrite`: the same arguments with the same
    meaning, the same bytes out, the same exceptions for bad input.  Runs on asyncio
    and trio.

    Differences, all intended: bad input raises before anything is created at the
    destination; a write that fails or is cancelled leaves nothing behind (a new
    file does not appear, an existing one keeps its content, a buffer is rolled
    back); destinations that have only ``write()`` are accepted; large values are
    not copied.

    Parameters
    ----------
    destination : str, bytes, os.PathLike, URL, file-like, bytearray or Sink
        A local path; an fsspec URL such as ``"s3://bucket/key.dcm"``; an
        ``(fsspec filesystem, path)`` pair; a ``bytearray`` (appended to); a file
        object, sync or async (written at its current position, never closed); or
        a :class:`~aiodicom.sinks.Sink` / :class:`~aiodicom.sinks.AsyncSink`.
    dataset : pydicom.dataset.Dataset
        The dataset to encode.
    write_like_original : bool, default None
        Deprecated, as in pydicom: use `enforce_file_format`.  Positional (after
        `dataset`) or keyword, as in pydicom.
    implicit_vr : bool, optional
        As :func:`pydicom.dcmwrite`.
    little_endian : bool, optional
        As :func:`pydicom.dcmwrite`.
    enforce_file_format : bool, optional
        As :func:`pydicom.dcmwrite`: write the DICOM File Format or raise.
    force_encoding : bool, optional
        As :func:`pydicom.dcmwrite`.
    exist_ok : bool, default True
        If ``False``, raise :class:`FileExistsError` if the destination exists.
        Enforced atomically by the sink (of racing writers exactly one wins).
        Ignored for file objects and buffers, as in pydicom.  ``overwrite=`` is
        accepted as pydicom 3.0's name for it.
    storage_options : dict, optional
        Options for the fsspec filesystem of a URL destination (credentials,
        endpoint...), as in pandas.
    checksum : {"crc32c", "sha256", "md5"} or None, optional
        The checksum computed over the bytes as they are written (default
        ``"crc32c"``; ``None`` or ``"none"``: none).  Object stores are sent it
        (and the checksums they check) so that they refuse bytes that differ.
        A sink you pass keeps its own setting (giving a different one here is an
        error).

    Returns
    -------
    WriteResult
        The destination, the bytes written and their checksum.
        (:func:`pydicom.dcmwrite` returns ``None``.)

    Raises
    ------
    TypeError
        For an unusable destination or unknown keyword arguments.
    ValueError
        For datasets and options that pydicom rejects, with pydicom's message; for
        an unknown `checksum`.
    FileExistsError
        If `exist_ok` is ``False`` and the destination exists.
    ChecksumMismatchError
        If the store received other bytes than were checksummed (nothing is
        published).
    """
    if "overwrite" in kwargs:
        overwrite = kwargs.pop("overwrite")
        if exist_ok is not _EXIST_OK_DEFAULT:
            raise TypeError(
                "dcmwrite() got both 'exist_ok' and 'overwrite' (pydicom 3.0's "
                "name for it); use 'exist_ok' only"
            )
        exist_ok = bool(overwrite)
    enforce_file_format = _check_arguments(__write_like_original, enforce_file_format, kwargs)

    exist_ok = bool(exist_ok)
    algorithm: str | None = normalize_algorithm(
        DEFAULT_ALGORITHM if checksum is _CHECKSUM_DEFAULT else checksum
    )
    try:
        sink: Sink | AsyncSink | None = resolve(destination, storage_options, checksum=algorithm)
        bad_destination: Exception | None = None
    except (TypeError, ValueError) as exc:
        sink, bad_destination = None, exc
    # Writes to one caller-owned object (a file object, a bytearray) take turns:
    # concurrent appends or writes at "the current position" would interleave.
    async with _one_at_a_time(_caller_owned(destination, sink)):
        # read now: a file object's position (and so its capabilities) is where
        # the previous write left it
        able = capabilities(sink)
        if able.declares_checksum:
            if checksum is not _CHECKSUM_DEFAULT and able.checksum != algorithm:
                raise ValueError(
                    f"dcmwrite(checksum={checksum!r}) differs from the sink's own "
                    f"checksum={able.checksum!r}: set it on the sink"
                )
            algorithm = able.checksum

        read_deferred = _deferred_reader()

        def plan() -> EncodePlan:
            def on_open(encoding: tuple[bool, bool]) -> None:
                # pydicom reports a bad destination only once the dataset has passed
                if bad_destination is not None:
                    raise bad_destination
                if isinstance(destination, DicomIO):
                    destination.is_implicit_VR, destination.is_little_endian = encoding
                if able.check is not None:
                    able.check(exist_ok=exist_ok)  # pydicom opens its file here

            return prepare(
                dataset,
                implicit_vr=implicit_vr,
                little_endian=little_endian,
                enforce_file_format=enforce_file_format,
                force_encoding=force_encoding,
                on_open=on_open,
                read_deferred=read_deferred,
            )

        if is_sink(sink):
            written = await _retrying(
                able.retries, lambda: _to_sink(sink, dataset, plan, exist_ok, able, algorithm)
            )
        else:
            written = await _retrying(
                able.retries,
                lambda: _to_async_sink(
                    cast(AsyncSink, sink), dataset, plan, exist_ok, able, algorithm
                ),
            )
    return WriteResult(_describe(sink), *written)


def _describe(sink: Any) -> str:
    """The destination as the result names it: a URL, a path, or the sink's repr
    (through wrappers that keep the sink they wrap as ``inner``)."""
    while True:
        for name in ("url", "path"):
            value = getattr(sink, name, None)
            if isinstance(value, str):
                return value
        inner = getattr(sink, "inner", None)
        if inner is None:
            return repr(sink)
        sink = inner


_Written = tuple[int, Checksum | None]  # bytes, checksum


def _caller_owned(destination: Any, sink: Sink | AsyncSink | None) -> Any:
    """The caller's object that the write goes into in place (a file object, a
    bytearray), or ``None`` (a path or URL: a sink of its own; a sink passed in)."""
    if sink is None or destination is sink:
        return None
    if isinstance(destination, str | bytes | os.PathLike | tuple):
        return None
    return destination


_DESTINATIONS: RunVar[dict[int, tuple[anyio.Lock, int]]] = RunVar("aiodicom_destinations")


@asynccontextmanager
async def _one_at_a_time(destination: Any) -> AsyncIterator[None]:
    """Hold `destination`'s lock (one per object and event loop, first come first
    served) for the whole write; nothing for ``None``."""
    if destination is None:
        yield
        return
    try:
        locks = _DESTINATIONS.get()
    except LookupError:
        locks = {}
        _DESTINATIONS.set(locks)
    key = id(destination)  # unique while registered: the object is in use
    lock, users = locks.get(key, (None, 0))
    lock = lock or anyio.Lock()
    locks[key] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = locks[key]
        if users == 1:
            del locks[key]
        else:
            locks[key] = (lock, users - 1)


async def _to_sink(
    sink: Sink,
    dataset: Dataset,
    plan: Callable[[], EncodePlan],
    exist_ok: bool,
    able: Capabilities,
    algorithm: str | None,
) -> _Written:
    """One attempt at a write to a synchronous sink."""
    if not _ENCODE_INLINE.get() or not is_light(dataset):
        return await anyio.to_thread.run_sync(_encode_and_write, plan, sink, exist_ok, algorithm)
    if able.inline_write_limit:
        return await _write_inline(sink, plan, exist_ok, able.inline_write_limit, algorithm)
    if not able.encode_ahead:
        # encoded as it is written, in the thread: a refused first write stops it
        return await anyio.to_thread.run_sync(_encode_and_write, plan, sink, exist_ok, algorithm)
    # Light: encode right here; only the sink's I/O goes to a thread.
    chunks = await _encode_in_loop(plan)
    return await anyio.to_thread.run_sync(_write_chunks, sink, chunks, exist_ok, algorithm)


async def _encode_in_loop(plan: Callable[[], EncodePlan]) -> list[Chunk]:
    """Encode a light dataset whole, right here in the event loop (a millisecond
    or two, and no thread competing with the loop for the GIL).

    One inline encode per loop turn: many writes started at once must not run
    back to back without letting other tasks in.
    """
    async with _inline_lock():
        # acquiring the lock may resume a task that was cancelled meanwhile
        # (anyio's fast path is shielded): do not encode for nothing
        await anyio.lowlevel.checkpoint_if_cancelled()
        return list(plan().chunks())


async def _write_inline(
    sink: Sink, plan: Callable[[], EncodePlan], exist_ok: bool, limit: int, algorithm: str | None
) -> _Written:
    """Encode a light dataset and write it to a cheap sink in the event loop, each
    chunk as it is encoded, up to `limit` bytes; a worker thread does the rest."""
    async with _inline_lock():
        await anyio.lowlevel.checkpoint_if_cancelled()  # see _to_sink
        encoded = plan()
        writer = sink.open(exist_ok=exist_ok)
        own = _own_checksum(writer, algorithm)
        chunks = encoded.chunks()
        rest: Iterator[Chunk] | None = None
        size = 0
        try:
            for chunk in chunks:
                if size + len(memoryview(chunk)) > limit:
                    rest = itertools.chain((chunk,), chunks)
                    break
                writer.write(chunk)
                size += memoryview(chunk).nbytes
                if own is not None:
                    own.update(chunk)
            else:
                writer.commit()
        except BaseException:
            _abort_quietly(writer.abort)
            chunks.close()
            raise
        if rest is None:
            chunks.close()
            return size, own if own is not None else getattr(writer, "checksum", None)
    return await _finish_in_thread(writer, rest, chunks, size, own)


async def _finish_in_thread(
    writer: Writer,
    rest: Iterator[Chunk],
    chunks: Generator[Chunk, None, None],
    size: int,
    own: Checksum | None,
) -> _Written:
    """Write `rest` and commit in a worker thread, as :func:`_write_chunks` does."""
    started = False

    def finish() -> _Written:
        nonlocal started, size
        started = True
        try:
            for chunk in rest:
                anyio.from_thread.check_cancelled()
                writer.write(chunk)
                size += memoryview(chunk).nbytes
                if own is not None:
                    own.update(chunk)
            anyio.from_thread.check_cancelled()
            writer.commit()
        except BaseException:
            _abort_quietly(writer.abort)
            raise
        finally:
            chunks.close()
        return size, own if own is not None else getattr(writer, "checksum", None)

    try:
        return await anyio.to_thread.run_sync(finish)
    except BaseException:
        if not started:  # cancelled before the thread ran: undo what was written
            _abort_quietly(writer.abort)
            chunks.close()
        raise


async def _to_async_sink(
    sink: AsyncSink,
    dataset: Dataset,
    plan: Callable[[], EncodePlan],
    exist_ok: bool,
    able: Capabilities,
    algorithm: str | None,
) -> _Written:
    """One attempt at a write to an asynchronous sink.

    Encoded chunk by chunk in worker threads, one chunk ahead of the sink's
    ``write``; except that a light dataset, for a sink that declares
    ``encode_ahead``, is encoded at once (in the event loop, or in one worker
    thread within :func:`encode_in_threads`) and its chunks are written without
    a thread hop each.
    """
    if not (able.encode_ahead and is_light(dataset)):
        encoded = await anyio.to_thread.run_sync(plan)
        return await _write_async(sink, encoded.chunks(), exist_ok, algorithm, in_thread=True)
    if _ENCODE_INLINE.get():
        chunks = await _encode_in_loop(plan)
    else:
        chunks = await anyio.to_thread.run_sync(lambda: list(plan().chunks()))
    return await _write_async(sink, iter(chunks), exist_ok, algorithm, in_thread=False)


async def _retrying(retries: int, attempt: Callable[[], Awaitable[T]]) -> T:
    """Run `attempt`; start over after a :class:`~aiodicom.RetryableError`, up to
    `retries` times, as the shared :class:`~aiodicom._retry.RetryPolicy` says."""
    attempts = RetryPolicy(retries, deadline=None).start()
    while True:
        try:
            return await attempt()
        except RetryableError as exc:
            delay = _next_retry(attempts, exc)
            logger.warning(
                "aiodicom: %s; writing it again (%d of %d)", exc, attempts.number, retries
            )
            await anyio.sleep(delay)


_INLINE_LOCK: RunVar[anyio.Lock] = RunVar("aiodicom_inline_lock")

_ENCODE_INLINE: ContextVar[bool] = ContextVar("aiodicom_encode_inline", default=True)


@contextmanager
def encode_in_threads() -> Iterator[None]:
    """Within this context (and the tasks it starts), always encode in worker threads.

    For bulk work where throughput matters more than the loop's latency: many
    writes in flight while other threads read and parse datasets keep the GIL busy,
    and inline encoding, one per loop turn, would then wait for it each time.
    """
    token = _ENCODE_INLINE.set(False)
    try:
        yield
    finally:
        _ENCODE_INLINE.reset(token)


def _next_retry(attempts: Any, exc: RetryableError) -> float:
    """Seconds before writing again after `exc`; when no attempt is left, raise
    what the writer said was the cause (or `exc` itself)."""
    delay = attempts.next_delay()
    if delay is None:
        if exc.__cause__ is None:
            raise exc
        raise exc.__cause__ from None
    return float(delay)


_STREAM_DEFERRED: ContextVar[bool] = ContextVar("aiodicom_stream_deferred", default=False)


@contextmanager
def stream_deferred_values() -> Iterator[None]:
    """Within this context, large deferred values (a dataset read with
    ``defer_size`` from a file path) are streamed from their file in slices as
    they are written, instead of being read whole into the dataset first: memory
    stays bounded whatever the size of the value.  The bytes are the same; the
    dataset is left with its values still deferred (pydicom would have read them
    into it), which is why only the bulk export, which owns its datasets, asks
    for it."""
    token = _STREAM_DEFERRED.set(True)
    try:
        yield
    finally:
        _STREAM_DEFERRED.reset(token)


_REGION_SLICE: Final = 4 * 1024 * 1024


def _read_file_region(
    path: str, timestamp: float | None, offset: int, length: int
) -> Iterator[memoryview] | None:
    """The `length` bytes at `offset` of `path`, in slices of one reused buffer
    (each slice is written before the next is read); ``None`` when the file does
    not hold them all (a damaged file: pydicom's own read then decides what is
    written).  Warns as pydicom does if the file changed since it was read."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # pydicom's deferred read reports it its own way
    if offset + length > st.st_size:
        return None
    if timestamp is not None and st.st_mtime != timestamp:
        warn_and_log("Deferred read warning -- file modification time has changed")
    return _slices_of(path, offset, length)


def _slices_of(path: str, offset: int, length: int) -> Iterator[memoryview]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        buffer = bytearray(min(_REGION_SLICE, length))
        view = memoryview(buffer)
        done = 0
        while done < length:
            want = min(len(buffer), length - done)
            got = os.preadv(fd, [view[:want]], offset + done)
            if got <= 0:
                raise OSError(
                    f"Deferred read -- {path!r} ended {length - done} bytes before the "
                    "value it was read with"
                )
            done += got
            yield view[:got]
    finally:
        os.close(fd)


def _deferred_reader() -> Callable[[str, float | None, int, int], Iterator[Chunk] | None] | None:
    return _read_file_region if _STREAM_DEFERRED.get() else None


def _inline_lock() -> anyio.Lock:
    """The event loop's lock for inline encoding (one per running loop)."""
    try:
        return _INLINE_LOCK.get()
    except LookupError:
        lock = anyio.Lock()
        _INLINE_LOCK.set(lock)
        return lock


def _check_arguments(
    positional: bool | None, enforce_file_format: bool, kwargs: dict[str, Any]
) -> bool:
    """pydicom's checks of ``write_like_original`` and unknown keyword arguments."""
    write_like_original: bool | None = kwargs.get("write_like_original")
    if None not in (positional, write_like_original) or (
        config._use_future and (positional, write_like_original) != (None, None)
    ):
        if config._use_future:
            raise TypeError(
                "'write_like_original' is no longer accepted as a positional "
                "or keyword argument, use 'enforce_file_format' instead"
            )
        raise TypeError(
            "'write_like_original' cannot be used as both a positional and keyword argument"
        )
    if write_like_original is None:
        write_like_original = positional
    if write_like_original is not None:
        warn_and_log(
            "'write_like_original' is deprecated and will be removed in "
            "v4.0, please use 'enforce_file_format' instead",
            DeprecationWarning,
            stacklevel=3,
        )
        enforce_file_format = not write_like_original

    keys = [x for x in kwargs if x != "write_like_original"]
    if keys:
        raise TypeError(f"Invalid keyword argument(s) for dcmwrite(): {', '.join(keys)}")
    return enforce_file_format


_NO_CHECKSUM: Final = object()


def _own_checksum(writer: Any, algorithm: str | None) -> Checksum | None:
    """The checksum the driver must compute: none if the writer computes its own
    (its ``checksum`` attribute) or if checksums are off."""
    if algorithm is None or getattr(writer, "checksum", _NO_CHECKSUM) is not _NO_CHECKSUM:
        return None
    return Checksum(algorithm)


def _write_chunks(
    sink: Sink,
    chunks: Iterable[Chunk],
    exist_ok: bool,
    algorithm: str | None,
    check: Callable[[], None] = anyio.from_thread.check_cancelled,
) -> _Written:
    """Open the sink, write `chunks` (encoding them as they are pulled, for a
    generator), commit; on any error or cancellation abort, then re-raise.
    `check` runs between chunks (by default: has the write been cancelled?).
    Returns the bytes written and their checksum."""
    writer = sink.open(exist_ok=exist_ok)
    own = _own_checksum(writer, algorithm)
    size = 0
    try:
        for chunk in chunks:
            check()
            writer.write(chunk)
            size += memoryview(chunk).nbytes
            if own is not None:
                own.update(chunk)
        check()
        writer.commit()
    except BaseException:
        _abort_quietly(writer.abort)
        raise
    finally:
        if isinstance(chunks, Generator):
            chunks.close()
    return size, own if own is not None else getattr(writer, "checksum", None)


def write_in_this_thread(
    sink: Sink,
    dataset: Dataset,
    *,
    exist_ok: bool,
    enforce_file_format: bool,
    check: Callable[[], None],
    checksum: str | None = DEFAULT_ALGORITHM,
) -> WriteResult:
    """``dcmwrite(sink, dataset, ...)`` for a synchronous sink, done right here
    (blocking), for callers that are a worker themselves (an export worker
    process).  `check` is called between chunks and may raise to stop the write,
    which is then aborted.  Whole-write retries apply as in :func:`dcmwrite`; the
    sink's own checksum algorithm wins over `checksum`, as there."""
    able = capabilities(sink)
    algorithm = able.checksum if able.declares_checksum else normalize_algorithm(checksum)

    def on_open(encoding: tuple[bool, bool]) -> None:
        if able.check is not None:
            able.check(exist_ok=exist_ok)

    attempts = RetryPolicy(able.retries, deadline=None).start()
    while True:
        try:
            plan = prepare(
                dataset,
                enforce_file_format=enforce_file_format,
                on_open=on_open,
                read_deferred=_deferred_reader(),
            )
            written = _write_chunks(sink, plan.chunks(), exist_ok, algorithm, check=check)
            return WriteResult(_describe(sink), *written)
        except RetryableError as exc:
            time.sleep(_next_retry(attempts, exc))


def _encode_and_write(
    plan: Callable[[], EncodePlan], sink: Sink, exist_ok: bool, algorithm: str | None
) -> _Written:
    """The whole write in this worker thread: validate, open, encode, write, commit."""
    return _write_chunks(sink, plan().chunks(), exist_ok, algorithm)


def _abort_quietly(abort: Any) -> None:
    try:
        abort()
    except Exception:  # the original error is what matters; keep this one in the log
        logger.exception("aiodicom: aborting a failed write failed too")


_DONE: Final = object()


async def _write_async(
    sink: AsyncSink,
    chunks: Iterator[Chunk],
    exist_ok: bool,
    algorithm: str | None,
    *,
    in_thread: bool,
) -> _Written:
    """Open `sink`, write `chunks` (pulled in worker threads if `in_thread`:
    they are encoded as they are pulled), commit; abort on any error."""
    writer = await sink.open_async(exist_ok=exist_ok)
    own = _own_checksum(writer, algorithm)
    size = 0

    def pull() -> object:
        """The next chunk, checksummed here (in the worker thread)."""
        chunk = next(chunks, _DONE)
        if own is not None and chunk is not _DONE:
            own.update(cast(Chunk, chunk))
        return chunk

    try:
        try:
            while True:
                chunk = await anyio.to_thread.run_sync(pull) if in_thread else pull()
                if chunk is _DONE:
                    break
                await writer.write(cast(Chunk, chunk))
                size += memoryview(cast(Chunk, chunk)).nbytes
        finally:
            if isinstance(chunks, Generator):
                chunks.close()
        await writer.commit()
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                await writer.abort()
            except Exception:
                logger.exception("aiodicom: aborting a failed write failed too")
        raise
    return size, own if own is not None else getattr(writer, "checksum", None)
