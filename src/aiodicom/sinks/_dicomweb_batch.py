"""Many instances per STOW-RS request: the engine of :meth:`DicomWeb.store_many`.

One request is one :class:`_Batch`.  Its body is an async generator that pulls
instances as it goes (queued retries first, then new items), streams each one's
chunks into its own part, and stops taking instances at ``batch_count`` parts or
``batch_bytes`` bytes.  Before a part's header is sent, the instance's first
chunks are pulled so that its SOP Instance UID is known (the response lists
instances by UID), its source is known to work, and, with ``check_exists``, the
server can be asked whether it holds the instance.  Nothing here keeps a chunk
after handing it on, except those first chunks of an instance that has to wait
for the next request (its UID is already in this one).

Failures mid-part abandon the request: the instance being sent has no end, so it
is not stored.  The instances before it in that request had complete parts, which
servers that store parts as they arrive (Orthanc) may have stored; since that is
unknown, they are not sent again (retries are only for what was not stored) and
their result says so.  A connection error mid-part retries only the instance that
was being sent.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import anyio
import anyio.to_thread

from .._errors import DicomWebError
from .._retry import _Attempts as Attempts
from . import _stow
from ._protocol import Chunk
from .dicomweb import (
    DicomWeb,
    StowResult,
    StowStatus,
    _exists_error,
    _httpx,
    _transport_error,
)

__all__ = ["store_many"]

L = TypeVar("L")

_DONE: Final = object()


class _AbortRequest(Exception):
    """Raised inside a request body to abandon the request."""


# ----------------------------------------------------------------------------- sources


class _Chunks:
    """One attempt at one instance's chunks, pulled one at a time.

    Sync iterators (encode plans, generators) are advanced in a worker thread,
    since encoding is CPU work; in-memory sequences and async iterators are not.
    """

    def __init__(self, iterator: Any, *, threaded: bool, is_async: bool = False) -> None:
        self._iterator = iterator
        self._threaded = threaded
        self._async = is_async

    async def next(self) -> Chunk | None:
        if self._async:
            try:
                chunk = await self._iterator.__anext__()
            except StopAsyncIteration:
                return None
        elif self._threaded:
            chunk = await anyio.to_thread.run_sync(next, self._iterator, _DONE)
            if chunk is _DONE:
                return None
        else:
            chunk = next(self._iterator, _DONE)
            if chunk is _DONE:
                return None
        if isinstance(chunk, bytes | memoryview):
            return chunk
        if isinstance(chunk, bytearray):
            return memoryview(chunk)
        raise TypeError(f"an instance's chunks must be bytes-like, not {type(chunk).__name__}")

    async def aclose(self) -> None:
        if self._async:
            close = getattr(self._iterator, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
        else:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()


def _reusable(source: Any) -> bool:
    return callable(source) or isinstance(source, bytes | bytearray | memoryview | list | tuple)


async def _open(source: Any) -> _Chunks:
    if callable(source):
        source = await anyio.to_thread.run_sync(source)
    if isinstance(source, bytes | bytearray | memoryview):
        return _Chunks(iter([source]), threaded=False)
    chunks = getattr(source, "chunks", None)
    if callable(chunks):
        return _Chunks(chunks(), threaded=True)
    if isinstance(source, list | tuple):
        return _Chunks(iter(source), threaded=False)
    if isinstance(source, AsyncIterable):
        return _Chunks(source.__aiter__(), threaded=False, is_async=True)
    if isinstance(source, Iterable) and not isinstance(source, str):
        return _Chunks(iter(source), threaded=True)
    raise TypeError(
        "an instance must be bytes, an encode plan, an iterable or async iterable of "
        f"chunks, or a callable returning one, not {type(source).__name__}"
    )


# ----------------------------------------------------------------------------- items


@dataclass(eq=False)
class _Item(Generic[L]):
    label: L
    source: Any
    reusable: bool
    attempts: int = 0  # requests it was sent in
    retry: Attempts | None = None  # the retry policy's count, from its first request
    chunks: _Chunks | None = None  # this attempt's chunks, once opened
    lead: list[Chunk] = field(default_factory=list)  # chunks pulled to sniff the UID
    exhausted: bool = False  # `lead` holds all of them
    delimited: bool = False  # the delimiter after its part was sent: it may be stored
    sniffer: _stow.MetaSniffer = field(default_factory=_stow.MetaSniffer)
    size: int = 0
    result: StowResult[L] | None = None

    @property
    def uid(self) -> str | None:
        return self.sniffer.sop_instance_uid

    async def reset(self) -> None:
        """Forget this attempt (close its chunks) so the next one starts afresh."""
        chunks, self.chunks = self.chunks, None
        self.lead, self.exhausted, self.size, self.delimited = [], False, 0, False
        self.sniffer = _stow.MetaSniffer()
        if chunks is not None:
            await chunks.aclose()

    def finish(
        self,
        status: StowStatus,
        *,
        entry: _stow.Entry | None = None,
        error: BaseException | None = None,
    ) -> StowResult[L]:
        self.result = StowResult(
            label=self.label,
            status=status,
            sop_instance_uid=self.uid,
            sop_class_uid=(entry.sop_class_uid if entry else None) or self.sniffer.sop_class_uid,
            retrieve_url=entry.retrieve_url if entry else None,
            warning_reason=entry.warning_reason if entry else None,
            failure_reason=entry.failure_reason if entry else None,
            error=error,
            bytes=self.size,
            attempts=max(1, self.attempts),
        )
        return self.result


class _Feed(Generic[L]):
    """The caller's items, pulled one at a time; an error ends them (kept for later)."""

    def __init__(self, items: AsyncIterable[tuple[L, Any]] | Iterable[tuple[L, Any]]) -> None:
        if isinstance(items, AsyncIterable):
            self._async: AsyncIterator[tuple[L, Any]] | None = items.__aiter__()
            self._sync: Iterator[tuple[L, Any]] | None = None
        elif isinstance(items, Iterable) and not isinstance(items, str | bytes):
            self._async, self._sync = None, iter(items)
        else:
            raise TypeError(
                "store_many() takes an iterable or async iterable of (label, instance) "
                f"pairs, not {type(items).__name__}"
            )
        self.exhausted = False
        self.error: BaseException | None = None

    async def pull(self) -> _Item[L] | None:
        if self.exhausted:
            return None
        try:
            if self._async is not None:
                pair = await self._async.__anext__()
            else:
                assert self._sync is not None
                pair = next(self._sync)
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(
                    f"store_many() items are (label, instance) pairs, not {type(pair).__name__}"
                )
        except (StopIteration, StopAsyncIteration):
            self.exhausted = True
            return None
        except Exception as exc:
            self.exhausted, self.error = True, exc
            return None
        label, source = pair
        return _Item(label, source, _reusable(source))


