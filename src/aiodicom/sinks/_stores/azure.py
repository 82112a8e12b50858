"""Azure Blob Storage through adlfs's async service client: Put Blob or blocks.

Exclusive create is ``If-None-Match: *`` on Put Blob and on Put Block List.  Block
ids carry a random per-write prefix, so concurrent writers of one blob never mix
their blocks.  A failed write never commits its block list; the service drops
uncommitted blocks by itself (after a week at the latest, or at the next commit
of that blob).  The Azure SDK retries each request itself; ours are on top.
"""

from __future__ import annotations

import uuid
from typing import Any

from ..._errors import exists_error
from ._uploader import Options, StoreBase

__all__ = ["AzureStore"]


class AzureStore(StoreBase):
    """One blob on Azure (see ``_uploader.Store``)."""

    part_size_multiple = 1
    min_part_size = 1
    ordered = False

    def __init__(self, fs: Any, path: str, url: str, options: Options) -> None:
        super().__init__(fs, path, url, options)
        self._prefix = uuid.uuid4().hex
        self._client: Any = None
        self._last_block: str | None = None

    async def prepare(self) -> None:
        self._client = self.fs.service_client.get_blob_client(self.bucket, self.key)

    def _settings(self) -> dict[str, Any]:
        from azure.storage.blob import ContentSettings

        args: dict[str, Any] = {
            "content_settings": ContentSettings(content_type=self.options.content_type),
            "metadata": dict(self.options.metadata) or None,
        }
        args.update(self.options.upload_args)
        return args

    def _block_id(self, number: int) -> str:
        return f"{self._prefix}-{number:08d}"  # the SDK base64-encodes it

    async def exists(self) -> bool:
        return bool(await self._client.exists())

    async def put(self, data: bytes, exclusive: bool) -> None:
        await self._client.upload_blob(
            data, overwrite=not exclusive, length=len(data), **self._settings()
        )

    async def start(self, exclusive: bool) -> None:
        pass

    async def upload_part(self, number: int, offset: int, data: bytes) -> Any:
        block_id = self._block_id(number)
        await self._client.stage_block(block_id, data, length=len(data))
        return block_id

    async def complete(self, parts: list[Any], offset: int, last: bytes, exclusive: bool) -> None:
        from azure.core import MatchConditions

        if self._last_block is None:
            self._last_block = await self.upload_part(len(parts) + 1, offset, last)
        condition: dict[str, Any] = (
            {"match_condition": MatchConditions.IfMissing} if exclusive else {}
        )
        try:
            await self._client.commit_block_list(
                [*parts, self._last_block], **self._settings(), **condition
            )
        except Exception as exc:
            # a racing writer's commit also drops our uncommitted blocks
            if exclusive and _error_code(exc) == "InvalidBlockList" and await self.exists():
                raise exists_error(self.url) from exc
            raise

    async def cancel(self) -> None:
        pass  # uncommitted blocks are invisible and dropped by the service

    async def probe(self) -> None:
        """One byte staged as a block and never committed: no blob appears (the
        service drops uncommitted blocks within a week)."""
        await self.upload_part(1, 0, b"\0")

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


def _is_exists(exc: BaseException) -> bool:
    from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

    return isinstance(exc, ResourceExistsError | ResourceModifiedError)


def _short(exc: BaseException) -> str:
    """The service's message without the request id, time and XML body it carries."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    code = _error_code(exc)
    return f"{first} ({code})" if code else first


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    return str(code) if code is not None else None
