"""Helpers shared by the test modules (test modules never import each other).

* :func:`pydicom_bytes`: what :func:`pydicom.dcmwrite` writes, the reference every
  byte-parity assertion compares to; :func:`read_dataset` reads a file as the tests do.
* :class:`FailingFile` and :class:`Reads`: buffered values (file objects) whose n-th
  read raises or cancels, to stop a write part-way from the source side.
* :class:`RecordingSink` / :class:`AsyncRecordingSink`: one test sink, synchronous
  and asynchronous, that records what the driver does (chunks, commit, abort) and
  can be told to fail at a chunk or at commit, to be slow, or to wrap a real sink.
* :func:`open_fds`, :func:`listing`, :func:`drained`: leak checks and destinations.
* The parity machinery (:class:`Options`, :func:`write_pydicom`,
  :func:`write_aiodicom`, :func:`assert_same`...): run both writers, record all
  they did, and compare.

Dataset factories live in :mod:`tests.datasets`, server fixtures in
:mod:`tests.servers` (registered by ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from pydicom.valuerep import VR

import aiodicom
from aiodicom.sinks import AsyncSink, AsyncWriter, Chunk, Sink, Writer
from tests import datasets

# --- the reference bytes ------------------------------------------------------------


BROKEN_DICOM = b"\x08\x00\x05\x00" + b"\x00" * 60
"""A file that starts like a DICOM data set (group 0008, no preamble) that pydicom
refuses without ``force``: an export *fails* it (``InvalidDicomError``), where a
file that is not DICOM at all (``b"junk"``) is *skipped*."""


def read_dataset(path: str | os.PathLike[str]) -> Dataset:
    """`path` read with ``force=True`` (pydicom's test files include non-DICOM ones),
    its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def pydicom_bytes(
    source: Dataset | str | os.PathLike[str], *, copy: bool = True, **kwargs: Any
) -> bytes:
    """What :func:`pydicom.dcmwrite` writes for `source` (with `kwargs`), as bytes.

    A dataset is written as a deep copy, since pydicom changes what it writes (the
    file meta with ``enforce_file_format=True``, undefined-length flags): the
    caller's dataset is left as it was for aiodicom.  ``copy=False`` writes the
    dataset itself, for values that cannot be copied (files sharing a read
    counter).  A path is read first (:func:`read_dataset`).
    """
    if isinstance(source, Dataset):
        dataset = deepcopy(source) if copy else source
    else:
        dataset = read_dataset(source)
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset, **kwargs)
    return out.getvalue()


# --- failing sources ----------------------------------------------------------------


class Reads:
    """A read counter, shared by one or several buffered values.

    The `fail_at`-th read (counted across all of them) raises ``error(message)``
    or, given `on_read`, calls it instead (e.g. to cancel) and reads on.  Reads
    that happen once `cancelled` is set are counted in `after_cancel`.
    """

    def __init__(
        self,
        fail_at: int = 0,
        on_read: Callable[[], None] | None = None,
        error: Callable[[str], BaseException] = OSError,
    ) -> None:
        self.count = 0
        self.fail_at = fail_at
        self.on_read = on_read
        self.error = error
        self.after_cancel = 0
        self.cancelled = threading.Event()

    def hit(self) -> None:
        self.count += 1
        if self.cancelled.is_set():
            self.after_cancel += 1
        if self.count == self.fail_at:
            if self.on_read is None:
                raise self.error(f"read {self.count} failed: disk on fire")
            self.on_read()


class BytesValue(io.BufferedIOBase):
    """A readable, seekable value for a buffered element (Pixel Data given as a
    file), over `data` in memory; subclasses change what a read does."""

    def __init__(self, data: bytes) -> None:
        self._raw = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def read(self, size: int | None = -1) -> bytes:
        return self._raw.read(size)


