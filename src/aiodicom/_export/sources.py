"""Turning what the caller passed as ``sources`` into a lazy stream of items.

Expansion (walking folders, globbing, listing remote prefixes, pulling from a
caller's generator) runs in worker threads, a batch at a time; datasets are read
later, by the export workers, one per worker.  Nothing here holds more than one
batch of names, so memory does not grow with the number of items.

What a folder, glob or prefix yields is chosen by a :class:`Selection`: the
``include`` / ``exclude`` patterns, the destination (never searched: an export
into a folder inside its source does not read its own output back), and hidden
files and folders (reported as skipped, not read).  When an item is read, files
that are not DICOM and DICOMDIRs are recognised and skipped
(:class:`~aiodicom.SourceSkipped`).
"""

from __future__ import annotations

import fnmatch
import glob
import io
import os
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, Literal

import anyio.to_thread
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .._errors import SourceSkipped
from ..sinks import is_url
from ..sinks.local import TEMP_SUFFIX

__all__ = [
    "Selection",
    "Source",
    "count_local",
    "in_process_memory",
    "iter_sources",
    "looks_like_dicom",
    "read_source",
    "source_name",
]

_BATCH: Final = 256
_END: Final = object()
_HEAD: Final = 132
"""Bytes that tell a DICOM file: a 128-byte preamble and ``DICM``."""
_FIRST_GROUPS: Final = frozenset({b"\x02\x00", b"\x04\x00", b"\x08\x00", b"\x00\x08"})
"""How a data set without a preamble starts: its first element is in group 0002
(file meta), 0004 (DICOMDIR) or 0008 (every instance has SOP Class UID),
little or big endian."""
MEDIA_STORAGE_DIRECTORY: Final = "1.2.840.10008.1.3.10"
"""The Media Storage SOP Class of a DICOMDIR (a file-set directory)."""
_DIRECTORY_CLASS: Final = MEDIA_STORAGE_DIRECTORY.encode()
_DIRECTORY_RECORDS: Final = 0x00041220  # (0004,1220) Directory Record Sequence
_MEDIA_STORAGE_SOP_CLASS: Final = 0x00020002

Kind = Literal["dataset", "path", "url", "file", "error", "skipped"]


@dataclass(frozen=True)
class Selection:
    """Which files a folder, a glob or a URL prefix yields.

    Attributes
    ----------
    include, exclude : tuple of str
        Glob patterns (:mod:`fnmatch`: ``*``, ``?``, ``[...]``).  A pattern without
        ``/`` is matched against the file name; one with ``/`` against the path
        relative to the folder, glob or prefix given as the source (``/``
        separators; ``*`` matches across them).  With `include`, only files that
        match one of them are taken; files that match an `exclude` pattern are
        left out.  Left-out files are not listed at all.
    avoid : tuple of str
        Local folders (resolved paths) and URL prefixes never searched: the
        export's destination.
    """

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    avoid: tuple[str, ...] = ()

    def wants(self, relative: str) -> bool:
        """Whether a file at `relative` (``/``-separated) is taken."""
        name = relative.rsplit("/", 1)[-1]
        if self.include and not any(_matches(p, relative, name) for p in self.include):
            return False
        return not any(_matches(p, relative, name) for p in self.exclude)

    def avoids_folder(self, path: str) -> bool:
        """Whether the local folder `path` is (inside) one never to search."""
        if not self.avoid:
            return False
        real = os.path.realpath(path)
        return any(
            os.path.commonpath([real, avoided]) == avoided
            for avoided in self.avoid
            if not is_url(avoided)
        )

    def avoids_url(self, url: str) -> bool:
        """Whether `url` is (under) a URL prefix never to list."""
        url = _canonical(url)
        return any(
            url == avoided or url.startswith(avoided + "/")
            for avoided in map(_canonical, self.avoid)
            if is_url(avoided)
        )


_EVERYTHING: Final = Selection()


def _canonical(url: str) -> str:
    """`url` without the slashes that do not change what it names
    (``memory:///a/b/`` is ``memory://a/b``)."""
    head, _, path = url.partition("://")
    return f"{head}://{path.strip('/')}"


def _matches(pattern: str, relative: str, name: str) -> bool:
    return fnmatch.fnmatchcase(relative if "/" in pattern else name, pattern)


def _hidden(kind: str) -> SourceSkipped:
    return SourceSkipped(f"hidden {kind} (its name starts with '.')", "hidden")


