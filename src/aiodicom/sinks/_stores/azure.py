"""Azure Blob Storage through adlfs's async service client: Put Blob or blocks.

Exclusive create is ``If-None-Match: *`` on Put Blob and on Put Block List.  Block
ids carry a random per-write prefix, so concurrent writers of one blob never mix
their blocks.  A failed write never commits its block list.  Where no committed
blob exists, its staged blocks are deleted with the uncommitted blob (Delete Blob,
``If-Unmodified-Since`` the first block, so a blob another writer committed since
survives), so nothing is left that a listing of uncommitted blobs shows; blocks
staged for a blob that exists stay invisible until the service drops them (at that
blob's next commit, or after a week).  The Azure SDK retries each request itself;
ours are on top.

Checksums: every staged block and every Put Blob carries a transactional
checksum that the service verifies (it refuses a request whose bytes differ):
CRC-64 (``x-ms-content-crc64``, ``400 Crc64Mismatch``), computed with ``anycrc``
at several GB/s, or, where ``anycrc`` is not installed, ``Content-MD5``
(``400 Md5Mismatch``).  It is computed whatever checksum the user chose for the
report, unless checksums are off.  With ``checksum="md5"`` Put Block List also
stores the whole blob's MD5 (the reported checksum) as the blob's ``Content-MD5``
property; the service does not check it there (the blocks were checked), so with
another checksum no MD5 of the whole blob is computed for it, and a blob written
in several blocks has no ``Content-MD5`` property (one written in one request has
it: the service computes and keeps the MD5 of a Put Blob).  Azurite checks
CRC-64 from 3.37 (Node.js 22); an older one refuses the header (``500
FeatureNotSupported``), and the account then gets MD5s (see ``AzureStore._checked``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from ..._checksum import Algorithm, Checksum, StoreAlgorithm, crc64nvme_available
from ..._errors import ChecksumMismatchError, exists_error
from ._uploader import Checksums, Options, StoreBase

__all__ = ["AzureStore"]

logger = logging.getLogger("aiodicom")
T = TypeVar("T")

_MISMATCH_CODES: Final = frozenset({"Md5Mismatch", "Crc64Mismatch"})
_MAX_SINGLE_PUT: Final = 64 * 1024 * 1024  # the SDK's default max_single_put_size


class AzureStore(StoreBase):
    """One blob on Azure (see ``_uploader.Store``)."""

    part_size_multiple = 1
    min_part_size = 1
    ordered = False

    def __init__(self, fs: Any, path: str, url: str, options: Options) -> None:
        super().__init__(fs, path, url, options)
        self._prefix = uuid.uuid4().hex
        # the account the requests go to (its URL), for what it accepts
        service = getattr(fs, "service_client", None)
        self._account = str(getattr(service, "url", None) or getattr(fs, "account_name", ""))
        self._client: Any = None
        self._last_block: str | None = None
        self._staged_since: datetime.datetime | None = None  # server time

    async def prepare(self) -> None:
        self._client = self.fs.service_client.get_blob_client(self.bucket, self.key)

    def _settings(self, whole: Checksums | None = None) -> dict[str, Any]:
        from azure.storage.blob import ContentSettings

        md5 = bytearray(whole["md5"].digest()) if whole and "md5" in whole else None
        args: dict[str, Any] = {
            "content_settings": ContentSettings(
                content_type=self.options.content_type, content_md5=md5
            ),
            "metadata": dict(self.options.metadata) or None,
        }
        args.update(self.options.upload_args)
        return args

    def _block_id(self, number: int) -> str:
        return f"{self._prefix}-{number:08d}"  # the SDK base64-encodes it

    async def exists(self) -> bool:
        return bool(await self._client.exists())

    def checksums(
        self, algorithm: Algorithm | None
    ) -> tuple[StoreAlgorithm | None, tuple[Algorithm, ...]]:
        # the blob's MD5 only where it is the reported checksum: nothing checks
        # it at Put Block List, and it would cost an MD5 pass over the data
        if algorithm is None:
            return None, ()
        return _transactional_algorithm(self._account), ("md5",) if algorithm == "md5" else ()

    async def put(self, data: bytes, exclusive: bool, whole: Checksums) -> None:
        limit = getattr(getattr(self._client, "_config", None), "max_single_put_size", None)
        if len(data) > (limit or _MAX_SINGLE_PUT):
            # the SDK would cut it into blocks itself, without our MD5s: stage it
            try:
                await self.complete([], 0, data, exclusive, whole, whole)
            except BaseException:
                await asyncio.shield(self._cancel_quietly())
                raise
            return
        settings = self._settings()

        def upload(**checksum: Any) -> Any:
            return self._client.upload_blob(
                data, overwrite=not exclusive, length=len(data), **settings, **checksum
            )

        await self._checked(upload, data, whole)

    async def start(self, exclusive: bool) -> None:
        pass

    async def upload_part(self, number: int, offset: int, data: bytes, sums: Checksums) -> Any:
        block_id = self._block_id(number)

        def stage(**checksum: Any) -> Any:
            return self._client.stage_block(block_id, data, length=len(data), **checksum)

        headers = await self._checked(stage, data, sums, part=number)
        if self._staged_since is None:
            date = headers.get("date") if isinstance(headers, dict) else None
            if not isinstance(date, datetime.datetime):
                date = datetime.datetime.now(datetime.timezone.utc)
            # Last-Modified has whole seconds: a blob committed by anyone after
            # this block landed is later than this
            self._staged_since = date.replace(microsecond=0) - datetime.timedelta(seconds=1)
        return block_id

    async def complete(
        self,
        parts: list[Any],
        offset: int,
        last: bytes,
        exclusive: bool,
        sums: Checksums,
        whole: Checksums,
    ) -> None:
        from azure.core import MatchConditions

        if self._last_block is None:
            self._last_block = await self.upload_part(len(parts) + 1, offset, last, sums)
        condition: dict[str, Any] = (
            {"match_condition": MatchConditions.IfMissing} if exclusive else {}
        )
        try:
            await self._client.commit_block_list(
                [*parts, self._last_block], **self._settings(whole), **condition
            )
        except Exception as exc:
            # a racing writer's commit also drops our uncommitted blocks
            if exclusive and _error_code(exc) == "InvalidBlockList" and await self.exists():
                raise exists_error(self.url) from exc
            raise
        self._staged_since = None

    async def cancel(self) -> None:
        """Delete the staged blocks with the uncommitted blob, unless a committed
        blob exists (its old content stays; our blocks stay invisible)."""
        since, self._staged_since = self._staged_since, None
        if since is None or await self.exists():
            return
        from azure.core.exceptions import HttpResponseError

        try:
            await self._client.delete_blob(if_unmodified_since=since)
        except HttpResponseError as exc:
            if exc.status_code not in (404, 412):
                raise

    async def _cancel_quietly(self) -> None:
        with contextlib.suppress(Exception):  # the write's own error matters
            await self.cancel()

    async def _checked(
        self,
        send: Callable[..., Awaitable[T]],
        data: bytes,
        sums: Checksums,
        part: int | None = None,
    ) -> T:
        """``send(**checksum)``: the request for `data`, with the transactional
        checksum that the service checks (see :func:`_transactional`).

        Until a CRC-64 has been accepted by this account, a request carrying one
        is sent without the SDK's own retries: an Azurite older than 3.37 answers
        ``500 FeatureNotSupported``, which the SDK would retry for over a minute.
        Then this account gets MD5s from here on (this request included), with a
        warning; other errors go on to the writer's retries as usual.
        """
        sent = self._sent(sums, data)
        probing = (
            sent is not None
            and sent.algorithm == "crc64nvme"
            and _CRC64_ACCEPTED.get(self._account) is None
        )
        try:
            result = await send(**_transactional(sent), **({"retry_total": 0} if probing else {}))
        except Exception as exc:
            if probing and _refuses_crc64(exc):
                if _CRC64_ACCEPTED.get(self._account) is not False:  # once, not per part
                    logger.warning(
                        "aiodicom: %s refuses Azure's CRC-64 checksum header (an Azurite "
                        "older than 3.37?); sending Content-MD5 to it instead",
                        self._account,
                    )
                _CRC64_ACCEPTED[self._account] = False
                return await self._checked(send, data, sums, part)
            if sent is not None:
                self._raise_mismatch(exc, sent, part)
            raise
        if probing:
            _CRC64_ACCEPTED[self._account] = True
        return result

    def _sent(self, sums: Checksums, data: bytes) -> Checksum | None:
        """The checksum of `sums` that a request carries: the CRC-64 (a request
        with both would be refused), or the MD5, computed now from `data` if this
        account was found to refuse the CRC-64 after the write began."""
        crc64 = sums.get("crc64nvme")
        if crc64 is not None and _CRC64_ACCEPTED.get(self._account) is not False:
            return crc64
        if crc64 is not None and "md5" not in sums:
            sums["md5"] = Checksum("md5")
            sums["md5"].update(data)
        return sums.get("md5")

    def _raise_mismatch(self, exc: Exception, sent: Checksum, part: int | None) -> None:
        """Raise the :class:`~aiodicom.ChecksumMismatchError` that `exc` means:
        Azure's ``400 Crc64Mismatch`` or ``400 Md5Mismatch`` for the checksum
        `sent` (Azurite before 3.37: ``InvalidOperation``, "Provided contentMD5
        doesn't match.")."""
        if getattr(exc, "status_code", None) != 400:
            return
        code = _error_code(exc) or ""
        text = str(getattr(exc, "message", "") or exc).lower()
        if code not in _MISMATCH_CODES and not ("md5" in text and "match" in text):
            return
        raise ChecksumMismatchError(
            self.url,
            sent.algorithm,
            base64.b64encode(_wire(sent)).decode("ascii"),
            part=part,
            actual=_server_value(exc, sent.algorithm),
            detail=f"{code or type(exc).__name__}: {str(exc).splitlines()[0]}",
        ) from exc

    async def probe(self) -> None:
        """One byte staged as a block, never committed, then deleted with its
        uncommitted blob (as an aborted write is): no blob appears."""
        await self.upload_part(1, 0, b"\0", {})
        await self.cancel()

    def is_transient(self, exc: BaseException) -> bool:
        from azure.core.exceptions import (
            HttpResponseError,
            ServiceRequestError,
            ServiceResponseError,
        )

        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            return True
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            return status >= 500 or status == 429
        return False

    def is_session_lost(self, exc: BaseException) -> bool:
        return False  # uncommitted blocks live for a week: nothing to lose mid-write

    def translate(self, exc: Exception) -> Exception:
        from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError

        if isinstance(exc, FileExistsError) or _is_exists(exc):
            return exists_error(self.url)
        if isinstance(exc, ResourceNotFoundError):
            return FileNotFoundError(_short(exc))
        if isinstance(exc, ClientAuthenticationError):
            return PermissionError(_short(exc))
        return exc


_EXISTS_CODES = frozenset({"BlobAlreadyExists", "ConditionNotMet"})
"""What a failed ``If-None-Match: *`` answers (409 on Put Blob, 412 on Put Block
List).  Other 409s (a lease, a blob being copied, a full emulator) are not a
destination that exists."""


def _is_exists(exc: BaseException) -> bool:
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

    if not isinstance(exc, ResourceExistsError | ResourceModifiedError):
        return False
    code = _error_code(exc)
    return code is None or code in _EXISTS_CODES


def _short(exc: BaseException) -> str:
    """The service's message without the request id, time and XML body it carries."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    code = _error_code(exc)
    return f"{first} ({code})" if code else first


_CRC64_ACCEPTED: dict[str, bool] = {}
"""Per account URL: whether the service took a CRC-64 header (missing: not known
yet).  An Azurite older than 3.37 refuses it."""


def _transactional_algorithm(account: str) -> StoreAlgorithm:
    """The checksum each request to `account` carries: CRC-64 where ``anycrc``
    computes it and the account has not refused it."""
    if crc64nvme_available() and _CRC64_ACCEPTED.get(account) is not False:
        return "crc64nvme"
    return "md5"


def _refuses_crc64(exc: BaseException) -> bool:
    """Whether `exc` is a service refusing the CRC-64 header itself (Azurite
    before 3.37: ``500 FeatureNotSupported``, "x-ms-content-crc64 header ... is
    not supported"), not a mismatch or another error."""
    if _error_code(exc) not in ("FeatureNotSupported", "UnsupportedHeader"):
        return False
    return "crc64" in str(exc).lower()


def _wire(checksum: Checksum) -> bytes:
    """`checksum` as Azure's header carries it (CRC-64: little-endian)."""
    digest = checksum.digest()
    return digest[::-1] if checksum.algorithm == "crc64nvme" else digest


def _transactional(sent: Checksum | None) -> dict[str, bytes]:
    """The SDK keyword that sends `sent` with a request, for the service to check."""
    if sent is None:
        return {}
    name = "crc64" if sent.algorithm == "crc64nvme" else "md5"
    return {f"transactional_content_{name}": _wire(sent)}


def _server_value(exc: BaseException, algorithm: str) -> str | None:
    """The checksum the service computed, where its error says it (Azure's
    ``servercalculatedcrc64`` / ``servercalculatedmd5`` detail)."""
    name = "crc64" if algorithm == "crc64nvme" else "md5"
    found = re.search(rf"servercalculated{name}:\s*(\S+)", str(exc), re.IGNORECASE)
    return found.group(1) if found else None


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return str(code) if code is not None else None
