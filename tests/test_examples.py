"""Every example in examples/ runs, and does what its docstring says.

The examples are loaded from their files (examples/ is not a package).  Async ones
run on asyncio and trio (anyio's plugin); the trio program on trio.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import sys
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import httpx
import pydicom
import pytest
import trio
from pydicom import examples
from pydicom.dataset import Dataset

import aiodicom
from tests.helpers import FailingFile, pydicom_bytes

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses & co. look their module up
    spec.loader.exec_module(module)
    return module


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups."""
    inner = getattr(exc, "exceptions", None)
    if inner is None:
        yield exc
    else:
        for e in inner:
            yield from leaves(e)


def big_ct(pixel_data: Any) -> Dataset:
    ds = deepcopy(examples.ct)
    ds.PixelData = pixel_data
    return ds


# ----------------------------------------------------------------------------- quickstart


@pytest.mark.anyio
async def test_quickstart_writes_pydicom_bytes_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ct.dcm").write_bytes(b"old")  # replaced by the first write (exist_ok=True)
    quickstart = load("quickstart")
    await quickstart.main()
    expected = pydicom_bytes(examples.ct)
    # the first write overwrote the old file (exist_ok=True); the second refused to
    assert (tmp_path / "ct.dcm").read_bytes() == expected
    assert "not overwritten: [Errno 17] File exists: 'ct.dcm'" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == sorted(["ct.dcm", *(f"ct-{i}.dcm" for i in range(10))])
    for i in range(10):
        assert (tmp_path / f"ct-{i}.dcm").read_bytes() == expected


# ----------------------------------------------------------------------------- FastAPI


def upload_bytes(ds: Dataset) -> bytes:
    return pydicom_bytes(ds, enforce_file_format=True)


