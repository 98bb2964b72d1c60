"""On what LoRA adapters are trained and where they are kept: base model, output folders. The device and precision
are the `train_device` and `evaluate_device` resources' (resources/devices.py)."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..models import resolve_model_dir

CURRENT = "current"


class LoraTrainerResource(dg.ConfigurableResource):
    """The base model and the adapters' folders; what to train (profile, epochs, rank) is the asset's config."""

    model_dir: str = Field(description="The base model folder the adapters are trained on")
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
