"""PutObject from a template (``aiodicom.sinks._stores._s3put``).

After botocore has sent one PutObject for a client, bucket and set of arguments,
the next ones are sent as that request with another key, body and checksum,
signed by the client's signer, without botocore's per-request pipeline.  These
tests hold it to what botocore would have done, against SeaweedFS:

* one started with credentials checks every SigV4 signature (a wrong secret is
  refused), so templated requests that it stores were signed right;
* what it stores (bytes, content type, metadata, checksum) is what the request
  botocore sent stores;
* the answers the uploader acts on (exists, bad digest) come back as the same
  errors, and any other answer sends the request again through botocore.
"""

from __future__ import annotations

import io
import weakref
from collections.abc import Iterator
from copy import deepcopy
from typing import Any, ClassVar

import pydicom
import pytest

import aiodicom
from aiodicom import ChecksumMismatchError
from aiodicom.sinks._stores import _s3put
from aiodicom.sinks._stores._s3put import Templates, _Capture, _template
from aiodicom.sinks._stores.s3 import S3Store
from tests import servers
from tests.datasets import ct_slice as _ct_slice
from tests.helpers import corrupting

pytestmark = pytest.mark.anyio

KEY, SECRET = "AKIDAIODICOM", "s3cr3t/with+signs="
KEYS = ["plain.dcm", "with space/é ü+%~!'()*.dcm", "a//double.dcm", "deep/er/=&?#.dcm"]


def ct_slice(rows: int, columns: int, number: int = 1) -> Any:
    ds = _ct_slice(rows, columns)
    ds.InstanceNumber = number
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    return ds


def encoded(ds: Any) -> bytes:
    out = io.BytesIO()
    pydicom.dcmwrite(out, deepcopy(ds))
    return out.getvalue()


@pytest.fixture(scope="module")
def signed_options() -> Iterator[dict[str, Any]]:
    """A SeaweedFS that checks signatures (one identity), for this module."""
    with servers.seaweedfs_server(credentials=(KEY, SECRET)) as endpoint:
        yield {"key": KEY, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint}}


@pytest.fixture
def bucket(signed_options: dict[str, Any]) -> str:
    import s3fs

    name = servers.fresh_name("templates")
    s3fs.S3FileSystem(**signed_options).mkdir(name)
    return name


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each templated send did: True (sent), False (left to botocore), or
    the name of the error it raised."""
    real = Templates._send
    out: list[Any] = []

    async def counting(self: Templates, *args: Any) -> bool:
        try:
            sent = await real(self, *args)
        except Exception as exc:
            out.append(exc.response["Error"]["Code"])  # type: ignore[attr-defined]
            raise
        out.append(sent)
        return sent

    monkeypatch.setattr(Templates, "_send", counting)
    return out


def head(options: dict[str, Any], bucket: str, key: str) -> dict[str, Any]:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    out: dict[str, Any] = fs.call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    return out


def read(options: dict[str, Any], bucket: str, key: str) -> bytes:
    import s3fs

    fs = s3fs.S3FileSystem(**options)
    fs.invalidate_cache()
    data: bytes = fs.cat_file(f"{bucket}/{key}")
    return data


async def learned(options: dict[str, Any], bucket: str) -> tuple[str, bytes]:
    """Write ``a.dcm`` (botocore: the template is learned) and ``b.dcm`` (from
    the template); return the bucket's URL and what ``b.dcm`` holds."""
    url = f"s3://{bucket}"
    await aiodicom.dcmwrite(f"{url}/a.dcm", ct_slice(8, 8), storage_options=options)
    await aiodicom.dcmwrite(f"{url}/b.dcm", ct_slice(8, 8), storage_options=options)
    return url, read(options, bucket, "b.dcm")


