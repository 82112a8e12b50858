"""Shared fixtures: every async test runs on asyncio and on trio (anyio's plugin)."""

from __future__ import annotations

import pytest

from tests.servers import (  # noqa: F401 (fixtures, registered by being imported)
    azure_container,
    azure_storage_options,
    gcs_bucket,
    gcs_emulator_bucket,
    gcs_emulator_storage_options,
    gcs_storage_options,
    orthanc_dicomweb,
    s3_bucket,
    s3_storage_options,
    seaweedfs_bucket,
    seaweedfs_storage_options,
)

# assert statements in the shared modules report like those of test modules
pytest.register_assert_rewrite("tests.datasets", "tests.helpers")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)
