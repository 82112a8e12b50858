"""aiodicom.dask.export: same outputs as the single-machine export, on a real
LocalCluster of two worker processes; killed workers and restarts lose nothing
silently and leave nothing half-written."""

from __future__ import annotations

import io
import itertools
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import dask
import dask.bag as db
import pydicom
import pytest
from distributed import Client, LocalCluster
from pydicom.dataset import Dataset, FileDataset

import aiodicom
from aiodicom import DuplicateDestinationError, ExportProgress, Status, TemplateError
from aiodicom import dask as aiodask
from tests import datasets
from tests.datasets import PYDICOM_FILES, by_source_name
from tests.helpers import pydicom_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TEMP_SUFFIX = ".aiodicom-tmp"


# --------------------------------------------------------------------- helpers
# Module-level functions: the workers import them from this module.


def ct(number: int, size: int = 64) -> FileDataset:
    """A small CT slice with its own SOP Instance UID (built on whichever side calls)."""
    ds = datasets.ct_slice(size, size)
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.20.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = number
    return ds


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative name (temporary files included)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def published(folder: Path) -> dict[str, bytes]:
    """The files at final names: what a reader of the export sees."""
    return {name: data for name, data in tree(folder).items() if not name.endswith(TEMP_SUFFIX)}


def single_machine(sources: Any, destination: Any, **options: Any) -> aiodicom.ExportReport:
    async def run() -> aiodicom.ExportReport:
        return await aiodicom.export(sources, destination, **options)

    return anyio.run(run)


def outcome(report: aiodicom.ExportReport) -> dict[str, tuple[Status, str | None]]:
    """Status and error type by source."""
    return {
        item.source: (item.status, type(item.error).__name__ if item.error else None)
        for item in report.items
    }


def write_sources(folder: Path, count: int, size: int = 64) -> dict[str, bytes]:
    """`count` CT files in `folder`; returns the expected export, by output name."""
    folder.mkdir()
    expected = {}
    for number in range(count):
        ds = ct(number, size)
        pydicom.dcmwrite(folder / f"{number:04d}.dcm", ds)
        expected[f"{number:04d}.dcm"] = pydicom_bytes(ds)
    return expected


def by_instance_number(dataset: Dataset) -> str:
    return f"{int(dataset.InstanceNumber):04d}.dcm"


def kill_once_at(marker: str, number: int) -> Any:
    """A template that kills its worker process (SIGKILL) when naming item `number`,
    once (`marker` records that it did), and names items by instance number."""

    def template(dataset: Dataset) -> str:
        if int(dataset.InstanceNumber) == number and not os.path.exists(marker):
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return by_instance_number(dataset)

    return template


def slowly_by_instance_number(dataset: Dataset) -> str:
    """Name by instance number, taking a while (so tasks are in flight for a restart)."""
    threading.Event().wait(0.02)
    return by_instance_number(dataset)


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock", threading.Lock())


def fail_unpicklably(dataset: Dataset) -> str:
    raise Unpicklable()


CLASHING_UID = "1.2.826.0.1.3680043.8.498.20.900"


def clashing(number: int) -> FileDataset:
    """Items 1 and 2 share one SOP Instance UID (told apart by InstanceNumber);
    others have their own."""
    ds = ct(number)
    if number in (1, 2):
        ds.SOPInstanceUID = CLASHING_UID
        ds.file_meta.MediaStorageSOPInstanceUID = CLASHING_UID
    return ds


@dataclass(frozen=True)
class HoldBack:
    """A transform: the item with InstanceNumber `number` waits until the file
    `released` exists (the test creates it once the other item of its name is
    reported, so that one was written first).  Works in worker processes too."""

    number: int
    released: str

    def __call__(self, dataset: Dataset) -> None:
        if int(dataset.InstanceNumber) != self.number:
            return
        for _ in range(6000):
            if os.path.exists(self.released):
                return
            time.sleep(0.01)
        raise TimeoutError(f"{self.released} was never created")


# -------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as local_cluster:
        yield local_cluster


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    """A client of the two-process cluster; not the default client, so that
    ``client=None`` means the local scheduler in the other tests."""
    with Client(cluster, set_as_default=False) as dask_client:
        dask_client.wait_for_workers(2)
        yield dask_client