def test_the_server_checks_signatures(signed_options: dict[str, Any], bucket: str) -> None:
    """Without this, the next tests would prove nothing about signing."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=signed_options["client_kwargs"]["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET + "x",
    )
    with pytest.raises(Exception, match="SignatureDoesNotMatch"):
        client.put_object(Bucket=bucket, Key="k", Body=b"data")


@pytest.mark.parametrize("checksum", ["crc32c", "sha256", "md5", None])
async def test_templated_puts_are_signed_and_stored_as_botocores(
    signed_options: dict[str, Any], bucket: str, sends: list[Any], checksum: str | None
) -> None:
    datasets = [ct_slice(8, 8, number=i + 1) for i in range(len(KEYS) + 1)]
    metadata = {"origin": "test", "note": "x y"}
    for key, ds in zip(["first.dcm", *KEYS], datasets, strict=True):
        sink = aiodicom.sinks.FsspecFile.from_url(
            f"s3://{bucket}/{key}", signed_options, checksum=checksum, metadata=metadata
        )
        await aiodicom.dcmwrite(sink, ds)
    if checksum in ("crc32c", "sha256"):
        assert sends == [True] * len(KEYS)  # the first went through botocore
    else:  # botocore adds a CRC32 of its own to each body: no template
        assert sends == []
    first = head(signed_options, bucket, "first.dcm")
    for key, ds in zip(KEYS, datasets[1:], strict=True):
        stored_key = key.replace("//", "/")  # as SeaweedFS stores it, from botocore too
        assert read(signed_options, bucket, stored_key) == encoded(ds)
        got = head(signed_options, bucket, stored_key)
        assert got["ContentType"] == first["ContentType"] == "application/dicom"
        assert got["Metadata"] == first["Metadata"] == metadata
        for name in ("ChecksumCRC32C", "ChecksumSHA256"):
            assert (name in got) == (name in first)


async def test_botocore_stores_a_double_slash_key_as_the_template_does(
    signed_options: dict[str, Any], bucket: str
) -> None:
    """The key SeaweedFS stores for ``a//b`` is the same from botocore as from a
    template (the comparison above relies on it)."""
    import s3fs

    fs = s3fs.S3FileSystem(**signed_options)
    fs.call_s3("put_object", Bucket=bucket, Key="a//double.dcm", Body=b"x")
    fs.invalidate_cache()
    assert fs.find(bucket) == [f"{bucket}/a/double.dcm"]


async def test_an_export_sends_from_the_template(
    signed_options: dict[str, Any], bucket: str, sends: list[Any], tmp_path: Any
) -> None:
    source = tmp_path / "src"
    source.mkdir()
    datasets = [ct_slice(8, 8, number=i + 1) for i in range(12)]
    for i, ds in enumerate(datasets):
        pydicom.dcmwrite(source / f"{i}.dcm", ds, enforce_file_format=True)
    report = await aiodicom.export(
        str(source), f"s3://{bucket}", storage_options=signed_options, concurrency=1
    )
    assert report.failed == 0
    assert report.written == 12
    assert sends == [True] * 11
    for result in report.items:
        assert read(signed_options, bucket, result.destination.split("/", 3)[3]) == (
            encoded(pydicom.dcmread(result.source))
        )


async def test_exists_is_answered_through_the_template(
    signed_options: dict[str, Any],
    bucket: str,
    sends: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The object appears between the sink's look and its PutObject: the
    store's 412 to the templated ``If-None-Match: *`` is the destination existing."""
    url, before = await learned(signed_options, bucket)

    async def looked_too_early(self: Any) -> bool:
        return False

    monkeypatch.setattr(S3Store, "exists", looked_too_early)
    with pytest.raises(FileExistsError):
        await aiodicom.dcmwrite(
            f"{url}/b.dcm", ct_slice(16, 16), storage_options=signed_options, exist_ok=False
        )
    assert sends == [True, "PreconditionFailed"]  # answered to the templated request
    assert read(signed_options, bucket, "b.dcm") == before


