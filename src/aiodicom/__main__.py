"""``python -m aiodicom``: the same as the ``aiodicom`` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
