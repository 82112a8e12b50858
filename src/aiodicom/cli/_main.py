"""The ``aiodicom`` command: ``aiodicom export ...`` and ``aiodicom demo``.

Exit status: 0 when every item was written or skipped, 1 when any failed (or
a run of identical destination errors stopped the export), 2 for a usage error
or a destination that cannot be written (reported in one line before any source
is read), 130 when interrupted by Ctrl-C, 143 when stopped by SIGTERM (both stop
cleanly: nothing half-written, and the report lists what finished).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, TextIO

import anyio

from .._errors import DestinationError, TemplateError, UsageError
from .._export.destination import Root
from .._export.naming import Template
from .._export.options import ExportOptions
from .._export.report import (
    ExportProgress,
    ExportReport,
    ItemResult,
    JsonLinesReport,
    Status,
    Tally,
)
from .._export.run import run_export, selection_for
from .._export.sources import count_local
from ..sinks import is_url
from ._args import (
    EXIT_USAGE,
    build_parser,
    check_dask,
    check_report_path,
    check_source,
    load_transform,
    parse_storage_options,
)
from ._progress import LogLines, ProgressBar, failure_line, item_line

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_INTERRUPTED: Final = 130
"""Ctrl-C (128 + SIGINT), as shells report it."""
EXIT_TERMINATED: Final = 143
"""SIGTERM (128 + SIGTERM): how docker, systemd and Kubernetes stop a process."""

_TERMINATED = threading.Event()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While synchronous code runs (the Dask path), SIGTERM stops it as Ctrl-C does."""

    def interrupt(signum: int, frame: Any) -> None:
        _TERMINATED.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


DEMO_FILES: Final = (
    "CT_small.dcm",
    "MR_small.dcm",
    "examples_jpeg2k.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "waveform_ecg.dcm",
)
"""pydicom's bundled example instances (``pydicom.examples``, minus the DICOMDIR
and the copy without file meta)."""


@contextlib.contextmanager
def _dask_client(address: str | None) -> Iterator[Any]:
    """A client of the cluster at `address`, or of a new local cluster."""
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "--dask and --dask-scheduler need aiodicom's 'dask' extra: "
            "pip install '.[dask]' in a checkout"
        ) from None
    Client: Any = distributed.Client  # untyped in distributed
    LocalCluster: Any = distributed.LocalCluster
    if address is None:
        with LocalCluster(dashboard_address=":0") as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=30)
    except (OSError, ValueError, TimeoutError) as exc:
        raise UsageError(f"--dask-scheduler {address!r}: cannot reach it: {exc}") from None
    with client:
        yield client


def _ship_transform(client: Any, transform: Callable[..., Any] | None) -> None:
    """Send the module of a ``--transform`` given as a file, or as a top-level
    module of the current folder, to the Dask workers (``Client.upload_file``):
    they run elsewhere, where it cannot be imported by name.  A transform from a
    package, or from an installed module, must be installed on the workers."""
    if transform is None:
        return
    module = sys.modules.get(getattr(transform, "__module__", "") or "")
    where = getattr(module, "__file__", None)
    if module is None or where is None or "." in module.__name__:
        return
    where = os.path.realpath(where)
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    if not where.endswith(".py") or os.path.basename(where) == "__init__.py":
        return
    if any(where.startswith(prefix + os.sep) for prefix in installed):
        return
    client.upload_file(where)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aiodicom`` command; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with _quiet_libraries(args.verbose):
        return _dispatch(args)


class _OneLine(logging.Formatter):
    """``name: message`` without tracebacks (the report has the errors)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.name}: {record.getMessage()}"


@contextlib.contextmanager
def _quiet_libraries(verbose: bool) -> Iterator[None]:
    """Keep the terminal readable: aiodicom's warnings (retries) in one line each;
    other libraries' log records and pydicom's warnings only with ``--verbose``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter() if verbose else _OneLine())
    if not verbose:
        handler.addFilter(lambda record: record.name.split(".")[0] == "aiodicom")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        root.removeHandler(handler)


