"""PutObject without botocore's per-request pipeline, once botocore has shown how.

Profiled on an export of 0.5 MiB objects, botocore's request pipeline (about
twenty event handlers, endpoint rules, the retry machinery, response parsing)
cost about 1.4 ms of CPU per PutObject, more than reading, encoding and hashing
the object together; on two cores the client's CPU and the store's are what
limits an export.  So after botocore has sent one PutObject for a client, bucket
and set of arguments, the request it sent becomes a *template*: the next objects
are sent as the same request with another key, body and checksum, signed by the
client's own signer (same credentials, refreshed as botocore refreshes them; same
signature version, region and signing name; the payload hashed or not by
botocore's own rule) and sent through the client's own HTTP session (same
proxies, TLS settings, timeouts and connection pool).

What is not reproduced is refused: a template is only made from a request whose
URL ends with the key as botocore encodes it, carries no query, and was signed
with SigV4 or not at all (not SigV4a, not S3 Express sessions).  An answer the
store gives that botocore would act on itself (a redirect, an expired token, a
clock skew, anything not listed in ``_OURS``) sends the request again through
botocore, and that template is dropped.  The answers the store uploader acts on
(a failed precondition, a bad digest, a transient error) are parsed by botocore's
parser into the same ``ClientError`` botocore would raise.
"""

from __future__ import annotations

import contextvars
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

__all__ = ["Templates"]

_PER_REQUEST: Final = frozenset(
    {
        "authorization",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
        "content-length",
        "content-md5",
        "if-none-match",
        "amz-sdk-invocation-id",
        "amz-sdk-request",
        "x-amz-checksum-crc32",
        "x-amz-checksum-crc32c",
        "x-amz-checksum-crc64nvme",
        "x-amz-checksum-sha1",
        "x-amz-checksum-sha256",
        "x-amz-sdk-checksum-algorithm",
    }
)
"""Headers that belong to one request, not to the template."""

_FOREIGN: Final = frozenset(
    {"x-amz-trailer", "x-amz-decoded-content-length", "x-amz-sdk-checksum-algorithm"}
)
"""Headers of a request whose body botocore encodes or checksums itself."""

_MOST_TEMPLATES: Final = 64
"""Templates kept per client: arguments that differ for every object (metadata
made per item, say) would otherwise grow the table with every object."""

_CONTEXT: Final = ("client_config", "checksum", "has_streaming_input", "signing", "auth_type")
"""What of botocore's request context its signer reads."""

_SIGNERS: Final = frozenset({"s3v4", "v4"})

