"""Numbers the docs quote from benchmarks come from the results files: each
``<!--result:SUITE:path-->`` marker in the pages resolves (the docs build fails
otherwise; this catches it in the test suite too)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").rglob("*.md"))
MARKER = re.compile(r"<!--result:([a-z0-9_]+):([A-Za-z0-9_./% \-]+)-->")


def _generator():  # type: ignore[no-untyped-def]
    """docs/gen_performance.py, which the docs build uses (it needs no mkdocs)."""
    spec = importlib.util.spec_from_file_location(
        "_gen_performance", ROOT / "docs" / "gen_performance.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MARKERS = [
    (page.relative_to(ROOT).as_posix(), *match.groups())
    for page in PAGES
    for match in MARKER.finditer(page.read_text(encoding="utf-8"))
]


def test_the_docs_quote_benchmark_results() -> None:
    assert len(MARKERS) >= 20  # dask, checksum, DICOMweb and export figures


@pytest.mark.parametrize(("page", "suite", "path"), MARKERS)
def test_every_quoted_result_exists(page: str, suite: str, path: str) -> None:
    value = _generator().result_value(suite, path)
    assert isinstance(value, int | float | str), (page, suite, path, value)


VERDICT = re.compile(r"<!--verdict:([a-z0-9_]+):([A-Za-z0-9_./% \-]+):(ge|le):([0-9.]+)-->")
VERDICTS = [
    (page.relative_to(ROOT).as_posix(), *match.groups())
    for page in PAGES
    for match in VERDICT.finditer(page.read_text(encoding="utf-8"))
]


def test_no_target_is_declared_met_by_hand() -> None:
    """Whether a target is met comes from the results, not from the page's text."""
    performance = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    assert len(VERDICTS) >= 8
    assert ": met" not in performance
    assert "not met**" not in performance


@pytest.mark.parametrize(("page", "suite", "path", "op", "target"), VERDICTS)
def test_every_verdict_follows_its_result(
    page: str, suite: str, path: str, op: str, target: str
) -> None:
    generator = _generator()
    value = float(generator.result_value(suite, path))
    expected = value >= float(target) if op == "ge" else value <= float(target)
    assert generator.verdict(suite, path, op, target) == ("met" if expected else "**not met**")
