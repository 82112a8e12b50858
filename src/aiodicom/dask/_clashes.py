"""Name clashes between partitions, settled in source order once they are back.

Each partition decides the clashes among its own items in source order (the
single-machine export does), but two partitions run at the same time, so two of
their items may both have written one name: the destination then holds whichever
was written last.  Once every partition is back, the client knows what each item
asked to be named and its place in the sources ``(partition, seq)``, and decides
every claim again over all of them, in source order, as the single-machine export
would have (:class:`~aiodicom._export.claims.OrderedNames`).

Where that gives the answer the partitions gave, nothing more is done: the
common case (no clash between partitions) costs this pass over the names in
memory, no I/O.  Otherwise, for every name involved:

* the item the name belongs to in source order is exported there again (on a
  worker), overwriting what an item of this run wrote there (a name this run did
  not write keeps the export's ``exist_ok`` / ``skip_existing`` rules);
* an item that loses its name fails with
  :class:`~aiodicom.DuplicateDestinationError` (``on_conflict="fail"``) or is
  exported under the suffixed name it gets (``"suffix"``), which is also a name
  involved;
* a name this run wrote that ends up belonging to no written item (its owner
  could not be written again) is removed, so that what is there is what the
  report says.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._errors import DuplicateDestinationError, PartitionError
from .._export.claims import OrderedNames
from .._export.report import ItemResult, Status
from ._partition import Pick

__all__ = ["Claimed", "Settlement", "settle"]


@dataclass
class Claimed:
    """An item that claimed a name, as its partition reported it."""

    partition: int
    seq: int
    asked: str
    granted: str | None
    index: int
    """Where the tally keeps its result."""
    result: ItemResult


@dataclass
class Settlement:
    """What the clashes between partitions need done."""

    picks: dict[int, list[Pick]] = field(default_factory=dict)
    """By partition: items to export again, under their settled names."""
    amended: dict[int, ItemResult] = field(default_factory=dict)
    """By tally index: final results known now (the items that lose their name)."""
    exported: dict[tuple[int, int], Claimed] = field(default_factory=dict)
    """The items picked, by ``(partition, seq)``."""
    written_here: set[str] = field(default_factory=set)
    """Names involved that an item of this run wrote."""

    def results(self, found: dict[tuple[int, int], ItemResult]) -> dict[int, ItemResult]:
        """The final result of every item involved, by tally index, given the new
        results of the items exported again (`found`; a missing one failed)."""
        amended = dict(self.amended)
        for key, claimed in self.exported.items():
            result = found.get(key)
            if result is None:
                result = ItemResult(
                    claimed.result.source,
                    claimed.result.destination,
                    Status.FAILED,
                    0,
                    claimed.result.seconds,
                    PartitionError(
                        "a name clash between partitions needed this item exported "
                        "again, and that did not finish"
                    ),
                )
            amended[claimed.index] = result
        return amended

    def orphans(self, final: dict[int, ItemResult]) -> list[str]:
        """Names this run wrote that no item holds in the end (`final`: the
        results of :meth:`results`)."""
        held = {
            result.destination
            for result in final.values()
            if result.status is Status.WRITTEN and result.destination is not None
        }
        return sorted(self.written_here - held)


def settle(claims: list[Claimed], on_conflict: str, overwrite: bool) -> Settlement | None:
    """Decide every claim in source order; ``None`` if every partition's answer
    stands (no clash between partitions), else what must be done."""
    claims.sort(key=lambda claimed: (claimed.partition, claimed.seq))
    names = OrderedNames(on_conflict)
    answers = [names.take(claimed.asked) for claimed in claims]
    involved: set[str] = set()
    for claimed, answer in zip(claims, answers, strict=True):
        final = answer if isinstance(answer, str) else None
        if final != claimed.granted:
            involved.update(name for name in (final, claimed.granted) if name is not None)
    if not involved:
        return None
    settlement = Settlement()
    settlement.written_here = {
        claimed.granted
        for claimed in claims
        if claimed.granted in involved and claimed.result.status is Status.WRITTEN
    }
    for claimed, answer in zip(claims, answers, strict=True):
        if isinstance(answer, DuplicateDestinationError):
            if claimed.granted is not None:  # its partition let it write: it loses
                settlement.amended[claimed.index] = ItemResult(
                    claimed.result.source,
                    claimed.asked,
                    Status.FAILED,
                    0,
                    claimed.result.seconds,
                    answer,
                )
        elif answer in involved:  # its own name: exported (again) there
            replace = overwrite or answer in settlement.written_here
            settlement.picks.setdefault(claimed.partition, []).append(
                (claimed.seq, answer, replace)
            )
            settlement.exported[claimed.partition, claimed.seq] = claimed
    return settlement
