"""Turning what the user passed as a destination into a sink."""

from __future__ import annotations

import inspect
import os
import sys
from typing import Any, cast

from pydicom.filebase import DicomIO

from .._checksum import DEFAULT_ALGORITHM
from ._protocol import AsyncSink, Sink, is_async_sink, is_sink
from .dicomweb import SCHEMES as DICOMWEB_SCHEMES
from .dicomweb import DicomWeb
from .fsspec import FsspecFile
from .local import LocalFile
from .memory import AsyncFileObject, Bytearray, FileObject

__all__ = ["is_url", "resolve"]


def is_url(path: str) -> bool:
    """``True`` for an fsspec URL (``s3://...``, ``memory://...``, ``a::b://...``)."""
    head, sep, _ = path.partition("://")
    return bool(sep) and bool(head) and "/" not in head and "\\" not in head


def resolve(
    destination: Any,
    storage_options: dict[str, Any] | None = None,
    *,
    checksum: str | None = DEFAULT_ALGORITHM,
) -> Sink | AsyncSink:
    """Turn what the user passed as a destination into a sink.

    Parameters
    ----------
    destination
        A :class:`Sink` or :class:`AsyncSink`; a local path (``str``, ``bytes``,
        ``os.PathLike``); a DICOMweb URL (``"dicomweb+https://HOST/PATH"``, see
        :class:`~aiodicom.sinks.DicomWeb`); an fsspec URL (``str``); an
        ``(fsspec filesystem, path)``
        pair; a ``bytearray``; a synchronous file object (anything with ``write``);
        or an asynchronous one (``write`` is a coroutine function).
    storage_options : dict, optional
        Options for the fsspec filesystem of a URL destination; for a DICOMweb
        URL, keyword arguments of :class:`~aiodicom.sinks.DicomWeb`.
    checksum : {"crc32c", "sha256", "md5"} or None, optional
        The checksum algorithm of the sink built for a path, URL, buffer or file
        object (a sink given as such keeps its own).

    Raises
    ------
    TypeError
        For anything that cannot be written to (pydicom's message).
    ValueError
        For `storage_options` with a destination that is not an fsspec URL.
    """
    fsspec = sys.modules.get("fsspec")
    if fsspec is not None and isinstance(destination, fsspec.AbstractFileSystem):
        raise TypeError(
            "dcmwrite: an fsspec filesystem needs a path too: pass "
            "(filesystem, path) as the destination"
        )
    if isinstance(destination, str | bytes | os.PathLike):
        path = os.fspath(destination)
        if isinstance(path, str) and path.startswith(DICOMWEB_SCHEMES):
            return DicomWeb.from_url(path, storage_options)  # never an fsspec URL
        if isinstance(path, str) and is_url(path):
            return FsspecFile.from_url(path, storage_options, checksum=checksum)
        _no_storage_options(storage_options, destination)
        return LocalFile(path, checksum=checksum)
    if (
        isinstance(destination, tuple)
        and len(destination) == 2
        and fsspec is not None
        and isinstance(destination[0], fsspec.AbstractFileSystem)
    ):
        fs, path = destination
        _no_storage_options(storage_options, destination)
        return FsspecFile(fs, path, checksum=checksum)
    _no_storage_options(storage_options, destination)
    if (is_sink(destination) or is_async_sink(destination)) and not hasattr(destination, "write"):
        return destination
    if isinstance(destination, bytearray):
        return Bytearray(destination, checksum=checksum)
    if isinstance(destination, DicomIO):
        return FileObject(cast(Any, destination.parent), checksum=checksum)
    write = getattr(destination, "write", None)
    if callable(write):
        if inspect.iscoroutinefunction(write):
            return AsyncFileObject(destination, checksum=checksum)
        return FileObject(destination, checksum=checksum)
    if callable(getattr(destination, "seek", None)) and callable(
        getattr(destination, "tell", None)
    ):
        # pydicom wraps it and fails at the first write
        raise TypeError(
            f"'DicomIO' cannot be used with '{type(destination).__name__}': "
            "object has no write() method"
        )
    raise TypeError(
        "dcmwrite: Expected a file path, file-like or writeable buffer, "
        f"but got {type(destination).__name__}"
    )


def _no_storage_options(storage_options: dict[str, Any] | None, destination: Any) -> None:
    if storage_options:
        raise ValueError(
            "'storage_options' is only for fsspec URL destinations, "
            f"not for {type(destination).__name__}"
        )
