"""The worker side of :func:`aiodicom.dask.export`: export one partition.

A partition is a list (or lazy iterable) of sources: path and URL strings, or
datasets.  :func:`export_partition` runs the single-machine
:func:`aiodicom.export` on it, in an event loop of its own (``anyio.run``), and
returns a picklable :class:`PartitionOutcome`.  It never raises for a failed
item: item failures are results, as in the single-machine export.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import anyio

from ._export_report import ExportReport, ItemResult, describe_error
from ._export_template import Template
from .export import export

__all__ = ["Job", "PartitionOutcome", "RemoteError", "export_partition", "stop_flag"]

_STOP_FLAGS: dict[str, threading.Event] = {}
_STOP_LOCK = threading.Lock()


class RemoteError(Exception):
    """Stands for an item's error that could not be sent back from the worker.

    Its message is ``"Type: message"`` of the original exception.
    """


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to export a partition (pickled into each task)."""

    destination: str
    template: Template
    concurrency: int
    exist_ok: bool
    skip_existing: bool
    storage_options: dict[str, Any] | None
    source_storage_options: dict[str, Any] | None
    upload_options: dict[str, Any] | None
    force: bool
    enforce_file_format: bool
    dry_run: bool
    fail_fast: bool
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
    run = partial(
        export,
        items,
        job.destination,
        template=job.template,
        concurrency=job.concurrency,
        exist_ok=job.exist_ok,
        skip_existing=job.skip_existing,
        storage_options=job.storage_options,
        source_storage_options=job.source_storage_options,
        upload_options=job.upload_options,
        force=job.force,
        enforce_file_format=job.enforce_file_format,
        dry_run=job.dry_run,
        fail_fast=job.fail_fast,
    )
    report: ExportReport = anyio.run(run, backend=job.backend)
    if job.fail_fast and report.failed:
        stop_flag(job.stop_token).set()  # other partitions in this process do not start
    return PartitionOutcome(
        [_portable(item) for item in report.items],
        time.perf_counter() - started,
        report.stopped_early,
        True,
        worker,
    )


def _portable(item: ItemResult) -> ItemResult:
    """`item`, with its error replaced by a :class:`RemoteError` if it cannot be pickled."""
    error = item.error
    if error is None:
        return item
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        stand_in = RemoteError(describe_error(error))
        return replace(item, error=stand_in)
    return item
