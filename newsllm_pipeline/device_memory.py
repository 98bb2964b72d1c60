"""Device memory of one step (a Dagster asset or op that runs a model): its peak for the step's metadata, the
budget it may use on its card, and freeing what it loaded. Torch is imported only where a card is involved."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

PEAK_KEY = "peak_device_memory_gib"
GIB = 2**30


@contextlib.contextmanager
def peak_device_memory(device: str) -> Iterator[dict]:
    """Yields a dict that holds, after the block, `peak_device_memory_gib`: the most memory torch had allocated on
    the CUDA device (`torch.cuda.max_memory_allocated`, its peak reset on entry, so what was already allocated,
    such as a model loaded by a resource, counts from its current size). Empty off CUDA, where torch keeps no
    such count. "auto" and "cuda" mean the current CUDA device; "cpu" imports no torch."""
    if device == "cpu":
        yield {}
        return
    import torch

    from .models import resolve_device

    device = resolve_device(device)
    card = None
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index
        card = torch.cuda.current_device() if index is None else index
    with budgeted_device_memory(card) as measured:
        yield measured


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@contextlib.contextmanager
def budgeted_device_memory(card: int | None, budget_gib: float | None = None, log=None) -> Iterator[dict]:
    """On CUDA card `card` (None: the CPU, nothing to do), for the block: the process may allocate at most
    `budget_gib` (torch's per-process memory fraction; an allocation beyond it raises torch's out-of-memory error),
    with a warning when the card has less than that free now (another process holds it). The yielded dict holds,
    after the block, `peak_device_memory_gib` and the card's free memory at the start."""
    if card is None or not cuda_available():
        yield {}
        return
    import torch

    device = torch.device("cuda", card)
    free, total = torch.cuda.mem_get_info(device)
    measured = {"card_free_gib_at_start": round(free / GIB, 2)}
    if budget_gib is not None:
        if budget_gib * GIB > free and log is not None:
            log.warning(f"cuda:{card} has {free / GIB:.1f} GiB free, less than the step's budget of {budget_gib} GiB")
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gib * GIB / total), device)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        yield measured
    finally:
        measured[PEAK_KEY] = round(torch.cuda.max_memory_allocated(device) / GIB, 3)
        if budget_gib is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)


def free_device_memory() -> None:
    """Collect what nothing references any more and give torch's cached CUDA blocks back to the card."""
    gc.collect()
    import sys

    torch = sys.modules.get("torch")  # a process that never imported torch has nothing on a card
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