class FailingFile(BytesValue):
    """A seekable, readable value for a buffered element (e.g. Pixel Data given as
    a file) that misbehaves on the `fail_at`-th read: raises :class:`OSError`
    ("disk on fire"), or calls `on_read`.  Pass `counter` to count (and fail)
    across several files instead."""

    def __init__(
        self,
        data: bytes,
        fail_at: int = 0,
        on_read: Callable[[], None] | None = None,
        *,
        counter: Reads | None = None,
    ) -> None:
        super().__init__(data)
        self.counter = counter if counter is not None else Reads(fail_at, on_read)

    @property
    def reads(self) -> int:
        """How often this file (or the files sharing its counter) was read."""
        return self.counter.count

    def read(self, size: int | None = -1) -> bytes:
        self.counter.hit()
        return self._raw.read(size)


# --- the recording sink -------------------------------------------------------------

Keep = Literal["copies", "chunks", "digest", "nothing"]


class _Recording:
    """What :class:`RecordingSink` and :class:`AsyncRecordingSink` share: the
    options, the counters, and the bookkeeping of one write (:class:`_Attempt`).

    Counters over all attempts (one attempt per ``open``): `attempts`, `writes`
    (calls, a failing one included), `size` (bytes recorded), `commits`, `aborts`,
    `writes_after_cancel`.  Of the last attempt: `chunks` and `sha256`.  `published`
    is what the last commit published (the chunks joined; ``None`` before any
    commit, or the `published` given, standing for previous content).
    """

    def __init__(
        self,
        *,
        fail_at: int | Literal["commit"] | None = None,
        failing_attempts: int | None = None,
        error: Callable[[str], BaseException] = OSError,
        delay: float = 0.0,
        on_write: Callable[[int], None] | None = None,
        cancelled: threading.Event | None = None,
        retries: int | None = None,
        keep: Keep = "copies",
        published: bytes | None = None,
    ) -> None:
        self.fail_at = fail_at
        self.failing_attempts = failing_attempts
        self.error = error
        self.delay = delay
        self.on_write = on_write
        self.cancelled = cancelled
        self.keep = keep
        if retries is not None:  # the optional capability: absent unless asked for
            self.retries = retries
        self.published = published
        self.attempts = 0
        self.writes = 0
        self.size = 0
        self.commits = 0
        self.aborts = 0
        self.writes_after_cancel = 0
        self.chunks: list[Chunk] = []
        self.sha256: Any = None

    @property
    def committed(self) -> bool:
        return self.commits > 0

    @property
    def aborted(self) -> bool:
        return self.aborts > 0

    @property
    def data(self) -> bytes:
        """The chunks of the last attempt, joined (``keep`` "copies" or "chunks")."""
        return b"".join(bytes(c) for c in self.chunks)

    def _start(self) -> _Attempt:
        self.attempts += 1
        return _Attempt(self)


class _Attempt:
    """The bookkeeping of one write (one ``open``), for both writer flavours."""

    def __init__(self, sink: _Recording) -> None:
        self.sink = sink
        self.number = sink.attempts
        self.writes = 0
        self.size = 0
        sink.chunks = self.chunks = []
        sink.sha256 = self.sha256 = hashlib.sha256() if sink.keep == "digest" else None

    def _fails(self, at: int | Literal["commit"]) -> bool:
        sink = self.sink
        if sink.failing_attempts is not None and self.number > sink.failing_attempts:
            return False
        return sink.fail_at == at

    def before_write(self) -> None:
        """Count the call; raise if this is the chunk to fail at."""
        sink = self.sink
        sink.writes += 1
        self.writes += 1
        if sink.cancelled is not None and sink.cancelled.is_set():
            sink.writes_after_cancel += 1
        if self._fails(self.writes):
            raise sink.error(f"write {self.writes} failed")

    def after_write(self, chunk: Chunk) -> None:
        """Record a written chunk, then call the `on_write` hook."""
        sink = self.sink
        n = memoryview(chunk).nbytes
        self.size += n
        sink.size += n
        if sink.keep == "copies":
            self.chunks.append(bytes(chunk))
        elif sink.keep == "chunks":
            self.chunks.append(chunk)
        elif self.sha256 is not None:
            self.sha256.update(chunk)
        if sink.on_write is not None:
            sink.on_write(self.size)

    def before_commit(self) -> None:
        if self._fails("commit"):
            raise self.sink.error("commit failed")

    def after_commit(self) -> None:
        sink = self.sink
        sink.commits += 1
        if sink.keep in ("copies", "chunks"):
            sink.published = b"".join(bytes(c) for c in self.chunks)

    def on_abort(self) -> None:
        self.sink.aborts += 1