_OURS: Final = frozenset(
    {
        "PreconditionFailed",
        "ConditionalRequestConflict",
        "BadDigest",
        "XAmzContentChecksumMismatch",
        "InvalidDigest",
        "InternalError",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
"""Error codes answered to a templated request that are raised as they are."""

_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "aiodicom_s3_capture", default=None
)


@dataclass
class _Capture:
    key: str
    signature_version: Any = None
    signing_name: str | None = None
    region_name: str | None = None
    context: dict[str, Any] | None = None
    url: str | None = None
    headers: list[tuple[str, str]] | None = None


@dataclass(frozen=True)
class _Template:
    prefix: str
    headers: tuple[tuple[str, str], ...]
    context: dict[str, Any]
    signature_version: Any
    signing_name: str
    region_name: str


def _encoded(key: str) -> str:
    """The key as botocore puts it in a URL path."""
    return quote(key.encode("utf-8"), safe="/~")


def _before_sign(
    request: Any = None,
    signing_name: str | None = None,
    region_name: str | None = None,
    signature_version: Any = None,
    **_: Any,
) -> None:
    capture = _capture.get()
    if capture is None or request is None:
        return
    capture.signature_version = signature_version
    capture.signing_name = signing_name
    capture.region_name = region_name
    capture.context = {k: request.context[k] for k in _CONTEXT if k in request.context}


def _before_send(request: Any = None, **_: Any) -> None:
    capture = _capture.get()
    if capture is None or request is None:
        return None
    capture.url = request.url
    capture.headers = [(str(k), _text(v)) for k, v in request.headers.items()]
    return None


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Templates:
    """The PutObject templates of one client, by bucket and arguments."""

    _of: ClassVar[weakref.WeakKeyDictionary[Any, Templates]] = weakref.WeakKeyDictionary()

    def __init__(self, client: Any) -> None:
        self.client = client
        self.by_args: dict[Any, _Template | None] = {}
        events = client.meta.events
        events.register("before-sign.s3.PutObject", _before_sign)
        events.register_last("before-send.s3.PutObject", _before_send)

    @classmethod
    def of(cls, client: Any) -> Templates | None:
        """The templates of `client`, or None for a client this cannot serve."""
        try:
            templates = cls._of.get(client)
            if templates is None:
                client._request_signer.get_auth_instance  # noqa: B018
                client._endpoint.http_session.send  # noqa: B018
                templates = cls._of[client] = Templates(client)
        except (AttributeError, TypeError):
            return None
        return templates

    async def put(self, key: str, body: bytes, args: dict[str, Any], request: Any) -> None:
        """PutObject of `body` at `key` with `args`: from a template when there is
        one, else through `request` (botocore), learning the template."""
        per = {k: v for k, v in args.items() if k not in ("Key", "Body")}
        checksums = {k: v for k, v in per.items() if k in _HEADER}
        match = per.pop("IfNoneMatch", None)
        fixed = {k: v for k, v in per.items() if k not in checksums}
        try:
            cache_key: Any = repr((sorted(fixed.items()), sorted(checksums)))
        except Exception:  # pragma: no cover - arguments that do not sort
            cache_key = None
        template = self.by_args.get(cache_key) if cache_key is not None else None
        if template is not None:
            if await self._send(template, key, body, checksums, match, cache_key):
                return
        elif (
            cache_key is not None
            and cache_key not in self.by_args
            and len(self.by_args) < _MOST_TEMPLATES
        ):
            capture = _Capture(key)
            token = _capture.set(capture)
            try:
                await request()
            finally:
                _capture.reset(token)
            self.by_args[cache_key] = _template(capture, {_HEADER[k].lower() for k in checksums})
            return
        await request()

    async def _send(
        self,
        template: _Template,
        key: str,
        body: bytes,
        checksums: dict[str, Any],
        match: Any,
        cache_key: Any,
    ) -> bool:
        """Send one templated PutObject; False when botocore must send it instead."""
        from botocore.awsrequest import AWSRequest

        headers = dict(template.headers)
        for name, value in checksums.items():
            headers[_HEADER[name]] = str(value)
        if match is not None:
            headers["If-None-Match"] = str(match)
        request = AWSRequest(
            method="PUT", url=template.prefix + _encoded(key), headers=headers, data=body
        )
        # a copy per request: the signer may write into the context's dicts
        request.context.update(
            {k: dict(v) if isinstance(v, dict) else v for k, v in template.context.items()}
        )
        signer = self.client._request_signer
        if template.signature_version is not _unsigned():
            auth = await signer.get_auth_instance(
                signing_name=template.signing_name,
                region_name=template.region_name,
                signature_version=template.signature_version,
            )
            auth.add_auth(request)
        response = await self.client._endpoint.http_session.send(request.prepare())
        if 200 <= response.status_code < 300:
            await response.content  # the connection goes back to the pool
            return True
        error = await _parsed_error(self.client, response)
        code = error.response.get("Error", {}).get("Code")
        if code in _OURS or response.status_code == 412 or response.status_code >= 500:
            raise error
        self.by_args[cache_key] = None  # botocore knows better here: let it
        return False


_HEADER: Final = {
    "ChecksumCRC32": "x-amz-checksum-crc32",
    "ChecksumCRC32C": "x-amz-checksum-crc32c",
    "ChecksumCRC64NVME": "x-amz-checksum-crc64nvme",
    "ChecksumSHA1": "x-amz-checksum-sha1",
    "ChecksumSHA256": "x-amz-checksum-sha256",
    "ContentMD5": "Content-MD5",
}


def _unsigned() -> Any:
    import botocore

    return botocore.UNSIGNED


def _template(capture: _Capture, ours: set[str]) -> _Template | None:
    """The template `capture` shows, or None where it cannot be reproduced.

    `ours` are the (lower-case) checksum headers the caller gave; a checksum
    botocore added itself (its default CRC32, or a trailer) is computed per body
    by botocore, so such a request is not a template."""
    if capture.url is None or capture.headers is None or capture.context is None:
        return None
    for name, value in capture.headers:
        name = name.lower()
        if name in _FOREIGN or "aws-chunked" in value.lower():
            return None
        if (name.startswith("x-amz-checksum-") or name == "content-md5") and name not in ours:
            return None
    version = capture.signature_version
    signed = version is not _unsigned()
    if signed and (capture.signing_name is None or capture.region_name is None):
        return None
    if signed and version not in _SIGNERS:
        return None
    signing = capture.context.get("signing", {})
    if any(signing.get(k) is not None for k in ("request_credentials", "identity_cache")):
        return None
    encoded = _encoded(capture.key)
    parts = urlsplit(capture.url)
    if parts.query or parts.fragment or not capture.url.endswith("/" + encoded):
        return None
    headers = tuple((k, v) for k, v in capture.headers if k.lower() not in _PER_REQUEST)
    return _Template(
        prefix=capture.url[: len(capture.url) - len(encoded)],
        headers=headers,
        context=dict(capture.context),
        signature_version=version,
        signing_name=signing.get("signing_name") or capture.signing_name or "s3",
        region_name=signing.get("region") or capture.region_name or "",
    )


async def _parsed_error(client: Any, response: Any) -> ClientError:
    """The ``ClientError`` botocore raises for this PutObject answer."""
    from botocore.exceptions import ClientError
    from botocore.parsers import create_parser

    body = await response.content
    model = client.meta.service_model.operation_model("PutObject")
    parsed = create_parser("rest-xml").parse(
        {"status_code": response.status_code, "headers": response.headers, "body": body},
        model.output_shape,
    )
    code = parsed.get("Error", {}).get("Code")
    error_class: type[ClientError] = client.exceptions.from_code(code) if code else ClientError
    return error_class(parsed, "PutObject")
