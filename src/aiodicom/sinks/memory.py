"""In-memory buffers and caller-owned file objects.

Written at the object's current position, like :func:`pydicom.dcmwrite`; the caller
keeps ownership (nothing is closed).  ``exist_ok`` does not apply to file objects
and is ignored, as pydicom ignores it.

Rollback on failure: a ``bytearray`` is cut back to its old length.  A file object
that can ``seek``, ``tell`` and ``truncate`` (``BytesIO``, ``DicomBytesIO``, a file
opened by the caller in any binary mode, async files) gets its old length and
position back, and the old bytes of every range the write overwrote: each range is
saved just before it is overwritten, so a rollback costs memory in proportion to
what the write overwrote, not to the size of the object.  The old bytes are read
through the object itself when it is readable; a write-only file (``'wb'``) is
flushed and read through a second, read-only descriptor of the same file (Linux:
``/proc/self/fd``).  Where the old bytes cannot be read at all (a write-only object
with no file descriptor), the length and position are still restored, but bytes
it overwrote stay overwritten.  An object that cannot seek or truncate (a pipe, a
socket, ``gzip.GzipFile``) keeps what was written before the failure: there is no
way to take bytes back from it.

Each sink takes ``checksum=`` (``"crc32c"`` by default, ``"sha256"``, ``"md5"`` or
``None``): the checksum of the bytes written, computed as they are written (by the
writer for the synchronous sinks, by the driver in its encoding thread for
:class:`AsyncFileObject`).
"""

from __future__ import annotations

import inspect
import io
import os
from typing import Any, Final, Protocol

import anyio.to_thread

from .._checksum import DEFAULT_ALGORITHM, Checksum, normalize_algorithm
from .._core.rules import Chunk

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None  # type: ignore[assignment]

__all__ = ["AsyncFileObject", "Bytearray", "FileObject"]

INLINE_WRITE_LIMIT: Final = 4 * 1024 * 1024
"""In-memory destinations are written in the event loop up to this size (a memcpy)."""


class _Writable(Protocol):
    def write(self, data: Any, /) -> Any: ...


class Bytearray:
    """Append to a ``bytearray``; cut back to its old length on failure."""

    inline_write_limit = INLINE_WRITE_LIMIT
    """Appending is a memory copy: small writes are done in the event loop."""

    def __init__(self, buffer: bytearray, *, checksum: str | None = DEFAULT_ALGORITHM) -> None:
        self.buffer = buffer
        self.checksum = normalize_algorithm(checksum)

    def __repr__(self) -> str:
        return f"Bytearray(<{len(self.buffer)} bytes>)"

    def open(self, *, exist_ok: bool) -> _BytearrayWriter:
        return _BytearrayWriter(self.buffer, self.checksum)


def _new_checksum(algorithm: str | None) -> Checksum | None:
    return Checksum(algorithm) if algorithm else None


class _BytearrayWriter:
    def __init__(self, buffer: bytearray, checksum: str | None) -> None:
        self._buffer = buffer
        self._length = len(buffer)
        self.checksum = _new_checksum(checksum)

    def write(self, chunk: Chunk, /) -> None:
        if self.checksum is not None:
            self.checksum.update(chunk)
        self._buffer += chunk

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        del self._buffer[self._length :]


_PROBE_ERRORS = (OSError, ValueError, AttributeError, TypeError, io.UnsupportedOperation)


class _Undo:
    """What it takes to put a file object back as it was: its position and length,
    and the old bytes of each range the write overwrote.

    The driver's writer calls :meth:`before` with the size of each chunk before
    writing it, which saves the old bytes that chunk is about to overwrite, and
    :meth:`saved_ranges` / :attr:`grown` tell the restore what to undo.
    """

    def __init__(self, position: int, end: int, append: bool) -> None:
        self.position = position
        """Where the caller left the object (restored last)."""
        self.end = end
        """Its length before the write."""
        self.offset = end if append else position
        """Where the next chunk goes (appending files write at the end)."""
        self.saved: list[tuple[int, bytes]] = []
        self.complete = True
        """``False`` once an overwritten range could not be saved."""

    def overwritten(self, size: int) -> tuple[int, int] | None:
        """The range of old bytes the next `size` bytes overwrite, and advance."""
        start, stop = self.offset, min(self.offset + size, self.end)
        self.offset += size
        return (start, stop - start) if start < stop else None

    @property
    def grown(self) -> bool:
        return self.offset > self.end


def _appends(fileobj: Any) -> bool:
    """``True`` if every write goes to the end, whatever the position ('ab')."""
    mode = getattr(fileobj, "mode", None)
    if isinstance(mode, str) and "a" in mode:
        return True
    fd = _fileno(fileobj)
    if fd is None or fcntl is None:
        return False
    try:
        return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
    except OSError:
        return False


