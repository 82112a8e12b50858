"""Local files: write a temporary file beside the target, then publish it atomically.

* ``exist_ok=True``: ``os.replace`` over the target; readers see the old file or the
  new one, never a mix, and a failed write leaves the old file as it was.
* ``exist_ok=False``: ``os.link`` of the finished temporary file to the target, which
  fails if the target exists, so of many racing writers exactly one wins (on
  filesystems without hard links, ``renameat2(RENAME_NOREPLACE)``).
* Overwriting keeps the old file's permission bits; the file gets a new inode, so
  hard links to the old file keep the old content and the owner becomes the writer.
  A file pydicom could not open for writing (mode 0444, a read-only filesystem...)
  is refused with pydicom's error, not replaced.
* A new file is created with mode ``0o666``, as ``open()`` creates it: the kernel
  applies the umask (or the directory's default ACL) in force at that moment.
* A symbolic link is followed: its target is replaced, the link stays.
* The path is resolved by the kernel, as ``open()`` resolves it: the folder part
  is opened once (``..`` after a symbolic link goes where the link's target is,
  ``missing/..`` fails), and the temporary file is created and published relative
  to that folder, never to the lexical parent.  Every error names the caller's
  path, as pydicom's do, never the temporary file.
* Targets that are not regular files (``/dev/null``, a FIFO) are written in place,
  as pydicom does; such a write cannot be rolled back.
* On Linux the temporary file has no name until commit (``O_TMPFILE``), so a
  process killed outright (SIGKILL, a power loss) leaves nothing behind; it is
  linked under the target's name (exclusive create) or under a temporary name
  that is at once moved over the target.  Elsewhere, and on filesystems without
  ``O_TMPFILE``, the temporary file is named ``.NAME.XXXXXXXX.aiodicom-tmp``;
  :func:`remove_stale_temporary_files` (run by the bulk export on every folder it
  writes into) removes those that an earlier crash left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import secrets
import stat
from typing import Final

from .._checksum import DEFAULT_ALGORITHM, Checksum, normalize_algorithm
from .._core.rules import Chunk

__all__ = ["TEMP_SUFFIX", "LocalFile", "remove_stale_temporary_files"]

TEMP_SUFFIX: Final = ".aiodicom-tmp"
"""The suffix of temporary files not published yet (export never reads them)."""
_TEMP_NAME_MAX: Final = 64  # bytes of the target's name kept in the temp name
_TEMP_ATTEMPTS: Final = 100

_MAXSYMLINKS: Final = 40  # Linux's limit on symbolic links in one lookup
_DIR_FLAGS: Final = (
    os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_PATH", 0) | os.O_CLOEXEC
)
_TEMP_FLAGS: Final = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
)
_UNNAMED_TEMP_FILES: Final = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
"""Linux: write into an unnamed file (``O_TMPFILE``) and give it its name at commit
(``linkat`` through ``/proc/self/fd``)."""
_UNNAMED_FLAGS: Final = getattr(os, "O_TMPFILE", 0) | os.O_WRONLY | os.O_CLOEXEC
_NO_UNNAMED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL})
"""What a filesystem or kernel without ``O_TMPFILE`` answers: use a named file."""
_STALE_AFTER: Final = 3600.0
"""Seconds after which a named temporary file nobody writes to is an earlier
crash's leftover (see :func:`remove_stale_temporary_files`)."""
_NEW_FILE_MODE: Final = 0o666
"""As ``open()``: the kernel takes the umask (or default ACL) off at creation."""
_PRIVATE_MODE: Final = 0o600
"""A temporary file that will replace an existing one: private until published,
then given the old file's mode."""
_AT_EACCESS: Final = 0x200  # Linux <fcntl.h>


def _temp_prefix(name: str) -> str:
    """``.<start of name>.``, at most ``_TEMP_NAME_MAX`` *bytes* of `name`: with
    multi-byte characters a cut by characters could overflow NAME_MAX (255 bytes)."""
    if len(name) <= _TEMP_NAME_MAX and name.isascii():  # the common case: one byte each
        return f".{name}."
    kept, size = 0, 0
    for char in name:
        size += len(os.fsencode(char))
        if size > _TEMP_NAME_MAX:
            break
        kept += 1
    return f".{name[:kept]}."


def _error(code: int, path: str) -> OSError:
    """The error ``open(path)`` fails with for `code`: the same type (``OSError``
    picks the subclass from the errno), message and filename as pydicom's."""
    return OSError(code, os.strerror(code), path)


