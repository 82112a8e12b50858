"""The layers of the package, read from its source (an AST check, nothing is run).

* The core (``aiodicom._core``) does no I/O: it imports only pure-computation
  modules of the standard library, pydicom (whose encoder it reuses;
  ``pydicom.filebase.DicomBytesIO`` is an in-memory buffer) and itself, and never
  calls ``open()``.
* The layers import only downward::

      _core -> (_checksum, _errors, _retry, _version) -> sinks -> _driver -> _export
      -> dask -> cli

  ``aiodicom/__init__.py`` (and ``__main__``) re-export from all of them.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import aiodicom

PACKAGE = Path(aiodicom.__file__).resolve().parent

# What the core may import: pure computation only.  Add a module here only if it
# does no I/O (no files, sockets, event loops, processes, environment) and starts no
# thread.
CORE_ALLOWED = {
    "__future__",
    "collections",
    "copy",
    "dataclasses",
    "decimal",
    "enum",
    "functools",
    "itertools",
    "math",
    "struct",
    "typing",
    "zlib",
    "pydicom",
    # Coordination, not I/O: the core starts no thread, but it serialises reads
    # of a caller's buffered value shared by concurrent writes (issue 12, item 1)
    # with one lock per buffer, kept in a weak dictionary.
    "contextlib",
    "threading",
    "weakref",
}
# Modules that do I/O or reach for it; never allowed in the core (documentation,
# and the checker's own test: none of these may slip into CORE_ALLOWED).
IO_MODULES = {
    "aiofiles",
    "anyio",
    "asyncio",
    "builtins",
    "concurrent",
    "dask",
    "distributed",
    "fsspec",
    "gcsfs",
    "adlfs",
    "http",
    "httpx",
    "importlib",
    "io",
    "logging",
    "mmap",
    "multiprocessing",
    "os",
    "pathlib",
    "s3fs",
    "select",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "subprocess",
    "sys",
    "tempfile",
    "trio",
    "urllib",
}
FORBIDDEN_CALLS = {"open", "__import__"}

# Bottom-up: a module may import aiodicom modules of its own rank or below, with
# two exceptions: the core imports only the core, and the leaf utilities
# (checksums, errors, retry policy, version) import nothing of aiodicom but themselves.
RANKS: list[tuple[str, ...]] = [
    ("aiodicom._core",),
    ("aiodicom._checksum", "aiodicom._errors", "aiodicom._retry", "aiodicom._version"),
    ("aiodicom.sinks",),
    ("aiodicom._driver",),
    ("aiodicom._export",),
    ("aiodicom.dask",),
    ("aiodicom.cli",),
    ("aiodicom", "aiodicom.__main__"),  # the package root re-exports every layer
]
LEAVES = set(RANKS[1])


# --- reading the source --------------------------------------------------------------


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imported(
    source: str, module: str, *, is_package: bool, known: set[str]
) -> Iterator[tuple[int, str]]:
    """Every module `source` (module `module`) imports, with its line: absolute
    and relative, at any depth (in functions too).  ``from X import name`` counts
    ``X.name`` when that is a module in `known`, else ``X``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield node.lineno, candidate if candidate in known else base


def forbidden_calls(source: str) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            yield node.lineno, f"{node.func.id}()"


def core_violations(source: str, module: str, *, is_package: bool, known: set[str]) -> list[str]:
    out = []
    for line, name in imported(source, module, is_package=is_package, known=known):
        top = name.split(".")[0]
        if name == "aiodicom._core" or name.startswith("aiodicom._core."):
            continue
        if top in IO_MODULES or top not in CORE_ALLOWED:
            out.append(f"{module}:{line} imports {name}")
    out += [f"{module}:{line} calls {call}" for line, call in forbidden_calls(source)]
    return out


