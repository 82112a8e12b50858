"""What :func:`aiodicom.export` reports: one result per item, and a summary."""

from __future__ import annotations

import enum
import json
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

from .._checksum import Checksum
from .._errors import DuplicateDestinationError, RemoteError

__all__ = [
    "ExportProgress",
    "ExportReport",
    "ItemResult",
    "JsonLinesReport",
    "Status",
    "Tally",
    "TakenNames",
    "describe_error",
    "format_bytes",
    "portable",
]


class Status(str, enum.Enum):
    """What happened to one item."""

    WRITTEN = "written"
    """The destination was written."""
    SKIPPED = "skipped"
    """Nothing was written and that is fine: the destination already existed
    (``skip_existing=True``).  :attr:`ItemResult.error` says why."""
    FAILED = "failed"
    """The item could not be read, named or written; :attr:`ItemResult.error` says why."""
    PLANNED = "planned"
    """Dry run: the item was read and named, and would be written."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The outcome of exporting one item.

    Attributes
    ----------
    source : str
        Where the item came from: a path, a URL, or ``<Dataset SOPInstanceUID>``.
    destination : str or None
        Where it went (or would go, or would have gone); ``None`` if it could not
        be named.
    status : Status
        Written, skipped, failed or (dry run) planned.
    bytes : int
        Bytes written (0 unless written).
    seconds : float
        Time spent on this item: reading, naming and writing.
    error : BaseException or None
        Why it failed or was skipped; ``None`` otherwise.
    checksum : Checksum or None
        The checksum of the bytes written, computed while writing (``None`` unless
        written, or with ``checksum=None``).
    verified : bool
        ``True`` if ``verify=True`` read the stored object back (its checksum as
        the store keeps it, or its bytes) and found this checksum.
    """

    source: str
    destination: str | None
    status: Status
    bytes: int = 0
    seconds: float = 0.0
    error: BaseException | None = None
    checksum: Checksum | None = None
    verified: bool = False

    @property
    def ok(self) -> bool:
        """``True`` unless the item failed."""
        return self.status is not Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary (the error as ``"Type: message"``, the checksum
        as ``checksum_algorithm`` and ``checksum``, its hexadecimal value)."""
        checksum = self.checksum
        return {
            "source": self.source,
            "destination": self.destination,
            "status": self.status.value,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 6),
            "error": describe_error(self.error) if self.error is not None else None,
            "checksum_algorithm": checksum.algorithm if checksum is not None else None,
            "checksum": checksum.hex if checksum is not None else None,
            "verified": self.verified,
        }


def describe_error(error: BaseException) -> str:
    """``"Type: message"``, in one line (without a traceback that the message
    carries: pydicom puts one in some of its errors)."""
    message = str(error).split("Traceback (most recent call last)", 1)[0]
    message = " ".join(message.split())
    name = type(error).__name__
    return f"{name}: {message}" if message else name


@dataclass(frozen=True, slots=True)
class ExportProgress:
    """Passed to the ``progress`` callback after each item.

    Attributes
    ----------
    item : ItemResult
        The item that just finished.
    done, written, skipped, failed : int
        Items finished so far, in total and by status (``planned`` items count
        as ``written`` in a dry run).
    bytes_written : int
        Bytes written so far.
    elapsed : float
        Seconds since the export started.
    total : int or None
        The number of items, if the caller said (``export(total=...)``).
    """

    item: ItemResult
    done: int
    written: int
    skipped: int
    failed: int
    bytes_written: int
    elapsed: float
    total: int | None


@dataclass(frozen=True)
class ExportReport:
    """The outcome of :func:`aiodicom.export`.

    Attributes
    ----------
    items : list of ItemResult
        One per item, in the order they finished; only the failed ones when the
        export was run with ``keep_items=False`` (the counts below still cover
        every item).
    seconds : float
        Wall-clock time of the whole export.
    stopped_early : bool
        ``True`` if ``fail_fast`` stopped the export at the first failure (items
        in flight then were cancelled and left nothing behind; they are not
        listed) or if the export was interrupted.
    dry_run : bool
        ``True`` if nothing was meant to be written.
    counts : mapping of Status to int, optional
        Items per status, when `items` does not hold them all (computed from
        `items` otherwise).
    total_bytes : int, optional
        Bytes written, likewise.
    """

    items: list[ItemResult]
    seconds: float
    stopped_early: bool = False
    dry_run: bool = False
    counts: Mapping[Status, int] | None = field(default=None, repr=False)
    total_bytes: int | None = field(default=None, repr=False)
    _counts: dict[Status, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = dict.fromkeys(Status, 0)
        if self.counts is not None:
            counts.update(self.counts)
        else:
            for item in self.items:
                counts[item.status] += 1
        object.__setattr__(self, "_counts", counts)

    @property
    def written(self) -> int:
        """Items written (in a dry run: items that would be written)."""
        return self._counts[Status.WRITTEN] + self._counts[Status.PLANNED]

    @property
    def skipped(self) -> int:
        """Items skipped because their destination existed."""
        return self._counts[Status.SKIPPED]

    @property
    def failed(self) -> int:
        """Items that failed."""
        return self._counts[Status.FAILED]

    @property
    def bytes_written(self) -> int:
        """Bytes written, over all items."""
        if self.total_bytes is not None:
            return self.total_bytes
        return sum(item.bytes for item in self.items)

    @property
    def done(self) -> int:
        """Items finished, whatever their status."""
        return sum(self._counts.values())

    @property
    def throughput(self) -> float:
        """Bytes written per second of wall-clock time."""
        return self.bytes_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def failures(self) -> Sequence[ItemResult]:
        """The items that failed."""
        return [item for item in self.items if item.status is Status.FAILED]

    @property
    def ok(self) -> bool:
        """``True`` if no item failed and the export ran to the end."""
        return self.failed == 0 and not self.stopped_early

    def summary(self) -> str:
        """One line: counts, bytes, time and throughput."""
        verb = "would write" if self.dry_run else "written"
        text = (
            f"{self.written} {verb}, {self.skipped} skipped, {self.failed} failed; "
            f"{format_bytes(self.bytes_written)} in {self.seconds:.2f} s"
        )
        if not self.dry_run and self.seconds > 0:
            rate = self.written / self.seconds
            text += f" ({format_bytes(self.throughput)}/s, {rate:.1f} items/s)"
        if self.stopped_early:
            text += "; stopped early"
        return text

    def summary_dict(self) -> dict[str, Any]:
        """The counts, bytes and time, JSON-ready."""
        return {
            "written": self.written,
            "skipped": self.skipped,
            "failed": self.failed,
            "bytes_written": self.bytes_written,
            "seconds": round(self.seconds, 6),
            "bytes_per_second": round(self.throughput, 1),
            "stopped_early": self.stopped_early,
            "dry_run": self.dry_run,
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: a ``summary`` and the ``items``."""
        return {
            "summary": self.summary_dict(),
            "items": [item.to_dict() for item in self.items],
        }


