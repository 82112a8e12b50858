"""Systematic fault injection, cancellation and exclusive-create races, for every sink.

The promise is "exactly pydicom's bytes, or nothing at all".  Here every way a
write can stop part-way is tried, at every chunk boundary:

* the k-th ``write`` of the sink raises, for every k of a multi-chunk write, and
  the sink's ``commit`` raises before it publishes (the boundary after the last
  chunk);
* the k-th read of the dataset's (buffered) values raises, for every k;
* the write is cancelled by deadlines that grow until it completes, during a
  large write and during an export;
* many exclusive writers race for one destination, from tasks of one loop, from
  threads with their own loops, and (local files) from processes.

After each: the destination holds what it held before (absent, or the previous
content), no temporary file is left, no multipart upload is left open, and no
file descriptor or thread is leaked.  Every destination kind is covered: local
files (new and existing), ``BytesIO``, ``bytearray``, ``memory://``, ``file://``,
S3 (moto), GCS (fake-gcs-server) and Azure (Azurite).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.from_thread
import fsspec
import pytest
from pydicom.dataset import Dataset

import aiodicom
from aiodicom.sinks import Sink, resolve
from aiodicom.sinks.fsspec import FsspecFile
from tests.datasets import ct_slice, multiframe, racer
from tests.helpers import FailingFile, Reads, RecordingSink, open_fds, pydicom_bytes

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB


class InjectedError(OSError):
    """The error the fault injectors raise (an OSError, like a real I/O failure)."""


# --- a dataset of many chunks, its values read from files --------------------------


def chunky(pixels: int, reads: Reads | None = None, *, buffered: int = 4) -> Dataset:
    """A dataset that encodes into many chunks: `buffered` private OB values of
    ~70 kB given as files (each is read, then hits EOF: two reads per value), then
    `pixels` bytes of Pixel Data (passed on in slices of the core's chunk size)."""
    ds = multiframe(pixels) if pixels else ct_slice(16, 16)
    block = ds.private_block(0x0011, "AIODICOM FAULTS", create=True)
    for i in range(buffered):
        data = bytes([i + 1]) * (70_000 + i)  # one odd length: a pad byte after it
        value: Any = FailingFile(data, counter=reads) if reads is not None else data
        block.add_new(0x10 + i, "OB", value)
    return ds


def expected_bytes(pixels: int) -> bytes:
    return pydicom_bytes(chunky(pixels))


# --- failing sinks ------------------------------------------------------------------


def faulty(inner: Sink, fail_at: int | Literal["commit"] | None = None) -> RecordingSink:
    """Wraps a synchronous sink: the `fail_at`-th write (or the commit, before the
    inner one) raises InjectedError instead of writing."""
    return RecordingSink(inner, fail_at=fail_at, error=InjectedError, keep="nothing")


# --- leak checks --------------------------------------------------------------------


def no_file_leaks(before: set[str], after: set[str]) -> list[str]:
    """Files (not sockets, pipes or event fds of pooled connections) opened since."""
    return sorted(
        f for f in after - before if f.split(":", 1)[1].startswith("/") and "/dev/" not in f
    )


class LeakCheck:
    """Counts file descriptors and threads after a warm-up, and checks they do not
    grow: files must be exactly back, sockets and threads may not exceed the
    warm-up's (connection pools and the thread pool are reused, never grown)."""

    def __init__(self, thread_slack: int = 1) -> None:
        self.thread_slack = thread_slack
        self.fds = open_fds()
        self.threads = threading.active_count()
        self.sockets = self._sockets(self.fds)

    @staticmethod
    def _sockets(fds: set[str]) -> int:
        return sum(1 for f in fds if "socket:" in f)

    def check(self, what: str) -> None:
        fds = open_fds()
        assert no_file_leaks(self.fds, fds) == [], what
        # pooled connections may be replaced, never multiplied
        assert self._sockets(fds) <= self.sockets + 2, what
        assert threading.active_count() <= self.threads + self.thread_slack, what


# --- destinations -------------------------------------------------------------------

_ABSENT = b"<absent>"


class Target:
    """One destination kind: its destination object, its content, its leftovers."""

    name: str
    remote = False

    def destination(self) -> Any:
        raise NotImplementedError

    def content(self) -> bytes:
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        return []

    def storage_options(self) -> dict[str, Any] | None:
        return None

    def sink(self) -> Sink:
        sink = resolve(self.destination(), self.storage_options())
        assert isinstance(sink, Sink)
        return sink

    def reset(self) -> None:
        """Back to the starting state (absent or the previous content)."""

    def __repr__(self) -> str:
        return self.name


class LocalTarget(Target):
    def __init__(self, directory: Path, existing: bool) -> None:
        self.name = "existing-file" if existing else "new-file"
        self.dir = directory
        self.path = directory / "out.dcm"
        self.existing = existing
        self.reset()

    def reset(self) -> None:
        if self.existing:
            self.path.write_bytes(b"previous content")
            self.path.chmod(0o640)
        elif self.path.exists():
            self.path.unlink()

    def destination(self) -> Any:
        return self.path

    def content(self) -> bytes:
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else None
        data = self.path.read_bytes() if self.path.exists() else _ABSENT
        return data + f"|{mode}".encode()

    def leftovers(self) -> list[str]:
        return sorted(n for n in os.listdir(self.dir) if n != "out.dcm")


class BytesIOTarget(Target):
    name = "bytesio"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.buffer = io.BytesIO(b"0123456789")
        self.buffer.seek(4)

    def destination(self) -> Any:
        return self.buffer

    def content(self) -> bytes:
        return self.buffer.getvalue() + f"|{self.buffer.tell()}".encode()


class BytearrayTarget(Target):
    name = "bytearray"

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.buffer = bytearray(b"previous")

    def destination(self) -> Any:
        return self.buffer

    def content(self) -> bytes:
        return bytes(self.buffer)


class FsspecTarget(Target):
    """``memory://``, ``file://`` and object stores, through fsspec."""

    def __init__(
        self,
        name: str,
        root: str,
        options: dict[str, Any] | None = None,
        part_size: int | None = None,
        existing: bool = False,
    ) -> None:
        self.name = name + ("-existing" if existing else "")
        self.remote = name in ("s3", "gs", "az")
        self.root = root.rstrip("/")
        self.options = options or {}
        self.part_size = part_size
        self.existing = existing
        self.fs, self.base = fsspec.core.url_to_fs(self.root, **self.options)
        self.key = "out.dcm"
        self.reset()

    @property
    def url(self) -> str:
        return f"{self.root}/{self.key}"

    def reset(self) -> None:
        path = f"{self.base}/{self.key}"
        if self.existing:
            self.fs.pipe_file(path, b"previous content")
        elif self.fs.exists(path):
            self.fs.rm_file(path)
        self.fs.invalidate_cache()

    def destination(self) -> Any:
        return self.url

    def storage_options(self) -> dict[str, Any] | None:
        return self.options or None

    def sink(self) -> Sink:
        kwargs = {"part_size": self.part_size} if self.part_size else {}
        return FsspecFile.from_url(self.url, self.options, **kwargs)

    def content(self) -> bytes:
        self.fs.invalidate_cache()
        try:
            return bytes(self.fs.cat_file(f"{self.base}/{self.key}"))
        except FileNotFoundError:
            return _ABSENT

    def leftovers(self) -> list[str]:
        self.fs.invalidate_cache()
        names = sorted(p.rsplit("/", 1)[-1] for p in self.fs.ls(self.base, detail=False))
        out = [n for n in names if n != self.key]
        if self.name.startswith("s3"):
            uploads = self.fs.call_s3("list_multipart_uploads", Bucket=self.base)
            out += [f"upload:{u['Key']}" for u in uploads.get("Uploads", [])]
        return out


# Smallest part sizes each store allows (S3: 5 MiB; GCS: 256 KiB multiples; Azure:
# any, 64 KiB keeps several blocks small).
PART = {"s3": 5 * MiB, "gs": 256 * KiB, "az": 64 * KiB}
_ROOT_FIXTURE = {"s3": "s3_bucket", "gs": "gcs_bucket", "az": "azure_container"}
_OPTIONS_FIXTURE = {
    "s3": "s3_storage_options",
    "gs": "gcs_storage_options",
    "az": "azure_storage_options",
}

LOCAL_KINDS = ["new-file", "existing-file", "bytesio", "bytearray", "memory", "file-url"]
REMOTE_KINDS = [
    "s3-single",
    "s3-multipart",
    "gs-single",
    "gs-multipart",
    "az-single",
    "az-multipart",
]


def make_target(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if kind == "new-file":
        return LocalTarget(tmp_path, existing=False)
    if kind == "existing-file":
        return LocalTarget(tmp_path, existing=True)
    if kind == "bytesio":
        return BytesIOTarget()
    if kind == "bytearray":
        return BytearrayTarget()
    if kind == "memory":
        root = f"memory://aiodicom-faults-{tmp_path.name}"
        fsspec.filesystem("memory").mkdir(root)
        return FsspecTarget("memory", root, existing=True)
    if kind == "file-url":
        return FsspecTarget("file", f"file://{tmp_path}", existing=False)
    store, layout = kind.split("-")
    root = request.getfixturevalue(_ROOT_FIXTURE[store])
    options = request.getfixturevalue(_OPTIONS_FIXTURE[store])
    part = PART[store] if layout == "multipart" else None
    # a new object for single requests, replacing one for multipart (both matter)
    return FsspecTarget(store, root, options, part, existing=layout == "multipart")


def pixels_for(kind: str) -> int:
    """Pixel Data size: a few chunks locally; for object stores, 2.5 parts when
    multipart (S3's 5 MiB minimum makes that 12.5 MiB) or less than one part."""
    if kind == "s3-multipart":
        return 5 * PART["s3"] // 2
    if kind in ("gs-multipart", "az-multipart"):
        return 5 * PART[kind[:2]] // 2
    if kind.endswith("-single"):
        return 0
    return 9 * MiB  # three 4 MiB slices: head, values, slices


def count_writes(target: Target, pixels: int) -> int:
    """How many chunks the sink receives for this dataset (a dry run)."""
    counter = RecordingSink(keep="nothing")
    anyio.run(aiodicom.dcmwrite, counter, chunky(pixels))
    return counter.writes


def count_reads(pixels: int) -> int:
    """How many reads aiodicom makes of the buffered values (a dry run)."""
    reads = Reads()
    anyio.run(aiodicom.dcmwrite, io.BytesIO(), chunky(pixels, reads))
    return reads.count


async def _warm_up(target: Target, pixels: int) -> LeakCheck:
    """One good write and one failed write, so pools exist before counting."""
    await aiodicom.dcmwrite(faulty(target.sink()), chunky(pixels))
    with pytest.raises(InjectedError):
        await aiodicom.dcmwrite(faulty(target.sink(), fail_at=2), chunky(pixels))
    target.reset()
    return LeakCheck()


def _assert_untouched(target: Target, before: bytes, what: str) -> None:
    assert target.content() == before, what
    assert target.leftovers() == [], what


async def _every_write_boundary(target: Target, pixels: int) -> int:
    n = await anyio.to_thread.run_sync(count_writes, target, pixels)
    assert n >= 3, "the dataset must be written in several chunks"
    leaks = await _warm_up(target, pixels)
    before = target.content()
    for k in range(1, n + 2):  # n + 1: commit fails after the last chunk
        what = f"{target}: write {k} of {n} failed"
        sink = faulty(target.sink(), fail_at=k if k <= n else "commit")
        with pytest.raises(InjectedError):
            await aiodicom.dcmwrite(sink, chunky(pixels))
        assert sink.aborted, what
        assert not sink.committed, what
        assert sink.writes == min(k, n), what  # nothing written after the failure
        _assert_untouched(target, before, what)
        leaks.check(what)
    return n


async def _every_read(target: Target, pixels: int) -> int:
    n = await anyio.to_thread.run_sync(count_reads, pixels)
    assert n >= 4
    leaks = await _warm_up(target, pixels)
    before = target.content()
    for k in range(1, n + 1):
        what = f"{target}: read {k} of {n} failed"
        reads = Reads(fail_at=k, error=InjectedError)
        with pytest.raises(InjectedError, match=f"read {k} failed"):
            # the destination itself, not a wrapper: the driver's own path to the sink
            await aiodicom.dcmwrite(
                target.destination(),
                chunky(pixels, reads),
                storage_options=target.storage_options(),
            )
        assert reads.count == k, what  # stopped at the failing read
        _assert_untouched(target, before, what)
        leaks.check(what)
    return n


@pytest.mark.parametrize("kind", LOCAL_KINDS)
async def test_write_fails_at_every_chunk_boundary_local(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target = make_target(kind, request, tmp_path)
    await _every_write_boundary(target, pixels_for(kind))


@pytest.mark.parametrize("kind", LOCAL_KINDS)
async def test_source_read_fails_at_every_read_local(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target = make_target(kind, request, tmp_path)
    await _every_read(target, pixels_for(kind))


@pytest.mark.parametrize("kind", REMOTE_KINDS)
async def test_write_fails_at_every_chunk_boundary_remote(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target = make_target(kind, request, tmp_path)
    pixels = pixels_for(kind)
    if kind.endswith("multipart"):
        assert len(expected_bytes(pixels)) > 2 * PART[kind[:2]]
    await _every_write_boundary(target, pixels)


@pytest.mark.parametrize("kind", REMOTE_KINDS)
async def test_source_read_fails_at_every_read_remote(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    target = make_target(kind, request, tmp_path)
    await _every_read(target, pixels_for(kind))


async def test_faulty_sink_passes_everything_when_not_failing(tmp_path: Path) -> None:
    """The injector itself: with no failure, the file is pydicom's, byte for byte."""
    target = LocalTarget(tmp_path, existing=True)
    sink = faulty(target.sink())
    await aiodicom.dcmwrite(sink, chunky(9 * MiB))
    assert sink.committed
    assert not sink.aborted
    assert target.path.read_bytes() == expected_bytes(9 * MiB)


# --- cancellation at growing deadlines ----------------------------------------------


async def cancel_after(
    delay: float, scope: anyio.CancelScope, cancelled: threading.Event, work: Any
) -> None:
    """Await `work()`; cancel `scope` after `delay` seconds unless it is done.
    `cancelled` is set (for worker threads to see) just before the cancellation."""

    async def timer() -> None:
        await anyio.sleep(delay)
        cancelled.set()
        scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(timer)
        await work()
        group.cancel_scope.cancel()


def _deadlines() -> Iterator[float]:
    """0, then 0.5 ms doubling: growing until the write completes in time."""
    yield 0.0
    deadline = 0.0005
    while deadline < 30:
        yield deadline
        deadline *= 2


LARGE = 48 * MiB  # twelve 4 MiB slices


@pytest.fixture(scope="module")
def large_dataset() -> Dataset:
    return multiframe(LARGE)


@pytest.fixture(scope="module")
def large_expected(large_dataset: Dataset) -> bytes:
    return pydicom_bytes(large_dataset)


@pytest.mark.parametrize("kind", ["existing-file", "bytesio", "memory"])
async def test_cancel_at_growing_deadlines_large_write(
    kind: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    large_dataset: Dataset,
    large_expected: bytes,
) -> None:
    target = make_target(kind, request, tmp_path)
    before = target.content()
    await aiodicom.dcmwrite(target.sink(), large_dataset)  # warm-up: pools exist
    target.reset()
    leaks = LeakCheck()
    outcomes = []
    for deadline in _deadlines():
        target.reset()
        cancelled = threading.Event()
        tap = RecordingSink(target.sink(), cancelled=cancelled, keep="nothing")
        finished: list[bool] = []

        async def write(tap: RecordingSink = tap, finished: list[bool] = finished) -> None:
            await aiodicom.dcmwrite(tap, large_dataset)
            finished.append(True)

        with anyio.CancelScope() as scope:
            await cancel_after(deadline, scope, cancelled, write)
        what = f"{target}, deadline {deadline * 1000:.1f} ms"
        # prompt: at most the chunk in hand when the cancellation arrived
        assert tap.writes_after_cancel <= 1, what
        content = target.content()
        if finished:  # returned: complete (a cancellation may still land just after)
            assert large_expected in content, what
            outcomes.append("done")
            break
        assert scope.cancelled_caught, what
        assert content == before, what
        outcomes.append("cancelled")
        assert target.leftovers() == [], what
        leaks.check(what)
    assert "cancelled" in outcomes
    assert outcomes[-1] == "done"


async def test_cancel_large_write_is_prompt_in_the_encoder(tmp_path: Path) -> None:
    """Cancelled while the core reads a large buffered value: it stops reading
    (no waiting for the whole dataset to encode), aborts, leaves nothing."""
    path = tmp_path / "x.dcm"
    with anyio.CancelScope() as scope:
        reads = Reads(fail_at=3)

        def cancel() -> None:
            reads.cancelled.set()
            anyio.from_thread.run_sync(scope.cancel)

        reads.on_read = cancel
        ds = chunky(0, reads, buffered=12)
        await aiodicom.dcmwrite(path, ds)
    assert scope.cancelled_caught
    assert reads.count < 12 * 2
    assert reads.after_cancel <= 1
    assert os.listdir(tmp_path) == []


def _export_item(i: int, reads: Reads | None = None) -> Dataset:
    ds = chunky(0, reads, buffered=4)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{i}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


@pytest.mark.parametrize("target_kind", ["local", "memory"])
async def test_cancel_export_at_growing_deadlines(tmp_path: Path, target_kind: str) -> None:
    n_items, concurrency = 24, 4
    expected = {
        f"{_export_item(i).SOPInstanceUID}.dcm": pydicom_bytes(
            _export_item(i, Reads()), copy=False
        )
        for i in range(n_items)
    }
    # warm-up: a whole export, so the thread pool has its workers before counting
    warm = str(tmp_path / "warm") if target_kind == "local" else f"memory://warm-{tmp_path.name}"
    report = await aiodicom.export(
        [_export_item(i) for i in range(n_items)], warm, concurrency=concurrency
    )
    assert report.ok
    # idle pooled workers: as many as items in flight (a leak grows with every run)
    leaks = LeakCheck(thread_slack=concurrency + 2)
    for n, deadline in enumerate(_deadlines()):
        if target_kind == "local":
            root = str(tmp_path / f"run{n}")
            fs: Any = fsspec.filesystem("file")
        else:
            root = f"memory://aiodicom-export-{tmp_path.name}-{n}"
            fs = fsspec.filesystem("memory")
        reads = Reads()
        pulled_after_cancel: list[int] = []

        async def sources(reads: Reads = reads, pulled: list[int] = pulled_after_cancel) -> Any:
            for i in range(n_items):
                if reads.cancelled.is_set():
                    pulled.append(i)
                yield _export_item(i, reads)

        with anyio.CancelScope() as scope:
            await cancel_after(
                deadline,
                scope,
                reads.cancelled,
                lambda root=root: aiodicom.export(
                    sources(), root, template="{SOPInstanceUID}.dcm", concurrency=concurrency
                ),
            )
        what = f"export {target_kind}, deadline {deadline * 1000:.1f} ms"
        # prompt: at most the item in hand is pulled, and each item in flight
        # stops at its next chunk: cancellation is checked once per chunk handed to
        # the sink, and getting there may take two reads (the EOF read of the value
        # in hand, then the first read of the next value, which is the next chunk)
        assert len(pulled_after_cancel) <= 1, what
        assert reads.after_cancel <= 2 * concurrency, what
        files = sorted(fs.ls(root, detail=False)) if fs.exists(root) else []
        names = [f.rsplit("/", 1)[-1] for f in files]
        # every file there is whole; nothing else (no temporary files)
        assert set(names) <= set(expected), (what, names)
        for f, name in zip(files, names, strict=True):
            assert fs.cat_file(f) == expected[name], what
        leaks.check(what)
        if not scope.cancelled_caught:
            assert len(names) == n_items, what
            break
    else:  # pragma: no cover - the machine would have to be impossibly slow
        pytest.fail("the export never completed")


# --- exclusive-create races ---------------------------------------------------------


def _race_in_threads(
    destination: Callable[[], Any], storage_options: dict[str, Any] | None, n: int, pixels: int
) -> list[int]:
    """`n` threads, each with its own event loop (alternately asyncio and trio),
    released at once; returns the winners."""
    barrier = threading.Barrier(n)
    winners: list[int] = []
    errors: list[BaseException] = []

    def run(i: int) -> None:
        ds = racer(i, pixels)

        async def write() -> None:
            barrier.wait()
            await aiodicom.dcmwrite(
                destination(), ds, exist_ok=False, storage_options=storage_options
            )

        try:
            anyio.run(write, backend="trio" if i % 2 else "asyncio")
        except FileExistsError:
            return
        except BaseException as exc:
            errors.append(exc)
            return
        winners.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    return winners


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the loops are the threads'
@pytest.mark.parametrize("kind", ["local", "memory", "s3", "gs", "az"])
async def test_exclusive_race_across_threads_and_loops(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "local":
        path = tmp_path / "race.dcm"
        options = None

        def read() -> bytes:
            return path.read_bytes()

        def destination() -> Any:
            return path
    else:
        target = (
            FsspecTarget("memory", f"memory://aiodicom-race-{tmp_path.name}")
            if kind == "memory"
            else FsspecTarget(
                kind,
                request.getfixturevalue(_ROOT_FIXTURE[kind]),
                request.getfixturevalue(_OPTIONS_FIXTURE[kind]),
            )
        )
        target.key = "race.dcm"
        options = target.storage_options()
        read = target.content

        def destination() -> Any:
            return target.url

    winners = await anyio.to_thread.run_sync(_race_in_threads, destination, options, 12, 32 * KiB)
    assert len(winners) == 1
    assert read() == pydicom_bytes(racer(winners[0]))
    if kind == "local":
        assert os.listdir(tmp_path) == ["race.dcm"]


_PROCESS_RACER = textwrap.dedent(
    """
    import sys, anyio, aiodicom
    sys.path.insert(0, sys.argv[3])
    from tests.datasets import racer
    i = int(sys.argv[2])
    ds = racer(i, 256 * 1024)
    sys.stdin.readline()  # the starting gun
    try:
        anyio.run(lambda: aiodicom.dcmwrite(sys.argv[1], ds, exist_ok=False))
    except FileExistsError:
        print("exists")
    else:
        print("won")
    """
)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_exclusive_race_across_processes_local(tmp_path: Path) -> None:
    """Processes, not tasks: real parallelism on the link-based exclusive publish."""
    path = tmp_path / "race.dcm"
    root = str(Path(__file__).resolve().parent.parent)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS_RACER, str(path), str(i), root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    await anyio.sleep(0)
    # wait until every process has built its dataset? they block on stdin anyway
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = []
    for p in procs:
        out, _ = await anyio.to_thread.run_sync(p.communicate)
        assert p.returncode == 0
        outputs.append(out.strip())
    assert sorted(outputs) == ["exists"] * 7 + ["won"]
    winner = outputs.index("won")
    assert path.read_bytes() == pydicom_bytes(racer(winner, 256 * 1024))
    assert os.listdir(tmp_path) == ["race.dcm"]


async def test_cancelled_while_taking_the_inline_lock_encodes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Light datasets are encoded in the loop, one at a time (a lock).  A write
    cancelled just as it takes the lock (anyio's fast path resumes it shielded)
    must not encode the dataset before it stops."""
    import aiodicom._core.encode
    from aiodicom._core import is_light
    from aiodicom._driver import _inline_lock

    encoded: list[int] = []
    real = aiodicom._core.encode.write_data_element

    def counting(*args: Any, **kwargs: Any) -> None:
        encoded.append(1)
        real(*args, **kwargs)

    monkeypatch.setattr(aiodicom._core.encode, "write_data_element", counting)
    ds = ct_slice(8, 8)
    assert is_light(ds)
    lock = _inline_lock()
    caught = 0
    for attempt in range(50):  # trio may schedule the window away: try again
        directory = tmp_path / str(attempt)
        directory.mkdir()
        encoded.clear()
        seen_locked = False
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(aiodicom.dcmwrite, directory / "x.dcm", ds)
                for _ in range(1000):
                    if lock.locked():
                        seen_locked = True
                        break
                    await anyio.sleep(0)
                scope.cancel()
        if not seen_locked:
            continue
        caught += 1
        assert scope.cancelled_caught
        assert encoded == []
        assert os.listdir(directory) == []
        if caught >= 3:
            break
    assert caught >= 1


async def test_azure_failed_block_upload_leaves_no_blocks_behind(
    azure_container: str, azure_storage_options: dict[str, Any]
) -> None:
    """What docs/guarantees.md says of Azure: after a failed block upload of a new
    blob, the blob is neither readable nor listed, and its uncommitted blocks are
    deleted with it (no uncommitted blob is listed either)."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    target = FsspecTarget("az", azure_container, azure_storage_options, PART["az"])
    with pytest.raises(InjectedError):
        await aiodicom.dcmwrite(faulty(target.sink(), fail_at=8), chunky(5 * PART["az"] // 2))
    assert target.content() == _ABSENT
    assert target.leftovers() == []
    service = BlobServiceClient.from_connection_string(azure_storage_options["connection_string"])
    container = service.get_container_client(target.base)
    assert [b.name for b in container.list_blobs()] == []
    assert [b.name for b in container.list_blobs(include=["uncommittedblobs"])] == []
    with pytest.raises(ResourceNotFoundError):
        container.get_blob_client(target.key).get_block_list("uncommitted")
