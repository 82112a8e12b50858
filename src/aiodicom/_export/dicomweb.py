"""Export to a DICOMweb server: many instances per STOW-RS request.

:func:`run_dicomweb` is what :func:`~aiodicom._export.run.run_export` runs for a
``dicomweb+http(s)://`` destination.  Each of `concurrency` workers sends with
:meth:`DicomWeb.store_many <aiodicom.sinks.DicomWeb.store_many>`, so up to
`concurrency` requests are in flight (each of up to ``batch_count`` instances and
about ``batch_bytes`` bytes: ``store_many`` starts another request past either).
The sources are listed in order and handed out one at a time, in that order, to
the worker whose open request needs its next instance: a request holds instances
in source order, not necessarily neighbours.

Each item is read (in a worker thread) when it is handed out, and encoded while it
streams: memory holds the instances being sent, one per request.  Two items with
one SOP Instance UID are one instance on the server: an item is sent only once
every item before it in source order has been read (its UID known), so the first
in source order is the one sent, whatever the timing, and a later one fails with
:class:`~aiodicom.DuplicateDestinationError`.  The wait is for reads already
under way (every item handed out is being read), so requests stay in flight.

Every item gets its own :class:`ItemResult`, from its
:class:`~aiodicom.sinks.StowResult`.  The server names instances by their UIDs, so
the template does not apply; an item's destination is its RetrieveURL, or
``{base}/studies/{study}/series/{series}/instances/{instance}``.

Cancellation (``fail_fast``, a cancel scope, Ctrl-C) abandons the requests in
flight before their closing delimiter: the instance being sent is not stored.
The instances before it in such a request were sent whole, and a server that
stores parts as they arrive (Orthanc) may have stored them: those are reported
as failed with a :class:`ConnectionAbortedError` saying so (as ``store_many`` does
for a request abandoned for a failing instance); the others in flight are not
listed, as for any destination.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

import anyio
import anyio.abc
import anyio.to_thread
from pydicom.dataset import Dataset

from .._checksum import Checksum
from .._core import EncodePlan, prepare
from .._driver import _read_file_region
from .._errors import DicomWebError, NamingError, exists_error
from ..sinks._dicomweb_batch import _maybe_stored
from ..sinks._protocol import Chunk
from ..sinks._stow import MetaSniffer
from ..sinks.dicomweb import DicomWeb, StowResult, StowStatus
from .destination import Root
from .naming import DEFAULT_TEMPLATE
from .options import ExportOptions
from .report import ExportReport, ItemResult, Status, Tally
from .run import STREAM_SIZE, ProgressCallback, Run, produce, selection_for
from .sources import Source, read_source

__all__ = ["check_destination", "check_options", "instance_url", "make_sink", "run_dicomweb"]


# ----------------------------------------------------------------------------- checks


def check_destination(
    location: str,
    storage_options: Mapping[str, Any] | None,
    upload_options: Mapping[str, Any] | None,
) -> None:
    """Check a ``dicomweb+`` destination and its options (no I/O).

    Raises
    ------
    TypeError, ValueError
        For options :class:`~aiodicom.sinks.DicomWeb` does not take (or takes
        other values for), `upload_options` (they are for fsspec URLs), or a
        missing httpx.
    """
    if upload_options:
        raise ValueError(
            "upload_options are for fsspec URL destinations: give a DICOMweb server's "
            "options (token, headers, verify, batch_count...) as storage_options"
        )
    try:
        DicomWeb.from_url(location, storage_options)
    except ImportError as exc:
        raise ValueError(f"cannot write to {location!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"DICOMweb destination {location!r}: {exc}") from None


def check_options(options: ExportOptions) -> None:
    """Raise :class:`ValueError` for export options a DICOMweb destination cannot
    honour: a template or ``on_conflict="suffix"`` (the server names instances
    by their UIDs), ``verify``, and ``upsert`` with ``exist_ok=False`` or
    ``skip_existing``."""
    template = options.template.source
    if not isinstance(template, str) or template != DEFAULT_TEMPLATE:
        raise ValueError(
            "a template does not apply to a DICOMweb destination: the server names "
            "each instance by its UIDs (.../studies/S/series/S/instances/I); leave "
            "the template at its default"
        )
    if options.on_conflict != "fail":
        raise ValueError(
            "on_conflict='suffix' does not apply to a DICOMweb destination: the server "
            "names each instance by its UIDs"
        )
    if options.verify:
        raise ValueError(
            "verify is not available for DICOMweb destinations (servers may change "
            "what they keep, e.g. Azure zeroes the preamble)"
        )
    if (options.storage_options or {}).get("upsert") and not options.overwrite:
        raise ValueError(
            "upsert=True replaces instances: it cannot be used with exist_ok=False "
            "or skip_existing"
        )


def make_sink(root: Root, options: ExportOptions) -> DicomWeb:
    """The export's sink: `storage_options` are its keyword arguments; with
    ``exist_ok=False`` or ``skip_existing`` it searches for each instance before
    sending it (``check_exists``, not atomic) unless they say otherwise."""
    kwargs = dict(options.storage_options or {})
    if not options.overwrite:
        kwargs.setdefault("check_exists", True)
    return DicomWeb.from_url(root.location, kwargs)


def instance_url(base: str, dataset: Dataset) -> str:
    """Where the server keeps `dataset`: its WADO-RS URL under `base`.

    Raises
    ------
    NamingError
        If the dataset has no SOP Instance UID.
    """
    uid = _text(dataset, "SOPInstanceUID")
    if uid is None:
        raise NamingError("the dataset has no SOPInstanceUID to store it by")
    study, series = _text(dataset, "StudyInstanceUID"), _text(dataset, "SeriesInstanceUID")
    if study is None or series is None:
        return f"{base}/instances/{_quote(uid)}"
    return f"{base}/studies/{_quote(study)}/series/{_quote(series)}/instances/{_quote(uid)}"


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword, None)
    text = str(value).strip() if value is not None else ""
    return text or None


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


# ----------------------------------------------------------------------------- items


@dataclass(eq=False)
class _Entry:
    """One item handed to ``store_many``: read, named, and encoded per attempt."""

    source: Source
    name: str
    uid: str
    dataset: Dataset | None
    """As read to name the item, until its first attempt takes it."""
    started: float
    options: ExportOptions
    transform: Callable[[Dataset], Dataset] | None = None
    """The export's transform, applied again to a dataset read again."""
    sent_whole: bool = False
    """The last attempt's chunks were all taken into a request that has not been
    answered yet: the server may have stored the instance."""
    checksum: Checksum | None = None
    """The checksum of the last attempt that was sent whole."""

    def encode(self) -> _Encoding:
        """A new attempt (``store_many`` calls this in a worker thread).

        A file or an object is read again for a retry rather than kept in memory
        while its request streams the instances after it and waits for the answer;
        datasets and file objects (which cannot be read twice) are kept.
        """
        self.sent_whole = False
        dataset = self.dataset
        if self.source.kind in ("path", "url"):
            self.dataset = None
        if dataset is None:
            dataset = _read(self.source, self.options)
            if self.transform is not None:
                dataset = self.transform(dataset)
        plan = prepare(
            dataset,
            enforce_file_format=self.options.enforce_file_format,
            read_deferred=_read_file_region if self.source.kind == "path" else None,
        )
        return _Encoding(self, plan)