def _dispatch(args: argparse.Namespace) -> int:
    prog = f"aiodicom {args.command}"
    try:
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run_export_command(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        raise UsageError("give at least one SOURCE and a DESTINATION")
    *sources, destination = args.paths
    return _export(args, sources, destination)


def _run_demo_command(args: argparse.Namespace) -> int:
    from pydicom.data import get_testdata_file

    sources = [get_testdata_file(name) for name in DEMO_FILES]
    args.force = True  # rtstruct.dcm has no preamble
    return _export(args, [str(path) for path in sources if path is not None], args.destination)


def _export(args: argparse.Namespace, sources: list[str], destination: str) -> int:
    """Check everything, run the export with progress, print and save the outcome."""
    if args.no_clobber and args.skip_existing:
        raise UsageError("--no-clobber and --skip-existing exclude each other")
    try:
        template = Template(args.template)
    except TemplateError as exc:
        raise UsageError(str(exc)) from None
    if args.verify and args.checksum == "none":
        raise UsageError("--verify needs a checksum (not --checksum none)")
    storage_options = parse_storage_options(
        args.storage_option, args.storage_option_json, flag="--storage-option"
    )
    source_storage_options = parse_storage_options(
        args.source_storage_option,
        args.source_storage_option_json,
        flag="--source-storage-option",
    )
    if storage_options and not (is_url(destination) and not destination.startswith("file://")):
        raise UsageError(
            "--storage-option is only for a URL destination (s3://, gs://, az://...), "
            f"not the folder {destination!r}"
        )
    on_dask = getattr(args, "dask", False) or getattr(args, "dask_scheduler", None) is not None
    if on_dask:
        check_dask(args.dask_scheduler)
    transform = load_transform(args.transform) if args.transform else None
    # the same options for one process and for Dask
    try:
        options = ExportOptions(
            template=template,
            concurrency=args.concurrency,
            exist_ok=not args.no_clobber,
            skip_existing=args.skip_existing,
            storage_options=storage_options,
            source_storage_options=source_storage_options,
            force=args.force,
            enforce_file_format=args.enforce_file_format,
            dry_run=args.dry_run,
            fail_fast=args.fail_fast,
            workers=args.workers,
            transform=transform,
            include=tuple(args.include),
            exclude=tuple(args.exclude),
            on_conflict=args.on_conflict,
            checksum=None if args.checksum == "none" else args.checksum,
            verify=args.verify,
        )
        root = Root.parse(destination, options.storage_options)
        root.check_options(options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for source in sources:
        check_source(source, options.source_storage_options)
    if args.report:
        check_report_path(args.report)
    created = _touch_report(args.report)  # can it be written? (an existing one is kept)
    try:
        root.check(dry_run=args.dry_run)  # before any source is read
        total = count_local(sources, selection_for(root, options))
    except (DestinationError, KeyboardInterrupt) as exc:
        if created:
            os.unlink(args.report)  # nothing to report
        if isinstance(exc, KeyboardInterrupt):
            return EXIT_INTERRUPTED
        raise UsageError(_destination_hint(exc, root)) from None
    stream = _open_report(args.report)

    quiet = args.quiet
    show: ProgressBar | LogLines | None = None
    # On Dask a name clash between partitions can change an item's result once all
    # are back (progress is then called again for it): its lines (report, failures,
    # plan) come from the final results, at the end, so that each item has one.
    live = not on_dask
    if not quiet and not args.dry_run:
        show = (ProgressBar if sys.stderr.isatty() else LogLines)(
            sys.stderr, verbose=args.verbose, items=live
        )
    # Every finished item is counted here and streamed to --report as it finishes;
    # only failures stay in memory (a million-item export must not grow with it).
    lines = JsonLinesReport(stream) if stream is not None else None
    finished = Tally(total, keep_items=not live, on_item=lines.item if lines and live else None)
    # standard output is the report's with --report -: the plan and summary go aside
    out = sys.stderr if stream is sys.stdout else sys.stdout

    def item_output(item: ItemResult) -> None:
        if show is None and item.status is Status.FAILED:
            print(failure_line(item), file=sys.stderr)
        elif show is None and args.dry_run:
            print(item_line(item), file=out, flush=True)  # the plan, also with --quiet

    def on_progress(progress: ExportProgress) -> None:
        if progress.done <= finished.done:  # a result changed at the end (Dask)
            return
        finished.add(progress.item)
        if show is not None:
            show.update(progress)  # failures as they happen, above the bar
        if live:
            item_output(progress.item)

    terminated = False
    stopped: DestinationError | None = None

    async def run() -> ExportReport | None:
        """The export; ``None`` if SIGTERM stopped it (as Ctrl-C does: cleanly)."""
        nonlocal terminated, stopped
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:

                async def stop_on_sigterm() -> None:
                    nonlocal terminated
                    with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                        async for _ in signals:
                            terminated = True
                            scope.cancel()
                            return

                group.start_soon(stop_on_sigterm)
                try:
                    report = await run_export(
                        sources,
                        root,
                        options,
                        progress=on_progress,
                        total=total,
                        check_destination=False,
                        progress_may_lag=True,
                    )
                except DestinationError as exc:  # a run of identical destination errors
                    stopped = exc
                    report = exc.report
                group.cancel_scope.cancel()
                return report
        return None

    def run_on_dask() -> ExportReport:
        from ..dask import run_on_dask

        with _dask_client(args.dask_scheduler) as client:
            _ship_transform(client, transform)
            return run_on_dask(sources, destination, options, client=client, progress=on_progress)

    interrupted = False
    outcome: ExportReport | None = None
    try:
        if on_dask:
            with _sigterm_as_interrupt():
                outcome = run_on_dask()
        else:
            outcome = anyio.run(run)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if show is not None:
            show.close()
    if outcome is None:  # Ctrl-C or SIGTERM: what finished is reported
        interrupted = True
        finished.stopped_early = True
        report = finished.report(dry_run=args.dry_run)
    else:
        report = outcome

    if not live:  # one line per item, from the final results
        for item in report.items if outcome is not None else finished.items:
            if lines is not None:
                lines.item(item)
            if show is not None:  # the bar is closed: plain lines below it
                if item.status is Status.FAILED or args.verbose:
                    print(item_line(item), file=sys.stderr)
            else:
                item_output(item)
    if stopped is not None:
        print(f"aiodicom {args.command}: {stopped}", file=sys.stderr)
    if lines is not None and stream is not None:
        lines.finish(report)
        if stream is not sys.stdout:
            stream.close()
    if not quiet:
        prefix = "interrupted: " if interrupted else ""
        print(f"{prefix}{report.summary()}", file=out)
    if interrupted:
        return EXIT_TERMINATED if terminated or _TERMINATED.is_set() else EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_FAILED


def _destination_hint(error: DestinationError, root: Root) -> str:
    """The pre-flight error, with what to check (naming the command's options)."""
    cause = error.__cause__
    text = str(error)
    if root.is_local:
        return text
    name = type(cause).__name__ if cause is not None else ""
    if isinstance(cause, PermissionError) or "Credential" in name or "Auth" in name:
        return f"{text} (check the credentials: --storage-option, or the store's environment)"
    if isinstance(cause, FileNotFoundError):
        return f"{text} (does the bucket or container exist?)"
    return text


def _touch_report(path: str | None) -> bool:
    """Check that the report file can be written, without changing one that
    exists; return whether it was created."""
    if path is None or path == "-":
        return False
    existed = os.path.lexists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write the report {path!r}: {exc.strerror}") from None
    return not existed


def _open_report(path: str | None) -> TextIO | None:
    """The stream of the JSON Lines report: a file, or standard output for ``-``."""
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    return open(path, "w", encoding="utf-8")


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace], int]]] = {
    "export": _run_export_command,
    "demo": _run_demo_command,
}