def _fileno(fileobj: Any) -> int | None:
    """The object's file descriptor, if it has a synchronous ``fileno()``."""
    fileno = getattr(fileobj, "fileno", None)
    if not callable(fileno) or inspect.iscoroutinefunction(fileno):
        return None
    try:
        fd = fileno()
    except _PROBE_ERRORS:
        return None
    if inspect.isawaitable(fd):
        getattr(fd, "close", lambda: None)()
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _read_fd(fd: int) -> int | None:
    """A descriptor to read `fd`'s file with: `fd` itself if it was opened for
    reading, else a new read-only one (to be closed), or ``None``."""
    try:
        os.pread(fd, 0, 0)
        return fd
    except OSError:
        pass
    try:  # write-only: open the same file again, for reading (Linux, /proc)
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size > 0:
        data = os.pread(fd, size, offset)
        if not data:
            break
        parts.append(data)
        size -= len(data)
        offset += len(data)
    return b"".join(parts)


class _OldBytes:
    """Reads the bytes of a synchronous file object at an offset, without
    changing where its next write goes."""

    def __init__(self, fileobj: Any) -> None:
        self._file = fileobj
        self._fd: int | None = None
        self._own_fd = False
        self._how = self._choose()

    def _choose(self) -> str | None:
        f = self._file
        if isinstance(f, io.BytesIO):
            return "buffer"
        readable = getattr(f, "readable", None)
        try:
            can_read = callable(getattr(f, "read", None)) and (
                readable is None or bool(readable())
            )
        except _PROBE_ERRORS:
            can_read = False
        if can_read:
            return "read"
        fd = _fileno(f)
        if fd is not None:
            self._fd = _read_fd(fd)
            self._own_fd = self._fd is not None and self._fd != fd
            if self._fd is not None:
                return "pread"
        return None

    @property
    def possible(self) -> bool:
        return self._how is not None

    def read(self, offset: int, size: int) -> bytes:
        f = self._file
        if self._how == "buffer":
            with f.getbuffer() as view:
                return bytes(view[offset : offset + size])
        if self._how == "read":
            f.seek(offset)
            try:
                parts, left = [], size
                while left > 0:
                    data = f.read(left)
                    if not data:
                        break
                    parts.append(data)
                    left -= len(data)
                return b"".join(parts)
            finally:
                f.seek(offset)
        assert self._fd is not None
        flush = getattr(f, "flush", None)
        if callable(flush):
            flush()  # what the object still buffers is part of the old content
        return _pread_all(self._fd, size, offset)

    def close(self) -> None:
        if self._own_fd and self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _start(fileobj: Any) -> _Undo | None:
    """Where `fileobj` stands and how long it is, or ``None`` if it cannot be put
    back (it cannot seek, tell or truncate).  ``seek`` may return ``None`` (old
    duck-typed files): positions are always taken from ``tell``."""
    try:
        seekable = getattr(fileobj, "seekable", None)
        if seekable is not None and not seekable():
            return None
        if not callable(getattr(fileobj, "truncate", None)):
            return None
        position = fileobj.tell()
        if not isinstance(position, int):
            return None
        try:
            fileobj.seek(0, io.SEEK_END)
            end = fileobj.tell()
        finally:
            fileobj.seek(position)
    except _PROBE_ERRORS:
        return None
    if not isinstance(end, int):
        return None
    return _Undo(position, end, _appends(fileobj))


def _write_all(fileobj: Any, chunk: Chunk) -> None:
    """Write all of `chunk`: raw (unbuffered) objects may write part of it."""
    view = memoryview(chunk).cast("B")
    written = fileobj.write(chunk)
    if isinstance(written, int) and 0 <= written < len(view):
        view = view[written:]
        while view:
            view = view[fileobj.write(view) or 0 :]


class FileObject:
    """A caller-owned synchronous file object: anything with ``write()``.

    ``seek``/``tell`` are not required (pipes, sockets and HTTP bodies work); when
    present, a failed write is rolled back (see the module documentation).
    """

    encode_ahead = False
    """A caller's file object may refuse the first write (closed, read-only): the
    dataset is encoded as it is written, so pydicom's side effects match."""

    def __init__(self, fileobj: _Writable, *, checksum: str | None = DEFAULT_ALGORITHM) -> None:
        self.fileobj = fileobj
        self.checksum = normalize_algorithm(checksum)

    def __repr__(self) -> str:
        return f"FileObject({self.fileobj!r})"

    @property
    def inline_write_limit(self) -> int:
        """A ``BytesIO`` written at its end is written with memory copies: small
        writes are done in the event loop.  One written in the middle needs the
        bytes it overwrites saved first (a copy, done in a worker thread), and any
        other file object may block."""
        f = self.fileobj
        if not isinstance(f, io.BytesIO):
            return 0
        try:
            position = f.tell()
            end = f.seek(0, io.SEEK_END)
            f.seek(position)
        except ValueError:  # closed: the first write raises, in the loop is fine
            return INLINE_WRITE_LIMIT
        return INLINE_WRITE_LIMIT if position >= end else 0

    def open(self, *, exist_ok: bool) -> _FileObjectWriter:
        return _FileObjectWriter(self.fileobj, self.checksum)


