"""STOW-RS without I/O: multipart framing, File Meta sniffing, response parsing.

Everything here is synchronous and pure (bytes in, values out), so the HTTP side
(:mod:`aiodicom.sinks.dicomweb`) only moves bytes and decides when to retry.

* :func:`part_head` / :func:`close_delimiter` frame a
  ``multipart/related; type="application/dicom"`` body (RFC 2046: the CRLF before a
  delimiter belongs to the delimiter, so a part's bytes are sent untouched).
* :class:`MetaSniffer` finds the SOP Class / Instance UIDs in the File Meta
  Information at the start of an instance, from its first chunks, without copying
  more than the meta group.
* :func:`parse_response` reads a Store Instances Response (DICOM JSON, DICOM XML,
  or nothing) into :class:`StowResponse`; :func:`classify` turns it into one
  :class:`Verdict` per instance sent.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import secrets
import struct
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._protocol import Chunk

__all__ = [
    "MetaSniffer",
    "StowResponse",
    "Verdict",
    "classify",
    "close_delimiter",
    "content_type",
    "is_duplicate",
    "new_boundary",
    "parse_response",
    "part_head",
    "pieces",
    "retry_after",
]

PIECE: Final = 4 * 1024 * 1024
"""Largest slice of a chunk handed to the HTTP client at once (it copies each one
while framing it: this bounds that copy).  As large as the encoder's chunks: each
is one HTTP chunk, which servers handle faster than many small ones."""

MAX_RESPONSE: Final = 16 * 1024 * 1024
"""A Store Instances Response larger than this is not read (it is not one)."""

# Tags of the Store Instances Response Module (PS3.18 Annex I)
RETRIEVE_URL: Final = "00081190"
FAILED_SOP_SEQUENCE: Final = "00081198"
REFERENCED_SOP_SEQUENCE: Final = "00081199"
REFERENCED_SOP_CLASS_UID: Final = "00081150"
REFERENCED_SOP_INSTANCE_UID: Final = "00081155"
FAILURE_REASON: Final = "00081197"
WARNING_REASON: Final = "00081196"

PROCESSING_FAILURE: Final = 0x0110  # 272: Google's reason for a duplicate with other bytes
DUPLICATE_SOP_INSTANCE: Final = 0x0111  # 273: the standard's "duplicate SOP Instance"
AZURE_DUPLICATE: Final = 45070  # 0xB00E: Azure's "instance already stored"
_DUPLICATE_REASONS: Final = frozenset({DUPLICATE_SOP_INSTANCE, AZURE_DUPLICATE})
_TEXT_VRS: Final = frozenset({"LO", "LT", "SH", "ST", "UT"})


# ----------------------------------------------------------------------------- framing


def new_boundary() -> str:
    """A fresh multipart boundary (128 random bits: it cannot occur in the data by
    accident, and nobody can make it occur)."""
    return f"aiodicom-{secrets.token_hex(16)}"


def content_type(boundary: str) -> str:
    """The request's Content-Type."""
    return f'multipart/related; type="application/dicom"; boundary={boundary}'


def part_head(boundary: str, *, first: bool) -> bytes:
    """What goes before an instance's bytes (its delimiter and part headers)."""
    lead = b"" if first else b"\r\n"
    return lead + b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"


def close_delimiter(boundary: str, *, parts: int) -> bytes:
    """The end of the body.  Without it the server must not store anything."""
    lead = b"\r\n" if parts else b""
    return lead + b"--" + boundary.encode() + b"--\r\n"


def pieces(chunk: Chunk) -> Iterator[Chunk]:
    """`chunk` in slices of at most :data:`PIECE` bytes, without copying it."""
    if isinstance(chunk, bytes) and len(chunk) <= PIECE:
        yield chunk
        return
    view = memoryview(chunk)
    if not view.contiguous:
        view = memoryview(view.tobytes())
    view = view.cast("B")
    for start in range(0, view.nbytes, PIECE):
        yield view[start : start + PIECE]


# ----------------------------------------------------------------------------- File Meta