class JsonLinesReport:
    """The streamed report: one JSON object per item, written as the item finishes,
    then one ``{"summary": {...}}`` line.  Memory does not grow with the number of
    items, and an export that is stopped by force still leaves a line per item it
    finished.

    A reader that goes away (``--report - | head``) stops the report, never the
    export: the lines are then dropped, and the export goes on to its end.

    Parameters
    ----------
    stream : text file
        Where the lines go (a file, or standard output).
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream: TextIO | None = stream
        self._last_flush = time.monotonic()

    def item(self, item: ItemResult) -> None:
        """Write the line of one finished item (flushed at least once a second)."""
        now = time.monotonic()
        self._write(json.dumps(item.to_dict()) + "\n", flush=now - self._last_flush >= 1.0)
        if now - self._last_flush >= 1.0:
            self._last_flush = now

    def finish(self, report: ExportReport) -> None:
        """Write the summary line and flush."""
        self._write(json.dumps({"summary": report.summary_dict()}) + "\n", flush=True)

    def _write(self, line: str, *, flush: bool) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            stream.write(line)
            if flush:
                stream.flush()
        except BrokenPipeError:
            self._stream = None
            _silence(stream)


def _silence(stream: TextIO) -> None:
    """Point a broken standard stream at /dev/null, so that nothing written to it
    later (a summary, Python's own flush at exit) fails again."""
    import os

    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError):
        pass