def _read(source: Source, options: ExportOptions) -> Dataset:
    """Read `source` (blocking); values of local files above ``STREAM_SIZE`` are
    left in the file, and streamed from it as they are encoded (bounded memory,
    the same bytes), as the other destinations' export does."""
    defer = STREAM_SIZE if source.kind == "path" else None
    return read_source(source, force=options.force, defer_size=defer)


class _Encoding:
    """One attempt's chunks, checksummed as they are taken."""

    def __init__(self, entry: _Entry, plan: EncodePlan) -> None:
        self._entry = entry
        self._plan = plan

    def chunks(self) -> Iterator[Chunk]:
        entry = self._entry
        algorithm = entry.options.checksum
        checksum = Checksum(algorithm) if algorithm else None
        # store_many keeps the chunks it reads the UIDs from until the part starts;
        # a value streamed from its file comes in views of one reused buffer, so
        # those chunks are copied (none are, when the File Meta Information leads)
        sniffer = MetaSniffer()
        for chunk in self._plan.chunks():
            if not sniffer.done:
                sniffer.feed(chunk)
                if isinstance(chunk, memoryview):
                    chunk = chunk.tobytes()
            if checksum is not None:
                checksum.update(chunk)
            yield chunk
        entry.checksum = checksum
        entry.sent_whole = True


# ----------------------------------------------------------------------------- the export


async def run_dicomweb(
    sources: Any,
    root: Root,
    options: ExportOptions,
    *,
    progress: ProgressCallback | None,
    tally: Tally,
) -> ExportReport:
    """Export `sources` to the DICOMweb server `root` (see the module docstring)."""
    check_options(options)
    sink = make_sink(root, options)
    run = Run(root, options, progress, tally)
    exporter = _Exporter(run, sink, options)
    send, receive = anyio.create_memory_object_stream[tuple[int, Source]](0)
    selection = selection_for(root, options)
    try:
        async with sink, anyio.create_task_group() as group:  # one connection pool
            run.cancel_scope = group.cancel_scope
            group.start_soon(produce, sources, options.source_storage_options, selection, send)
            async with receive:
                for _ in range(options.concurrency):
                    group.start_soon(exporter.work, receive.clone())
    finally:
        run.close()  # an async transform's event loop
    if run.callback_error is not None:
        raise run.callback_error  # itself, not wrapped in an exception group
    return tally.report(dry_run=options.dry_run)


