"""The command line's arguments: the parser, and the checks made before any work.

Every problem found here is a :class:`~aiodicom._errors.UsageError` (or argparse's
own error): one line on stderr, exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

from .._errors import UsageError
from .._export.naming import DEFAULT_TEMPLATE
from .._version import __version__
from ..sinks import is_url

__all__ = [
    "EXIT_USAGE",
    "build_parser",
    "check_dask",
    "check_report_path",
    "check_source",
    "load_transform",
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
  aiodicom export archive/ s3://bucket/deid --transform my_rules:deidentify \\
      --template '{{PatientID:-UNKNOWN}}/{{source_stem}}.dcm' --on-conflict suffix
      de-identify each dataset with your function before it is named and
      uploaded; name files after their source, PatientID or UNKNOWN

what is exported:
  Folders are searched recursively, in sorted order. Hidden files and folders
  (names starting with '.'), files that are not DICOM and DICOMDIRs are
  reported as skipped, not failed. DESTINATION is never searched, so exporting
  into a folder inside SOURCE does not read earlier output back. --include and
  --exclude choose files of folders, globs and URL prefixes: a PATTERN without
  '/' matches the file name ('*.dcm'), one with '/' the path below the folder
  given ('*/CT/*'); left-out files are not listed.

template:
  Fields are DICOM keywords, and {{source_name}} / {{source_stem}} (the source
  file's name, without its extension). Values from the files are sanitised:
  '/', '\\', ':' and control characters become '_', a value of only dots
  becomes '_'s, so nothing can land outside DESTINATION. An item whose field is
  missing or empty fails (and is listed), unless the field has a fallback:
  {{PatientID:-UNKNOWN}}, {{InstanceNumber:05d:-0}}. Two items with one name: the
  first in source order is written; later ones fail (--on-conflict fail) or
  get name-1.dcm, name-2.dcm... (--on-conflict suffix).
  Default: {DEFAULT_TEMPLATE}

storage options:
  --storage-option KEY=VALUE passes VALUE as a string (a key or secret that
  looks like a number stays a string); --storage-option-json KEY=JSON passes a
  JSON value (true, 8, {{"a": 1}}). Dots in KEY make nested options
  (client_kwargs.endpoint_url=URL). Repeat the flags for several options.

exit status: 0 all written or skipped, 1 some failed (listed) or the export
stopped at a run of identical destination errors, 2 bad arguments or a
destination that cannot be written (checked before any source is read), 130
interrupted by Ctrl-C, 143 stopped by SIGTERM (nothing half-written is left
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
        "--on-conflict",
        choices=("fail", "suffix"),
        default="fail",
        help="two items named the same: the first in source order is written; later "
        "ones fail (default) or get a suffix: name-1.dcm, name-2.dcm...",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="export only files of folders, globs and prefixes matching PATTERN "
        "(repeatable; see below)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="leave out files matching PATTERN (repeatable)",
    )
    parser.add_argument(
        "--transform",
        metavar="MODULE:FUNCTION",
        help="call FUNCTION(dataset) on each dataset after reading it and before "
        "naming and writing it (de-identification...); MODULE is a module name "
        "importable from the current folder, or a FILE.py",
    )
    parser.add_argument(
        "--storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for a URL destination (for a dicomweb+ URL: a DicomWeb "
        "option); VALUE is a string",
    )
    parser.add_argument(
        "--storage-option-json",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="fsspec option for a URL destination, VALUE read as JSON (true, 8...)",
    )
    parser.add_argument(
        "--source-storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for URL sources; VALUE is a string",
    )
    parser.add_argument(
        "--source-storage-option-json",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="fsspec option for URL sources, VALUE read as JSON",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also read files without a DICOM preamble that start like a DICOM "
        "data set (pydicom's force=True)",
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
        help="no progress and no summary; failures (and the --dry-run plan) are still printed",
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
        help="run on an existing Dask cluster (tcp://host:8786); needs the dask extra",
    )
    group.add_argument(
        "--dask",
        action="store_true",
        help="run on a local Dask cluster of worker processes; needs the dask extra",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def parse_storage_options(
    pairs: Sequence[str],
    json_pairs: Sequence[str] = (),
    *,
    flag: str = "--storage-option",
) -> dict[str, Any] | None:
    """``["a=1", "b.c=x"]`` -> ``{"a": "1", "b": {"c": "x"}}`` (``None`` if empty).

    Values of `pairs` are strings, always (a secret that looks like a number
    stays a string); values of `json_pairs` are read as JSON (``true``, ``8``,
    ``{"a": 1}``).  `flag` names the option in error messages.
    """
    options: dict[str, Any] = {}
    given: set[str] = set()
    tagged = [(pair, False) for pair in pairs] + [(pair, True) for pair in json_pairs]
    for pair, as_json in tagged:
        name = f"{flag}-json" if as_json else flag
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{name} {pair!r} is not KEY=VALUE")
        if key in given:
            raise UsageError(f"{name}: {key!r} is given twice")
        given.add(key)
        value: Any = text
        if as_json:
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise UsageError(f"{name} {pair!r}: {text!r} is not JSON ({exc})") from None
        elif text in ("true", "false", "null"):
            print(
                f"aiodicom: note: {name} {pair} passes the string {text!r}; for the "
                f"JSON value, write {flag}-json {pair}",
                file=sys.stderr,
            )
        *parents, leaf = key.split(".")
        node = options
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"{name} {key!r} conflicts with {part!r}")
            node = child
        if isinstance(node.get(leaf), dict):
            raise UsageError(f"{name} {key!r} conflicts with {key}.*")
        node[leaf] = value
    return options or None


def load_transform(spec: str) -> Callable[..., Any]:
    """The function named by ``--transform MODULE:FUNCTION`` (or ``FILE.py:FUNCTION``).

    The module is imported as Python would from the current folder (a file: from
    its own folder), which is also put on ``sys.path`` so that worker processes
    can import it by name.
    """
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"--transform takes MODULE:FUNCTION or FILE.py:FUNCTION, not {spec!r}")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise UsageError(f"--transform {spec!r}: no file {module_name!r}")
        folder, module_name = os.path.dirname(path), os.path.basename(path).removesuffix(".py")
        if not module_name.isidentifier():
            raise UsageError(
                f"--transform {spec!r}: {module_name!r} is not a module name (rename the file)"
            )
    else:
        folder, path = os.getcwd(), ""
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"--transform {spec!r}: cannot import {module_name!r}: {_one_line(exc)}"
        ) from None
    where = getattr(module, "__file__", None)
    if path and (where is None or os.path.realpath(where) != os.path.realpath(path)):
        raise UsageError(
            f"--transform {spec!r}: the module name {module_name!r} is taken by {where!r}; "
            "rename the file"
        )
    function: Any = module
    try:
        for part in attribute.split("."):
            function = getattr(function, part)
    except AttributeError:
        raise UsageError(f"--transform {spec!r}: {module_name!r} has no {attribute!r}") from None
    if not callable(function):
        raise UsageError(f"--transform {spec!r}: {attribute!r} is not callable")
    return function  # type: ignore[no-any-return]


def check_dask(scheduler: str | None) -> None:
    """One-line errors for ``--dask`` / ``--dask-scheduler`` before any work: the
    extra is installed, and the scheduler's address is one Dask can use and
    answers."""
    try:
        import distributed  # noqa: F401

        from ..dask import run_on_dask  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            f"--dask and --dask-scheduler need aiodicom's 'dask' extra ({_one_line(exc)}): "
            "pip install '.[dask]' in a checkout"
        ) from None
    if scheduler is None:
        return
    from distributed.comm.addressing import resolve_address

    try:
        address = resolve_address(scheduler)
    except (ValueError, OSError) as exc:
        raise UsageError(
            f"--dask-scheduler {scheduler!r}: {_one_line(exc)} (write tcp://HOST:PORT, "
            "as the scheduler prints it)"
        ) from None
    scheme, _, location = address.partition("://")
    if scheme != "tcp":
        return
    host, _, port = location.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=10):
            pass
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"--dask-scheduler {scheduler!r}: cannot reach it ({_one_line(exc)})"
        ) from None


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


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
