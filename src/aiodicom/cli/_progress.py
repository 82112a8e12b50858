"""Showing an export's progress: a live bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import shutil
import time
from typing import Final, TextIO

from .._export.report import ExportProgress, ItemResult, Status, describe_error, format_bytes

__all__ = ["LogLines", "ProgressBar", "format_duration"]

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
    """``FAILED source -> destination: Error: message``."""
    target = f" -> {item.destination}" if item.destination else ""
    error = describe_error(item.error) if item.error is not None else "unknown error"
    return f"FAILED {item.source}{target}: {error}"


class ProgressBar:
    """A one-line bar redrawn in place (at most ten times a second) on `stream`."""

    def __init__(self, stream: TextIO, *, verbose: bool = False) -> None:
        self._stream = stream
        self._verbose = verbose
        self._last: ExportProgress | None = None
        self._drawn_at = 0.0

    def update(self, progress: ExportProgress) -> None:
        self._last = progress
        if progress.item.status is Status.FAILED:
            self._message(failure_line(progress.item))
        elif self._verbose:
            self._message(
                f"{progress.item.status} {progress.item.source} -> {progress.item.destination}"
            )
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
    """Plain lines for logs and pipes: failures at once, a status line every few seconds."""

    def __init__(self, stream: TextIO, *, verbose: bool = False) -> None:
        self._stream = stream
        self._verbose = verbose
        self._last: ExportProgress | None = None
        self._logged_at = time.monotonic()

    def update(self, progress: ExportProgress) -> None:
        self._last = progress
        item = progress.item
        if item.status is Status.FAILED:
            self._write(failure_line(item))
        elif self._verbose:
            self._write(f"{item.status} {item.source} -> {item.destination}")
        now = time.monotonic()
        if now - self._logged_at >= _LOG_EVERY:
            self._write("progress: " + _status_text(progress))
            self._logged_at = now

    def close(self) -> None:
        pass

    def _write(self, line: str) -> None:
        self._stream.write(line + "\n")
        self._stream.flush()