@dataclass(frozen=True, slots=True)
class Source:
    """One item to export: where it comes from, and how to read it."""

    label: str
    kind: Kind
    value: Any


def in_process_memory(url: str) -> bool:
    """Whether `url` names something in this process's memory (``memory://``),
    which another process cannot reach."""
    return is_url(url) and "memory" in url.partition("://")[0].split("::")


def _label_dataset(dataset: Dataset) -> str:
    filename = getattr(dataset, "filename", None)
    if isinstance(filename, str) and filename:
        return filename
    uid = dataset.get("SOPInstanceUID", None)
    return f"<Dataset {uid}>" if uid else f"<Dataset at {id(dataset):#x}>"


def is_single(obj: Any) -> bool:
    """A source that is one thing (not an iterable of sources)."""
    return isinstance(obj, Dataset | str | bytes | os.PathLike) or callable(
        getattr(obj, "read", None)
    )


async def iter_sources(
    sources: Any,
    storage_options: dict[str, Any] | None,
    selection: Selection = _EVERYTHING,
) -> AsyncGenerator[Source, None]:
    """Yield a :class:`Source` per item in `sources`, lazily and in order.

    Problems with one source (a folder that cannot be listed, an object of an
    unsupported type) are yielded as ``kind="error"`` items so they are reported
    with the rest; an iterable that raises ends the stream the same way.  Hidden
    files and folders met in a folder are yielded as ``kind="skipped"`` items.
    """
    if is_single(sources):
        async for item in _expand(sources, storage_options, selection):
            yield item
        return
    if isinstance(sources, AsyncIterable):
        iterator = aiter(sources)
        while True:
            try:
                obj = await anext(iterator)
            except StopAsyncIteration:
                return
            except Exception as exc:
                yield Source("<sources>", "error", exc)
                return
            async for item in iter_sources(obj, storage_options, selection):
                yield item
        return
    if isinstance(sources, list | tuple):
        # A list of plain file paths (what a caller or a shell glob hands over)
        # is checked a batch at a time in one worker thread, not one hop a path.
        index = 0
        while index < len(sources):
            files = await anyio.to_thread.run_sync(
                _plain_files, sources, index, abandon_on_cancel=True
            )
            for item in files:
                yield item
            index += len(files)
            if index < len(sources) and len(files) < _BATCH:
                async for item in iter_sources(sources[index], storage_options, selection):
                    yield item
                index += 1
        return
    if isinstance(sources, Iterable):
        in_memory = isinstance(sources, set | frozenset)
        sync_iterator = iter(sources)
        while True:
            try:
                obj = (
                    next(sync_iterator, _END)
                    if in_memory
                    else await anyio.to_thread.run_sync(
                        next, sync_iterator, _END, abandon_on_cancel=True
                    )
                )
            except Exception as exc:
                yield Source("<sources>", "error", exc)
                return
            if obj is _END:
                return
            async for item in iter_sources(obj, storage_options, selection):
                yield item
        return
    yield Source(
        repr(sources),
        "error",
        TypeError(
            "a source must be a Dataset, a path, a folder, an fsspec URL or glob, a "
            f"binary file object, or an iterable of these; not {type(sources).__name__}"
        ),
    )


async def _expand(
    obj: Any, storage_options: dict[str, Any] | None, selection: Selection
) -> AsyncGenerator[Source, None]:
    if isinstance(obj, Dataset):
        yield Source(_label_dataset(obj), "dataset", obj)
        return
    if not isinstance(obj, str | bytes | os.PathLike):
        yield Source(_label_file(obj), "file", obj)
        return
    path = os.fsdecode(os.fspath(obj))
    if is_url(path) and not path.startswith("file://"):
        names: Iterator[Source] = _list_url(path, storage_options, selection)
    else:
        names = _list_local(path.removeprefix("file://"), selection)
    while True:
        batch = await anyio.to_thread.run_sync(_take, names, abandon_on_cancel=True)
        for item in batch:
            yield item
        if len(batch) < _BATCH:
            return


def _plain_files(sources: list[Any] | tuple[Any, ...], start: int) -> list[Source]:
    """Sources from `start` on that are paths of existing regular files (not
    folders, globs or URLs), up to a batch; stops at the first that is not."""
    out: list[Source] = []
    for obj in sources[start : start + _BATCH]:
        if not isinstance(obj, str | bytes | os.PathLike):
            break
        path = os.fsdecode(os.fspath(obj))
        if is_url(path) or not os.path.isfile(path):
            break
        out.append(Source(path, "path", path))
    return out


