"""Bulk export: many datasets to a folder or an object-store prefix, concurrently.

See :func:`export` and the "Bulk export" page of the documentation.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import pickle
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import anyio.from_thread
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
from .._errors import DestinationError, SourceSkipped, TransformError, exists_error
from .claims import FIRST, NameGate, OrderedNames
from .destination import CountingAsyncSink, CountingSink, Root
from .naming import DEFAULT_TEMPLATE, Template
from .options import ExportOptions, Transform
from .report import (
    ExportProgress,
    ExportReport,
    ItemResult,
    JsonLinesReport,
    Status,
    Tally,
    describe_error,
)
from .sources import (
    Selection,
    Source,
    count_local,
    in_process_memory,
    is_single,
    iter_sources,
    read_source,
    source_name,
)

__all__ = [
    "REPEATED_ERRORS",
    "Named",
    "ProgressCallback",
    "RepeatedErrors",
    "choose_workers",
    "export",
    "produce",
    "run_export",
    "selection_for",
]

logger = logging.getLogger("aiodicom.export")

DEFER_SIZE: Final = 16 * 1024
"""With ``skip_existing``, local sources are first read with values above this
size deferred, so an item whose destination exists costs only its header."""
STREAM_SIZE: Final = 4 * 1024 * 1024
"""Values of local source files larger than this are not read with the dataset:
they are streamed from the source file as they are written (bounded memory, the
same bytes)."""

REPEATED_ERRORS: Final = 20
"""An export stops (:class:`~aiodicom.DestinationError`) when this many items in
a row failed at the destination with the same error."""

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
    transform: Transform | None = None,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
    on_conflict: Literal["fail", "suffix"] = "fail",
) -> ExportReport:
    """Export many DICOM datasets to a folder, an fsspec URL prefix, a DICOMweb server
    or your sinks.

    Each item is read (in a worker thread), transformed if you say so, named by
    `template`, and written with :func:`aiodicom.dcmwrite`: the same bytes as
    :func:`pydicom.dcmwrite`, and a failed or cancelled write leaves nothing
    behind.  At most `concurrency` items are in flight, and sources are pulled
    lazily, so memory depends on `concurrency`, not on the number of items.  Runs
    on asyncio and trio.

    Before any source is read, the destination is checked (a pre-flight probe
    that leaves nothing behind): a missing bucket, refused credentials or a folder
    that cannot be written raise :class:`~aiodicom.DestinationError` at once,
    instead of failing every item.

    Parameters
    ----------
    sources
        A :class:`~pydicom.dataset.Dataset`; a path to a DICOM file; a folder
        (searched recursively); a local glob (``"scans/**/*.dcm"``); an fsspec URL
        of a file, a prefix or a glob (``"s3://bucket/in/*.dcm"``); a binary file
        object; or a sync or async iterable of any of these.  Sync iterables other
        than lists and tuples are pulled in a worker thread; async iterables are
        pulled only as fast as items are exported (backpressure).  In folders,
        globs and prefixes, hidden files and folders (names starting with ``.``)
        are reported as skipped, and `destination` is never searched.  Files that
        are not DICOM and DICOMDIRs are reported as skipped
        (:class:`~aiodicom.SourceSkipped`), not failed.
    destination : str, os.PathLike or callable
        A local folder (created if needed); an fsspec URL prefix
        (``"s3://bucket/exports"``, ``"memory://out"``); a DICOMweb server's
        base URL prefixed with ``dicomweb+`` (``"dicomweb+https://HOST/PATH"``:
        many instances per STOW-RS request, see "DICOMweb servers" in the
        documentation); or a callable ``name -> sink`` that gets each item's
        relative name (``"a/b/c.dcm"``) and returns anything
        :func:`aiodicom.dcmwrite` writes to (a :class:`~aiodicom.Sink`, an
        :class:`~aiodicom.AsyncSink`, a path, a URL...); a sink class such as
        :class:`~aiodicom.sinks.LocalFile` works as it is.
    template : str or callable, optional
        How to name each file under `destination`: a :meth:`str.format` template
        over DICOM keywords (default
        ``"{StudyInstanceUID}/{SeriesInstanceUID}/{SOPInstanceUID}.dcm"``), with
        a fallback for missing values (``{PatientID:-UNKNOWN}``) and the source's
        file name as ``{source_name}`` / ``{source_stem}``; or a callable
        ``(Dataset) -> str`` returning a relative ``/``-separated path.  Dataset
        values are untrusted and sanitised: see :class:`Template` rules in the
        documentation; nothing can be named outside `destination`.  Not for a
        DICOMweb destination, where the server names instances by their UIDs.
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
        Passed to :func:`pydicom.dcmread`: read files without a DICOM preamble
        (those that start like a DICOM data set; others are skipped as not DICOM).
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
        total over all workers.  A callable `template` or `transform` must then
        be picklable (a module-level function).
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
        is).  Costs a request or a read per item.  Default ``False``; not with a
        callable `destination`, which cannot be read back.
    transform : callable, optional
        Called on each dataset after it is read and before it is named and
        written: ``(Dataset) -> Dataset | None`` (return a dataset to write, or
        ``None`` to write the one given, changed in place), or a coroutine
        function of the same shape.  A sync transform runs in the worker thread
        (or process) that read the item; an async one in the event loop.  An
        exception fails that item only, with :class:`~aiodicom.TransformError`.
    include, exclude : str or iterable of str, optional
        Glob patterns choosing the files of folders, globs and prefixes: a
        pattern without ``/`` matches the file name (``"*.dcm"``), one with
        ``/`` the path below the folder given (``"*/CT/*"``; ``*`` also matches
        ``/``).  With `include`, only matching files are exported; files matching
        `exclude` are left out.  Left-out files are not listed in the report.
        Sources named one by one are always taken.
    on_conflict : {"fail", "suffix"}, optional
        Two items named the same: the first in source order is exported, always;
        a later one fails with :class:`~aiodicom.DuplicateDestinationError`
        (``"fail"``, the default) or is written as ``name-1.dcm``,
        ``name-2.dcm``... in source order (``"suffix"``).

    Returns
    -------
    ExportReport
        Per-item results and a summary.  Failures are reported, not raised.

    Raises
    ------
    DestinationError
        If the pre-flight check finds that `destination` cannot be written
        (nothing is read), or if 20 items in a row failed at the destination
        with the same error (the export stops; its ``report`` has what finished).
    TemplateError
        If `template` is unusable (before anything is read).
    TypeError, ValueError
        For an unusable `destination`, `concurrency`, `transform` or
        `on_conflict` (before anything is read).
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
        try:
            outcome = await run_export(
                sources,
                root,
                options,
                progress=progress,
                total=total,
                keep_items=keep_items,
                on_item=lines.item,
            )
        except DestinationError as stopped:
            if stopped.report is not None:  # stopped at a run of destination errors
                lines.finish(stopped.report)
            raise
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
    check_destination: bool = True,
    names: OrderedNames | None = None,
    positions: list[int | None] | None = None,
    progress_may_lag: bool = False,
) -> ExportReport:
    """Run an export whose settings were checked already (see :func:`export`);
    `on_item` gets every finished item (the streamed report).

    `progress_may_lag`: `progress` only shows progress (the command line's bar)
    and need not hear of each item before the next one starts.

    `check_destination`: run the destination's pre-flight check first (a Dask
    partition does not: the client did).  `names` decides the name clashes
    (default: a new :class:`OrderedNames`), and `positions`, a list, gets the
    sequence number of each item in the order the report lists them: both for
    an export in this process only (a Dask partition's).
    """
    if check_destination:
        check = functools.partial(root.check, dry_run=options.dry_run)
        if root.is_local:
            # A folder and one small file on a local disk: done here rather than
            # in a worker thread, so that this process still has a single thread
            # when worker processes are started, and can fork them (milliseconds)
            # instead of spawning fresh interpreters (a few hundred).
            check()
        else:
            await anyio.to_thread.run_sync(check)
    tally = Tally(total, keep_items=keep_items, on_item=on_item)
    if root.is_dicomweb:
        from .dicomweb import run_dicomweb

        return await run_dicomweb(sources, root, options, progress=progress, tally=tally)
    selection = selection_for(root, options)
    workers = choose_workers(sources, options, total, root)
    if workers > 1:
        from .processes import run_in_processes

        return await run_in_processes(
            sources, root, options, workers=workers, progress=progress, tally=tally
        )
    await anyio.to_thread.run_sync(root.open_filesystem)
    run = Run(root, options, progress, tally, NameGate(names) if names is not None else None)
    run.positions = positions
    run.progress_may_lag = progress_may_lag
    # One item at a time, all of it blocking work, and the gate is this run's own
    # (one task claims, in source order): one worker thread for the whole run.
    run.serially = options.concurrency == 1 and not root.awaits_uploads and not run.async_transform
    send, receive = anyio.create_memory_object_stream[tuple[int, Source]](0)
    # Throughput first: encode in the worker threads, as a thread pool would; but
    # objects whose one request is awaited in the loop are encoded right there (a
    # thread hop per item costs more than the encoding)
    encoding = contextlib.nullcontext() if root.awaits_uploads else encode_in_threads()
    with encoding, stream_deferred_values():
        await _run_all(run, sources, options.source_storage_options, selection, send, receive)
    if run.callback_error is not None:
        raise run.callback_error  # itself, not wrapped in an exception group
    return run.finish()


