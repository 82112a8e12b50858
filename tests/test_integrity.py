"""Integrity end to end: checksums computed while streaming, sent so that the store
refuses bytes that differ, and reported.

Against servers that really check what a client declares (moto accepts any
checksum, so it proves nothing here):

* SeaweedFS (S3): ``400 BadDigest`` for a wrong ``x-amz-checksum-crc32c`` /
  ``-sha256`` or ``Content-MD5``, on PutObject, UploadPart and at completion;
* Azurite 3.37 (Azure): ``400 Crc64Mismatch`` for a wrong ``x-ms-content-crc64``
  and ``400 Md5Mismatch`` for a wrong ``Content-MD5``, on Put Blob or Put Block;
* gcp-storage-emulator (GCS): ``400`` for a wrong declared ``crc32c`` / ``md5Hash``
  of a single-request upload.  No server installed here checks ``X-Goog-Hash`` on
  a resumable upload's final request (real GCS does); there, fake-gcs-server shows
  the fallback: the store's reported checksum is compared and a corrupt object is
  deleted at once.

The corruption: the store adapter's request is wrapped so that one byte of the
body is flipped *after* aiodicom computed its checksum, on the way out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import anycrc
import google_crc32c
import pydicom
import pytest
from pydicom.dataset import Dataset

import aiodicom
from aiodicom import Checksum, ChecksumMismatchError
from aiodicom._checksum import normalize_algorithm
from aiodicom.sinks import LocalFile
from aiodicom.sinks._stores import azure as azure_store
from aiodicom.sinks._stores.azure import AzureStore
from aiodicom.sinks._stores.gcs import GCSStore
from aiodicom.sinks._stores.s3 import S3Store
from tests import servers
from tests.datasets import ct_slice, multiframe
from tests.helpers import RemoteStore, corrupting, flipped, read_report

pytestmark = pytest.mark.anyio

KiB = 1024
MiB = 1024 * KiB
PART = 5 * MiB  # S3's minimum; parts of the others too


def encoded(ds: Dataset) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, deepcopy(ds))
    return out.getvalue()


def digest(data: bytes, algorithm: str) -> bytes:
    if algorithm == "crc32c":
        return int(google_crc32c.value(data)).to_bytes(4, "big")
    if algorithm == "crc64nvme":  # as Azure's x-ms-content-crc64 carries it
        return int(anycrc.Model("CRC64-NVME").calc(data)).to_bytes(8, "little")
    return hashlib.new(algorithm, data).digest()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


SMALL = ct_slice(64, 64)  # one request
BIG = multiframe(int(2.5 * PART))  # three parts


# --- the stores -------------------------------------------------------------------


class Target(RemoteStore):
    """One store: where to write, how to read back what is there."""

    def __init__(self, kind: str, root: str, options: dict[str, Any]) -> None:
        super().__init__(kind, root, options, PART)

    @property
    def kind(self) -> str:
        return self.name

    def leftovers(self) -> list[str]:
        """Unfinished uploads the store can list: S3 multipart uploads, Azure blobs
        with only uncommitted blocks (GCS resumable sessions cannot be listed)."""
        if self.kind == "s3":
            out = self.fs.call_s3("list_multipart_uploads", Bucket=self.bucket)
            return [upload["Key"] for upload in out.get("Uploads", [])]
        if self.kind == "az":
            container = self._container()
            committed = {blob.name for blob in container.list_blobs()}
            every = {blob.name for blob in container.list_blobs(include=["uncommittedblobs"])}
            return sorted(every - committed)
        return []

    def uncommitted_blocks(self, key: str) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            blocks: list[Any] = (
                self._container().get_blob_client(key).get_block_list("uncommitted")[1]
            )
        except ResourceNotFoundError:
            return []
        return blocks

    def _container(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(self.options["connection_string"])
        return service.get_container_client(self.bucket)

    def stored_checksums(self, key: str) -> dict[str, str]:
        """The checksums the store keeps for the object (base64)."""
        if self.kind == "s3":
            head = self.fs.call_s3(
                "head_object", Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
            )
            names = {"ChecksumCRC32C": "crc32c", "ChecksumSHA256": "sha256"}
            found = {names[name]: head[name] for name in names if name in head}
            found["type"] = head.get("ChecksumType", "")
            return found
        if self.kind == "az":
            properties = self._container().get_blob_client(key).get_blob_properties()
            md5 = properties.content_settings.content_md5
            return {"md5": b64(bytes(md5))} if md5 else {}
        info = self.fs.info(f"{self.bucket}/{key}", refresh=True)
        return {"crc32c": info["crc32c"], "md5": info["md5Hash"]}


@pytest.fixture
def seaweedfs(seaweedfs_bucket: str, seaweedfs_storage_options: dict[str, Any]) -> Target:
    # botocore resends a request refused with BadDigest (4 times by default, with
    # backoff): once is enough to show it, and keeps these tests quick
    options = {**seaweedfs_storage_options, "config_kwargs": {"retries": {"max_attempts": 2}}}
    return Target("s3", seaweedfs_bucket, options)


@pytest.fixture
def azurite(azure_container: str, azure_storage_options: dict[str, Any]) -> Target:
    return Target("az", azure_container, azure_storage_options)


@pytest.fixture
def gcs_emulator(gcs_emulator_bucket: str, gcs_emulator_storage_options: dict[str, Any]) -> Target:
    return Target("gs", gcs_emulator_bucket, gcs_emulator_storage_options)


@pytest.fixture
def fake_gcs(gcs_bucket: str, gcs_storage_options: dict[str, Any]) -> Target:
    return Target("gs", gcs_bucket, gcs_storage_options)


# --- the corruption ---------------------------------------------------------------


def second_part(number: int, *args: Any) -> bool:
    return number == 2


async def refused_write(
    target: Target, store: type, size: str, algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[ChecksumMismatchError, Any, bytes, bytes]:
    """Over an existing object, a write (one request, or its second part) whose
    bytes are corrupted on the way out: the store refuses it, aiodicom does not
    send it again, the old object stays and nothing is left behind.  Returns the
    error, the dataset, its bytes and the old object's."""
    ds = SMALL if size == "single" else BIG
    data = encoded(ds)
    previous = encoded(ct_slice(16, 16))
    await aiodicom.dcmwrite(target.url("x.dcm"), ct_slice(16, 16), storage_options=target.options)
    method, when = ("put", lambda *a: True) if size == "single" else ("upload_part", second_part)
    with (
        corrupting(monkeypatch, store, method, when=when) as calls,
        pytest.raises(ChecksumMismatchError) as info,
    ):
        await aiodicom.dcmwrite(target.sink("x.dcm", checksum=algorithm), ds)
    assert calls == [1]  # not sent again by aiodicom (a client library may, by its rules)
    assert info.value.destination == target.url("x.dcm")
    assert target.read("x.dcm") == previous
    assert target.leftovers() == []
    return info.value, ds, data, previous