async def post(app: Any, data: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        files = {"file": ("upload.dcm", data, "application/dicom")}
        return await client.post("/instances", files=files)


@pytest.mark.anyio
async def test_fastapi_local_folder_stores_once_then_409(tmp_path: Path) -> None:
    service = load("fastapi_upload")
    folder = tmp_path / "store"
    app = service.create_app(str(folder))
    data = upload_bytes(examples.ct)
    uid = examples.ct.SOPInstanceUID

    first = await post(app, data)
    assert first.status_code == 201, first.text
    assert first.json()["sop_instance_uid"] == uid
    assert first.headers["location"] == f"/instances/{uid}"
    stored = folder / f"{uid}.dcm"
    assert stored.read_bytes() == pydicom_bytes(
        pydicom.dcmread(io.BytesIO(data)), enforce_file_format=True
    )

    # a different upload of the same instance: refused, the stored file untouched
    changed = deepcopy(examples.ct)
    changed.PatientName = "Someone^Else"
    second = await post(app, upload_bytes(changed))
    assert second.status_code == 409
    assert uid in second.json()["detail"]
    assert stored.read_bytes() == pydicom_bytes(
        pydicom.dcmread(io.BytesIO(data)), enforce_file_format=True
    )
    assert os.listdir(folder) == [f"{uid}.dcm"]  # no temporary files left


@pytest.mark.anyio
async def test_fastapi_concurrent_uploads_of_one_instance_one_wins(tmp_path: Path) -> None:
    service = load("fastapi_upload")
    app = service.create_app(str(tmp_path))
    data = upload_bytes(examples.mr)
    codes: list[int] = []

    async def upload() -> None:
        codes.append((await post(app, data)).status_code)

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(upload)
    assert sorted(codes) == [201] + [409] * 7
    assert os.listdir(tmp_path) == [f"{examples.mr.SOPInstanceUID}.dcm"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"this is not DICOM", "not a DICOM file"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x001.2\0", "SOP Instance UID"),
    ],
)
async def test_fastapi_rejects_bad_uploads_with_400(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    service = load("fastapi_upload")
    app = service.create_app(str(tmp_path / "store"))
    response = await post(app, data)
    assert response.status_code == 400
    assert reason in response.json()["detail"]
    assert not (tmp_path / "store").exists() or os.listdir(tmp_path / "store") == []


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
async def test_fastapi_uid_cannot_escape_the_folder(tmp_path: Path) -> None:
    service = load("fastapi_upload")
    app = service.create_app(str(tmp_path / "store"))
    ds = deepcopy(examples.ct)
    ds.SOPInstanceUID = "../../escaped"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    response = await post(app, upload_bytes(ds))
    assert response.status_code == 400
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.anyio
async def test_fastapi_s3_stores_once_then_409(
    s3_bucket: str, s3_storage_options: dict[str, Any]
) -> None:
    import s3fs

    service = load("fastapi_upload")
    app = service.create_app(f"{s3_bucket}/dicom", s3_storage_options)
    data = upload_bytes(examples.ct)
    uid = examples.ct.SOPInstanceUID

    first = await post(app, data)
    assert first.status_code == 201, first.text
    assert first.json()["location"] == f"{s3_bucket}/dicom/{uid}.dcm"
    fs = s3fs.S3FileSystem(**s3_storage_options)
    key = f"{s3_bucket}/dicom/{uid}.dcm"
    expected = pydicom_bytes(pydicom.dcmread(io.BytesIO(data)), enforce_file_format=True)
    assert fs.cat_file(key) == expected

    changed = deepcopy(examples.ct)
    changed.PatientName = "Someone^Else"
    second = await post(app, upload_bytes(changed))
    assert second.status_code == 409
    fs.invalidate_cache()
    assert fs.cat_file(key) == expected
    assert fs.ls(f"{s3_bucket}/dicom", detail=False) == [key.removeprefix("s3://")]


def test_fastapi_module_reads_its_destination_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIODICOM_UPLOAD_DESTINATION", str(tmp_path / "env-store"))
    service = load("fastapi_upload")
    response = anyio.run(post, service.app, upload_bytes(examples.ct))
    assert response.status_code == 201
    assert os.listdir(tmp_path / "env-store") == [f"{examples.ct.SOPInstanceUID}.dcm"]


# ----------------------------------------------------------------------------- trio


def test_trio_program_writes_every_copy_and_refuses_a_second_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = load("trio_concurrent")
    folder = tmp_path / "out"
    written = trio.run(program.main, str(folder))

    expected_names = sorted(
        f"{name}-{copy}.dcm" for name in program.DATASETS for copy in range(program.COPIES)
    )
    assert sorted(os.listdir(folder)) == expected_names
    assert sorted(Path(p).name for p in written) == expected_names
    for name in program.DATASETS:
        reference = pydicom_bytes(getattr(examples, name))
        for copy in range(program.COPIES):
            assert (folder / f"{name}-{copy}.dcm").read_bytes() == reference
    assert f"wrote {len(expected_names)} files" in capsys.readouterr().out

    # exist_ok=False: running again into the same folder fails for every file
    with pytest.raises(BaseException) as info:  # noqa: PT011 (a trio exception group)
        trio.run(program.main, str(folder))
    errors = list(leaves(info.value))
    assert errors
    assert all(isinstance(e, FileExistsError) for e in errors)
    assert sorted(os.listdir(folder)) == expected_names


# ----------------------------------------------------------------------------- custom sinks


@pytest.mark.anyio
async def test_checksum_sink_digest_matches_the_file(tmp_path: Path) -> None:
    checksum = load("checksum_sink")
    path = tmp_path / "ct.dcm"
    digest = await checksum.main(str(path))
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.read_bytes() == pydicom_bytes(examples.ct)


@pytest.mark.anyio
async def test_checksum_sink_large_pixel_data_and_failures(tmp_path: Path) -> None:
    checksum = load("checksum_sink")
    from aiodicom.sinks import LocalFile

    pixels = bytes(range(256)) * (40 * 1024)  # 10 MiB: passes through as slices
    path = tmp_path / "big.dcm"
    sink = checksum.ChecksumSink(LocalFile(path))
    await aiodicom.dcmwrite(sink, big_ct(pixels))
    assert sink.hexdigest == hashlib.sha256(pydicom_bytes(big_ct(pixels))).hexdigest()
    old = path.read_bytes()

    # exclusive create refused: no digest, file untouched
    sink = checksum.ChecksumSink(LocalFile(path))
    with pytest.raises(FileExistsError):
        await aiodicom.dcmwrite(sink, examples.ct, exist_ok=False)
    assert sink.hexdigest is None
    # a write failing part-way: no digest, file untouched, no temporary file
    with pytest.raises(OSError, match="disk on fire"):
        await aiodicom.dcmwrite(sink, big_ct(FailingFile(pixels, fail_at=3)))
    assert sink.hexdigest is None
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["big.dcm"]


@pytest.mark.anyio
async def test_socket_sink_example_sends_pydicom_bytes(anyio_backend: str) -> None:
    socket_sink = load("socket_sink")
    assert await socket_sink.main() == pydicom_bytes(examples.ct)


@pytest.mark.anyio
async def test_socket_sink_receiver_drops_a_failed_write() -> None:
    socket_sink = load("socket_sink")
    from anyio.abc import SocketAttribute

    pixels = bytes(range(256)) * (48 * 1024)  # 12 MiB, read from a "file" in pieces
    listener = (await anyio.create_tcp_listener(local_host="127.0.0.1")).listeners[0]
    port = listener.extra(SocketAttribute.local_port)
    received: list[bytes | None] = []
    async with listener, anyio.create_task_group() as tg:

        async def serve_two() -> None:
            for _ in range(2):
                received.append(await socket_sink.receive_file(await listener.accept()))

        tg.start_soon(serve_two)
        sink = socket_sink.SocketSink("127.0.0.1", port)
        with pytest.raises(OSError, match="disk on fire"):
            await aiodicom.dcmwrite(sink, big_ct(FailingFile(pixels, fail_at=3)))
        await aiodicom.dcmwrite(sink, big_ct(pixels))
    assert received == [None, pydicom_bytes(big_ct(pixels))]


# ----------------------------------------------------------------------------- bulk export


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["folder", "memory"])
async def test_export_folder_example_writes_then_resumes(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import fsspec
    from pydicom.data import get_testdata_file

    example = load("export_folder")
    sources = [get_testdata_file(name) for name in example.PYDICOM_EXAMPLES]
    if kind == "folder":
        destination = str(tmp_path / "out")
        fs, root = fsspec.filesystem("file"), destination
    else:
        root = f"/aiodicom-example-{tmp_path.name}"
        destination = f"memory://{root}"
        fs = fsspec.filesystem("memory")

    assert await example.main(sources, destination) == 0
    out = capsys.readouterr().out
    assert f"{len(sources)} written, 0 skipped, 0 failed" in out  # the first run
    assert f"0 written, {len(sources)} skipped, 0 failed" in out  # the rerun resumes

    for source in sources:
        ds = pydicom.dcmread(source)
        path = f"{root}/{ds.PatientID}/{ds.Modality}/{ds.SOPInstanceUID}.dcm"
        assert fs.cat_file(path) == pydicom_bytes(pydicom.dcmread(source)), path
    assert len(fs.find(root)) == len(sources)
    if kind == "memory":
        fs.rm(root, recursive=True)


@pytest.mark.anyio
async def test_export_to_dicomweb(
    orthanc_dicomweb: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """pydicom's example files, exported in one request, land in Orthanc whole."""
    example = load("export_to_dicomweb")
    files = example.files(None)
    assert await example.main(orthanc_dicomweb, files) == 0
    out = capsys.readouterr().out
    assert f"{len(files)} written, 0 skipped, 0 failed" in out
    for file in files:
        assert f"written {file} -> {orthanc_dicomweb}/studies/" in out
    orthanc = orthanc_dicomweb.removesuffix("/dicom-web")
    async with httpx.AsyncClient() as client:
        for file in files:
            uid = pydicom.dcmread(file, stop_before_pixels=True).SOPInstanceUID
            query = {"Level": "Instance", "Query": {"SOPInstanceUID": uid}}
            [instance] = (await client.post(f"{orthanc}/tools/find", json=query)).json()
            stored = (await client.get(f"{orthanc}/instances/{instance}/file")).content
            assert stored == pydicom_bytes(file, enforce_file_format=True)