@dataclass
class MetaSniffer:
    """Reads the SOP Class and Instance UIDs from the start of a DICOM file.

    Feed it the instance's chunks in order until :attr:`done`; it keeps a copy of
    at most the File Meta Information (a few hundred bytes), or of `limit` bytes
    when the meta group is not found there.  :attr:`sop_instance_uid` stays
    ``None`` for data that is not in the DICOM File Format.
    """

    limit: int = 64 * 1024
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    transfer_syntax_uid: str | None = None
    done: bool = False
    _buffer: bytearray = field(default_factory=bytearray, repr=False)

    def feed(self, chunk: Chunk) -> bool:
        """Look at `chunk`; return :attr:`done`."""
        if self.done:
            return True
        view = memoryview(chunk)
        if not view.contiguous:
            view = memoryview(view.tobytes())
        view = view.cast("B")
        self._buffer += view[: max(0, self.limit - len(self._buffer))]
        self._parse()
        if not self.done and len(self._buffer) >= self.limit:
            self.done = True
        if self.done:
            self._buffer = bytearray()
        return self.done

    def finish(self) -> None:
        """No more data is coming: settle with what was found."""
        if not self.done:
            self._parse(final=True)
            self.done = True
            self._buffer = bytearray()

    def _parse(self, *, final: bool = False) -> None:
        data = self._buffer
        if len(data) >= 132 and data[128:132] == b"DICM":
            offset = 132
        elif len(data) >= 2 and data[:2] == b"\x02\x00":
            offset = 0  # File Meta Information without preamble
        elif len(data) >= 132 or final:
            self.done = True  # not the DICOM File Format
            return
        else:
            return
        values: dict[int, str] = {}
        while True:
            if len(data) < offset + 8:
                break
            group, element = struct.unpack_from("<HH", data, offset)
            if group != 2:
                self._settle(values)
                return
            vr = bytes(data[offset + 4 : offset + 6])
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
                if len(data) < offset + 12:
                    break
                (length,) = struct.unpack_from("<I", data, offset + 8)
                start = offset + 12
            else:
                (length,) = struct.unpack_from("<H", data, offset + 6)
                start = offset + 8
            if len(data) < start + length:
                break
            if element in (2, 3, 0x10):
                values[element] = bytes(data[start : start + length]).decode("ascii", "replace")
            offset = start + length
        if final:
            self._settle(values)

    def _settle(self, values: dict[int, str]) -> None:
        def uid(element: int) -> str | None:
            value = values.get(element, "").rstrip("\x00 ").strip()
            return value or None

        self.sop_class_uid = uid(2)
        self.sop_instance_uid = uid(3)
        self.transfer_syntax_uid = uid(0x10)
        self.done = True


# ----------------------------------------------------------------------------- responses


@dataclass
class Entry:
    """One instance listed in a Store Instances Response."""

    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    retrieve_url: str | None = None
    failure_reason: int | None = None
    warning_reason: int | None = None
    texts: list[str] = field(default_factory=list)
    """Every text value in the item (FailureDetail, ErrorComment...), for messages."""


@dataclass
class StowResponse:
    """A parsed Store Instances Response (whatever the server's format)."""

    status: int
    referenced: list[Entry] = field(default_factory=list)
    failed: list[Entry] = field(default_factory=list)
    readable: bool = True
    """``False`` when the body was neither DICOM JSON, DICOM XML nor empty."""
    excerpt: str = ""
    """The start of the body, for error messages."""
    retry_after: float | None = None


def parse_response(
    status: int, content_type: str | None, body: bytes, retry_after_header: str | None = None
) -> StowResponse:
    """Parse a Store Instances Response; never raises for a bad body."""
    excerpt = body[:500].decode("utf-8", "replace").strip()
    response = StowResponse(status, excerpt=excerpt, retry_after=retry_after(retry_after_header))
    text = body.strip()
    if not text:
        return response
    kind = (content_type or "").lower()
    try:
        if "xml" in kind or text.startswith(b"<"):
            model = _xml_model(text)
        elif "html" in kind:
            raise ValueError("an HTML page")
        else:
            model = json.loads(text)
        if isinstance(model, list) and len(model) == 1:
            model = model[0]
        if not isinstance(model, dict):
            raise ValueError("not a DICOM JSON object")
        response.referenced = [_entry(item) for item in _items(model, REFERENCED_SOP_SEQUENCE)]
        response.failed = [_entry(item) for item in _items(model, FAILED_SOP_SEQUENCE)]
    except (ValueError, TypeError, AttributeError, ElementTree.ParseError):
        response.readable = False
        response.referenced, response.failed = [], []
    return response


