"""The client side of :func:`aiodicom.dask.export`: sources into partitions.

Paths, folders, globs and URL prefixes are expanded here, on the client, into
one *reference* per item (an absolute path or a full URL string), exactly as
:func:`aiodicom.export` would expand them; nothing is read.  Datasets given in
memory travel as they are (pickled).  A :class:`dask.bag.Bag` is not expanded:
each of its partitions becomes one task, and its items are produced on the
workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from dask.bag import Bag

from .._errors import SourceSkipped
from .._export.report import ItemResult, Status
from .._export.sources import Selection, iter_sources

__all__ = ["Partition", "Plan", "plan"]


@dataclass
class Partition:
    """Items exported by one Dask task.

    `labels` name the items for the report if the task never finishes; for a
    partition of a bag they are unknown (``None``) and `name` stands for them.
    """

    index: int
    refs: Any
    labels: list[str] | None
    name: str

    def unfinished(self, error: BaseException) -> list[ItemResult]:
        """Failed results for the items of this partition, which did not finish."""
        labels = self.labels if self.labels is not None else [self.name]
        return [ItemResult(label, None, Status.FAILED, 0, 0.0, error) for label in labels]


@dataclass
class Plan:
    """The partitions to run, and the items that failed before any was made."""

    partitions: list[Partition]
    rejected: list[ItemResult] = field(default_factory=list)
    total: int | None = None


def plan(
    sources: Any,
    partition_size: int,
    storage_options: dict[str, Any] | None,
    selection: Selection | None = None,
) -> Plan:
    """Split `sources` into partitions of at most `partition_size` items
    (folders, globs and prefixes searched as `selection` says)."""
    if isinstance(sources, Bag):
        return _plan_bag(sources)
    refs: list[Any] = []
    labels: list[str] = []
    rejected: list[ItemResult] = []
    for label, ref, error in _references(sources, storage_options, selection):
        if isinstance(error, SourceSkipped):
            rejected.append(ItemResult(label, None, Status.SKIPPED, 0, 0.0, error))
        elif error is not None:
            rejected.append(ItemResult(label, None, Status.FAILED, 0, 0.0, error))
        else:
            refs.append(ref)
            labels.append(label)
    partitions = [
        Partition(
            number,
            refs[start : start + partition_size],
            labels[start : start + partition_size],
            f"<partition {number}>",
        )
        for number, start in enumerate(range(0, len(refs), partition_size))
    ]
    return Plan(partitions, rejected, len(refs) + len(rejected))


def _plan_bag(bag: Any) -> Plan:
    parts = bag.to_delayed(optimize_graph=True)
    return Plan(
        [
            Partition(number, part, None, f"<partition {number} of bag {bag.name}>")
            for number, part in enumerate(parts)
        ]
    )


def _references(
    sources: Any, storage_options: dict[str, Any] | None, selection: Selection | None
) -> Iterator[tuple[str, Any, BaseException | None]]:
    """``(label, reference, None)`` per item, or ``(label, None, error)`` (a
    :class:`~aiodicom.SourceSkipped` error for a skipped item)."""

    async def expand() -> list[tuple[str, Any, BaseException | None]]:
        out: list[tuple[str, Any, BaseException | None]] = []
        async for source in iter_sources(sources, storage_options, selection or Selection()):
            if source.kind == "path":
                out.append((source.value, _PATH, None))
            elif source.kind == "url":
                out.append((source.label, source.label, None))
            elif source.kind == "dataset":
                out.append((source.label, source.value, None))
            elif source.kind == "file":
                out.append((source.label, None, TypeError(_FILE_OBJECT)))
            else:
                out.append((source.label, None, source.value))
        return out

    for label, ref, error in anyio.run(expand):
        if ref is _PATH:
            path = os.path.abspath(label)  # workers have another working directory
            yield path, path, None
        else:
            yield label, ref, error


_PATH = object()
_FILE_OBJECT = "a file object cannot be sent to Dask workers: pass its path or URL instead"
