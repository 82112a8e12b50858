"""Benchmark entry point: ``python -m benchmarks [write|s3|export|checksum|all] [options]``.

``python -m benchmarks chart`` redraws the chart from the existing results.

Each suite measures aiodicom against its pydicom baseline in the same process run
(alternating rounds, medians, ratios), prints the results, and writes
``benchmarks/results/<suite>.json``; ``all`` also draws ``benchmarks/results/summary.png``
(with matplotlib, when installed).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from ._harness import RESULTS, save_result

SUITES = {
    "write": "benchmarks.bench_write",
    "s3": "benchmarks.bench_s3",
    "export": "benchmarks.bench_export",
    "dask": "benchmarks.bench_dask",
    "soak": "benchmarks.bench_soak",
    "dicomweb": "benchmarks.bench_dicomweb",
    "checksum": "benchmarks.bench_checksum",
}


def _load(name: str) -> Any:
    return importlib.import_module(SUITES[name])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = parser.add_subparsers(dest="suite", required=True)
    for name in SUITES:
        module = _load(name)
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").splitlines()[0]))
    sub.add_parser("all", help="every suite with its defaults")
    sub.add_parser("chart", help="redraw benchmarks/results/summary.png")
    args = parser.parse_args(argv)
    if args.suite == "chart":
        from ._chart import draw

        draw(RESULTS)
        return 0

    names = list(SUITES) if args.suite == "all" else [args.suite]
    for name in names:
        module = _load(name)
        suite_args = args
        if args.suite == "all":
            sub_parser = argparse.ArgumentParser()
            module.add_arguments(sub_parser)
            suite_args = sub_parser.parse_args([])
        print(f"== {name} ==", flush=True)
        results = module.run(suite_args)
        save = getattr(module, "save", None)  # a suite that decides where its results go
        out = save(suite_args, results) if save else save_result(name, suite_args, results)
        print(json.dumps(results, indent=2, default=_short))
        print(f"-> {out}")
    if args.suite == "all":
        from ._chart import draw

        draw(RESULTS)
    return 0


def _short(value: Any) -> Any:
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
