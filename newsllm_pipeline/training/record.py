"""What a training run records next to its adapter (`newsllm_training.json`): the data, the settings, the
metrics and where the adapter came from.

Adapters outlive the code that trained them (the version is reused for as long as data, model and settings stay
the same), so `read` takes any older file: a field it lacks is None, a key this version no longer knows is
ignored.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

TRAINING_INFO = "newsllm_training.json"


@dataclass(frozen=True)
class TrainingRecord:
    version: str | None = None
    base_model: str | None = None
    device: str | None = None
    precision: str | None = None  # "fp32", "bf16", "fp16"
    settings: dict | None = None  # the LoraSettings' values
    dataset_version: str | None = None  # the training data's version, for the retraining schedule
    examples: int | None = None
    examples_dropped: int | None = None  # whose prompt alone fills max_length
    dataset_tokens: int | None = None
    completion_tokens: int | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    parameter_dtypes: dict[str, dict[str, int]] | None = None  # frozen and trainable parameters per dtype
    global_step: int | None = None
    train_runtime_s: float | None = None
    train_samples_per_second: float | None = None
    tokens_trained: int | None = None  # real tokens through the model in this run (a resumed run: its own steps)
    tokens_per_second: float | None = None
    padding_share: float | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    train_loss: float | None = None
    resumed_from: str | None = None  # the checkpoint an interrupted run went on from
    # Early stopping on held-out validation examples (None: trained without).
    validation_examples: int | None = None
    best_step: int | None = None  # the checkpoint kept: the lowest validation loss
    best_eval_loss: float | None = None
    stopped_early: bool | None = None  # the validation loss stopped improving before the step budget

    @property
    def trainable_share_pct(self) -> float | None:
        if not self.trainable_parameters or not self.total_parameters:
            return None
        return round(100 * self.trainable_parameters / self.total_parameters, 3)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / TRAINING_INFO
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> TrainingRecord:
        """The record in an adapter folder, written by this or any older version."""
        payload = json.loads((Path(folder) / TRAINING_INFO).read_text(encoding="utf-8"))
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in payload.items() if key in known})
