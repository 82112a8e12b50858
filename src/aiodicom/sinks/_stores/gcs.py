"""Google Cloud Storage through gcsfs: a multipart upload or a resumable session.

Exclusive create is ``ifGenerationMatch=0`` on the single upload and on the
resumable session (checked by GCS when the last chunk lands).  Chunks of a
resumable upload must be multiples of 256 KiB and go in order, one at a time.
A failed write DELETEs the session.  gcsfs retries each request itself; ours are
on top (see ``_remote``).
"""

from __future__ import annotations

from typing import Any, Final

from ..._errors import exists_error
from ._uploader import Options, StoreBase

__all__ = ["GCSStore"]

_QUANTUM: Final = 256 * 1024


class GCSStore(StoreBase):
    """One object on GCS (see ``_uploader.Store``)."""

    part_size_multiple = _QUANTUM
    min_part_size = _QUANTUM
    ordered = True

    def __init__(self, fs: Any, path: str, url: str, options: Options) -> None:
        super().__init__(fs, path, url, options)
        self.location: str | None = None
        args = dict(options.upload_args)
        self._fixed = args.pop("fixed_key_metadata", None)
        self._kms = args.pop("kms_key_name", None)
        if args:
            raise TypeError(
                "upload_args for GCS may only hold 'fixed_key_metadata' and "
                f"'kms_key_name', not {', '.join(map(repr, args))}"
            )

    async def prepare(self) -> None:
        await self.fs._set_session()

    async def exists(self) -> bool:
        try:
            await self.fs._call("GET", "b/{}/o/{}", self.bucket, self.key, json_out=True)
        except FileNotFoundError:
            return False
        return True

    def _mode(self, exclusive: bool) -> str:
        return "create" if exclusive else "overwrite"

    async def put(self, data: bytes, exclusive: bool) -> None:
        from gcsfs.core import simple_upload

        await simple_upload(
            self.fs,
            self.bucket,
            self.key,
            data,
            self.options.metadata or None,
            None,
            self.options.content_type,
            self._fixed,
            mode=self._mode(exclusive),
            kms_key_name=self._kms,
        )

    async def start(self, exclusive: bool) -> None:
        from gcsfs.core import initiate_upload

        if self.location is not None:  # a retried start: drop the first session
            await self.cancel()
        self.location = await initiate_upload(
            self.fs,
            self.bucket,
            self.key,
            self.options.content_type,
            self.options.metadata or None,
            self._fixed,
            mode=self._mode(exclusive),
            kms_key_name=self._kms,
        )

    async def upload_part(self, number: int, offset: int, data: bytes) -> Any:
        await self._send(data, offset, None)
        return number

    async def complete(self, parts: list[Any], offset: int, last: bytes, exclusive: bool) -> None:
        await self._send(last, offset, offset + len(last))
        self.location = None

    async def _send(self, data: bytes | bytearray, offset: int, total: int | None) -> None:
        """POST `data` at `offset` to the session; `total` only with the last chunk.

        The service may keep less than it got (a ``Range`` header tells how much);
        the rest is sent again, as gcsfs does.
        """
        view = memoryview(data)
        size = "*" if total is None else str(total)
        while True:
            end = offset + len(view) - 1
            headers = {
                "Content-Range": f"bytes {offset}-{end}/{size}",
                "Content-Type": self.options.content_type,
                "Content-Length": str(len(view)),
            }
            got, _ = await self.fs._call("POST", self.location, headers=headers, data=view)
            if "Range" not in got:
                return
            kept = int(got["Range"].split("-")[1])
            if kept >= end:
                return
            view = view[kept + 1 - offset :]
            offset = kept + 1

    async def cancel(self) -> None:
        if self.location is None:
            return
        location, self.location = self.location, None
        await self.fs._call("DELETE", location.replace("&ifGenerationMatch=0", ""))

    async def probe(self) -> None:
        """A resumable session, started and deleted: no object is created."""
        await self.start(False)
        await self.cancel()

    def is_transient(self, exc: BaseException) -> bool:
        from gcsfs.retry import is_retriable

        return bool(is_retriable(exc))

    def is_session_lost(self, exc: BaseException) -> bool:
        # A resumable session URL that answers 404 or 410 has expired.  gcsfs
        # raises FileNotFoundError (no .code) for a 404, and an HttpError with
        # .code for the rest.
        if self.location is None:
            return False
        return isinstance(exc, FileNotFoundError) or getattr(exc, "code", None) in (404, 410)

    def translate(self, exc: Exception) -> Exception:
        """gcsfs already raises built-in errors; a failed ``ifGenerationMatch=0``
        (``FileExistsError`` naming the key) is renamed to the URL."""
        if isinstance(exc, FileExistsError):
            return exists_error(self.url)
        return exc

    def invalidate(self) -> None:
        self.fs.invalidate_cache(self.path)