class RecordingSink(_Recording):
    """A synchronous sink (:class:`aiodicom.sinks.Sink`) that records what the
    driver does to it.

    Parameters
    ----------
    inner
        A sink to pass every call on to (a wrapper around a real destination); by
        default the sink writes nowhere and publishes on commit.
    fail_at
        The write (1-based, within an attempt) that raises ``error("write N
        failed")`` instead of writing, or ``"commit"``: commit raises ``error("commit
        failed")`` before the inner commit.
    failing_attempts
        Only the first this many attempts fail (``None``: every one).
    error
        Builds the exception to raise from a message (default :class:`OSError`).
    delay
        Seconds every write takes (a slow destination).
    on_write
        Called after each chunk is written, with the bytes written so far in this
        attempt (may raise, or cancel).
    cancelled
        Writes starting after this event is set are counted in
        `writes_after_cancel`.
    retries
        Declares the optional ``retries`` capability (absent by default).
    keep
        What to keep of each chunk: ``"copies"`` (default), ``"chunks"`` (the objects
        as received, for identity checks: only where the caller keeps its buffers),
        ``"digest"`` (a running SHA-256 in `sha256`, for large writes), ``"nothing"``.
    published
        What the destination holds before the write (replaced on commit).
    """

    def __init__(self, inner: Sink | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.inner = inner

    def open(self, *, exist_ok: bool) -> RecordingWriter:
        attempt = self._start()
        inner = self.inner.open(exist_ok=exist_ok) if self.inner is not None else None
        return RecordingWriter(attempt, inner)


class RecordingWriter:
    def __init__(self, attempt: _Attempt, inner: Writer | None) -> None:
        self.attempt = attempt
        self.inner = inner

    def write(self, chunk: Chunk, /) -> None:
        self.attempt.before_write()
        if self.attempt.sink.delay:
            time.sleep(self.attempt.sink.delay)
        if self.inner is not None:
            self.inner.write(chunk)
        self.attempt.after_write(chunk)

    def commit(self) -> None:
        self.attempt.before_commit()
        if self.inner is not None:
            self.inner.commit()
        self.attempt.after_commit()

    def abort(self) -> None:
        self.attempt.on_abort()
        if self.inner is not None:
            self.inner.abort()


class AsyncRecordingSink(_Recording):
    """The asynchronous form of :class:`RecordingSink`
    (:class:`aiodicom.sinks.AsyncSink`), with the same options; `inner` is an
    async sink.  Every write and abort awaits a checkpoint (``anyio.sleep(delay)``),
    as a real async destination would."""

    def __init__(self, inner: AsyncSink | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.inner = inner

    async def open_async(self, *, exist_ok: bool) -> AsyncRecordingWriter:
        attempt = self._start()
        inner = None
        if self.inner is not None:
            inner = await self.inner.open_async(exist_ok=exist_ok)
        return AsyncRecordingWriter(attempt, inner)


class AsyncRecordingWriter:
    def __init__(self, attempt: _Attempt, inner: AsyncWriter | None) -> None:
        self.attempt = attempt
        self.inner = inner

    async def write(self, chunk: Chunk, /) -> None:
        self.attempt.before_write()
        await anyio.sleep(self.attempt.sink.delay)
        if self.inner is not None:
            await self.inner.write(chunk)
        self.attempt.after_write(chunk)

    async def commit(self) -> None:
        self.attempt.before_commit()
        if self.inner is not None:
            await self.inner.commit()
        self.attempt.after_commit()

    async def abort(self) -> None:
        self.attempt.on_abort()
        await anyio.sleep(0)
        if self.inner is not None:
            await self.inner.abort()


class WriteOnly:
    """A destination with only ``write()``: a socket, an HTTP body, a pipe wrapper
    (pydicom #154).  What it was given is in `data`."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: Any) -> int:
        self.data += data
        return memoryview(data).nbytes


class HashingFile:
    """A write-only file object (``write``, ``tell``; ``seek`` unsupported) keeping
    only a SHA-256 and a length: for comparing writes of hundreds of MiB without
    holding two copies."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.length = 0

    def write(self, data: Any) -> int:
        self.digest.update(data)
        n = memoryview(data).nbytes
        self.length += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:  # pydicom's DicomIO wants these
        raise io.UnsupportedOperation("seek")

    def tell(self) -> int:
        return self.length


# --- leaks and destinations ---------------------------------------------------------


def read_report(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``--report`` file (JSON Lines): its summary line and its item lines."""
    import json

    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    *items, last = lines
    assert set(last) == {"summary"}, last
    assert all("summary" not in item for item in items)
    return last["summary"], items


def open_fds() -> set[str]:
    """What this process has open, as ``"fd:target"`` (targets of /proc/self/fd).
    ``len(open_fds())`` counts the file descriptors."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the fd of the listing itself
            out.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


def listing(directory: Path) -> list[str]:
    """The names in `directory`, sorted."""
    return sorted(os.listdir(directory))


@contextlib.contextmanager
def drained(reader: str | os.PathLike[str] | int) -> Iterator[bytearray]:
    """Read a FIFO (a path) or a pipe (a file descriptor) to its end in a thread,
    while the block runs; yields what was received so far (complete after it)."""
    received = bytearray()

    def drain() -> None:
        with open(reader, "rb") as f:
            while data := f.read(65536):
                received.extend(data)

    thread = threading.Thread(target=drain)
    thread.start()
    try:
        yield received
    finally:
        thread.join(10)


# --- parity: run both writers, record everything observable, compare -----------------


@dataclass(frozen=True)
class Options:
    """One call's arguments after destination and dataset."""

    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def keywords(self) -> dict[str, Any]:
        return dict(self.kwargs)

    def __str__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"({', '.join(parts)})"


@dataclass
class Outcome:
    """What one write did."""

    output: bytes | None = None
    error: tuple[type[BaseException], str] | None = None
    warnings: list[tuple[type[Warning], str]] = field(default_factory=list)
    state: Any = None
    destination_encoding: tuple[Any, Any] | None = None

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.error[0].__name__}: {self.error[1][:300]}"
        assert self.output is not None
        return f"{len(self.output)} bytes"


def error_key(exc: BaseException) -> tuple[type[BaseException], str]:
    """Type and message, cut where pydicom embeds a traceback in the message."""
    message = str(exc)
    cut = message.find("\nTraceback (most recent call last)")
    return type(exc), message if cut < 0 else message[:cut]


@dataclass
class _Recorder:
    records: list[warnings.WarningMessage] = field(default_factory=list)

    def result(self) -> list[tuple[type[Warning], str]]:
        # ResourceWarnings come from the garbage collector, whenever it runs
        return [
            (r.category, str(r.message))
            for r in self.records
            if not issubclass(r.category, ResourceWarning)
        ]


class record_warnings:
    """``catch_warnings(record=True)`` with every warning shown every time.

    The warnings module's state is process-wide, so warnings raised in the worker
    thread that aiodicom encodes in are recorded too.
    """

    def __enter__(self) -> _Recorder:
        self._cm = warnings.catch_warnings(record=True)
        recorder = _Recorder(self._cm.__enter__())
        warnings.simplefilter("always")
        return recorder

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


def element_state(elem: DataElement | RawDataElement) -> tuple[Any, ...]:
    if isinstance(elem, RawDataElement):
        return ("raw", tuple(elem))
    value: Any = elem.value
    if elem.VR == VR.SQ:
        value = (
            getattr(value, "is_undefined_length", None),
            [dataset_state(item) for item in value],
        )
    elif elem.is_buffered:
        value = ("buffered", value.closed, None if value.closed else value.tell())
    elif isinstance(value, bytes | bytearray | memoryview):
        try:
            value = (type(value).__name__, bytes(value))
        except BufferError:
            value = (type(value).__name__, value.tobytes())
    else:
        value = (type(value).__name__, repr(value))
    return ("elem", elem.tag, elem.VR, elem.is_undefined_length, value)


def dataset_state(ds: Dataset) -> tuple[Any, ...]:
    """Everything about `ds` a write may change, in comparable form."""
    attrs = tuple(
        (name, getattr(ds, name, "<unset>"))
        for name in (
            "preamble",
            "_is_implicit_VR",
            "_is_little_endian",
            "_read_implicit",
            "_read_little",
            "_character_set",
            "is_undefined_length_sequence_item",
        )
    )
    meta = getattr(ds, "file_meta", None)
    return (
        type(ds).__name__,
        attrs,
        None if meta is None else dataset_state(meta),
        tuple((tag, element_state(ds._dict[tag])) for tag in sorted(ds._dict)),
    )


def _destination_encoding(destination: Any) -> tuple[Any, Any] | None:
    if isinstance(destination, DicomBytesIO):
        return (
            getattr(destination, "_implicit_vr", None),
            getattr(destination, "_little_endian", None),
        )
    return None


@contextlib.contextmanager
def _observing(ds: Dataset, destination: Any, read: Callable[[], bytes]) -> Iterator[Outcome]:
    """Record what the write in the block did: its error (suppressed) or else its
    output (``read()``), its warnings, the dataset and the destination after it."""
    outcome = Outcome()
    with record_warnings() as rec:
        try:
            yield outcome
        except Exception as exc:
            outcome.error = error_key(exc)
        else:
            outcome.output = read()
    outcome.warnings = rec.result()
    outcome.state = dataset_state(ds)
    outcome.destination_encoding = _destination_encoding(destination)


def write_pydicom(
    ds: Dataset, destination: Any, options: Options, read: Callable[[], bytes]
) -> Outcome:
    """Run :func:`pydicom.dcmwrite` and record what it did."""
    with _observing(ds, destination, read) as outcome:
        pydicom.dcmwrite(destination, ds, *options.args, **options.keywords)
    return outcome


async def write_aiodicom(
    ds: Dataset, destination: Any, options: Options, read: Callable[[], bytes]
) -> Outcome:
    """Run :func:`aiodicom.dcmwrite` and record what it did."""
    with _observing(ds, destination, read) as outcome:
        await aiodicom.dcmwrite(destination, ds, *options.args, **options.keywords)
    return outcome


def assert_same(expected: Outcome, actual: Outcome, context: str) -> None:
    """The two outcomes agree (``expected`` is pydicom's).

    Fails with a short message of its own: pytest's diff of two large dataset
    states would take minutes and gigabytes.
    """
    difference = _outcome_difference(expected, actual)
    if difference is not None:
        pytest.fail(f"{context}: {difference}", pytrace=False)


def _outcome_difference(expected: Outcome, actual: Outcome) -> str | None:
    """The first way the outcomes differ, briefly, or ``None``."""
    if actual.error != expected.error:
        return f"pydicom {expected.describe()!r} but aiodicom {actual.describe()!r}"
    if expected.error is None and actual.output != expected.output:
        where = _first_difference(expected.output, actual.output)
        return (
            f"output differs ({expected.describe()} vs {actual.describe()}), "
            f"first difference at {where}"
        )
    if actual.warnings != expected.warnings:
        return (
            f"warnings differ: pydicom {expected.warnings!r:.2000} "
            f"aiodicom {actual.warnings!r:.2000}"
        )
    if actual.state != expected.state:
        where = _state_difference(expected.state, actual.state)
        return f"dataset state after write differs: {where}"
    if actual.destination_encoding != expected.destination_encoding:
        return (
            f"DicomBytesIO encoding differs: pydicom {expected.destination_encoding} "
            f"aiodicom {actual.destination_encoding}"
        )
    return None


def _state_difference(a: Any, b: Any, path: str = "") -> str:
    """Where two nested state tuples first differ, briefly."""
    if isinstance(a, tuple | list) and isinstance(b, tuple | list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y:
                return _state_difference(x, y, f"{path}[{i}]")
    return f"at {path}: pydicom {a!r:.500} aiodicom {b!r:.500}"


def _first_difference(a: bytes | None, b: bytes | None) -> int | None:
    if a is None or b is None:
        return None
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


# --- DICOMweb (Orthanc and the fake server) ------------------------------------------

MiB = 1024 * 1024


def fresh(ds: Dataset) -> Dataset:
    """`ds` with a SOP Instance UID of its own (and the identifiers Orthanc needs)."""
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if keyword not in ds:
            setattr(ds, keyword, generate_uid())
    if "PatientID" not in ds:
        ds.PatientID = "PID-DICOMWEB"
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = uid
    return ds


def ct(rows: int = 32) -> Dataset:
    return fresh(datasets.ct_slice(rows, rows))


def rest(base: str) -> str:
    return base.removesuffix("/dicom-web")


async def stored_file(base: str, uid: str) -> bytes | None:
    """What Orthanc holds for `uid` (``None``: nothing), read with /instances/{id}/file."""
    async with httpx.AsyncClient(timeout=60) as client:
        found = await client.post(
            f"{rest(base)}/tools/find",
            json={"Level": "Instance", "Query": {"SOPInstanceUID": uid}},
        )
        ids = found.json()
        assert len(ids) <= 1, ids
        if not ids:
            return None
        return (await client.get(f"{rest(base)}/instances/{ids[0]}/file")).content


class HookedFile(BytesValue):
    """A buffered Pixel Data value that calls `hook` on its `at`-th read (once,
    across writes: a retry reads it again without the hook)."""

    def __init__(self, data: bytes, at: int, hook: Callable[[], None]) -> None:
        super().__init__(data)
        self.reads = 0
        self.at = at
        self.hook: Callable[[], None] | None = hook

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads == self.at and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return self._raw.read(size)


def raising() -> None:
    raise OSError("disk on fire")


def hooked(n_bytes: int, at: int, hook: Callable[[], None]) -> tuple[Dataset, bytes]:
    """A dataset whose 4 MiB-read Pixel Data calls `hook` at read `at`, and its
    reference bytes."""
    data = np.random.default_rng(n_bytes).integers(0, 256, n_bytes, dtype="u1").tobytes()
    ds = fresh(datasets.ct_slice(8, 8))
    ds.PixelData = io.BytesIO(data)
    ds["PixelData"].VR = "OW"
    expected = pydicom_bytes(ds, copy=False)
    ds.PixelData = HookedFile(data, at, hook)
    ds["PixelData"].VR = "OW"
    return ds, expected


# --- object stores under test ----------------------------------------------------------


class RemoteStore:
    """One object store under test (a bucket or container on a test server): where
    to write, with which part size, and how to read back what is there.  Test
    modules subclass it for what else they look at."""

    def __init__(self, name: str, root: str, options: dict[str, Any], part_size: int) -> None:
        import fsspec

        self.name = name  # "s3", "gs", "az"
        self.root = root  # "s3://bucket"
        self.options = options
        self.part_size = part_size
        self.fs, self.bucket = fsspec.core.url_to_fs(root, **options)

    def __repr__(self) -> str:
        return self.name

    def url(self, key: str) -> str:
        return f"{self.root}/{key}"

    def sink(self, key: str, **kwargs: Any) -> aiodicom.sinks.FsspecFile:
        kwargs.setdefault("part_size", self.part_size)
        return aiodicom.sinks.FsspecFile.from_url(self.url(key), self.options, **kwargs)

    def read(self, key: str) -> bytes | None:
        """The object's bytes now, or ``None`` if there is none."""
        self.fs.invalidate_cache()
        try:
            return bytes(self.fs.cat_file(f"{self.bucket}/{key}"))
        except FileNotFoundError:
            return None


# --- corruption on the way out (integrity tests) -----------------------------------


def flipped(data: bytes) -> bytes:
    """`data` with one bit of its middle byte flipped."""
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


@contextmanager
def corrupting(
    monkeypatch: pytest.MonkeyPatch,
    store: type[Any],
    method: str,
    *,
    when: Callable[..., bool] = lambda *args: True,
) -> Iterator[list[int]]:
    """Flip a byte of the body that `store.method` sends (its first ``bytes``
    argument), after aiodicom has checksummed it; yields the list of the calls
    that were corrupted."""
    real = getattr(store, method)
    calls: list[int] = []

    async def corrupt(self: Any, *args: Any) -> Any:
        position = next(i for i, arg in enumerate(args) if isinstance(arg, bytes))
        if when(*args):
            calls.append(len(calls) + 1)
            args = (*args[:position], flipped(args[position]), *args[position + 1 :])
        return await real(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(store, method, corrupt)
        yield calls