def rank(module: str) -> int:
    """The rank of the longest prefix of `module` in RANKS."""
    best, best_len = -1, -1
    for number, prefixes in enumerate(RANKS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = number, len(prefix)
    return best


def layer_violations(source: str, module: str, *, is_package: bool, known: set[str]) -> list[str]:
    own = rank(module)
    own_layer = next(p for p in RANKS[own] if module == p or module.startswith(p + "."))
    out = []
    for line, name in imported(source, module, is_package=is_package, known=known):
        if name != "aiodicom" and not name.startswith("aiodicom."):
            continue
        theirs = rank(name)
        same_layer = name == own_layer or name.startswith(own_layer + ".")
        allowed = same_layer if own == 0 or own_layer in LEAVES else theirs <= own
        if not allowed:
            out.append(f"{module}:{line} imports {name} (a higher layer)")
    return out


# --- the package -----------------------------------------------------------------------

MODULES = package_modules()
KNOWN = set(MODULES)


def _check(check: Callable[..., list[str]], module: str) -> list[str]:
    path = MODULES[module]
    return check(path.read_text(), module, is_package=path.name == "__init__.py", known=KNOWN)


def test_the_package_is_read() -> None:
    """Guards against a vacuous pass: the modules the checks read are there."""
    core = {m for m in MODULES if m.startswith("aiodicom._core")}
    assert {"aiodicom._core", "aiodicom._core.encode", "aiodicom._core.cost"} <= core
    assert {"aiodicom._driver", "aiodicom.sinks.local", "aiodicom._export.run"} <= KNOWN
    assert "aiodicom.sinks._stores.s3" in KNOWN


def test_every_module_belongs_to_a_layer() -> None:
    """A new module must be placed in RANKS (the root's rank is only for the root)."""
    root = len(RANKS) - 1
    strays = [m for m in MODULES if rank(m) == root and m not in RANKS[root]]
    assert strays == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("aiodicom._core")))
def test_core_imports_no_io_module(module: str) -> None:
    assert _check(core_violations, module) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_import_only_downward(module: str) -> None:
    assert _check(layer_violations, module) == []


# --- the checker itself ----------------------------------------------------------------


def test_io_modules_are_never_allowed_in_the_core() -> None:
    assert CORE_ALLOWED.isdisjoint(IO_MODULES)


@pytest.mark.parametrize(
    "source",
    [
        "import os",
        "import io",
        "from io import BytesIO",
        "import socket",
        "from pathlib import Path",
        "import asyncio",
        "import anyio.to_thread",
        "import concurrent.futures",
        "import multiprocessing",
        "import fsspec",
        "def f():\n    import tempfile",
        "import json",  # not I/O itself, but not on the list: the list must grow on purpose
        "from ...sinks import LocalFile",
        "from ... import _driver",
        "from ..._export.run import export",
        "from aiodicom.sinks import resolve",
        "import aiodicom",
        "def f(path):\n    return open(path).read()",
        "x = __import__('os')",
    ],
)
def test_core_check_finds_io(source: str) -> None:
    known = KNOWN | {"aiodicom._core.example"}
    assert core_violations(source, "aiodicom._core.example", is_package=False, known=known)


@pytest.mark.parametrize(
    "source",
    [
        "from __future__ import annotations",
        "import zlib",
        "from pydicom.filebase import DicomBytesIO",
        "from pydicom.filewriter import write_data_element",
        "from .rules import Chunk",
        "from . import rules",
        "def f(on_open):\n    on_open(1)",
    ],
)
def test_core_check_allows_pure_modules(source: str) -> None:
    assert core_violations(source, "aiodicom._core.encode", is_package=False, known=KNOWN) == []


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("aiodicom._core.encode", "from .._errors import RetryableError"),
        ("aiodicom._core.encode", "from ..sinks import Chunk"),
        ("aiodicom._errors", "from ._core import Chunk"),
        ("aiodicom.sinks.local", "from .._driver import dcmwrite"),
        ("aiodicom.sinks.local", "from .. import dcmwrite"),
        ("aiodicom.sinks._stores.s3", "from ..._export.naming import Template"),
        ("aiodicom._driver", "from ._export import export"),
        ("aiodicom._driver", "import aiodicom.dask"),
        ("aiodicom._export.run", "from ..dask import export"),
        ("aiodicom._export.run", "from ..cli import main"),
        ("aiodicom.dask._plan", "def f():\n    from ..cli._main import main"),
        ("aiodicom.cli._main", "import aiodicom"),
    ],
)
def test_layer_check_finds_upward_imports(module: str, source: str) -> None:
    assert layer_violations(source, module, is_package=False, known=KNOWN)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("aiodicom._core.encode", "from .rules import Chunk"),
        ("aiodicom.sinks.local", "from .._core.rules import Chunk"),
        ("aiodicom.sinks.local", "from .. import _errors"),
        ("aiodicom.sinks._stores.s3", "from ..._retry import RetryPolicy"),
        ("aiodicom._driver", "from .sinks import resolve"),
        ("aiodicom._export.run", "from .._driver import dcmwrite"),
        ("aiodicom.dask._plan", "from .._export.options import ExportOptions"),
        ("aiodicom.cli._main", "from ..dask import run_on_dask"),
        ("aiodicom", "from ._export import export"),
    ],
)
def test_layer_check_allows_downward_imports(module: str, source: str) -> None:
    is_package = module == "aiodicom"
    assert layer_violations(source, module, is_package=is_package, known=KNOWN) == []


