"""Bulk export to a local folder on every core: worker processes.

Reading and encoding DICOM is CPU work that one Python process does on one core.
:func:`run_in_processes` starts ``workers`` processes (``spawn``: nothing of the
parent's threads or event loop is inherited; ``fork`` while the parent has a single
thread, which is as safe and much faster) and keeps them fed with items; each
worker exports one item at a time with the export's own per-item code
(:meth:`~.run.Run.name_blocking`, :meth:`~.run.Run.write_blocking`: read, name,
write through the same sink, the same atomic publish), in its main thread: a
process per core already uses the cores, and threads inside one would only take
turns at the GIL.  A worker reads and names up to ``_AHEAD`` items ahead and asks
for their names in one message, while the parent grants names in source order, so
neither the round trip nor the order keeps a worker waiting for long.  The
parent keeps everything that must be one: the source listing (in order: each
item carries its sequence number), the duplicate-name check (a worker asks
before it writes, and the parent answers in source order: see ``claims``), the
tally and the progress callback, the report, cancellation.  Items that cannot
travel to a process (datasets in memory, file objects, ``memory://`` objects,
skipped hidden files) are exported by the parent itself.

Messages (pickled over one duplex pipe per worker):

* parent -> worker: ``("items", [(seq, kind, label), ...])``, ``("claims", [(seq,
  name_or_error), ...])`` (answers), ``("end",)`` (no more items: finish and say
  done), ``("stop",)`` (cancel what is in flight, cleanly, and say done);
* worker -> parent: ``("claims", [(seq, name), ...])`` (the names of a run of items
  read ahead, in one message), ``("results", [(seq, ItemResult, at_destination),
  ...])``, ``("done",)``.

A worker takes its items in sequence order, and the parent answers a claim only
once every earlier item is named or finished; so a worker sends at once the
result of an item that finished without a name (the parent may be waiting for
it), and the parent sends the items it holds back for a batch as soon as a claim
waits for one of them.

A stopped worker aborts the write in progress (checked between chunks: nothing
half-written) and still reports every item it finished, so the report lists every
destination that holds its bytes.  Workers ignore Ctrl-C (it reaches the whole
process group): the parent decides, and tells them to stop.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import anyio.to_thread

from .._driver import encode_in_threads, stream_deferred_values
from .claims import FIRST, Grant, NameGate, OrderedNames
from .destination import Root
from .options import ExportOptions
from .report import ExportProgress, ExportReport, ItemResult, Status, Tally, portable
from .run import Named, RepeatedErrors, Run, selection_for
from .sources import Source, in_process_memory, iter_sources

__all__ = ["default_workers", "run_in_processes"]

logger = logging.getLogger("aiodicom.export")

_BATCH: Final = 32
"""Items sent to a worker at a time, and results sent back at a time."""
_FLUSH_EVERY: Final = 0.05
"""Seconds a worker waits at most before sending the results it has."""
_STOP_GRACE: Final = 30.0
"""Seconds a stopped worker gets to abort its writes before it is killed."""
_TRAVELS: Final = frozenset({"path", "url"})
_POLL_EVERY: Final = 0.02
"""Seconds between looks at the parent's messages during a write."""
_AHEAD: Final = 32
"""Items a worker reads and names before the first of them is written."""
_AHEAD_BYTES: Final = 64 * 1024 * 1024
"""...unless their files add up to this much: large instances one at a time."""

ProgressCallback = Callable[[ExportProgress], object | Awaitable[object]]


