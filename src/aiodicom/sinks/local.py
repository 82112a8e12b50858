"""Local files: write a temporary file beside the target, then publish it atomically.

* ``exist_ok=True``: ``os.replace`` over the target; readers see the old file or the
  new one, never a mix, and a failed write leaves the old file as it was.
* ``exist_ok=False``: ``os.link`` of the finished temporary file to the target, which
  fails if the target exists, so of many racing writers exactly one wins (on
  filesystems without hard links, ``renameat2(RENAME_NOREPLACE)``).
* Overwriting keeps the old file's permission bits; the file gets a new inode, so
  hard links to the old file keep the old content and the owner becomes the writer.
* A symbolic link is followed: its target is replaced, the link stays.
* Targets that are not regular files (``/dev/null``, a FIFO) are written in place,
  as pydicom does; such a write cannot be rolled back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import tempfile
from typing import Final

from .._checksum import DEFAULT_ALGORITHM, Checksum, normalize_algorithm
from .._core.rules import Chunk

__all__ = ["TEMP_SUFFIX", "LocalFile"]

TEMP_SUFFIX: Final = ".aiodicom-tmp"
"""The suffix of temporary files not published yet (export never reads them)."""
_TEMP_NAME_MAX: Final = 64  # bytes of the target's name kept in the temp name


def _temp_prefix(name: str) -> str:
    """``.<start of name>.``, at most ``_TEMP_NAME_MAX`` *bytes* of `name`: with
    multi-byte characters a cut by characters could overflow NAME_MAX (255 bytes)."""
    kept, size = 0, 0
    for char in name:
        size += len(os.fsencode(char))
        if size > _TEMP_NAME_MAX:
            break
        kept += 1
    return f".{name[:kept]}."


def _read_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no other way to read it; set it straight back
    os.umask(mask)
    return mask


_NEW_FILE_MODE: Final = 0o666 & ~_read_umask()


class LocalFile:
    """A file on the local filesystem, published atomically.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        Where the file goes.  Its directory must exist.
    fsync : bool, optional
        If ``True``, ``fsync`` the temporary file before it is published and the
        directory after, before :meth:`~aiodicom.sinks.Writer.commit` returns: once
        the write has returned, the file and its name survive a crash or power loss
        (on storage that honours flushes).  Default ``False`` (as
        :func:`pydicom.dcmwrite`): the publish is still atomic for every other
        process, but after a crash the file may be missing, or the old version, and
        on some filesystems present with its data not yet on disk.
    checksum : {"crc32c", "sha256", "md5"} or None, optional
        The checksum computed over the bytes written, in the writing thread, as
        they go to the file (default ``"crc32c"``; ``None`` computes none).  The
        writer's :attr:`checksum` holds it; :func:`aiodicom.dcmwrite` returns it.
    """

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes],
        *,
        fsync: bool = False,
        checksum: str | None = DEFAULT_ALGORITHM,
    ) -> None:
        self.path: str = os.fsdecode(os.fspath(path))
        self.fsync = fsync
        self.checksum = normalize_algorithm(checksum)

    def __repr__(self) -> str:
        return f"LocalFile({self.path!r})"

    def check(self, *, exist_ok: bool) -> None:
        """Raise what :meth:`open` would raise for the path itself (it exists and
        `exist_ok` is false, it is a directory, its directory is missing), creating
        nothing.  The driver calls it where pydicom opens its file, so these errors
        come before errors in the dataset's encoding, as in pydicom."""
        self._inspect(exist_ok)

    def _inspect(self, exist_ok: bool) -> tuple[str, os.stat_result | None]:
        """The real target (symbolic links followed) and its status, if it exists."""
        path = self.path
        if not exist_ok and os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        target = os.path.realpath(path) if os.path.islink(path) else path
        try:
            st: os.stat_result | None = os.stat(target)
        except FileNotFoundError:
            st = None
            if not os.path.isdir(os.path.dirname(os.path.abspath(target))):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        except NotADirectoryError:  # a parent is a file: pydicom's error too
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        return target, st

    def open(self, *, exist_ok: bool) -> _InPlaceWriter | _TempFileWriter:
        path = self.path
        if not path:  # as open(""): the directory part would otherwise be the cwd
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        target, st = self._inspect(exist_ok)
        if st is not None and not stat.S_ISREG(st.st_mode):
            return _InPlaceWriter(path, self.checksum)

        directory, name = os.path.split(os.path.abspath(target))
        try:
            fd, temp = tempfile.mkstemp(
                prefix=_temp_prefix(name), suffix=TEMP_SUFFIX, dir=directory
            )
        except FileNotFoundError:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from None
        except NotADirectoryError:
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path) from None
        except PermissionError as exc:
            raise PermissionError(
                exc.errno,
                f"cannot create a temporary file in {directory!r} to publish "
                f"{path!r} atomically ({exc.strerror})",
            ) from None
        mode = stat.S_IMODE(st.st_mode) if st is not None else _NEW_FILE_MODE
        writer = _TempFileWriter(path, target, fd, temp, exist_ok, self.fsync, mode)
        writer.checksum = Checksum(self.checksum) if self.checksum else None
        return writer


