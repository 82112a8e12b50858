"""Bulk export: many datasets to a folder or an object-store prefix, concurrently.

See :func:`export` and the "Bulk export" page of the documentation.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydicom.dataset import Dataset

from .._checksum import Checksum
from .._driver import (
    dcmwrite,
    encode_in_threads,
    stream_deferred_values,
    write_in_this_thread,
)
from .destination import CountingAsyncSink, CountingSink, Root
from .naming import DEFAULT_TEMPLATE, Template
from .options import ExportOptions
from .report import (
    ExportProgress,
    ExportReport,
    ItemResult,
    JsonLinesReport,
    Status,
    TakenNames,
    Tally,
)
from .sources import Source, count_local, in_process_memory, iter_sources, read_source

__all__ = ["ProgressCallback", "export", "run_export"]

logger = logging.getLogger("aiodicom.export")

DEFER_SIZE: Final = 16 * 1024
STREAM_SIZE: Final = 4 * 1024 * 1024
"""Values of local source files larger than this are not read with the dataset:
they are streamed from the source file as they are written (bounded memory, the
same bytes)."""
"""With ``skip_existing``, local sources are first read with values above this
size deferred, so an item whose destination exists costs only its header."""

ProgressCallback = Callable[[ExportProgress], object | Awaitable[object]]


async def export(
    sources: Any,
    destination: Any,
    *,
    template: str | Callable[[Dataset], Any] | Template = DEFAULT_TEMPLATE,
    concurrency: int = 16,
    exist_ok: bool = True,
    skip_existing: bool = False,
    storage_options: dict[str, Any] | None = None,
    source_storage_options: dict[str, Any] | None = None,
    upload_options: Mapping[str, Any] | None = None,
    force: bool = False,
    enforce_file_format: bool = False,
    dry_run: bool = False,
    fail_fast: bool = False,
    progress: ProgressCallback | None = None,
    total: int | None = None,
    workers: int | None = None,
    report: str | os.PathLike[str] | None = None,
    keep_items: bool = True,
    checksum: str | None = "crc32c",
    verify: bool = False,
) -> ExportReport:
    """Export many DICOM datasets to a folder, an fsspec URL prefix or a DICOMweb server.

    Each item is read (in a worker thread), named by `template`, and written with
    :func:`aiodicom.dcmwrite`: the same bytes as :func:`pydicom.dcmwrite`, and a
    failed or cancelled write leaves nothing behind.  At most `concurrency` items
    are in flight, and sources are pulled lazily, so memory depends on
    `concurrency`, not on the number of items.  Runs on asyncio and trio.

    Parameters
    ----------
    sources
        A :class:`~pydicom.dataset.Dataset`; a path to a DICOM file; a folder
        (searched recursively); a local glob (``"scans/**/*.dcm"``); an fsspec URL
        of a file, a prefix or a glob (``"s3://bucket/in/*.dcm"``); a binary file
        object; or a sync or async iterable of any of these.  Sync iterables other
        than lists and tuples are pulled in a worker thread; async iterables are
        pulled only as fast as items are exported (backpressure).
    destination : str or os.PathLike
        A local folder (created if needed), an fsspec URL prefix
        (``"s3://bucket/exports"``, ``"memory://out"``), or a DICOMweb server's
        base URL prefixed with ``dicomweb+`` (``"dicomweb+https://HOST/PATH"``:
        many instances per STOW-RS request, see "DICOMweb servers" in the
        documentation).
    template : str or callable, optional
        How to name each file under `destination`: a :meth:`str.format` template
        over DICOM keywords (default
        ``"{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"``), or a
        callable ``(Dataset) -> str`` returning a relative ``/``-separated path.
        Dataset values are untrusted and sanitised: see :class:`Template` rules in
        the documentation; nothing can be named outside `destination`.  Not for
        a DICOMweb destination, where the server names instances by their UIDs.
    concurrency : int, optional
        How many items are read and written at once (default 16).  Each in-flight
        item uses a worker thread from anyio's default thread limiter (40
        threads unless you raise it), which therefore caps the concurrency too.
        For a DICOMweb destination: how many requests are in flight.
    exist_ok : bool, optional
        If ``False``, an item whose destination exists fails with
        :class:`FileExistsError` (checked atomically by the sink).  Default ``True``:
        overwrite, as :func:`pydicom.dcmwrite`.
    skip_existing : bool, optional
        If ``True``, an item whose destination exists is *skipped*, not
        overwritten and not failed, so an interrupted export can simply be run
        again.  Takes precedence over `exist_ok`.
    storage_options : dict, optional
        fsspec options for a URL `destination` (credentials, endpoint...); for a
        DICOMweb destination, keyword arguments of
        :class:`~aiodicom.sinks.DicomWeb` (``token``, ``batch_count``...).
    source_storage_options : dict, optional
        fsspec options for URL `sources`.
    upload_options : mapping, optional
        For URL destinations: keyword arguments of
        :class:`aiodicom.sinks.fsspec.FsspecFile` (``part_size``, ``retries``,
        ``metadata``, ``upload_args``...).  Transient errors are retried by the
        sink, for the whole object, as it documents.
    force : bool, optional
        Passed to :func:`pydicom.dcmread`: read files without a DICOM preamble.
    enforce_file_format : bool, optional
        Passed to :func:`aiodicom.dcmwrite`.
    dry_run : bool, optional
        Read and name every item, check for duplicates and (with `skip_existing`
        or ``exist_ok=False``) existing destinations, but write nothing; items
        that would be written get the status ``planned``.
    fail_fast : bool, optional
        Stop at the first failed item: items in flight are cancelled (leaving
        nothing behind) and no new ones start; the report says
        ``stopped_early``.  Default ``False``: one failure does not stop the rest.
    progress : callable, optional
        Called after each item with an :class:`ExportProgress`, in the event
        loop; may be a coroutine function.  An exception from it ends the export.
    total : int, optional
        The number of items, if known; passed on in :class:`ExportProgress` (for
        an ETA).
    workers : int, optional
        Worker processes, each with its own event loop, over which the items are
        shared out (reading and encoding DICOM is CPU work, and one Python process
        uses one core).  Default: chosen from the sources: one per core available
        to this process when the sources are paths, folders, globs or URLs (items
        that cannot travel to a process, such as datasets in memory and file
        objects, are exported in this process) and there are more than a few;
        ``1`` otherwise.  ``1``: everything in this process.  `concurrency` is the
        total over all workers.  A callable `template` must then be picklable (a
        module-level function).
    report : str or os.PathLike, optional
        A file to write the per-item report to as items finish: JSON Lines, one
        object per item (as :meth:`ItemResult.to_dict`), then a ``{"summary":
        ...}`` line.  Memory does not grow with the number of items.
    keep_items : bool, optional
        If ``False``, the returned report's ``items`` holds only the failed
        items (its counts and bytes still cover all), so memory does not grow
        with the number of items; pair it with `report`.  Default ``True``.
    checksum : {"crc32c", "sha256", "md5"} or None, optional
        The checksum each write computes while streaming and sends to the store
        to check (default ``"crc32c"``; ``None`` or ``"none"``: none), as
        :func:`aiodicom.dcmwrite`.  Each :class:`ItemResult` (and the report)
        carries it.
    verify : bool, optional
        After each write, read back what is stored: the checksum the store keeps
        where it computed one of this algorithm (S3's full-object CRC32C or
        single-request SHA-256, GCS's CRC32C / MD5), the bytes otherwise (local
        files, Azure, memory).  A mismatch fails the item with
        :class:`~aiodicom.ChecksumMismatchError` (the stored object is left as it
        is).  Costs a request or a read per item.  Default ``False``.

    Returns
    -------
    ExportReport
        Per-item results and a summary.  Failures are reported, not raised.

    Raises
    ------
    TemplateError
        If `template` is unusable (before anything is read).
    TypeError, ValueError
        For an unusable `destination` or `concurrency` (before anything is read).
    """
    options = ExportOptions.from_arguments(locals())
    root = Root.parse(destination, options.storage_options, options.upload_options)
    root.check_options(options)
    if report is None:
        return await run_export(
            sources, root, options, progress=progress, total=total, keep_items=keep_items
        )
    with open(report, "w", encoding="utf-8") as stream:  # noqa: ASYNC230 (a small local file)
        lines = JsonLinesReport(stream)
        outcome = await run_export(
            sources,
            root,
            options,
            progress=progress,
            total=total,
            keep_items=keep_items,
            on_item=lines.item,
        )
        lines.finish(outcome)
    return outcome


async def run_export(
    sources: Any,
    root: Root,
    options: ExportOptions,
    *,
    progress: ProgressCallback | None = None,
    total: int | None = None,
    keep_items: bool = True,
    on_item: Callable[[ItemResult], object] | None = None,
) -> ExportReport:
    """Run an export whose settings were checked already (see :func:`export`);
    `on_item` gets every finished item (the streamed report)."""
    tally = Tally(total, keep_items=keep_items, on_item=on_item)
    if root.is_dicomweb:
        from .dicomweb import run_dicomweb

        return await run_dicomweb(sources, root, options, progress=progress, tally=tally)
    workers = choose_workers(sources, options, total, root)
    if workers > 1:
        from .processes import run_in_processes

        return await run_in_processes(
            sources, root, options, workers=workers, progress=progress, tally=tally
        )
    run = Run(root, options, progress, tally)
    send, receive = anyio.create_memory_object_stream[Source](0)
    # Throughput first: encode in the worker threads, as a thread pool would.
    with encode_in_threads(), stream_deferred_values():
        await _run_all(
            run, sources, options.source_storage_options, options.concurrency, send, receive
        )
    if run.callback_error is not None:
        raise run.callback_error  # itself, not wrapped in an exception group
    return run.tally.report(dry_run=options.dry_run)


_PROCESSES_FROM: Final = 64
"""With fewer items than this (when the count is known), starting worker
processes costs more than it saves."""


def choose_workers(
    sources: Any, options: ExportOptions, total: int | None, root: Root | None = None
) -> int:
    """How many worker processes an export of `sources` should use."""
    if root is not None and not root.is_local:
        # object stores: their speed comes from many uploads in flight, which one
        # process's event loop does well; memory:// would be each process's own
        return 1
    if options.workers is not None:
        return options.workers
    if options.dry_run or (total is not None and total < _PROCESSES_FROM):
        return 1
    from .processes import default_workers

    cores = default_workers()
    if cores < 2 or not _travel(sources) or not _picklable(options):
        return 1
    if total is None:
        total = count_local(_as_list(sources))
        if total is not None and total < _PROCESSES_FROM:
            return 1
    return cores


def _as_list(sources: Any) -> list[str]:
    items = sources if isinstance(sources, list | tuple) else [sources]
    return [os.fsdecode(os.fspath(item)) for item in items]


def _travel(sources: Any) -> bool:
    """Whether `sources` are names (paths, folders, globs, URLs), which worker
    processes can read themselves."""
    items = sources if isinstance(sources, list | tuple) else [sources]
    return bool(items) and all(
        isinstance(item, str | os.PathLike) and not in_process_memory(os.fsdecode(item))
        for item in items
    )


def _picklable(options: ExportOptions) -> bool:
    try:
        pickle.dumps(options)
    except Exception:
        return False
    return True


async def _run_all(
    run: Run,
    sources: Any,
    source_storage_options: dict[str, Any] | None,
    concurrency: int,
    send: MemoryObjectSendStream[Source],
    receive: MemoryObjectReceiveStream[Source],
) -> None:
    async with anyio.create_task_group() as group:
        run.cancel_scope = group.cancel_scope
        group.start_soon(_produce, sources, source_storage_options, send)
        async with receive:
            for _ in range(concurrency):
                group.start_soon(_work, run, receive.clone())


async def _produce(
    sources: Any,
    storage_options: dict[str, Any] | None,
    send: anyio.abc.ObjectSendStream[Source],
) -> None:
    async with send, aclosing(iter_sources(sources, storage_options)) as items:
        async for item in items:
            await send.send(item)


async def _work(run: Run, receive: anyio.abc.ObjectReceiveStream[Source]) -> None:
    async with receive:
        async for source in receive:
            await run.record(await run.export_one(source))


@dataclass
class Named:
    """An item read and named, waiting for its name to be claimed."""

    source: Source
    dataset: Dataset | None
    name: str
    started: float


class Run:
    """The state of one export: settings, the tally, names already taken."""

    def __init__(
        self,
        root: Root,
        options: ExportOptions,
        progress: ProgressCallback | None,
        tally: Tally,
    ) -> None:
        self.root = root
        self.options = options
        self.naming = options.template
        self.exist_ok = options.overwrite
        self.skip_existing = options.skip_existing
        self.force = options.force
        self.enforce_file_format = options.enforce_file_format
        self.dry_run = options.dry_run
        self.fail_fast = options.fail_fast
        self.progress = progress
        self.tally = tally
        self.taken = TakenNames()
        self.claim: Callable[[str], Awaitable[None]] = self._claim_here
        self.callback_error: Exception | None = None
        self.cancel_scope: anyio.CancelScope | None = None
        self.progress_lock = anyio.Lock()
        # A first look with deferred values pays off when the item may be skipped
        # without writing; the write itself uses a full read (parity with pydicom).
        self.look_first = root.is_local and (options.skip_existing or options.dry_run)

    async def export_one(self, source: Source) -> ItemResult:
        """Read, name and write one item; failures become a result, not an error.

        A read is abandoned when the export is cancelled (its result discarded),
        so a slow source never holds a cancellation up.  A write that was
        committed just as the export was cancelled is still counted: the report
        lists every destination that holds its bytes.
        """
        start = time.perf_counter()
        destination: str | None = None
        written: list[CountingSink | CountingAsyncSink] = []
        try:
            dataset, name = await anyio.to_thread.run_sync(
                self._read_and_name, source, abandon_on_cancel=True
            )
            destination = name
            await self.claim(name)
            status, count, reason, checksum = await self._write(source, dataset, name, written)
            verified = False
            if self.options.verify and checksum is not None:
                await anyio.to_thread.run_sync(self.root.verify, name, checksum)
                verified = True
        except anyio.get_cancelled_exc_class():
            if written and written[0].committed:
                self._record_now(
                    ItemResult(
                        source.label,
                        destination,
                        Status.WRITTEN,
                        written[0].count,
                        time.perf_counter() - start,
                        checksum=written[0].written_checksum,
                    )
                )
            raise
        except Exception as exc:
            logger.debug("export of %s failed", source.label, exc_info=True)
            return ItemResult(
                source.label, destination, Status.FAILED, 0, time.perf_counter() - start, exc
            )
        return ItemResult(
            source.label,
            destination,
            status,
            count,
            time.perf_counter() - start,
            reason,
            checksum,
            verified,
        )

    def name_blocking(self, source: Source) -> Named | ItemResult:
        """The first half of :meth:`export_one`, done right here (blocking), for a
        worker process: read and name the item, or its failure."""
        start = time.perf_counter()
        try:
            dataset, name = self._read_and_name(source)
        except Exception as exc:
            logger.debug("export of %s failed", source.label, exc_info=True)
            return ItemResult(
                source.label, None, Status.FAILED, 0, time.perf_counter() - start, exc
            )
        return Named(source, dataset, name, start)

    def write_blocking(
        self, named: Named, refused: BaseException | None, check: Callable[[], None]
    ) -> ItemResult:
        """The second half: write a named item whose name was claimed (or
        `refused`, with the reason).  `check` is called between chunks and may
        raise to stop the write."""
        source, name = named.source, named.name
        try:
            if refused is not None:
                raise refused
            status, count, reason, checksum = self._write_blocking(
                source, named.dataset, name, check
            )
            verified = False
            if self.options.verify and checksum is not None:
                self.root.verify(name, checksum)
                verified = True
        except Exception as exc:
            logger.debug("export of %s failed", source.label, exc_info=True)
            return ItemResult(
                source.label, name, Status.FAILED, 0, time.perf_counter() - named.started, exc
            )
        return ItemResult(
            source.label,
            name,
            status,
            count,
            time.perf_counter() - named.started,
            reason,
            checksum,
            verified,
        )

    def _write_blocking(
        self,
        source: Source,
        dataset: Dataset | None,
        destination: str,
        check: Callable[[], None],
    ) -> _Outcome:
        if self.dry_run:
            return self._planned(destination, self.root.exists)
        if dataset is None:
            dataset = self._read_if_new(source, destination)
            if dataset is None:
                return Status.SKIPPED, 0, FileExistsError(f"{destination!r} exists"), None
        sink = self.root.sink(destination, self.options.checksum)
        if not isinstance(sink, CountingSink):
            raise TypeError(f"{destination!r} needs an async sink: export it in the event loop")
        try:
            written = write_in_this_thread(
                sink,
                dataset,
                exist_ok=self.exist_ok,
                enforce_file_format=self.enforce_file_format,
                check=check,
                checksum=self.options.checksum,
            )
        except FileExistsError as exc:
            if not self.skip_existing:
                raise
            return Status.SKIPPED, 0, exc, None
        return Status.WRITTEN, sink.count, None, written.checksum

    def _planned(self, destination: str, exists: Callable[[str], bool]) -> _Outcome:
        """A dry run's outcome: planned, or (`destination` exists and may not be
        overwritten) skipped or failed, as the real write would be."""
        if self.exist_ok or not exists(destination):
            return Status.PLANNED, 0, None, None
        error = FileExistsError(f"{destination!r} exists")
        if self.skip_existing:
            return Status.SKIPPED, 0, error, None
        raise error

    async def _claim_here(self, name: str) -> None:
        self.taken.claim(name)

    def _read_and_name(self, source: Source) -> tuple[Dataset | None, str]:
        """In a worker thread: read the dataset and name its destination."""
        if source.kind == "path":
            defer: int | None = DEFER_SIZE if self.look_first else STREAM_SIZE
        else:
            defer = None
        dataset = read_source(source, force=self.force, defer_size=defer)
        destination = self.root.join(self.naming.render(dataset, self.root.unsafe_characters))
        if defer == DEFER_SIZE:
            return None, destination  # read again if it is to be written
        if not self.dry_run:
            _unless_abandoned()
            self.root.make_parent(destination)
        return dataset, destination

    async def _write(
        self,
        source: Source,
        dataset: Dataset | None,
        destination: str,
        written: list[CountingSink | CountingAsyncSink],
    ) -> _Outcome:
        if self.dry_run:
            found = not self.exist_ok and await anyio.to_thread.run_sync(
                self.root.exists, destination
            )
            return self._planned(destination, lambda _: found)
        if dataset is None:
            dataset = await anyio.to_thread.run_sync(
                self._read_if_new, source, destination, abandon_on_cancel=True
            )
            if dataset is None:
                return Status.SKIPPED, 0, FileExistsError(f"{destination!r} exists"), None
        sink = self.root.sink(destination, self.options.checksum)
        written.append(sink)
        try:
            result = await dcmwrite(
                sink,
                dataset,
                exist_ok=self.exist_ok,
                enforce_file_format=self.enforce_file_format,
            )
        except FileExistsError as exc:
            if not self.skip_existing:
                raise
            return Status.SKIPPED, 0, exc, None
        return Status.WRITTEN, sink.count, None, result.checksum

    def _read_if_new(self, source: Source, destination: str) -> Dataset | None:
        """In a worker thread: ``None`` if `destination` exists, else the full dataset."""
        if self.root.exists(destination):
            return None
        defer = STREAM_SIZE if source.kind == "path" else None
        dataset = read_source(source, force=self.force, defer_size=defer)
        _unless_abandoned()
        self.root.make_parent(destination)
        return dataset

    async def record(self, result: ItemResult) -> None:
        """Add `result` and report progress (callbacks run one at a time, in order).

        The item is counted, and a synchronous callback called, before anything
        can be cancelled (a callback that does not await needs no lock to keep the
        order); a callback that raises stops the export, and :func:`run_export`
        raises its exception.
        """
        now = self.tally.add(result)
        if self.progress is not None and self.callback_error is None:
            try:
                if not inspect.iscoroutinefunction(self.progress):
                    outcome = self.progress(now)
                    if inspect.isawaitable(outcome):  # a sync function returning one
                        async with self.progress_lock:
                            await outcome
                else:
                    async with self.progress_lock:
                        await self.progress(now)
            except Exception as exc:
                self.callback_error = exc
                self._stop()
        if self.fail_fast and result.status is Status.FAILED:
            self.tally.stopped_early = True
            self._stop()

    def _record_now(self, result: ItemResult) -> None:
        """Count `result` without waiting for anything (the export is being
        cancelled); a synchronous progress callback still hears of it."""
        now = self.tally.add(result)
        if self.progress is not None and not inspect.iscoroutinefunction(self.progress):
            with contextlib.suppress(Exception):  # the cancellation is what matters now
                self.progress(now)

    def _stop(self) -> None:
        assert self.cancel_scope is not None
        self.cancel_scope.cancel()


_Outcome = tuple[Status, int, BaseException | None, Checksum | None]
"""What writing one item came to: status, bytes, why (skipped), checksum."""


def _unless_abandoned() -> None:
    """In a worker thread: stop here if the export was cancelled meanwhile (the
    read's result is discarded; nothing is created for it)."""
    with contextlib.suppress(RuntimeError):  # not in an anyio worker thread
        anyio.from_thread.check_cancelled()
