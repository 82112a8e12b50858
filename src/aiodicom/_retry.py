"""The one retry policy: exponential backoff with jitter, a cap and an overall deadline.

Used by the driver (whole-object retries after a
:class:`~aiodicom.RetryableError`) and by the object-store uploader (retries of
one request after a transient error).  Each keeps its own loop, because one sleeps
with anyio and the other on the store's asyncio loop, but both ask this policy
whether to go on and how long to wait.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Parameters
    ----------
    retries : int
        Retries after the first attempt (0: never retry).
    first : float
        Seconds before the first retry (before jitter).
    maximum : float
        The longest wait between two attempts (before jitter).
    deadline : float or None
        Seconds after :meth:`start` past which no retry begins, however many are
        left.  ``None``: no deadline.
    """

    retries: int
    first: float = 0.2
    maximum: float = 10.0
    deadline: float | None = 120.0

    def start(self) -> _Attempts:
        """Begin counting attempts (call once per operation)."""
        return _Attempts(self)


@dataclass
class _Attempts:
    policy: RetryPolicy
    failures: int = 0
    started: float = field(default_factory=time.monotonic)

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """After a failure: seconds to wait before trying again, or ``None`` to
        give up.  `retry_after` is a server's own request (``Retry-After``),
        honoured within the deadline."""
        policy = self.policy
        if self.failures >= policy.retries:
            return None
        backoff: float = min(policy.maximum, policy.first * 2.0**self.failures)
        delay = backoff * (0.5 + random.random())  # jitter: 0.5x to 1.5x
        if retry_after is not None:
            delay = max(delay, retry_after)
        late = policy.deadline is not None and (
            time.monotonic() - self.started + delay > policy.deadline
        )
        if late:
            return None
        self.failures += 1
        return delay

    @property
    def number(self) -> int:
        """Retries granted so far."""
        return self.failures
