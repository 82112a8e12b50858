"""Soak: many small writes through one event loop leave memory, file descriptors
and threads where they were.  A modest count here (CI); the full 10,000 is
``python -m benchmarks.bench_soak``."""

from __future__ import annotations

import gc
import io
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

import aiodicom
from tests.datasets import ct_slice
from tests.helpers import open_fds

pytestmark = pytest.mark.anyio

WRITES = int(os.environ.get("AIODICOM_SOAK_WRITES", "1000"))
WARM_UP = 200
RSS_SLACK = 16 * 1024 * 1024  # allocator noise, not growth with the count


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _destinations(tmp_path: Path) -> dict[str, Callable[[int], Any]]:
    memory_root = f"memory://aiodicom-soak-{tmp_path.name}"
    return {
        # ten names, overwritten again and again: the directory stays small
        "local": lambda i: tmp_path / f"{i % 10}.dcm",
        "local-exclusive": lambda i: tmp_path / "x" / f"{i}.dcm",
        "bytesio": lambda i: io.BytesIO(),
        "bytearray": lambda i: bytearray(),
        "memory-url": lambda i: f"{memory_root}/{i % 10}.dcm",
    }


@pytest.mark.parametrize(
    "kind", ["local", "local-exclusive", "bytesio", "bytearray", "memory-url"]
)
async def test_soak_small_writes_stable(kind: str, tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    destination = _destinations(tmp_path)[kind]
    ds = ct_slice(32, 32)
    exclusive = {"exist_ok": False} if kind == "local-exclusive" else {}

    async def run(start: int, stop: int) -> None:
        for i in range(start, stop):
            await aiodicom.dcmwrite(destination(i), ds, **exclusive)
            if kind == "local-exclusive" and i % 100 == 99:  # keep the folder small
                for p in (tmp_path / "x").iterdir():
                    p.unlink()

    await run(0, WARM_UP)
    gc.collect()
    base_rss, base_fds, base_threads = rss(), len(open_fds()), threading.active_count()
    await run(WARM_UP, WARM_UP + WRITES)
    gc.collect()
    # no growth (earlier tests' sockets may be collected meanwhile: fewer is fine)
    assert len(open_fds()) <= base_fds
    assert threading.active_count() <= base_threads + 1
    assert rss() - base_rss < RSS_SLACK
    if kind == "local":
        assert sorted(os.listdir(tmp_path)) == sorted(["x", *(f"{i}.dcm" for i in range(10))])
    if kind == "memory-url":
        assert len(fsspec.filesystem("memory").ls(f"memory://aiodicom-soak-{tmp_path.name}")) == 10
