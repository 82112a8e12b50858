"""Bulk export on a Dask cluster, when one machine is not enough.

:func:`export` splits the sources into partitions and runs the single-machine
:func:`aiodicom.export` of each partition on a Dask worker, each in an event
loop of its own, then gathers one :class:`~aiodicom.ExportReport`.  Needs the
``aiodicom[dask]`` extra.  See the "Dask" page of the documentation.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal

import dask.base
import dask.callbacks
from dask.delayed import Delayed, delayed

from .._errors import PartitionError, RemoteError
from .._export.destination import Root
from .._export.naming import DEFAULT_TEMPLATE, Template
from .._export.options import ExportOptions, Transform, check_positive
from .._export.report import (
    ExportProgress,
    ExportReport,
    ItemResult,
    Tally,
    describe_error,
)
from .._export.run import selection_for
from ._clashes import Claimed, Settlement, settle
from ._partition import (
    Job,
    PartitionOutcome,
    Pick,
    export_again,
    export_partition,
    forget_stop_flag,
    stop_flag,
)
from ._plan import Partition, plan

__all__ = ["PartitionError", "RemoteError", "export"]

logger = logging.getLogger("aiodicom.export")

DEFAULT_PARTITION_SIZE: Final = 256
"""Items per Dask task unless told otherwise."""

_KEY_PREFIX: Final = "aiodicom-export"

# Parts of dask and distributed without type annotations.
_compute: Any = dask.base.compute
_Callback: Any = dask.callbacks.Callback


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
    transform: Transform | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    on_conflict: Literal["fail", "suffix"] = "fail",
    checksum: str | None = "crc32c",
    verify: bool = False,
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
        per item, as the partitions come back (so in bursts); and once more, at
        the end, for each item whose result settling a name clash between
        partitions replaced (``done`` does not grow then).
    backend : {"asyncio", "trio"}, optional
        The event loop each task runs (default ``"asyncio"``).
    transform, include, exclude
        As for :func:`aiodicom.export`; the transform is pickled into every task
        (a module-level function the workers can import).
    on_conflict : {"fail", "suffix"}, optional
        As for :func:`aiodicom.export`, across partitions too: the first in
        source order wins a name, always, and suffixes are those the
        single-machine export gives.  Clashes between partitions are settled
        when all are back: see Returns.
    checksum, verify
        As for :func:`aiodicom.export` (computed, sent and checked on the
        workers; the checksums come back in the items).

    Returns
    -------
    ExportReport
        One result per item, partitions in the order they finished.  Items of a
        partition whose task did not finish fail with :class:`PartitionError`
        (for a bag partition, one result stands for the whole partition, since
        its items are only known on the workers).  Two items of different
        partitions named the same may both have been written by their workers;
        once every partition is back, the one first in source order is exported
        there again (this run's own output is overwritten, whatever `exist_ok`
        says), and the other fails with
        :class:`~aiodicom.DuplicateDestinationError` or, with
        ``on_conflict="suffix"``, is exported under its suffixed name.  Their
        results are replaced in place.

    Raises
    ------
    DestinationError
        If the pre-flight check (made on the client) finds that `destination`
        cannot be written; nothing runs.
    TemplateError
        If `template` is unusable (before anything runs).
    TypeError, ValueError
        For an unusable `destination`, `client`, `concurrency` or
        `partition_size` (before anything runs).
    """
    options = ExportOptions.from_arguments(locals())
    return run_on_dask(
        sources,
        destination,
        options,
        client=client,
        partition_size=partition_size,
        progress=progress,
        backend=backend,
    )


def run_on_dask(
    sources: Any,
    destination: Any,
    options: ExportOptions,
    *,
    client: Any = None,
    partition_size: int = DEFAULT_PARTITION_SIZE,
    progress: Callable[[ExportProgress], object] | None = None,
    backend: str = "asyncio",
) -> ExportReport:
    """Run an export whose options were checked already (see :func:`export`)."""
    check_positive("partition_size", partition_size)
    if backend not in ("asyncio", "trio"):
        raise ValueError(f"backend must be 'asyncio' or 'trio', not {backend!r}")
    root = Root.parse(destination, options.storage_options, options.upload_options)
    root.check_options(options)
    client = _client(client)
    root.check(dry_run=options.dry_run)
    job = Job(
        destination=root.factory if root.factory is not None else root.location,
        options=options,
        backend=backend,
        stop_token=uuid.uuid4().hex,
    )
    started = time.perf_counter()
    the_plan = plan(
        sources, partition_size, options.source_storage_options, selection_for(root, options)
    )
    gather = _Gather(progress, Tally(the_plan.total, started), options.fail_fast)
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
    settlement = settle(gather.claims, options.on_conflict, options.overwrite)
    if settlement is not None:
        _settle(settlement, the_plan.partitions, job, client, root, gather)
    return gather.tally.report(dry_run=options.dry_run)