# ----------------------------------------------------------------------------- one request


@dataclass
class _Outcome(Generic[L]):
    results: list[StowResult[L]]
    wait: float = 0.0


class _Batch(Generic[L]):
    """One request: its body, and the results it gives."""

    def __init__(
        self,
        sink: DicomWeb,
        client: Any,
        feed: _Feed[L],
        queue: deque[_Item[L]],
        *,
        check: bool,
    ) -> None:
        self.sink = sink
        self.client = client
        self.feed = feed
        self.queue = queue
        self.check = check
        self.boundary = _stow.new_boundary()
        self.sent: list[_Item[L]] = []
        self.order: list[StowResult[L] | _Item[L]] = []
        self.uids: set[str] = set()
        self.bytes = 0
        self.body_complete = False
        self.failure: tuple[_Item[L], BaseException] | None = None
        self.wait = 0.0

    # -- choosing the instances --------------------------------------------------------

    async def next_ready(self) -> _Item[L] | None:
        """The next instance for this request, ready to send, or ``None`` to end it."""
        sink = self.sink
        while len(self.sent) < sink.batch_count and self.bytes < sink.batch_bytes:
            if self.queue:
                item = self.queue.popleft()
            else:
                pulled = await self.feed.pull()
                if pulled is None:
                    return None
                item = pulled
            try:
                exists = await self._prepare(item)
            except Exception as exc:
                self.order.append(item.finish(StowStatus.FAILED, error=exc))
                await item.reset()
                continue
            if item.uid is not None and item.uid in self.uids:
                self.queue.appendleft(item)  # the same instance twice: next request
                return None
            if exists is not None:
                self.order.append(item.finish(StowStatus.EXISTS, error=exists))
                await item.reset()
                continue
            if item.uid is not None:
                self.uids.add(item.uid)
            return item
        return None

    async def _prepare(self, item: _Item[L]) -> FileExistsError | None:
        """Open the item's chunks and read its UID; with `check`, search for it."""
        if item.chunks is None:
            item.chunks = await _open(item.source)
            while not item.sniffer.done:
                chunk = await item.chunks.next()
                if chunk is None:
                    item.sniffer.finish()
                    item.exhausted = True
                    break
                item.lead.append(chunk)
                item.sniffer.feed(chunk)
        if not self.check:
            return None
        if item.uid is None:
            raise ValueError(
                "check_exists needs the SOP Instance UID from the File Meta "
                "Information: send instances in the DICOM File Format"
            )
        if await self.sink._exists(self.client, item.uid):
            return _exists_error(item.uid, self.sink.url, "found by a QIDO-RS search")
        return None

    # -- the request -----------------------------------------------------------------------

    async def body(self, first: _Item[L]) -> AsyncGenerator[Chunk, None]:
        item: _Item[L] | None = first
        while item is not None:
            yield _stow.part_head(self.boundary, first=not self.sent)
            # resumed: the delimiter that ends the previous part has been sent, so
            # the server may store that instance now (Orthanc does)
            if self.sent:
                self.sent[-1].delimited = True
            self.sent.append(item)
            self.order.append(item)
            item.attempts += 1
            if item.retry is None:
                item.retry = self.sink._policy.start()
            lead, item.lead = item.lead, []
            for chunk in lead:
                item.size += memoryview(chunk).nbytes
                for piece in _stow.pieces(chunk):
                    yield piece
            del lead
            assert item.chunks is not None
            while not item.exhausted:
                try:
                    more = await item.chunks.next()
                except Exception as exc:
                    self.failure = (item, exc)
                    raise _AbortRequest from exc
                if more is None:
                    break
                item.size += memoryview(more).nbytes
                for piece in _stow.pieces(more):
                    yield piece
            chunks, item.chunks = item.chunks, None
            await chunks.aclose()
            self.bytes += item.size
            item = await self.next_ready()
        yield _stow.close_delimiter(self.boundary, parts=len(self.sent))
        self.sent[-1].delimited = True
        self.body_complete = True

    async def run(self) -> _Outcome[L]:
        first = await self.next_ready()
        if first is not None:
            await self._request(first)
        results: list[StowResult[L]] = []
        for slot in self.order:
            if isinstance(slot, _Item):
                if slot.result is not None:
                    results.append(slot.result)
            else:
                results.append(slot)
        return _Outcome(results, self.wait)

    async def _request(self, first: _Item[L]) -> None:
        hx, sink = _httpx(), self.sink
        url = sink.studies_url
        try:
            headers = await sink._request_headers(
                **{
                    "Content-Type": _stow.content_type(self.boundary),
                    "Accept": "application/dicom+json",
                }
            )
        except Exception as exc:  # the token provider failed
            self.order.append(first.finish(StowStatus.FAILED, error=exc))
            await first.reset()
            return
        body = self.body(first)
        try:
            reply = await sink._send(self.client, sink._method, url, headers=headers, content=body)
        except _AbortRequest:
            await self._abandoned()
        except hx.TransportError as exc:
            for item in self.sent:
                if self.body_complete:
                    item.finish(StowStatus.FAILED, error=_transport_error(exc, url, sent=True))
                elif item.delimited:
                    item.finish(StowStatus.FAILED, error=_maybe_stored(url, f"{exc!r}"))
                else:  # the instance being sent: its part has no end, it is not stored
                    await self._retry(item, _transport_error(exc, url, sent=False), None)
        else:
            response = reply.parse()
            outcomes = _stow.classify(response, [item.uid for item in self.sent])
            for item, outcome in zip(self.sent, outcomes, strict=True):
                await self._settle(item, outcome, response, reply.status)
        finally:
            with anyio.CancelScope(shield=True):
                await body.aclose()
                for item in self.sent:
                    if item not in self.queue:
                        await item.reset()

    async def _settle(
        self,
        item: _Item[L],
        outcome: _stow.Outcome,
        response: _stow.StowResponse,
        status: int,
    ) -> None:
        url, entry = self.sink.studies_url, outcome.entry
        verdict = outcome.verdict
        if verdict is _stow.Verdict.STORED:
            item.finish(StowStatus.STORED, entry=entry)
            return
        if verdict is _stow.Verdict.EXISTS:
            error: OSError = _exists_error(
                item.uid,
                self.sink.url,
                outcome.message,
                status_code=status,
                failure_reason=entry.failure_reason if entry else None,
            )
            item.finish(StowStatus.EXISTS, entry=entry, error=error)
            return
        error = DicomWebError(
            f"{url} did not store the instance {item.uid or ''}: {outcome.message}",
            url=url,
            status_code=status,
            failure_reason=entry.failure_reason if entry else None,
            detail="; ".join(entry.texts) if entry else response.excerpt,
        )
        if verdict is _stow.Verdict.RETRY:
            await self._retry(item, error, response.retry_after, entry)
        else:
            item.finish(StowStatus.FAILED, entry=entry, error=error)

    async def _retry(
        self,
        item: _Item[L],
        error: BaseException,
        retry_after: float | None,
        entry: _stow.Entry | None = None,
    ) -> None:
        """Queue `item` for another request if it may be retried, else fail it."""
        assert item.retry is not None
        delay = item.retry.next_delay(retry_after) if item.reusable else None
        if delay is not None:
            await item.reset()
            self.queue.append(item)
            self.wait = max(self.wait, delay)
        else:
            item.finish(StowStatus.FAILED, entry=entry, error=error)

    async def _abandoned(self) -> None:
        """An instance's source failed mid-part: fail it, and say what that means for
        the instances sent before it in the request (they may have been stored)."""
        assert self.failure is not None
        failed, exc = self.failure
        failed.finish(StowStatus.FAILED, error=exc)
        why = f"its request was abandoned because the instance {failed.label!r} failed"
        for item in self.sent:
            if item is not failed:
                item.finish(StowStatus.FAILED, error=_maybe_stored(self.sink.studies_url, why))


def _maybe_stored(url: str, why: str) -> ConnectionAbortedError:
    return ConnectionAbortedError(
        f"STOW-RS to {url}: {why} after this instance was sent, so it may have been "
        "stored (some servers, Orthanc for one, store each instance as soon as its "
        "part has arrived); it is not sent again"
    )


# ----------------------------------------------------------------------------- the loop


async def store_many(
    sink: DicomWeb,
    items: AsyncIterable[tuple[L, Any]] | Iterable[tuple[L, Any]],
    *,
    exist_ok: bool = True,
) -> AsyncIterator[StowResult[L]]:
    """See :meth:`DicomWeb.store_many`."""
    feed: _Feed[L] = _Feed(items)
    queue: deque[_Item[L]] = deque()
    check = sink.check_exists and not exist_ok
    try:
        async with sink._client() as client:
            wait = 0.0
            while queue or not feed.exhausted:
                if wait > 0:
                    await anyio.sleep(wait)
                outcome = await _Batch(sink, client, feed, queue, check=check).run()
                for result in outcome.results:
                    yield result
                wait = outcome.wait
    finally:
        with anyio.CancelScope(shield=True):
            while queue:
                await queue.popleft().reset()
    if feed.error is not None:
        raise feed.error