class _TempFileWriter:
    checksum: Checksum | None

    def __init__(
        self,
        path: str,
        target: str,
        fd: int,
        temp: str,
        exist_ok: bool,
        fsync: bool,
        mode: int,
    ) -> None:
        self._path = path
        self._target = target
        self._fd = fd
        self._temp = temp
        self._exist_ok = exist_ok
        self._fsync = fsync
        self._mode = mode
        self.checksum = None

    def write(self, chunk: Chunk, /) -> None:
        view = memoryview(chunk)
        if self.checksum is not None:
            self.checksum.update(view)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self) -> None:
        fd, self._fd = self._fd, -1
        try:
            os.fchmod(fd, self._mode)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if self._exist_ok:
            os.replace(self._temp, self._target)
        else:
            try:
                _publish_exclusive(self._temp, self._target)
            except FileExistsError:
                raise FileExistsError(
                    errno.EEXIST, os.strerror(errno.EEXIST), self._path
                ) from None
            finally:
                _unlink_quietly(self._temp)
        if self._fsync:
            _fsync_directory(os.path.dirname(os.path.abspath(self._target)))

    def abort(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
        _unlink_quietly(self._temp)


class _InPlaceWriter:
    """For targets that are not regular files: written directly, no rollback."""

    def __init__(self, path: str, checksum: str | None) -> None:
        self.checksum = Checksum(checksum) if checksum else None
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (closed in commit/abort)

    def write(self, chunk: Chunk, /) -> None:
        view = memoryview(chunk)
        if self.checksum is not None:
            self.checksum.update(view)
        while view:
            view = view[self._file.write(view) or 0 :]

    def commit(self) -> None:
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_LINK_UNSUPPORTED: Final = {
    errno.EPERM,
    errno.EOPNOTSUPP,
    errno.ENOTSUP,
    errno.EMLINK,
    errno.EXDEV,
}
_RENAME_NOREPLACE: Final = 1


def _publish_exclusive(temp: str, target: str) -> None:
    """Make `temp` appear at `target` unless `target` exists; atomic either way."""
    try:
        os.link(temp, target)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
    _renameat2_noreplace(temp, target)


def _renameat2_noreplace(temp: str, target: str) -> None:
    libc_name = ctypes.util.find_library("c")
    renameat2 = getattr(ctypes.CDLL(libc_name, use_errno=True), "renameat2", None)
    if renameat2 is None:
        raise OSError(
            errno.ENOTSUP,
            "this filesystem offers no atomic exclusive create (no hard links, "
            "no renameat2); use exist_ok=True",
            target,
        )
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(temp), at_fdcwd, os.fsencode(target), _RENAME_NOREPLACE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)
