"""The ``aiodicom`` command: ``aiodicom export ...`` and ``aiodicom demo``.

Exit status: 0 when every item was written or skipped, 1 when any failed,
2 for a usage error (reported in one line before any work), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, NoReturn

import anyio

from ._export_destination import Root
from ._export_progressbar import LogLines, ProgressBar, failure_line
from ._export_report import ExportProgress, ExportReport, ItemResult, Status
from ._export_sources import _TEMP_SUFFIX
from ._export_template import DEFAULT_TEMPLATE, Template, TemplateError
from ._version import __version__
from .export import export
from .sinks import is_url

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_SHOWN_FAILURES: Final = 50

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

_EXPORT_EPILOG: Final = f"""\
examples:
  aiodicom export scans/ exported/
      every DICOM file under scans/ (recursively) into exported/, named
      StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm
  aiodicom export 'scans/**/*.dcm' s3://bucket/archive --skip-existing \\
      --storage-option client_kwargs.endpoint_url=http://127.0.0.1:9000
      to S3 (or any S3-compatible store); run it again after an interruption
      and only what is missing is written
  aiodicom export a.dcm b.dcm out/ \\
      --template '{{PatientID}}/{{Modality}}_{{InstanceNumber:04d}}.dcm'
  aiodicom export scans/ out/ --dry-run
      show where each file would go, write nothing

template:
  Fields are DICOM keywords. Values from the files are sanitised: '/', '\\',
  ':' and control characters become '_', a value of only dots becomes '_'s,
  so nothing can land outside DESTINATION. An item whose field is missing or
  empty fails (and is listed). Default: {DEFAULT_TEMPLATE}

storage options:
  KEY=VALUE, VALUE read as JSON when it parses (true, 8, {{"a": 1}}) and as a
  string otherwise; dots in KEY make nested options
  (client_kwargs.endpoint_url=URL). Repeat the flag for several options.

exit status: 0 all written or skipped, 1 some failed (listed), 2 bad arguments,
130 interrupted (nothing half-written is left behind).
"""


class _Parser(argparse.ArgumentParser):
    """Report a usage error in one line (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(Exception):
    """A bad argument found while checking, before any work."""


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aiodicom",
        description="Write DICOM files concurrently to local folders and object storage.",
        epilog="Run 'aiodicom export --help' for the export options, or "
        "'aiodicom demo' to try it on pydicom's example files.",
    )
    parser.add_argument("--version", action="version", version=f"aiodicom {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    export_parser = commands.add_parser(
        "export",
        help="export DICOM files or folders to a folder or an fsspec URL",
        description="Export DICOM files to a local folder or an object-store prefix, "
        "several at a time, with the same bytes pydicom.dcmwrite writes.",
        epilog=_EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export_parser.add_argument(
        "paths",
        nargs="+",
        metavar="SOURCE... DESTINATION",
        help="DICOM files, folders (searched recursively), globs or fsspec URLs; the "
        "last one is the destination folder or URL prefix",
    )
    _add_common_options(export_parser)
    _add_dask_options(export_parser)
    export_parser.set_defaults(handler=_run_export_command)

    demo_parser = commands.add_parser(
        "demo",
        help="export pydicom's bundled example files into ./exported",
        description="Export pydicom's bundled example datasets (CT, MR, RT, colour, "
        "waveform...) into a local folder. Needs nothing but aiodicom installed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  aiodicom demo && find exported -name '*.dcm'",
    )
    demo_parser.add_argument(
        "destination",
        nargs="?",
        default="exported",
        metavar="DESTINATION",
        help="folder or fsspec URL prefix (default: ./exported)",
    )
    _add_common_options(demo_parser)
    demo_parser.set_defaults(handler=_run_demo_command)
    return parser


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template",
        "-t",
        default=DEFAULT_TEMPLATE,
        metavar="T",
        help="file name template over DICOM keywords (see below)",
    )
    parser.add_argument(
        "--concurrency",
        "-j",
        type=_positive_int,
        default=16,
        metavar="N",
        help="files in flight at once (default: 16)",
    )
    parser.add_argument(
        "--no-clobber",
        "-n",
        action="store_true",
        help="fail items whose destination exists (default: overwrite)",
    )
    parser.add_argument(
        "--skip-existing",
        action="store_true",
        help="skip items whose destination exists, so a rerun resumes",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for a URL destination",
    )
    parser.add_argument(
        "--source-storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for URL sources",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also read files without a DICOM preamble (pydicom force=True)",
    )
    parser.add_argument(
        "--enforce-file-format",
        action="store_true",
        help="write the DICOM File Format (preamble, file meta) or fail",
    )
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read and name every file, print the plan, write nothing",
    )
    parser.add_argument(
        "--report", metavar="FILE", help="write a JSON report (summary and every item) to FILE"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress and no summary; failures are still listed",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print a line for every item, and warnings from pydicom and other libraries",
    )


def _add_dask_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        help="run on an existing Dask cluster (tcp://host:8786); needs aiodicom[dask]",
    )
    group.add_argument(
        "--dask",
        action="store_true",
        help="run on a local Dask cluster of worker processes; needs aiodicom[dask]",
    )


