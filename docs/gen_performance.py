"""Render ``benchmarks/results/*.json`` as Markdown tables for the Performance page.

The docs build calls :func:`render` (through ``docs/hooks.py``); run it by hand to
see the tables::

    python docs/gen_performance.py [RESULTS_DIR]

Every JSON file written by ``python -m benchmarks`` (``nox -s bench``) has the shape
``{"machine": {...}, "args": {...}, "results": {...}}``.  The results of the suites
differ, so they are rendered generically: scalars become a two-column table, a
mapping of cases (each a mapping of scalars) becomes one table with a row per case,
deeper mappings get a sub-heading.  Lists (the raw rounds) are left out: the
medians are what the tables show.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

SUITE_TITLES = {
    "write": "Single writes: local file, memory, event loop",
    "s3": "Object storage: the local S3 server",
    "export": "Bulk export",
}

MISSING = (
    '!!! note "No benchmark results yet"\n'
    "    Run `nox -s bench` (or `python -m benchmarks all`) to measure this machine; the\n"
    "    results land in `benchmarks/results/*.json` and appear here at the next docs build.\n"
)

Scalar = str | int | float | bool | None


def result_value(suite: str, path: str, results_dir: Path = RESULTS) -> Any:
    """The value at `path` (keys separated by ``/``; list indexes are numbers) of
    ``SUITE.json``'s results: what a ``<!--result:SUITE:path-->`` marker in a page
    becomes (see ``docs/hooks.py``)."""
    data = json.loads((results_dir / f"{suite}.json").read_text(encoding="utf-8"))
    value: Any = data["results"]
    for key in map(urllib.parse.unquote, path.split("/")):  # %3A for ":" in a key
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def verdict(suite: str, path: str, op: str, target: str, results_dir: Path = RESULTS) -> str:
    """``met`` or ``**not met**``: whether the value at `path` of ``SUITE.json``
    is at least (`op` ``ge``) or at most (``le``) `target`: what a
    ``<!--verdict:SUITE:path:op:target-->`` marker becomes, so that no page says a
    target is met, or not, against its own results file."""
    value = float(result_value(suite, path, results_dir))
    bound = float(target)
    if op == "ge":
        ok = value >= bound
    elif op == "le":
        ok = value <= bound
    else:
        raise ValueError(f"unknown comparison {op!r} (ge or le)")
    return "met" if ok else "**not met**"


def render(results_dir: Path = RESULTS) -> str:
    """Markdown for every result file in `results_dir` (or a note when there is none)."""
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    if not files:
        return MISSING
    parts: list[str] = []
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            parts.append(f"## {path.stem}\n\nCould not read `{path.name}`: {exc}\n")
            continue
        parts.append(_suite(path.stem, data))
    return "\n".join(parts)


def _suite(name: str, data: Any) -> str:
    title = SUITE_TITLES.get(name, name)
    out = [f"## {title}", "", f"From `benchmarks/results/{name}.json`.", ""]
    if not isinstance(data, Mapping):
        return "\n".join([*out, "Unexpected content (not a JSON object).", ""])
    machine = data.get("machine")
    if isinstance(machine, Mapping):
        out += ["Machine: " + ", ".join(f"{k} {_fmt(v)}" for k, v in machine.items()), ""]
    args = data.get("args")
    if isinstance(args, Mapping) and args:
        out += ["Run with: " + ", ".join(f"`{k}={v}`" for k, v in args.items()), ""]
    results = data.get("results")
    if isinstance(results, Mapping):
        out += _mapping(results, depth=3)
    return "\n".join(out)


def _mapping(obj: Mapping[str, Any], depth: int) -> list[str]:
    out: list[str] = []
    scalars = {k: v for k, v in obj.items() if _is_scalar(v)}
    if scalars:
        out += _key_value_table(scalars)
    # Sibling mappings of scalars over the same keys (say median_s and MB_per_s,
    # each by contender) read best side by side: one table, a column each.
    columns: dict[tuple[str, ...], dict[str, Mapping[str, Any]]] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping) and value and all(map(_is_scalar, value.values())):
            columns.setdefault(tuple(value), {})[key] = value
    shown: set[str] = set()
    for key, value in obj.items():
        if not isinstance(value, Mapping) or not _has_scalars(value) or key in shown:
            continue  # raw rounds (lists only) are left out
        group = columns.get(tuple(value), {})
        if key in group and len(group) > 1:
            out += _pivot_table(group)
            shown.update(group)
            continue
        if key != "cases":  # a suite's table of cases needs no heading of its own
            out += [_heading(key, depth), ""]
        if _is_case_table(value):
            out += _case_table(value)
        elif _is_flat(value):
            out += _key_value_table(value)
        else:
            out += _mapping(value, depth + 1)
    return out


def _pivot_table(group: Mapping[str, Mapping[str, Any]]) -> list[str]:
    names = list(group)
    rows = list(next(iter(group.values())))
    out = [
        "| | " + " | ".join(_cell(_label(n)) for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for row in rows:
        cells = [_cell(_fmt(group[n][row])) for n in names]
        out.append(f"| {_cell(row)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _has_scalars(value: Any) -> bool:
    if isinstance(value, Mapping):
        return any(_has_scalars(v) for v in value.values())
    return _is_scalar(value)


def _heading(key: str, depth: int) -> str:
    return f"{'#' * depth} {_label(key)}" if depth <= 4 else f"**{_label(key)}**"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _is_flat(value: Mapping[str, Any]) -> bool:
    """Scalars only (lists allowed, and left out), at least one scalar."""
    return any(_is_scalar(v) for v in value.values()) and all(
        _is_scalar(v) or isinstance(v, list) for v in value.values()
    )


def _is_case_table(value: Mapping[str, Any]) -> bool:
    return all(isinstance(v, Mapping) and _is_flat(v) for v in value.values())


def _key_value_table(values: Mapping[str, Any]) -> list[str]:
    rows = [(k, v) for k, v in values.items() if _is_scalar(v)]
    if not rows:
        return []
    out = ["| | |", "|---|---:|"]
    out += [f"| {_cell(_label(k))} | {_cell(_fmt(v))} |" for k, v in rows]
    return [*out, ""]


def _case_table(cases: Mapping[str, Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for case in cases.values():
        columns += [k for k, v in case.items() if _is_scalar(v) and k not in columns]
    out = [
        "| case | " + " | ".join(_cell(_label(c)) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, case in cases.items():
        cells = [_cell(_fmt(case.get(c, ""))) for c in columns]
        out.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _label(key: str) -> str:
    """``median_s`` -> ``median (s)``; names with spaces are names, kept as they are."""
    if " " in key:
        return key
    text = key.replace("_per_", "/")
    for suffix, unit in (("_ms", " (ms)"), ("_s", " (s)"), ("_MiB", " (MiB)")):
        if text.endswith(suffix):
            text = text[: -len(suffix)] + unit
            break
    return text.replace("_", " ")


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if value == 0 or abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(render(Path(args[0]) if args else RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
