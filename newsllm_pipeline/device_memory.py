"""Peak device memory of one step (a Dagster asset or op that runs a model), for its metadata."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

PEAK_KEY = "peak_device_memory_gib"


@contextlib.contextmanager
def peak_device_memory(device: str) -> Iterator[dict]:
    """Yields a dict that holds, after the block, `peak_device_memory_gib`: the most memory torch had allocated on
    the CUDA device (`torch.cuda.max_memory_allocated`, its peak reset on entry, so what was already allocated,
    such as a model loaded by a resource, counts from its current size). Empty off CUDA, where torch keeps no
    such count. "auto" and "cuda" mean the current CUDA device; "cpu" imports no torch (a remote categoriser's
    runs have none to load)."""
    if device == "cpu":
        yield {}
        return
    import torch

    from .models import resolve_device

    device = resolve_device(device)
    on_cuda = device.startswith("cuda") and torch.cuda.is_available()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    measured: dict = {}
    yield measured
    if on_cuda:
        measured[PEAK_KEY] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
