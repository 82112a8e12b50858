"""The ``aiodicom`` command: exit codes, one-line argument errors, --dry-run, --report."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from aiodicom.cli import DEMO_FILES, main, parse_storage_options
from tests import datasets
from tests.helpers import BROKEN_DICOM, pydicom_bytes, read_report

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """A folder with three CT slices (two in a subfolder)."""
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    for number in range(3):
        ds = datasets.ct_slice(16, 16)
        ds.SOPInstanceUID = f"1.2.3.{number}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = number
        ds.save_as(folder / ("sub" if number else "") / f"{number}.dcm")
    return folder


def outputs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_export_writes_everything_and_exits_0(
    scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["export", str(scans), str(out), "-j", "2"]) == 0
    written = outputs(out)
    assert len(written) == 3
    for path in written:
        source = next(scans.rglob(f"{path.stem.rsplit('.', 1)[-1]}.dcm"))
        assert path.read_bytes() == pydicom_bytes(source)
    captured = capsys.readouterr()
    assert "3 written, 0 skipped, 0 failed" in captured.out


def test_failures_are_listed_and_exit_1(
    scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (scans / "junk.dcm").write_bytes(BROKEN_DICOM)
    assert main(["export", str(scans), str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert captured.err.count("junk.dcm") == 1  # once, as it happened
    assert "FAILED " in captured.err
    assert "InvalidDicomError" in captured.err
    assert "--force" in captured.err  # the command's flag, not pydicom's force=True
    assert "force=True" not in captured.err
    assert len(outputs(tmp_path / "out")) == 3


def test_skip_existing_rerun_writes_nothing(
    scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["export", str(scans), str(out), "--skip-existing", "-q"]) == 0
    assert capsys.readouterr().out == ""
    stamps = [p.stat().st_mtime_ns for p in outputs(out)]
    assert main(["export", str(scans), str(out), "--skip-existing"]) == 0
    assert "0 written, 3 skipped, 0 failed" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in outputs(out)] == stamps


def test_no_clobber_fails_existing(scans: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["export", str(scans), str(out), "-q"]) == 0
    assert main(["export", str(scans), str(out), "--no-clobber", "-q"]) == 1


def test_dry_run_prints_the_plan_and_writes_nothing(
    scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        main(["export", str(scans), str(out), "--dry-run", "--template", "{InstanceNumber}.dcm"])
        == 0
    )
    assert not out.exists()
    lines = capsys.readouterr().out.splitlines()
    planned = sorted(line for line in lines if line.startswith("planned "))
    assert len(planned) == 3
    assert planned[0].endswith(f"-> {out / '0.dcm'}")
    assert "3 would write" in lines[-1]


def test_report_is_json_lines_with_every_item(scans: Path, tmp_path: Path) -> None:
    (scans / "junk.dcm").write_bytes(BROKEN_DICOM)
    report_path = tmp_path / "report.jsonl"
    status = main(
        ["export", str(scans), str(tmp_path / "out"), "--report", str(report_path), "-q"]
    )
    assert status == 1
    summary, items = read_report(report_path)
    assert summary["written"] == 3
    assert summary["failed"] == 1
    assert summary["bytes_written"] == sum(p.stat().st_size for p in outputs(tmp_path / "out"))
    assert len(items) == 4
    by_status = {item["status"] for item in items}
    assert by_status == {"written", "failed"}
    (failed,) = [item for item in items if item["status"] == "failed"]
    assert failed["source"].endswith("junk.dcm")
    assert failed["error"].startswith("InvalidDicomError")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "MISSING", "OUT"], "source 'MISSING' does not exist"),
        (["export", "SCANS", "nosuchproto://x"], "Protocol not known: nosuchproto"),
        (
            ["export", "SCANS", "OUT", "--template", "{Nope}/{SOPInstanceUID}"],
            "unknown DICOM keyword {Nope}",
        ),
        (["export", "SCANS", "OUT", "--template", "../{SOPInstanceUID}"], "bad template"),
        (["export", "SCANS", "OUT", "--concurrency", "0"], "must be at least 1"),
        (["export", "SCANS", "OUT", "--storage-option", "novalue"], "is not KEY=VALUE"),
        (["export", "SCANS"], "give at least one SOURCE and a DESTINATION"),
        (["export", "SCANS", "OUT", "--no-clobber", "--skip-existing"], "exclude each other"),
        (
            ["export", "SCANS", "OUT", "--report", "/no/such/folder/r.json"],
            "cannot write the report",
        ),
        (["export", "SCANS", "OUT", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_argument_errors_are_one_line_before_any_work(
    scans: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    out = tmp_path / "out"
    argv = [str(scans) if a == "SCANS" else str(out) if a == "OUT" else a for a in argv]
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("aiodicom")
    assert message in err
    assert not out.exists()


def run(argv: list[str]) -> int | str | None:
    """`main(argv)`'s exit status, whether returned or raised (argparse exits)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_storage_options_are_strings_json_when_asked_and_nested_keys() -> None:
    assert parse_storage_options(
        ["key=12345", "client_kwargs.endpoint_url=http://127.0.0.1:9000", "n=3"],
        ["anon=false", "retries=3", 'config_kwargs={"a": 1}'],
    ) == {
        "key": "12345",
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"},
        "n": "3",
        "anon": False,
        "retries": 3,
        "config_kwargs": {"a": 1},
    }
    assert parse_storage_options([]) is None


