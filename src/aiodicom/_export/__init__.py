"""Bulk export: many datasets to a folder, an object-store prefix or any sink.

``options`` (the checked settings), ``run`` (the export itself), ``sources``
(what to read), ``naming`` (the template), ``destination`` (the root and its
sinks), ``report`` (results, the tally and the duplicate-name check).  The
public names are re-exported by :mod:`aiodicom`.
"""

from __future__ import annotations

from .naming import DEFAULT_TEMPLATE, Template
from .options import ExportOptions
from .report import ExportProgress, ExportReport, ItemResult, Status
from .run import ProgressCallback, export, run_export

__all__ = [
    "DEFAULT_TEMPLATE",
    "ExportOptions",
    "ExportProgress",
    "ExportReport",
    "ItemResult",
    "ProgressCallback",
    "Status",
    "Template",
    "export",
    "run_export",
]