# ---------------------------------------------------------------------- parity


def test_pydicom_files_on_two_workers_match_the_single_machine_export(
    tmp_path: Path, client: Client
) -> None:
    options: dict[str, Any] = {"template": by_source_name, "force": True}
    expected = single_machine(PYDICOM_FILES, tmp_path / "single", **options)

    report = aiodask.export(
        PYDICOM_FILES, tmp_path / "dask", client=client, partition_size=24, **options
    )

    assert len(report.items) == len(PYDICOM_FILES)
    assert outcome(report) == outcome(expected)
    assert report.written == expected.written > 150
    assert report.bytes_written == expected.bytes_written
    assert tree(tmp_path / "dask") == tree(tmp_path / "single")
    written = {item.destination for item in report.items if item.status is Status.WRITTEN}
    assert len(written) == report.written
    for item in report.items:
        if item.status is Status.WRITTEN:
            assert item.destination is not None
            assert Path(item.destination).read_bytes() == pydicom_bytes(item.source)


def test_generated_datasets_in_memory_and_from_a_bag_match_pydicom(
    tmp_path: Path, client: Client
) -> None:
    generated = datasets.variety()
    for number, ds in enumerate(generated):
        ds.SOPInstanceUID = f"1.2.3.{number}"
    expected = {f"{ds.SOPInstanceUID}.dcm": pydicom_bytes(ds) for ds in generated}
    expected |= {f"{ct(n).SOPInstanceUID}.dcm": pydicom_bytes(ct(n)) for n in range(12)}
    bag = db.from_sequence(range(12), npartitions=3).map(ct)

    shipped = aiodask.export(
        generated, tmp_path, client=client, partition_size=2, template="{SOPInstanceUID}.dcm"
    )
    built_on_workers = aiodask.export(
        bag, tmp_path, client=client, template="{SOPInstanceUID}.dcm", exist_ok=False
    )

    assert shipped.ok
    assert shipped.written == len(generated)
    assert built_on_workers.ok
    assert built_on_workers.written == 12
    assert tree(tmp_path) == expected


