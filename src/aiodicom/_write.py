"""The async driver: run the core off the event loop and feed a sink.

A synchronous :class:`~aiodicom.sinks.Sink` is driven entirely from one worker
thread: validate, open, encode and write each chunk, commit.  No chunk crosses a
thread boundary, and the event loop only waits.  Cancellation is checked between
chunks (``anyio.from_thread.check_cancelled``), so it is prompt; on any exception
or cancellation the writer is aborted in that same thread before the error
propagates, which is as shielded as it gets.

An :class:`~aiodicom.sinks.AsyncSink` is awaited in the event loop while a worker
thread encodes one chunk at a time (pull-based: the encoder never runs ahead by
more than one chunk, which is the backpressure).  Its ``abort`` runs shielded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any, Final, cast

import anyio
import anyio.from_thread
import anyio.to_thread
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.filebase import DicomIO
from pydicom.misc import warn_and_log

from ._encode import Chunk, EncodePlan, prepare
from .sinks import AsyncSink, Sink, resolve

__all__ = ["dcmwrite"]

logger = logging.getLogger("aiodicom")


class _DefaultTrue:
    """``exist_ok``'s default: true, but tells "not given" apart from ``True``."""

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "True"


_EXIST_OK_DEFAULT: Final = cast(bool, _DefaultTrue())


