"""The command line's arguments: the parser, and the checks made before any work.

Every problem found here is a :class:`~aiodicom._errors.UsageError` (or argparse's
own error): one line on stderr, exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections.abc import Sequence
from typing import Any, Final, NoReturn

from .._errors import UsageError
from .._export.naming import DEFAULT_TEMPLATE
from .._version import __version__
from ..sinks import is_url

__all__ = [
    "EXIT_USAGE",
    "build_parser",
    "check_report_path",
    "check_source",
    "parse_storage_options",
]

EXIT_USAGE: Final = 2

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
130 interrupted by Ctrl-C, 143 stopped by SIGTERM (nothing half-written is left
behind; the report lists what finished).
"""


class _Parser(argparse.ArgumentParser):
    """Report a usage error in one line (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
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
        help="files in flight at once; for a dicomweb+ destination, requests (default: 16)",
    )
    parser.add_argument(
        "--workers",
        "-w",
        type=_positive_int,
        default=None,
        metavar="N",
        help="worker processes (default: one per core for folders, globs and URLs "
        "with more than a few files; 1: all in this process)",
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
        help="fsspec option for a URL destination (for a dicomweb+ URL: a DicomWeb option)",
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
        "--checksum",
        choices=("crc32c", "sha256", "md5", "none"),
        default="crc32c",
        help="checksum computed while writing, sent to the store to check and listed "
        "in the report (default: crc32c; none: off)",
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="after each write, read back what is stored (the store's checksum, or "
        "the bytes) and fail the item on a mismatch",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read and name every file, print the plan, write nothing",
    )
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="write the report to FILE as items finish: JSON Lines, one object per item, "
        "then a summary line ('-': standard output)",
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


def check_source(source: str, storage_options: dict[str, Any] | None) -> None:
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


def check_report_path(path: str) -> None:
    if path == "-":
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"cannot write the report {path!r}: no folder {folder!r}")
    if os.path.isdir(path):
        raise UsageError(f"cannot write the report {path!r}: it is a folder")