def _named(exc: OSError, path: str) -> OSError:
    """`exc` again, naming the caller's `path` instead of a file of ours."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), path)


def _split(path: str) -> tuple[str, str, bool]:
    """``(folder, last component, trailing slash)``, as the kernel splits a path."""
    stripped = path.rstrip("/")
    if not stripped:
        return "/", ".", False
    folder, name = os.path.split(stripped)
    return folder or ".", name, len(stripped) < len(path)


def _open_folder(folder: str, at: int | None, path: str) -> int:
    try:
        return os.open(folder, _DIR_FLAGS, dir_fd=at)
    except OSError as exc:
        raise _named(exc, path) from None


_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL | None:
    """The C library, for ``faccessat`` and ``renameat2``: the symbols already
    loaded into the process (instant), else found by name (which may run
    ``ldconfig``: only where the first way fails)."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:  # pragma: no cover (platforms without dlopen(NULL))
            name = ctypes.util.find_library("c")
            if name is None:
                return None
            _libc = ctypes.CDLL(name, use_errno=True)
    return _libc


def _access(folder: int, name: str, mode: int) -> int:
    """0 if this process may access `name` in `folder` for `mode` with its
    *effective* credentials (capabilities, ACLs, read-only filesystems included),
    else the errno ``open()`` would fail with."""
    libc = _c_library()
    faccessat = getattr(libc, "faccessat", None) if libc is not None else None
    if faccessat is not None:
        if faccessat(folder, os.fsencode(name), mode, _AT_EACCESS) == 0:
            return 0
        return ctypes.get_errno() or errno.EACCES
    try:
        allowed = os.access(name, mode, dir_fd=folder, effective_ids=True)
    except NotImplementedError:
        allowed = os.access(name, mode, dir_fd=folder)
    return 0 if allowed else errno.EACCES


