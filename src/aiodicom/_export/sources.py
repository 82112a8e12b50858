"""Turning what the caller passed as ``sources`` into a lazy stream of items.

Expansion (walking folders, globbing, listing remote prefixes, pulling from a
caller's generator) runs in worker threads, a batch at a time; datasets are read
later, by the export workers, one per worker.  Nothing here holds more than one
batch of names, so memory does not grow with the number of items.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final, Literal

import anyio.to_thread
from pydicom import dcmread
from pydicom.dataset import Dataset

from ..sinks import is_url
from ..sinks.local import TEMP_SUFFIX

__all__ = ["Source", "count_local", "in_process_memory", "iter_sources", "read_source"]

_BATCH: Final = 256
_END: Final = object()

Kind = Literal["dataset", "path", "url", "file", "error"]


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


def _is_single(obj: Any) -> bool:
    """A source that is one thing (not an iterable of sources)."""
    return isinstance(obj, Dataset | str | bytes | os.PathLike) or callable(
        getattr(obj, "read", None)
    )


async def iter_sources(
    sources: Any, storage_options: dict[str, Any] | None
) -> AsyncGenerator[Source, None]:
    """Yield a :class:`Source` per item in `sources`, lazily and in order.

    Problems with one source (a folder that cannot be listed, an object of an
    unsupported type) are yielded as ``kind="error"`` items so they are reported
    with the rest; an iterable that raises ends the stream the same way.
    """
    if _is_single(sources):
        async for item in _expand(sources, storage_options):
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
            async for item in iter_sources(obj, storage_options):
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
                async for item in iter_sources(sources[index], storage_options):
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
            async for item in iter_sources(obj, storage_options):
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
    obj: Any, storage_options: dict[str, Any] | None
) -> AsyncGenerator[Source, None]:
    if isinstance(obj, Dataset):
        yield Source(_label_dataset(obj), "dataset", obj)
        return
    if not isinstance(obj, str | bytes | os.PathLike):
        yield Source(_label_file(obj), "file", obj)
        return
    path = os.fsdecode(os.fspath(obj))
    if is_url(path) and not path.startswith("file://"):
        names: Iterator[Source] = _list_url(path, storage_options)
    else:
        names = _list_local(path.removeprefix("file://"))
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


def _list_local(path: str) -> Iterator[Source]:
    if os.path.isdir(path):
        yield from _walk(path)
    elif not os.path.lexists(path) and glob.has_magic(path):
        for match in sorted(glob.glob(path, recursive=True)):
            if os.path.isdir(match):
                yield from _walk(match)
            else:
                yield Source(match, "path", match)
    else:
        yield Source(path, "path", path)


def _walk(top: str) -> Iterator[Source]:
    errors: list[OSError] = []
    for folder, subfolders, files in os.walk(top, onerror=errors.append):
        subfolders.sort()
        for error in errors:
            yield Source(error.filename or top, "error", error)
        errors.clear()
        for name in sorted(files):
            if not name.endswith(TEMP_SUFFIX):
                full = os.path.join(folder, name)
                yield Source(full, "path", full)
    for error in errors:
        yield Source(error.filename or top, "error", error)


def _list_url(url: str, storage_options: dict[str, Any] | None) -> Iterator[Source]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(url, **(storage_options or {}))

    def item(name: str) -> Source:
        full = fs.unstrip_protocol(name)
        return Source(full, "url", (fs, name))

    if glob.has_magic(path):
        for name, info in sorted(fs.glob(path, detail=True).items()):
            if info.get("type") == "directory":
                yield from map(item, sorted(fs.find(name)))
            else:
                yield item(name)
    elif fs.isdir(path):
        yield from map(item, sorted(fs.find(path)))
    else:
        yield item(path)


def read_source(source: Source, *, force: bool, defer_size: int | None = None) -> Dataset:
    """Read the dataset of `source` (in a worker thread: this blocks).

    Local files are read with pydicom, deferring values larger than `defer_size`
    if given; remote objects are fetched whole, then parsed.
    """
    kind, value = source.kind, source.value
    if kind == "dataset":
        return value  # type: ignore[no-any-return]
    if kind == "error":
        raise value
    if kind == "path":
        return dcmread(value, force=force, defer_size=defer_size)
    if kind == "url":
        fs, path = value
        return dcmread(io.BytesIO(fs.cat_file(path)), force=force)
    return dcmread(value, force=force)


def count_local(sources: list[str]) -> int | None:
    """How many files the local sources hold (for the ETA); ``None`` with URLs."""
    total = 0
    for source in sources:
        if is_url(source) and not source.startswith("file://"):
            return None
        path = source.removeprefix("file://")
        matches = (
            glob.glob(path, recursive=True)
            if not os.path.lexists(path) and glob.has_magic(path)
            else [path]
        )
        for match in matches:
            if os.path.isdir(match):
                for _, _, files in os.walk(match):
                    total += sum(1 for name in files if not name.endswith(TEMP_SUFFIX))
            else:
                total += 1
    return total