async def test_a_bad_digest_is_answered_through_the_template(
    signed_options: dict[str, Any],
    bucket: str,
    sends: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, before = await learned(signed_options, bucket)
    with (
        corrupting(monkeypatch, S3Store, "put"),
        pytest.raises(ChecksumMismatchError, match="BadDigest"),
    ):
        await aiodicom.dcmwrite(f"{url}/b.dcm", ct_slice(16, 16), storage_options=signed_options)
    assert sends == [True, "BadDigest"]
    assert read(signed_options, bucket, "b.dcm") == before


async def test_any_other_answer_goes_back_to_botocore(
    signed_options: dict[str, Any],
    bucket: str,
    sends: list[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A templated request the store refuses for a reason botocore handles itself
    (here a signature it rejects: 403 SignatureDoesNotMatch) is sent again through
    botocore, and that template is dropped."""
    url = f"s3://{bucket}"
    await aiodicom.dcmwrite(f"{url}/a.dcm", ct_slice(8, 8), storage_options=signed_options)
    real = Templates._send

    async def wrong_secret(self: Templates, *args: Any) -> bool:
        signer = self.client._request_signer
        get = signer.get_auth_instance

        async def forged(**kwargs: Any) -> Any:
            auth = await get(**kwargs)
            auth.credentials = type(auth.credentials)(KEY, SECRET + "x", None)
            return auth

        monkeypatch.setattr(signer, "get_auth_instance", forged)
        try:
            return await real(self, *args)
        finally:
            monkeypatch.setattr(signer, "get_auth_instance", get)

    monkeypatch.setattr(Templates, "_send", wrong_secret)
    ds = ct_slice(16, 16)
    await aiodicom.dcmwrite(f"{url}/b.dcm", ds, storage_options=signed_options)
    assert read(signed_options, bucket, "b.dcm") == encoded(ds)
    assert sends == [False]  # refused, then sent by botocore
    templates = [t for t in Templates._of.values() if t.by_args]
    assert any(None in t.by_args.values() for t in templates)  # and dropped


def test_transient_answers_are_parsed_as_botocore_parses_them() -> None:
    """A 503 SlowDown to a templated request is the ``ClientError`` botocore raises,
    which the uploader retries."""
    import asyncio

    import s3fs

    class Answer:
        status_code = 503
        headers: ClassVar = {"x-amz-request-id": "R"}

        @property
        async def content(self) -> bytes:
            return (
                b"<?xml version='1.0'?><Error><Code>SlowDown</Code>"
                b"<Message>Reduce your request rate.</Message></Error>"
            )

    async def parse() -> Exception:
        fs = s3fs.S3FileSystem(anon=True, asynchronous=True, skip_instance_cache=True)
        client = await fs.set_session()
        try:
            return await _s3put._parsed_error(client, Answer())
        finally:
            await client.close()

    error = asyncio.run(parse())
    assert error.response["Error"]["Code"] == "SlowDown"  # type: ignore[attr-defined]
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == 503  # type: ignore[attr-defined]
    assert S3Store.__new__(S3Store).is_transient(error)


def _capture(**changes: Any) -> _Capture:
    capture = _Capture(
        key="k/é.dcm",
        signature_version="s3v4",
        signing_name="s3",
        region_name="us-east-1",
        context={"signing": {"region": "eu-west-1", "signing_name": "s3"}},
        url="https://b.s3.eu-west-1.amazonaws.com/k/%C3%A9.dcm",
        headers=[("Content-Type", "application/dicom"), ("X-Amz-Date", "x")],
    )
    for name, value in changes.items():
        setattr(capture, name, value)
    return capture


def test_a_template_keeps_what_belongs_to_every_request() -> None:
    template = _template(_capture(), set())
    assert template is not None
    assert template.prefix == "https://b.s3.eu-west-1.amazonaws.com/"
    assert template.headers == (("Content-Type", "application/dicom"),)
    assert template.region_name == "eu-west-1"  # the endpoint rules' region wins


@pytest.mark.parametrize(
    "changes",
    [
        {"signature_version": "s3v4a"},
        {"signature_version": "v4-s3express"},
        {"url": "https://b.s3.amazonaws.com/k/%C3%A9.dcm?x-id=PutObject"},
        {"url": "https://b.s3.amazonaws.com/other"},
        {"context": {"signing": {"identity_cache": object(), "cache_key": "c"}}},
        {"url": None},
        {"headers": [("x-amz-checksum-crc32", "AAAAAA==")]},
        {"headers": [("x-amz-sdk-checksum-algorithm", "CRC32")]},
        {"headers": [("x-amz-trailer", "x-amz-checksum-crc32")]},
        {"headers": [("Content-Encoding", "aws-chunked")]},
    ],
    ids=[
        "sigv4a",
        "express",
        "query",
        "other-key",
        "identity-cache",
        "not-sent",
        "botocore-crc32",
        "botocore-algorithm",
        "trailer",
        "chunked",
    ],
)
def test_requests_a_template_cannot_reproduce_make_none(changes: dict[str, Any]) -> None:
    assert _template(_capture(**changes), set()) is None


async def test_templates_per_client_are_bounded(
    signed_options: dict[str, Any], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata different for every object makes no template worth keeping: past
    a bound, botocore sends them and the table stops growing."""
    monkeypatch.setattr(_s3put, "_MOST_TEMPLATES", 3)
    monkeypatch.setattr(Templates, "_of", weakref.WeakKeyDictionary())
    for i in range(6):
        sink = aiodicom.sinks.FsspecFile.from_url(
            f"s3://{bucket}/{i}.dcm", signed_options, metadata={"n": str(i)}
        )
        await aiodicom.dcmwrite(sink, ct_slice(8, 8, number=i))
        assert read(signed_options, bucket, f"{i}.dcm")
    assert [len(t.by_args) for t in Templates._of.values()] == [3]


async def test_an_anonymous_client_sends_unsigned_templates(
    seaweedfs_storage_options: dict[str, Any], sends: list[Any]
) -> None:
    """``anon=True`` (botocore's UNSIGNED): templated requests go unsigned, as
    botocore sends them, to a store that allows anonymous writes."""
    import s3fs

    bucket = servers.fresh_name("anon")
    s3fs.S3FileSystem(**seaweedfs_storage_options).mkdir(bucket)
    options = {"anon": True, "client_kwargs": seaweedfs_storage_options["client_kwargs"]}
    datasets = [ct_slice(8, 8, number=i) for i in range(4)]
    for i, ds in enumerate(datasets):
        await aiodicom.dcmwrite(f"s3://{bucket}/{i}.dcm", ds, storage_options=options)
    assert sends == [True] * 3
    for i, ds in enumerate(datasets):
        assert read(seaweedfs_storage_options, bucket, f"{i}.dcm") == encoded(ds)
