"""External validators: files written by aiodicom with ``enforce_file_format=True``
are judged by DCMTK's ``dcmdump`` and dicom3tools' ``dciodvfy`` exactly as the
same datasets written by :func:`pydicom.dcmwrite` are (exit status, error and
warning lines).

The tools come from the Debian packages ``dcmtk`` and ``dicom3tools`` (``.ci/run``
installs them).  A missing tool is a test FAILURE, never a skip.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

import aiodicom
from tests.datasets import GENERATED, close_buffers, ct_slice

pytestmark = pytest.mark.anyio

# pydicom's own example files, read and written again (a spread of transfer
# syntaxes, modalities and encodings)
TESTDATA = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "SC_rgb_small_odd.dcm",
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
    "MR_small_RLE.dcm",
    "reportsi.dcm",
    "rtdose.dcm",
    "UN_sequence.dcm",
    "empty_charset_LEI.dcm",
    "nested_priv_SQ.dcm",
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, (
        f"{name} is not installed: apt-get install dcmtk dicom3tools (see .ci/run)"
    )
    return path


def _run(argv: list[str], path: Path) -> tuple[int, list[str]]:
    """Exit status and the error/warning lines, with the file name taken out."""
    done = subprocess.run([*argv, str(path)], capture_output=True, encoding="latin-1", check=False)
    lines = []
    for line in (done.stdout + done.stderr).splitlines():
        if re.match(r"^\s*(E:|W:|F:|Error|Warning)", line):
            lines.append(line.replace(str(path), "<file>"))
    return done.returncode, lines


def dcmdump(path: Path) -> tuple[int, list[str]]:
    return _run([_tool("dcmdump"), "-q"], path)


def dciodvfy(path: Path) -> tuple[int, list[str]]:
    return _run([_tool("dciodvfy")], path)


def _cases(tmp: Path) -> dict[str, Callable[[], Dataset]]:
    cases: dict[str, Callable[[], Dataset]] = {
        name: (lambda f=factory: f(tmp)) for name, factory in GENERATED.items()
    }
    for name in TESTDATA:
        cases[name] = lambda n=name: pydicom.dcmread(get_testdata_file(n))
    return cases


CASE_NAMES = [*GENERATED, *TESTDATA]


def test_validators_are_installed() -> None:
    """The first thing CI checks: both tools exist and run."""
    for tool, flag in (("dcmdump", "--version"), ("dciodvfy", "-version")):
        done = subprocess.run([_tool(tool), flag], capture_output=True, text=True, check=False)
        assert done.stdout or done.stderr


async def test_a_good_file_is_accepted_by_both(tmp_path: Path) -> None:
    """The comparison below means something: a clean file passes both tools."""
    path = tmp_path / "ct.dcm"
    await aiodicom.dcmwrite(path, ct_slice(32, 32), enforce_file_format=True)
    assert dcmdump(path) == (0, [])
    # dciodvfy parses it and finds the CT Image IOD; what it still misses are
    # attributes our small dataset leaves out, not encoding errors
    done = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, check=False)
    output = (done.stdout + done.stderr).decode("latin-1")
    assert output.startswith("CTImage")
    assert "Missing attribute" in output
    assert not re.search(r"Bad|Invalid|Illegal|not even|Unrecognized", output)


async def test_a_broken_file_is_rejected(tmp_path: Path) -> None:
    """...and a truncated one is not (the tools do look at the bytes)."""
    path = tmp_path / "ct.dcm"
    await aiodicom.dcmwrite(path, ct_slice(32, 32), enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-1000])
    status, lines = dcmdump(path)
    assert status != 0 or lines


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # subprocess-bound; one loop is enough
@pytest.mark.parametrize("case", CASE_NAMES)
async def test_validators_judge_ours_as_pydicoms(case: str, tmp_path: Path) -> None:
    make = _cases(tmp_path)[case]
    theirs_ds, ours_ds = make(), make()
    theirs, ours = tmp_path / "theirs.dcm", tmp_path / "ours.dcm"
    try:
        try:
            pydicom.dcmwrite(theirs, theirs_ds, enforce_file_format=True)
        except Exception as exc:  # pydicom refuses it: so must we (and create nothing)
            with pytest.raises(type(exc)):
                await aiodicom.dcmwrite(ours, ours_ds, enforce_file_format=True)
            assert not ours.exists()
            return
        await aiodicom.dcmwrite(ours, ours_ds, enforce_file_format=True)
    finally:
        close_buffers(theirs_ds)
        close_buffers(ours_ds)
    assert ours.read_bytes() == theirs.read_bytes()
    assert dcmdump(ours) == dcmdump(theirs)
    assert dciodvfy(ours) == dciodvfy(theirs)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_buffer_and_memory_destinations_validate_too(tmp_path: Path) -> None:
    """The bytes a buffer or ``memory://`` receives are the same valid file."""
    import io

    import fsspec

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    theirs = tmp_path / "theirs.dcm"
    pydicom.dcmwrite(theirs, deepcopy(ds), enforce_file_format=True)
    buffer = io.BytesIO()
    await aiodicom.dcmwrite(buffer, deepcopy(ds), enforce_file_format=True)
    url = f"memory://aiodicom-validators-{tmp_path.name}/x.dcm"
    await aiodicom.dcmwrite(url, deepcopy(ds), enforce_file_format=True)
    for name, data in (
        ("buffer", buffer.getvalue()),
        ("memory", fsspec.filesystem("memory").cat_file(url)),
    ):
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(data)
        assert dcmdump(path) == dcmdump(theirs), name
        assert dciodvfy(path) == dciodvfy(theirs), name
