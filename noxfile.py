"""Developer tasks.  ``nox -s tests`` is what CI runs (see .ci/run and the README)."""

from __future__ import annotations

import os
import shutil

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
    _install_validators(session)
    session.run("pytest", *(session.posargs or ["-q"]))


def _install_validators(session: nox.Session) -> None:
    """DCMTK's dcmdump and dicom3tools' dciodvfy, which tests/test_validators.py runs
    (Debian packages; needs root or sudo the first time).  Elsewhere, stop with a
    message that names them."""
    if shutil.which("dcmdump") and shutil.which("dciodvfy"):
        return
    missing = " and ".join(
        f"{tool} ({package})"
        for tool, package in (("dcmdump", "DCMTK"), ("dciodvfy", "dicom3tools"))
        if not shutil.which(tool)
    )
    if shutil.which("apt-get") is None:
        session.error(
            f"the tests need {missing} on PATH, and this system has no apt-get to install "
            "them: install DCMTK and dicom3tools with your package manager "
            "(Homebrew: brew install dcmtk; dicom3tools: https://www.dclunie.com/dicom3tools.html)"
        )
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        session.error(
            f"the tests need {missing}: run as root, or install them first "
            "(apt-get install dcmtk dicom3tools)"
        )
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run(*sudo, "apt-get", "update", "-qq", external=True, env=env)
    session.run(
        *sudo, "apt-get", "install", "-y", "-qq", "dcmtk", "dicom3tools", external=True, env=env
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install("ruff>=0.17,<0.18")  # formatting changes between minor versions
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
    session.install("-e", ".[test]", "matplotlib")
    session.run("python", "tests/servers.py", "install")
    session.run("python", "-m", "benchmarks", *(session.posargs or ["all"]))


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation site with mkdocs --strict."""
    session.install(
        "-e",
        ".",
        "mkdocs>=1.6,<2",
        "mkdocs-material>=9.5,<10",
        "mkdocstrings[python]>=0.26",
        "ruff",  # mkdocstrings formats signatures with it
    )
    session.run("mkdocs", "build", "--strict")


@nox.session(python=PYTHON)
def package(session: nox.Session) -> None:
    """Build the sdist and wheel, check them with twine, install the wheel in a fresh
    virtual environment and run the CLI and the README's example with it."""
    import glob
    import re
    import shutil
    import tarfile
    import zipfile
    from pathlib import Path

    session.install("build", "twine")
    root = Path(__file__).resolve().parent
    tmp = Path(session.create_tmp()).resolve()
    dist, fresh, run = tmp / "dist", tmp / "fresh-venv", tmp / "run"
    for path in (dist, fresh, run):
        shutil.rmtree(path, ignore_errors=True)

    session.run("python", "-m", "build", "--outdir", str(dist), str(root))
    sdists = glob.glob(str(dist / "aiodicom-*.tar.gz"))
    wheels = glob.glob(str(dist / "aiodicom-*.whl"))
    if len(sdists) != 1 or len(wheels) != 1:
        session.error(f"expected one sdist and one wheel in {dist}, got {sdists + wheels}")
    session.run("twine", "check", "--strict", *sdists, *wheels)

    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
    for needed in ("aiodicom/__init__.py", "aiodicom/py.typed", "aiodicom/cli.py"):
        if needed not in names:
            session.error(f"the wheel lacks {needed}")
    with tarfile.open(sdists[0]) as sdist:
        members = [m.split("/", 1)[-1] for m in sdist.getnames()]
    stray = [m for m in members if m.startswith((".servers", ".nox", "site/", "exported"))]
    if stray:
        session.error(f"the sdist holds files that do not belong in it: {stray[:5]}")

    session.run("python", "-m", "venv", str(fresh))
    python = str(fresh / "bin" / "python")
    session.run(python, "-m", "pip", "install", "--quiet", wheels[0], external=True)
    session.run(str(fresh / "bin" / "aiodicom"), "--help", external=True)
    session.run(str(fresh / "bin" / "aiodicom"), "--version", external=True)

    # The README's example and the quick start, exactly as written, in an empty folder.
    readme = (root / "README.md").read_text(encoding="utf-8")
    example = re.search(r"## Example\s+```python\n(.*?)```", readme, re.S)
    if example is None:
        session.error("README.md has no '## Example' python block")
    run.mkdir(parents=True)
    (run / "readme_example.py").write_text(example.group(1), encoding="utf-8")
    with session.chdir(run):
        session.run(python, "readme_example.py", external=True)
        session.run(python, str(root / "examples" / "quickstart.py"), external=True)
    written = sorted(p.name for p in run.glob("*.dcm"))
    if written != sorted(["ct.dcm", *(f"ct-{i}.dcm" for i in range(10))]):
        session.error(f"the examples wrote {written}")
    session.log(f"OK: {Path(sdists[0]).name} and {Path(wheels[0]).name}")
