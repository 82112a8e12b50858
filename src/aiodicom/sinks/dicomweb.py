"""DICOMweb destinations: STOW-RS to Orthanc, Google, Azure, AWS HealthImaging...

:class:`DicomWeb` is an :class:`~aiodicom.sinks.AsyncSink` for a DICOMweb server's
base URL (the one ``/studies`` is appended to).  One write is one HTTP request,
``POST {url}/studies`` with a ``multipart/related; type="application/dicom"`` body
of one part, sent with chunked transfer encoding while the dataset is encoded:

* **Streamed, bounded memory.**  Each chunk from the encoder is handed to the HTTP
  client in slices of at most 4 MiB; ``write`` returns once the client has taken
  the slices (copied them into its framing and written them to the connection),
  so a slow server slows the encoder down and the caller's buffers (memoryviews
  of its Pixel Data) are never kept after ``write`` returns.
* **All or nothing.**  The closing multipart delimiter is sent only by ``commit``.
  An error or a cancellation before that closes the connection with the body
  incomplete, so the server has no complete instance to store.
* **Per-instance results.**  ``commit`` reads the Store Instances Response (DICOM
  JSON, DICOM XML or an empty body; 200, 202, 400, 409... are all parsed) and
  raises :class:`FileExistsError` when the server reports the instance as a
  duplicate, :class:`DicomWebError` when it reports another failure.
* **Retries** (429, 503, connection errors) only when the response or the
  connection says the instance was not stored, honouring ``Retry-After``, within
  ``retries`` attempts and ``deadline`` seconds.

:meth:`DicomWeb.store_many` sends many instances per request (see
:mod:`aiodicom.sinks._dicomweb_batch`).  httpx is imported when a sink is built,
not when this module is, so ``aiodicom`` imports without it.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import enum
import functools
import inspect
import logging
import ssl
import sys
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar, cast

import anyio

from .._errors import DicomWebError, RetryableError, exists_error
from .._retry import RetryPolicy
from .._retry import _Attempts as Attempts
from . import _stow
from ._protocol import AsyncWriter, Chunk

if TYPE_CHECKING:
    import httpx

__all__ = [
    "DEFAULT_TIMEOUT",
    "SCHEMES",
    "DicomWeb",
    "DicomWebError",
    "StowResult",
    "StowStatus",
    "TokenProvider",
]

logger = logging.getLogger("aiodicom")

L = TypeVar("L")

SCHEMES: Final = ("dicomweb+https://", "dicomweb+http://")
"""URL prefixes that :func:`aiodicom.sinks.resolve` hands to :meth:`DicomWeb.from_url`."""

DEFAULT_TIMEOUT: Final = 60.0
"""Seconds any one network operation may take (connect, one write, one read)."""
DEFAULT_READ_TIMEOUT: Final = 300.0
"""Seconds to wait for the response once the body is sent (the server stores first)."""

TokenProvider = Callable[[], str | Awaitable[str]]
"""A callable returning a bearer token, called before every request (so it can
refresh one): sync (run in a worker thread, it may block) or async."""

_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 30.0
_CHAIN_GAP: Final = 20.0  # longer than the driver's longest backoff between attempts
_UPSERT_EXCLUSIVE: Final = "upsert=True replaces instances: it cannot be used with exist_ok=False"


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "DICOMweb destinations need httpx: install aiodicom's 'dicomweb' extra "
            "(pip install '.[dicomweb]' in a checkout)"
        ) from exc
    return httpx


# ----------------------------------------------------------------------------- results


class StowStatus(str, enum.Enum):
    """What happened to one instance sent with STOW-RS."""

    STORED = "stored"
    """The server stored it (it may have listed a warning: see ``warning_reason``)."""
    EXISTS = "exists"
    """The server refused it because it holds that instance already."""
    FAILED = "failed"
    """Not stored, or not known to be (``error`` says which and why)."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class StowResult(Generic[L]):
    """The result for one instance of :meth:`DicomWeb.store_many`."""

    label: L
    """What the caller gave with the instance."""
    status: StowStatus
    sop_instance_uid: str | None = None
    """From the instance's File Meta Information (``None`` if it has none)."""
    sop_class_uid: str | None = None
    retrieve_url: str | None = None
    """The server's RetrieveURL (0008,1190) for the instance, if it sent one."""
    warning_reason: int | None = None
    """WarningReason (0008,1196) of a stored instance, if the server sent one."""
    failure_reason: int | None = None
    """FailureReason (0008,1197) from the server's FailedSOPSequence, if any."""
    error: BaseException | None = None
    """Why it was not stored: :class:`FileExistsError` for ``exists``,
    :class:`DicomWebError`, :class:`ConnectionError`, :class:`TimeoutError` or the
    encoder's exception for ``failed``; ``None`` for ``stored``."""
    bytes: int = 0
    """Bytes of the instance sent in its last attempt."""
    attempts: int = 1
    """Requests the instance was sent in (retries included)."""

    @property
    def ok(self) -> bool:
        """Whether the instance was stored."""
        return self.status is StowStatus.STORED