class _Exporter:
    def __init__(self, run: Run, sink: DicomWeb, options: ExportOptions) -> None:
        self.run = run
        self.sink = sink
        self.options = options
        self.check = sink.check_exists and not options.overwrite

    async def work(self, items: anyio.abc.ObjectReceiveStream[tuple[int, Source]]) -> None:
        async with items:
            if self.options.dry_run:
                async for seq, source in items:
                    await self.plan(seq, source)
            else:
                await self.send(items)

    async def read(self, seq: int, source: Source) -> _Entry | None:
        """Read and name `source`, or record its failure and return ``None``.

        Returns only once every earlier item (in source order) has been read, or
        has failed before it was named: the first of two items with one SOP
        Instance UID gets it, the later fails with
        :class:`~aiodicom.DuplicateDestinationError`.
        """
        started = time.perf_counter()
        named: str | None = None
        try:
            try:
                dataset, name, uid = await anyio.to_thread.run_sync(
                    self._read_and_name, source, abandon_on_cancel=True
                )
                named = name
            finally:
                if named is None:
                    self.run.gate.resolve(seq)
            await self.run.gate.claim(seq, name)
        except Exception as exc:
            result, _ = self.run._failed(source, named, started, exc, [])
            await self.run.record(result)  # skipped (not DICOM...) or failed
            return None
        return _Entry(source, name, uid, dataset, started, self.options, self._transform())

    def _transform(self) -> Callable[[Dataset], Dataset] | None:
        return self.run._transformed_blocking if self.run.transform is not None else None

    def _read_and_name(self, source: Source) -> tuple[Dataset, str, str]:
        dataset = _read(source, self.options)
        transform = self._transform()
        if transform is not None:
            dataset = transform(dataset)
        return dataset, instance_url(self.sink.url, dataset), str(dataset.SOPInstanceUID)

    async def plan(self, seq: int, source: Source) -> None:
        """Dry run: read and name; with the search on, ask whether the server has it."""
        entry = await self.read(seq, source)
        if entry is None:
            return
        status = Status.PLANNED
        error: BaseException | None = None
        try:
            if self.check and await self.sink.exists(entry.uid):
                error = exists_error(entry.name)
                status = Status.SKIPPED if self.options.skip_existing else Status.FAILED
        except Exception as exc:
            status, error = Status.FAILED, exc
        seconds = time.perf_counter() - entry.started
        await self.run.record(ItemResult(source.label, entry.name, status, 0, seconds, error))

    async def send(self, sources: anyio.abc.ObjectReceiveStream[tuple[int, Source]]) -> None:
        """Send the items handed out to this worker with ``store_many``; record a
        result per item."""
        waiting: dict[_Entry, None] = {}  # handed to store_many, no result yet (in order)

        async def items() -> AsyncGenerator[tuple[_Entry, Callable[[], _Encoding]], None]:
            async for seq, source in sources:
                entry = await self.read(seq, source)
                if entry is not None:
                    waiting[entry] = None
                    yield entry, entry.encode

        feed = items()
        stream = cast(
            AsyncGenerator[StowResult[_Entry], None],
            self.sink.store_many(feed, exist_ok=self.options.overwrite),
        )
        try:
            async with aclosing(feed), aclosing(stream) as results:
                async for result in results:
                    # A result comes once its request has been answered: the others
                    # of that request still waiting are queued for a retry (known
                    # not to be stored), the rest not sent yet.
                    for other in waiting:
                        other.sent_whole = False
                    entry = result.label
                    waiting.pop(entry, None)
                    # the results of one answer are counted together, whatever happens
                    with anyio.CancelScope(shield=True):
                        await self.run.record(self._item(entry, result))
        except anyio.get_cancelled_exc_class():
            why = "the export was cancelled"
            for entry in waiting:
                if entry.sent_whole:
                    self.run._record_now(
                        ItemResult(
                            entry.source.label,
                            entry.name,
                            Status.FAILED,
                            0,
                            time.perf_counter() - entry.started,
                            _maybe_stored(self.sink.studies_url, why),
                        )
                    )
            raise

    def _item(self, entry: _Entry, result: StowResult[_Entry]) -> ItemResult:
        label, seconds = entry.source.label, time.perf_counter() - entry.started
        if result.status is StowStatus.STORED:
            return ItemResult(
                label,
                result.retrieve_url or entry.name,
                Status.WRITTEN,
                result.bytes,
                seconds,
                checksum=entry.checksum,
            )
        error = result.error or DicomWebError(
            f"{self.sink.studies_url} did not store the instance", url=self.sink.studies_url
        )
        skipped = result.status is StowStatus.EXISTS and self.options.skip_existing
        status = Status.SKIPPED if skipped else Status.FAILED
        return ItemResult(label, entry.name, status, 0, seconds, error)
