"""Developer tasks.  ``nox -s tests`` is what CI runs (see .ci/run and the README)."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHON = "3"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Install the package with its test extras, install the local object-storage
    servers (apart from the package's environment), then run the whole suite."""
    session.install("-e", ".[test]")
    session.run("python", "tests/servers.py", "install")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.install("-e", ".[lint]")
    session.run("mypy")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The main job: export pydicom's bundled example datasets into ./exported."""
    session.install(".")
    session.run("aiodicom", "demo", *(session.posargs or ["exported"]))


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks against pydicom.dcmwrite (not tests: numbers, not assertions)."""
    session.install("-e", ".[test]")
    session.run("python", "tests/servers.py", "install")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict."""
    session.install("-e", ".", "mkdocs-material", "mkdocstrings[python]")
    session.run("mkdocs", "build", "--strict")
