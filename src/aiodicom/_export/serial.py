"""An export of one item at a time, in one worker thread for the whole run.

With ``concurrency=1`` every item's work is blocking (read, name, claim, write),
and one thread hop per item cost more than it seems: measured on a 2-core
machine, handing each 0.5 MiB item to a worker thread and back made the run 1.3x
slower than doing the same work in one thread, mostly in waking threads and
handing the GIL over, twice per item.  Here one worker thread takes the items
from a queue the event loop keeps filled (up to ``_AHEAD`` sources ahead, when
they come from names or a list the caller gave: an iterable of the caller's is
pulled only as fast as items are done) and hands the results back in batches
(every ``_BATCH`` items or ``_BATCH_SECONDS``, and whenever it would wait), so
the event loop wakes a few times per hundred items.

What the batches must not change:

* **Stopping** (``fail_fast``, a run of destination errors, a progress callback
  that raises): a failed item is handed back alone and the thread waits until the
  loop has recorded it, so no item after it starts if it stopped the export.
  With a progress callback of the user's, every item is handed back that way:
  the callback hears of each item before the next one starts.
* **Cancellation**: an item being read or named is abandoned at once, an item
  being written is waited for (stopped at its next chunk and rolled back, or
  committed and counted), and every result the thread finished before is
  counted.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from .report import ItemResult, Status

if TYPE_CHECKING:
    from .run import Run
    from .sources import Source

_AHEAD: Final = 32
"""Sources queued for the worker thread beyond the one it works on."""

_BATCH: Final = 16
"""Results the thread keeps before waking the event loop..."""

_BATCH_SECONDS: Final = 0.02
"""... or seconds (the progress bar's delay at most)."""

_Result = tuple[int, ItemResult, bool]


class Serial:
    """The worker thread of one run and what it shares with the event loop (all
    of it under :attr:`cond`)."""

    def __init__(self, run: Run, *, ahead: bool) -> None:
        self.run = run
        self.ahead = ahead
        """Whether sources may be taken from the producer ahead of the items
        being done: not from an iterable of the caller's, which is pulled only as
        fast as items are exported."""
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[int, Source]] = collections.deque()
        self.input_ended = False
        self.stopping = False
        self.finished: collections.deque[_Result] = collections.deque()
        self.produced = 0
        self.recorded = 0
        self.hop: Hop | None = None
        self.thread_ended = False
        self.wake = anyio.Event()
        self.room = anyio.Event()
        self.every_item = run.progress is not None and not run.progress_may_lag

    # ------------------------------------------------------------- event loop

    async def work(self, receive: anyio.abc.ObjectReceiveStream[tuple[int, Source]]) -> None:
        """Export every item `receive` gives, one at a time."""
        async with receive, anyio.create_task_group() as group:
            group.start_soon(self._feed, receive)
            group.start_soon(self._record)
            try:
                await anyio.to_thread.run_sync(self._thread, abandon_on_cancel=True)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True):
                    await self._give_up()
                raise
            with self.cond:
                self.thread_ended = True
            self.wake.set()

    async def _feed(self, receive: anyio.abc.ObjectReceiveStream[tuple[int, Source]]) -> None:
        fed = 0
        while True:
            while True:  # room for one more?
                with self.cond:
                    # without `ahead`, pull only when every item fed so far is done
                    room = len(self.queue) < _AHEAD if self.ahead else self.recorded >= fed
                    if room:
                        break
                    self.room = anyio.Event()
                await self.room.wait()
            try:
                item = await receive.receive()
            except anyio.EndOfStream:
                break
            with self.cond:
                self.queue.append(item)
                self.cond.notify_all()
            fed += 1
        with self.cond:
            self.input_ended = True
            self.cond.notify_all()

    async def _record(self) -> None:
        while True:
            with self.cond:
                self.wake = anyio.Event()
                entry = self.finished.popleft() if self.finished else None
                ended = self.thread_ended
            if entry is None:
                if ended:
                    return
                await self.wake.wait()
                continue
            seq, result, there = entry
            await self.run.record(result, there, seq=seq)
            with self.cond:
                self.recorded += 1
                self.cond.notify_all()
            self.room.set()

    async def _give_up(self) -> None:
        """The export was cancelled: stop the thread, wait for a write it has
        started, and count every result it finished."""
        with self.cond:
            self.stopping = True
            hop = self.hop
            self.cond.notify_all()
        if hop is not None:
            with hop.lock:
                hop.abandoned = True
                writing = hop.writing
            if writing:
                await anyio.to_thread.run_sync(hop.done.wait)
        with self.cond:
            left = list(self.finished)
            self.finished.clear()
        for seq, result, _ in left:
            self.run._record_now(result, seq=seq)

    # ------------------------------------------------------------ the thread

    def _thread(self) -> None:
        last = time.monotonic()
        kept = 0
        while True:
            with self.cond:
                if not kept:
                    self.cond.wait_for(
                        lambda: bool(self.queue) or self.input_ended or self.stopping
                    )
                if self.stopping:
                    return
                item = self.queue.popleft() if self.queue else None
                ended = item is None and self.input_ended
            if item is None:  # nothing queued: hand the results over, then wait
                self._hand_over()
                if ended:
                    return
                kept, last = 0, time.monotonic()
                continue
            try:
                result = self._one(*item)
            except Abandoned:
                return
            kept += 1
            if self.every_item or result.status is Status.FAILED:
                self._hand_over(wait=True)
            elif kept >= _BATCH or time.monotonic() - last >= _BATCH_SECONDS:
                self._hand_over()
            else:
                continue
            kept, last = 0, time.monotonic()

    def _one(self, seq: int, source: Source) -> ItemResult:
        """Read, name, claim and write one item (its claim is decided at once:
        every earlier item is done); its result is in :attr:`finished` before
        the item is marked done."""
        from .run import Named

        run = self.run
        hop = Hop()
        with self.cond:
            if self.stopping:
                raise Abandoned
            self.hop = hop
        try:
            outcome = run.name_blocking(source)
            if isinstance(outcome, Named):
                with hop.lock:
                    if hop.abandoned:
                        raise Abandoned
                    answer = run.gate.claim_now(seq, outcome.name)
                outcome = run.write_blocking(outcome, answer, hop.check, hop.start_writing)
            with self.cond:
                self.finished.append((seq, *outcome))
                self.produced += 1
            return outcome[0]
        finally:
            hop.done.set()
            run.gate.resolve(seq)  # unless claimed (then nothing): it has no name
            with self.cond:
                self.hop = None

    def _hand_over(self, *, wait: bool = False) -> None:
        """Wake the event loop to record what is finished; with `wait`, until it
        has recorded all of it (or the export stops)."""
        with self.cond:
            if self.stopping:  # the loop counts what is finished itself
                return
        try:
            anyio.from_thread.run_sync(self._wake_loop)
        except RuntimeError:  # the event loop is gone: the run was abandoned
            return
        if wait:
            with self.cond:
                self.cond.wait_for(lambda: self.recorded >= self.produced or self.stopping)

    def _wake_loop(self) -> None:
        self.wake.set()  # the event the loop waits on now (read in the loop)


class Abandoned(BaseException):
    """Raised in a worker thread whose item the export gave up (cancelled):
    stop, and roll back the write if one was started."""


class Hop:
    """Between the event loop and the thread of one item of
    :class:`Serial`: whether the loop gave the item up, whether the thread is
    writing (and may no longer be given up), whether it is done."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.abandoned = False
        self.writing = False
        self.done = threading.Event()

    def start_writing(self) -> None:
        """Before anything is written: stop if the item was given up, else
        from now on the loop waits for the thread."""
        with self.lock:
            if self.abandoned:
                raise Abandoned
            self.writing = True

    def check(self) -> None:
        """Between the chunks of the write: stop it if the item was given up."""
        if self.abandoned:
            raise Abandoned
