"""S3 through s3fs's aiobotocore client: PutObject or a multipart upload.

Exclusive create is ``If-None-Match: *`` on PutObject and on
CompleteMultipartUpload (AWS S3 since 2024, MinIO, moto for single PUTs).
The filesystem's ``s3_additional_kwargs`` and requester-pays settings are applied
to every request, as s3fs does; retries are ours (see ``_uploader``), on top of
botocore's own.

Checksums (S3's "flexible checksums"; the store checks them and answers
``BadDigest``):

* ``crc32c`` (default): ``x-amz-checksum-crc32c`` on PutObject; a multipart upload
  is created with ``ChecksumAlgorithm=CRC32C, ChecksumType=FULL_OBJECT``, every
  part carries its CRC32C and CompleteMultipartUpload the CRC32C of the whole
  object (combined from the parts', see ``_checksum``).  With a botocore too old
  to know ``ChecksumType``, the upload is COMPOSITE (the CRC32C of the parts'
  CRC32Cs, ``-N``).
* ``sha256``: ``x-amz-checksum-sha256`` on PutObject and on every part; S3 has no
  full-object SHA-256, so the completion carries the COMPOSITE one.
* ``md5``: ``Content-MD5`` on PutObject and on every part; S3 checks no MD5 of a
  whole multipart object.

Sending our own ``x-amz-checksum-*`` header also stops botocore from computing its
default CRC32 of each request body (``request_checksum_calculation=
"when_supported"``); with ``Content-MD5`` (``md5``) it still adds its CRC32.

A PutObject like one botocore has already sent for this client and bucket is sent
from that request as a template, without botocore's per-request pipeline (see
``_s3put``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final

from ..._checksum import Algorithm
from ..._errors import ChecksumMismatchError, exists_error
from ._s3put import Templates
from ._uploader import Checksums, Options, StoreBase

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
_MISMATCH_CODES: Final = frozenset({"BadDigest", "XAmzContentChecksumMismatch"})
_HEADER: Final = {"crc32c": "ChecksumCRC32C", "sha256": "ChecksumSHA256", "md5": "ContentMD5"}
_ALGORITHM: Final = {"crc32c": "CRC32C", "sha256": "SHA256"}


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
        self._full_object = False  # the multipart upload has a full-object CRC32C

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

    def checksums(
        self, algorithm: Algorithm | None
    ) -> tuple[Algorithm | None, tuple[Algorithm, ...]]:
        return algorithm, (algorithm,) if algorithm else ()

    async def put(self, data: bytes, exclusive: bool, whole: Checksums) -> None:
        match = {"IfNoneMatch": "*"} if exclusive else {}
        sent = self._checksum_args(whole)
        method = self._client.put_object
        args = self.fs._get_s3_method_kwargs(
            method,
            Bucket=self.bucket,
            Key=self.key,
            Body=data,
            **self._object_args(),
            **sent,
            **match,
        )
        try:
            templates = Templates.of(self._client)
            if templates is None:
                await method(**args)
            else:
                await templates.put(args["Key"], data, args, lambda: method(**args))
        except Exception as exc:
            self._raise_mismatch(exc, whole)
            raise

    async def start(self, exclusive: bool) -> None:
        if self.upload_id is not None:  # a retried start: drop the first session
            await self.cancel()
        args = self._object_args()
        algorithm = self.options.checksum
        if algorithm in _ALGORITHM:
            args["ChecksumAlgorithm"] = _ALGORITHM[algorithm]
            self._full_object = algorithm == "crc32c" and self._knows("CreateMultipartUpload")
            if self._full_object:
                args["ChecksumType"] = "FULL_OBJECT"
        out = await self._request(
            "create_multipart_upload", Bucket=self.bucket, Key=self.key, **args
        )
        self.upload_id = out["UploadId"]

    async def upload_part(self, number: int, offset: int, data: bytes, sums: Checksums) -> Any:
        try:
            out = await self._request(
                "upload_part",
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                Body=data,
                **self._checksum_args(sums),
            )
        except Exception as exc:
            self._raise_mismatch(exc, sums, part=number)
            raise
        part = {"PartNumber": number, "ETag": out["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256"):
            if name in out:
                part[name] = out[name]
        # the completion must list each part's checksum of the upload's algorithm
        for algorithm, checksum in sums.items():
            name = _HEADER[algorithm]
            if algorithm in _ALGORITHM and name not in part:
                part[name] = checksum.b64
        return part

    async def complete(
        self,
        parts: list[Any],
        offset: int,
        last: bytes,
        exclusive: bool,
        sums: Checksums,
        whole: Checksums,
    ) -> None:
        if self._last_part is None:  # not yet sent by an earlier attempt
            self._last_part = await self.upload_part(len(parts) + 1, offset, last, sums)
        every = [*parts, self._last_part]
        match = {"IfNoneMatch": "*"} if exclusive else {}
        sent, expected = self._completion_checksum(every, whole)
        try:
            await self._request(
                "complete_multipart_upload",
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": every},
                **sent,
                **match,
            )
        except Exception as exc:
            if expected is not None and _code(exc) in _MISMATCH_CODES:
                algorithm, value = expected
                raise ChecksumMismatchError(
                    self.url, algorithm, value, detail=_describe(exc)
                ) from exc
            raise
        self.upload_id = None

    def _checksum_args(self, sums: Checksums) -> dict[str, str]:
        return {_HEADER[name]: checksum.b64 for name, checksum in sums.items()}

    def _completion_checksum(
        self, parts: list[dict[str, Any]], whole: Checksums
    ) -> tuple[dict[str, str], tuple[str, str] | None]:
        """The whole-object checksum CompleteMultipartUpload carries, and what it
        is for the error message."""
        algorithm = self.options.checksum
        if algorithm == "crc32c":
            if self._full_object:
                value = whole["crc32c"].b64
                return {"ChecksumCRC32C": value, "ChecksumType": "FULL_OBJECT"}, (
                    "crc32c",
                    value,
                )
            return _composite(parts, "ChecksumCRC32C", _crc32c_bytes, "crc32c")
        if algorithm == "sha256":
            return _composite(parts, "ChecksumSHA256", _sha256_bytes, "sha256")
        return {}, None

    def _knows(self, operation: str) -> bool:
        """Whether this botocore knows S3's ``ChecksumType`` (full-object checksums)."""
        try:
            model = self._client.meta.service_model.operation_model(operation)
            return "ChecksumType" in model.input_shape.members
        except Exception:
            return False

    def _raise_mismatch(self, exc: Exception, sums: Checksums, part: int | None = None) -> None:
        """Raise the :class:`~aiodicom.ChecksumMismatchError` that `exc` means, if any."""
        if not sums or _code(exc) not in _MISMATCH_CODES:
            return
        (algorithm, checksum), *_ = sums.items()
        raise ChecksumMismatchError(
            self.url, algorithm, checksum.b64, part=part, detail=_describe(exc)
        ) from exc

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


def _crc32c_bytes(data: bytes) -> bytes:
    from ..._checksum import Checksum

    checksum = Checksum("crc32c")
    checksum.update(data)
    return checksum.digest()


def _sha256_bytes(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _composite(
    parts: list[dict[str, Any]], name: str, digest: Any, algorithm: str
) -> tuple[dict[str, str], tuple[str, str]]:
    """S3's COMPOSITE checksum: the checksum of the parts' checksums, ``-N``."""
    joined = b"".join(base64.b64decode(part[name]) for part in parts)
    value = f"{base64.b64encode(digest(joined)).decode('ascii')}-{len(parts)}"
    return {name: value}, (algorithm, value)


def _describe(exc: BaseException) -> str:
    """``"BadDigest: message"`` from a botocore error."""
    response = getattr(exc, "response", None)
    error = response.get("Error", {}) if isinstance(response, dict) else {}
    return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', exc)}"


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
