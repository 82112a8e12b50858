"""Bulk export over worker processes: the same promises as in one process.

Every test runs the export with ``workers=2`` (explicitly, so the mode does not
depend on this machine's cores) on asyncio and trio, and checks what the
single-process export promises: pydicom's bytes, one result per item, the
duplicate-name check across processes, skip/exist_ok, fail-fast, cancellation
leaving nothing partial, progress, and the automatic choice of the mode.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import anyio
import pydicom
import pytest
from pydicom.dataset import Dataset

import aiodicom
from aiodicom import DuplicateDestinationError, ExportOptions, Status
from aiodicom._export.destination import Root
from aiodicom._export.run import choose_workers
from tests import datasets
from tests.helpers import BROKEN_DICOM

pytestmark = pytest.mark.anyio


def _slice(number: int, *, patient: str = "P") -> Dataset:
    ds = datasets.ct_slice(16, 16)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    ds.PatientID = patient
    return ds


def _sources(folder: Path, count: int, **kwargs: Any) -> dict[str, bytes]:
    """Write `count` source files; return {SOPInstanceUID: pydicom's bytes}."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for number in range(count):
        ds = _slice(number, **kwargs)
        ds.save_as(folder / f"{number:04d}.dcm", enforce_file_format=True)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, pydicom.dcmread(folder / f"{number:04d}.dcm"))
        expected[ds.SOPInstanceUID] = buffer.getvalue()
    return expected


def _written(folder: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in folder.rglob("*.dcm")}


async def test_processes_write_pydicoms_bytes_and_report_every_item(tmp_path: Path) -> None:
    expected = _sources(tmp_path / "in", 80)
    seen: list[int] = []
    report = await aiodicom.export(
        tmp_path / "in",
        tmp_path / "out",
        template="{SOPInstanceUID}.dcm",
        workers=2,
        progress=lambda p: seen.append(p.done),
    )
    assert report.ok, report.failures
    assert report.written == 80
    assert len(report.items) == 80
    assert _written(tmp_path / "out") == expected
    assert seen == list(range(1, 81))
    assert sorted(item.source for item in report.items) == sorted(
        str(tmp_path / "in" / f"{n:04d}.dcm") for n in range(80)
    )
    assert report.bytes_written == sum(map(len, expected.values()))
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".aiodicom-tmp")]


async def test_duplicate_names_across_processes_are_reported_not_overwritten(
    tmp_path: Path,
) -> None:
    _sources(tmp_path / "in", 40)
    report = await aiodicom.export(
        tmp_path / "in", tmp_path / "out", template="{PatientID}.dcm", workers=2
    )
    assert report.written == 1
    assert report.failed == 39
    assert all(isinstance(item.error, DuplicateDestinationError) for item in report.failures)
    (written,) = [item for item in report.items if item.status is Status.WRITTEN]
    source = pydicom.dcmread(written.source)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, source)
    assert (tmp_path / "out" / "P.dcm").read_bytes() == buffer.getvalue()


async def test_skip_existing_and_no_clobber_hold_in_processes(tmp_path: Path) -> None:
    expected = _sources(tmp_path / "in", 70)
    first = await aiodicom.export(
        tmp_path / "in", tmp_path / "out", template="{SOPInstanceUID}.dcm", workers=2
    )
    assert first.written == 70
    again = await aiodicom.export(
        tmp_path / "in",
        tmp_path / "out",
        template="{SOPInstanceUID}.dcm",
        workers=2,
        skip_existing=True,
    )
    assert (again.written, again.skipped, again.failed) == (0, 70, 0)
    strict = await aiodicom.export(
        tmp_path / "in",
        tmp_path / "out",
        template="{SOPInstanceUID}.dcm",
        workers=2,
        exist_ok=False,
    )
    assert strict.failed == 70
    assert all(isinstance(item.error, FileExistsError) for item in strict.failures)
    assert _written(tmp_path / "out") == expected


