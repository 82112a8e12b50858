"""In-memory buffers and caller-owned file objects.

Written at the object's current position, like :func:`pydicom.dcmwrite`; the caller
keeps ownership (nothing is flushed or closed).  ``exist_ok`` does not apply to file
objects and is ignored, as pydicom ignores it.

Rollback on failure: a ``bytearray`` is cut back to its old length.  A seekable
file object (``BytesIO``, a regular file opened by the caller, a ``DicomBytesIO``)
gets its old length, position and any bytes that were overwritten back.  An object
that cannot seek or truncate (a pipe, a socket, ``gzip.GzipFile``) keeps what was
written before the failure: there is no way to take bytes back from it.

Each sink takes ``checksum=`` (``"crc32c"`` by default, ``"sha256"``, ``"md5"`` or
``None``): the checksum of the bytes written, computed as they are written (by the
writer for the synchronous sinks, by the driver in its encoding thread for
:class:`AsyncFileObject`).
"""

from __future__ import annotations

import io
from typing import Any, Final, Protocol

from .._checksum import DEFAULT_ALGORITHM, Checksum, normalize_algorithm
from .._core.rules import Chunk

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


class _Snapshot:
    """Where a seekable file object stood, and the bytes a write may overwrite."""

    def __init__(self, position: int, end: int, tail: bytes) -> None:
        self.position = position
        self.end = end
        self.tail = tail


_PROBE_ERRORS = (OSError, ValueError, AttributeError, io.UnsupportedOperation)


def _snapshot(fileobj: Any) -> _Snapshot | None:
    """Record what is needed to roll `fileobj` back, or ``None`` if it cannot be."""
    try:
        seekable = getattr(fileobj, "seekable", None)
        if seekable is not None and not seekable():
            return None
        if not callable(getattr(fileobj, "truncate", None)):
            return None
        position = fileobj.tell()
        end = fileobj.seek(0, io.SEEK_END)
    except _PROBE_ERRORS:
        return None
    tail = b""
    try:
        if position < end:
            fileobj.seek(position)
            tail = fileobj.read(end - position)
    except _PROBE_ERRORS:
        return None
    finally:
        fileobj.seek(position)
    return _Snapshot(position, end, tail)


def _restore(fileobj: Any, snap: _Snapshot) -> None:
    try:
        fileobj.seek(snap.position)
        fileobj.truncate(min(snap.position, snap.end))
        if snap.tail:
            fileobj.write(snap.tail)
        fileobj.seek(snap.position)
    except _PROBE_ERRORS:
        pass  # best effort: the write's own error is what the caller sees


class FileObject:
    """A caller-owned synchronous file object: anything with ``write()``.

    ``seek``/``tell`` are not required (pipes, sockets and HTTP bodies work); when
    present, a failed write is rolled back (see the module documentation).
    """

    def __init__(self, fileobj: _Writable, *, checksum: str | None = DEFAULT_ALGORITHM) -> None:
        self.fileobj = fileobj
        self.checksum = normalize_algorithm(checksum)

    def __repr__(self) -> str:
        return f"FileObject({self.fileobj!r})"

    @property
    def inline_write_limit(self) -> int:
        """A ``BytesIO`` is written with memory copies: small writes are done in
        the event loop.  Any other file object may block."""
        return INLINE_WRITE_LIMIT if isinstance(self.fileobj, io.BytesIO) else 0

    def open(self, *, exist_ok: bool) -> _FileObjectWriter:
        return _FileObjectWriter(self.fileobj, self.checksum)


class _FileObjectWriter:
    def __init__(self, fileobj: Any, checksum: str | None) -> None:
        self._file = fileobj
        self._snapshot = _snapshot(fileobj)
        self.checksum = _new_checksum(checksum)

    def write(self, chunk: Chunk, /) -> None:
        if self.checksum is not None:
            self.checksum.update(chunk)
        written = self._file.write(chunk)
        if isinstance(written, int) and 0 <= written < len(memoryview(chunk).cast("B")):
            # raw (unbuffered) objects may write part of it
            view = memoryview(chunk).cast("B")[written:]
            while view:
                view = view[self._file.write(view) or 0 :]

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        if self._snapshot is not None:
            _restore(self._file, self._snapshot)


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
        self._position: int | None = None
        self._end = 0

    async def start(self) -> None:
        f = self._file
        if not all(callable(getattr(f, name, None)) for name in ("tell", "seek", "truncate")):
            return
        try:
            position = await f.tell()
            self._end = await f.seek(0, io.SEEK_END)
            await f.seek(position)
        except _PROBE_ERRORS:
            return
        if position < self._end:
            return  # overwriting in the middle: no cheap way to undo, as with a pipe
        self._position = position

    async def write(self, chunk: Chunk, /) -> None:
        await self._file.write(chunk)

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        if self._position is None:
            return
        try:
            await self._file.seek(self._position)
            await self._file.truncate(self._end)
            await self._file.seek(self._position)
        except _PROBE_ERRORS:
            pass