def _start_method() -> str:
    """``fork`` while this process has a single thread (then nothing can be
    inherited half-way: no lock held by another thread), which starts a worker in
    milliseconds; ``spawn`` otherwise (a fresh interpreter, a few hundred ms)."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return "fork"
    return "spawn"


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------ worker side


def worker_main(
    connection: multiprocessing.connection.Connection,
    root: Root,
    options: ExportOptions,
) -> None:
    """The entry point of a worker process."""
    # Ctrl-C reaches the whole process group; the parent decides, and tells us to
    # stop cleanly (SIGTERM is the parent's too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ValueError):  # a forked child must not wake the parent's loop
        signal.set_wakeup_fd(-1)
    try:
        with stream_deferred_values():
            _BlockingWorker(connection, root, options).serve()
    finally:
        connection.close()


class _Stopped(BaseException):
    """The parent said stop: the write in progress is aborted, not reported."""


class _BlockingWorker:
    """A worker for local destinations: one item at a time, in the main thread.

    A process per core already uses the cores; inside one, threads would only
    take turns at the GIL (and make every message wait for it).  So items are
    read, named, claimed (one round trip to the parent) and written in a row,
    with the parent's messages read between items and between chunks.
    """

    def __init__(
        self,
        connection: multiprocessing.connection.Connection,
        root: Root,
        options: ExportOptions,
    ) -> None:
        self.connection = connection
        self.options = options
        self.run = Run(root, options, None, Tally(None))
        self.pending: deque[tuple[int, str, str]] = deque()
        self.answers: dict[int, str | BaseException] = {}
        self.ended = False
        self.stopped = False
        self.results: list[tuple[int, ItemResult, bool]] = []
        self.claims: list[tuple[int, str]] = []
        self.flushed = self.polled = time.monotonic()

    def serve(self) -> None:
        try:
            self._serve()
        finally:
            self.run.close()

    def _serve(self) -> None:
        storage = self.options.source_storage_options
        # named, claim sent, answer awaited; with the size its file counts for
        ahead: deque[tuple[int, Named, int]] = deque()
        ahead_bytes = 0
        try:
            while not self.stopped:
                # Read and name items ahead while the parent answers the claims of
                # those before: the round trip is hidden behind the reads.  Refilled
                # from half-empty, so claims go out as runs of items (one message
                # each way per run, not per item).
                refill = len(ahead) <= _AHEAD // 2
                while (
                    refill and self.pending and len(ahead) < _AHEAD and ahead_bytes < _AHEAD_BYTES
                ):
                    self._check_messages()
                    if self.stopped:
                        break
                    seq, kind, label = self.pending.popleft()
                    outcome = self.run.name_blocking(_source(kind, label, storage))
                    if not isinstance(outcome, Named):
                        result, there = outcome
                        self.results.append((seq, portable(result), there))
                        self.flush()  # unnamed: the parent may be waiting for it
                        continue
                    self.claims.append((seq, outcome.name))
                    size = _size(kind, label)
                    ahead.append((seq, outcome, size))
                    ahead_bytes += size
                self._send_claims()
                if self.stopped:
                    break
                if not ahead:
                    if self.pending:
                        continue
                    if self.ended:
                        break
                    self.flush()
                    self._handle(self._receive())
                    continue
                seq, named, size = ahead.popleft()
                ahead_bytes -= size
                try:
                    answer = self._answer(seq)
                    result, there = self.run.write_blocking(named, answer, self._check)
                except _Stopped:
                    break
                self.results.append((seq, portable(result), there))
                if len(self.results) >= _BATCH or time.monotonic() - self.flushed > _FLUSH_EVERY:
                    self.flush()
        except (EOFError, OSError):  # the parent is gone: nothing to report to
            return
        self.flush()
        self.connection.send(("done",))

    def _receive(self) -> tuple[Any, ...]:
        message: tuple[Any, ...] = self.connection.recv()
        return message

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "items":
            self.pending.extend(message[1])
        elif kind == "claims":
            self.answers.update(message[1])
        elif kind == "end":
            self.ended = True
        else:
            self.stopped = True

    def _poll(self) -> None:
        while self.connection.poll(0):
            self._handle(self._receive())
        self.polled = time.monotonic()

    def _check_messages(self) -> None:
        """Take the parent's messages if ``_POLL_EVERY`` seconds have passed since
        the last look (a system call each time: not at every item or chunk)."""
        if time.monotonic() - self.polled >= _POLL_EVERY:
            self._poll()

    def _check(self) -> None:
        """Between chunks: a stop from the parent aborts the write."""
        self._check_messages()
        if self.stopped:
            raise _Stopped

    def _answer(self, seq: int) -> str | BaseException:
        """The parent's answer to the claim of item `seq`: the name to write (the
        one claimed, or one with a suffix) or the error that refuses it."""
        self._send_claims()
        while seq not in self.answers:
            self._handle(self._receive())
            if self.stopped:
                raise _Stopped
        return self.answers.pop(seq)

    def _send_claims(self) -> None:
        """Ask for the names of the items read since the last time, in one message
        (one round trip for a run of items, not one each)."""
        if self.claims:
            claims, self.claims = self.claims, []
            self.connection.send(("claims", claims))

    def flush(self) -> None:
        if self.results:
            results, self.results = self.results, []
            self.connection.send(("results", results))
        self.flushed = time.monotonic()


def _size(kind: str, label: str) -> int:
    """The size of a source file (0 when unknown: URLs)."""
    if kind != "path":
        return 0
    try:
        return os.path.getsize(label)
    except OSError:
        return 0


def _source(kind: str, label: str, storage_options: dict[str, Any] | None) -> Source:
    """The item a worker was sent (only paths and URLs travel)."""
    if kind == "path":
        return Source(label, "path", label)
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(label, **(storage_options or {}))
    return Source(label, "url", (fs, path))


# ------------------------------------------------------------------------ parent side


@dataclass(eq=False)
class _Process:
    """One worker process, seen from the parent."""

    process: Any
    connection: multiprocessing.connection.Connection
    window: int
    outstanding: dict[int, str] = field(default_factory=dict)
    buffer: list[tuple[int, str, str]] = field(default_factory=list)
    """Items for this worker, held back to be sent as a batch."""
    done: bool = False
    stopped: bool = False

    @property
    def room(self) -> int:
        return 0 if self.done else self.window - len(self.outstanding)

    def send(self, message: tuple[Any, ...]) -> None:
        """Send `message` right away, from the event loop: messages are small (a
        batch of names, an answer to a claim), the worker reads its pipe between
        items and between chunks, and the window bounds what is in it, so this
        never waits long; no thread hop, and one sender, so no interleaving."""
        if self.done:
            return
        # a worker that died cannot be told anything; its listener reports its items
        with contextlib.suppress(OSError, EOFError):
            self.connection.send(message)

    def send_items(self) -> None:
        """Send the items held back (in order: they were added in order)."""
        if self.buffer:
            batch, self.buffer = self.buffer, []
            self.send(("items", batch))


async def run_in_processes(
    sources: Any,
    root: Root,
    options: ExportOptions,
    *,
    workers: int,
    progress: ProgressCallback | None,
    tally: Tally,
) -> ExportReport:
    """Export with `workers` worker processes; the report and progress are as for
    the single-process export."""
    pool = _Pool(root, options, workers, progress, tally)
    return await pool.run(sources)


class _Pool:
    def __init__(
        self,
        root: Root,
        options: ExportOptions,
        workers: int,
        progress: ProgressCallback | None,
        tally: Tally,
    ) -> None:
        self.root = root
        self.options = options
        self.workers = workers
        self.progress = progress
        self.tally = tally
        self.gate = _PoolGate(OrderedNames(options.on_conflict), self)
        self.remote: dict[int, _Process] = {}  # items whose claim a worker waits for
        self.processes: list[_Process] = []
        self.room = anyio.Event()
        self.all_done = anyio.Event()
        self.progress_lock = anyio.Lock()
        self.local = Run(root, options, None, self.tally, self.gate)
        self.repeated = RepeatedErrors()
        self.stopped_by: BaseException | None = None
        self.feed_scope = anyio.CancelScope()
        self.callback_error: BaseException | None = None
        # Items in flight over all workers: the user's concurrency, shared out.
        self.per_worker = max(1, -(-options.concurrency // workers))

    async def run(self, sources: Any) -> ExportReport:
        context: Any = multiprocessing.get_context(_start_method())
        for _ in range(self.workers):
            parent_end, child_end = context.Pipe(duplex=True)
            process = context.Process(
                target=worker_main,
                args=(child_end, self.root, self.options),
                daemon=True,
                name="aiodicom-export",
            )
            process.start()
            child_end.close()
            window = max(2 * self.per_worker, 2 * _BATCH)
            self.processes.append(_Process(process, parent_end, window))
        try:
            async with anyio.create_task_group() as listeners:
                for worker in self.processes:
                    listeners.start_soon(self._listen, worker)
                try:
                    with self.feed_scope:
                        async with anyio.create_task_group() as here:
                            await self._feed(sources, here)
                    if self.feed_scope.cancel_called:  # fail-fast, or the callback raised
                        await self._stop_all(listeners)
                    else:
                        for worker in self.processes:
                            worker.send(("end",))
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self._stop_all(listeners)
                    raise
        finally:
            with anyio.CancelScope(shield=True):
                await self._reap()
        if self.callback_error is not None:
            raise self.callback_error
        report = self.tally.report(dry_run=self.options.dry_run)
        if self.stopped_by is not None:
            raise self.repeated.stop_error(self.stopped_by, report)
        return report

    async def _feed(self, sources: Any, here: anyio.abc.TaskGroup) -> None:
        """Hand the sources out, in order, to whichever worker has room."""
        limiter = anyio.Semaphore(self.per_worker)
        seq = FIRST - 1
        storage = self.options.source_storage_options
        selection = selection_for(self.root, self.options)
        async with aclosing(iter_sources(sources, storage, selection)) as items:
            async for source in items:
                seq += 1
                if source.kind not in _TRAVELS or in_process_memory(source.label):
                    # datasets, file objects, errors, skipped, memory:// objects
                    if limiter.value == 0:
                        self.send_all()  # what waits here may wait for them
                    await limiter.acquire()
                    here.start_soon(self._here, source, seq, limiter)
                    continue
                worker = await self._worker_with_room()
                worker.outstanding[seq] = source.label
                worker.buffer.append((seq, source.kind, source.label))
                if len(worker.buffer) >= _BATCH or worker.room == 0:
                    worker.send_items()
        self.send_all()

    def send_all(self) -> None:
        """Send every item held back for a batch."""
        for worker in self.processes:
            worker.send_items()

    def lowest_held_back(self) -> int | None:
        """The first item held back for a batch, if any."""
        held = [worker.buffer[0][0] for worker in self.processes if worker.buffer]
        return min(held, default=None)

    async def _worker_with_room(self) -> _Process:
        while True:
            alive = [worker for worker in self.processes if not worker.done]
            if not alive:
                raise RuntimeError("every export worker process ended")
            best = max(alive, key=lambda worker: worker.room)
            if best.room > 0:
                return best
            self.send_all()  # nobody has room: send what waits
            self.room = anyio.Event()
            await self.room.wait()

    async def _here(self, source: Source, seq: int, limiter: anyio.Semaphore) -> None:
        """An item that cannot travel to a worker, exported in this process."""
        try:
            with encode_in_threads(), stream_deferred_values():
                result, there = await self.local.export_one(source, seq)
            await self._record(result, there)
        finally:
            limiter.release()

    async def _listen(self, worker: _Process) -> None:
        """Take one worker's messages until it is done (shielded: a listener must
        see every result, even while the export is being cancelled)."""
        with anyio.CancelScope(shield=True):
            try:
                await self._receive(worker)
            finally:
                worker.done = True
                self.room.set()
                if all(other.done for other in self.processes):
                    self.all_done.set()
                lost = list(worker.outstanding.values())
                for seq in worker.outstanding:
                    self.gate.resolve(seq)
                worker.outstanding.clear()
                worker.buffer.clear()
                if lost and not worker.stopped:
                    error = RuntimeError(
                        "the export worker process ended (exit status "
                        f"{worker.process.exitcode}) before this item was finished"
                    )
                    for label in lost:
                        await self._record(ItemResult(label, None, Status.FAILED, 0, 0.0, error))

    async def _receive(self, worker: _Process) -> None:
        connection = worker.connection
        while True:
            try:
                message = await anyio.to_thread.run_sync(connection.recv)
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "claims":
                for seq, _ in message[1]:
                    self.remote[seq] = worker
                self.gate.ask_many(message[1])
            elif kind == "results":
                for seq, result, there in message[1]:
                    worker.outstanding.pop(seq, None)
                    if result.destination is None:
                        self.gate.resolve(seq)  # finished without a name
                    await self._record(result, there)
                self.room.set()
            elif kind == "done":
                return

    async def _record(self, result: ItemResult, at_destination: bool = False) -> None:
        async with self.progress_lock:
            now = self.tally.add(result)
            if self.progress is not None and self.callback_error is None:
                try:
                    outcome = self.progress(now)
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception as exc:  # raised to the caller as it is, once stopped
                    self.callback_error = exc
                    self.feed_scope.cancel()
        if self.options.fail_fast and result.status is Status.FAILED:
            self.tally.stopped_early = True
            self.feed_scope.cancel()
        error = self.repeated.add(result, at_destination)
        if error is not None and self.stopped_by is None:
            self.stopped_by = error
            self.tally.stopped_early = True
            self.feed_scope.cancel()

    async def _stop_all(self, listeners: anyio.abc.TaskGroup) -> None:
        """Tell every running worker to stop (cleanly), and kill those that have
        not finished after a grace period."""
        self.tally.stopped_early = True
        for worker in self.processes:
            worker.stopped = True
            worker.send(("stop",))
        listeners.start_soon(self._kill_stragglers)

    async def _kill_stragglers(self) -> None:
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(_STOP_GRACE):
                await self.all_done.wait()
                return
            for worker in self.processes:
                if not worker.done:
                    logger.warning("aiodicom: an export worker did not stop in time; killed")
                    worker.process.kill()

    async def _reap(self) -> None:
        for worker in self.processes:
            process = worker.process
            await anyio.to_thread.run_sync(process.join, 10.0)
            if process.is_alive():
                process.kill()
                await anyio.to_thread.run_sync(process.join)
            worker.connection.close()


class _PoolGate(NameGate):
    """The names of an export over worker processes: answers to a worker's claim
    are sent to it; answers to the parent's own items wake them up.  When a claim
    waits for an item held back for a batch, the held-back items are sent."""

    def __init__(self, names: OrderedNames, pool: _Pool) -> None:
        super().__init__(names)
        self.pool = pool

    def ask_many(self, claims: list[tuple[int, str]]) -> None:
        """A worker's claims (a run of its items): answered through
        :meth:`_deliver`, one message per worker."""
        grants: list[Grant] = []
        for seq, name in claims:
            grants += self.names.ask(seq, name)
        self._deliver(grants)

    def _deliver(self, grants: list[Grant]) -> None:
        pool = self.pool
        here = []
        answers: dict[_Process, list[Grant]] = {}
        for seq, answer in grants:
            worker = pool.remote.pop(seq, None)
            if worker is None:
                here.append((seq, answer))
            else:
                answers.setdefault(worker, []).append((seq, answer))
        for worker, batch in answers.items():
            worker.send(("claims", batch))
        super()._deliver(here)
        if self.names.waiting:
            held = pool.lowest_held_back()
            if held is not None and held <= self.names.low:
                pool.send_all()
