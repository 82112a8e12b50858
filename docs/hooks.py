"""mkdocs hooks for the aiodicom site (``hooks:`` in mkdocs.yml).

* The Performance page gets its tables from ``benchmarks/results/*.json``
  (rendered by ``docs/gen_performance.py``) in place of its marker comment, and the
  benchmark chart when ``benchmarks/results/summary.png`` exists.
* Pages written by other parts of the project (object storage, bulk export,
  Dask, guarantees) get a short placeholder while they do not exist yet, so that
  the nav and the links to them stay valid under ``--strict``.
* Pages may link to repository files outside ``docs/`` (``../README.md``,
  ``../CHANGELOG.md``, ``../examples/x.py``) so that the links work when the
  Markdown is read on a code host; on the site they point to the page that shows
  that content.  Other links out of ``docs/`` still fail the ``--strict`` build.
* Docstrings use pydicom's Sphinx roles (``:func:`pydicom.dcmwrite```); in the API
  reference they are shown as plain code.
"""

from __future__ import annotations

import importlib.util
import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.aiodicom")

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
CHART = ROOT / "benchmarks" / "results" / "summary.png"
CHART_URI = "img/benchmark-summary.png"
PERFORMANCE_MARKER = "<!-- benchmark-tables -->"
CHART_MARKER = "<!-- benchmark-chart -->"

# Pages that other parts of the project write; a placeholder stands in until they do.
PENDING_PAGES = {
    "remote.md": "Object storage (S3, GCS, Azure)",
    "export.md": "Bulk export and CLI",
    "dask.md": "Bulk export on Dask",
    "guarantees.md": "Guarantees",
}

_ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|mod|attr|exc|data|obj|const):<code>~?([^<]*)</code>"
)


# Repository files outside docs/ -> the site page that shows them.
REPOSITORY_LINKS = {"README.md": "index.md", "CHANGELOG.md": "changelog.md"}
_OUTSIDE_LINK = re.compile(r"\]\(((?:\.\./)+[^)#\s]+)(#[^)\s]*)?\)")


def _site_page_for(repository_path: str) -> str | None:
    if repository_path in REPOSITORY_LINKS:
        return REPOSITORY_LINKS[repository_path]
    if repository_path.startswith("examples/") and repository_path.endswith(".py"):
        return "examples.md"
    return None


def _repository_links(markdown: str, src_uri: str) -> str:
    page_dir = posixpath.dirname(src_uri)

    def replace(match: re.Match[str]) -> str:
        target = posixpath.normpath(posixpath.join("docs", page_dir, match.group(1)))
        page = _site_page_for(target)
        if page is None:
            return match.group(0)  # left for mkdocs to report
        return f"]({posixpath.relpath(page, page_dir or '.')})"  # anchors do not carry over

    return _OUTSIDE_LINK.sub(replace, markdown)


def _gen_performance() -> Any:
    spec = importlib.util.spec_from_file_location("_gen_performance", DOCS / "gen_performance.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config: Any) -> Files:
    for src_uri, title in PENDING_PAGES.items():
        if files.get_file_from_path(src_uri) is None:
            log.info("aiodicom: %s is not written yet; using a placeholder", src_uri)
            content = (
                f"# {title}\n\n"
                '!!! note "Not written yet"\n'
                "    This page is being written. Until then, see the docstrings in the\n"
                "    [API reference](reference.md).\n"
            )
            files.append(File.generated(config, src_uri, content=content))
    if CHART.is_file():
        files.append(File.generated(config, CHART_URI, abs_src_path=str(CHART)))
    return files


# ``<!--result:SUITE:path/to/value-->`` in a page: the value at that path of
# benchmarks/results/SUITE.json's "results", so that every number the prose quotes
# comes from a results file the benchmarks wrote, never typed by hand.  An unknown
# path fails the build.
_RESULT = re.compile(r"<!--result:([a-z0-9_]+):([A-Za-z0-9_./% \-]+)-->")
# ``<!--verdict:SUITE:path:ge|le:target-->``: "met" or "**not met**", from the
# same value (see ``gen_performance.verdict``).
_VERDICT = re.compile(r"<!--verdict:([a-z0-9_]+):([A-Za-z0-9_./% \-]+):(ge|le):([0-9.]+)-->")


def _results_in_prose(markdown: str, src_uri: str) -> str:
    def replace(match: re.Match[str]) -> str:
        try:
            value = _gen_performance().result_value(match.group(1), match.group(2))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{src_uri}: no benchmark result {match.group(0)} ({exc!r})") from exc
        if isinstance(value, float):
            return f"{value:.2f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    def judge(match: re.Match[str]) -> str:
        try:
            return str(_gen_performance().verdict(*match.groups()))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{src_uri}: no benchmark verdict {match.group(0)} ({exc!r})"
            ) from exc

    return _VERDICT.sub(judge, _RESULT.sub(replace, markdown))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    markdown = _repository_links(markdown, page.file.src_uri)
    markdown = _results_in_prose(markdown, page.file.src_uri)
    if page.file.src_uri != "performance.md":
        return markdown
    markdown = markdown.replace(PERFORMANCE_MARKER, _gen_performance().render())
    chart = f"![Benchmark summary]({CHART_URI})" if CHART.is_file() else ""
    return markdown.replace(CHART_MARKER, chart)


# Defaults whose source text is a private sentinel; the reference shows their value.
# (dcmwrite's exist_ok defaults to a true value that tells "not given" apart from
# True, to refuse exist_ok together with pydicom 3.0's overwrite.)
SIGNATURE_DEFAULTS = {
    '<span class="n">_EXIST_OK_DEFAULT</span>': '<span class="kc">True</span>',
}


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    for source, shown in SIGNATURE_DEFAULTS.items():
        html = html.replace(source, shown)
    return _ROLE.sub(r"<code>\1</code>", html)
