"""Where and on what LoRA adapters are trained, injected per job: base model, device, precision, output folders."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..models import resolve_device, resolve_model_dir
from ..training.lora import resolve_precision

CURRENT = "current"


class LoraTrainerResource(dg.ConfigurableResource):
    """The hardware side of training; what to train (profile, epochs, rank) is the asset's config."""

    model_dir: str = Field(description="The base model folder the adapters are trained on")
    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'…")
    precision: str = Field(
        default="auto",
        description="'auto' (bf16 on CUDA with bf16 and on CPUs with native bf16 matmuls, fp16 on older GPUs, "
        "else fp32), 'fp32', 'bf16', 'fp16' (CUDA only)",
    )
    adapters_dir: str = Field(description="Folder of the document adapters: one sub-folder per version")
    categorizer_adapters_dir: str = Field(description="Folder of the categoriser adapters: one per version")
    categorizer_dataset_dir: str = Field(description="Where categorizer_training_set writes its splits")

    def base_model(self) -> str:
        return resolve_model_dir(self.model_dir)

    def folder(self, kind: str) -> Path:
        """Adapters of `kind` ('documents' or 'categorizer'), one sub-folder per version."""
        return Path(self.categorizer_adapters_dir if kind == "categorizer" else self.adapters_dir)

    def point_current(self, kind: str, version: str) -> Path:
        """Make `<folder>/current` point at `version` (a relative symlink, swapped in one rename)."""
        current = self.folder(kind) / CURRENT
        staged = current.with_name(f".{CURRENT}-{version}")
        staged.unlink(missing_ok=True)
        staged.symlink_to(version)
        os.replace(staged, current)
        return current

    def current(self, kind: str) -> Path:
        """The adapter of `kind` trained last, resolved (so a later retraining does not swap it mid-run)."""
        current = self.folder(kind) / CURRENT
        if not current.exists():
            asset = "categorizer_adapter" if kind == "categorizer" else "lora_adapter"
            raise dg.Failure(f"no {kind} adapter in {current.parent}: materialise {asset} first")
        return current.resolve()

    def inference_dtype(self) -> str:
        """The dtype to evaluate in: the training precision's, so base and adapter are judged alike."""
        return resolve_precision(self.precision, resolve_device(self.device)).inference_dtype
