"""The ``aiodicom`` command line: ``aiodicom export`` and ``aiodicom demo``.

``_main`` runs the commands, ``_args`` builds the parser and checks the arguments
before any work, ``_progress`` draws the progress bar.
"""

from __future__ import annotations

from ._args import parse_storage_options
from ._main import DEMO_FILES, main

__all__ = ["DEMO_FILES", "main", "parse_storage_options"]