def _folder_name(folder: int, fallback: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{folder}")
    except OSError:
        return fallback


class _Target:
    """A resolved path: an open folder, the name in it, and what is there."""

    def __init__(self, folder: int, name: str, st: os.stat_result | None) -> None:
        self.folder = folder
        self.name = name
        self.st = st

    def close(self) -> None:
        if self.folder >= 0:
            folder, self.folder = self.folder, -1
            os.close(folder)


def _locate(path: str, exist_ok: bool) -> _Target:
    """Resolve `path` as ``open(path, "wb" or "xb")`` does, creating nothing.

    The folder part is resolved by the kernel; a symbolic link at the end is
    followed (``"wb"``) or counts as existing (``"xb"``).  Raises pydicom's error
    for what ``open`` would refuse at this point, naming `path`."""
    if not path:
        raise _error(errno.ENOENT, path)
    folder_part, name, trailing = _split(path)
    folder = _open_folder(folder_part, None, path)
    try:
        hops = 0
        while True:
            if name in (".", ".."):
                raise _error(errno.EISDIR if exist_ok else errno.EEXIST, path)
            if trailing:  # O_CREAT with a trailing slash: the kernel says EISDIR
                raise _error(errno.EISDIR, path)
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            except OSError as exc:
                raise _named(exc, path) from None
            if not exist_ok:
                if st is not None:
                    raise _error(errno.EEXIST, path)
                return _Target(folder, name, None)
            if st is None or not stat.S_ISLNK(st.st_mode):
                return _Target(folder, name, st)
            hops += 1
            if hops > _MAXSYMLINKS:
                raise _error(errno.ELOOP, path)
            folder_part, name, trailing = _split(os.readlink(name, dir_fd=folder))
            linked = _open_folder(folder_part, folder, path)
            os.close(folder)
            folder = linked
    except BaseException:
        os.close(folder)
        raise


def _refusal(target: _Target, path: str) -> OSError | None:
    """What ``open(path, "wb")`` would fail with, or where the temporary file cannot
    be created; ``None`` if the write can go ahead.  Creates nothing."""
    st = target.st
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            return _error(errno.EISDIR, path)
        # pydicom opens the file for writing: mode 0444, a read-only filesystem,
        # an immutable file or a running program refuse it
        code = _access(target.folder, target.name, os.W_OK)
        if code:
            return _error(code, path)
        if not stat.S_ISREG(st.st_mode):
            return None  # written in place
        code = _access(target.folder, ".", os.W_OK | os.X_OK)
        if code:
            return _no_temp_file(code, target, path)
        if _sticky_elsewhere(target, st):
            return _not_replaceable(errno.EPERM, target, path)
        return None
    code = _access(target.folder, ".", os.W_OK | os.X_OK)
    return _error(code, path) if code else None


def _sticky_elsewhere(target: _Target, st: os.stat_result) -> bool:
    """A sticky folder (``/tmp``) lets only the owner of a file, or of the folder,
    replace it (or a process with CAP_FOWNER: root is assumed to have it)."""
    me = os.geteuid()
    if me == 0 or st.st_uid == me:
        return False
    folder = os.stat(".", dir_fd=target.folder)
    return bool(folder.st_mode & stat.S_ISVTX) and folder.st_uid != me


def _not_replaceable(code: int, target: _Target, path: str) -> OSError:
    """A writable file that this process may not replace (a sticky folder, another
    user's file): pydicom would rewrite it in place; aiodicom says why it cannot."""
    where = _folder_name(target.folder, os.path.dirname(os.path.abspath(path)))
    return OSError(
        code,
        f"cannot replace {path!r} atomically: {where!r} does not let this user "
        f"replace a file it does not own ({os.strerror(code)})",
    )


def _no_temp_file(code: int, target: _Target, path: str) -> OSError:
    """A writable file in a folder that is not: pydicom would rewrite it in place,
    aiodicom cannot publish atomically, and says so."""
    where = _folder_name(target.folder, os.path.dirname(os.path.abspath(path)))
    return OSError(
        code,
        f"cannot create a temporary file in {where!r} to publish {path!r} "
        f"atomically ({os.strerror(code)})",
    )


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
        `exist_ok` is false, it is a directory, its directory is missing, it may not
        be written), creating nothing.  The driver calls it where pydicom opens its
        file, so these errors come before errors in the dataset's encoding, and
        before anything of the dataset is encoded, as in pydicom."""
        target = _locate(self.path, exist_ok)
        try:
            refusal = _refusal(target, self.path)
        finally:
            target.close()
        if refusal is not None:
            raise refusal

    def open(self, *, exist_ok: bool) -> _InPlaceWriter | _TempFileWriter:
        path = self.path
        target = _locate(path, exist_ok)
        try:
            refusal = _refusal(target, path)
            if refusal is not None:
                raise refusal
            st = target.st
            if st is not None and not stat.S_ISREG(st.st_mode):
                target.close()
                return _InPlaceWriter(path, self.checksum)
            mode = _NEW_FILE_MODE if st is None else _PRIVATE_MODE
            fd, temp = _create_temp(target, mode, path)
        except BaseException:
            target.close()
            raise
        keep = None if st is None else stat.S_IMODE(st.st_mode)
        writer = _TempFileWriter(path, target, fd, temp, exist_ok, self.fsync, keep)
        writer.checksum = Checksum(self.checksum) if self.checksum else None
        return writer


def _create_temp(target: _Target, mode: int, path: str) -> tuple[int, str | None]:
    """An unnamed temporary file in the target's folder (``O_TMPFILE``: a process
    killed outright leaves nothing behind), or, where the filesystem or platform
    has none, ``.NAME.XXXXXXXX.aiodicom-tmp`` beside the target, exclusively."""
    if _UNNAMED_TEMP_FILES:
        try:
            return os.open(".", _UNNAMED_FLAGS, mode, dir_fd=target.folder), None
        except OSError as exc:
            if exc.errno not in _NO_UNNAMED:
                if target.st is not None and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise _no_temp_file(exc.errno, target, path) from None
                raise _named(exc, path) from None
    return _create_named_temp(target, mode, path)


def _create_named_temp(target: _Target, mode: int, path: str) -> tuple[int, str]:
    """Create ``.NAME.XXXXXXXX.aiodicom-tmp`` beside the target, exclusively."""
    prefix = _temp_prefix(target.name)
    for _ in range(_TEMP_ATTEMPTS):
        temp = f"{prefix}{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            return os.open(temp, _TEMP_FLAGS, mode, dir_fd=target.folder), temp
        except FileExistsError:
            continue
        except OSError as exc:
            if target.st is not None and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise _no_temp_file(exc.errno, target, path) from None
            raise _named(exc, path) from None
    raise _error(errno.EEXIST, path)


class _TempFileWriter:
    checksum: Checksum | None

    def __init__(
        self,
        path: str,
        target: _Target,
        fd: int,
        temp: str | None,
        exist_ok: bool,
        fsync: bool,
        mode: int | None,
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
            if self._mode is not None:  # replacing a file: keep its mode
                os.fchmod(fd, self._mode)
            if self._fsync:
                os.fsync(fd)
            published = False
            if self._temp is None:  # unnamed: give it a name while it is open
                self._temp = self._name_unnamed(fd)
                published = self._temp is None
        finally:
            os.close(fd)
        folder, name = self._target.folder, self._target.name
        if published:  # linked under its own name: nothing left to move
            self._finish(folder)
            return
        if self._exist_ok:
            assert self._temp is not None  # named, if it was not already
            try:
                os.replace(self._temp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except PermissionError as exc:  # a sticky folder, another user's file
                _unlink_quietly(folder, self._temp)
                code = exc.errno or errno.EPERM
                raise _not_replaceable(code, self._target, self._path) from None
            except OSError as exc:
                _unlink_quietly(folder, self._temp)
                raise _named(exc, self._path) from None
        elif self._temp is not None:
            try:
                _publish_exclusive(folder, self._temp, name)
            except OSError as exc:
                raise _named(exc, self._path) from None
            finally:
                _unlink_quietly(folder, self._temp)
        self._finish(folder)

    def _finish(self, folder: int) -> None:
        if self._fsync:
            _fsync_folder(folder)
        self._target.close()

    def _name_unnamed(self, fd: int) -> str | None:
        """Link the unnamed file into the folder: under the target's own name when
        creating exclusively, or when nothing was there at open (``linkat`` fails
        if the name exists: atomic, nothing left to clean up; ``None`` is
        returned); else under a temporary name that ``os.replace`` then moves over
        the target (returned).  A file that appeared since the open is replaced
        that way too."""
        folder, proc = self._target.folder, f"/proc/self/fd/{fd}"
        if not self._exist_ok or self._target.st is None:
            try:
                os.link(proc, self._target.name, dst_dir_fd=folder, follow_symlinks=True)
            except FileExistsError:
                if not self._exist_ok:
                    raise _error(errno.EEXIST, self._path) from None
            except OSError as exc:
                raise _named(exc, self._path) from None
            else:
                return None
        prefix = _temp_prefix(self._target.name)
        for _ in range(_TEMP_ATTEMPTS):
            temp = f"{prefix}{secrets.token_hex(4)}{TEMP_SUFFIX}"
            try:
                os.link(proc, temp, dst_dir_fd=folder, follow_symlinks=True)
            except FileExistsError:
                continue
            except OSError as exc:
                raise _named(exc, self._path) from None
            return temp
        raise _error(errno.EEXIST, self._path)

    def abort(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # an unnamed file is gone with its last descriptor
        if self._target.folder >= 0:
            if self._temp is not None:
                _unlink_quietly(self._target.folder, self._temp)
            self._target.close()


def remove_stale_temporary_files(folder: str, *, older_than: float = _STALE_AFTER) -> int:
    """Remove aiodicom's named temporary files in `folder` that nobody has written
    to for `older_than` seconds: leftovers of a process killed between creating
    and publishing one (where unnamed files are not available, or in the instant
    between naming one and moving it over the target).  A write in progress keeps
    its file's modification time fresh.  Returns how many were removed; errors
    (a folder that cannot be listed, a file removed meanwhile) are ignored."""
    import time

    removed = 0
    cutoff = time.time() - older_than
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue
    return removed


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


def _unlink_quietly(folder: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=folder)


def _fsync_folder(folder: int) -> None:
    fd = os.open(".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0), dir_fd=folder)
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


def _publish_exclusive(folder: int, temp: str, target: str) -> None:
    """Make `temp` appear at `target` (both in `folder`) unless `target` exists;
    atomic either way."""
    try:
        os.link(temp, target, src_dir_fd=folder, dst_dir_fd=folder)
        return
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
    _renameat2_noreplace(folder, temp, target)


def _renameat2_noreplace(folder: int, temp: str, target: str) -> None:
    libc = _c_library()
    renameat2 = getattr(libc, "renameat2", None) if libc is not None else None
    if renameat2 is None:
        raise OSError(
            errno.ENOTSUP,
            "this filesystem offers no atomic exclusive create (no hard links, "
            "no renameat2); use exist_ok=True",
            target,
        )
    if renameat2(folder, os.fsencode(temp), folder, os.fsencode(target), _RENAME_NOREPLACE):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)