def selection_for(root: Root, options: ExportOptions) -> Selection:
    """Which files of the sources an export takes: its patterns, and never its
    own destination."""
    if root.factory is not None:
        avoid: tuple[str, ...] = ()
    elif root.is_local:
        avoid = (os.path.realpath(root.location),)
    else:
        avoid = (root.location,)
    return Selection(options.include, options.exclude, avoid)


_PROCESSES_FROM: Final = 64
"""With fewer items than this (when the count is known), starting worker
processes costs more than it saves."""


def choose_workers(
    sources: Any, options: ExportOptions, total: int | None, root: Root | None = None
) -> int:
    """How many worker processes an export of `sources` should use."""
    if root is not None and (not root.is_local or root.factory is not None):
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
        selection = selection_for(root, options) if root is not None else Selection()
        total = count_local(_as_list(sources), selection)
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
    selection: Selection,
    send: MemoryObjectSendStream[tuple[int, Source]],
    receive: MemoryObjectReceiveStream[tuple[int, Source]],
) -> None:
    async with anyio.create_task_group() as group:
        run.cancel_scope = group.cancel_scope
        group.start_soon(produce, sources, source_storage_options, selection, send)
        async with receive:
            if run.serially:
                from .serial import Serial

                # queue sources ahead only from names and lists of ours to expand,
                # never from an iterable of the caller's (pulled as items are done)
                ahead = is_single(sources) or (
                    isinstance(sources, list | tuple) and all(map(is_single, sources))
                )
                group.start_soon(Serial(run, ahead=ahead).work, receive.clone())
                return
            for _ in range(run.options.concurrency):
                group.start_soon(_work, run, receive.clone())