async def test_fail_fast_stops_every_process_and_lists_what_was_written(
    tmp_path: Path,
) -> None:
    _sources(tmp_path / "in", 200)
    (tmp_path / "in" / "0100.dcm").write_bytes(BROKEN_DICOM)
    report = await aiodicom.export(
        tmp_path / "in",
        tmp_path / "out",
        template="{SOPInstanceUID}.dcm",
        workers=2,
        fail_fast=True,
        concurrency=2,
    )
    assert report.stopped_early
    assert report.failed >= 1
    on_disk = {p.stem for p in (tmp_path / "out").rglob("*.dcm")}
    listed = {
        Path(item.destination).stem for item in report.items if item.status is Status.WRITTEN
    }
    assert on_disk == listed  # every file that holds its bytes is in the report
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".aiodicom-tmp")]


async def test_cancelling_leaves_no_partial_files_and_stops_the_processes(
    tmp_path: Path,
) -> None:
    expected = _sources(tmp_path / "in", 300)
    before = _children()
    with anyio.move_on_after(1.5) as scope:
        await aiodicom.export(
            tmp_path / "in", tmp_path / "out", template="{SOPInstanceUID}.dcm", workers=2
        )
    written = _written(tmp_path / "out") if (tmp_path / "out").exists() else {}
    for name, data in written.items():
        assert data == expected[name]  # whole, or not there at all
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".aiodicom-tmp")]
    assert scope.cancelled_caught or len(written) == 300
    assert _children() - before == set()  # the worker processes are gone


def _children() -> set[str]:
    """This process's child processes (the test servers among them)."""
    return {pid for pid in os.listdir("/proc") if pid.isdigit() and _parent_of(pid) == os.getpid()}


def _parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


async def test_a_raising_progress_callback_raises_its_own_exception(tmp_path: Path) -> None:
    _sources(tmp_path / "in", 70)

    class Boom(Exception):
        pass

    def progress(_: Any) -> None:
        raise Boom("stop")

    with pytest.raises(Boom):
        await aiodicom.export(
            tmp_path / "in",
            tmp_path / "out",
            template="{SOPInstanceUID}.dcm",
            workers=2,
            progress=progress,
        )


@pytest.mark.parametrize("concurrency", [16, 1])
async def test_datasets_in_memory_mixed_with_paths(tmp_path: Path, concurrency: int) -> None:
    """The parent exports the datasets in memory itself, claiming their names
    from the gate the workers' claims go through (one item at a time too)."""
    expected = _sources(tmp_path / "in", 10)
    extras = [_slice(900 + number) for number in range(3)]
    for extra in extras:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, extra)
        expected[extra.SOPInstanceUID] = buffer.getvalue()
    report = await aiodicom.export(
        [extras[0], str(tmp_path / "in"), extras[1], extras[2]],
        tmp_path / "out",
        template="{SOPInstanceUID}.dcm",
        workers=2,
        concurrency=concurrency,
    )
    assert report.ok
    assert report.written == 13
    assert _written(tmp_path / "out") == expected


def test_the_mode_is_chosen_from_the_sources(tmp_path: Path) -> None:
    _sources(tmp_path / "many", 70)
    _sources(tmp_path / "few", 3)
    options = ExportOptions()
    cores = len(os.sched_getaffinity(0))
    assert choose_workers(str(tmp_path / "many"), options, None) == (cores if cores > 1 else 1)
    assert choose_workers(str(tmp_path / "few"), options, None) == 1
    assert choose_workers([_slice(1)] * 100, options, None) == 1  # datasets stay here
    assert choose_workers(str(tmp_path / "many"), ExportOptions(dry_run=True), None) == 1
    assert choose_workers(str(tmp_path / "few"), ExportOptions(workers=3), None) == 3
    memory = Root.parse("memory://out", None)
    assert choose_workers(str(tmp_path / "many"), ExportOptions(workers=3), None, memory) == 1
    unpicklable = ExportOptions(template=lambda ds: "x.dcm")
    assert choose_workers(str(tmp_path / "many"), unpicklable, None) == 1
    with pytest.raises(ValueError, match="workers"):
        ExportOptions(workers=0)