class _FileObjectWriter:
    def __init__(self, fileobj: Any, checksum: str | None) -> None:
        self._file = fileobj
        self.checksum = _new_checksum(checksum)
        self._undo = _start(fileobj)
        self._old: _OldBytes | None = None
        if self._undo is not None and self._undo.offset < self._undo.end:
            self._old = _OldBytes(fileobj)  # written in the middle: save what it hides

    def write(self, chunk: Chunk, /) -> None:
        undo = self._undo
        if undo is not None:
            hidden = undo.overwritten(len(memoryview(chunk).cast("B")))
            if hidden is not None:
                self._save(undo, *hidden)
        if self.checksum is not None:
            self.checksum.update(chunk)
        _write_all(self._file, chunk)

    def _save(self, undo: _Undo, offset: int, size: int) -> None:
        if self._old is None or not self._old.possible:
            undo.complete = False
            return
        try:
            undo.saved.append((offset, self._old.read(offset, size)))
        except _PROBE_ERRORS:
            undo.complete = False

    def commit(self) -> None:
        self._close()

    def abort(self) -> None:
        try:
            if self._undo is not None:
                _restore(self._file, self._undo)
        finally:
            self._close()

    def _close(self) -> None:
        if self._old is not None:
            self._old.close()
        self._undo = None


def _restore(fileobj: Any, undo: _Undo) -> None:
    """Put back the saved bytes, the length and the position (best effort: the
    write's own error is what the caller sees)."""
    try:
        for offset, old in undo.saved:
            fileobj.seek(offset)
            _write_all(fileobj, old)
        if undo.grown:
            fileobj.truncate(undo.end)
        fileobj.seek(undo.position)
    except _PROBE_ERRORS:
        pass


async def _maybe_await(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


class AsyncFileObject:
    """A caller-owned asynchronous file object (``anyio.open_file``, aiofiles...):
    anything whose ``write`` is a coroutine function.  Rolled back like
    :class:`FileObject` when it has ``seek``, ``tell`` and ``truncate``."""

    def __init__(self, fileobj: Any, *, checksum: str | None = DEFAULT_ALGORITHM) -> None:
        self.fileobj = fileobj
        self.checksum = normalize_algorithm(checksum)

    def __repr__(self) -> str:
        return f"AsyncFileObject({self.fileobj!r})"

    async def open_async(self, *, exist_ok: bool) -> _AsyncFileObjectWriter:
        writer = _AsyncFileObjectWriter(self.fileobj)
        await writer.start()
        return writer


class _AsyncFileObjectWriter:
    # no ``checksum`` attribute: the driver computes it in the encoding thread,
    # off the event loop, with this sink's algorithm

    def __init__(self, fileobj: Any) -> None:
        self._file = fileobj
        self._undo: _Undo | None = None
        self._read_fd: int | None = None
        self._own_fd = False

    async def start(self) -> None:
        f = self._file
        if not all(callable(getattr(f, name, None)) for name in ("tell", "seek", "truncate")):
            return
        try:
            position = await f.tell()
            if not isinstance(position, int):
                return
            try:
                await f.seek(0, io.SEEK_END)
                end = await f.tell()
            finally:
                await f.seek(position)
        except _PROBE_ERRORS:
            return
        if isinstance(end, int):
            self._undo = _Undo(position, end, _appends(f))

    async def write(self, chunk: Chunk, /) -> None:
        undo = self._undo
        if undo is not None:
            hidden = undo.overwritten(len(memoryview(chunk).cast("B")))
            if hidden is not None:
                await self._save(undo, *hidden)
        await self._file.write(chunk)

    async def _save(self, undo: _Undo, offset: int, size: int) -> None:
        try:
            undo.saved.append((offset, await self._old_bytes(offset, size)))
        except _PROBE_ERRORS:
            undo.complete = False

    async def _old_bytes(self, offset: int, size: int) -> bytes:
        """The old bytes at `offset`: read through the object if it can read,
        else through a read-only descriptor of its file (in a worker thread)."""
        f = self._file
        if self._read_fd is None and callable(getattr(f, "read", None)):
            await f.seek(offset)
            try:
                data = await f.read(size)
                return bytes(data)
            except (io.UnsupportedOperation, OSError):
                pass  # write-only: try its file descriptor
            finally:
                await f.seek(offset)
        if self._read_fd is None:
            fd = _fileno(f)
            read_fd = None if fd is None else _read_fd(fd)
            if read_fd is None:
                raise io.UnsupportedOperation("cannot read the old bytes back")
            self._read_fd, self._own_fd = read_fd, read_fd != fd
        flush = getattr(f, "flush", None)
        if callable(flush):
            await _maybe_await(flush())
        return await anyio.to_thread.run_sync(_pread_all, self._read_fd, size, offset)

    async def commit(self) -> None:
        self._close()

    async def abort(self) -> None:
        undo, f = self._undo, self._file
        try:
            if undo is None:
                return
            for offset, old in undo.saved:
                await f.seek(offset)
                await f.write(old)
            if undo.grown:
                await f.truncate(undo.end)
            await f.seek(undo.position)
        except _PROBE_ERRORS:
            pass
        finally:
            self._close()

    def _close(self) -> None:
        self._undo = None
        if self._own_fd and self._read_fd is not None:
            fd, self._read_fd = self._read_fd, None
            os.close(fd)
