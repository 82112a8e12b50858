"""A custom asynchronous sink: stream a DICOM file into a TCP connection.

``SocketSink`` is an :class:`aiodicom.sinks.AsyncSink`: its writer is awaited in the
event loop (asyncio or trio), while aiodicom encodes the dataset in a worker thread
one chunk ahead.  Bytes that reached a socket cannot be taken back, so the stream is
framed: each chunk is sent as a 4-byte big-endian length and the bytes, and
``commit`` sends an empty frame.  A receiver that sees the connection end without
that empty frame knows the file is incomplete and drops it: that is how the sink
keeps aiodicom's "the whole file or nothing" promise across a network.

Run: ``python examples/socket_sink.py [asyncio|trio]``: it starts a receiver on a
free local port, sends pydicom's example CT slice to it and checks the bytes
against ``pydicom.dcmwrite``.
"""

from __future__ import annotations

import io
import struct
import sys

import anyio
import pydicom
from anyio.abc import ByteStream, SocketAttribute
from pydicom import examples

import aiodicom
from aiodicom.sinks import Chunk

_LENGTH = struct.Struct(">I")


class SocketSink:
    """Send one framed DICOM file to ``host:port`` per write."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def open_async(self, *, exist_ok: bool) -> _SocketWriter:
        # exist_ok has no meaning for a stream; the receiver decides what to keep.
        return _SocketWriter(await anyio.connect_tcp(self.host, self.port))


class _SocketWriter:
    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    async def write(self, chunk: Chunk, /) -> None:
        view = memoryview(chunk).cast("B")  # may be a slice of the caller's Pixel Data
        if view.nbytes:
            await self._stream.send(_LENGTH.pack(view.nbytes))
            await self._stream.send(view)  # type: ignore[arg-type]  # any buffer will do

    async def commit(self) -> None:
        await self._stream.send(_LENGTH.pack(0))  # the end-of-file frame
        await self._stream.aclose()

    async def abort(self) -> None:
        await self._stream.aclose()  # no end-of-file frame: the receiver drops it


async def receive_file(stream: ByteStream) -> bytes | None:
    """Read one framed file from `stream`: its bytes, or ``None`` if it was cut off."""
    buffer = bytearray()
    data = bytearray()
    async with stream:
        while True:
            try:
                buffer += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return None  # ended without the empty frame: incomplete
            while len(buffer) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buffer)
                if length == 0:
                    return bytes(data)
                if len(buffer) < _LENGTH.size + length:
                    break
                data += buffer[_LENGTH.size : _LENGTH.size + length]
                del buffer[: _LENGTH.size + length]


async def main() -> bytes:
    """Send the CT slice through a local socket; return what the receiver got."""
    received: list[bytes | None] = []
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:

        async def serve_one() -> None:
            stream = await listener.accept()
            received.append(await receive_file(stream))

        tg.start_soon(serve_one)
        await aiodicom.dcmwrite(SocketSink("127.0.0.1", port), examples.ct)

    expected = io.BytesIO()
    pydicom.dcmwrite(expected, examples.ct)
    assert received == [expected.getvalue()], "the receiver got other bytes"
    print(f"received {len(expected.getvalue())} bytes, identical to pydicom.dcmwrite")
    return expected.getvalue()


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