async def produce(
    sources: Any,
    storage_options: dict[str, Any] | None,
    selection: Selection,
    send: anyio.abc.ObjectSendStream[tuple[int, Source]],
) -> None:
    """The sources, numbered in order (their sequence numbers decide name clashes,
    here as in the DICOMweb export), sent one at a time."""
    async with send, aclosing(iter_sources(sources, storage_options, selection)) as items:
        seq = FIRST
        async for item in items:
            await send.send((seq, item))
            seq += 1


async def _work(run: Run, receive: anyio.abc.ObjectReceiveStream[tuple[int, Source]]) -> None:
    async with receive:
        async for seq, source in receive:
            result, there = await run.export_one(source, seq)
            await run.record(result, there, seq=seq)


class _AtDestination(Exception):
    """Carries an error met at the destination (creating its folders, making its
    sink) out of the code that names an item; unwrapped before it is reported."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class RepeatedErrors:
    """Notices when many items in a row failed at the destination with the same
    error (the destination is down: going on would fail the rest one by one)."""

    def __init__(self, limit: int = REPEATED_ERRORS) -> None:
        self.limit = limit
        self._key: tuple[Any, ...] | None = None
        self._count = 0

    def add(self, result: ItemResult, at_destination: bool) -> BaseException | None:
        """Count `result`; return its error if it makes `limit` in a row."""
        if result.status is Status.WRITTEN:
            self._key, self._count = None, 0
            return None
        error = result.error
        if not at_destination or error is None or result.status is not Status.FAILED:
            return None
        key = _error_key(error, result.destination)
        if key == self._key:
            self._count += 1
        else:
            self._key, self._count = key, 1
        return error if self._count >= self.limit else None

    def stop_error(self, error: BaseException, report: ExportReport) -> DestinationError:
        """The exception that ends the export."""
        stop = DestinationError(
            f"stopped after {self.limit} items in a row failed at the destination with "
            f"the same error: {describe_error(error)}",
            report,
        )
        stop.__cause__ = error
        return stop


def _error_key(error: BaseException, destination: str | None) -> tuple[Any, ...]:
    """What makes two items' errors "the same": the type and the message, without
    the names that differ from item to item."""
    if isinstance(error, OSError) and error.errno is not None:
        return (type(error).__name__, error.errno, error.strerror)
    message = str(error)
    if destination:
        message = message.replace(destination, "<destination>")
    return (type(error).__name__, message)


def at_destination(error: BaseException, sinks: list[CountingSink | CountingAsyncSink]) -> bool:
    """Whether `error` was met at the destination (the sink failed), as opposed to
    reading, naming or encoding the item.  An existing destination is not a
    failing destination."""
    return any(sink.error is not None for sink in sinks) and not isinstance(error, FileExistsError)


def is_async_callable(function: Any) -> bool:
    """Whether calling `function` returns an awaitable (a coroutine function, or
    an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
        getattr(function, "__call__", None)  # noqa: B004 (the method, not callability)
    )


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
        gate: NameGate | None = None,
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
        self.gate = gate if gate is not None else NameGate(OrderedNames(options.on_conflict))
        self.positions: list[int | None] | None = None
        """If a list: the sequence number of each item counted, in the order the
        tally has them (a Dask partition's client needs them)."""
        self.transform = options.transform
        self.async_transform = is_async_callable(self.transform)
        self.repeated = RepeatedErrors()
        self.stopped_by: BaseException | None = None
        self.callback_error: Exception | None = None
        self.cancel_scope: anyio.CancelScope | None = None
        self.progress_lock = anyio.Lock()
        self._portal: contextlib.ExitStack | None = None
        self._portal_call: Callable[..., Any] | None = None
        # A first look with deferred values pays off when the item may be skipped
        # without writing; the write itself uses a full read (parity with pydicom).
        # Not with a transform: the name is that of the transformed dataset.
        self.look_first = (
            root.is_local and (options.skip_existing or options.dry_run) and self.transform is None
        )
        self.progress_may_lag = False
        self.serially = False
        """Whether the items are exported one at a time, read, named, claimed
        and written in one worker thread for the whole run (see ``serial``);
        only for a run whose gate no other task claims from (set by
        :func:`run_export`)."""

    def finish(self) -> ExportReport:
        """The report; raises :class:`~aiodicom.DestinationError` (with it) if the
        export stopped at a run of destination errors."""
        report = self.tally.report(dry_run=self.options.dry_run)
        if self.stopped_by is not None:
            raise self.repeated.stop_error(self.stopped_by, report)
        return report

    async def export_one(self, source: Source, seq: int) -> tuple[ItemResult, bool]:
        """Read, name and write one item; failures become a result, not an error.

        Returns the result and whether it failed at the destination.  A read is
        abandoned when the export is cancelled (its result discarded), so a slow
        source never holds a cancellation up.  A write that was committed just as
        the export was cancelled is still counted: the report lists every
        destination that holds its bytes.
        """
        start = time.perf_counter()
        destination: str | None = None
        written: list[CountingSink | CountingAsyncSink] = []
        try:
            named = False
            try:
                dataset, name = await self._read_and_name(source)
                named = True
                destination = name
                destination = await self.gate.claim(seq, name)
            finally:
                if not named:
                    self.gate.resolve(seq)
            status, count, reason, checksum = await self._write(
                source, dataset, destination, written
            )
            verified = False
            if self.options.verify and checksum is not None:
                await anyio.to_thread.run_sync(self.root.verify, destination, checksum)
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
                    ),
                    seq=seq,
                )
            raise
        except Exception as exc:
            return self._failed(source, destination, start, exc, written)
        return (
            ItemResult(
                source.label,
                destination,
                status,
                count,
                time.perf_counter() - start,
                reason,
                checksum,
                verified,
            ),
            False,
        )

    def _failed(
        self,
        source: Source,
        destination: str | None,
        start: float,
        exc: Exception,
        written: list[CountingSink | CountingAsyncSink],
    ) -> tuple[ItemResult, bool]:
        seconds = time.perf_counter() - start
        if isinstance(exc, SourceSkipped):
            return ItemResult(source.label, None, Status.SKIPPED, 0, seconds, exc), False
        there = at_destination(exc, written)
        if isinstance(exc, _AtDestination):
            exc, there = exc.error, True
        logger.debug("export of %s failed", source.label, exc_info=exc)
        return ItemResult(source.label, destination, Status.FAILED, 0, seconds, exc), there

    def name_blocking(self, source: Source) -> Named | tuple[ItemResult, bool]:
        """The first half of :meth:`export_one`, done right here (blocking), for a
        worker process: read, transform and name the item; or its result (it
        failed, or was skipped) and whether it failed at the destination."""
        start = time.perf_counter()
        try:
            dataset, deferred = self._read(source)
            if self.transform is not None:
                dataset = self._transformed_blocking(dataset)
            name = self._name(source, dataset, deferred)
        except Exception as exc:
            return self._failed(source, None, start, exc, [])
        return Named(source, None if deferred else dataset, name, start)

    def write_blocking(
        self,
        named: Named,
        answer: str | BaseException,
        check: Callable[[], None],
        writing: Callable[[], None] | None = None,
    ) -> tuple[ItemResult, bool]:
        """The second half: write a named item under the name its claim got
        (`answer`; or the error that refused it).  `check` is called between
        chunks and may raise to stop the write; `writing`, if given, once the
        dataset is read and just before anything is written (it may raise too)."""
        source, name = named.source, named.name
        written: list[CountingSink | CountingAsyncSink] = []
        try:
            if isinstance(answer, BaseException):
                raise answer
            name = answer
            status, count, reason, checksum = self._write_blocking(
                source, named.dataset, name, check, written, writing
            )
            verified = False
            if self.options.verify and checksum is not None:
                self.root.verify(name, checksum)
                verified = True
        except Exception as exc:
            return self._failed(source, name, named.started, exc, written)
        return (
            ItemResult(
                source.label,
                name,
                status,
                count,
                time.perf_counter() - named.started,
                reason,
                checksum,
                verified,
            ),
            False,
        )

    def close(self) -> None:
        """Release what a blocking export kept (the event loop of an async
        transform)."""
        if self._portal is not None:
            self._portal.close()
            self._portal = self._portal_call = None

    def _write_blocking(
        self,
        source: Source,
        dataset: Dataset | None,
        destination: str,
        check: Callable[[], None],
        written: list[CountingSink | CountingAsyncSink],
        writing: Callable[[], None] | None = None,
    ) -> _Outcome:
        if self.dry_run:
            return self._planned(destination, self.root.exists)
        if dataset is None:
            dataset = self._read_if_new(source, destination)
            if dataset is None:
                return Status.SKIPPED, 0, exists_error(destination), None
        if writing is not None:
            writing()
        sink = self._sink(destination)
        if not isinstance(sink, CountingSink):
            raise TypeError(f"{destination!r} needs an async sink: export it in the event loop")
        written.append(sink)
        try:
            result = write_in_this_thread(
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
        return Status.WRITTEN, sink.count, None, result.checksum

    def _planned(self, destination: str, exists: Callable[[str], bool]) -> _Outcome:
        """A dry run's outcome: planned, or (`destination` exists and may not be
        overwritten) skipped or failed, as the real write would be."""
        if self.exist_ok or not exists(destination):
            return Status.PLANNED, 0, None, None
        error = exists_error(destination)
        if self.skip_existing:
            return Status.SKIPPED, 0, error, None
        raise error

    # -- reading, transforming, naming ---------------------------------------------

    async def _read_and_name(self, source: Source) -> tuple[Dataset | None, str]:
        """Read the dataset (in a worker thread), transform it, name it."""
        if not self.async_transform:
            return await anyio.to_thread.run_sync(
                self._read_and_name_here, source, abandon_on_cancel=True
            )
        dataset, _ = await anyio.to_thread.run_sync(self._read, source, abandon_on_cancel=True)
        dataset = await self._transformed_async(dataset)
        name = await anyio.to_thread.run_sync(
            self._name, source, dataset, False, abandon_on_cancel=True
        )
        return dataset, name

    def _read_and_name_here(self, source: Source) -> tuple[Dataset | None, str]:
        """In a worker thread: read, transform (a sync transform) and name."""
        dataset, deferred = self._read(source)
        if self.transform is not None:
            dataset = self._transformed_blocking(dataset)
        name = self._name(source, dataset, deferred)
        return (None if deferred else dataset), name

    def _read(self, source: Source) -> tuple[Dataset, bool]:
        """Read `source` (blocking); ``True`` if it was a first look, with values
        above ``DEFER_SIZE`` deferred, only to name it (it is read again to be
        written).  Otherwise values of local files above ``STREAM_SIZE`` stay in
        the file and are streamed from it as they are written."""
        if source.kind == "path":
            defer: int | None = DEFER_SIZE if self.look_first else STREAM_SIZE
        else:
            defer = None
        dataset = read_source(source, force=self.force, defer_size=defer)
        return dataset, defer == DEFER_SIZE

    def _name(self, source: Source, dataset: Dataset, deferred: bool) -> str:
        """Name `dataset` (blocking: creates the folders it needs unless it is to
        be read again first, or in a dry run)."""
        relative = self.naming.render(dataset, self.root.unsafe_characters, source_name(source))
        destination = self.root.join(relative)
        if not deferred and not self.dry_run:
            _unless_abandoned()
            self._make_parent(destination)
        return destination

    def _make_parent(self, destination: str) -> None:
        try:
            self.root.make_parent(destination)
        except OSError as exc:
            raise _AtDestination(exc) from exc

    def _sink(self, destination: str) -> CountingSink | CountingAsyncSink:
        try:
            return self.root.sink(destination, self.options.checksum)
        except Exception as exc:
            raise _AtDestination(exc) from exc

    def _transformed_blocking(self, dataset: Dataset) -> Dataset:
        """Apply the transform here (blocking; an async one on an event loop of
        this run's own, started once)."""
        transform = self.transform
        assert transform is not None
        try:
            if self.async_transform:
                if self._portal_call is None:
                    stack = contextlib.ExitStack()
                    portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
                    self._portal, self._portal_call = stack, portal.call
                assert self._portal_call is not None
                result = self._portal_call(transform, dataset)
            else:
                result = transform(dataset)
        except Exception as exc:
            raise self._transform_error(exc) from exc
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if callable(close):
                close()  # never awaited: say so once, not as a RuntimeWarning
            raise TransformError(
                f"transform {_name_of(transform)} returned an awaitable: declare it "
                "'async def' to have it awaited"
            )
        return self._transform_result(result, dataset)

    async def _transformed_async(self, dataset: Dataset) -> Dataset:
        transform = self.transform
        assert transform is not None
        try:
            result = await transform(dataset)  # type: ignore[misc]
        except Exception as exc:
            raise self._transform_error(exc) from exc
        return self._transform_result(result, dataset)

    def _transform_error(self, exc: Exception) -> TransformError:
        return TransformError(
            f"transform {_name_of(self.transform)} failed: {describe_error(exc)}"
        )

    def _transform_result(self, result: Any, dataset: Dataset) -> Dataset:
        if result is None:
            return dataset
        if isinstance(result, Dataset):
            return result
        raise TransformError(
            f"transform {_name_of(self.transform)} returned {type(result).__name__}: "
            "return a Dataset, or None to write the one given"
        )

    # -- writing ----------------------------------------------------------------------

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
                return Status.SKIPPED, 0, exists_error(destination), None
        sink = self._sink(destination)
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
        self._make_parent(destination)
        return dataset

    async def record(
        self, result: ItemResult, at_destination: bool = False, *, seq: int | None = None
    ) -> None:
        """Add `result` and report progress (callbacks run one at a time, in order).

        The item is counted, and a synchronous callback called, before anything
        can be cancelled (a callback that does not await needs no lock to keep the
        order); a callback that raises stops the export, and :func:`run_export`
        raises its exception.  So does a run of items failed at the destination
        with the same error (:class:`~aiodicom.DestinationError`).  `seq` is the
        item's sequence number, kept in :attr:`positions` when that is a list.
        """
        self._position(seq)
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
        error = self.repeated.add(result, at_destination)
        if error is not None and self.stopped_by is None:
            self.stopped_by = error
            self.tally.stopped_early = True
            self._stop()

    def _record_now(self, result: ItemResult, seq: int | None = None) -> None:
        """Count `result` without waiting for anything (the export is being
        cancelled); a synchronous progress callback still hears of it."""
        self._position(seq)
        now = self.tally.add(result)
        if self.progress is not None and not inspect.iscoroutinefunction(self.progress):
            with contextlib.suppress(Exception):  # the cancellation is what matters now
                self.progress(now)

    def _position(self, seq: int | None) -> None:
        if self.positions is not None:
            self.positions.append(seq)

    def _stop(self) -> None:
        assert self.cancel_scope is not None
        self.cancel_scope.cancel()


_Outcome = tuple[Status, int, BaseException | None, Checksum | None]
"""What writing one item came to: status, bytes, why (skipped), checksum."""


def _name_of(function: Any) -> str:
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or type(function).__name__
    return f"{module}:{name}" if module else name


def _unless_abandoned() -> None:
    """In a worker thread: stop here if the export was cancelled meanwhile (the
    read's result is discarded; nothing is created for it)."""
    with contextlib.suppress(RuntimeError):  # not in an anyio worker thread
        anyio.from_thread.check_cancelled()
