"""Checksums computed while streaming, and the error a store's mismatch raises.

:class:`Checksum` is one running checksum (CRC32C, SHA-256 or MD5) of bytes as they
are written: ``update(chunk)`` for each chunk, then :meth:`Checksum.digest`,
:attr:`Checksum.hex` or :attr:`Checksum.b64`.  Every built-in sink computes it over
exactly the bytes it sends, with no second pass and no copy (the hashes read the
caller's buffer in place; an upload's part is hashed in its buffer just before the
request body is copied from it, so the store's check covers that copy too).

CRC32C uses ``google-crc32c`` (Google's C implementation, with the SSE4.2 / ARMv8
CRC instructions); SHA-256 and MD5 use :mod:`hashlib` (OpenSSL).  CRC32C values can
be *combined*: the CRC32C of ``a + b`` follows from the CRC32C of ``a``, that of
``b`` and ``len(b)`` (:meth:`Checksum.extend`), which is how a multipart upload gets
its whole-object CRC32C from the CRC32Cs of its parts without hashing twice.

One more algorithm is used inside, never reported: ``"crc64nvme"``, the CRC-64
that Azure checks on each request (``x-ms-content-crc64``; the same CRC as
CRC-64/NVME), from ``anycrc`` (a C implementation of Mark Adler's word-wise CRC
algorithm: several times the speed of MD5, with no dependencies and no effect on
other libraries; ``awscrt``'s is faster still, but installing awscrt switches
botocore to its CRT request signers, for S3 too).  It is available where
``anycrc`` is installed (the ``azure`` extra installs it): see
:func:`crc64nvme_available`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from typing import Any, Final, Literal

import google_crc32c

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Checksum",
    "DEFAULT_ALGORITHM",
    "StoreAlgorithm",
    "crc64nvme_available",
    "normalize_algorithm",
]

Algorithm = Literal["crc32c", "sha256", "md5"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = ("crc32c", "sha256", "md5")
DEFAULT_ALGORITHM: Final[Algorithm] = "crc32c"
StoreAlgorithm = Literal["crc32c", "sha256", "md5", "crc64nvme"]
"""What a store may be sent: the user's algorithms, and Azure's CRC-64."""

_CRC32C_POLY: Final = 0x82F63B78  # reflected Castagnoli polynomial


def normalize_algorithm(value: object) -> Algorithm | None:
    """``"crc32c"``, ``"sha256"``, ``"md5"`` (any case), or ``None`` for ``None``,
    ``False`` and ``"none"``.

    Raises
    ------
    ValueError
        For anything else.
    """
    if value is None or value is False:
        return None
    if isinstance(value, str):
        name = value.strip().lower().replace("-", "")
        if name == "none":
            return None
        for algorithm in ALGORITHMS:
            if name == algorithm:
                return algorithm
    raise ValueError(
        f"checksum must be one of 'crc32c', 'sha256', 'md5' or None ('none'), not {value!r}"
    )


class Checksum:
    """A running checksum of written bytes.

    Parameters
    ----------
    algorithm : {"crc32c", "sha256", "md5"}
        Which checksum (``"crc64nvme"`` too, which stores use inside).

    Attributes
    ----------
    algorithm : str
        ``"crc32c"``, ``"sha256"``, ``"md5"`` (or ``"crc64nvme"``).
    size : int
        How many bytes it covers.

    Notes
    -----
    Two checksums are equal when they have the same algorithm and digest.
    ``str()`` gives ``"algorithm:hex"``.
    """

    __slots__ = ("_crc", "_final", "_hash", "algorithm", "size")

    def __init__(self, algorithm: StoreAlgorithm | str) -> None:
        name: StoreAlgorithm | None = (
            "crc64nvme" if algorithm == "crc64nvme" else normalize_algorithm(algorithm)
        )
        if name is None:
            raise ValueError("Checksum needs an algorithm, not None")
        self.algorithm: StoreAlgorithm = name
        self.size = 0
        self._crc = 0
        self._hash: Any = (
            None
            if name == "crc32c"
            else _Crc64Nvme()
            if name == "crc64nvme"
            else hashlib.new(name)
        )
        self._final: bytes | None = None  # a checksum that travelled (pickled)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add `data` (hashed in place: a ``memoryview`` is not copied)."""
        if self._final is not None:
            raise ValueError("this checksum was unpickled: it can no longer be updated")
        if self._hash is not None:
            self._hash.update(data)
            self.size += memoryview(data).nbytes
            return
        if type(data) is bytes:
            self._crc = google_crc32c.extend(self._crc, data)
            self.size += len(data)
            return
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.ndim != 1 or view.format != "B":
            view = view.cast("B")
        self._crc = _crc32c_extend_view(self._crc, view)
        self.size += view.nbytes

    def extend(self, other: Checksum) -> None:
        """Make this the CRC32C of this checksum's bytes followed by `other`'s,
        without seeing those bytes again (CRC32C only)."""
        if self._hash is not None or other._hash is not None:
            raise TypeError("only CRC32C checksums can be combined")
        if self._final is not None or other._final is not None:
            raise ValueError("an unpickled checksum can no longer be combined")
        self._crc = _crc32c_combine(self._crc, other._crc, other.size)
        self.size += other.size

    def copy(self) -> Checksum:
        """An independent copy (to go on from the same state)."""
        clone = Checksum(self.algorithm)
        clone.size = self.size
        clone._crc = self._crc
        clone._hash = None if self._hash is None else self._hash.copy()
        clone._final = self._final
        return clone

    def __reduce__(self) -> tuple[Any, ...]:
        # hashlib states do not pickle: what travels is the value (for reports)
        return (_unpickle, (self.algorithm, self.digest(), self.size))

    def digest(self) -> bytes:
        """The checksum as bytes (CRC32C: 4 bytes, big-endian, as S3 and GCS use;
        CRC-64: 8 bytes, big-endian, as S3 uses; Azure's header has them in the
        reverse order)."""
        if self._final is not None:
            return self._final
        if self._hash is None:
            return self._crc.to_bytes(4, "big")
        digest: bytes = self._hash.digest()
        return digest

    @property
    def hex(self) -> str:
        """The digest in hexadecimal (as ``sha256sum`` / ``md5sum`` print it)."""
        return self.digest().hex()

    @property
    def b64(self) -> str:
        """The digest in base64 (as S3's ``x-amz-checksum-*``, ``Content-MD5`` and
        GCS's ``crc32c`` / ``md5Hash`` carry it)."""
        return base64.b64encode(self.digest()).decode("ascii")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Checksum):
            return NotImplemented
        return self.algorithm == other.algorithm and self.digest() == other.digest()

    def __hash__(self) -> int:
        return hash((self.algorithm, self.digest()))

    def __repr__(self) -> str:
        return f"Checksum({self.algorithm!r}, hex={self.hex!r}, size={self.size})"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def _unpickle(algorithm: str, digest: bytes, size: int) -> Checksum:
    checksum = Checksum(algorithm)
    checksum._final = digest
    checksum.size = size
    return checksum