def _items(model: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    element = model.get(tag)
    if not isinstance(element, dict):
        return []
    values = element.get("Value") or []
    if not isinstance(values, list):
        raise ValueError(f"({tag[:4]},{tag[4:]}) is not a sequence")
    return [item for item in values if isinstance(item, dict)]


def _first(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _entry(item: dict[str, Any]) -> Entry:
    def text(tag: str) -> str | None:
        value = _first(item, tag)
        if value is None:
            return None
        return str(value).strip() or None

    def number(tag: str) -> int | None:
        value = _first(item, tag)
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, int | float):
            return int(value)
        text = str(value).strip().lower()
        try:
            return int(text, 16) if text.startswith("0x") else int(text)
        except ValueError:
            return None

    return Entry(
        sop_instance_uid=text(REFERENCED_SOP_INSTANCE_UID),
        sop_class_uid=text(REFERENCED_SOP_CLASS_UID),
        retrieve_url=text(RETRIEVE_URL),
        failure_reason=number(FAILURE_REASON),
        warning_reason=number(WARNING_REASON),
        texts=list(_texts(item)),
    )


def _texts(item: dict[str, Any]) -> Iterator[str]:
    for element in item.values():
        if not isinstance(element, dict):
            continue
        for value in element.get("Value") or []:
            if isinstance(value, dict):
                yield from _texts(value)
            elif isinstance(value, str) and element.get("vr") in _TEXT_VRS:
                yield value


def _xml_model(text: bytes) -> dict[str, Any]:
    """DICOM XML (PS3.19 Native DICOM Model) as the DICOM JSON model."""
    root = ElementTree.fromstring(text)  # bounded size; expat limits entity expansion
    if _local(root.tag) != "NativeDicomModel":
        raise ValueError(f"not a NativeDicomModel but {_local(root.tag)}")
    return _xml_dataset(root)


def _xml_dataset(node: ElementTree.Element) -> dict[str, Any]:
    dataset: dict[str, Any] = {}
    for attribute in node:
        if _local(attribute.tag) != "DicomAttribute":
            continue
        tag = (attribute.get("tag") or "").upper()
        vr = attribute.get("vr") or ""
        values: list[Any] = []
        for child in attribute:
            name = _local(child.tag)
            if name == "Item":
                values.append(_xml_dataset(child))
            elif name == "Value" and vr != "SQ":
                values.append(child.text or "")
        dataset[tag] = {"vr": vr, "Value": values} if values else {"vr": vr}
    return dataset


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def retry_after(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP-date)."""
    if not header:
        return None
    header = header.strip()
    try:
        seconds = float(header)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


# ----------------------------------------------------------------------------- verdicts


class Verdict(enum.Enum):
    """What a response says about one instance that was sent."""

    STORED = "stored"
    EXISTS = "exists"  # the server refused it because it holds that instance
    FAILED = "failed"  # not stored (or not known to be), and retrying will not help
    RETRY = "retry"  # not stored, and the server says to try again


@dataclass
class Outcome:
    """The verdict on one instance, with what the server said about it."""

    verdict: Verdict
    entry: Entry | None
    message: str


def is_duplicate(entry: Entry) -> bool:
    """Whether a FailedSOPSequence item says the instance exists already: Azure's
    45070, the standard's 0x0111, or Google's 0x0110 (272) with a detail saying so."""
    reason = entry.failure_reason
    if reason in _DUPLICATE_REASONS:
        return True
    return reason == PROCESSING_FAILURE and any(
        "already exists" in text.lower() for text in entry.texts
    )


def classify(response: StowResponse, uids: Sequence[str | None]) -> list[Outcome]:
    """One :class:`Outcome` per instance sent (`uids` in request order).

    The per-instance lists win over the status code (Orthanc answers 400 to a body
    with one bad part and still lists the good ones as stored); an instance that is
    not listed gets what the status code says of all of them: 200 stored, 429 or
    503 retry, anything else not stored (202: the server did not say).
    """
    referenced = {e.sop_instance_uid: e for e in response.referenced if e.sop_instance_uid}
    failed = {e.sop_instance_uid: e for e in response.failed if e.sop_instance_uid}
    unmatched = [e for e in response.failed + response.referenced if not e.sop_instance_uid]
    status = response.status
    outcomes: list[Outcome] = []
    for uid in uids:
        entry: Entry | None = None
        listed_as = ""
        if uid is not None and uid in failed:
            entry, listed_as = failed[uid], "failed"
        elif uid is not None and uid in referenced:
            entry, listed_as = referenced[uid], "referenced"
        elif len(uids) == 1 and len(response.referenced) + len(response.failed) == 1:
            # one instance sent, one listed: it is that one (whatever its UID says)
            if response.failed:
                entry, listed_as = response.failed[0], "failed"
            else:
                entry, listed_as = response.referenced[0], "referenced"
        elif len(uids) == 1 and len(unmatched) == 1:
            entry = unmatched[0]
            listed_as = "failed" if entry in response.failed else "referenced"
        outcomes.append(_outcome(status, entry, listed_as, response))
    return outcomes


def _outcome(status: int, entry: Entry | None, listed_as: str, response: StowResponse) -> Outcome:
    if entry is not None and listed_as == "failed":
        reason = entry.failure_reason
        detail = "; ".join(entry.texts)
        message = f"HTTP {status}, FailureReason {_reason(reason)}" + (
            f": {detail}" if detail else ""
        )
        if is_duplicate(entry):
            return Outcome(Verdict.EXISTS, entry, message)
        if reason is not None and 0xA700 <= reason <= 0xA7FF:  # out of resources
            return Outcome(Verdict.RETRY, entry, message)
        return Outcome(Verdict.FAILED, entry, message)
    if entry is not None:
        return Outcome(Verdict.STORED, entry, f"HTTP {status}")
    if status in (429, 503):
        return Outcome(Verdict.RETRY, None, f"HTTP {status}: the server is busy")
    if status in (200, 201):
        return Outcome(Verdict.STORED, None, f"HTTP {status}")
    if status == 202:
        return Outcome(
            Verdict.FAILED,
            None,
            "HTTP 202: the server stored some instances of the request but did not "
            "say whether this one was stored",
        )
    excerpt = f": {response.excerpt}" if response.excerpt else ""
    return Outcome(Verdict.FAILED, None, f"HTTP {status}{excerpt}")


def _reason(code: int | None) -> str:
    return "?" if code is None else f"{code} (0x{code:04X})"