async def dcmwrite(
    destination: Any,
    dataset: Dataset,
    /,
    __write_like_original: bool | None = None,
    *,
    implicit_vr: bool | None = None,
    little_endian: bool | None = None,
    enforce_file_format: bool = False,
    force_encoding: bool = False,
    exist_ok: bool = _EXIST_OK_DEFAULT,
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Write `dataset` to `destination` without blocking the event loop.

    The async twin of :func:`pydicom.dcmwrite`: the same arguments with the same
    meaning, the same bytes out, the same exceptions for bad input.  Runs on asyncio
    and trio.

    Differences, all intended: bad input raises before anything is created at the
    destination; a write that fails or is cancelled leaves nothing behind (a new
    file does not appear, an existing one keeps its content, a buffer is rolled
    back); destinations that have only ``write()`` are accepted; large values are
    not copied.

    Parameters
    ----------
    destination : str, bytes, os.PathLike, URL, file-like, bytearray or Sink
        A local path; an fsspec URL such as ``"s3://bucket/key.dcm"``; an
        ``(fsspec filesystem, path)`` pair; a ``bytearray`` (appended to); a file
        object, sync or async (written at its current position, never closed); or
        a :class:`~aiodicom.sinks.Sink` / :class:`~aiodicom.sinks.AsyncSink`.
    dataset : pydicom.dataset.Dataset
        The dataset to encode.
    write_like_original : bool, optional
        Deprecated, as in pydicom: use `enforce_file_format`.
    implicit_vr : bool, optional
        As :func:`pydicom.dcmwrite`.
    little_endian : bool, optional
        As :func:`pydicom.dcmwrite`.
    enforce_file_format : bool, optional
        As :func:`pydicom.dcmwrite`: write the DICOM File Format or raise.
    force_encoding : bool, optional
        As :func:`pydicom.dcmwrite`.
    exist_ok : bool, optional
        If ``False``, raise :class:`FileExistsError` if the destination exists.
        Enforced atomically by the sink (of racing writers exactly one wins).
        Ignored for file objects and buffers, as in pydicom.  ``overwrite=`` is
        accepted as pydicom 3.0's name for it.
    storage_options : dict, optional
        Options for the fsspec filesystem of a URL destination (credentials,
        endpoint...), as in pandas.

    Raises
    ------
    TypeError
        For an unusable destination or unknown keyword arguments.
    ValueError
        For datasets and options that pydicom rejects, with pydicom's message.
    FileExistsError
        If `exist_ok` is ``False`` and the destination exists.
    """
    if "overwrite" in kwargs:
        overwrite = kwargs.pop("overwrite")
        if exist_ok is not _EXIST_OK_DEFAULT:
            raise TypeError(
                "dcmwrite() got both 'exist_ok' and 'overwrite' (pydicom 3.0's "
                "name for it); use 'exist_ok' only"
            )
        exist_ok = bool(overwrite)
    enforce_file_format = _check_arguments(__write_like_original, enforce_file_format, kwargs)

    exist_ok = bool(exist_ok)
    try:
        sink: Sink | AsyncSink | None = resolve(destination, storage_options)
        bad_destination: Exception | None = None
    except (TypeError, ValueError) as exc:
        sink, bad_destination = None, exc

    def plan() -> EncodePlan:
        def on_open(encoding: tuple[bool, bool]) -> None:
            # pydicom reports a bad destination only once the dataset has passed
            if bad_destination is not None:
                raise bad_destination
            if isinstance(destination, DicomIO):
                destination.is_implicit_VR, destination.is_little_endian = encoding

        return prepare(
            dataset,
            implicit_vr=implicit_vr,
            little_endian=little_endian,
            enforce_file_format=enforce_file_format,
            force_encoding=force_encoding,
            on_open=on_open,
        )

    if isinstance(sink, Sink):
        await anyio.to_thread.run_sync(_write_sync, plan, sink, exist_ok)
    else:
        encoded = await anyio.to_thread.run_sync(plan)
        await _write_async(cast(AsyncSink, sink), encoded, exist_ok)


def _check_arguments(
    positional: bool | None, enforce_file_format: bool, kwargs: dict[str, Any]
) -> bool:
    """pydicom's checks of ``write_like_original`` and unknown keyword arguments."""
    write_like_original: bool | None = kwargs.get("write_like_original", None)
    if None not in (positional, write_like_original) or (
        config._use_future and (positional, write_like_original) != (None, None)
    ):
        if config._use_future:
            raise TypeError(
                "'write_like_original' is no longer accepted as a positional "
                "or keyword argument, use 'enforce_file_format' instead"
            )
        raise TypeError(
            "'write_like_original' cannot be used as both a positional "
            "and keyword argument"
        )
    if write_like_original is None:
        write_like_original = positional
    if write_like_original is not None:
        warn_and_log(
            "'write_like_original' is deprecated and will be removed in "
            "v4.0, please use 'enforce_file_format' instead",
            DeprecationWarning,
            stacklevel=3,
        )
        enforce_file_format = not write_like_original

    keys = [x for x in kwargs if x != "write_like_original"]
    if keys:
        raise TypeError(f"Invalid keyword argument(s) for dcmwrite(): {', '.join(keys)}")
    return enforce_file_format


def _write_sync(plan: Callable[[], EncodePlan], sink: Sink, exist_ok: bool) -> None:
    """Validate, open, encode, write and commit, all in this worker thread."""
    encoded = plan()
    writer = sink.open(exist_ok=exist_ok)
    try:
        with closing(encoded.chunks()) as chunks:
            for chunk in chunks:
                anyio.from_thread.check_cancelled()
                writer.write(chunk)
        anyio.from_thread.check_cancelled()
        writer.commit()
    except BaseException:
        _abort_quietly(writer.abort)
        raise


def _abort_quietly(abort: Any) -> None:
    try:
        abort()
    except Exception:  # the original error is what matters; keep this one in the log
        logger.exception("aiodicom: aborting a failed write failed too")


_DONE: Final = object()


async def _write_async(sink: AsyncSink, encoded: EncodePlan, exist_ok: bool) -> None:
    writer = await sink.open_async(exist_ok=exist_ok)
    chunks: Iterator[Chunk] = encoded.chunks()
    try:
        with closing(chunks):
            while True:
                chunk = await anyio.to_thread.run_sync(next, chunks, _DONE)
                if chunk is _DONE:
                    break
                await writer.write(cast(Chunk, chunk))
        await writer.commit()
    except BaseException:
        with anyio.CancelScope(shield=True):
            try:
                await writer.abort()
            except Exception:
                logger.exception("aiodicom: aborting a failed write failed too")
        raise