def test_demo_exports_pydicoms_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "exported"
    assert main(["demo", str(out)]) == 0
    written = outputs(out)
    assert len(written) == len(DEMO_FILES)
    expected = sorted(pydicom_bytes(get_testdata_file(name)) for name in DEMO_FILES)  # type: ignore[arg-type]
    assert sorted(p.read_bytes() for p in written) == expected
    assert f"{len(DEMO_FILES)} written" in capsys.readouterr().out


def test_python_dash_m_and_help(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiodicom", "export", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "--skip-existing" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "aiodicom"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "export" in result.stderr


def test_plain_log_lines_when_not_a_terminal(scans: Path, tmp_path: Path) -> None:
    (scans / "junk.dcm").write_bytes(BROKEN_DICOM)
    result = subprocess.run(
        [sys.executable, "-m", "aiodicom", "export", str(scans), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "\r" not in result.stderr
    assert "\x1b" not in result.stderr
    assert result.stderr.count("junk.dcm") == 1  # as it happens, not again at the end
    assert "3 written, 0 skipped, 1 failed" in result.stdout


def test_the_progress_bar_shows_items_bytes_rate_and_eta() -> None:
    from aiodicom import ExportProgress, ItemResult, Status
    from aiodicom.cli._progress import ProgressBar

    stream = io.StringIO()
    bar = ProgressBar(stream)
    ok = ItemResult("a.dcm", "out/a.dcm", Status.WRITTEN, 3 * 1024 * 1024, 0.1)
    bad = ItemResult("b.dcm", None, Status.FAILED, 0, 0.1, ValueError("broken"))
    bar.update(ExportProgress(ok, 1, 1, 0, 0, 3 * 1024 * 1024, 2.0, 4))
    bar.update(ExportProgress(bad, 2, 1, 0, 1, 3 * 1024 * 1024, 4.0, 4))
    bar.close()
    text = stream.getvalue()
    assert "\r" in text
    assert "FAILED b.dcm: ValueError: broken\n" in text
    last = text.rsplit("\r\x1b[2K", 1)[-1]
    assert "2/4 items" in last
    assert "3.0 MiB" in last
    assert "768.0 KiB/s" in last
    assert "ETA 0:04" in last
    assert "1 failed" in last
    assert "[#" in last


def test_ctrl_c_stops_the_export_and_leaves_no_partial_files(tmp_path: Path) -> None:
    import signal
    import time

    source = tmp_path / "in"
    source.mkdir()
    big = datasets.multiframe(24 * 1024 * 1024)
    for number in range(40):
        big.SOPInstanceUID = f"1.2.3.{number}"
        big.file_meta.MediaStorageSOPInstanceUID = big.SOPInstanceUID
        big.save_as(source / f"{number}.dcm")
    size = (source / "0.dcm").stat().st_size
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "aiodicom", "export", str(source), str(out), "-j", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.suffix == ".dcm" for p in out.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stdout.startswith("interrupted: ")
    written = outputs(out)
    assert 1 <= len(written) < 40
    for path in written:
        assert not path.name.endswith(".aiodicom-tmp")
        assert path.stat().st_size == size
