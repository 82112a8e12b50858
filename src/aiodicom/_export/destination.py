"""Where exported files go: a root (local folder, URL prefix or a callable that
makes a sink per name), its pre-flight check, byte counting, and reading back
what was written there (``verify=True``)."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .._checksum import Checksum
from .._errors import ChecksumMismatchError, DestinationError, NamingError
from ..sinks import (
    AsyncSink,
    AsyncWriter,
    Chunk,
    FsspecFile,
    Sink,
    Writer,
    capabilities,
    is_url,
    resolve,
)
from ..sinks._protocol import is_sink
from ..sinks.dicomweb import SCHEMES as DICOMWEB_SCHEMES
from ..sinks.fsspec import AsyncObjectFile, is_object_store
from ..sinks.local import TEMP_SUFFIX, remove_stale_temporary_files
from .report import describe_error
from .sources import in_process_memory

if TYPE_CHECKING:
    from .options import ExportOptions

__all__ = ["PROBE_PREFIX", "CountingAsyncSink", "CountingSink", "Root"]

PROBE_PREFIX = ".aiodicom-probe-"
"""The name of the pre-flight check's probe (removed at once; never a source)."""


@dataclass
class Root:
    """The destination root: a local folder, an fsspec URL prefix, a DICOMweb
    server (``dicomweb+http(s)://``, exported by :mod:`aiodicom._export.dicomweb`),
    or a callable that returns a sink for each name.

    Build one with :meth:`parse`, which checks it before any work starts.
    """

    location: str
    is_local: bool
    storage_options: dict[str, Any] | None = None
    upload_options: dict[str, Any] = field(default_factory=dict)
    _fs: Any = field(default=None, repr=False)
    _swept: set[str] = field(default_factory=set, repr=False, compare=False)
    _real_root: str | None = field(default=None, repr=False, compare=False)
    _objects: bool | None = field(default=None, repr=False, compare=False)
    factory: Callable[[str], Any] | None = field(default=None, repr=False)

    @classmethod
    def parse(
        cls,
        destination: Any,
        storage_options: dict[str, Any] | None,
        upload_options: Mapping[str, Any] | None = None,
    ) -> Root:
        """Check `destination` and return its root.

        Raises
        ------
        TypeError
            If `destination` is not a path, a URL string or a callable (a sink
            is refused: it holds one file, an export writes many).
        ValueError
            For an unknown URL protocol (or one whose package is missing),
            `storage_options` with a local folder or a callable, a local path
            that exists and is not a folder, or unusable DICOMweb options.
        """
        if not isinstance(destination, str | bytes | os.PathLike):
            if callable(destination):
                if storage_options or upload_options:
                    raise ValueError(
                        "storage_options and upload_options are only for fsspec URL "
                        "destinations, not for a callable"
                    )
                name = getattr(destination, "__qualname__", None) or repr(destination)
                return cls(f"<{name}>", False, factory=destination)
            if isinstance(destination, Sink | AsyncSink):
                raise TypeError(
                    "a sink holds one file, and an export writes many: pass a callable "
                    "that returns a sink (or a path or URL) for each name, such as "
                    "lambda name: MySink(name)"
                )
            raise TypeError(
                "the export destination must be a folder path, an fsspec URL "
                "prefix or a callable name -> sink, not "
                f"{type(destination).__name__}"
            )
        location = os.fsdecode(os.fspath(destination))
        if location.startswith(DICOMWEB_SCHEMES):
            from .dicomweb import check_destination

            check_destination(location, storage_options, upload_options)
            return cls(location.rstrip("/"), False, storage_options)
        if is_url(location) and not location.startswith("file://"):
            _check_protocols(location)
            # bad upload options fail here, once, not once per item (building a sink
            # creates no filesystem and does no I/O)
            FsspecFile.from_url(location, storage_options, **(upload_options or {}))
            return cls(_url_root(location), False, storage_options, dict(upload_options or {}))
        if storage_options or upload_options:
            raise ValueError(
                "storage_options and upload_options are only for fsspec URL destinations"
            )
        folder = os.path.abspath(location.removeprefix("file://"))
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"the export destination {folder!r} exists and is not a folder")
        return cls(folder, True)

    @property
    def is_dicomweb(self) -> bool:
        """Whether this is a DICOMweb server (STOW-RS), not a folder or a prefix."""
        return self.location.startswith(DICOMWEB_SCHEMES)

    def check_options(self, options: ExportOptions) -> None:
        """Raise :class:`ValueError` for export options this destination cannot
        honour (checked before any work; nothing to check for folders and prefixes)."""
        if self.is_dicomweb:
            from .dicomweb import check_options

            check_options(options)
        if options.verify and self.factory is not None:
            raise ValueError("verify=True cannot read back what a callable destination wrote")

    @property
    def shared_between_processes(self) -> bool:
        """Whether other processes of this machine write into the same place
        (not so for ``memory://``, which lives in each process's memory, nor for
        a callable)."""
        if self.factory is not None:
            return False
        return self.is_local or not in_process_memory(self.location)

    def check(self, *, dry_run: bool = False) -> None:
        """The pre-flight check, before any source is read (blocking).

        A local root is created and a temporary file is written in it and
        removed (in a dry run: the nearest existing folder must be writable;
        nothing is created).  A URL root gets an upload started and discarded
        (:meth:`aiodicom.sinks.fsspec.FsspecFile.probe`): the bucket or
        container exists and the credentials may write.  A callable (it is
        yours) and a DICOMweb server (its options were checked) are not.

        Raises
        ------
        DestinationError
            If the destination cannot be written; ``__cause__`` says why.
        """
        if self.factory is not None or self.is_dicomweb:
            return
        try:
            if self.is_local:
                _check_folder(self.location, dry_run=dry_run)
            else:
                probe = self.join(f"{PROBE_PREFIX}{os.urandom(8).hex()}")
                FsspecFile.from_url(probe, self.storage_options, **self.upload_options).probe()
        except Exception as exc:
            raise DestinationError(
                f"cannot write to {self.location!r}: {describe_error(exc)}"
            ) from exc

    @property
    def unsafe_characters(self) -> str:
        """Characters that dataset values must not bring into a name here, besides
        the path separators and control characters no root takes: fsspec's
        clients read ``?`` and ``#`` in a URL as a version or a fragment (s3fs cuts
        ``key?versionId=...`` to ``key``), so object names never get them."""
        return "" if self.is_local else "?#"

    def join(self, relative: str) -> str:
        """The destination of `relative` (a checked, ``/``-separated path).

        Raises
        ------
        NamingError
            If the name would leave the root: through ``..`` (belt and braces:
            names are checked before), or, for a local root, through a symbolic
            link inside it that points elsewhere; or if an object name holds
            characters that the store's client would read as URL syntax.
        """
        if self.factory is not None:
            if any(char in relative for char in self.unsafe_characters):
                raise NamingError(f"unsafe name {relative!r}: '?' and '#' are refused")
            return relative  # what the callable gets
        if not self.is_local:
            if any(char in relative for char in self.unsafe_characters):
                raise NamingError(
                    f"unsafe object name {relative!r}: '?' and '#' are read as URL "
                    "syntax by the store's client (a version, a fragment)"
                )
            separator = "" if self.location.endswith("://") else "/"
            return f"{self.location}{separator}{relative}"
        joined = os.path.normpath(os.path.join(self.location, *relative.split("/")))
        if os.path.commonpath([self.location, joined]) != self.location:
            raise NamingError(f"{relative!r} would leave the destination {self.location!r}")
        if self._real_root is None:
            self._real_root = os.path.realpath(self.location)
        real_root = self._real_root
        # realpath(joined) is the real root and the rest, unless a part below
        # the root is a link: look at those parts only (checked on every call: a
        # link may appear while the export runs)
        if _link_below(self.location, joined):
            real = os.path.realpath(joined)
            if os.path.commonpath([real_root, real]) != real_root:
                raise NamingError(
                    f"{relative!r} would leave the destination {self.location!r} through a "
                    f"symbolic link (it resolves to {real!r})"
                )
        return joined

    def make_parent(self, destination: str) -> None:
        """Create the folders `destination` needs (local roots only; blocking).

        The first time this export writes into a folder, temporary files that an
        earlier crash left there are removed (see
        :func:`aiodicom.sinks.local.remove_stale_temporary_files`).
        """
        if not self.is_local:
            return
        folder = os.path.dirname(destination)
        if folder in self._swept:
            # made (or found) before: one mkdir says it is still there
            try:
                os.mkdir(folder)
            except FileExistsError:
                return
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
            return
        os.makedirs(folder, exist_ok=True)
        self._swept.add(folder)
        remove_stale_temporary_files(folder)

    def exists(self, destination: str) -> bool:
        """Whether `destination` exists now (blocking; ``False`` for a callable
        root, which cannot tell: its sinks refuse existing names themselves)."""
        if self.factory is not None:
            return False
        if self.is_local:
            return os.path.lexists(destination)
        return bool(self._filesystem().exists(destination))

    def remove(self, destination: str) -> bool:
        """Remove `destination` if it exists (blocking); ``False`` for a callable
        root, which cannot."""
        if self.factory is not None:
            return False
        if self.is_local:
            with contextlib.suppress(FileNotFoundError):
                os.remove(destination)
            return True
        fs = self._filesystem()
        if fs.exists(destination):
            fs.rm_file(destination)
        return True

    def open_filesystem(self) -> None:
        """Create the filesystem of a URL root now (blocking: in a worker thread),
        so that its sinks need not (an object store's are then awaited in the
        event loop); nothing for other roots."""
        if not self.is_local and self.factory is None and not self.is_dicomweb:
            self._objects = is_object_store(self._filesystem())

    @property
    def awaits_uploads(self) -> bool:
        """Whether this root's sinks are object-store uploads awaited in the event
        loop (after :meth:`open_filesystem`)."""
        return bool(self._objects)

    def _filesystem(self) -> Any:
        if self._fs is None:
            from fsspec.core import url_to_fs

            self._fs, _ = url_to_fs(self.location, **(self.storage_options or {}))
        return self._fs

    def sink(self, destination: str, checksum: str | None) -> CountingSink | CountingAsyncSink:
        """A sink for `destination`, computing `checksum`, that counts the bytes it
        commits."""
        inner: Sink | AsyncSink
        if self.factory is not None:
            inner = resolve(self.factory(destination), checksum=checksum)
        elif self.is_local:
            inner = resolve(destination, checksum=checksum)
        else:
            # an object store whose filesystem exists (see open_filesystem): its
            # uploads are awaited in the event loop, not in worker threads
            options = {"checksum": checksum, **self.upload_options}
            fast = None
            if self._objects:
                fast = AsyncObjectFile.for_url(
                    destination, self._fs, self.storage_options, **options
                )
            inner = fast or FsspecFile.from_url(destination, self.storage_options, **options)
        if is_sink(inner):
            return CountingSink(inner)
        return CountingAsyncSink(cast(AsyncSink, inner))

    def verify(self, destination: str, expected: Checksum) -> str:
        """Read back what is stored at `destination` (blocking) and compare its
        checksum with `expected`; return how: ``"metadata"`` (the checksum the
        store computed and keeps) or ``"bytes"`` (read and checksummed here).

        Raises
        ------
        ChecksumMismatchError
            If the stored object's checksum differs.
        """
        algorithm = expected.algorithm
        if self.factory is not None:
            raise TypeError("a callable destination cannot be read back (verify)")
        if self.is_local:
            found, how = _read_checksum(open(destination, "rb"), algorithm), "bytes"  # noqa: SIM115
        else:
            fs = self._filesystem()
            path = fs._strip_protocol(destination)
            kept = _kept_checksum(fs, path, algorithm)
            if kept is not None:
                found, how = kept, "metadata"
            else:
                found = _read_checksum(fs.open(path, "rb", block_size=_READ_SIZE), algorithm)
                how = "bytes"
        if found != expected.b64:
            raise ChecksumMismatchError(
                destination, algorithm, expected.b64, found, verifying=True, detail=how
            )
        return how