def _exists_error(
    uid: str | None,
    url: str,
    message: str,
    *,
    status_code: int | None = None,
    failure_reason: int | None = None,
) -> FileExistsError:
    """The sinks' one :class:`FileExistsError`, naming the instance's URL; its
    ``__cause__`` says how the server told (a search, or a FailureReason)."""
    target = f"{url}/instances/{uid}" if uid else f"{url}/studies"
    error = exists_error(target)
    error.__cause__ = DicomWebError(
        f"the server holds this instance already ({message})",
        url=target,
        status_code=status_code,
        failure_reason=failure_reason,
    )
    return error


def _transport_error(exc: BaseException, url: str, *, sent: bool) -> OSError:
    """A connection failure as the builtin exception, saying what it means."""
    hx = _httpx()
    what = (
        "the whole request was sent, so the instance may have been stored"
        if sent
        else "the request was not complete, so nothing was stored"
    )
    cls = TimeoutError if isinstance(exc, hx.TimeoutException) else ConnectionError
    error = cls(f"DICOMweb request to {url} failed ({what}): {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


@dataclass
class _Reply:
    status: int
    reason: str
    content_type: str | None
    retry_after: str | None
    body: bytes

    def parse(self) -> _stow.StowResponse:
        return _stow.parse_response(self.status, self.content_type, self.body, self.retry_after)


# ----------------------------------------------------------------------------- the sink


class DicomWeb:
    """A DICOMweb server, written to with STOW-RS.

    Use it as a :func:`aiodicom.dcmwrite` destination (one instance per request,
    streamed), or call :meth:`store_many` to send many instances per request.
    ``"dicomweb+https://HOST/PATH"`` given as a destination builds one with
    :meth:`from_url`, taking these parameters from ``storage_options``.

    Used as ``async with DicomWeb(...) as sink:``, all requests share one HTTP
    client (connection pool) until the block ends; otherwise each write (and each
    :meth:`store_many` call) opens and closes its own.

    Parameters
    ----------
    url : str
        The DICOMweb base URL, ``http(s)://HOST/PATH``: requests go to
        ``{url}/studies`` (STOW-RS) and ``{url}/instances`` (QIDO-RS).
    token : str or callable, optional
        A bearer token, or a :data:`TokenProvider` called before every request (sync
        or async), e.g. wrapping ``google.auth`` or ``azure.identity`` credentials.
    headers : mapping, optional
        Extra request headers (sent with every request).
    basic_auth : (str, str), optional
        User and password for HTTP Basic authentication.
    auth : httpx.Auth, optional
        Any other httpx authentication flow (it must not need the request body,
        which is streamed).
    verify : bool, str or ssl.SSLContext, optional
        Verify the server's TLS certificate (default ``True``, with certifi's CA
        bundle or ``SSL_CERT_FILE``); a CA bundle file or folder; or a context.
    cert : str or (str, str), optional
        A client certificate file (with its key), or ``(certificate, key)`` files.
    timeout : float or httpx.Timeout, optional
        Seconds per network operation (default 60, and 300 for the response once
        the body is sent).
    client : httpx.AsyncClient, optional
        Your own client (its TLS, proxy, timeout and limits settings apply; then
        `verify`, `cert` and `timeout` must not be given).  Never closed here.
    check_exists : bool, optional
        With ``exist_ok=False``, search the server (QIDO-RS, by SOP Instance UID)
        before sending an instance and raise :class:`FileExistsError` if it is
        there.  **Not atomic**: another client may store it between the search and
        the store.  For servers that do not report duplicates (Orthanc, AWS
        HealthImaging).  Default ``False``.
    upsert : bool, optional
        Send ``PUT`` instead of ``POST``: Azure DICOM service (API v2) and Google's
        ``v1beta1`` API then *replace* an existing instance.  Only with
        ``exist_ok=True``.  Default ``False``.
    retries : int, optional
        Retries of an instance after a 429 or 503 answer, a FailureReason
        0xA7xx (out of resources) or a connection error before the whole request
        was sent (default 3).  Nothing else is retried.
    deadline : float, optional
        No retry starts later than this many seconds after the instance's first
        attempt, and a ``Retry-After`` that would end later is not waited for
        (default 300).
    batch_count : int, optional
        :meth:`store_many`: most instances per request (default 64).
    batch_bytes : int, optional
        :meth:`store_many`: a request takes no further instance once it holds this
        many bytes (default 256 MiB; AWS HealthImaging accepts 1 GB per request,
        Azure 4 GB).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | TokenProvider | None = None,
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | list[str] | None = None,
        auth: httpx.Auth | None = None,
        verify: bool | str | ssl.SSLContext = True,
        cert: str | tuple[str, str] | list[str] | None = None,
        timeout: float | httpx.Timeout | None = None,
        client: httpx.AsyncClient | None = None,
        check_exists: bool = False,
        upsert: bool = False,
        retries: int = 3,
        deadline: float = 300.0,
        batch_count: int = 64,
        batch_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        hx = _httpx()
        if not isinstance(url, str):
            raise TypeError(f"the DICOMweb URL must be a string, not {type(url).__name__}")
        parsed = hx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) DICOMweb base URL: {url!r}")
        if parsed.query or parsed.fragment:
            raise ValueError(f"a DICOMweb base URL has no query or fragment: {url!r}")
        if token is not None and basic_auth is not None:
            raise ValueError("give either a bearer token or basic_auth, not both")
        if token is not None and not (isinstance(token, str) or callable(token)):
            raise TypeError("token must be a string or a callable returning one")
        if basic_auth is not None:
            if isinstance(basic_auth, str | bytes) or len(basic_auth) != 2:
                raise ValueError("basic_auth must be a (user, password) pair")
            basic_auth = (str(basic_auth[0]), str(basic_auth[1]))
        merged = {str(k): str(v) for k, v in (headers or {}).items()}
        if (token is not None or basic_auth is not None) and any(
            k.lower() == "authorization" for k in merged
        ):
            raise ValueError("an Authorization header conflicts with token / basic_auth")
        if client is not None:
            if not isinstance(client, hx.AsyncClient):
                raise TypeError("client must be an httpx.AsyncClient")
            if verify is not True or cert is not None or timeout is not None:
                raise ValueError(
                    "verify, cert and timeout are settings of your own client: "
                    "configure the httpx.AsyncClient instead"
                )
        if isinstance(verify, ssl.SSLContext) and cert is not None:
            raise ValueError("load the client certificate into your SSLContext instead")
        if not isinstance(verify, bool | str | ssl.SSLContext):
            raise TypeError("verify must be a bool, a CA bundle path or an ssl.SSLContext")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
        if isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0:
            raise ValueError(f"deadline must be a positive number of seconds, not {deadline!r}")
        for name, value in (("batch_count", batch_count), ("batch_bytes", batch_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if timeout is None:
            timeout_ = hx.Timeout(DEFAULT_TIMEOUT, read=DEFAULT_READ_TIMEOUT)
        elif isinstance(timeout, hx.Timeout):
            timeout_ = timeout
        elif isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            timeout_ = hx.Timeout(float(timeout))
        else:
            raise ValueError(f"timeout must be a positive number or httpx.Timeout: {timeout!r}")

        self.url = str(parsed).rstrip("/")
        self.check_exists = bool(check_exists)
        self.upsert = bool(upsert)
        self.deadline = float(deadline)
        self.batch_count = batch_count
        self.batch_bytes = batch_bytes
        self._retries = retries
        self._policy = RetryPolicy(
            retries, first=_BACKOFF_FIRST, maximum=_BACKOFF_MAX, deadline=float(deadline)
        )  # the shared retry policy, with this sink's `retries` and `deadline`
        self._token = token
        self._headers = merged
        self._basic = basic_auth
        self._auth = auth
        self._verify = verify
        self._cert = tuple(cert) if isinstance(cert, list | tuple) else cert
        self._timeout = timeout_
        self._user_client = client
        self._shared: httpx.AsyncClient | None = None
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_url(
        cls, url: str, storage_options: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> DicomWeb:
        """A sink for ``dicomweb+https://HOST/PATH`` (or ``dicomweb+http://``).

        The base URL is the URL without ``dicomweb+``; `storage_options` (and
        `kwargs`) are the keyword arguments of :class:`DicomWeb` (``token``,
        ``headers``, ``basic_auth``, ``verify``, ``batch_count``...).
        """
        if not isinstance(url, str) or not url.startswith(SCHEMES):
            raise ValueError(f"not a dicomweb+http(s):// URL: {url!r}")
        options = {**dict(storage_options or {}), **kwargs}
        return cls(url.removeprefix("dicomweb+"), **options)

    def __repr__(self) -> str:
        return f"DicomWeb({self.url!r})"

    @property
    def retries(self) -> int:
        """How often an instance is sent again (the driver reads this too)."""
        return self._retries

    @property
    def studies_url(self) -> str:
        """Where STOW-RS requests go."""
        return f"{self.url}/studies"

    # -- shared client ------------------------------------------------------------------

    async def __aenter__(self) -> DicomWeb:
        if self._shared is not None:
            raise RuntimeError(f"{self!r} is already open (async with)")
        if self._user_client is None:
            self._shared = await self._new_client()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        client, self._shared = self._shared, None
        if client is not None:
            await client.aclose()

    # -- AsyncSink ----------------------------------------------------------------------

    async def open_async(self, *, exist_ok: bool) -> AsyncWriter:
        """Start a write of one instance (nothing is sent until the first chunk)."""
        if self.upsert and not exist_ok:
            raise ValueError(_UPSERT_EXCLUSIVE)
        return _InstanceWriter(self, exist_ok, _next_attempt(self))

    # -- many instances -----------------------------------------------------------------

    def store_many(
        self,
        items: AsyncIterable[tuple[L, Any]] | Iterable[tuple[L, Any]],
        *,
        exist_ok: bool = True,
    ) -> AsyncIterator[StowResult[L]]:
        """Send many instances, several per request; yield one result per instance.

        Each item is ``(label, source)``; the label comes back in the result.  A
        source is an instance's encoded bytes in one of these forms:

        * a zero-argument callable returning one of the forms below, called (in a
          worker thread) for every attempt, so the instance can be retried, e.g.
          ``functools.partial(aiodicom.prepare, dataset)``-like factories of an
          encode plan;
        * an object with a ``chunks()`` method (an encode plan: chunks pulled in a
          worker thread), a sync iterable of chunks (pulled in a worker thread), or
          an async iterable of chunks: used once;
        * ``bytes``, ``bytearray``, ``memoryview``, or a list of chunks: in memory,
          reusable.

        Instances are streamed one after another into a request until it holds
        `batch_count` instances or `batch_bytes` bytes; then the response is read
        and a result is yielded for each of them (in order), and the next request
        starts.  Items are pulled only while a request is open, as its body needs
        them, so feed them from something that is ready (e.g. a memory object
        stream filled by concurrent readers) to keep the request from idling.

        A request that ends early (an instance's encoding fails part-way, the
        connection drops, the iteration is cancelled) never has its closing
        delimiter: the instance being sent has no end and is not stored.  The
        instances before it in that request had complete parts, which a server may
        already have stored (Orthanc stores each one as soon as its part has
        arrived): their result is ``failed`` with a :class:`ConnectionError`
        saying they may have been stored, and they are not sent again.  The
        instance whose encoding failed gets the encoder's exception; one cut off
        by the connection is retried.  Retries are as for
        :func:`aiodicom.dcmwrite`, per instance; a source that can be used only
        once is not retried.  Results are failures, not exceptions; an exception
        raised by `items` itself ends the iteration after the results of what was
        already sent.  Break out of the iteration early only inside
        ``contextlib.aclosing(...)``, so that the open request is closed at once.

        Parameters
        ----------
        items : iterable or async iterable of (label, source)
            The instances.
        exist_ok : bool, optional
            With ``False`` and `check_exists`, each instance is first searched for
            (not atomic).  Duplicates that the server reports are ``exists``
            whatever this says (STOW-RS does not replace instances, unless
            `upsert`).
        """
        from ._dicomweb_batch import store_many

        if self.upsert and not exist_ok:
            raise ValueError(_UPSERT_EXCLUSIVE)
        return store_many(self, items, exist_ok=exist_ok)

    async def exists(self, sop_instance_uid: str) -> bool:
        """Whether the server holds an instance with this SOP Instance UID
        (a QIDO-RS search ``{url}/instances?SOPInstanceUID=...``)."""
        async with self._client() as client:
            return await self._exists(client, sop_instance_uid)

    # -- HTTP plumbing (used by the writers) ---------------------------------------------

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[httpx.AsyncClient]:
        """The client to use: the caller's, the shared one, or one for this block."""
        if self._user_client is not None:
            yield self._user_client
        elif self._shared is not None:
            yield self._shared
        else:
            client = await self._new_client()
            try:
                yield client
            finally:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    async def _new_client(self) -> httpx.AsyncClient:
        hx = _httpx()
        context = await self._ssl_context()
        client: httpx.AsyncClient = hx.AsyncClient(verify=context, timeout=self._timeout)
        return client

    async def _ssl_context(self) -> ssl.SSLContext:
        """The TLS context, made once per sink (in a worker thread: it reads files)."""
        if isinstance(self._verify, ssl.SSLContext):
            return self._verify
        if self._ssl is None:
            if self.url.startswith("http://"):
                self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # never used for http
            else:
                self._ssl = await anyio.to_thread.run_sync(self._make_ssl_context)
        return self._ssl

    def _make_ssl_context(self) -> ssl.SSLContext:
        hx = _httpx()
        verify = self._verify
        if isinstance(verify, str):
            import os

            if os.path.isdir(verify):
                context = ssl.create_default_context(capath=verify)
            else:
                context = ssl.create_default_context(cafile=verify)
        else:
            context = hx.create_ssl_context(verify=bool(verify))
        if self._cert is not None:
            if isinstance(self._cert, tuple):
                context.load_cert_chain(*self._cert)
            else:
                context.load_cert_chain(self._cert)
        return context

    async def _request_headers(self, **extra: str) -> dict[str, str]:
        headers = dict(self._headers)
        if self._basic is not None:
            user, password = self._basic
            pair = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            headers["Authorization"] = f"Basic {pair}"
        elif self._token is not None:
            token = await self._get_token()
            headers["Authorization"] = token if token.startswith("Bearer ") else f"Bearer {token}"
        headers.update(extra)
        return headers

    async def _get_token(self) -> str:
        provider = self._token
        if isinstance(provider, str):
            return provider
        assert provider is not None
        if inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(
            getattr(provider, "__call__", None)  # noqa: B004 (async __call__)
        ):
            result: Any = provider()
        else:
            result = await anyio.to_thread.run_sync(provider)
        if inspect.isawaitable(result):
            result = await result
        if not isinstance(result, str) or not result:
            raise TypeError(f"the token provider returned {type(result).__name__}, not a token")
        return result

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        content: AsyncIterable[Chunk] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> _Reply:
        """Send one request; read (at most 16 MiB of) its response."""
        # memoryview pieces pass through httpx and h11 untouched (they only take len())
        request = client.build_request(
            method, url, headers=headers, content=cast(Any, content), params=params
        )
        if self._auth is not None:
            response = await client.send(request, stream=True, auth=self._auth)
        else:
            response = await client.send(request, stream=True)
        try:
            body = bytearray()
            async for data in response.aiter_bytes():
                body += data
                if len(body) > _stow.MAX_RESPONSE:
                    break
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        return _Reply(
            response.status_code,
            response.reason_phrase,
            response.headers.get("content-type"),
            response.headers.get("retry-after"),
            bytes(body),
        )

    @property
    def _method(self) -> str:
        return "PUT" if self.upsert else "POST"

    async def _exists(self, client: httpx.AsyncClient, uid: str) -> bool:
        """The QIDO-RS search behind `check_exists`, with the same retries."""
        hx = _httpx()
        url = f"{self.url}/instances"
        attempts = self._policy.start()
        while True:
            headers = await self._request_headers(Accept="application/dicom+json")
            try:
                reply = await self._send(
                    client, "GET", url, headers=headers, params={"SOPInstanceUID": uid}
                )
            except hx.TransportError as exc:
                error: OSError = _transport_error(exc, url, sent=False)
                retry_after = None
            else:
                if reply.status in (204, 404):
                    return False
                if reply.status == 200:
                    return _found(reply, url)
                error = DicomWebError(
                    f"QIDO-RS search {url}?SOPInstanceUID={uid} failed: HTTP {reply.status} "
                    f"{reply.reason}",
                    url=url,
                    status_code=reply.status,
                    detail=reply.body[:500].decode("utf-8", "replace"),
                )
                if reply.status not in (429, 503):
                    raise error
                retry_after = _stow.retry_after(reply.retry_after)
            delay = attempts.next_delay(retry_after)
            if delay is None:
                raise error
            await anyio.sleep(delay)


def _found(reply: _Reply, url: str) -> bool:
    import json

    text = reply.body.strip()
    if not text:
        return False
    try:
        matches = json.loads(text)
    except ValueError:
        raise DicomWebError(
            f"QIDO-RS search {url} answered something that is not JSON",
            url=url,
            status_code=reply.status,
            detail=text[:500].decode("utf-8", "replace"),
        ) from None
    return bool(matches)


# ----------------------------------------------------------------------------- one instance


@dataclass
class _Attempt:
    """Which attempt of a write this is, across the driver's whole-write retries."""

    sink: weakref.ref[DicomWeb]
    attempts: Attempts  # the retry policy's count, started at the first attempt
    expires: float  # an open_async after this starts a new write


_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "aiodicom_dicomweb_attempt", default=None
)


