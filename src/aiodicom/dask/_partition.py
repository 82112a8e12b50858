"""The worker side of :func:`aiodicom.dask.export`: export one partition.

A partition is a list (or lazy iterable) of sources: path and URL strings, or
datasets.  :func:`export_partition` runs the single-machine
:func:`aiodicom.export` on it, in an event loop of its own (``anyio.run``), and
returns a picklable :class:`PartitionOutcome`.  It never raises for a failed
item: item failures are results, as in the single-machine export.

Each outcome also says what every item asked to be named and what its partition
granted it, so that the client can settle the name clashes *between* partitions
in source order afterwards; :func:`export_again` then exports the items whose
name that changes (see :mod:`._clashes`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable
from contextlib import aclosing
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import anyio

from .._driver import encode_in_threads, stream_deferred_values
from .._errors import DestinationError
from .._export.claims import FIRST, NameGate, OrderedNames, RecordedNames
from .._export.destination import Root
from .._export.options import ExportOptions
from .._export.report import ExportReport, ItemResult, Tally, portable
from .._export.run import Run, run_export, selection_for
from .._export.sources import iter_sources

__all__ = [
    "Claim",
    "Job",
    "PartitionOutcome",
    "Pick",
    "export_again",
    "export_partition",
    "forget_stop_flag",
    "stop_flag",
]

Claim = tuple[int, str, "str | None"]
"""``(seq, asked, granted)``: an item's place in its partition, the name it
asked for, and the name its partition gave it (``None``: refused, a duplicate)."""

Pick = tuple[int, str, bool]
"""``(seq, name, overwrite)``: export the partition's item `seq` again, under
`name`, overwriting what is there if `overwrite` (else as the export says)."""

_STOP_FLAGS: dict[str, threading.Event] = {}
_STOP_LOCK = threading.Lock()


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to export a partition (pickled into each task)."""

    destination: Any  # the root's location, or the callable that makes sinks
    options: ExportOptions
    backend: str
    stop_token: str


@dataclass(frozen=True)
class PartitionOutcome:
    """What a worker sends back for one partition."""

    items: list[ItemResult]
    claims: list[Claim | None]
    """One per item: its claim on a name (``None``: it claimed none)."""
    seconds: float
    stopped_early: bool
    started: bool
    worker: str


def stop_flag(token: str) -> threading.Event:
    """The in-process flag that tells partitions of export `token` not to start.

    Only partitions running in this process see it (with the local threaded
    scheduler: all of them; on a cluster: those of one worker process); a
    distributed export also stops by not submitting more partitions.
    """
    with _STOP_LOCK:
        return _STOP_FLAGS.setdefault(token, threading.Event())


def forget_stop_flag(token: str) -> None:
    """Drop the flag of a finished export."""
    with _STOP_LOCK:
        _STOP_FLAGS.pop(token, None)


def export_partition(items: Iterable[Any], job: Job) -> PartitionOutcome:
    """Export `items` with :func:`aiodicom.export` in a new event loop (blocking).

    Parameters
    ----------
    items : iterable
        Sources: path or URL strings, datasets, or anything
        :func:`aiodicom.export` accepts that could travel to this worker.
    job : Job
        The export settings.

    Returns
    -------
    PartitionOutcome
        The item results (errors made picklable) and the partition's time.
    """
    worker = f"{socket.gethostname()}:{os.getpid()}"
    with _STOP_LOCK:
        flag = _STOP_FLAGS.get(job.stop_token)
    if flag is not None and flag.is_set():
        return PartitionOutcome([], [], 0.0, True, False, worker)
    started = time.perf_counter()
    options = replace(job.options, workers=1)  # the cluster's processes are the workers
    root = Root.parse(job.destination, options.storage_options, options.upload_options)
    names = RecordedNames(options.on_conflict)
    positions: list[int | None] = []
    try:
        report: ExportReport = anyio.run(
            partial(
                run_export,
                items,
                root,
                options,
                check_destination=False,
                names=names,
                positions=positions,
            ),
            backend=job.backend,
        )
    except DestinationError as exc:  # a run of destination errors stopped it
        if exc.report is None:
            raise
        report = exc.report  # stopped_early; other partitions count their own
    if options.fail_fast and report.failed:
        stop_flag(job.stop_token).set()  # other partitions in this process do not start
    return PartitionOutcome(
        [portable(item) for item in report.items],
        [_claim(seq, names) for seq in positions],
        time.perf_counter() - started,
        report.stopped_early,
        True,
        worker,
    )


def _claim(seq: int | None, names: RecordedNames) -> Claim | None:
    if seq is None or seq not in names.asked:
        return None
    granted = names.granted.get(seq)
    return seq, names.asked[seq], granted if isinstance(granted, str) else None


def export_again(
    items: Iterable[Any], picks: list[Pick], job: Job
) -> list[tuple[int, ItemResult]]:
    """Export some items of a partition again, each under the name the client
    settled on (blocking, in a new event loop).

    Parameters
    ----------
    items : iterable
        The partition's sources, as :func:`export_partition` had them (listed
        again, so the sequence numbers mean the same items).
    picks : list of Pick
        Which items, under which names, and whether to overwrite.
    job : Job
        The export settings.

    Returns
    -------
    list of (seq, ItemResult)
        The new result of each item found (errors made picklable).
    """
    options = replace(job.options, workers=1)
    root = Root.parse(job.destination, options.storage_options, options.upload_options)
    results = anyio.run(partial(_export_again, items, picks, root, options), backend=job.backend)
    return [(seq, portable(item)) for seq, item in results]


class _Given(NameGate):
    """A name gate that gives each item the name the client settled on."""

    def __init__(self, names: dict[int, str]) -> None:
        super().__init__(OrderedNames())
        self.given = names

    async def claim(self, seq: int, name: str) -> str:
        return self.given[seq]

    def resolve(self, seq: int) -> None:
        pass


async def _export_again(
    items: Iterable[Any], picks: list[Pick], root: Root, options: ExportOptions
) -> list[tuple[int, ItemResult]]:
    wanted = {seq: overwrite for seq, _, overwrite in picks}
    gate = _Given({seq: name for seq, name, _ in picks})
    runs = {
        overwrite: Run(
            root,
            # this export's own output: exist_ok=False / skip_existing do not apply to it
            replace(options, exist_ok=True, skip_existing=False) if overwrite else options,
            None,
            Tally(None),
            gate,
        )
        for overwrite in set(wanted.values())
    }
    found: list[tuple[int, ItemResult]] = []
    selection = selection_for(root, options)
    sources = iter_sources(items, options.source_storage_options, selection)
    try:
        with encode_in_threads(), stream_deferred_values():
            async with aclosing(sources) as listed:
                seq = FIRST
                async for source in listed:
                    if seq in wanted:
                        result, _ = await runs[wanted.pop(seq)].export_one(source, seq)
                        found.append((seq, result))
                        if not wanted:
                            break
                    seq += 1
    finally:
        for run in runs.values():
            run.close()
    return found