# --- S3 (SeaweedFS) ----------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256", "md5"])
@pytest.mark.parametrize("size", ["single", "multipart"])
async def test_s3_rejects_corrupted_bytes(
    seaweedfs: Target, monkeypatch: pytest.MonkeyPatch, algorithm: str, size: str
) -> None:
    """SeaweedFS refuses the corrupted request (BadDigest); the upload is aborted,
    the old object stays, no multipart upload is left; the clean write then
    succeeds and the store's checksum is ours."""
    error, ds, data, _ = await refused_write(seaweedfs, S3Store, size, algorithm, monkeypatch)
    assert error.algorithm == algorithm
    if size == "single":
        assert error.expected == b64(digest(data, algorithm))
        assert error.part is None
    else:
        assert error.expected == b64(digest(data[PART : 2 * PART], algorithm))
        assert error.part == 2
    assert seaweedfs.url("x.dcm") in str(error)
    assert error.expected in str(error)
    assert "BadDigest" in str(error)

    result = await aiodicom.dcmwrite(seaweedfs.sink("x.dcm", checksum=algorithm), ds)
    assert seaweedfs.read("x.dcm") == data
    assert result.bytes == len(data)
    assert result.checksum == _checksum(data, algorithm)
    stored = seaweedfs.stored_checksums("x.dcm")
    if algorithm == "crc32c":
        assert stored["crc32c"] == b64(digest(data, "crc32c"))
        if size == "multipart":
            assert stored["type"] == "FULL_OBJECT"
    elif algorithm == "sha256" and size == "single":
        assert stored["sha256"] == b64(digest(data, "sha256"))
    elif algorithm == "sha256":  # S3 has only a composite SHA-256 for multipart
        parts = [data[i : i + PART] for i in range(0, len(data), PART)]
        joined = b"".join(digest(part, "sha256") for part in parts)
        assert stored["sha256"] == f"{b64(digest(joined, 'sha256'))}-{len(parts)}"


