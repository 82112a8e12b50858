"""S3 through s3fs's aiobotocore client: PutObject or a multipart upload.

Exclusive create is ``If-None-Match: *`` on PutObject and on
CompleteMultipartUpload (AWS S3 since 2024, MinIO, moto for single PUTs).
The filesystem's ``s3_additional_kwargs`` and requester-pays settings are applied
to every request, as s3fs does; retries are ours (see ``_remote``), on top of
botocore's own.
"""

from __future__ import annotations

from typing import Any, Final

from ..._errors import exists_error
from ._uploader import Options, StoreBase

__all__ = ["S3Store"]

_TRANSIENT_CODES: Final = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
_EXISTS_CODES: Final = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


class S3Store(StoreBase):
    """One object on S3 (see ``_uploader.Store``)."""

    part_size_multiple = 1
    min_part_size = 5 * 1024 * 1024  # S3's minimum for all parts but the last
    ordered = False

    def __init__(self, fs: Any, path: str, url: str, options: Options) -> None:
        super().__init__(fs, path, url, options)
        self.upload_id: str | None = None
        self._client: Any = None
        self._last_part: dict[str, Any] | None = None

    async def prepare(self) -> None:
        await self.fs.set_session()
        self._client = await self.fs.get_s3(self.bucket)

    async def _request(self, name: str, **kwargs: Any) -> Any:
        method = getattr(self._client, name)
        return await method(**self.fs._get_s3_method_kwargs(method, **kwargs))

    def _object_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"ContentType": self.options.content_type}
        if self.options.metadata:
            args["Metadata"] = dict(self.options.metadata)
        args.update(self.options.upload_args)
        return args

    async def exists(self) -> bool:
        try:
            await self._request("head_object", Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise
        return True

    async def put(self, data: bytes, exclusive: bool) -> None:
        match = {"IfNoneMatch": "*"} if exclusive else {}
        await self._request(
            "put_object",
            Bucket=self.bucket,
            Key=self.key,
            Body=data,
            **self._object_args(),
            **match,
        )

    async def start(self, exclusive: bool) -> None:
        if self.upload_id is not None:  # a retried start: drop the first session
            await self.cancel()
        out = await self._request(
            "create_multipart_upload", Bucket=self.bucket, Key=self.key, **self._object_args()
        )
        self.upload_id = out["UploadId"]

    async def upload_part(self, number: int, offset: int, data: bytes) -> Any:
        out = await self._request(
            "upload_part",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
        )
        part = {"PartNumber": number, "ETag": out["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256"):
            if name in out:
                part[name] = out[name]
        return part

    async def complete(self, parts: list[Any], offset: int, last: bytes, exclusive: bool) -> None:
        if self._last_part is None:  # not yet sent by an earlier attempt
            self._last_part = await self.upload_part(len(parts) + 1, offset, last)
        match = {"IfNoneMatch": "*"} if exclusive else {}
        await self._request(
            "complete_multipart_upload",
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": [*parts, self._last_part]},
            **match,
        )
        self.upload_id = None

    async def cancel(self) -> None:
        if self.upload_id is None:
            return
        try:
            await self._request(
                "abort_multipart_upload",
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
            )
        except Exception as exc:
            if _code(exc) != "NoSuchUpload":
                raise
        self.upload_id = None

    async def probe(self) -> None:
        """A multipart upload, started and aborted: no object is created."""
        await self.start(False)
        await self.cancel()

    def is_transient(self, exc: BaseException) -> bool:
        from s3fs.core import S3_RETRYABLE_ERRORS

        if isinstance(exc, S3_RETRYABLE_ERRORS):
            return True
        status = _status(exc)
        if status is not None:
            return status >= 500 or status == 429 or _code(exc) in _TRANSIENT_CODES
        try:
            from aiohttp import ClientConnectionError, ClientPayloadError
        except ImportError:  # pragma: no cover - aiohttp comes with aiobotocore
            return False
        return isinstance(exc, ClientConnectionError | ClientPayloadError)

    def is_session_lost(self, exc: BaseException) -> bool:
        return _code(exc) == "NoSuchUpload"

    def translate(self, exc: Exception) -> Exception:
        """S3's errors as ours: a failed ``If-None-Match`` (the only precondition
        sent) is the destination existing; the rest as s3fs maps them."""
        from s3fs.errors import translate_boto_error

        if _code(exc) in _EXISTS_CODES or _status(exc) == 412:
            return exists_error(self.url)
        translated: Exception = translate_boto_error(exc)
        return translated


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None