def _take(items: Iterator[Source]) -> list[Source]:
    """Up to a batch of `items`; a failure becomes the last (error) item."""
    out: list[Source] = []
    try:
        out.extend(islice(items, _BATCH))
    except Exception as exc:
        out.append(Source(getattr(exc, "filename", None) or "<listing>", "error", exc))
    return out


def _label_file(obj: Any) -> str:
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) else f"<{type(obj).__name__} at {id(obj):#x}>"


def _list_local(path: str, selection: Selection = _EVERYTHING) -> Iterator[Source]:
    if os.path.isdir(path):
        yield from _walk(path, selection)
    elif not os.path.lexists(path) and glob.has_magic(path):
        base = _glob_base(path)
        for match in sorted(glob.glob(path, recursive=True)):
            if selection.avoids_folder(match):
                continue
            if os.path.isdir(match):
                yield from _walk(match, selection)
            elif not match.endswith(TEMP_SUFFIX) and selection.wants(_relative(match, base)):
                yield Source(match, "path", match)
    else:
        yield Source(path, "path", path)  # named explicitly: always taken


def _glob_base(pattern: str) -> str:
    """The folder a glob's matches are relative to: its part before any magic."""
    parts = pattern.split(os.sep)
    base = os.sep.join(parts[: _first_magic(parts)])
    return base or (os.sep if pattern.startswith(os.sep) else ".")


def _relative(path: str, base: str) -> str:
    return os.path.relpath(path, base).replace(os.sep, "/")


def _walk(top: str, selection: Selection = _EVERYTHING) -> Iterator[Source]:
    errors: list[OSError] = []
    if selection.avoids_folder(top):
        return
    picky = bool(selection.include or selection.exclude)  # else every file is wanted
    for folder, subfolders, files in os.walk(top, onerror=errors.append):
        for error in errors:
            yield Source(error.filename or top, "error", error)
        errors.clear()
        kept = []
        for name in sorted(subfolders):
            full = os.path.join(folder, name)
            if selection.avoids_folder(full):
                continue  # the destination: never read our own output back
            if name.startswith("."):
                yield Source(full, "skipped", _hidden("folder, not searched"))
                continue
            kept.append(name)
        subfolders[:] = kept
        for name in sorted(files):
            if name.endswith(TEMP_SUFFIX):
                continue
            full = os.path.join(folder, name)
            if picky and not selection.wants(_relative(full, top)):
                continue
            if name.startswith("."):
                yield Source(full, "skipped", _hidden("file"))
            else:
                yield Source(full, "path", full)
    for error in errors:
        yield Source(error.filename or top, "error", error)


def _list_url(
    url: str, storage_options: dict[str, Any] | None, selection: Selection = _EVERYTHING
) -> Iterator[Source]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **(storage_options or {}))

    def items(names: Iterable[str], base: str) -> Iterator[Source]:
        for name in names:
            full = fs.unstrip_protocol(name)
            if selection.avoids_url(full):
                continue
            relative = name[len(base) :].lstrip("/") if name.startswith(base) else name
            if not selection.wants(relative):
                continue
            if any(part.startswith(".") for part in relative.split("/")):
                yield Source(full, "skipped", _hidden("object"))
            else:
                yield Source(full, "url", (fs, name))

    if glob.has_magic(path):
        parts = path.split("/")
        base = "/".join(parts[: _first_magic(parts)])
        for name, info in sorted(fs.glob(path, detail=True).items()):
            if info.get("type") == "directory":
                yield from items(sorted(fs.find(name)), base)
            else:
                yield from items([name], base)
    elif fs.isdir(path):
        yield from items(sorted(fs.find(path)), path.rstrip("/"))
    else:
        yield Source(fs.unstrip_protocol(path), "url", (fs, path))  # named explicitly


def _first_magic(parts: list[str]) -> int:
    return next(i for i, part in enumerate(parts) if glob.has_magic(part))


def looks_like_dicom(head: bytes) -> bool:
    """Whether a file starting with `head` (its first 132 bytes) may be DICOM: it
    has the ``DICM`` prefix after its preamble, or starts like a data set."""
    return head[128:_HEAD] == b"DICM" or (len(head) >= 8 and head[:2] in _FIRST_GROUPS)


