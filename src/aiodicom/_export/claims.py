"""The duplicate-name check, in source order: the first item in source order wins.

Items are read and named concurrently (in threads, or in worker processes), so
two items with one name would otherwise race for it.  Each item carries its
*sequence number*, its place in the order the sources were listed; an item's
claim on a name is decided only once every earlier item has either claimed its
own name or finished without one (it failed to read, or was skipped).  So the
same sources give the same names, whatever the timing: the earliest item gets
the name, a later one fails with :class:`~aiodicom.DuplicateDestinationError`
(``on_conflict="fail"``) or gets ``name-1.dcm``, ``name-2.dcm``... in source
order (``on_conflict="suffix"``).

:class:`OrderedNames` is the decision, without I/O (the parent process of
worker processes drives it from their messages); :class:`NameGate` lets the
tasks of one event loop wait for their turn.
"""

from __future__ import annotations

import errno
import os
from typing import Final

import anyio

from .._errors import DuplicateDestinationError

__all__ = ["FIRST", "Grant", "NameGate", "OrderedNames", "RecordedNames", "suffixed"]

_TAKEN: Final = "an earlier item of this export (in source order) has this name"

FIRST: Final = 1
"""The sequence number of the first item."""

Grant = tuple[int, "str | DuplicateDestinationError"]
"""``(seq, name)``: the item may write `name`; or ``(seq, error)``: it may not."""


def suffixed(name: str, number: int) -> str:
    """`name` with ``-number`` before its extension: ``a/x.dcm`` -> ``a/x-1.dcm``."""
    cut = max(name.rfind("/"), name.rfind(os.sep)) + 1
    head, tail = name[:cut], name[cut:]
    stem, extension = os.path.splitext(tail)
    return f"{head}{stem}-{number}{extension}"


class OrderedNames:
    """Names granted in source order (no I/O, no waiting: it says who may go).

    Every sequence number from :data:`FIRST` on must come exactly once, through
    :meth:`ask` (the item was named) or :meth:`resolve` (it finished without a
    name); each returns the claims that can now be decided.
    """

    def __init__(self, on_conflict: str = "fail") -> None:
        self.on_conflict = on_conflict
        self._taken: set[str] = set()
        self._suffixes: dict[str, int] = {}
        self._low = FIRST  # every item before this one is decided
        self._resolved: set[int] = set()
        self._asked: dict[int, str] = {}

    @property
    def low(self) -> int:
        """The first item not decided yet."""
        return self._low

    @property
    def waiting(self) -> bool:
        """Whether some item's claim waits for an earlier item."""
        return bool(self._asked)

    def ask(self, seq: int, name: str) -> list[Grant]:
        """Item `seq` wants `name`; return the claims decided now."""
        self._asked[seq] = name
        return self._advance()

    def resolve(self, seq: int) -> list[Grant]:
        """Item `seq` finished without a name (idempotent); return the claims
        decided now."""
        if seq >= self._low and seq not in self._asked:
            self._resolved.add(seq)
        return self._advance()

    def take(self, name: str) -> str | DuplicateDestinationError:
        """Decide a claim on `name` now: for a caller that asks in source order
        itself (a Dask export's client, settling the claims of its partitions)."""
        return self._decide(name)

    def _advance(self) -> list[Grant]:
        grants: list[Grant] = []
        while True:
            low = self._low
            if low in self._resolved:
                self._resolved.discard(low)
            elif low in self._asked:
                grants.append((low, self._decide(self._asked.pop(low))))
            else:
                return grants
            self._low = low + 1

    def _decide(self, name: str) -> str | DuplicateDestinationError:
        taken = self._taken
        if name not in taken:
            taken.add(name)
            return name
        if self.on_conflict != "suffix":
            return DuplicateDestinationError(errno.EEXIST, _TAKEN, name)
        number = self._suffixes.get(name, 0)
        while True:
            number += 1
            candidate = suffixed(name, number)
            if candidate not in taken:
                break
        self._suffixes[name] = number
        taken.add(candidate)
        return candidate


class RecordedNames(OrderedNames):
    """:class:`OrderedNames` that remembers each item's claim: the name it asked
    for (`asked`) and what it was granted (`granted`: the name, or the error).

    A Dask partition runs with one, so that the client can decide the name
    clashes between partitions in source order afterwards.
    """

    def __init__(self, on_conflict: str = "fail") -> None:
        super().__init__(on_conflict)
        self.asked: dict[int, str] = {}
        self.granted: dict[int, str | DuplicateDestinationError] = {}

    def ask(self, seq: int, name: str) -> list[Grant]:
        self.asked[seq] = name
        return self._record(super().ask(seq, name))

    def resolve(self, seq: int) -> list[Grant]:
        return self._record(super().resolve(seq))

    def _record(self, grants: list[Grant]) -> list[Grant]:
        for seq, answer in grants:
            self.granted[seq] = answer
        return grants


class NameGate:
    """:class:`OrderedNames` for the tasks of one event loop: :meth:`claim`
    waits until the item's turn comes."""

    def __init__(self, names: OrderedNames) -> None:
        self.names = names
        self._events: dict[int, anyio.Event] = {}
        self._answers: dict[int, str | DuplicateDestinationError] = {}

    async def claim(self, seq: int, name: str) -> str:
        """Return the name item `seq` writes (`name`, or a suffixed one).

        Raises
        ------
        DuplicateDestinationError
            If an earlier item has `name` and conflicts fail.
        """
        self._deliver(self.names.ask(seq, name))
        try:
            if seq not in self._answers:
                event = self._events[seq] = anyio.Event()
                await event.wait()
            answer = self._answers[seq]
        finally:
            self._events.pop(seq, None)
            self._answers.pop(seq, None)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def claim_now(self, seq: int, name: str) -> str | DuplicateDestinationError:
        """The answer to item `seq`'s claim on `name`, for a caller whose every
        earlier item is decided already (an export of one item at a time), from
        any thread while the event loop does not use the gate: no waiting, and
        no other item's claim is decided by it."""
        if seq != self.names.low or self.names.waiting:
            raise RuntimeError(f"item {seq} claims a name before an earlier item was decided")
        ((_, answer),) = self.names.ask(seq, name)
        return answer

    def resolve(self, seq: int) -> None:
        """Item `seq` finished without a name."""
        self._deliver(self.names.resolve(seq))

    def _deliver(self, grants: list[Grant]) -> None:
        for seq, answer in grants:
            self._answers[seq] = answer
            event = self._events.get(seq)
            if event is not None:
                event.set()
