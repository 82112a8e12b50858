"""The settings of one export, checked once and shared by every way to run it.

:func:`aiodicom.export`, :func:`aiodicom.dask.export` and the ``aiodicom export``
command all build one :class:`ExportOptions` and hand it on; the Dask path pickles
it into every task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

from pydicom.dataset import Dataset

from .._checksum import DEFAULT_ALGORITHM, normalize_algorithm
from .naming import DEFAULT_TEMPLATE, Template

__all__ = ["ON_CONFLICT", "ExportOptions", "Transform", "check_positive"]

ON_CONFLICT: Final = ("fail", "suffix")
"""What to do with an item named like an earlier one (in source order)."""

Transform = Callable[[Dataset], "Dataset | Awaitable[Dataset | None] | None"]
"""A dataset transform: ``(Dataset) -> Dataset | None``, or a coroutine function."""


def check_positive(name: str, value: Any) -> None:
    """Raise :class:`ValueError` unless `value` is a positive ``int`` (not a ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class ExportOptions:
    """How to export: naming, concurrency, what to do with existing files.

    The parameters mean what they mean for :func:`aiodicom.export`.  Building one
    checks them (a bad template or concurrency raises here, before any work).

    Raises
    ------
    TemplateError
        If `template` is unusable.
    ValueError
        If `concurrency` or `workers` is not a positive integer, `checksum` is
        unknown, `verify` is asked for without a checksum, or `on_conflict` is
        neither ``"fail"`` nor ``"suffix"``.
    TypeError
        If `transform` is not callable, or `include` / `exclude` are not strings.
    """

    # one shared default: a Template never changes once built
    template: Template = Template(DEFAULT_TEMPLATE)  # noqa: RUF009
    concurrency: int = 16
    exist_ok: bool = True
    skip_existing: bool = False
    storage_options: dict[str, Any] | None = None
    source_storage_options: dict[str, Any] | None = None
    upload_options: dict[str, Any] | None = None
    force: bool = False
    enforce_file_format: bool = False
    dry_run: bool = False
    fail_fast: bool = False
    workers: int | None = None
    transform: Transform | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    on_conflict: Literal["fail", "suffix"] = "fail"
    checksum: str | None = DEFAULT_ALGORITHM
    verify: bool = False

    def __post_init__(self) -> None:
        check_positive("concurrency", self.concurrency)
        if self.workers is not None:
            check_positive("workers", self.workers)
        if self.on_conflict not in ON_CONFLICT:
            raise ValueError(f"on_conflict must be 'fail' or 'suffix', not {self.on_conflict!r}")
        if self.transform is not None and not callable(self.transform):
            raise TypeError(f"transform must be a callable, not {type(self.transform).__name__}")
        for name in ("include", "exclude"):
            object.__setattr__(self, name, _patterns(name, getattr(self, name)))
        object.__setattr__(self, "checksum", normalize_algorithm(self.checksum))
        if self.verify and self.checksum is None:
            raise ValueError("verify=True needs a checksum (not checksum=None)")
        if self.upload_options and "checksum" in self.upload_options:
            raise ValueError("give the checksum as checksum=, not in upload_options")
        template: str | Callable[[Dataset], Any] | Template = self.template
        if not isinstance(template, Template):
            object.__setattr__(self, "template", Template(template))
        if self.upload_options is not None and not isinstance(self.upload_options, dict):
            object.__setattr__(self, "upload_options", dict(self.upload_options))

    @property
    def overwrite(self) -> bool:
        """What each write gets as ``exist_ok``: skipping existing items means
        never overwriting them (the sink's atomic exclusive create decides)."""
        return self.exist_ok and not self.skip_existing

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> ExportOptions:
        """Build from the keyword arguments of :func:`aiodicom.export` (or of
        :func:`aiodicom.dask.export`): those named like a field are taken, the
        rest (progress, client...) are the caller's."""
        names = {item.name for item in fields(cls)}
        return cls(**{name: value for name, value in arguments.items() if name in names})


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """`value` (``None``, a pattern or an iterable of them) as a tuple of patterns."""
    if value is None:
        return ()
    items: Iterable[Any] = (value,) if isinstance(value, str) else value
    patterns = tuple(items)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"{name} patterns must be non-empty strings, not {pattern!r}")
    return patterns