class _Crc64Nvme:
    """CRC-64/NVME (Azure's ``x-ms-content-crc64``) with a hashlib-like face."""

    __slots__ = ("_crc",)

    def __init__(self, crc: int = 0) -> None:
        self._crc = crc

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._crc = int(_crc64nvme_model().calc(data, self._crc))

    def digest(self) -> bytes:
        return self._crc.to_bytes(8, "big")

    def copy(self) -> _Crc64Nvme:
        return _Crc64Nvme(self._crc)


@functools.cache
def _crc64nvme_model() -> Any:
    import anycrc

    return anycrc.Model("CRC64-NVME")


@functools.cache
def crc64nvme_available() -> bool:
    """Whether ``Checksum("crc64nvme")`` can be computed (``anycrc`` is installed;
    looked up once)."""
    try:
        _crc64nvme_model()
    except ImportError:
        return False
    return True


_SLICE: Final = 1024 * 1024


def _crc32c_extend_view(crc: int, view: memoryview) -> int:
    """``google_crc32c.extend`` over a buffer it does not take directly.

    Its C function accepts only buffers without a release hook (``bytes``, NumPy
    arrays), not ``memoryview`` or ``bytearray``.  A NumPy array over the same
    memory costs nothing (NumPy comes with pydicom's pixel support, and with any
    Pixel Data handed over as an array); without NumPy the view is hashed through
    1 MiB ``bytes`` slices (bounded memory, one memcpy).
    """
    whole = view.obj
    if type(whole) is bytes and view.nbytes == len(whole) and view.c_contiguous:
        return int(google_crc32c.extend(crc, whole))
    if _numpy is not None:
        return int(google_crc32c.extend(crc, _numpy.frombuffer(view, dtype=_numpy.uint8)))
    for start in range(0, view.nbytes, _SLICE):
        crc = google_crc32c.extend(crc, bytes(view[start : start + _SLICE]))
    return crc


_numpy: Any
try:
    import numpy as _numpy
except ImportError:  # pragma: no cover - numpy is in every test environment
    _numpy = None


# -- CRC32C combination (zlib's crc32_combine, with the Castagnoli polynomial) ---------


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC polynomial (reflected bit order)."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC32C_POLY if b & 1 else b >> 1


def _x2n_table() -> tuple[int, ...]:
    p = 1 << 30  # x^1
    table = [p]
    for _ in range(31):
        p = _multmodp(p, p)
        table.append(p)
    return tuple(table)


_X2N: Final = _x2n_table()


def _x8nmodp(n: int) -> int:
    """x^(8n) modulo the CRC polynomial."""
    p = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def _crc32c_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32C of ``a + b`` from ``crc32c(a)``, ``crc32c(b)`` and ``len(b)``."""
    return _multmodp(_x8nmodp(length2), crc1) ^ crc2