def test_s3_on_two_workers_matches_the_single_machine_export(
    tmp_path: Path, client: Client, s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import s3fs

    files = PYDICOM_FILES[::6]
    options: dict[str, Any] = {
        "template": by_source_name,
        "force": True,
        "storage_options": s3_storage_options,
    }
    bag = db.from_sequence(range(6), npartitions=2).map(ct)
    single = single_machine(files, f"{s3_bucket}/single", **options)
    single_machine(
        [ct(n) for n in range(6)],
        f"{s3_bucket}/single-ct",
        **options | {"template": by_instance_number},
    )

    report = aiodask.export(files, f"{s3_bucket}/dask", client=client, partition_size=8, **options)
    from_bag = aiodask.export(
        bag, f"{s3_bucket}/dask-ct", client=client, **options | {"template": by_instance_number}
    )

    assert outcome(report) == outcome(single)
    assert report.written == single.written > 20
    assert from_bag.ok
    assert from_bag.written == 6
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.invalidate_cache()

    def objects(prefix: str) -> dict[str, bytes]:
        names = sorted(fs.find(f"{s3_bucket}/{prefix}"))
        return {name.split(f"/{prefix}/", 1)[1]: fs.cat_file(name) for name in names}

    assert objects("dask") == objects("single")
    assert objects("dask-ct") == objects("single-ct")
    assert objects("dask-ct") == {
        by_instance_number(ct(n)): pydicom_bytes(ct(n)) for n in range(6)
    }
    for item in report.items:
        if item.status is Status.WRITTEN:
            assert item.destination is not None
            assert fs.cat_file(item.destination) == pydicom_bytes(item.source)


def test_sources_travel_as_references_and_are_read_on_the_workers(
    tmp_path: Path, client: Client, s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import s3fs

    from aiodicom.dask._plan import plan

    expected = write_sources(tmp_path / "in", 5)
    fs = s3fs.S3FileSystem(**s3_storage_options)
    fs.put(str(tmp_path / "in") + "/", f"{s3_bucket}/in/", recursive=True)

    local_refs = [p.refs for p in plan(tmp_path / "in", 2, None).partitions]
    url_refs = [p.refs for p in plan(f"{s3_bucket}/in/", 2, s3_storage_options).partitions]
    report = aiodask.export(
        f"{s3_bucket}/in/",
        tmp_path / "out",
        client=client,
        partition_size=2,
        source_storage_options=s3_storage_options,
        template=by_instance_number,
    )

    names = sorted(expected)
    assert local_refs == [[str(tmp_path / "in" / n) for n in names[i : i + 2]] for i in (0, 2, 4)]
    assert url_refs == [[f"{s3_bucket}/in/{n}" for n in names[i : i + 2]] for i in (0, 2, 4)]
    assert sorted(item.source for item in report.items) == [f"{s3_bucket}/in/{n}" for n in names]
    assert report.ok
    assert published(tmp_path / "out") == expected


# ------------------------------------------------------- workers that die


def test_a_worker_killed_mid_export_is_retried_and_nothing_is_half_written(
    tmp_path: Path, client: Client
) -> None:
    expected = write_sources(tmp_path / "in", 24, size=256)
    out = tmp_path / "out"
    marker = str(tmp_path / "killed")

    report = aiodask.export(
        tmp_path / "in",
        out,
        client=client,
        partition_size=6,
        concurrency=4,
        template=kill_once_at(marker, 9),
    )

    assert os.path.exists(marker)  # a worker process really died mid-partition
    assert report.ok, report.failures
    assert report.written == 24
    assert published(out) == expected  # complete files only, at their final names
    leftovers = set(tree(out)) - set(expected)
    assert all(name.endswith(TEMP_SUFFIX) for name in leftovers)

    again = aiodask.export(
        tmp_path / "in",
        out,
        client=client,
        partition_size=6,
        skip_existing=True,
        template=by_instance_number,
    )
    assert again.skipped == 24
    assert again.ok


def test_a_restart_mid_export_reports_lost_items_and_a_rerun_completes(
    tmp_path: Path, client: Client
) -> None:
    expected = write_sources(tmp_path / "in", 40, size=256)
    out = tmp_path / "out"
    restarted = False

    def restart_after_first_partition(progress: ExportProgress) -> None:
        nonlocal restarted
        if progress.done == 5 and not restarted:
            restarted = True
            client.restart()

    report = aiodask.export(
        tmp_path / "in",
        out,
        client=client,
        partition_size=5,
        concurrency=2,
        template=slowly_by_instance_number,
        progress=restart_after_first_partition,
    )

    assert restarted
    assert len(report.items) == 40  # every item is accounted for
    lost = report.failures
    assert lost, "a restart right after the first partition must catch others running"
    assert all(isinstance(item.error, aiodask.PartitionError) for item in lost)
    assert {item.status for item in report.items} == {Status.WRITTEN, Status.FAILED}
    files = published(out)
    assert all(files[name] == expected[name] for name in files)  # nothing half-written
    assert set(files) >= {Path(i.destination or "").name for i in report.items if i.ok}

    again = aiodask.export(
        tmp_path / "in",
        out,
        client=client,
        partition_size=5,
        skip_existing=True,
        template=by_instance_number,
    )

    assert again.ok
    assert again.written + again.skipped == 40
    lost_sources = {item.source for item in lost}
    assert {item.source for item in again.items if item.status is Status.WRITTEN} <= lost_sources
    assert published(out) == expected


# ------------------------------------------------------ the local scheduler


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_without_a_client_the_local_scheduler_gives_the_same_outputs(
    tmp_path: Path, backend: str
) -> None:
    files = PYDICOM_FILES[::10]
    options: dict[str, Any] = {"template": by_source_name, "force": True}
    expected = single_machine(files, tmp_path / "single", **options)
    seen: list[ExportProgress] = []

    report = aiodask.export(
        files,
        tmp_path / "dask",
        partition_size=4,
        backend=backend,
        progress=seen.append,
        **options,
    )

    assert outcome(report) == outcome(expected)
    assert tree(tmp_path / "dask") == tree(tmp_path / "single")
    assert [p.done for p in seen] == list(range(1, len(files) + 1))
    assert seen[-1].total == len(files)
    assert seen[-1].bytes_written == report.bytes_written


def test_skip_existing_and_exist_ok_hold_across_partitions(tmp_path: Path) -> None:
    expected = write_sources(tmp_path / "in", 10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "0003.dcm").write_bytes(b"already here")
    common: dict[str, Any] = {"partition_size": 3, "template": by_instance_number}

    refused = aiodask.export(tmp_path / "in", out, exist_ok=False, **common)
    skipped = aiodask.export(tmp_path / "in", out, skip_existing=True, **common)
    overwritten = aiodask.export(tmp_path / "in", out, **common)

    assert [(i.source, type(i.error)) for i in refused.failures] == [
        (str(tmp_path / "in" / "0003.dcm"), FileExistsError)
    ]
    assert refused.written == 9
    assert (skipped.skipped, skipped.written) == (10, 0)
    assert overwritten.written == 10
    assert published(out) == expected


def test_duplicate_names_across_partitions_are_reported(tmp_path: Path) -> None:
    report = aiodask.export(
        [ct(1), ct(1), ct(2)], tmp_path, partition_size=1, template="{SOPInstanceUID}.dcm"
    )

    assert report.written == 2
    [duplicate] = report.failures
    assert isinstance(duplicate.error, DuplicateDestinationError)
    assert tree(tmp_path) == {f"{ct(n).SOPInstanceUID}.dcm": pydicom_bytes(ct(n)) for n in (1, 2)}


def clash_sources(folder: Path) -> list[Path]:
    """Three files, one per partition of one item: the first two share a name."""
    folder.mkdir()
    paths = []
    for number in (1, 2, 3):
        paths.append(folder / f"{number}.dcm")
        pydicom.dcmwrite(paths[-1], clashing(number))
    return paths


def released_when(source: str, marker: Path) -> Any:
    """A progress callback that creates `marker` once `source` is reported."""

    def progress(now: ExportProgress) -> None:
        if now.item.source == source:
            marker.touch()

    return progress


@pytest.mark.parametrize(
    ("backend", "on_conflict", "written_last", "concurrency"),
    [
        *itertools.product(["asyncio", "trio"], ["fail", "suffix"], [1, 2], [16]),
        # one item at a time in each partition (and in the settling pass)
        ("asyncio", "suffix", 2, 1),
        ("trio", "fail", 2, 1),
    ],
)
def test_a_clash_across_partitions_is_won_by_the_first_in_source_order(
    tmp_path: Path, backend: str, on_conflict: Any, written_last: int, concurrency: int
) -> None:
    """Whichever of the two items of one name (in two partitions running at once)
    is written last, the result is the single-machine export's: the first in
    source order at the name, the other failed or at name-1.dcm."""
    paths = clash_sources(tmp_path / "in")
    marker = tmp_path / "released"
    first_written = str(paths[2 - written_last])  # 1 -> paths[1], 2 -> paths[0]
    options: dict[str, Any] = {
        "template": "{SOPInstanceUID}.dcm",
        "on_conflict": on_conflict,
        "concurrency": concurrency,
    }
    expected = single_machine(paths, tmp_path / "single", **options)
    seen: list[ExportProgress] = []

    def progress(now: ExportProgress) -> None:
        seen.append(now)
        released_when(first_written, marker)(now)

    with dask.config.set(num_workers=3):  # the three partitions at once
        report = aiodask.export(
            paths,
            tmp_path / "dask",
            partition_size=1,
            backend=backend,
            transform=HoldBack(written_last, str(marker)),
            progress=progress,
            **options,
        )

    assert outcome(report) == outcome(expected)
    assert published(tmp_path / "dask") == published(tmp_path / "single")
    assert published(tmp_path / "dask")[f"{CLASHING_UID}.dcm"] == pydicom_bytes(paths[0])
    relative = {
        item.source: os.path.relpath(item.destination, tmp_path / "dask")
        for item in report.items
        if item.destination is not None
    }
    assert relative == {
        item.source: os.path.relpath(item.destination, tmp_path / "single")
        for item in expected.items
        if item.destination is not None
    }
    if on_conflict == "fail":
        [loser] = report.failures
        assert loser.source == str(paths[1])
        assert isinstance(loser.error, DuplicateDestinationError)
        assert (report.written, report.failed) == (2, 1)
    else:
        assert report.ok
        assert relative[str(paths[1])] == f"{CLASHING_UID}-1.dcm"
        assert published(tmp_path / "dask")[f"{CLASHING_UID}-1.dcm"] == pydicom_bytes(paths[1])
    # progress: once per item, then once more per item the settling replaced
    assert [now.done for now in seen][:3] == [1, 2, 3]
    last = seen[-1]
    assert (last.done, last.written, last.failed) == (3, report.written, report.failed)
    assert last.bytes_written == report.bytes_written == expected.bytes_written


@pytest.mark.parametrize("keep", ["exist_ok=False", "skip_existing"])
def test_a_clash_across_partitions_keeps_the_rules_for_existing_files(
    tmp_path: Path, keep: str
) -> None:
    """This run's own output is overwritten by the first in source order (the
    later item was written first), but a file that was there before is kept."""
    paths = clash_sources(tmp_path / "in")
    name = f"{CLASHING_UID}.dcm"
    rules: dict[str, Any] = (
        {"exist_ok": False} if keep == "exist_ok=False" else {"skip_existing": True}
    )
    options: dict[str, Any] = {"template": "{SOPInstanceUID}.dcm", **rules}

    def run(out: Path, marker: Path) -> aiodicom.ExportReport:
        with dask.config.set(num_workers=3):
            return aiodask.export(
                paths,
                out,
                partition_size=1,
                transform=HoldBack(1, str(marker)),  # the second item is written first
                progress=released_when(str(paths[1]), marker),
                **options,
            )

    fresh = run(tmp_path / "fresh", tmp_path / "released-1")
    assert outcome(fresh) == outcome(single_machine(paths, tmp_path / "single", **options))
    assert outcome(fresh)[str(paths[0])] == (Status.WRITTEN, None)
    assert published(tmp_path / "fresh")[name] == pydicom_bytes(paths[0])

    (tmp_path / "before").mkdir()
    (tmp_path / "before" / name).write_bytes(b"there before the export")
    kept = run(tmp_path / "before", tmp_path / "released-2")
    status = Status.FAILED if keep == "exist_ok=False" else Status.SKIPPED
    assert outcome(kept)[str(paths[0])] == (status, "FileExistsError")
    assert outcome(kept)[str(paths[1])] == (Status.FAILED, "DuplicateDestinationError")
    assert (tmp_path / "before" / name).read_bytes() == b"there before the export"


def test_a_clash_between_bag_partitions_on_two_workers(tmp_path: Path, client: Client) -> None:
    """Datasets built on the workers (a bag): the clash is settled by building the
    bag partition again; the first in source order holds the name."""
    marker = tmp_path / "released"
    bag = db.from_sequence([1, 2, 3], npartitions=3).map(clashing)
    seen: list[ExportProgress] = []

    def progress(now: ExportProgress) -> None:
        seen.append(now)
        if int(now.item.bytes) and now.done == 1:
            marker.touch()  # the first item reported: not the held-back one

    report = aiodask.export(
        bag,
        tmp_path / "out",
        client=client,
        template="{SOPInstanceUID}.dcm",
        on_conflict="suffix",
        transform=HoldBack(1, str(marker)),
        progress=progress,
    )

    assert report.ok
    assert published(tmp_path / "out") == {
        f"{CLASHING_UID}.dcm": pydicom_bytes(clashing(1)),
        f"{CLASHING_UID}-1.dcm": pydicom_bytes(clashing(2)),
        f"{ct(3).SOPInstanceUID}.dcm": pydicom_bytes(clashing(3)),
    }


def test_fail_fast_starts_no_new_partition_after_a_failure(tmp_path: Path) -> None:
    sources = [str(tmp_path / f"missing-{number}.dcm") for number in range(30)]

    report = aiodask.export(sources, tmp_path / "out", partition_size=1, fail_fast=True)

    assert report.stopped_early
    assert not report.ok
    assert 1 <= report.failed < 30
    assert all(isinstance(item.error, FileNotFoundError) for item in report.items)


def test_errors_that_cannot_travel_and_file_objects_are_reported(tmp_path: Path) -> None:
    report = aiodask.export(
        [ct(1), io.BytesIO(pydicom_bytes(ct(2)))], tmp_path, template=fail_unpicklably
    )

    remote, file_object = sorted(report.items, key=lambda item: type(item.error).__name__)
    assert isinstance(remote.error, aiodask.RemoteError)
    assert str(remote.error).startswith("Unpicklable: ('holds a lock', <unlocked _thread.lock")
    assert isinstance(file_object.error, TypeError)
    assert "file object cannot be sent to Dask workers" in str(file_object.error)
    assert report.failed == 2
    assert tree(tmp_path) == {}


def test_bad_arguments_raise_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="partition_size"):
        aiodask.export([ct(1)], tmp_path, partition_size=0)
    with pytest.raises(ValueError, match="concurrency"):
        aiodask.export([ct(1)], tmp_path, concurrency=0)
    with pytest.raises(TypeError, match=r"distributed\.Client"):
        aiodask.export([ct(1)], tmp_path, client="tcp://127.0.0.1:8786")
    with pytest.raises(TemplateError):
        aiodask.export([ct(1)], tmp_path, template="{NotAKeyword}")
    with pytest.raises(ValueError, match="storage_options"):
        aiodask.export([ct(1)], tmp_path, storage_options={"anon": True})
    assert tree(tmp_path) == {}


# ------------------------------------------------------------------------ CLI


def test_the_cli_runs_on_a_dask_scheduler(
    tmp_path: Path, cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    from aiodicom.cli import main

    expected = write_sources(tmp_path / "in", 6)
    argv = [
        "export",
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        "-t",
        "{InstanceNumber:04d}.dcm",
    ]

    status = main([*argv, "--dask-scheduler", cluster.scheduler_address, "-q"])
    rerun = main([*argv, "--dask-scheduler", cluster.scheduler_address, "--skip-existing"])

    assert status == 0
    assert published(tmp_path / "out") == expected
    assert rerun == 0
    assert "0 written, 6 skipped, 0 failed" in capsys.readouterr().out


def test_the_cli_dask_options_exclude_each_other(tmp_path: Path) -> None:
    from aiodicom.cli import main

    argv = ["export", str(tmp_path), str(tmp_path / "out"), "--dask"]

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--dask-scheduler", "tcp://127.0.0.1:9"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()


HOLD_FIRST = '''
import os, time

def hold_first(ds):
    """Item 1 waits until item 2 (same name, other partition) is published."""
    if ds.InstanceNumber == 1:
        target = os.path.join({out!r}, ds.SOPInstanceUID + ".dcm")
        deadline = time.monotonic() + 60
        while not os.path.exists(target) and time.monotonic() < deadline:
            time.sleep(0.02)
    return ds
'''


def test_the_cli_reports_a_clash_across_partitions_once_per_item(
    tmp_path: Path,
    cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Settling a clash between partitions changes two results at the end: the
    report still has one line per item (the final one), and the loser's failure
    is printed once; the first in source order holds the name."""
    import functools
    import json

    from aiodicom.cli import main

    paths = clash_sources(tmp_path / "in")
    out = tmp_path / "out"
    rules = tmp_path / "rules.py"
    rules.write_text(HOLD_FIRST.format(out=str(out)), encoding="utf-8")
    monkeypatch.setattr(
        aiodask, "run_on_dask", functools.partial(aiodask.run_on_dask, partition_size=1)
    )
    report = tmp_path / "report.jsonl"
    argv = ["export", str(tmp_path / "in"), str(out), "-t", "{SOPInstanceUID}.dcm"]
    argv += ["--transform", f"{rules}:hold_first"]

    status = main([*argv, "--dask-scheduler", cluster.scheduler_address, "--report", str(report)])

    lines = [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines()]
    items = [line for line in lines if "source" in line]
    assert sorted(item["source"] for item in items) == sorted(map(str, paths))
    by_source = {item["source"]: item for item in items}
    assert by_source[str(paths[0])]["status"] == "written"
    assert by_source[str(paths[1])]["status"] == "failed"
    assert status == 1
    err = capsys.readouterr().err
    assert err.count("FAILED") == 1
    assert str(paths[1]) in err
    assert published(out)[f"{CLASHING_UID}.dcm"] == pydicom_bytes(paths[0])
