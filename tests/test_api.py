"""The public API: what :mod:`aiodicom`, :mod:`aiodicom.sinks` and :mod:`aiodicom.dask`
export, and that every public name says where users import it from (its
``__module__`` travels in reprs, pickles and the API reference)."""

from __future__ import annotations

import errno
import importlib
import inspect
import pickle
import pickletools
import sys
from typing import Any

import pytest

import aiodicom
import aiodicom._errors
import aiodicom.dask
import aiodicom.sinks

PUBLIC = {
    "aiodicom": {
        "DEFAULT_TEMPLATE",
        "AsyncSink",
        "AsyncWriter",
        "Checksum",
        "ChecksumMismatchError",
        "DestinationError",
        "DicomWebError",
        "DuplicateDestinationError",
        "EncodePlan",
        "ExportOptions",
        "ExportProgress",
        "ExportReport",
        "ItemResult",
        "NamingError",
        "PartitionError",
        "RemoteError",
        "RetryableError",
        "Sink",
        "SourceSkipped",
        "Status",
        "Template",
        "TemplateError",
        "TransformError",
        "WriteResult",
        "Writer",
        "__version__",
        "dcmwrite",
        "export",
        "prepare",
    },
    "aiodicom.sinks": {
        "AsyncFileObject",
        "AsyncSink",
        "AsyncWriter",
        "Bytearray",
        "Capabilities",
        "Chunk",
        "DicomWeb",
        "DicomWebError",
        "FileObject",
        "FsspecFile",
        "LocalFile",
        "RetryableError",
        "Sink",
        "StowResult",
        "StowStatus",
        "Writer",
        "capabilities",
        "is_url",
        "resolve",
    },
    "aiodicom.dask": {"PartitionError", "RemoteError", "export"},
}

PUBLIC_EXCEPTIONS = {
    "ChecksumMismatchError",
    "DestinationError",
    "DicomWebError",
    "DuplicateDestinationError",
    "NamingError",
    "PartitionError",
    "RemoteError",
    "RetryableError",
    "SourceSkipped",
    "TemplateError",
    "TransformError",
}

# Exception classes of aiodicom._errors that are deliberately not public.
PRIVATE_EXCEPTIONS = {"UsageError"}  # the CLI's argument errors (exit status 2)

NAMES = [(module, name) for module, names in PUBLIC.items() for name in sorted(names)]


def is_public_path(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


def pickled_paths(data: bytes) -> list[str]:
    """Every string in a pickle that names something of aiodicom (the module of
    a global, for protocols 2 to 5 alike)."""
    out = []
    for opcode, arg, _ in pickletools.genops(data):
        if isinstance(arg, str) and arg.startswith("aiodicom"):
            out.append(arg.split(" ")[0] if opcode.name == "GLOBAL" else arg)
    return out


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_all_is_exactly_the_public_api(module: str) -> None:
    exported = importlib.import_module(module).__all__
    assert len(exported) == len(set(exported)), "a name is listed twice"
    assert set(exported) == PUBLIC[module]


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_public_name_is_importable_and_says_a_public_module(module: str, name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"from {module} import {name}", namespace)
    value = namespace[name]
    assert value is getattr(importlib.import_module(module), name)
    where = getattr(value, "__module__", None)
    if where is None:  # constants: nothing names a module
        assert isinstance(value, str), name
        return
    assert is_public_path(where), f"{module}.{name}.__module__ is {where!r}"
    if inspect.isclass(value) or inspect.isfunction(value):
        # the path it gives is one it can be imported from, as pickle does
        assert getattr(importlib.import_module(where), value.__qualname__) is value
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            data = pickle.dumps(value, protocol=protocol)
            assert pickle.loads(data) is value
            assert all(is_public_path(p) for p in pickled_paths(data)), pickled_paths(data)


def test_export_is_the_function_not_a_module() -> None:
    assert inspect.iscoroutinefunction(aiodicom.export)
    assert aiodicom.export.__module__ == "aiodicom"
    from aiodicom import export

    assert export is aiodicom.export
    assert "aiodicom.export" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match=r"aiodicom\.export"):
        importlib.import_module("aiodicom.export")
    with pytest.raises(ModuleNotFoundError, match=r"aiodicom\.export"):
        exec("import aiodicom.export")
    assert aiodicom.dask.export is not aiodicom.export


def test_every_exception_class_is_public_or_known_private() -> None:
    defined = {
        name
        for name, value in vars(aiodicom._errors).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    exported = {
        name
        for name in aiodicom.__all__
        if inspect.isclass(getattr(aiodicom, name))
        and issubclass(getattr(aiodicom, name), BaseException)
    }
    assert exported == PUBLIC_EXCEPTIONS
    assert defined == PUBLIC_EXCEPTIONS | PRIVATE_EXCEPTIONS
    # where else they are documented, they are the same classes
    assert aiodicom.sinks.RetryableError is aiodicom.RetryableError
    assert aiodicom.sinks.DicomWebError is aiodicom.DicomWebError
    assert aiodicom.dask.PartitionError is aiodicom.PartitionError
    assert aiodicom.dask.RemoteError is aiodicom.RemoteError


@pytest.mark.parametrize("name", sorted(PUBLIC_EXCEPTIONS))
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_exceptions_pickle_by_their_public_path(name: str, protocol: int) -> None:
    cls = getattr(aiodicom, name)
    if cls is aiodicom.ChecksumMismatchError:
        error = cls("out/1.dcm", "crc32c", "AAAAAA==", "AAAAAQ==", part=2)
    elif issubclass(cls, OSError):
        error = cls(errno.EEXIST, "File exists", "out/1.dcm")
    else:
        error = cls("what went wrong")
    data = pickle.dumps(error, protocol=protocol)
    assert pickled_paths(data) == ["aiodicom"]
    assert b"aiodicom._" not in data
    loaded = pickle.loads(data)
    assert type(loaded) is cls
    assert loaded.args == error.args
    assert str(loaded) == str(error)
    if isinstance(error, aiodicom.ChecksumMismatchError):
        assert (loaded.errno, loaded.filename) == (errno.EIO, "out/1.dcm")
        assert (loaded.expected, loaded.actual, loaded.part) == ("AAAAAA==", "AAAAAQ==", 2)
    elif isinstance(error, OSError):
        assert (loaded.errno, loaded.filename) == (errno.EEXIST, "out/1.dcm")


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_dicomweb_error_pickles_with_what_the_server_said(protocol: int) -> None:
    error = aiodicom.DicomWebError(
        "not stored", url="https://h/p/studies", status_code=409, failure_reason=272, detail="d"
    )
    loaded = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert type(loaded) is aiodicom.DicomWebError
    assert str(loaded) == "not stored"
    assert (loaded.url, loaded.status_code, loaded.failure_reason, loaded.detail) == (
        "https://h/p/studies",
        409,
        272,
        "d",
    )