def _next_attempt(sink: DicomWeb) -> _Attempt:
    """The driver retries a whole write by opening the sink again in the same task;
    a writer that asked for that left a note in this context.  Anything else is a
    new write."""
    note = _ATTEMPT.get()
    _ATTEMPT.set(None)
    now = time.monotonic()
    if note is not None and note.sink() is sink and now <= note.expires:
        return note
    return _Attempt(weakref.ref(sink), sink._policy.start(), now)


@dataclass
class _Handoff:
    data: Chunk
    taken: anyio.Event
    consumed: bool = False


class _InstanceWriter:
    """One instance, one request: chunks are streamed into the request body as the
    driver writes them; see the module docstring for the guarantees."""

    def __init__(self, sink: DicomWeb, exist_ok: bool, attempt: _Attempt) -> None:
        self._sink = sink
        self._check = sink.check_exists and not exist_ok
        self._attempt = attempt
        self._sniffer = _stow.MetaSniffer()
        self._held: list[bytes] = []
        self._boundary = _stow.new_boundary()
        self._send_stream, self._receive_stream = anyio.create_memory_object_stream[_Handoff](0)
        self._current: _Handoff | None = None
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()
        self._clients = contextlib.AsyncExitStack()
        self._started = False
        self._spawned = False
        self._body_complete = False
        self._reply: _Reply | None = None
        self._error: BaseException | None = None

    # -- AsyncWriter ---------------------------------------------------------------------

    async def write(self, chunk: Chunk, /) -> None:
        if not self._started:
            self._sniffer.feed(chunk)
            if self._check and not self._sniffer.done:
                self._held.append(bytes(chunk))  # the UID is further on: keep a copy
                return
            await self._start()
        elif not self._sniffer.done:
            self._sniffer.feed(chunk)
        await self._feed(chunk)

    async def commit(self) -> None:
        try:
            if not self._started:
                self._sniffer.finish()
                await self._start()
            self._sniffer.finish()
            self._send_stream.close()  # the body ends with the closing delimiter
            await self._done.wait()
            await self._conclude()
        finally:
            await self._release()

    async def abort(self) -> None:
        if self._spawned and not self._done.is_set():
            self._scope.cancel()  # the body stops short of its closing delimiter
            await self._done.wait()
        await self._release()

    # -- internals -----------------------------------------------------------------------

    async def _start(self) -> None:
        self._started = True
        sink = self._sink
        client = await self._clients.enter_async_context(sink._client())
        if self._check:
            uid = self._sniffer.sop_instance_uid
            if uid is None:
                raise ValueError(
                    "check_exists needs the SOP Instance UID from the File Meta "
                    "Information: write in the DICOM File Format (enforce_file_format=True)"
                )
            if await sink._exists(client, uid):
                raise _exists_error(uid, sink.url, "found by a QIDO-RS search")
        headers = await sink._request_headers(
            **{
                "Content-Type": _stow.content_type(self._boundary),
                "Accept": "application/dicom+json",
            }
        )
        _spawn(functools.partial(self._run, client, headers))
        self._spawned = True
        held, self._held = self._held, []
        for data in held:
            await self._feed(data)

    async def _run(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        """The request, in a task of its own (see :func:`_spawn`)."""
        body = self._body()
        try:
            with self._scope:
                sink = self._sink
                self._reply = await sink._send(
                    client, sink._method, sink.studies_url, headers=headers, content=body
                )
        except Exception as exc:
            self._error = exc
        finally:
            with anyio.CancelScope(shield=True):
                await body.aclose()
            self._receive_stream.close()
            if self._current is not None:
                self._current.taken.set()
            self._done.set()

    async def _body(self) -> AsyncGenerator[Chunk, None]:
        yield _stow.part_head(self._boundary, first=True)
        async for handoff in self._receive_stream:
            self._current = handoff
            for piece in _stow.pieces(handoff.data):
                yield piece
            # resumed: the client has framed (copied) the last piece and written it
            handoff.consumed = True
            self._current = None
            handoff.taken.set()
        yield _stow.close_delimiter(self._boundary, parts=1)
        self._body_complete = True

    async def _feed(self, data: Chunk) -> None:
        handoff = _Handoff(data, anyio.Event())
        try:
            await self._send_stream.send(handoff)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self._ended_early()
        await handoff.taken.wait()
        if not handoff.consumed:  # the request ended while sending it
            await self._ended_early()

    async def _ended_early(self) -> None:
        """The request ended before the body did: raise what that means."""
        await self._done.wait()
        await self._conclude(early=True)
        raise AssertionError("an early end always raises")  # pragma: no cover

    async def _conclude(self, *, early: bool = False) -> None:
        """Raise what the finished request means, or return if the instance is stored."""
        hx = _httpx()
        sink, uid = self._sink, self._sniffer.sop_instance_uid
        url = sink.studies_url
        if self._error is not None:
            if not isinstance(self._error, hx.TransportError):
                raise self._error
            error = _transport_error(self._error, url, sent=self._body_complete)
            if not self._body_complete:
                await self._retry_or_raise(error, None)
            raise error
        reply = self._reply
        assert reply is not None
        response = reply.parse()
        outcome = _stow.classify(response, [uid])[0]
        entry = outcome.entry
        if outcome.verdict is _stow.Verdict.STORED:
            if early or not self._body_complete:
                raise DicomWebError(
                    f"{url} answered HTTP {reply.status} before the request was complete",
                    url=url,
                    status_code=reply.status,
                )
            if not response.readable:
                logger.warning(
                    "aiodicom: %s answered HTTP %d with an unreadable body: %r",
                    url,
                    reply.status,
                    response.excerpt[:200],
                )
            if entry is not None and entry.warning_reason is not None:
                logger.warning(
                    "aiodicom: %s stored %s with WarningReason %d (0x%04X)",
                    url,
                    uid,
                    entry.warning_reason,
                    entry.warning_reason,
                )
            return
        reason = entry.failure_reason if entry is not None else None
        if outcome.verdict is _stow.Verdict.EXISTS:
            raise _exists_error(
                uid, sink.url, outcome.message, status_code=reply.status, failure_reason=reason
            )
        error = DicomWebError(
            f"{url} did not store the instance {uid or ''}: {outcome.message}",
            url=url,
            status_code=reply.status,
            failure_reason=reason,
            detail="; ".join(entry.texts) if entry is not None else response.excerpt,
        )
        if outcome.verdict is _stow.Verdict.RETRY:
            await self._retry_or_raise(error, response.retry_after)
        raise error

    async def _retry_or_raise(self, error: BaseException, retry_after: float | None) -> None:
        """Ask the driver to write the instance again (after Retry-After), if
        attempts and the deadline allow; else raise `error`."""
        attempt, sink = self._attempt, self._sink
        if attempt.attempts.next_delay(retry_after) is None:
            raise error
        if retry_after:
            await anyio.sleep(retry_after)  # the driver adds its own backoff
        attempt.expires = time.monotonic() + _CHAIN_GAP
        _ATTEMPT.set(attempt)
        raise RetryableError(f"STOW-RS to {sink.studies_url}: {error}") from error

    async def _release(self) -> None:
        self._send_stream.close()
        self._receive_stream.close()  # (the request task, if any, has ended)
        self._held = []
        with anyio.CancelScope(shield=True):
            await self._clients.aclose()


_TASKS: set[Any] = set()


def _spawn(function: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `function` in a task of its own, outside the caller's task group.

    The driver calls a writer's methods one after another in its own task; the
    request that consumes the chunks must run meanwhile.  A task group cannot span
    those calls (its scope would be exited in ``abort``, inside the driver's
    shielded scope), so the request runs as a detached task that the writer always
    waits for (in ``commit`` or ``abort``) and can cancel: a trio system task, or
    an asyncio task.  It never raises: its outcome is kept on the writer.
    """
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            trio.lowlevel.spawn_system_task(function, context=contextvars.copy_context())
            return
    import asyncio

    task = asyncio.get_running_loop().create_task(function())
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)