def test_test_modules_never_import_each_other() -> None:
    """What test modules share lives in tests/helpers.py, tests/datasets.py,
    tests/servers.py or tests/fake_dicomweb.py, never in another test module."""
    tests = Path(__file__).resolve().parent
    offenders = []
    for module in sorted(tests.glob("test_*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(name.startswith("tests.test_") for name in names):
                offenders.append(f"{module.name}:{node.lineno}")
    assert offenders == []


# --------------------------------------------- what `pip install .` alone provides

# The import names of the dependencies pyproject.toml declares for every install
# (not the extras); google-crc32c is imported as google_crc32c.
DECLARED = {"pydicom", "anyio", "fsspec", "google_crc32c"}
# Subpackages imported only with their extra installed (``import aiodicom`` does
# not import them), and what that extra brings.
EXTRA_ONLY = {"aiodicom.dask": {"dask", "distributed"}}


def _allowed(module: str) -> set[str]:
    for package, extra in EXTRA_ONLY.items():
        if module == package or module.startswith(package + "."):
            return DECLARED | extra
    return DECLARED


def module_level_imports(source: str) -> Iterator[tuple[int, str]]:
    """Top-level names imported when the module is imported: at module level,
    outside ``try`` (an optional import guarded there) and outside
    ``if TYPE_CHECKING``; imports inside functions happen only when called."""

    def walk(body: list[ast.stmt]) -> Iterator[tuple[int, str]]:
        for node in body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield node.lineno, alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                yield node.lineno, node.module.split(".")[0]
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                yield from walk(node.body)
                yield from walk(node.orelse)

    yield from walk(ast.parse(source).body)


def test_the_package_imports_only_what_it_declares() -> None:
    """``import aiodicom`` (and any of its modules) needs nothing but the standard
    library and the declared dependencies: a module-level import of anything else
    (sniffio, say, which the test extras bring in through trio) breaks a plain
    ``pip install .``, which the test environment would not notice."""
    import sys

    undeclared = [
        f"{module}:{line}: {name}"
        for module, path in package_modules().items()
        for line, name in module_level_imports(path.read_text(encoding="utf-8"))
        if name not in sys.stdlib_module_names
        and name not in _allowed(module)
        and name != "aiodicom"
    ]
    assert undeclared == []
    # and no other module imports an extra-only subpackage at module level
    imported_by_package = [
        f"{module}:{line}: {name}"
        for module, path in package_modules().items()
        if not any(module.startswith(package) for package in EXTRA_ONLY)
        for line, name in _module_level_aiodicom_imports(module, path)
        if any(name == package or name.startswith(package + ".") for package in EXTRA_ONLY)
    ]
    assert imported_by_package == []


def _module_level_aiodicom_imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """Absolute names of the modules `module` (at `path`) imports at module
    level, relative imports resolved (``from . import x`` gives ``package.x``)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join([*base, node.module] if node.module else base)
            for alias in node.names:
                yield node.lineno, stem if node.module else f"{stem}.{alias.name}"


def test_the_declared_list_matches_pyproject() -> None:
    text = (PACKAGE.parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    block = text.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    names = {
        line.strip().strip('",').split(">")[0].split("<")[0].split("=")[0].split("[")[0]
        for line in block.splitlines()
        if line.strip()
    }
    assert {name.replace("-", "_") for name in names} == DECLARED


def test_the_relative_imports_are_resolved(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text("from .dask import export\nfrom . import dask\n", encoding="utf-8")
    inner = tmp_path / "x.py"
    inner.write_text("from ..dask import export\n", encoding="utf-8")
    assert [n for _, n in _module_level_aiodicom_imports("aiodicom", init)] == [
        "aiodicom.dask",
        "aiodicom.dask",
    ]
    assert [n for _, n in _module_level_aiodicom_imports("aiodicom.cli.x", inner)] == [
        "aiodicom.dask"
    ]


def test_the_import_check_finds_an_undeclared_import() -> None:
    source = "import os\nimport sniffio\ntry:\n    import numpy\nexcept ImportError:\n    pass\n"
    names = [name for _, name in module_level_imports(source)]
    assert names == ["os", "sniffio"]
