"""Training arguments that keep a training run on the one device it was given.

Outside a distributed launch, transformers' TrainingArguments (5.x) always trains on `cuda:0` and, where several
GPUs are visible, wraps the model in `nn.DataParallel` over all of them: `device="cuda:1"` would be ignored and
one training job would take every card of the `gpu` pool. CUDA_VISIBLE_DEVICES cannot fix that from inside a
process that has already touched CUDA (a Dagster run that categorised first), so the device choice is made here.

Imported only when a trainer is built: importing TRL's config takes seconds, which the Dagster code location should
not pay at load time. A module-level class, so checkpoints can pickle the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import TrainingArguments
from trl import SFTConfig


@dataclass
class OneDeviceSFTConfig(SFTConfig):
    cuda_index: int | None = field(
        default=None, metadata={"help": "Train on this CUDA device alone (no DataParallel); None: as transformers"}
    )

    @cached_property
    def _setup_devices(self) -> torch.device:
        device = TrainingArguments._setup_devices.func(self)  # accelerate's state and transformers' own checks
        if self.cuda_index is None or device.type != "cuda":
            return device
        device = torch.device("cuda", self.cuda_index)
        # Accelerate places the model, batches and the loss scaler on "cuda", the current device: make it this one.
        torch.cuda.set_device(device)
        self._n_gpu = 1
        return device


def cuda_index(device: str) -> int | None:
    """The CUDA device index a device name means ("cuda" is the current device), or None off CUDA."""
    parsed = torch.device(device)
    if parsed.type != "cuda":
        return None
    return parsed.index if parsed.index is not None else torch.cuda.current_device()
