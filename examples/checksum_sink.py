"""A custom synchronous sink: write through another sink and compute SHA-256 on the way.

``ChecksumSink`` wraps any :class:`aiodicom.sinks.Sink` (here a local file) and hashes
every chunk as it passes, so the digest of the published file is known without
reading it back.  The digest is set only when the write commits.

(aiodicom does this itself: ``dcmwrite(..., checksum="sha256")`` returns the same
digest in ``WriteResult.checksum``, for any sink.  This example shows the wrapping
technique, which also fits other per-chunk work.)

Run: ``python examples/checksum_sink.py [OUT.dcm]`` (default ``ct.dcm``).
"""

from __future__ import annotations

import hashlib
import sys

import anyio
from pydicom import examples

import aiodicom
from aiodicom.sinks import Chunk, LocalFile, Sink, Writer


class ChecksumSink:
    """Write to `inner` and compute the SHA-256 of what was written.

    Use one ``ChecksumSink`` per write: :attr:`hexdigest` holds the digest of the
    last committed write (``None`` before, or after a failed one).
    """

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.hexdigest: str | None = None

    def open(self, *, exist_ok: bool) -> _ChecksumWriter:
        # Runs in the driver's worker thread, like every method of the writer.
        self.hexdigest = None
        return _ChecksumWriter(self, self.inner.open(exist_ok=exist_ok))


class _ChecksumWriter:
    def __init__(self, sink: ChecksumSink, inner: Writer) -> None:
        self._sink = sink
        self._inner = inner
        self._hash = hashlib.sha256()

    def write(self, chunk: Chunk, /) -> None:
        # A chunk may be a memoryview of the caller's Pixel Data: use it, don't keep it.
        self._hash.update(chunk)
        self._inner.write(chunk)

    def commit(self) -> None:
        self._inner.commit()  # raises FileExistsError if exist_ok=False lost the race
        self._sink.hexdigest = self._hash.hexdigest()

    def abort(self) -> None:
        self._inner.abort()


async def main(path: str = "ct.dcm") -> str:
    sink = ChecksumSink(LocalFile(path))
    result = await aiodicom.dcmwrite(sink, examples.ct, checksum="sha256")
    assert sink.hexdigest is not None
    assert result.checksum is not None
    assert result.checksum.hex == sink.hexdigest
    print(f"{sink.hexdigest}  {path}")
    return sink.hexdigest


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:2])
