"""fsspec destinations: S3, GCS, Azure, memory, local and any other fsspec filesystem.

:class:`FsspecFile` is cheap to build (the event loop builds it): the filesystem
is created, and its library imported, only in :meth:`FsspecFile.open`, which the
driver calls in a worker thread.  What happens then depends on the filesystem:

* S3 (s3fs), GCS (gcsfs), Azure Blob (adlfs): a streaming upload with bounded
  memory, the store's own atomic exclusive create, retries, and nothing left
  behind on failure (see ``_stores``: the uploader and one adapter per store).
* ``memory://``: written to a private buffer, published with an atomic
  ``dict.setdefault`` (exclusive) or assignment at commit.
* ``file://`` (and ``LocalFileSystem``): the :class:`~aiodicom.sinks.LocalFile`
  sink: temporary file and atomic publish.
* Any other filesystem: ``fs.open(path, "wb")``, discarded on failure where the
  file object can (``discard()``); ``exist_ok=False`` is an existence check before
  and at commit, which is not atomic (documented in docs/remote.md).

fsspec's ``AbstractBufferedFile.__exit__`` commits a partial file on an exception,
so nothing here ever writes through ``with fs.open(...)``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Final

from .._checksum import DEFAULT_ALGORITHM, Checksum, normalize_algorithm
from .._errors import exists_error
from ._protocol import Chunk, Writer
from ._stores._uploader import AsyncPartWriter, Options, PartWriter, Store, probe

__all__ = ["DEFAULT_PART_SIZE", "AsyncObjectFile", "FsspecFile"]

logger = logging.getLogger("aiodicom")

DEFAULT_PART_SIZE: Final = 8 * 1024 * 1024
DEFAULT_CONCURRENCY: Final = 1
DEFAULT_RETRIES: Final = 3
DICOM_CONTENT_TYPE: Final = "application/dicom"


class FsspecFile:
    """A file on an fsspec filesystem (object store, memory, local, ...).

    Build it from a URL with :meth:`from_url`, or from a filesystem object you
    already hold: ``FsspecFile(fs, "bucket/key.dcm")``.  Passing a URL string or a
    ``(filesystem, path)`` pair to :func:`aiodicom.dcmwrite` makes one with the
    defaults; build it yourself to change them.

    Parameters
    ----------
    fs : fsspec.AbstractFileSystem
        The filesystem.  Object stores are written through its own client and
        credentials.
    path : str
        The path on `fs` (with or without the protocol).
    part_size : int, optional
        Bytes per part of a multipart / resumable / block upload (default 8 MiB).
        Objects up to this size are sent in one request.  Raised to the store's
        minimum (S3: 5 MiB) and rounded up to its multiple (GCS: 256 KiB).
    concurrency : int, optional
        Parts uploaded at the same time while the next one is encoded (default 1;
        GCS is always 1).  Memory use is about ``(2 * concurrency + 1) * part_size``
        (the HTTP client copies a part once while sending it); raise it for
        throughput on a fast network.
    retries : int, optional
        Retries of each request after a transient error (connection error, 5xx,
        throttling), with exponential backoff, on top of the client library's own
        retries (default 3).  Permanent errors are raised at once.
    content_type : str, optional
        The object's Content-Type (default ``"application/dicom"``).
    metadata : mapping of str to str, optional
        User metadata stored with the object (S3 ``x-amz-meta-*``, GCS
        ``metadata``, Azure blob metadata).
    upload_args : mapping, optional
        Backend-specific extras for the creating request: S3 ``put_object`` /
        ``create_multipart_upload`` parameters (``ACL``, ``StorageClass``,
        ``ServerSideEncryption``, ``CacheControl``...); GCS ``fixed_key_metadata``
        and ``kms_key_name``; Azure ``upload_blob`` / ``commit_block_list`` keywords
        (``standard_blob_tier``, ``tags``...).
    checksum : {"crc32c", "sha256", "md5"} or None, optional
        The checksum of the object, computed while it streams (default
        ``"crc32c"``) and sent so that the store refuses bytes that differ: see
        "Integrity" in the guarantees.  Object stores also get the checksums they
        check (Azure: MD5 per block; GCS: CRC32C when SHA-256 is asked for).
        ``None`` computes and sends none (the client library's own defaults
        remain).  :func:`aiodicom.dcmwrite` returns the checksum.
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        retries: int = DEFAULT_RETRIES,
        content_type: str = DICOM_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        upload_args: Mapping[str, Any] | None = None,
        checksum: str | None = DEFAULT_ALGORITHM,
    ) -> None:
        if part_size < 1:
            raise ValueError(f"part_size must be positive, not {part_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        if retries < 0:
            raise ValueError(f"retries must not be negative, not {retries}")
        self._fs = fs
        self.path = path
        """The path as given (a URL for :meth:`from_url`); never changes."""
        self._fs_path: str | None = None  # the path on the filesystem, once it exists
        self._url: str | None = None
        self._storage_options: dict[str, Any] = {}
        self.options = Options(
            part_size=part_size,
            concurrency=concurrency,
            retries=retries,
            content_type=content_type,
            metadata=dict(metadata or {}),
            upload_args=dict(upload_args or {}),
            checksum=normalize_algorithm(checksum),
        )

    @classmethod
    def from_url(
        cls, url: str, storage_options: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> FsspecFile:
        """A file named by an fsspec URL; the filesystem is created on first use.

        Parameters
        ----------
        url : str
            ``"s3://bucket/key.dcm"``, ``"gs://..."``, ``"az://container/..."``,
            ``"memory://..."``, ``"file://..."`` or any URL fsspec knows, chained
            ones included.
        storage_options : mapping, optional
            Keyword arguments for the filesystem (credentials, endpoint...), as in
            :func:`fsspec.core.url_to_fs`.
        **kwargs
            As for :class:`FsspecFile` (`part_size`, `metadata`...).
        """
        sink = cls(None, url, **kwargs)
        sink._url = url
        sink._storage_options = dict(storage_options or {})
        return sink

    def __repr__(self) -> str:
        return f"FsspecFile({self.url!r})"

    @property
    def retries(self) -> int:
        """How often the driver starts the whole write over after a
        :class:`~aiodicom.sinks.RetryableError` (the same count as per request)."""
        return self.options.retries

    @property
    def checksum(self) -> str | None:
        """The checksum algorithm (``None``: none)."""
        return self.options.checksum

    @property
    def url(self) -> str:
        """The destination as a URL (as given to :meth:`from_url`, if it was)."""
        if self._url is not None:
            return self._url
        try:
            return str(self._fs.unstrip_protocol(self.path))
        except Exception:  # a filesystem without protocol
            return str(self.path)

    def filesystem(self) -> tuple[Any, str]:
        """The filesystem and the path on it; creates the filesystem (blocking)."""
        if self._fs_path is None:
            if self._fs is None:
                from fsspec.core import url_to_fs

                self._fs, path = url_to_fs(self.url, **self._storage_options)
            else:
                path = self.path
            self._fs_path = self._fs._strip_protocol(path)
        return self._fs, self._fs_path

    def open(self, *, exist_ok: bool) -> Writer:
        """Start a write (in a worker thread): see :class:`~aiodicom.sinks.Sink`."""
        fs, path = self.filesystem()
        store = _object_store(fs, path, self.url, self.options)
        if store is not None:
            return PartWriter(store, self.url, exist_ok, self.options)
        checksum = self.options.checksum
        if _is_instance(fs, "fsspec.implementations.memory", "MemoryFileSystem"):
            return _MemoryWriter(fs, path, self.url, exist_ok, checksum)
        if _is_instance(fs, "fsspec.implementations.local", "LocalFileSystem"):
            from .local import LocalFile

            try:
                local = LocalFile(path, checksum=checksum).open(exist_ok=exist_ok)
            except FileExistsError:
                raise exists_error(self.url) from None
            return _RenameExists(local, self.url)
        return _GenericWriter(fs, path, self.url, exist_ok, checksum)

    def probe(self) -> None:
        """Check that this object could be written, leaving nothing behind (blocking).

        The filesystem is created (bad storage options fail here), then: for S3
        and GCS an upload is started and discarded (a multipart upload aborted, a
        resumable session deleted), which needs the bucket to exist and the
        credentials to be allowed to write; for Azure one byte is staged as a
        block that is never committed (invisible; the service drops it within a
        week); ``memory://`` needs nothing more; a local folder is created and a
        temporary file is written in it and removed; any other filesystem gets an
        empty file written and deleted.  :func:`aiodicom.export` calls it once,
        on a name under its destination, before reading any source.

        Raises
        ------
        Exception
            What writing would raise: :class:`FileNotFoundError` for a missing
            bucket, :class:`PermissionError` for refused credentials, the client
            library's own error for missing ones.
        """
        fs, path = self.filesystem()
        store = _object_store(fs, path, self.url, self.options)
        if store is not None:
            probe(store, self.url, self.options)
        elif _is_instance(fs, "fsspec.implementations.memory", "MemoryFileSystem"):
            return
        elif _is_instance(fs, "fsspec.implementations.local", "LocalFileSystem"):
            import os
            import tempfile

            from .local import TEMP_SUFFIX

            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, temp = tempfile.mkstemp(suffix=TEMP_SUFFIX, dir=folder)
            os.close(fd)
            os.unlink(temp)
        else:
            fs.pipe_file(path, b"")
            fs.rm_file(path)


class AsyncObjectFile:
    """An object on S3, GCS or Azure written from an event loop: an
    :class:`~aiodicom.sinks.AsyncSink` over an :class:`FsspecFile` whose
    filesystem exists already (see :meth:`for_url`).

    The same requests, checksums, retries and exclusive create as the
    :class:`FsspecFile`; only the waiting differs: an object that fits in one
    part is buffered in the event loop and its one request is awaited there,
    without a worker thread (see ``_stores._uploader.AsyncPartWriter``).  Bulk
    export uses it for object-store destinations.
    """

    encode_ahead = True  # a light dataset is encoded at once (see _protocol)

    def __init__(self, file: FsspecFile, store: Store) -> None:
        self._file = file
        self._store: Store | None = store  # the first write's; each open makes its own
        self.retries = file.retries
        self.checksum = file.checksum

    @classmethod
    def for_url(
        cls, url: str, fs: Any, storage_options: Mapping[str, Any] | None, **kwargs: Any
    ) -> AsyncObjectFile | None:
        """The object at `url` on `fs`, the filesystem that ``url_to_fs(url,
        **storage_options)`` gives (created already: this does no I/O); ``None``
        if `fs` is not an object store.  `kwargs` as for :class:`FsspecFile`."""
        file = FsspecFile.from_url(url, storage_options, **kwargs)
        file._fs = fs
        fs, path = file.filesystem()
        store = _object_store(fs, path, url, file.options)
        return None if store is None else cls(file, store)

    @property
    def url(self) -> str:
        """The destination as a URL."""
        return self._file.url

    def __repr__(self) -> str:
        return f"AsyncObjectFile({self.url!r})"

    async def open_async(self, *, exist_ok: bool) -> AsyncPartWriter:
        """Start a write (no I/O: the first request connects)."""
        store, self._store = self._store, None
        if store is None:  # a whole-write retry: a fresh upload
            fs, path = self._file.filesystem()
            store = _object_store(fs, path, self.url, self._file.options)
            assert store is not None
        return AsyncPartWriter(PartWriter(store, self.url, exist_ok, self._file.options))


_STORES: Final = (
    ("s3fs", "S3FileSystem", "._stores.s3", "S3Store"),
    ("gcsfs", "GCSFileSystem", "._stores.gcs", "GCSStore"),
    ("adlfs", "AzureBlobFileSystem", "._stores.azure", "AzureStore"),
)


def is_object_store(fs: Any) -> bool:
    """Whether `fs` is S3, GCS or Azure Blob (written through ``_stores``)."""
    return any(_is_instance(fs, module, cls) for module, cls, _, _ in _STORES)


def _object_store(fs: Any, path: str, url: str, options: Options) -> Store | None:
    import importlib

    for module, cls, adapter, store in _STORES:
        if _is_instance(fs, module, cls):
            store_cls = getattr(importlib.import_module(adapter, __package__), store)
            result: Store = store_cls(fs, path, url, options)
            return result
    return None


def _is_instance(obj: Any, module: str, name: str) -> bool:
    """``isinstance(obj, module.name)`` without importing `module`."""
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(obj, cls)


class _RenameExists:
    """Wrap a writer so that its ``FileExistsError`` names the URL."""

    def __init__(self, writer: Writer, url: str) -> None:
        self._writer = writer
        self._url = url

    @property
    def checksum(self) -> Checksum | None:
        checksum: Checksum | None = getattr(self._writer, "checksum", None)
        return checksum

    def write(self, chunk: Chunk, /) -> None:
        self._writer.write(chunk)

    def commit(self) -> None:
        try:
            self._writer.commit()
        except FileExistsError:
            raise exists_error(self._url) from None

    def abort(self) -> None:
        self._writer.abort()


class _MemoryWriter:
    """``memory://``: a private MemoryFile, published atomically at commit."""

    def __init__(self, fs: Any, path: str, url: str, exist_ok: bool, checksum: str | None) -> None:
        from fsspec.implementations.memory import MemoryFile

        if not exist_ok and fs.exists(path):
            raise exists_error(url)
        if path in fs.pseudo_dirs:
            raise IsADirectoryError(url)
        self._fs = fs
        self._path = path
        self._url = url
        self._exist_ok = exist_ok
        self._file = MemoryFile(fs, path)
        self.checksum = Checksum(checksum) if checksum else None

    def write(self, chunk: Chunk, /) -> None:
        if self.checksum is not None:
            self.checksum.update(chunk)
        self._file.write(chunk)

    def commit(self) -> None:
        file, store = self._file, self._fs.store
        file.seek(0)
        file.modified = datetime.now(tz=timezone.utc)
        if self._exist_ok:
            store[self._path] = file
        elif store.setdefault(self._path, file) is not file:  # atomic under the GIL
            raise exists_error(self._url)
        self._fs.invalidate_cache(self._path)

    def abort(self) -> None:
        self._file = None


class _GenericWriter:
    """Any other filesystem: its own file object, never committed on failure.

    ``exist_ok=False`` is checked when opening and again before commit; between
    the second check and the commit another writer may create the file.
    """

    def __init__(self, fs: Any, path: str, url: str, exist_ok: bool, checksum: str | None) -> None:
        if not exist_ok and fs.exists(path):
            raise exists_error(url)
        self._fs = fs
        self._path = path
        self._url = url
        self._exist_ok = exist_ok
        self.checksum = Checksum(checksum) if checksum else None
        self._file = fs.open(path, "wb")

    def write(self, chunk: Chunk, /) -> None:
        if self.checksum is not None:
            self.checksum.update(chunk)
        self._file.write(chunk)

    def commit(self) -> None:
        if not self._exist_ok:
            self._fs.invalidate_cache(self._path)
            if self._fs.exists(self._path):
                raise exists_error(self._url)
        self._file.close()

    def abort(self) -> None:
        file = self._file
        discard = getattr(file, "discard", None)
        if callable(discard):
            discard()
            # AbstractBufferedFile.close() would upload what is buffered; adlfs's
            # discard() does nothing.  Marking it closed stops both.
            file.closed = True
        else:
            logger.warning(
                "aiodicom: %s cannot discard a partial write; closing it as is",
                type(file).__name__,
            )
            file.close()