def _check_folder(folder: str, *, dry_run: bool) -> None:
    """Create `folder` and write a temporary file in it, or (`dry_run`) check
    that its nearest existing folder could be written, creating nothing."""
    if dry_run:
        existing = folder
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise NotADirectoryError(f"{existing!r} is not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"{existing!r} cannot be written")
        return
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    try:
        os.write(fd, b"aiodicom")
    finally:
        os.close(fd)
        os.unlink(probe)


def _url_root(location: str) -> str:
    """`location` without trailing slashes on its path, keeping ``protocol://``
    whole (``memory://`` stays ``memory://``, never ``memory:``)."""
    head, _, path = location.partition("://")
    return f"{head}://{path.rstrip('/')}"


_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure"}
"""aiodicom's extras that install a protocol's package."""


def _check_protocols(url: str) -> None:
    import fsspec

    head = url.partition("://")[0]
    for protocol in head.split("::"):
        try:
            fsspec.get_filesystem_class(protocol)
        except (ValueError, ImportError) as exc:
            extra = _EXTRAS.get(protocol)
            hint = (
                f" (install aiodicom's {extra!r} extra: pip install '.[{extra}]' in a checkout)"
                if extra and "nstall" in str(exc)
                else ""
            )
            raise ValueError(f"cannot write to {url!r}: {exc}{hint}") from None


def _size(chunk: Chunk) -> int:
    return chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)


