"""Bulk export on real archives (issue 14), as a user runs it.

Most tests run ``python -m aiodicom export`` in a subprocess on a folder that
mixes DICOM instances, files that are not DICOM, hidden files and folders and a
DICOMDIR, and check its exit status, stdout and stderr; the API tests run on
asyncio and trio.  Covered: the destination's pre-flight check and the stop
after a run of identical destination errors; one-line usage errors naming the
command's flags; storage options as strings; non-DICOM files, hidden files and
DICOMDIRs skipped, --include/--exclude; no reading back of our own output;
name clashes decided in source order (--on-conflict); template fallbacks and
the source's file name; the transform hook (and the de-identification example);
sink factories as destinations; the command's output (--dry-run -q, failures
once, the summary's rate).
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import aiodicom
from aiodicom import (
    DestinationError,
    DuplicateDestinationError,
    ExportReport,
    ItemResult,
    SourceSkipped,
    Status,
    TransformError,
)
from aiodicom.sinks import LocalFile
from tests import datasets
from tests.helpers import pydicom_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "deidentify_export.py"


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name)
    assert isinstance(path, str)
    return path


def cli(
    *args: Any, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m aiodicom ARGS`` as a user runs it (from any folder: this
    checkout's PYTHONPATH made absolute)."""
    env = dict(os.environ if env is None else env)
    if env.get("PYTHONPATH"):
        paths = env["PYTHONPATH"].split(os.pathsep)
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths if p)
    return subprocess.run(
        [sys.executable, "-m", "aiodicom", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
        check=False,
    )


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line of a usage error (exit status 2, no traceback, nothing on stdout)."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("aiodicom")
    return lines[0]


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def summary(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if " written, " in line]
    assert len(lines) == 1, stdout
    return lines[0]


# ----------------------------------------------------------------------------- the archive

INSTANCES = {"ct.dcm": "CT_small.dcm", "sub/mr.dcm": "MR_small.dcm"}
SKIPPED = {  # relative path -> reason, in the order the folder is searched
    ".DS_Store": "hidden",
    "DICOMDIR": "dicomdir",
    "README.txt": "not-dicom",
    ".hidden": "hidden",
    "sub/notes": "not-dicom",
}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """A folder as archives are: two instances, a DICOMDIR, a README, an empty
    file, macOS's .DS_Store, and a hidden folder (holding a real instance)."""
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for relative, name in INSTANCES.items():
        shutil.copy(pydicom_file(name), root / relative)
    shutil.copy(pydicom_file("CT_small.dcm"), root / ".hidden" / "ct.dcm")
    shutil.copy(pydicom_file("DICOMDIR"), root / "DICOMDIR")
    (root / "README.txt").write_text("Scans of the 2004 study. Ask the PACS team.\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(200))
    (root / "sub" / "notes").write_bytes(b"")
    return root


def expected_outputs() -> dict[str, bytes]:
    """{SOPInstanceUID: pydicom's bytes} of the archive's instances."""
    out = {}
    for name in INSTANCES.values():
        ds = pydicom.dcmread(pydicom_file(name))
        out[str(ds.SOPInstanceUID)] = pydicom_bytes(pydicom_file(name))
    return out


def outputs_by_uid(folder: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in folder.rglob("*.dcm")}


# ----------------------------------------------------------------------- non-DICOM files


def test_a_real_folder_exports_its_instances_and_skips_the_rest(
    archive: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = cli("export", archive, out, "-v")
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout).startswith("2 written, 5 skipped, 0 failed")
    assert outputs_by_uid(out) == expected_outputs()
    assert "FAILED" not in result.stderr
    skipped = {
        line.split(" ", 2)[1]: line
        for line in result.stderr.splitlines()
        if line.startswith("skipped ")
    }
    assert {os.path.relpath(path.rstrip(":"), archive) for path in skipped} == set(SKIPPED)
    reasons = {os.path.relpath(path.rstrip(":"), archive): line for path, line in skipped.items()}
    assert "hidden file" in reasons[".DS_Store"]
    assert "hidden folder" in reasons[".hidden"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert "not a DICOM file" in reasons["README.txt"]
    assert "not a DICOM file" in reasons["sub/notes"]


@pytest.mark.anyio
async def test_the_report_says_why_each_item_was_skipped(archive: Path, tmp_path: Path) -> None:
    report = await aiodicom.export(archive, tmp_path / "out")
    assert report.ok
    assert report.written == 2
    why = {
        os.path.relpath(item.source, archive): item.error
        for item in report.items
        if item.status is Status.SKIPPED
    }
    assert set(why) == set(SKIPPED)
    for relative, reason in SKIPPED.items():
        error = why[relative]
        assert isinstance(error, SourceSkipped)
        assert error.reason == reason
    assert all(item.destination is None for item in report.items if item.source in why)


@pytest.mark.anyio
async def test_sources_named_one_by_one(tmp_path: Path) -> None:
    """A hidden file named explicitly is exported; a DICOMDIR or a README never is."""
    hidden = tmp_path / ".scan.dcm"
    shutil.copy(pydicom_file("CT_small.dcm"), hidden)
    readme = tmp_path / "README.txt"
    readme.write_text("not DICOM")
    report = await aiodicom.export([hidden, pydicom_file("DICOMDIR"), readme], tmp_path / "out")
    status = {item.source: item.status for item in report.items}
    assert status == {
        str(hidden): Status.WRITTEN,
        pydicom_file("DICOMDIR"): Status.SKIPPED,
        str(readme): Status.SKIPPED,
    }
    assert report.ok


def test_force_reads_preamble_less_dicom_and_still_skips_what_is_not_dicom(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(pydicom_file("rtstruct.dcm"), folder / "rtstruct.dcm")  # no preamble
    (folder / "notes.txt").write_text("hello")
    without = cli("export", folder, tmp_path / "a")
    assert without.returncode == 1
    assert summary(without.stdout).startswith("0 written, 1 skipped, 1 failed")
    (line,) = without.stderr.splitlines()
    assert line.startswith(f"FAILED {folder / 'rtstruct.dcm'}: InvalidDicomError")
    assert "--force" in line
    assert "force=True" not in line
    forced = cli("export", folder, tmp_path / "b", "--force")
    assert forced.returncode == 0, forced.stderr
    assert summary(forced.stdout).startswith("1 written, 1 skipped, 0 failed")
    (written,) = (tmp_path / "b").rglob("*.dcm")
    assert written.read_bytes() == pydicom_bytes(pydicom_file("rtstruct.dcm"))


def test_include_and_exclude_choose_the_files(archive: Path, tmp_path: Path) -> None:
    shutil.copy(pydicom_file("rtplan.dcm"), archive / "sub" / "plan.DCM")
    out = tmp_path / "out"
    result = cli("export", archive, out, "--include", "*.dcm", "--exclude", "sub/*", "-v")
    assert result.returncode == 0, result.stderr
    # ct.dcm only; of the rest, only the hidden folder is listed (it is not searched)
    assert summary(result.stdout).startswith("1 written, 1 skipped, 0 failed")
    assert list(outputs_by_uid(out)) == [str(pydicom.dcmread(archive / "ct.dcm").SOPInstanceUID)]
    assert ".hidden" in result.stderr
    assert "README" not in result.stderr
    result = cli("export", archive, tmp_path / "plans", "--include", "*.DCM")
    assert summary(result.stdout).startswith("1 written, 1 skipped, 0 failed")


@pytest.mark.anyio
async def test_include_exclude_and_hidden_objects_under_a_url_prefix(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    prefix = f"memory://ux-{tmp_path.name}"
    ct = pydicom_bytes(pydicom_file("CT_small.dcm"))
    fs.pipe_file(f"{prefix}/in/a/ct.dcm", ct)
    fs.pipe_file(f"{prefix}/in/b/ct.dcm", ct)
    fs.pipe_file(f"{prefix}/in/.trash/ct.dcm", ct)
    fs.pipe_file(f"{prefix}/in/a/readme.md", b"# hi")
    try:
        report = await aiodicom.export(
            f"{prefix}/in",
            tmp_path / "out",
            template="{source_name}",
            include=["*.dcm", "*.md"],
            exclude="b/*",
        )
        by_source = {item.source.rsplit("/in/", 1)[1]: item for item in report.items}
        assert set(by_source) == {"a/ct.dcm", ".trash/ct.dcm", "a/readme.md"}
        assert by_source["a/ct.dcm"].status is Status.WRITTEN
        assert by_source[".trash/ct.dcm"].status is Status.SKIPPED
        assert by_source["a/readme.md"].status is Status.SKIPPED
    finally:
        fs.rm(prefix, recursive=True)


def test_exporting_into_the_source_never_reads_its_own_output(archive: Path) -> None:
    out = archive / "exported"
    for _ in range(2):
        result = cli("export", archive, out)
        assert result.returncode == 0, result.stderr
        assert summary(result.stdout).startswith("2 written, 5 skipped, 0 failed")
        assert outputs_by_uid(out) == expected_outputs()


# ------------------------------------------------------------------- name clashes


@pytest.fixture
def clashing(tmp_path: Path) -> Path:
    """Twenty files of one SOP Instance UID; the first is much larger (slower to
    read) than the others, so that the others are named first."""
    folder = tmp_path / "clash"
    folder.mkdir()
    for number in range(20):
        ds = datasets.multiframe(24 * 1024 * 1024) if number == 0 else datasets.ct_slice(8, 8)
        ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.14"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.save_as(folder / f"{number:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_first_in_source_order_wins_a_name(
    clashing: Path, tmp_path: Path, workers: str
) -> None:
    sources = sorted(clashing.iterdir())
    out = tmp_path / "out"
    result = cli("export", clashing, out, "-t", "{SOPInstanceUID}.dcm", "-w", workers, "-j", "8")
    assert result.returncode == 1
    assert files(out) == ["1.2.826.0.1.3680043.8.498.14.dcm"]
    assert (out / files(out)[0]).read_bytes() == pydicom_bytes(sources[0])
    failed = result.stderr.splitlines()
    assert len(failed) == 19
    assert all("DuplicateDestinationError" in line for line in failed)
    assert str(sources[0]) not in result.stderr

    suffixed = tmp_path / "suffixed"
    result = cli(
        "export", clashing, suffixed, "-t", "{SOPInstanceUID}.dcm", "-w", workers,
        "-j", "8", "--on-conflict", "suffix",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout).startswith("20 written, 0 skipped, 0 failed")
    for number, source in enumerate(sources):
        name = "1.2.826.0.1.3680043.8.498.14" + (f"-{number}" if number else "") + ".dcm"
        assert (suffixed / name).read_bytes() == pydicom_bytes(source), name


async def _slow_first(ds: Dataset) -> None:
    """Earlier items take longer: without ordered claims, later ones would win."""
    await anyio.sleep(0.02 * (10 - int(ds.InstanceNumber)))


@pytest.mark.anyio
@pytest.mark.parametrize("on_conflict", ["fail", "suffix"])
async def test_name_clashes_in_memory_follow_source_order(
    tmp_path: Path, on_conflict: Any
) -> None:
    items = []
    for number in range(10):
        ds = datasets.ct_slice(8, 8)
        ds.InstanceNumber = number
        ds.PatientID = "SAME"
        items.append(ds)
    report = await aiodicom.export(
        items,
        tmp_path,
        template="{PatientID}.dcm",
        transform=_slow_first,
        concurrency=10,
        on_conflict=on_conflict,
    )
    by_number = {
        pydicom.dcmread(item.destination).InstanceNumber: item
        for item in report.items
        if item.status is Status.WRITTEN and item.destination is not None
    }
    if on_conflict == "fail":
        assert list(by_number) == [0]
        assert report.failed == 9
        assert all(isinstance(item.error, DuplicateDestinationError) for item in report.failures)
    else:
        assert report.ok
        assert {n: Path(item.destination or "").name for n, item in by_number.items()} == {
            n: "SAME.dcm" if n == 0 else f"SAME-{n}.dcm" for n in range(10)
        }


# --------------------------------------------------------------------------- naming


def test_template_fallback_and_source_file_name(archive: Path, tmp_path: Path) -> None:
    ct = pydicom.dcmread(archive / "ct.dcm")
    del ct.InstitutionName
    ct.save_as(archive / "ct.dcm")
    mr = pydicom.dcmread(archive / "sub" / "mr.dcm")
    out = tmp_path / "out"
    result = cli(
        "export", archive, out, "-t", "{InstitutionName:-NO INSTITUTION}/{source_stem}.dcm"
    )
    assert result.returncode == 0, result.stderr
    assert files(out) == sorted(["NO INSTITUTION/ct.dcm", f"{mr.InstitutionName}/mr.dcm"])

    line = usage_error(cli("export", archive, out, "-t", "{PatientID:-}/{source_nam}"))
    assert "fallback of {PatientID} is empty" in line
    line = usage_error(cli("export", archive, out, "-t", "{source_nam}.dcm"))
    assert "did you mean {source_name}?" in line


@pytest.mark.anyio
async def test_a_dataset_without_a_file_name_uses_the_fallback(tmp_path: Path) -> None:
    generated = datasets.ct_slice(8, 8)
    ds = Dataset()  # not read from a file: no file name
    ds.update(generated)
    ds.file_meta = generated.file_meta
    report = await aiodicom.export(
        [ds],
        tmp_path,
        template="{source_stem:-memory}/{SOPInstanceUID}.dcm",
    )
    assert report.ok
    assert {Path(item.destination or "").parent.name for item in report.items} == {"memory"}
    report = await aiodicom.export([ds], tmp_path / "b", template="{source_name}.dcm")
    (failure,) = report.failures
    assert "no file name" in str(failure.error)


# ------------------------------------------------------------------------- transform

RULES = '''
import os

import anyio


def strict(ds):
    """Refuse MR; mark the rest."""
    if ds.Modality == "MR":
        raise ValueError("no MR in this export")
    ds.StationName = "STRICT"


async def tag(ds):
    await anyio.sleep(0)
    ds.StationName = "ASYNC"
    return ds


def touch(ds):
    with open(os.environ["RULES_MARKER"], "a") as marker:
        marker.write("read\\n")
'''


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    """A folder holding ``rules.py``, a module of transforms of one's own."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "rules.py").write_text(textwrap.dedent(RULES))
    return folder


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_transform_from_the_current_folder_fails_only_its_item(
    archive: Path, rules: Path, tmp_path: Path, workers: str
) -> None:
    out = tmp_path / "out"
    result = cli("export", archive, out, "--transform", "rules:strict", "-w", workers, cwd=rules)
    assert result.returncode == 1
    assert summary(result.stdout).startswith("1 written, 5 skipped, 1 failed")
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"FAILED {archive / 'sub' / 'mr.dcm'}: TransformError: ")
    assert "rules:strict" in line
    assert "ValueError: no MR in this export" in line
    (written,) = out.rglob("*.dcm")
    assert pydicom.dcmread(written).StationName == "STRICT"

    result = cli("export", archive, tmp_path / "async", "--transform", "rules:tag", cwd=rules)
    assert result.returncode == 0, result.stderr
    assert {pydicom.dcmread(p).StationName for p in (tmp_path / "async").rglob("*.dcm")} == {
        "ASYNC"
    }


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("_example_deidentify_export", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _assert_deidentified(path: Path, source: Dataset, example: Any) -> None:
    ds = pydicom.dcmread(path)
    assert ds.PatientName == "ANONYMOUS"
    assert ds.PatientID == example.pseudonym(str(source.PatientID))
    assert ds.PatientID != source.PatientID
    assert ds.PatientIdentityRemoved == "YES"
    for keyword in example.REMOVE:
        assert keyword not in ds, keyword
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds[keyword].value == example.new_uid(str(source[keyword].value))
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert not any(element.tag.is_private for element in ds)
    assert ds.get("PixelData") == source.get("PixelData")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_deidentification_example_through_the_command(
    archive: Path, tmp_path: Path, workers: str
) -> None:
    example = _load_example()
    out = tmp_path / "out"
    result = cli(
        "export", archive, out, "--transform", f"{EXAMPLE}:deidentify", "-w", workers,
        "-t", "{PatientID}/{SOPInstanceUID}.dcm",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout).startswith("2 written, 5 skipped, 0 failed")
    for relative in INSTANCES:
        source = pydicom.dcmread(archive / relative)
        new = example.new_uid(str(source.SOPInstanceUID))
        (path,) = out.rglob(f"{new}.dcm")
        assert path.parent.name == example.pseudonym(str(source.PatientID))
        _assert_deidentified(path, source, example)
    assert str(pydicom.dcmread(archive / "ct.dcm").PatientID) not in "".join(files(out))


@pytest.mark.anyio
async def test_the_deidentification_example_runs_as_it_is(tmp_path: Path) -> None:
    example = _load_example()
    sources = [pydicom_file(name) for name in example.PYDICOM_EXAMPLES]
    assert await example.main(sources, str(tmp_path / "out")) == 0
    written = list((tmp_path / "out").rglob("*.dcm"))
    assert len(written) == len(sources)
    by_uid = {pydicom.dcmread(p).SOPInstanceUID: p for p in written}
    for source in map(pydicom.dcmread, sources):
        _assert_deidentified(by_uid[example.new_uid(str(source.SOPInstanceUID))], source, example)


def _station(ds: Dataset) -> Dataset:
    """A transform returning a new dataset (module-level: worker processes import it)."""
    out = Dataset()
    out.update(ds)
    out.file_meta = ds.file_meta
    out.StationName = "NEW"
    return out


async def _refuse_ct(ds: Dataset) -> None:
    if ds.Modality == "CT":
        raise KeyError("CT")


def _returns_a_number(ds: Dataset) -> int:
    return 42


@pytest.mark.anyio
@pytest.mark.parametrize("workers", [1, 2])
async def test_transforms_sync_and_async(archive: Path, tmp_path: Path, workers: int) -> None:
    report = await aiodicom.export(archive, tmp_path / "a", transform=_station, workers=workers)
    assert report.written == 2
    written = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    stations = {pydicom.dcmread(p, force=True).StationName for p in written}
    assert stations == {"NEW"}  # a plain Dataset: written without a preamble, as pydicom does

    report = await aiodicom.export(archive, tmp_path / "b", transform=_refuse_ct, workers=workers)
    (failure,) = report.failures
    assert failure.source == str(archive / "ct.dcm")
    assert failure.destination is None
    assert isinstance(failure.error, TransformError)
    assert "_refuse_ct failed: KeyError: 'CT'" in str(failure.error)
    assert report.written == 1

    report = await aiodicom.export(
        archive, tmp_path / "c", transform=_returns_a_number, workers=workers
    )
    assert report.failed == 2
    assert all("returned int" in str(item.error) for item in report.failures)


def test_transform_errors_are_usage_errors(archive: Path, rules: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for spec, message in [
        ("nosuchmodule:f", "cannot import 'nosuchmodule'"),
        ("rules:nothing", "'rules' has no 'nothing'"),
        ("rules", "MODULE:FUNCTION"),
        ("missing.py:f", "no file"),
    ]:
        line = usage_error(cli("export", archive, out, "--transform", spec, cwd=rules))
        assert message in line, line
    assert not out.exists()


# ------------------------------------------------------------------ sink factories


@pytest.mark.anyio
async def test_a_callable_destination_gets_a_sink_per_name(archive: Path, tmp_path: Path) -> None:
    buffers: dict[str, bytearray] = {}
    report = await aiodicom.export(
        archive, lambda name: buffers.setdefault(name, bytearray()), template="{source_name}"
    )
    assert report.ok
    assert {name: bytes(data) for name, data in buffers.items()} == {
        "ct.dcm": pydicom_bytes(pydicom_file("CT_small.dcm")),
        "mr.dcm": pydicom_bytes(pydicom_file("MR_small.dcm")),
    }
    assert {item.destination for item in report.items if item.status is Status.WRITTEN} == {
        "ct.dcm",
        "mr.dcm",
    }
    out = tmp_path / "flat"
    out.mkdir()
    report = await aiodicom.export(
        archive, lambda name: LocalFile(str(out / name)), template="{SOPInstanceUID}.dcm"
    )
    assert report.written == 2
    assert outputs_by_uid(out) == expected_outputs()
    with pytest.raises(TypeError, match="a sink holds one file"):
        await aiodicom.export(archive, LocalFile(str(out / "one.dcm")))
    with pytest.raises(ValueError, match="cannot read back what a callable destination wrote"):
        await aiodicom.export(archive, lambda name: bytearray(), verify=True)


class _Full:
    """A sink whose destination is full, or (alternating) refuses."""

    def __init__(self, name: str, number: list[int], alternate: bool) -> None:
        number[0] += 1
        self.code = errno.EACCES if alternate and number[0] % 2 else errno.ENOSPC

    def open(self, *, exist_ok: bool) -> Any:
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.anyio
async def test_a_run_of_identical_destination_errors_stops_the_export(tmp_path: Path) -> None:
    items = []
    for number in range(40):
        ds = datasets.ct_slice(8, 8)
        ds.SOPInstanceUID = f"1.2.3.{number}"
        items.append(ds)
    count = [0]
    with pytest.raises(DestinationError, match="stopped after 20 items in a row") as caught:
        await aiodicom.export(items, lambda name: _Full(name, count, False), concurrency=1)
    report = caught.value.report
    assert isinstance(report, ExportReport)
    assert report.stopped_early
    assert report.failed == 20
    assert isinstance(caught.value.__cause__, OSError)
    assert "No space left on device" in str(caught.value)

    count = [0]  # errors that differ from one item to the next are item failures
    report = await aiodicom.export(items, lambda name: _Full(name, count, True), concurrency=4)
    assert report.failed == 40
    assert not report.stopped_early


def test_the_command_stops_at_a_run_of_identical_destination_errors(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    out = tmp_path / "out"
    for number in range(40):
        ds = datasets.ct_slice(8, 8)
        ds.SOPInstanceUID = f"1.2.3.{number}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(folder / f"{number:03d}.dcm", enforce_file_format=True)
        (out / f"{ds.SOPInstanceUID}.dcm" / "x").mkdir(parents=True)  # folders in the way
    result = cli("export", folder, out, "-t", "{SOPInstanceUID}.dcm", "-j", "1", "-w", "1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len([line for line in lines if line.startswith("FAILED ")]) == 20
    assert lines[-1].startswith(
        "aiodicom export: stopped after 20 items in a row failed at the destination with "
        "the same error: IsADirectoryError"
    )
    assert "Traceback" not in result.stderr
    assert summary(result.stdout).endswith("; stopped early")


# ------------------------------------------------------------------------ pre-flight


def test_a_local_destination_that_cannot_be_created_fails_before_any_read(
    archive: Path, rules: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    marker = tmp_path / "marker"
    env = dict(os.environ, RULES_MARKER=str(marker))
    result = cli(
        "export", archive, blocker / "out", "--transform", "rules:touch", cwd=rules, env=env
    )
    line = usage_error(result)
    assert line.startswith(f"aiodicom export: error: cannot write to '{blocker / 'out'}': ")
    assert not marker.exists()  # nothing was read
    result = cli(
        "export", archive, tmp_path / "ok", "--transform", "rules:touch", cwd=rules, env=env
    )
    assert result.returncode == 0, result.stderr
    assert marker.read_text().count("read") == 2
    assert files(tmp_path / "ok") == sorted(files(tmp_path / "ok"))  # no probe left behind
    assert not [name for name in files(tmp_path / "ok") if "probe" in name]


def _aws_env() -> dict[str, str]:
    """The environment without any AWS credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_CONFIG_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def test_s3_pre_flight_wrong_bucket_and_missing_credentials(
    archive: Path, s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import s3fs

    endpoint = s3_storage_options["client_kwargs"]["endpoint_url"]
    endpoint_option = f"client_kwargs.endpoint_url={endpoint}"
    keys = ["--storage-option", "key=testing", "--storage-option", "secret=testing"]
    line = usage_error(
        cli(
            "export", archive, f"{s3_bucket}-missing/x", *keys, "--storage-option", endpoint_option
        )
    )
    assert "FileNotFoundError" in line
    assert "bucket" in line
    line = usage_error(
        cli(
            "export",
            archive,
            f"{s3_bucket}/x",
            "--storage-option",
            endpoint_option,
            env=_aws_env(),
        )
    )
    assert "NoCredentialsError" in line
    assert "--storage-option" in line

    # a key that looks like a number stays a string (as JSON it would be an int,
    # which botocore refuses); the probe leaves nothing behind
    result = cli(
        "export", archive, f"{s3_bucket}/x", "--storage-option", "key=12345",
        "--storage-option", "secret=67890", "--storage-option", endpoint_option, env=_aws_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fs = s3fs.S3FileSystem(**s3_storage_options)
    assert len(fs.find(s3_bucket)) == 2
    assert not fs.call_s3("list_multipart_uploads", Bucket=s3_bucket.removeprefix("s3://")).get(
        "Uploads"
    )
    result = cli(
        "export", archive, f"{s3_bucket}/y", "--storage-option-json", "key=12345",
        "--storage-option", "secret=67890", "--storage-option", endpoint_option, env=_aws_env(),
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_object_store_pre_flight_on_gcs_and_azure(
    gcs_bucket: str,
    gcs_storage_options: dict[str, Any],
    azure_container: str,
    azure_storage_options: dict[str, Any],
) -> None:
    import adlfs
    import gcsfs

    ct = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    for root, options, fs in [
        (gcs_bucket, gcs_storage_options, gcsfs.GCSFileSystem(**gcs_storage_options)),
        (
            azure_container,
            azure_storage_options,
            adlfs.AzureBlobFileSystem(**azure_storage_options),
        ),
    ]:
        with pytest.raises(DestinationError, match="cannot write to") as caught:
            await aiodicom.export([ct], f"{root}-missing/x", storage_options=options)
        assert isinstance(caught.value.__cause__, FileNotFoundError)
        assert caught.value.report is None
        report = await aiodicom.export([ct], f"{root}/x", storage_options=options)
        assert report.written == 1
        fs.invalidate_cache()
        assert [p.rsplit("/", 1)[1] for p in fs.find(root)] == [f"{ct.SOPInstanceUID}.dcm"]


@pytest.mark.anyio
async def test_the_pre_flight_comes_before_reading_any_source(tmp_path: Path) -> None:
    pulled: list[int] = []

    def sources() -> Iterator[Dataset]:
        pulled.append(1)
        yield datasets.ct_slice(8, 8)

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DestinationError) as caught:
        await aiodicom.export(sources(), blocker / "out")
    assert isinstance(caught.value.__cause__, OSError)
    assert pulled == []
    # a dry run creates nothing, and checks the folder it would create
    report = await aiodicom.export(sources(), tmp_path / "new" / "out", dry_run=True)
    assert report.written == 1
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------- usage errors


def _stub_without(tmp_path: Path, *modules: str) -> dict[str, str]:
    """An environment in which importing `modules` fails as if not installed."""
    stubs = tmp_path / "stubs"
    for module in modules:
        (stubs / module).mkdir(parents=True)
        (stubs / module / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n"
        )
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(stubs), path])))


def test_dask_options_without_the_extra_or_a_usable_scheduler(
    archive: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = _stub_without(tmp_path, "dask", "distributed")
    for flags in (["--dask"], ["--dask-scheduler", "tcp://127.0.0.1:8786"]):
        line = usage_error(cli("export", archive, out, *flags, env=env))
        assert "aiodicom's 'dask' extra" in line
        assert "pip install '.[dask]'" in line
    line = usage_error(cli("export", archive, out, "--dask-scheduler", "nonsense"))
    assert "--dask-scheduler 'nonsense'" in line
    line = usage_error(cli("export", archive, out, "--dask-scheduler", "http://127.0.0.1:8786"))
    assert "unknown address scheme 'http'" in line
    line = usage_error(cli("export", archive, out, "--dask-scheduler", "tcp://127.0.0.1:1"))
    assert "cannot reach it" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--storage-option", "key=1"], "--storage-option is only for a URL destination"),
        (["--storage-option-json", "a=nope"], "--storage-option-json 'a=nope'"),
        (["--storage-option", "novalue"], "--storage-option 'novalue' is not KEY=VALUE"),
        (["--source-storage-option", "=x"], "--source-storage-option '=x' is not KEY=VALUE"),
        (["--template", "{Nope}/{SOPInstanceUID}"], "unknown DICOM keyword {Nope}"),
        (["--on-conflict", "rename"], "invalid choice: 'rename'"),
        (["--include", ""], "patterns must be non-empty"),
        (["--report", "/no/such/folder/r.json"], "cannot write the report"),
        (["--report", "/proc/self/r.json"], "cannot write the report '/proc/self/r.json'"),
        (["--concurrency", "0"], "must be at least 1"),
    ],
)
def test_usage_errors_are_one_line_and_name_the_flags(
    archive: Path, tmp_path: Path, argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    line = usage_error(cli("export", archive, out, *argv))
    assert message in line, line
    assert "storage_options" not in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("nosuchproto://x", "Protocol not known: nosuchproto"),
        ("MISSING_SOURCE", "source"),
    ],
)
def test_unusable_sources_and_destinations(
    archive: Path, tmp_path: Path, destination: str, message: str
) -> None:
    if destination == "MISSING_SOURCE":
        result = cli("export", tmp_path / "nothing-here", tmp_path / "out")
    else:
        result = cli("export", archive, destination)
    assert message in usage_error(result)


def test_a_missing_protocol_package_names_the_extra(archive: Path, tmp_path: Path) -> None:
    env = _stub_without(tmp_path, "s3fs")
    line = usage_error(cli("export", archive, "s3://bucket/x", env=env))
    assert "install aiodicom's 's3' extra: pip install '.[s3]'" in line


def test_json_looking_storage_option_strings_get_a_note(archive: Path, tmp_path: Path) -> None:
    result = cli("export", archive, "memory://x", "--storage-option", "anon=true", "--dry-run")
    assert "--storage-option-json anon=true" in result.stderr


# --------------------------------------------------------------------------- output


def test_dry_run_prints_the_plan_even_when_quiet(archive: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = cli("export", archive, out, "--dry-run", "-q")
    assert result.returncode == 0, result.stderr
    planned = [line for line in result.stdout.splitlines() if line.startswith("planned ")]
    assert len(planned) == 2
    assert all(f" -> {out}{os.sep}" in line for line in planned)
    assert len([line for line in result.stdout.splitlines() if line.startswith("skipped ")]) == 5
    assert " written, " not in result.stdout  # -q: no summary
    assert not out.exists()


def test_failures_are_printed_once_with_the_destination_once(
    archive: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert cli("export", archive, out, "-q").returncode == 0
    result = cli("export", archive, out, "--no-clobber")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    for line in lines:
        assert line.startswith("FAILED ")
        assert line.endswith(": FileExistsError: File exists")
        destination = line.split(" -> ", 1)[1].rsplit(": FileExistsError", 1)[0]
        assert line.count(destination) == 1


def test_pydicoms_message_without_its_traceback(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(pydicom_file("SC_rgb_jpeg.dcm"), folder)  # pydicom cannot write its ImageType
    result = cli("export", folder, tmp_path / "out")
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "With tag (0008,0008) got exception" in line
    assert "Traceback" not in result.stderr


def test_the_summary_rate_counts_written_items() -> None:
    items = [
        ItemResult("a", "x/a", Status.WRITTEN, 100, 0.1),
        ItemResult("b", None, Status.SKIPPED, 0, 0.1, SourceSkipped("not DICOM")),
        ItemResult("c", None, Status.SKIPPED, 0, 0.1, SourceSkipped("not DICOM")),
        ItemResult("d", None, Status.FAILED, 0, 0.1, ValueError("x")),
    ]
    text = ExportReport(items=items, seconds=2.0).summary()
    assert re.search(r"\b0\.5 items/s\)", text), text


@pytest.mark.anyio
async def test_written_items_and_existing_names_do_not_count_towards_a_stop(
    tmp_path: Path,
) -> None:
    items = []
    for number in range(45):
        ds = datasets.ct_slice(8, 8)
        ds.SOPInstanceUID = f"1.2.3.{number}"
        items.append(ds)

    class EveryTwentieth:
        """Full, but every twentieth write goes through."""

        def __init__(self) -> None:
            self.count = 0

        def __call__(self, name: str) -> Any:
            self.count += 1
            return bytearray() if self.count % 19 == 0 else _Full(name, [0], False)

    report = await aiodicom.export(items, EveryTwentieth(), concurrency=1)
    assert report.written == 2
    assert report.failed == 43
    assert not report.stopped_early

    # 45 existing names with exist_ok=False: item failures, not a failing destination
    assert (await aiodicom.export(items, tmp_path, concurrency=1)).written == 45
    report = await aiodicom.export(items, tmp_path, concurrency=1, exist_ok=False)
    assert report.failed == 45
    assert all(isinstance(item.error, FileExistsError) for item in report.failures)
    assert not report.stopped_early


@pytest.mark.anyio
async def test_a_url_destination_inside_a_url_source_is_not_read_back(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://ux-{tmp_path.name}"
    fs.pipe_file(f"{root}/scans/ct.dcm", pydicom_bytes(pydicom_file("CT_small.dcm")))
    try:
        for _ in range(2):
            report = await aiodicom.export(f"{root}/scans", f"{root}/scans/out")
            assert report.ok
            assert report.written == 1
            (item,) = report.items
            assert item.source.endswith("/scans/ct.dcm")
    finally:
        fs.rm(root, recursive=True)


def test_the_probe_of_another_filesystem_leaves_nothing(tmp_path: Path) -> None:
    import fsspec
    from fsspec.implementations.dirfs import DirFileSystem

    from aiodicom.sinks.fsspec import FsspecFile

    memory = fsspec.filesystem("memory")
    root = f"/ux-{tmp_path.name}"
    memory.mkdir(root)
    fs = DirFileSystem(path=root, fs=memory)
    FsspecFile(fs, "out/.probe.dcm").probe()
    assert memory.find(root) == []
    memory.rm(root, recursive=True)


def test_dask_partitions_stop_at_their_own_run_of_destination_errors() -> None:
    import aiodicom.dask

    items = []
    for number in range(50):
        ds = datasets.ct_slice(8, 8)
        ds.SOPInstanceUID = f"1.2.3.{number}"
        items.append(ds)
    count = [0]
    report = aiodicom.dask.export(
        items, lambda name: _Full(name, count, False), partition_size=25, concurrency=1
    )
    assert report.failed == 40  # 20 per partition
    assert report.stopped_early


def test_deidentified_to_a_dicomweb_server(
    archive: Path, orthanc_dicomweb: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mixed archive through the de-identification example to Orthanc: the
    same skips, the transform applied before the instances leave."""
    import httpx

    example = _load_example()
    secret = f"ux-{os.getpid()}-{id(archive)}"  # fresh UIDs: Orthanc keeps first copies
    monkeypatch.setattr(example, "SECRET", secret.encode())
    env = dict(os.environ, DEID_SECRET=secret)
    transform = ["--transform", f"{EXAMPLE}:deidentify"]
    result = cli("export", archive, f"dicomweb+{orthanc_dicomweb}", *transform, env=env)
    assert result.returncode == 0, result.stderr
    assert summary(result.stdout).startswith("2 written, 5 skipped, 0 failed")
    rest = orthanc_dicomweb.removesuffix("/dicom-web")
    with httpx.Client(timeout=60) as client:
        for relative in INSTANCES:
            source = pydicom.dcmread(archive / relative)
            uid = example.new_uid(str(source.SOPInstanceUID))
            query = {"Level": "Instance", "Query": {"SOPInstanceUID": uid}}
            (found,) = client.post(f"{rest}/tools/find", json=query).json()
            stored = client.get(f"{rest}/instances/{found}/file").content
            path = archive.parent / f"{uid}.dcm"
            path.write_bytes(stored)
            _assert_deidentified(path, source, example)