async def test_s3_new_object_is_not_published(
    seaweedfs: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        corrupting(monkeypatch, S3Store, "upload_part", when=second_part),
        pytest.raises(ChecksumMismatchError),
    ):
        await aiodicom.dcmwrite(seaweedfs.sink("new.dcm"), BIG, exist_ok=False)
    assert seaweedfs.read("new.dcm") is None
    assert seaweedfs.leftovers() == []


async def test_s3_without_checksum_the_corruption_goes_through(
    seaweedfs: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: with checksums off the same corruption is stored (so the hook
    corrupts, and the checksum is what catches it)."""
    data = encoded(SMALL)
    with corrupting(monkeypatch, S3Store, "put"):
        result = await aiodicom.dcmwrite(seaweedfs.sink("c.dcm", checksum=None), SMALL)
    assert result.checksum is None
    assert seaweedfs.read("c.dcm") == flipped(data)


async def test_s3_completion_checksum_is_checked(
    seaweedfs: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole-object CRC32C that does not match the parts is refused at
    CompleteMultipartUpload (FULL_OBJECT), and the upload is aborted."""
    from aiodicom.sinks._stores import _uploader

    real = _uploader.PartWriter._checksum

    def wrong_whole(self: Any, data: bytes, *, part: bool = True) -> Any:
        sums = real(self, data, part=part)
        if not part or self._store.upload_id is None:
            return sums
        self._whole["crc32c"].update(b"!")  # the object checksum no longer fits
        return sums

    monkeypatch.setattr(_uploader.PartWriter, "_checksum", wrong_whole)
    with pytest.raises(ChecksumMismatchError) as info:
        await aiodicom.dcmwrite(seaweedfs.sink("w.dcm"), BIG)
    assert info.value.part is None
    assert seaweedfs.read("w.dcm") is None
    assert seaweedfs.leftovers() == []


# --- Azure (Azurite) ---------------------------------------------------------------


@pytest.mark.parametrize("sent", ["crc64nvme", "md5"])
@pytest.mark.parametrize("algorithm", ["crc32c", "md5"])
@pytest.mark.parametrize("size", ["single", "multipart"])
async def test_azure_rejects_corrupted_bytes(
    azurite: Target, monkeypatch: pytest.MonkeyPatch, algorithm: str, size: str, sent: str
) -> None:
    """Azurite refuses the block (or Put Blob) whose CRC-64 (or, without anycrc,
    Content-MD5) does not match, and says its own value; nothing is committed,
    the old blob stays, no uncommitted blob is listed; the clean write stores our
    MD5 as the blob's Content-MD5 where it is one request (the service computes
    it) or the reported checksum is MD5 (a blob of several blocks reported by
    CRC32C gets none: no MD5 of the whole blob is computed for it)."""
    if sent == "md5":
        monkeypatch.setattr(azure_store, "crc64nvme_available", lambda: False)
    error, ds, data, _ = await refused_write(azurite, AzureStore, size, algorithm, monkeypatch)
    assert error.algorithm == sent  # what Azure checks, whatever is reported
    expected = data if size == "single" else data[PART : 2 * PART]
    assert error.expected == b64(digest(expected, sent))
    if sent == "crc64nvme":  # Azurite's message says what it computed
        assert error.actual == b64(digest(flipped(expected), sent))
        assert "Crc64Mismatch" in str(error)

    result = await aiodicom.dcmwrite(azurite.sink("x.dcm", checksum=algorithm), ds)
    assert azurite.read("x.dcm") == data
    assert result.checksum == _checksum(data, algorithm)
    kept = {"md5": b64(digest(data, "md5"))} if size == "single" or algorithm == "md5" else {}
    assert azurite.stored_checksums("x.dcm") == kept


async def test_azure_blocks_carry_the_crc64_azure_computes(
    azurite: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each staged block's x-ms-content-crc64 is the CRC-64 Azurite computes for
    what it received (the service echoes its own value)."""
    echoed: list[bytes] = []
    real = AzureStore.upload_part

    async def recording(self: Any, number: int, offset: int, data: bytes, sums: Any) -> Any:
        client = self._client
        stage = client.stage_block

        async def stage_block(*args: Any, **kwargs: Any) -> Any:
            headers = await stage(*args, **kwargs)
            echoed.append(bytes(headers["content_crc64"]))
            assert kwargs["transactional_content_crc64"] == headers["content_crc64"]
            assert "transactional_content_md5" not in kwargs
            return headers

        client.stage_block = stage_block
        try:
            return await real(self, number, offset, data, sums)
        finally:
            del client.stage_block

    monkeypatch.setattr(AzureStore, "upload_part", recording)
    data = encoded(BIG)
    await aiodicom.dcmwrite(azurite.sink("b.dcm"), BIG)
    assert azurite.read("b.dcm") == data
    blocks = [data[i : i + PART] for i in range(0, len(data), PART)]
    assert echoed == [digest(block, "crc64nvme") for block in blocks]


@pytest.fixture(scope="module")
def legacy_azurite_options() -> Iterator[dict[str, Any]]:
    """An Azurite older than 3.37, which refuses the CRC-64 header (module scope)."""
    with servers.azure_server(legacy=True) as connection_string:
        yield servers.azure_options(connection_string)


@pytest.fixture
def legacy_azurite(legacy_azurite_options: dict[str, Any]) -> Target:
    import adlfs

    name = servers.fresh_name("aiodicom")
    adlfs.AzureBlobFileSystem(**legacy_azurite_options).mkdir(name)
    return Target("az", f"az://{name}", legacy_azurite_options)


@contextmanager
def recording_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Record what each Put Blob / Put Block is sent with: its checksum header
    and whether the SDK may retry it."""
    from azure.storage.blob.aio import BlobClient

    sent: list[dict[str, Any]] = []
    for name in ("stage_block", "upload_blob"):
        real = getattr(BlobClient, name)

        def recorded(self: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            header = [key for key in kwargs if key.startswith("transactional_content_")]
            sent.append({"header": header, "retry_total": kwargs.get("retry_total")})
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(BlobClient, name, recorded)
    yield sent


@pytest.mark.parametrize("size", ["single", "multipart"])
async def test_azure_falls_back_to_md5_where_crc64_is_refused(
    legacy_azurite: Target,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    size: str,
) -> None:
    """Azurite 3.35 answers a CRC-64 header with 500 FeatureNotSupported.  The
    first request with one is sent without the SDK's retries (which would take
    over a minute), the refusal switches that account to Content-MD5 with one
    warning, the refused request is sent again with an MD5 (so are the parts of
    the write already under way), and the next write sends MD5s from the start;
    a corrupted request is then refused by the MD5."""
    monkeypatch.setattr(azure_store, "_CRC64_ACCEPTED", {})
    ds = SMALL if size == "single" else BIG
    data = encoded(ds)
    with recording_requests(monkeypatch) as sent, caplog.at_level("WARNING", "aiodicom"):
        await aiodicom.dcmwrite(legacy_azurite.sink("x.dcm"), ds)
    assert legacy_azurite.read("x.dcm") == data
    crc64 = ["transactional_content_crc64"]
    md5 = ["transactional_content_md5"]
    assert sent[0] == {"header": crc64, "retry_total": 0}
    refused = [request for request in sent if request["header"] == crc64]
    assert all(request["retry_total"] == 0 for request in refused)
    after = sent[len(refused) :]
    expected = 1 if size == "single" else -(-len(data) // PART)
    assert after == [{"header": md5, "retry_total": None}] * expected
    assert caplog.text.count("refuses Azure's CRC-64 checksum header") == 1

    sent.clear()
    with recording_requests(monkeypatch) as sent:
        await aiodicom.dcmwrite(legacy_azurite.sink("y.dcm"), ds)
    assert sent == [{"header": md5, "retry_total": None}] * expected
    assert legacy_azurite.read("y.dcm") == data

    error, *_ = await refused_write(legacy_azurite, AzureStore, size, "crc32c", monkeypatch)
    assert error.algorithm == "md5"
    part = data if size == "single" else data[PART : 2 * PART]
    assert error.expected == b64(digest(part, "md5"))


async def test_azure_crc64_accepted_once_is_not_probed_again(
    azurite: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an account that took a CRC-64, later requests keep the SDK's retries."""
    monkeypatch.setattr(azure_store, "_CRC64_ACCEPTED", {})
    with recording_requests(monkeypatch) as sent:
        await aiodicom.dcmwrite(azurite.sink("a.dcm"), SMALL)
        await aiodicom.dcmwrite(azurite.sink("b.dcm"), SMALL)
    crc64 = ["transactional_content_crc64"]
    assert sent == [
        {"header": crc64, "retry_total": 0},
        {"header": crc64, "retry_total": None},
    ]


def test_crc64nvme_is_azures_crc64() -> None:
    """The CRC-64 sent to Azure: CRC-64/NVME's check value, computed in pieces."""
    checksum = Checksum("crc64nvme")
    checksum.update(b"1234")
    checksum.update(memoryview(bytearray(b"56789")))
    assert checksum.digest() == (0xAE8B14860A799888).to_bytes(8, "big")
    assert checksum.size == 9
    with pytest.raises(ValueError, match="checksum must be one of"):
        normalize_algorithm("crc64nvme")  # the user's choices stay the three


async def test_azure_failed_new_blob_leaves_no_uncommitted_blocks(
    azurite: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new blob whose block was refused: its staged blocks go with it."""
    with (
        corrupting(monkeypatch, AzureStore, "upload_part", when=second_part),
        pytest.raises(ChecksumMismatchError),
    ):
        await aiodicom.dcmwrite(azurite.sink("new.dcm"), BIG, exist_ok=False)
    assert azurite.read("new.dcm") is None
    assert azurite.leftovers() == []
    assert azurite.uncommitted_blocks("new.dcm") == []


# --- GCS ---------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["crc32c", "md5", "sha256"])
async def test_gcs_rejects_corrupted_single_upload(
    gcs_emulator: Target, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """gcp-storage-emulator refuses the upload whose declared checksum differs
    (the message carries both values); the old object stays."""
    data = encoded(SMALL)
    previous = encoded(ct_slice(16, 16))
    await aiodicom.dcmwrite(
        gcs_emulator.url("x.dcm"), ct_slice(16, 16), storage_options=gcs_emulator.options
    )
    with (
        corrupting(monkeypatch, GCSStore, "put") as calls,
        pytest.raises(ChecksumMismatchError) as info,
    ):
        await aiodicom.dcmwrite(gcs_emulator.sink("x.dcm", checksum=algorithm), SMALL)
    assert calls == [1]
    error = info.value
    sent = "md5" if algorithm == "md5" else "crc32c"  # GCS knows no SHA-256
    assert error.algorithm == sent
    assert error.expected == b64(digest(data, sent))
    assert error.actual == b64(digest(flipped(data), sent))  # the store's, from its message
    assert gcs_emulator.read("x.dcm") == previous

    result = await aiodicom.dcmwrite(gcs_emulator.sink("x.dcm", checksum=algorithm), SMALL)
    assert gcs_emulator.read("x.dcm") == data
    assert result.checksum == _checksum(data, algorithm)
    stored = gcs_emulator.stored_checksums("x.dcm")
    assert stored["crc32c"] == b64(digest(data, "crc32c"))
    assert stored["md5"] == b64(digest(data, "md5"))


async def test_gcs_resumable_corruption_the_server_missed_is_deleted(
    fake_gcs: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fake-gcs-server 1.54 checks no checksum; the CRC32C it reports for the
    finalised object is compared with ours, and the corrupt object is deleted."""
    data = encoded(BIG)
    with (
        corrupting(monkeypatch, GCSStore, "_send", when=lambda d, o, total, *a: total is not None),
        pytest.raises(ChecksumMismatchError) as info,
    ):
        await aiodicom.dcmwrite(fake_gcs.sink("r.dcm"), BIG, exist_ok=False)
    error = info.value
    assert error.expected == b64(digest(data, "crc32c"))
    assert error.actual == b64(digest(_flip_last(data), "crc32c"))
    assert "deleted" in str(error)
    assert fake_gcs.read("r.dcm") is None

    result = await aiodicom.dcmwrite(fake_gcs.sink("r.dcm"), BIG)
    assert fake_gcs.read("r.dcm") == data
    assert fake_gcs.stored_checksums("r.dcm")["crc32c"] == result.checksum.b64  # type: ignore[union-attr]


def _flip_last(data: bytes) -> bytes:
    """`data` as stored when the last chunk of a resumable upload (after the full
    parts of PART bytes, rounded to 256 KiB) was flipped."""
    cut = len(data) - len(data) % PART if len(data) % PART else len(data) - PART
    return data[:cut] + flipped(data[cut:])


# --- local files and memory ---------------------------------------------------------


def _checksum(data: bytes, algorithm: str) -> Checksum:
    checksum = Checksum(algorithm)
    checksum.update(data)
    return checksum


@pytest.mark.parametrize("algorithm", ["crc32c", "sha256", "md5"])
@pytest.mark.parametrize("fsync", [False, True])
async def test_local_file_checksum_is_of_the_file(
    tmp_path: Path, algorithm: str, fsync: bool
) -> None:
    ds = multiframe(3 * MiB)  # Pixel Data goes to the sink as memoryview slices
    path = tmp_path / "a.dcm"
    result = await aiodicom.dcmwrite(LocalFile(path, fsync=fsync, checksum=algorithm), ds)
    data = path.read_bytes()
    assert data == encoded(ds)
    assert result.destination == str(path)
    assert result.bytes == len(data)
    assert result.checksum == _checksum(data, algorithm)
    assert result.checksum is not None
    assert result.checksum.hex == digest(data, algorithm).hex()


async def test_every_destination_reports_its_checksum(tmp_path: Path) -> None:
    ds = ct_slice(32, 32)
    data = encoded(ds)
    want = _checksum(data, "crc32c")
    buffer = bytearray()
    assert (await aiodicom.dcmwrite(buffer, ds)).checksum == want
    assert (await aiodicom.dcmwrite(io.BytesIO(), ds)).checksum == want
    assert (await aiodicom.dcmwrite(str(tmp_path / "p.dcm"), ds)).checksum == want
    assert (await aiodicom.dcmwrite("memory://integrity/m.dcm", ds)).checksum == want
    assert (await aiodicom.dcmwrite(f"file://{tmp_path}/f.dcm", ds)).checksum == want
    import anyio

    async with await anyio.open_file(tmp_path / "async.dcm", "wb") as stream:
        assert (await aiodicom.dcmwrite(stream, ds)).checksum == want
    sha = await aiodicom.dcmwrite(bytearray(), ds, checksum="sha256")
    assert sha.checksum is not None
    assert sha.checksum.hex == hashlib.sha256(data).hexdigest()
    assert (await aiodicom.dcmwrite(bytearray(), ds, checksum="none")).checksum is None
    assert (await aiodicom.dcmwrite(bytearray(), ds, checksum=None)).checksum is None


async def test_a_sink_of_your_own_gets_the_checksum_from_the_driver() -> None:
    class Collect:
        def __init__(self) -> None:
            self.data = bytearray()

        def open(self, *, exist_ok: bool) -> Collect:
            return self

        def write(self, chunk: Any, /) -> None:
            self.data += chunk

        def commit(self) -> None:
            pass

        def abort(self) -> None:
            pass

    sink = Collect()
    result = await aiodicom.dcmwrite(sink, SMALL, checksum="md5")
    assert result.checksum == _checksum(bytes(sink.data), "md5")
    assert result.bytes == len(sink.data)


async def test_bad_checksum_names_are_refused() -> None:
    with pytest.raises(ValueError, match="checksum"):
        await aiodicom.dcmwrite(bytearray(), SMALL, checksum="sha1")
    with pytest.raises(ValueError, match="set it on the sink"):
        await aiodicom.dcmwrite(LocalFile("/tmp/never.dcm"), SMALL, checksum="md5")


def test_the_error_pickles_and_reads_well() -> None:
    import pickle

    error = ChecksumMismatchError("s3://b/k.dcm", "crc32c", "AAAAAA==", "AAAAAQ==", part=3)
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, OSError)
    assert (again.destination, again.expected, again.actual, again.part) == (
        "s3://b/k.dcm",
        "AAAAAA==",
        "AAAAAQ==",
        3,
    )
    assert str(again) == str(error)
    assert "part 3 of s3://b/k.dcm" in str(error)
    assert "AAAAAA==" in str(error)
    assert "AAAAAQ==" in str(error)
    assert json.dumps(str(error))


# --- export, the report, the command -------------------------------------------------


async def test_export_reports_and_verifies_on_seaweedfs(seaweedfs: Target) -> None:
    """Each written item carries the checksum of its object; verify=True reads
    the store's full-object CRC32C back (HeadObject) and finds it."""
    datasets = [ct_slice(32, 32), BIG]
    report = await aiodicom.export(
        datasets,
        seaweedfs.root + "/out",
        storage_options=seaweedfs.options,
        upload_options={"part_size": PART},
        template=lambda ds: f"{ds.Rows}-{ds.get('NumberOfFrames', 1)}.dcm",
        verify=True,
    )
    assert report.ok, report.failures
    for item in report.items:
        key = item.destination.split("/", 3)[3]  # type: ignore[union-attr]
        data = seaweedfs.read(key)
        assert data is not None
        assert item.checksum == _checksum(data, "crc32c")
        assert item.verified
        assert seaweedfs.stored_checksums(key)["crc32c"] == item.checksum.b64  # type: ignore[union-attr]
        entry = item.to_dict()
        assert entry["checksum_algorithm"] == "crc32c"
        assert entry["checksum"] == digest(data, "crc32c").hex()
        assert entry["verified"] is True


async def test_export_verify_fails_an_item_whose_stored_bytes_differ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify reads the local file back: a file that differs from what was
    checksummed fails the item with ChecksumMismatchError."""
    from aiodicom._export import run

    real = run.dcmwrite

    async def then_tamper(sink: Any, dataset: Dataset, **kwargs: Any) -> Any:
        result = await real(sink, dataset, **kwargs)
        with open(result.destination, "r+b") as stream:
            stream.seek(200)
            byte = stream.read(1)
            stream.seek(200)
            stream.write(bytes([byte[0] ^ 1]))
        return result

    monkeypatch.setattr(run, "dcmwrite", then_tamper)
    report = await aiodicom.export([ct_slice(32, 32)], tmp_path, checksum="sha256", verify=True)
    (item,) = report.items
    assert item.status is aiodicom.Status.FAILED
    assert isinstance(item.error, ChecksumMismatchError)
    assert "reading back" in str(item.error)
    assert item.error.expected != item.error.actual


def test_cli_checksum_and_verify_in_the_report(tmp_path: Path) -> None:
    from aiodicom.cli import main

    source = tmp_path / "in.dcm"
    pydicom.dcmwrite(source, ct_slice(32, 32))
    report_path = tmp_path / "report.json"
    status = main(
        [
            "export",
            str(source),
            str(tmp_path / "out"),
            "--checksum",
            "sha256",
            "--verify",
            "--report",
            str(report_path),
            "-q",
        ]
    )
    assert status == 0
    _, (entry,) = read_report(report_path)
    written = Path(entry["destination"]).read_bytes()
    assert entry["checksum_algorithm"] == "sha256"
    assert entry["checksum"] == hashlib.sha256(written).hexdigest()
    assert entry["verified"] is True

    status = main(
        [
            "export",
            str(source),
            str(tmp_path / "off"),
            "--checksum",
            "none",
            "-q",
            "--report",
            str(report_path),
        ]
    )
    assert status == 0
    _, (entry,) = read_report(report_path)
    assert entry["checksum"] is None
    assert entry["checksum_algorithm"] is None
    assert (
        main(["export", str(source), str(tmp_path / "x"), "--checksum", "none", "--verify"]) == 2
    )
