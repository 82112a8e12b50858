"""Google Cloud Storage through gcsfs: a multipart upload or a resumable session.

Exclusive create is ``ifGenerationMatch=0`` on the single upload and on the
resumable session (checked by GCS when the last chunk lands).  Chunks of a
resumable upload must be multiples of 256 KiB and go in order, one at a time.
A failed write DELETEs the session.  gcsfs retries each request itself; ours are
on top (see ``_uploader``).

Checksums: GCS keeps a CRC32C (and an MD5 for objects not composed) of every
object and checks one the client declares.  A single-request upload declares
``crc32c`` (or ``md5Hash``) in its metadata part; a resumable upload declares it
in the ``X-Goog-Hash`` header of its final request (what Google's own clients do
since 2025), where GCS refuses to finalise on a mismatch.  With ``sha256``, which
GCS does not know, the CRC32C is sent as well.  Each finalising response carries
the store's own checksums, which are compared too: a server that did not check
(an emulator) but stored other bytes has its object deleted at once (that
generation only) and the write fails, so no corrupt object is left visible.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final
from urllib.parse import quote

from ..._checksum import Algorithm
from ..._errors import ChecksumMismatchError, exists_error
from ._uploader import Checksums, Options, StoreBase

__all__ = ["GCSStore"]

_QUANTUM: Final = 256 * 1024
_FIELD: Final = {"crc32c": "crc32c", "md5": "md5Hash"}  # object resource fields
_HASH: Final = {"crc32c": "crc32c", "md5": "md5"}  # X-Goog-Hash names
_MISMATCH: Final = re.compile(
    r"(CRC32C|MD5)[^\"]*\"([^\"]*)\"\s*(?:does not|doesn't) match[^\"]*\"([^\"]*)\"", re.I
)
_BOUNDARY: Final = "==aiodicom=="


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

    def checksums(
        self, algorithm: Algorithm | None
    ) -> tuple[Algorithm | None, tuple[Algorithm, ...]]:
        if algorithm is None:
            return None, ()
        return None, ("md5",) if algorithm == "md5" else ("crc32c",)

    def _declared(self, whole: Checksums) -> dict[str, str]:
        """The checksums GCS can check, as object resource fields."""
        return {_FIELD[name]: whole[name].b64 for name in _FIELD if name in whole}

    async def put(self, data: bytes, exclusive: bool, whole: Checksums) -> None:
        declared = self._declared(whole)
        if not declared:
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
            return
        from gcsfs.core import _convert_fixed_key_metadata

        # gcsfs's simple_upload, with the checksums in the metadata part
        metadata: dict[str, Any] = {"name": self.key, **declared}
        if self.options.metadata:
            metadata["metadata"] = dict(self.options.metadata)
        metadata.update(_convert_fixed_key_metadata(self._fixed))
        query: dict[str, str] = {"ifGenerationMatch": "0"} if exclusive else {}
        if self._kms:
            query["kmsKeyName"] = self._kms
        head = (
            f"--{_BOUNDARY}\nContent-Type: application/json; charset=UTF-8\n\n"
            f"{json.dumps(metadata)}\n--{_BOUNDARY}\n"
            f"Content-Type: {self.options.content_type}\n\n"
        ).encode()
        try:
            resource = await self.fs._call(
                "POST",
                f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o",
                uploadType="multipart",
                headers={"Content-Type": f'multipart/related; boundary="{_BOUNDARY}"'},
                data=head + data + f"\n--{_BOUNDARY}--".encode(),
                json_out=True,
                **query,
            )
        except Exception as exc:
            self._raise_mismatch(exc, whole)
            raise
        await self._check_stored(resource, whole)

    async def _check_stored(self, resource: Any, whole: Checksums) -> None:
        """Compare the store's checksums of the object it just created with ours;
        on a mismatch (a server that did not check), delete that generation."""
        if not isinstance(resource, dict):
            return
        for name, field in _FIELD.items():
            theirs = resource.get(field)
            if name not in whole or not theirs or theirs == whole[name].b64:
                continue
            generation = resource.get("generation")
            try:
                await self.fs._call(
                    "DELETE",
                    "b/{}/o/{}",
                    self.bucket,
                    self.key,
                    **({"ifGenerationMatch": str(generation)} if generation else {}),
                )
                fate = "the object it stored was deleted"
            except Exception as exc:  # pragma: no cover - reported in the message
                fate = f"deleting the object it stored failed too: {exc}"
            raise ChecksumMismatchError(
                self.url,
                name,
                whole[name].b64,
                theirs,
                detail=f"the store stored other bytes without checking the checksum; {fate}",
            )

    def _raise_mismatch(self, exc: Exception, whole: Checksums) -> None:
        """Raise the :class:`~aiodicom.ChecksumMismatchError` that `exc` (GCS's
        ``400 Provided CRC32C "..." doesn't match calculated CRC32C "..."``) means."""
        if getattr(exc, "code", None) != 400:
            return
        message = str(getattr(exc, "message", exc))
        found = _MISMATCH.search(message)
        if found is not None:
            name = "crc32c" if found.group(1).lower() == "crc32c" else "md5"
            ours = whole[name].b64 if name in whole else found.group(2)
            actual: str | None = found.group(3)
        else:
            # another wording of the same refusal: a 400 that names a hash we sent
            named = [name for name in _FIELD if name in whole and name in message.lower()]
            if not named:
                return
            name, ours, actual = named[0], whole[named[0]].b64, None
        raise ChecksumMismatchError(
            self.url, name, ours, actual, detail=f"the store said: {message}"
        ) from exc

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

    async def upload_part(self, number: int, offset: int, data: bytes, sums: Checksums) -> Any:
        await self._send(data, offset, None)
        return number

    async def complete(
        self,
        parts: list[Any],
        offset: int,
        last: bytes,
        exclusive: bool,
        sums: Checksums,
        whole: Checksums,
    ) -> None:
        hashes = ",".join(f"{_HASH[name]}={whole[name].b64}" for name in _HASH if name in whole)
        try:
            resource = await self._send(last, offset, offset + len(last), hashes)
        except Exception as exc:
            self._raise_mismatch(exc, whole)
            raise
        self.location = None
        await self._check_stored(resource, whole)

    async def _send(
        self, data: bytes | bytearray, offset: int, total: int | None, hashes: str = ""
    ) -> Any:
        """POST `data` at `offset` to the session; `total` and `hashes` (the
        ``X-Goog-Hash`` value) only with the last chunk.  Returns the object
        resource once the upload is finalised.

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
            if hashes:
                headers["X-Goog-Hash"] = hashes
            got, body = await self.fs._call("POST", self.location, headers=headers, data=view)
            if "Range" not in got:
                return _json(body) if total is not None else None
            kept = int(got["Range"].split("-")[1])
            if kept >= end:
                return _json(body) if total is not None else None
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


def _json(body: Any) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None