def format_bytes(count: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def portable(item: ItemResult) -> ItemResult:
    """`item`, with its error replaced by a :class:`~aiodicom.RemoteError` if the
    error cannot be pickled: results travel back from worker processes (the
    export's own and Dask's)."""
    error = item.error
    if error is None:
        return item
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return replace(item, error=RemoteError(describe_error(error)))
    return item


class Tally:
    """The running counts of one export: items by status, bytes, progress.

    The one tally of every way to run an export (one process, Dask): each
    finished item is :meth:`add`-ed, which returns what the ``progress``
    callback gets.
    """

    def __init__(
        self,
        total: int | None,
        started: float | None = None,
        *,
        keep_items: bool = True,
        on_item: Callable[[ItemResult], object] | None = None,
    ) -> None:
        self.total = total
        self.started = time.perf_counter() if started is None else started
        self.keep_items = keep_items
        self.on_item = on_item
        self.items: list[ItemResult] = []
        self.counts = dict.fromkeys(Status, 0)
        self.done = 0
        self.bytes_written = 0
        self.stopped_early = False

    def add(self, item: ItemResult) -> ExportProgress:
        """Count `item` (keep it, unless told to keep only failures; hand it to
        `on_item`, which writes the streamed report); return the progress."""
        if self.keep_items or item.status is Status.FAILED:
            self.items.append(item)
        self.done += 1
        self.counts[item.status] += 1
        self.bytes_written += item.bytes
        if self.on_item is not None:
            self.on_item(item)
        return self._progress(item)

    def amend(self, index: int, item: ItemResult) -> ExportProgress:
        """Put `item` in place of the `index`-th item kept (a later, final result
        of the same item: a Dask export settles name clashes between partitions
        at the end); the counts follow, `done` does not grow.  Needs
        ``keep_items``.  Returns the progress."""
        old = self.items[index]
        self.items[index] = item
        self.counts[old.status] -= 1
        self.counts[item.status] += 1
        self.bytes_written += item.bytes - old.bytes
        return self._progress(item)

    def _progress(self, item: ItemResult) -> ExportProgress:
        counts = self.counts
        return ExportProgress(
            item=item,
            done=self.done,
            written=counts[Status.WRITTEN] + counts[Status.PLANNED],
            skipped=counts[Status.SKIPPED],
            failed=counts[Status.FAILED],
            bytes_written=self.bytes_written,
            elapsed=time.perf_counter() - self.started,
            total=self.total,
        )

    @property
    def failed(self) -> int:
        """Items failed so far."""
        return self.counts[Status.FAILED]

    def report(self, *, dry_run: bool) -> ExportReport:
        """The report of everything added so far."""
        return ExportReport(
            items=self.items,
            seconds=time.perf_counter() - self.started,
            stopped_early=self.stopped_early,
            dry_run=dry_run,
            counts=dict(self.counts),
            total_bytes=self.bytes_written,
        )


class TakenNames:
    """The one duplicate-destination check: each destination may be claimed once."""

    def __init__(self) -> None:
        self._taken: set[str] = set()

    def claim(self, name: str, *, by: str = "another item of this export") -> None:
        """Take `name`, or raise :class:`~aiodicom.DuplicateDestinationError` if
        it was taken already (`by` says by whom, for the message)."""
        if name in self._taken:
            raise DuplicateDestinationError(f"{by} was already named {name!r}")
        self._taken.add(name)