@contextlib.contextmanager
def _dask_client(address: str | None) -> Iterator[Any]:
    """A client of the cluster at `address`, or of a new local cluster."""
    try:
        import distributed
    except ImportError:
        raise UsageError(
            "--dask and --dask-scheduler need: pip install 'aiodicom[dask]'"
        ) from None
    Client: Any = distributed.Client  # untyped in distributed
    LocalCluster: Any = distributed.LocalCluster
    if address is None:
        with LocalCluster(dashboard_address=":0") as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(address, timeout=30)
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler {address!r}: {exc}") from None
    with client:
        yield client


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_storage_options(pairs: Sequence[str]) -> dict[str, Any] | None:
    """``["a=1", "b.c=x"]`` -> ``{"a": 1, "b": {"c": "x"}}`` (``None`` if empty)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"storage option {pair!r} is not KEY=VALUE")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        *parents, leaf = key.split(".")
        node = options
        for name in parents:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise UsageError(f"storage option {key!r} conflicts with {name!r}")
            node = child
        node[leaf] = value
    return options or None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``aiodicom`` command; return its exit status."""
    parser = _build_parser()
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
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
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
    storage_options = parse_storage_options(args.storage_option)
    source_options = parse_storage_options(args.source_storage_option)
    try:
        Root.parse(destination, storage_options)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for source in sources:
        _check_source(source, source_options)
    if args.report:
        _check_report_path(args.report)

    total = _count_local(sources)
    quiet = args.quiet
    show: ProgressBar | LogLines | None = None
    if not quiet and not args.dry_run:
        show = (ProgressBar if sys.stderr.isatty() else LogLines)(sys.stderr, verbose=args.verbose)
    finished: list[ItemResult] = []

    def on_progress(progress: ExportProgress) -> None:
        finished.append(progress.item)
        if show is not None:
            show.update(progress)
        elif progress.item.status is Status.FAILED and not args.dry_run:
            print(failure_line(progress.item), file=sys.stderr)

    # the same options for one process and for Dask
    options: dict[str, Any] = {
        "template": template,
        "concurrency": args.concurrency,
        "exist_ok": not args.no_clobber,
        "skip_existing": args.skip_existing,
        "storage_options": storage_options,
        "source_storage_options": source_options,
        "force": args.force,
        "enforce_file_format": args.enforce_file_format,
        "dry_run": args.dry_run,
        "fail_fast": args.fail_fast,
        "progress": on_progress,
    }

    async def run() -> ExportReport:
        return await export(sources, destination, total=total, **options)

    def run_on_dask() -> ExportReport:
        from .dask import export as dask_export

        with _dask_client(args.dask_scheduler) as client:
            return dask_export(sources, destination, client=client, **options)

    on_dask = getattr(args, "dask", False) or getattr(args, "dask_scheduler", None) is not None
    started = time.perf_counter()
    interrupted = False
    try:
        report = run_on_dask() if on_dask else anyio.run(run)
    except KeyboardInterrupt:
        interrupted = True
        report = ExportReport(
            items=finished,
            seconds=time.perf_counter() - started,
            stopped_early=True,
            dry_run=args.dry_run,
        )
    finally:
        if show is not None:
            show.close()

    if args.dry_run and not quiet:
        for item in report.items:
            if item.status is not Status.FAILED:
                print(f"{item.status} {item.source} -> {item.destination}")
    _print_failures(report)
    if args.report:
        _write_report(args.report, report)
    if not quiet:
        prefix = "interrupted: " if interrupted else ""
        print(f"{prefix}{report.summary()}")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if report.ok else EXIT_FAILED


def _check_source(source: str, storage_options: dict[str, Any] | None) -> None:
    """One-line errors for a source that cannot be read at all."""
    if is_url(source) and not source.startswith("file://"):
        from fsspec.core import url_to_fs

        try:
            fs, path = url_to_fs(source, **(storage_options or {}))
            found = fs.glob(path) if glob.has_magic(path) else fs.exists(path)
        except Exception as exc:
            raise UsageError(f"cannot read source {source!r}: {exc}") from None
        if not found:
            raise UsageError(f"source {source!r} does not exist")
        return
    path = source.removeprefix("file://")
    if not os.path.lexists(path):
        if glob.has_magic(path) and glob.glob(path, recursive=True):
            return
        raise UsageError(f"source {source!r} does not exist")
    if not os.access(path, os.R_OK | (os.X_OK if os.path.isdir(path) else 0)):
        raise UsageError(f"source {source!r} is not readable")


def _check_report_path(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write the report {path!r}: no folder {folder!r}")
    if os.path.isdir(path):
        raise UsageError(f"cannot write the report {path!r}: it is a folder")


def _count_local(sources: list[str]) -> int | None:
    """How many files the local sources hold (for the ETA); ``None`` with URLs."""
    total = 0
    for source in sources:
        if is_url(source) and not source.startswith("file://"):
            return None
        path = source.removeprefix("file://")
        matches = (
            glob.glob(path, recursive=True)
            if not os.path.lexists(path) and glob.has_magic(path)
            else [path]
        )
        for match in matches:
            if os.path.isdir(match):
                for _, _, files in os.walk(match):
                    total += sum(1 for name in files if not name.endswith(_TEMP_SUFFIX))
            else:
                total += 1
    return total


def _print_failures(report: ExportReport) -> None:
    failures = report.failures
    if not failures:
        return
    print(f"{len(failures)} failed:", file=sys.stderr)
    for item in failures[:_SHOWN_FAILURES]:
        print("  " + failure_line(item), file=sys.stderr)
    if len(failures) > _SHOWN_FAILURES:
        print(f"  ... and {len(failures) - _SHOWN_FAILURES} more (see --report)", file=sys.stderr)


def _write_report(path: str, report: ExportReport) -> None:
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="utf-8") as stream:
        json.dump(report.to_dict(), stream, indent=2)
        stream.write("\n")
    os.replace(temp, path)
