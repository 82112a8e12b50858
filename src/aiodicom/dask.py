"""Bulk export on a Dask cluster, when one machine is not enough.

:func:`export` splits the sources into partitions and runs the single-machine
:func:`aiodicom.export` of each partition on a Dask worker, each in an event
loop of its own, then gathers one :class:`~aiodicom.ExportReport`.  Needs the
``aiodicom[dask]`` extra.  See the "Dask" page of the documentation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Final

import dask.base
import dask.callbacks
from dask.delayed import Delayed, delayed

from ._dask_partition import (
    Job,
    PartitionOutcome,
    RemoteError,
    export_partition,
    forget_stop_flag,
    stop_flag,
)
from ._dask_plan import Partition, plan
from ._export_destination import Root
from ._export_report import ExportProgress, ExportReport, ItemResult, Status, describe_error
from ._export_template import DEFAULT_TEMPLATE, Template
from .export import DuplicateDestinationError

__all__ = ["PartitionError", "RemoteError", "export"]

DEFAULT_PARTITION_SIZE: Final = 256
"""Items per Dask task unless told otherwise."""

_KEY_PREFIX: Final = "aiodicom-export"

# Parts of dask and distributed without type annotations.
_compute: Any = dask.base.compute
_Callback: Any = dask.callbacks.Callback


class PartitionError(RuntimeError):
    """The Dask task exporting this item did not finish.

    Its worker died more often than Dask allows (``KilledWorker``), the cluster
    was restarted, or the task was cancelled.  Nothing half-written is left at
    any destination; items of the partition that were written before the task
    was lost are in place, complete.  Run the export again with
    ``skip_existing=True`` to finish it.
    """


def export(
    sources: Any,
    destination: Any,
    *,
    client: Any = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    concurrency: int = 16,
    template: str | Callable[[Any], Any] | Template = DEFAULT_TEMPLATE,
    exist_ok: bool = True,
    skip_existing: bool = False,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
    upload_options: Mapping[str, Any] | None = None,
    force: bool = False,
    enforce_file_format: bool = False,
    dry_run: bool = False,
    fail_fast: bool = False,
    progress: Callable[[ExportProgress], object] | None = None,
    backend: str = "asyncio",
) -> ExportReport:
    """Export many DICOM datasets on a Dask cluster; one report for all.

    The sources are split into partitions of `partition_size` items.  Each
    partition is one Dask task: a worker runs :func:`aiodicom.export` on it in a
    new event loop (``anyio.run``) with the same `concurrency`, `exist_ok`,
    `skip_existing` and upload retries as a single-machine export, and writes
    the same bytes as :func:`pydicom.dcmwrite`.  Blocks until every partition
    has finished; call it from synchronous code (or from a worker thread).

    Parameters
    ----------
    sources
        Paths, folders (searched recursively), globs and fsspec URLs (of files,
        prefixes or globs), datasets, or an iterable of these: expanded *on the
        client* into one path or URL string per item (local paths made
        absolute), which is what travels to the workers; the workers read the
        files themselves.  Datasets in memory are pickled to the workers.  Or a
        :class:`dask.bag.Bag` of paths, URLs or datasets, whose items are
        produced on the workers (one task per bag partition; `partition_size`
        does not apply).  File objects cannot travel and fail.
    destination : str or os.PathLike
        A folder every worker can reach (a shared filesystem) or an fsspec URL
        prefix (``"s3://bucket/exports"``).
    client : distributed.Client, optional
        The cluster to run on.  Default: the current default client if there is
        one, else Dask's local threaded scheduler (one process; useful to try a
        pipeline, slower than :func:`aiodicom.export` on one machine).
    partition_size : int, optional
        Items per task (default 256).  Larger partitions cost less scheduling;
        smaller ones spread better and lose less work when a worker dies.
    concurrency : int, optional
        Items in flight *per task* (default 16).  A worker with ``nthreads``
        threads runs that many tasks at once, so up to ``workers x nthreads x
        concurrency`` items are in flight on the cluster.
    template, exist_ok, skip_existing, storage_options, source_storage_options
        As for :func:`aiodicom.export`.
    upload_options, force, enforce_file_format, dry_run
        As for :func:`aiodicom.export`.  The options are pickled into every task
        (so credentials in them reach the scheduler and the workers); with
        ``None``, each worker uses its own environment's credentials.
    fail_fast : bool, optional
        Stop at the first failed item: the partition where it happened stops
        (items in flight there leave nothing behind), no further partition is
        started, and partitions already running finish theirs.  The report says
        ``stopped_early``; items never started are not listed.
    progress : callable, optional
        Called in the calling thread with an :class:`~aiodicom.ExportProgress`
        per item, as the partitions come back (so in bursts).
    backend : {"asyncio", "trio"}, optional
        The event loop each task runs (default ``"asyncio"``).

    Returns
    -------
    ExportReport
        One result per item, partitions in the order they finished.  Items of a
        partition whose task did not finish fail with :class:`PartitionError`
        (for a bag partition, one result stands for the whole partition, since
        its items are only known on the workers).  Two items named the same
        destination in different partitions are both exported by their workers;
        the later one reported is marked failed with
        :class:`~aiodicom.export.DuplicateDestinationError`.

    Raises
    ------
    TemplateError
        If `template` is unusable (before anything runs).
    TypeError, ValueError
        For an unusable `destination`, `client`, `concurrency` or
        `partition_size` (before anything runs).
    """
    for name, value in (("concurrency", concurrency), ("partition_size", partition_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
    naming = template if isinstance(template, Template) else Template(template)
    root = Root.parse(destination, storage_options, upload_options)
    client = _client(client)
    job = Job(
        destination=root.location,
        template=naming,
        concurrency=concurrency,
        exist_ok=exist_ok,
        skip_existing=skip_existing,
        storage_options=storage_options,
        source_storage_options=source_storage_options,
        upload_options=dict(upload_options) if upload_options else None,
        force=force,
        enforce_file_format=enforce_file_format,
        dry_run=dry_run,
        fail_fast=fail_fast,
        backend=backend,
        stop_token=uuid.uuid4().hex,
    )
    started = time.perf_counter()
    the_plan = plan(sources, partition_size, source_storage_options)
    gather = _Gather(progress, the_plan.total, started, fail_fast)
    for item in the_plan.rejected:
        gather.add([item])
    tasks = [_task(partition, job) for partition in the_plan.partitions]
    try:
        if client is None:
            _run_local(tasks, the_plan.partitions, job, gather)
        else:
            _run_distributed(client, tasks, the_plan.partitions, gather)
    finally:
        forget_stop_flag(job.stop_token)
    return ExportReport(
        items=gather.items,
        seconds=time.perf_counter() - started,
        stopped_early=gather.stopped_early,
        dry_run=dry_run,
    )


def _client(client: Any) -> Any:
    """`client`, the default distributed client, or ``None`` (local scheduler)."""
    if client is None:
        try:
            import distributed
        except ImportError:
            return None
        default_client: Any = distributed.default_client
        try:
            return default_client()
        except ValueError:
            return None
    try:
        from distributed import Client
    except ImportError:
        raise TypeError(
            "client must be a distributed.Client (install dask[distributed])"
        ) from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client, not {type(client).__name__}")
    if client.asynchronous:
        raise TypeError("client must be a synchronous distributed.Client (asynchronous=False)")
    return client


def _task(partition: Partition, job: Job) -> Delayed:
    key = f"{_KEY_PREFIX}-{partition.index}-{job.stop_token}"
    task: Delayed = delayed(export_partition, pure=False)(partition.refs, job, dask_key_name=key)
    return task


class _Gather:
    """Collects partition outcomes into one list of items, with progress."""

    def __init__(
        self,
        progress: Callable[[ExportProgress], object] | None,
        total: int | None,
        started: float,
        fail_fast: bool,
    ) -> None:
        self.progress = progress
        self.total = total
        self.started = started
        self.fail_fast = fail_fast
        self.items: list[ItemResult] = []
        self.taken: set[str] = set()
        self.counts = dict.fromkeys(Status, 0)
        self.bytes_written = 0
        self.stopped_early = False
        self.done: set[int] = set()

    @property
    def stop(self) -> bool:
        """Whether no further partition should start."""
        return self.fail_fast and self.counts[Status.FAILED] > 0

    def outcome(self, partition: Partition, outcome: PartitionOutcome) -> None:
        """Record what a finished task sent back."""
        self.done.add(partition.index)
        self.stopped_early |= outcome.stopped_early
        self.add([self._deduplicated(item) for item in outcome.items])

    def lost(self, partition: Partition, error: BaseException) -> None:
        """Record a task that did not finish."""
        self.done.add(partition.index)
        lost = PartitionError(
            f"the Dask task of {partition.name} did not finish ({describe_error(error)}); "
            "nothing is half-written; run again with skip_existing=True to complete"
        )
        lost.__cause__ = error
        self.add(partition.unfinished(lost))

    def _deduplicated(self, item: ItemResult) -> ItemResult:
        name = item.destination
        if name is None or item.status is Status.FAILED:
            return item
        if name in self.taken:
            return ItemResult(
                item.source,
                name,
                Status.FAILED,
                0,
                item.seconds,
                DuplicateDestinationError(
                    f"an item of another partition was also named {name!r}; "
                    "it holds one of the two"
                ),
            )
        self.taken.add(name)
        return item

    def add(self, items: list[ItemResult]) -> None:
        for item in items:
            self.items.append(item)
            self.counts[item.status] += 1
            self.bytes_written += item.bytes
            if self.progress is not None:
                counts = self.counts
                self.progress(
                    ExportProgress(
                        item=item,
                        done=len(self.items),
                        written=counts[Status.WRITTEN] + counts[Status.PLANNED],
                        skipped=counts[Status.SKIPPED],
                        failed=counts[Status.FAILED],
                        bytes_written=self.bytes_written,
                        elapsed=time.perf_counter() - self.started,
                        total=self.total,
                    )
                )


def _run_local(
    tasks: list[Delayed], partitions: list[Partition], job: Job, gather: _Gather
) -> None:
    """Run on Dask's local scheduler, recording each partition as it finishes."""
    by_key = {task.key: partition for task, partition in zip(tasks, partitions, strict=True)}
    flag = stop_flag(job.stop_token)

    def posttask(key: Any, result: Any, *_: Any) -> None:
        partition = by_key.get(key)
        if partition is None or partition.index in gather.done:
            return
        gather.outcome(partition, result)
        if gather.stop:
            flag.set()
            gather.stopped_early = True

    try:
        with _Callback(posttask=posttask):
            results = _compute(*tasks)
    except Exception as exc:
        for partition in partitions:
            if partition.index not in gather.done:
                gather.lost(partition, exc)
        return
    for partition, result in zip(partitions, results, strict=True):
        if partition.index not in gather.done:
            gather.outcome(partition, result)


def _run_distributed(
    client: Any, tasks: list[Delayed], partitions: list[Partition], gather: _Gather
) -> None:
    """Run on a cluster, keeping a bounded number of tasks submitted at once."""
    import distributed

    as_completed: Any = distributed.as_completed
    window = max(4, 2 * sum(client.nthreads().values()))
    queue = iter(zip(tasks, partitions, strict=True))
    running: dict[str, Partition] = {}
    finished: Any = as_completed(loop=client.loop)

    def submit() -> None:
        for task, partition in queue:
            future = client.compute(task)
            running[future.key] = partition
            finished.add(future)
            return

    for _ in range(window):
        submit()
    try:
        for future in finished:
            partition = running.pop(future.key)
            try:
                outcome = future.result()
            except Exception as exc:
                gather.lost(partition, exc)
            else:
                gather.outcome(partition, outcome)
            future.release()
            if gather.stop:
                gather.stopped_early = True
            else:
                submit()
    except BaseException:
        client.cancel([*finished.futures])
        raise
