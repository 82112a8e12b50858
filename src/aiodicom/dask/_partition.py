"""The worker side of :func:`aiodicom.dask.export`: export one partition.

A partition is a list (or lazy iterable) of sources: path and URL strings, or
datasets.  :func:`export_partition` runs the single-machine
:func:`aiodicom.export` on it, in an event loop of its own (``anyio.run``), and
returns a picklable :class:`PartitionOutcome`.  It never raises for a failed
item: item failures are results, as in the single-machine export.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import anyio

from .._errors import DestinationError
from .._export.destination import Root
from .._export.options import ExportOptions
from .._export.report import ExportReport, ItemResult, portable
from .._export.run import run_export

__all__ = ["Job", "PartitionOutcome", "export_partition", "forget_stop_flag", "stop_flag"]

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
        return PartitionOutcome([], 0.0, True, False, worker)
    started = time.perf_counter()
    options = replace(job.options, workers=1)  # the cluster's processes are the workers
    root = Root.parse(job.destination, options.storage_options, options.upload_options)
    try:
        report: ExportReport = anyio.run(
            partial(run_export, items, root, options, check_destination=False),
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
        time.perf_counter() - started,
        report.stopped_early,
        True,
        worker,
    )
