"""A small STOW-RS / QIDO-RS server on loopback whose answers each test chooses.

It replays the documented behaviour of servers we cannot run here:

* **Azure DICOM service** (conformance statement v2): 200 when every instance was
  stored, 202 when some were, 409 when none; a duplicate is a FailedSOPSequence
  item with FailureReason 45070; warnings (45063, 1) in ReferencedSOPSequence items.
* **Google Cloud Healthcare API**: an instance already stored with the *same*
  bytes is accepted silently (listed as stored); with *other* bytes the answer is
  409 with FailureReason 272 and a private FailureDetail (0009,0097) saying the
  instance already exists (DICOM XML by default, as in the response quoted in
  dcmjs issue #249).

and lets a test script faults: an answer of its choice (503 with Retry-After,
malformed bodies), a connection dropped part-way through the body or after it, or
a request passed on to a real server (Orthanc) with its answer rewritten.

Requests are recorded (:attr:`FakeDicomWeb.requests`) with their decoded parts.
The body of a chunked request is read chunk by chunk, as a server does.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pydicom

__all__ = [
    "Drop",
    "FakeDicomWeb",
    "Forward",
    "Part",
    "Reply",
    "Request",
    "azure",
    "dicom_json",
    "forwarding",
    "google",
    "standard",
]


@dataclass
class Part:
    """One instance of a request."""

    data: bytes
    sop_instance_uid: str | None
    sop_class_uid: str | None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    complete: bool = False  # the multipart body ended with its closing delimiter
    parts: list[Part] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Drop:
    """Close the connection without an answer, after reading `after` body bytes
    (``None``: after the whole body)."""

    after: int | None = None


@dataclass
class Forward:
    """Pass the request on to `url` (a STOW-RS URL); `rewrite` may change the answer."""

    url: str
    rewrite: Callable[[Reply], Reply] | None = None


Action = Reply | Drop | Forward
Responder = Callable[["FakeDicomWeb", Request], Reply]


class FakeDicomWeb:
    """The server.  ``with FakeDicomWeb(responder) as fake:`` serves ``fake.url``.

    `responder` answers STOW-RS requests (see :func:`standard`, :func:`azure`,
    :func:`google`); :attr:`plan` holds actions used first, one per STOW-RS request.
    QIDO-RS searches (``GET .../instances?SOPInstanceUID=``) answer from
    :attr:`stored`.
    """

    def __init__(
        self, responder: Responder | None = None, *, tls: ssl.SSLContext | None = None
    ) -> None:
        self.responder = responder or standard
        self.tls = tls
        self.plan: list[Action] = []
        self.requests: list[Request] = []
        self.stored: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    def __enter__(self) -> FakeDicomWeb:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        port = self._server.server_address[1]
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{port}/dicomweb"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def stow_requests(self) -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PUT")]

    def next_action(self) -> Action | None:
        with self.lock:
            return self.plan.pop(0) if self.plan else None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeDicomWeb
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- requests ---------------------------------------------------------------------

    def do_GET(self) -> None:
        request = self._request()
        self.fake.requests.append(request)
        self._read_body(request, None)
        uid = (request.query.get("SOPInstanceUID") or [""])[0]
        if not request.path.endswith("/instances"):
            self._answer(Reply(404))
            return
        with self.fake.lock:
            found = uid in self.fake.stored
        matches = [{"00080018": {"vr": "UI", "Value": [uid]}}] if found else []
        self._answer(Reply(200, json.dumps(matches).encode(), _JSON))

    def do_DELETE(self) -> None:  # aiodicom never deletes: recorded, and refused
        self.fake.requests.append(self._request())
        self._answer(Reply(405))

    def do_POST(self) -> None:
        self._store()

    def do_PUT(self) -> None:
        self._store()

    def _store(self) -> None:
        request = self._request()
        self.fake.requests.append(request)
        action = self.fake.next_action()
        if isinstance(action, Drop):
            if self._read_body(request, action.after):
                _parse_parts(request)
            self._drop()
            return
        if not self._read_body(request, None):
            return
        _parse_parts(request)
        if isinstance(action, Reply):
            self._answer(action)
        elif isinstance(action, Forward):
            reply = _forward(action.url, request)
            self._answer(action.rewrite(reply) if action.rewrite else reply)
        else:
            self._answer(self.fake.responder(self.fake, request))

    # -- plumbing -----------------------------------------------------------------------

    def _request(self) -> Request:
        url = urllib.parse.urlsplit(self.path)
        return Request(
            self.command,
            url.path,
            urllib.parse.parse_qs(url.query),
            {k.lower(): v for k, v in self.headers.items()},
        )

    def _read_body(self, request: Request, limit: int | None) -> bool:
        """Read the body into `request`; ``False`` if `limit` bytes came first."""
        body = bytearray()
        if request.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline()
                if not line:
                    return False
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
                if limit is not None and len(body) >= limit:
                    request.body = bytes(body)
                    return False
        else:
            length = int(request.headers.get("content-length", "0"))
            if limit is not None and length > limit:
                request.body = self.rfile.read(limit)
                return False
            body += self.rfile.read(length)
        request.body = bytes(body)
        return True

    def _drop(self) -> None:
        """Close the connection at once (RST), without an answer."""
        with contextlib.suppress(OSError):
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.close()

    def _answer(self, reply: Reply) -> None:
        with contextlib.suppress(ConnectionError):  # the client may have given up
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)


_JSON = {"Content-Type": "application/dicom+json"}


def _parse_parts(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return
    delimiter = b"--" + boundary.encode()
    body = request.body
    request.complete = body.endswith(delimiter + b"--\r\n")
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, data = chunk.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        except Exception:
            uid = sop_class = None
        request.parts.append(Part(data, uid, sop_class))


def _forward(url: str, request: Request) -> Reply:
    headers = {
        "Content-Type": request.headers.get("content-type", ""),
        "Accept": request.headers.get("accept", "application/dicom+json"),
    }
    response = httpx.request(request.method, url, content=request.body, headers=headers)
    return Reply(
        response.status_code,
        response.content,
        {"Content-Type": response.headers.get("content-type", "")},
    )


# ----------------------------------------------------------------------------- responders


def dicom_json(
    referenced: list[dict[str, Any]] | None = None, failed: list[dict[str, Any]] | None = None
) -> bytes:
    """A Store Instances Response in DICOM JSON."""
    model: dict[str, Any] = {}
    if failed is not None:
        model["00081198"] = {"vr": "SQ", "Value": failed} if failed else {"vr": "SQ"}
    if referenced is not None:
        model["00081199"] = {"vr": "SQ", "Value": referenced} if referenced else {"vr": "SQ"}
    return json.dumps(model).encode()


def referenced_item(fake: FakeDicomWeb, part: Part, warning: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [part.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [part.sop_instance_uid]},
        "00081190": {"vr": "UR", "Value": [f"{fake.url}/instances/{part.sop_instance_uid}"]},
    }
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return item


def failed_item(part: Part, reason: int, **texts: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [part.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [part.sop_instance_uid]},
        "00081197": {"vr": "US", "Value": [reason]},
    }
    for tag, text in texts.items():
        item[tag.removeprefix("t")] = {"vr": "LT", "Value": [text]}
    return item


def standard(fake: FakeDicomWeb, request: Request) -> Reply:
    """Store every readable instance (replacing); 200, or 202/409 for unreadable parts."""
    referenced, failed = [], []
    for part in request.parts:
        if part.sop_instance_uid is None:
            failed.append({"00081197": {"vr": "US", "Value": [0xC000]}})
            continue
        with fake.lock:
            fake.stored[part.sop_instance_uid] = part.data
        referenced.append(referenced_item(fake, part))
    status = 200 if not failed else 202 if referenced else 409
    return Reply(status, dicom_json(referenced, failed), _JSON)


def forwarding(url: str) -> Responder:
    """Pass every STOW-RS request on to `url` (``{base}/studies`` of a real server)
    and answer what it answered: a proxy that records the requests."""

    def respond(fake: FakeDicomWeb, request: Request) -> Reply:
        return _forward(url, request)

    return respond


def azure(fake: FakeDicomWeb, request: Request) -> Reply:
    """Azure DICOM service v2: duplicates fail with 45070, whatever their bytes."""
    referenced, failed = [], []
    for part in request.parts:
        uid = part.sop_instance_uid
        with fake.lock:
            exists = uid in fake.stored
            if not exists and uid is not None and request.method == "POST":
                fake.stored[uid] = part.data
            if uid is not None and request.method == "PUT":
                fake.stored[uid] = part.data  # upsert
                exists = False
        if exists:
            failed.append(failed_item(part, 45070))
        else:
            referenced.append(referenced_item(fake, part))
    status = 200 if not failed else 202 if referenced else 409
    return Reply(status, dicom_json(referenced, failed), _JSON)


GOOGLE_DUPLICATE = (
    "An instance already exists in this DICOM Store with the same "
    "Study/Series/SOPInstance UID, but the DICOM files differ (checksum mismatch)."
)


def google(fake: FakeDicomWeb, request: Request, *, xml: bool = True) -> Reply:
    """Cloud Healthcare API: same bytes accepted, other bytes 409 / 272 + detail."""
    referenced, failed = [], []
    for part in request.parts:
        uid = part.sop_instance_uid
        with fake.lock:
            previous = fake.stored.get(uid) if uid is not None else None
            if previous is None and uid is not None:
                fake.stored[uid] = part.data
        if previous is not None and previous != part.data:
            failed.append((part, GOOGLE_DUPLICATE))
        else:
            referenced.append(part)
    status = 200 if not failed else 202 if referenced else 409
    if not xml:
        body = dicom_json(
            [referenced_item(fake, p) for p in referenced],
            [failed_item(p, 272, t00090097=text) for p, text in failed],
        )
        return Reply(status, body, _JSON)
    body = _google_xml(fake, referenced, failed)
    return Reply(status, body, {"Content-Type": "application/dicom+xml"})


def _google_xml(
    fake: FakeDicomWeb, referenced: list[Part], failed: list[tuple[Part, str]]
) -> bytes:
    def attribute(tag: str, vr: str, keyword: str, value: str, creator: str = "") -> str:
        extra = f' privateCreator="{creator}"' if creator else ""
        return (
            f'<DicomAttribute tag="{tag}" vr="{vr}" keyword="{keyword}"{extra}>'
            f'<Value number="1">{value}</Value></DicomAttribute>'
        )

    def identifiers(part: Part) -> list[str]:
        return [
            attribute("00081150", "UI", "ReferencedSOPClassUID", str(part.sop_class_uid)),
            attribute("00081155", "UI", "ReferencedSOPInstanceUID", str(part.sop_instance_uid)),
        ]

    out = ["<NativeDicomModel>"]
    out.append(attribute("00081190", "UR", "RetrieveURL", f"{fake.url}/studies/1"))
    if failed:
        out.append('<DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">')
        for number, (part, text) in enumerate(failed, 1):
            out.append(f'<Item number="{number}">')
            out.extend(identifiers(part))
            out.append(attribute("00081197", "US", "FailureReason", "272"))
            out.append(attribute("00090097", "LT", "FailureDetail", text, "GOOGLE"))
            out.append("</Item>")
        out.append("</DicomAttribute>")
    if referenced:
        out.append('<DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">')
        for number, part in enumerate(referenced, 1):
            out.append(f'<Item number="{number}">')
            out.extend(identifiers(part))
            url = f"{fake.url}/studies/1/series/1/instances/{part.sop_instance_uid}"
            out.append(attribute("00081190", "UR", "RetrieveURL", url))
            out.append("</Item>")
        out.append("</DicomAttribute>")
    out.append("</NativeDicomModel>")
    return "".join(out).encode()


@contextlib.contextmanager
def serving(responder: Responder | None = None) -> Iterator[FakeDicomWeb]:
    with FakeDicomWeb(responder) as fake:
        yield fake
