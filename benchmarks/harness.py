"""What every benchmark shares: the machine's matmul rate measured in its own run, the package versions it ran
with, and writing its report (JSON beside a printed summary)."""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch

MATMUL_SIZE = 2048
MATMUL_SECONDS = 2.0


def measure_matmul_gflops(dtype: torch.dtype, size: int = MATMUL_SIZE, seconds: float = MATMUL_SECONDS) -> float:
    """Sustained matmul throughput in `dtype` with torch's default thread count, after a warm-up."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    product = torch.empty(size, size, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=product)
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        torch.matmul(a, b, out=product)
        count += 1
    return 2 * size**3 * count / elapsed / 1e9


def package_versions(packages: Iterable[str]) -> dict[str, str | None]:
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_report(report: dict, out: Path, summary: str) -> None:
    """The report as JSON at `out`, and its summary on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(summary)
    print(f"\nwritten to {out}")
