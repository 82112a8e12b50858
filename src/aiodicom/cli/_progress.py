"""Showing an export's progress: a live bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import shutil
import time
from typing import Final, TextIO

from .._errors import SourceSkipped
from .._export.report import ExportProgress, ItemResult, Status, describe_error, format_bytes

__all__ = ["LogLines", "ProgressBar", "failure_line", "format_duration", "item_line"]

_FLAGS: Final = (
    ("force=True", "--force"),
    ("source_storage_options", "--source-storage-option"),
    ("storage_options", "--storage-option"),
    ("skip_existing=True", "--skip-existing"),
    ("exist_ok=False", "--no-clobber"),
)
"""Python keywords in messages, and the command-line flags that set them."""

_REDRAW_EVERY: Final = 0.1  # seconds
_LOG_EVERY: Final = 5.0  # seconds


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3700`` -> ``"1:01:40"``."""
    seconds = max(0, int(seconds + 0.5))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _status_text(progress: ExportProgress) -> str:
    """Items, bytes, rate and (when the total is known) ETA, in a few words."""
    elapsed = max(progress.elapsed, 1e-9)
    done = f"{progress.done}/{progress.total}" if progress.total else f"{progress.done}"
    text = (
        f"{done} items  {format_bytes(progress.bytes_written)}  "
        f"{format_bytes(progress.bytes_written / elapsed)}/s  "
        f"{progress.done / elapsed:.1f} items/s"
    )
    if progress.total and progress.done:
        remaining = max(progress.total - progress.done, 0) * elapsed / progress.done
        text += f"  ETA {format_duration(remaining)}"
    if progress.skipped:
        text += f"  {progress.skipped} skipped"
    if progress.failed:
        text += f"  {progress.failed} failed"
    return text


def failure_line(item: ItemResult) -> str:
    """``FAILED source -> destination: Error: message``, each path once, with the
    command's flags for Python keywords in the message (pydicom's ``force=True``)."""
    target = f" -> {item.destination}" if item.destination else ""
    return f"FAILED {item.source}{target}: {_error_text(item)}"


def item_line(item: ItemResult) -> str:
    """One line for an item: ``written a.dcm -> out/x.dcm``, ``skipped b.txt: not
    a DICOM file...``, or :func:`failure_line`."""
    if item.status is Status.FAILED:
        return failure_line(item)
    if isinstance(item.error, SourceSkipped):
        return f"{item.status} {item.source}: {item.error}"
    return f"{item.status} {item.source} -> {item.destination}"


def _error_text(item: ItemResult) -> str:
    error = item.error
    if error is None:
        return "unknown error"
    if (
        isinstance(error, OSError)
        and error.strerror
        and error.filename in (item.destination, item.source)
    ):
        text = f"{type(error).__name__}: {error.strerror}"  # the path is on the line
    else:
        text = describe_error(error)
    for keyword, flag in _FLAGS:
        text = text.replace(keyword, flag)
    return text


class ProgressBar:
    """A one-line bar redrawn in place (at most ten times a second) on `stream`;
    failures (every item, when verbose) above it, unless `items` is false."""

    def __init__(self, stream: TextIO, *, verbose: bool = False, items: bool = True) -> None:
        self._stream = stream
        self._verbose = verbose
        self._items = items
        self._last: ExportProgress | None = None
        self._drawn_at = 0.0

    def update(self, progress: ExportProgress) -> None:
        self._last = progress
        if self._items and (progress.item.status is Status.FAILED or self._verbose):
            self._message(item_line(progress.item))
        now = time.monotonic()
        if now - self._drawn_at >= _REDRAW_EVERY or progress.done == progress.total:
            self._draw()
            self._drawn_at = now

    def close(self) -> None:
        if self._last is not None:
            self._draw()
            self._stream.write("\n")
            self._stream.flush()

    def _message(self, line: str) -> None:
        self._stream.write("\r\x1b[2K" + line + "\n")
        if self._last is not None:
            self._draw()

    def _draw(self) -> None:
        assert self._last is not None
        progress = self._last
        width = shutil.get_terminal_size((80, 20)).columns - 1
        text = _status_text(progress)
        if progress.total:
            room = max(min(30, width - len(text) - 3), 0)
            filled = room * min(progress.done, progress.total) // progress.total
            if room:
                text = "[" + "#" * filled + "." * (room - filled) + "] " + text
        self._stream.write("\r\x1b[2K" + text[:width])
        self._stream.flush()


class LogLines:
    """Plain lines for logs and pipes: failures at once (unless `items` is false),
    a status line every few seconds."""

    def __init__(self, stream: TextIO, *, verbose: bool = False, items: bool = True) -> None:
        self._stream = stream
        self._verbose = verbose
        self._items = items
        self._last: ExportProgress | None = None
        self._logged_at = time.monotonic()

    def update(self, progress: ExportProgress) -> None:
        self._last = progress
        item = progress.item
        if self._items and (item.status is Status.FAILED or self._verbose):
            self._write(item_line(item))
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._write("progress: " + _status_text(progress))
            self._logged_at = now

    def close(self) -> None:
        pass

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()