def _settle(
    settlement: Settlement,
    partitions: list[Partition],
    job: Job,
    client: Any,
    root: Root,
    gather: _Gather,
) -> None:
    """Export again the items that a clash between partitions concerns, replace
    the results that change, and remove what no item holds in the end."""
    by_index = {partition.index: partition for partition in partitions}
    picked = sorted(settlement.picks.items())
    tasks = [_again_task(by_index[index], picks, job) for index, picks in picked]
    outcomes: list[list[tuple[int, ItemResult]] | None]
    if client is None:
        try:
            outcomes = list(_compute(*tasks))
        except Exception:
            logger.debug("exporting items again after a name clash failed", exc_info=True)
            outcomes = [None] * len(tasks)
    else:
        outcomes = []
        for future in client.compute(tasks):
            try:
                outcomes.append(future.result())
            except Exception:
                logger.debug("exporting items again after a name clash failed", exc_info=True)
                outcomes.append(None)
            future.release()
    found: dict[tuple[int, int], ItemResult] = {}
    for (index, _), outcome in zip(picked, outcomes, strict=True):
        for seq, result in outcome or []:
            found[index, seq] = result
    final = settlement.results(found)
    if not job.options.dry_run:
        for name in settlement.orphans(final):
            try:
                root.remove(name)
            except Exception:
                logger.warning("could not remove %s after a name clash", name, exc_info=True)
    for index, result in sorted(final.items()):
        gather.amend(index, result)


def _again_task(partition: Partition, picks: list[Pick], job: Job) -> Delayed:
    key = f"{_KEY_PREFIX}-again-{partition.index}-{job.stop_token}"
    task: Delayed = delayed(export_again, pure=False)(
        partition.refs, picks, job, dask_key_name=key
    )
    return task


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
    """Collects partition outcomes into one tally, with progress."""

    def __init__(
        self,
        progress: Callable[[ExportProgress], object] | None,
        tally: Tally,
        fail_fast: bool,
    ) -> None:
        self.progress = progress
        self.tally = tally
        self.fail_fast = fail_fast
        self.claims: list[Claimed] = []
        self.done: set[int] = set()

    @property
    def stop(self) -> bool:
        """Whether no further partition should start."""
        return self.fail_fast and self.tally.failed > 0

    def outcome(self, partition: Partition, outcome: PartitionOutcome) -> None:
        """Record what a finished task sent back."""
        self.done.add(partition.index)
        self.tally.stopped_early |= outcome.stopped_early
        first = len(self.tally.items)
        for offset, (item, claim) in enumerate(zip(outcome.items, outcome.claims, strict=True)):
            if claim is not None:
                seq, asked, granted = claim
                self.claims.append(
                    Claimed(partition.index, seq, asked, granted, first + offset, item)
                )
        self.add(outcome.items)

    def lost(self, partition: Partition, error: BaseException) -> None:
        """Record a task that did not finish."""
        self.done.add(partition.index)
        lost = PartitionError(
            f"the Dask task of {partition.name} did not finish ({describe_error(error)}); "
            "nothing is half-written; run again with skip_existing=True to complete"
        )
        lost.__cause__ = error
        self.add(partition.unfinished(lost))

    def add(self, items: list[ItemResult]) -> None:
        for item in items:
            now = self.tally.add(item)
            if self.progress is not None:
                self.progress(now)

    def amend(self, index: int, item: ItemResult) -> None:
        """Replace the result at `index` (kept by the tally) with `item`."""
        now = self.tally.amend(index, item)
        if self.progress is not None:
            self.progress(now)


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
            gather.tally.stopped_early = True

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
                gather.tally.stopped_early = True
            else:
                submit()
    except BaseException:
        client.cancel([*finished.futures])
        raise