def _declare_capabilities(wrapper: Any, inner: Any) -> None:
    """Give `wrapper` the optional capabilities of the sink it wraps."""
    able = capabilities(inner)
    check = able.check
    if check is not None:

        def checked(*, exist_ok: bool) -> None:
            try:
                check(exist_ok=exist_ok)
            except Exception as exc:  # the destination's own error, as open's
                wrapper.error = exc
                raise

        wrapper.check = checked
    wrapper.retries = able.retries
    wrapper.inline_write_limit = able.inline_write_limit
    wrapper.encode_ahead = able.encode_ahead
    if able.declares_checksum:
        wrapper.checksum = able.checksum


class _ForwardChecksum:
    """A wrapping writer has its inner writer's ``checksum`` if that has one (so
    the driver computes none of its own), and no such attribute otherwise."""

    _inner: Any

    def __getattr__(self, name: str) -> Any:
        if name == "checksum":
            return self._inner.checksum
        raise AttributeError(name)

    def committed_checksum(self) -> Checksum | None:
        checksum: Checksum | None = getattr(self._inner, "checksum", None)
        return checksum


class CountingSink:
    """Wraps a :class:`~aiodicom.sinks.Sink`; :attr:`count` is the bytes committed,
    :attr:`error` the last error the sink itself raised (the destination failed,
    as opposed to encoding the dataset)."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.count = 0
        self.committed = False
        self.error: BaseException | None = None
        self.written_checksum: Checksum | None = None
        _declare_capabilities(self, inner)

    def open(self, *, exist_ok: bool) -> Writer:
        try:
            writer = self.inner.open(exist_ok=exist_ok)
        except Exception as exc:
            self.error = exc
            raise
        return _CountingWriter(self, writer)


class _CountingWriter(_ForwardChecksum):
    def __init__(self, sink: CountingSink, inner: Writer) -> None:
        self._sink = sink
        self._inner = inner
        self._count = 0

    def write(self, chunk: Chunk, /) -> None:
        try:
            self._inner.write(chunk)
        except Exception as exc:
            self._sink.error = exc
            raise
        self._count += _size(chunk)

    def commit(self) -> None:
        try:
            self._inner.commit()
        except Exception as exc:
            self._sink.error = exc
            raise
        self._sink.count = self._count
        self._sink.written_checksum = self.committed_checksum()
        self._sink.committed = True

    def abort(self) -> None:
        self._inner.abort()


class CountingAsyncSink:
    """Wraps an :class:`~aiodicom.sinks.AsyncSink`; as :class:`CountingSink`."""

    def __init__(self, inner: AsyncSink) -> None:
        self.inner = inner
        self.count = 0
        self.committed = False
        self.error: BaseException | None = None
        self.written_checksum: Checksum | None = None
        _declare_capabilities(self, inner)

    async def open_async(self, *, exist_ok: bool) -> AsyncWriter:
        try:
            writer = await self.inner.open_async(exist_ok=exist_ok)
        except Exception as exc:
            self.error = exc
            raise
        return _CountingAsyncWriter(self, writer)


class _CountingAsyncWriter(_ForwardChecksum):
    def __init__(self, sink: CountingAsyncSink, inner: AsyncWriter) -> None:
        self._sink = sink
        self._inner = inner
        self._count = 0

    async def write(self, chunk: Chunk, /) -> None:
        try:
            await self._inner.write(chunk)
        except Exception as exc:
            self._sink.error = exc
            raise
        self._count += _size(chunk)

    async def commit(self) -> None:
        try:
            await self._inner.commit()
        except Exception as exc:
            self._sink.error = exc
            raise
        self._sink.count = self._count
        self._sink.written_checksum = self.committed_checksum()
        self._sink.committed = True

    async def abort(self) -> None:
        await self._inner.abort()


_READ_SIZE = 4 * 1024 * 1024


def _read_checksum(stream: Any, algorithm: str) -> str:
    """The checksum (base64) of everything `stream` holds; closes it."""
    checksum = Checksum(algorithm)
    with stream:
        while True:
            chunk = stream.read(_READ_SIZE)
            if not chunk:
                return checksum.b64
            checksum.update(chunk)


def _kept_checksum(fs: Any, path: str, algorithm: str) -> str | None:
    """The whole-object checksum the store computed and keeps, if it has one of
    `algorithm`: S3's full-object CRC32C or single-request SHA-256 (asked with
    ``ChecksumMode=ENABLED``), GCS's ``crc32c`` / ``md5Hash``.  Azure keeps the
    MD5 the writer declared, which proves nothing: its bytes are read instead."""
    kind = type(fs).__module__.split(".")[0]
    if kind == "s3fs":
        bucket, key, _ = fs.split_path(path)
        head = fs.call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        name = {"crc32c": "ChecksumCRC32C", "sha256": "ChecksumSHA256"}.get(algorithm)
        value = head.get(name) if name else None
        composite = head.get("ChecksumType") == "COMPOSITE" or "-" in str(value or "")
        return str(value) if value and not composite else None
    if kind == "gcsfs":
        info = fs.info(path, refresh=True)
        key = {"crc32c": "crc32c", "md5": "md5Hash"}.get(algorithm)
        value = info.get(key) if key else None
        return str(value) if value else None
    return None


def _link_below(root: str, path: str) -> bool:
    """Whether a part of `path` below `root` (a folder it is in) is a symbolic
    link, or cannot be looked at (then the caller resolves the whole path)."""
    current = root
    for part in path[len(root) :].split(os.sep):
        if not part:
            continue
        current = os.path.join(current, part)
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return False  # the rest is created by this export, as folders
        except OSError:
            return True
        if stat.S_ISLNK(mode):
            return True
    return False
