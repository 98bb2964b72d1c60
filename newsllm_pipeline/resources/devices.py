"""Where a job's models run: one `ComputeDevice` resource per role, and one concurrency pool per device.

Roles: `categorize_device` (the categorisation runs), `describe_device` (Docling, the picture describer and the
dataset's text generator), `train_device` (both adapters) and `evaluate_device` (both evaluations). Each is set
by NEWSLLM_<ROLE>_DEVICE, _PRECISION and _MEMORY_GIB, so a site with two cards puts categorisation on one and
training on the other by configuration alone.

Every step that loads a model sits in the pool of its role's device (`cpu`, `cuda:0`, `cuda:1`…; `auto` and
`cuda` are card 0, the one torch takes first). Dagster fixes an op's pool when the code location loads, so the
device is read then too: reload the code location after changing it. Pools default to one step at a time
(`concurrency: pools: default_limit: 1` in dagster.yaml): two cards work at once, and no card ever holds two
steps' models.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Protocol

import dagster as dg
from pydantic import Field

from ..device_memory import budgeted_device_memory, cuda_available, free_device_memory
from ..settings import setting, site_setting

ROLES = ("categorize", "describe", "train", "evaluate")


def device_pool(device: str) -> str:
    """The concurrency pool of `device`: 'cpu', or 'cuda:N' ('auto' and 'cuda' are card 0)."""
    name = device.strip().lower()
    if name == "cpu" or re.fullmatch(r"cuda:\d+", name):
        return name
    if name in ("auto", "cuda"):
        return "cuda:0"
    raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def role_pool(role: str) -> str:
    """The pool of the device the site gives `role` (NEWSLLM_<ROLE>_DEVICE), read when the code location loads."""
    return device_pool(setting(f"{role.upper()}_DEVICE"))


def fresh_copy(resource: dg.ConfigurableResource, **fields):
    """`resource` with `fields` changed and none of its loaded state: pydantic's `model_copy` carries private
    attributes (a loaded model, a cached spec), which belong to the original's settings."""
    copy = resource.model_copy(update=fields)
    for name, private in type(resource).__private_attributes__.items():
        setattr(copy, name, private.get_default())
    return copy


class ModelHolder(Protocol):
    """A resource that may hold a loaded model: a step frees it when it ends."""

    def release(self) -> None: ...


class ComputeDevice(dg.ConfigurableResource):
    """The device one role's models run on, the precision they run in and how much of the card they may use."""

    device: str = Field(
        description="'cpu', 'cuda:0', 'cuda:1'…, 'cuda' or 'auto' (card 0 when there is one, else the CPU). Read "
        "when the code location loads: the steps' concurrency pool is this device's"
    )
    precision: str = Field(default="auto", description="'auto' (bf16 where native, else fp32), 'bf16', 'fp16', 'fp32'")
    memory_budget_gib: float | None = Field(
        default=None,
        description="GiB of the card a step may allocate (torch's per-process memory fraction; a step that needs "
        "more fails with an out-of-memory error instead of starving the card's other users). None: the whole card. "
        "Not enforced on the CPU",
    )
    free_after_step: bool | None = Field(
        default=None,
        description="Free the step's models when it ends. None: on CUDA, so the next step of the pool finds the card "
        "empty; on the CPU the last categoriser stays cached (the demo and tests run many jobs in one process)",
    )

    @property
    def pool(self) -> str:
        return device_pool(self.device)

    @property
    def on_cpu(self) -> bool:
        return self.pool == "cpu"

    def card_index(self) -> int | None:
        """The CUDA card number, None on the CPU."""
        return None if self.on_cpu else int(self.pool.split(":")[1])

    def describe(self) -> dict:
        return {
            "device": self.device,
            "pool": self.pool,
            "precision": self.precision,
            "memory_budget_gib": self.memory_budget_gib if self.memory_budget_gib is not None else "whole card",
        }

    @contextlib.contextmanager
    def step(self, context, *models: ModelHolder, measure: bool = True) -> Iterator[dict]:
        """Around a step's model work, after its pool slot is held: checks that the step is in this device's pool,
        caps the process's share of the card at the memory budget, and yields metadata (device, pool, precision,
        budget, peak device memory once the block ends). At the end the models are freed (`free_after_step`).
        `measure=False` for a step whose model runs elsewhere (a remote categoriser): no torch is imported."""
        step_pool = context.op_def.pool
        if step_pool != self.pool:
            raise dg.Failure(
                f"step {context.op_def.name} is in concurrency pool {step_pool!r} but its device {self.device!r} "
                f"belongs to pool {self.pool!r}: the device changed after the code location loaded (reload it), or "
                "the run's configuration moved it"
            )
        if self.memory_budget_gib is not None and self.on_cpu:
            context.log.info("memory_budget_gib is not enforced on the CPU")
        metadata = self.describe()
        if not measure:
            yield metadata
            return
        free = self.free_after_step if self.free_after_step is not None else not self.on_cpu and cuda_available()
        try:
            with budgeted_device_memory(self.card_index(), self.memory_budget_gib, context.log) as memory:
                yield metadata
            metadata.update(memory)
        finally:
            if free:
                for model in models:
                    model.release()
                free_device_memory()


def compute_device_from_settings(role: str) -> ComputeDevice:
    """The site's device for `role`: its device (it decides the pool) and budget read now, its precision when a run
    starts."""
    budget = setting(f"{role.upper()}_MEMORY_GIB").strip()
    return ComputeDevice(
        device=setting(f"{role.upper()}_DEVICE"),
        precision=site_setting(f"{role.upper()}_PRECISION"),
        memory_budget_gib=float(budget) if budget else None,
    )


def device_resources(*roles: str) -> dict[str, ComputeDevice]:
    """`<role>_device` of each role, bound by the domain whose steps run in it."""
    return {f"{role}_device": compute_device_from_settings(role) for role in roles}
