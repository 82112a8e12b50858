"""A FastAPI service that stores uploaded DICOM files with aiodicom.

``POST /instances`` with a multipart form field ``file`` stores the instance as
``<SOPInstanceUID>.dcm`` in the DICOM File Format and answers

* 201 with ``{"sop_instance_uid": ..., "location": ...}``;
* 409 if that instance is stored already: the write uses ``exist_ok=False``, which
  aiodicom enforces atomically (two concurrent uploads of one instance: one 201, one
  409, never a mixed file);
* 400 if the upload is not a DICOM file or cannot be written as one.

Where files go, from the environment:

* ``AIODICOM_UPLOAD_DESTINATION``: a local folder (default ``./uploads``) or an
  fsspec URL prefix such as ``s3://bucket/dicom``;
* ``AIODICOM_UPLOAD_STORAGE_OPTIONS``: JSON fsspec options for a URL, for example
  ``{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}``.

Run it with ``uvicorn examples.fastapi_upload:app`` or ``python
examples/fastapi_upload.py --serve`` (needs aiodicom, and ``pip install fastapi
python-multipart httpx uvicorn``; add aiodicom's ``s3`` extra for S3).  ``python
examples/fastapi_upload.py`` alone uploads pydicom's example CT slice twice through
the app in-process (201, then 409), with httpx.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pydicom
from fastapi import FastAPI, HTTPException, UploadFile
from fastapi.responses import JSONResponse
from pydicom.errors import InvalidDicomError

import aiodicom
from aiodicom.sinks import is_url

_UID = re.compile(r"[0-9]+(\.[0-9]+)*")  # a UID is a safe file name; anything else is refused


def create_app(
    destination: str | None = None, storage_options: dict[str, Any] | None = None
) -> FastAPI:
    """The service, storing into `destination` (default: from the environment)."""
    if destination is None:
        destination = os.environ.get("AIODICOM_UPLOAD_DESTINATION", "uploads")
    if storage_options is None and "AIODICOM_UPLOAD_STORAGE_OPTIONS" in os.environ:
        storage_options = json.loads(os.environ["AIODICOM_UPLOAD_STORAGE_OPTIONS"])
    remote = is_url(destination)
    app = FastAPI(title="DICOM upload (aiodicom example)")

    @app.post("/instances", status_code=201)
    async def store_instance(file: UploadFile) -> JSONResponse:
        data = await file.read()
        try:
            ds = await anyio.to_thread.run_sync(pydicom.dcmread, io.BytesIO(data))
        except (InvalidDicomError, EOFError, ValueError) as exc:
            raise HTTPException(400, f"not a DICOM file: {exc}") from None
        uid = str(ds.get("SOPInstanceUID", ""))
        if len(uid) > 64 or not _UID.fullmatch(uid):
            raise HTTPException(400, "the upload has no valid SOP Instance UID")
        location = f"{destination.rstrip('/')}/{uid}.dcm"
        if not remote:
            await anyio.Path(destination).mkdir(parents=True, exist_ok=True)
        try:
            await aiodicom.dcmwrite(
                location,
                ds,
                enforce_file_format=True,
                exist_ok=False,
                storage_options=storage_options if remote else None,
            )
        except FileExistsError:
            raise HTTPException(409, f"instance {uid} is stored already") from None
        except ValueError as exc:  # pydicom's reasons a dataset cannot be a DICOM file
            raise HTTPException(400, str(exc)) from None
        return JSONResponse(
            {"sop_instance_uid": uid, "location": location},
            status_code=201,
            headers={"Location": f"/instances/{uid}"},
        )

    return app


app = create_app()


async def demo() -> None:
    """Upload pydicom's CT slice twice through the app, in-process."""
    from pydicom import examples

    buffer = io.BytesIO()
    await aiodicom.dcmwrite(buffer, examples.ct)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
        for _ in range(2):
            files = {"file": ("ct.dcm", buffer.getvalue(), "application/dicom")}
            response = await client.post("/instances", files=files)
            print(response.status_code, response.json())


if __name__ == "__main__":
    if "--serve" in sys.argv:
        import uvicorn  # not a dependency of the example's tests

        uvicorn.run(app, host="127.0.0.1", port=8000)
    else:
        anyio.run(demo)