def _not_dicom() -> SourceSkipped:
    return SourceSkipped(
        "not a DICOM file: no 'DICM' prefix after a 128-byte preamble, and it does "
        "not start like a DICOM data set",
        "not-dicom",
    )


def _head_of_file(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(_HEAD)


def _head_of_stream(stream: Any) -> bytes | None:
    """The first bytes of a file object, which is left where it was; ``None`` if
    it cannot seek back."""
    try:
        position = stream.tell()
        head = stream.read(_HEAD)
        stream.seek(position)
    except (OSError, AttributeError, ValueError):
        return None
    return bytes(head) if isinstance(head, bytes | bytearray) else None


def read_source(source: Source, *, force: bool, defer_size: int | None = None) -> Dataset:
    """Read the dataset of `source` (in a worker thread: this blocks).

    Local files are read with pydicom, deferring values larger than `defer_size`
    if given; remote objects are fetched whole, then parsed.

    Raises
    ------
    SourceSkipped
        If the source is not a DICOM instance: a hidden file met in a folder, a
        file that is not DICOM (with `force` too: one that neither has the
        ``DICM`` prefix nor starts like a data set), or a DICOMDIR.
    """
    kind, value = source.kind, source.value
    if kind in ("error", "skipped"):
        raise value
    if kind == "dataset":
        dataset: Dataset = value
    elif kind == "path":
        dataset = _read_checked(
            lambda: dcmread(value, force=force, defer_size=defer_size),
            lambda: _head_of_file(value),
            force,
        )
    elif kind == "url":
        fs, path = value
        data = fs.cat_file(path)
        dataset = _read_checked(
            lambda: dcmread(io.BytesIO(data), force=force), lambda: data[:_HEAD], force
        )
    else:
        dataset = _read_checked(
            lambda: dcmread(value, force=force), lambda: _head_of_stream(value), force
        )
    if _is_dicomdir(dataset):
        raise SourceSkipped(
            "a DICOMDIR (a file-set directory that indexes other files), not an "
            "instance to export",
            "dicomdir",
        )
    return dataset


def _read_checked(read: Any, head: Any, force: bool) -> Dataset:
    """``read()``, unless the source is not DICOM (then :class:`SourceSkipped`).

    Without `force`, pydicom reads only files with the ``DICM`` prefix; a file
    it refuses is skipped if it does not look like DICOM, and fails (pydicom's
    error) if it does: a data set without a preamble, which ``force`` reads.  With
    `force`, pydicom would read anything, so files are looked at first.
    """
    if force:
        start = head()
        if start is not None and not looks_like_dicom(start):
            raise _not_dicom()
        result: Dataset = read()
        return result
    try:
        result = read()
    except InvalidDicomError:
        start = head()
        if start is not None and not looks_like_dicom(start):
            raise _not_dicom() from None
        raise
    return result


def _is_dicomdir(dataset: Dataset) -> bool:
    if _DIRECTORY_RECORDS in dataset._dict:  # "DirectoryRecordSequence" in dataset
        return True
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        return False
    raw = getattr(meta, "_dict", {}).get(_MEDIA_STORAGE_SOP_CLASS)
    if (
        type(raw) is RawDataElement
        and isinstance(raw.value, bytes)
        and _DIRECTORY_CLASS not in raw.value
    ):
        return False  # no need to convert it: it cannot be that UID
    return bool(meta.get("MediaStorageSOPClassUID", None) == MEDIA_STORAGE_DIRECTORY)


def source_name(source: Source) -> str | None:
    """The file name of `source` (for the ``{source_name}`` template field), or
    ``None`` if it has none (a dataset built in memory, an anonymous stream)."""
    kind, value = source.kind, source.value
    if kind == "path":
        return os.path.basename(value) or None
    if kind == "url":
        return source.label.rstrip("/").rsplit("/", 1)[-1] or None
    name = getattr(value, "filename" if kind == "dataset" else "name", None)
    return (os.path.basename(name) or None) if isinstance(name, str) else None


def count_local(sources: list[str], selection: Selection = _EVERYTHING) -> int | None:
    """How many items the local sources hold (for the ETA): files and the hidden
    items reported as skipped, as :func:`iter_sources` yields them; ``None`` with
    URLs."""
    total = 0
    for source in sources:
        if is_url(source) and not source.startswith("file://"):
            return None
        total += sum(1 for _ in _list_local(source.removeprefix("file://"), selection))
    return total
