"""Draw ``benchmarks/results/summary.png`` from the suites' JSON results (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _panels(results: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    """(title, unit, {label: value}) for every panel the results allow."""
    panels: list[tuple[str, str, dict[str, float]]] = []
    write = results.get("write")
    if write:
        for key, title in (("big_file_tmpfs", "tmpfs"), ("big_file_disk", "disk")):
            case = write.get(key)
            if case:
                mib = case["bytes"] / 2**20
                panels.append((f"{mib:.0f} MiB multi-frame to {title}", "MB/s", case["MB_per_s"]))
        for key in ("file", "bytesio"):
            case = write.get("slice", {}).get(key)
            if case:
                panels.append((f"0.5 MiB slice to {key}", "ms per write", case["per_write_ms"]))
        memory = write.get("memory")
        if memory:
            panels.append(
                (
                    "peak extra memory, big write",
                    "MiB",
                    {
                        "aiodicom": memory["big_file_aiodicom_MiB"],
                        "pydicom": memory["big_file_pydicom_MiB"],
                    },
                )
            )
    s3 = results.get("s3", {}).get("slices")
    if s3:
        panels.append(
            (
                "200 slices to S3 (moto)",
                "files/s",
                {k: v["files_per_s"] for k, v in s3["cases"].items()},
            )
        )
    export = results.get("export")
    if export:
        for where in ("local", "s3"):
            if where in export:
                panels.append(
                    (
                        f"export {export['count']} slices, {where}",
                        "items/s",
                        {
                            k: v["items_per_second"]
                            for k, v in export[where].items()
                            if isinstance(v, dict) and "items_per_second" in v
                        },
                    )
                )
    dask = results.get("dask")
    if dask:
        panels.append(
            (
                f"Dask export {dask['count']} slices",
                "items/s",
                {k: v["items_per_second"] for k, v in dask.items() if isinstance(v, dict)},
            )
        )
    return panels


def draw(directory: Path) -> Path | None:
    """Draw the summary chart; ``None`` (and a message) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart")
        return None
    results = {
        path.stem: json.loads(path.read_text())["results"]
        for path in sorted(directory.glob("*.json"))
    }
    panels = _panels(results)
    if not panels:
        return None
    columns = 2
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(12, 2.6 * rows), squeeze=False)
    for ax, (title, unit, values) in zip(axes.flat, panels, strict=False):
        labels = list(values)
        colors = [
            "tab:blue" if label.startswith(("aiodicom", "dask")) else "tab:gray"
            for label in labels
        ]
        ax.barh(labels, [values[label] for label in labels], color=colors)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(unit, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    out = directory / "summary.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"-> {out}")
    return out
