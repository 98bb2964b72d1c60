"""LoRA fine-tuning with TRL's SFTTrainer and PEFT on prompt/completion records (loss on the completion only).

A training run writes its checkpoints under `<adapters>/.training/<version>/` and, when it ends, the adapter as a
Hugging Face folder `<adapters>/<version>/` (adapter_config.json, adapter_model.safetensors, tokenizer files,
training_args.json, trainer_state.json, log_history.json, newsllm_training.json), renamed into place whole. The
version hashes the records, the base model's files and the settings, so the same input never trains twice, and
a run that was interrupted resumes from its last checkpoint.

`train_lora` runs the pieces in order: `existing_run` (reuse), `learnable_or_fail` (tokenise, drop what cannot
train), `trainer.build_trainer` (the trainer, in `trainer.py`), `fit` (train or resume), `training_record` (the
`TrainingRecord` of `record.py`) and `save_adapter`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..files import sha256_hex, staged_folder
from ..models import folder_fingerprint
from .record import TrainingRecord

if TYPE_CHECKING:
    from transformers.trainer_utils import TrainOutput

    from .trainer import NewsllmSFTTrainer, TokenCounter

TRAINING_DIR = ".training"
LOG_HISTORY = "log_history.json"


@dataclass(frozen=True)
class LoraSettings:
    """One training profile: the LoRA shape, the optimiser schedule and how batches are formed."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "constant_with_warmup"
    warmup_steps: int = 2
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 512
    gradient_checkpointing: bool = False
    # Packing flattens a batch's examples into one row with no padding; attention stays within each example
    # (position ids restart per example and transformers builds a block-diagonal mask). Without a varlen
    # attention kernel (CUDA flash-attn) that mask spans the whole batch, so on CPU batches of similar lengths
    # (group_by_length) waste less: padding under 1 % on the categoriser's data, attention per example.
    packing: bool = False
    group_by_length: bool = True
    save_steps: int = 20
    logging_steps: int = 1
    seed: int = 13
    max_time_s: float | None = None  # training ends after this many seconds (checked after each step)

    def with_overrides(self, **overrides) -> LoraSettings:
        return dataclasses.replace(self, **{key: value for key, value in overrides.items() if value is not None})


PROFILES = {
    # The original project's LLaMA-Factory run (Phi-4-mini on a T4): r=128, alpha=256, lr 5e-4 constant,
    # 20 epochs, batch 1 x 16, cutoff 2048, gradient checkpointing, all linear layers.
    "gpu": LoraSettings(
        rank=128,
        alpha=256,
        dropout=0.01,
        learning_rate=5e-4,
        warmup_steps=10,
        epochs=20,
        batch_size=1,
        gradient_accumulation_steps=16,
        max_length=2048,
        gradient_checkpointing=True,
        save_steps=50,
        logging_steps=5,
    ),
    # The embedded default: the packaged 135M model on a couple of CPU cores, a short run. No dropout: its
    # random masks cost 15 % of a CPU step, and a short run does not overfit.
    "cpu": LoraSettings(dropout=0.0),
}


@dataclass(frozen=True)
class Precision:
    """How the weights are held while training. The frozen base is held in `base_dtype`: bf16 or fp16 halve its
    memory (a 3.8B model: 7.6 GB of weights instead of 15, so it fits a 16 GB T4) and, on CUDA and on CPUs with
    native bf16 matmuls, double the matmul rate. The LoRA weights, the only trainable ones, stay fp32 in every
    precision: an optimiser step is too small a change for 16 bits, and fp16 loss scaling (torch's GradScaler)
    refuses fp16 gradients. `fp16` (GPUs without bf16) also runs the Trainer's fp16 autocast with that loss
    scaling, which keeps the gradients flowing back through the fp16 activations from underflowing; bf16 has
    fp32's range and needs neither."""

    name: str  # "fp32", "bf16", "fp16"

    @property
    def base_dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def trainer_flags(self, device: str) -> dict:
        """The Trainer's autocast. On CUDA, bf16 autocasts too, so the LoRA matmuls run on the tensor cores: an
        r=128 adapter is about 5 % of a 3.8B model's FLOPs, but fp32 runs at a twelfth of the bf16 rate there. The
        CPU keeps its measured setup: bf16 base matmuls, LoRA in fp32, no autocast."""
        return {"bf16": self.name == "bf16" and device.startswith("cuda"), "fp16": self.name == "fp16"}


def resolve_precision(precision: str, device: str) -> Precision:
    """'auto': bf16 on CUDA with bf16 support and on CPUs with native bf16 matmuls, fp16 on older GPUs, else fp32."""
    import torch

    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {precision!r}: use 'auto', 'fp32', 'bf16' or 'fp16'")
        if precision == "fp16" and not device.startswith("cuda"):
            raise ValueError("fp16 training needs CUDA; use 'bf16' or 'fp32' on CPU")
        return Precision(precision)
    if device.startswith("cuda"):
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return Precision("bf16" if native_bf16 else "fp32")


def alpaca_records(rows: Sequence[dict]) -> list[dict]:
    """Alpaca rows (instruction, input, output) as conversational prompt/completion records."""
    records = []
    for row in rows:
        question = "\n\n".join(part for part in (row["instruction"].strip(), (row.get("input") or "").strip()) if part)
        records.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "completion": [{"role": "assistant", "content": row["output"].strip()}],
            }
        )
    return records


def tokenized_ids(tokenizer, record: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, prompt+completion ids) as the trainer tokenizes the record: a plain-text completion gets the
    eos token appended, a conversational one is rendered by the chat template."""
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str):
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        return tokenizer(prompt)["input_ids"], tokenizer(prompt + completion)["input_ids"]
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full_ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)
    return list(prompt_ids["input_ids"]), list(full_ids["input_ids"])


@dataclass(frozen=True)
class LearnableRecords:
    records: list[dict]
    tokens: int  # prompt + completion tokens kept after truncation
    completion_tokens: int
    dropped: int  # whose completion would be cut away entirely by max_length


def learnable_records(records: Sequence[dict], tokenizer, max_length: int) -> LearnableRecords:
    """Drop the records whose prompt alone fills max_length: truncation would leave them no completion
    token, and a row with every label masked trains nothing (and all such rows make a NaN loss)."""
    kept, tokens, completion_tokens = [], 0, 0
    for record in records:
        prompt_ids, full_ids = tokenized_ids(tokenizer, record)
        prompt_length, full_length = len(prompt_ids), len(full_ids)
        if prompt_length >= max_length or full_length <= prompt_length:
            continue
        kept.append(record)
        tokens += min(full_length, max_length)
        completion_tokens += min(full_length, max_length) - prompt_length
    return LearnableRecords(kept, tokens, completion_tokens, len(records) - len(kept))


@dataclass(frozen=True)
class EarlyStopping:
    """Measure the loss on held-out validation `records` every `eval_every_steps` and stop when it has not
    improved for `patience` measurements; the adapter saved is the checkpoint with the lowest loss."""

    records: Sequence[dict]
    patience: int = 2
    eval_every_steps: int = 20


def adapter_version(
    records: Sequence[dict],
    model_dir: str,
    settings: LoraSettings,
    precision: str,
    early_stopping: EarlyStopping | None = None,
) -> str:
    """A short hash of everything that determines the adapter. Without early stopping or a time budget it is the
    hash adapters had before either existed, so they are reused; with them, the validation records and the
    patience count, and the budget."""
    hashed = dataclasses.asdict(settings)
    if settings.max_time_s is None:
        del hashed["max_time_s"]
    parts = [
        json.dumps(list(records), ensure_ascii=False, sort_keys=True),
        folder_fingerprint(model_dir),
        json.dumps(hashed, sort_keys=True),
        precision,
    ]
    if early_stopping:
        parts.append(json.dumps(dataclasses.asdict(early_stopping), ensure_ascii=False, sort_keys=True))
    return sha256_hex(*parts, delimiter=b"\0")[:12]


@dataclass
class TrainingRun:
    adapter_dir: Path
    version: str
    record: TrainingRecord  # newsllm_training.json: metrics, parameters, data sizes
    reused: bool = False  # the adapter for this version existed: nothing trained

    @property
    def resumed_from(self) -> str | None:
        return self.record.resumed_from

    @property
    def log_history(self) -> list[dict]:
        return json.loads((self.adapter_dir / LOG_HISTORY).read_text(encoding="utf-8"))


def existing_run(adapter_dir: Path) -> TrainingRun | None:
    """The run that already wrote this version's adapter, if one did: the same input never trains twice."""
    if not (adapter_dir / "adapter_model.safetensors").exists():
        return None
    return TrainingRun(adapter_dir, adapter_dir.name, TrainingRecord.read(adapter_dir), reused=True)


def training_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def learnable_or_fail(
    records: Sequence[dict], tokenizer, max_length: int, log: Callable[[str], None], kind: str = "example"
) -> LearnableRecords:
    """`learnable_records`, saying how many were dropped, or an error when none is left."""
    learnable = learnable_records(records, tokenizer, max_length)
    if learnable.dropped:
        log(f"{learnable.dropped} of {len(records)} {kind}s dropped: the prompt alone fills max_length")
    if not learnable.records:
        raise ValueError(
            f"no {kind} has a completion token within max_length={max_length}: raise max_length or shorten the prompts"
        )
    return learnable


def last_checkpoint(work_dir: Path) -> Path | None:
    checkpoints = [path for path in work_dir.glob("checkpoint-*") if (path / "trainer_state.json").exists()]
    return max(checkpoints, key=lambda path: int(path.name.split("-")[1]), default=None)


@dataclass(frozen=True)
class Fitted:
    """A trainer after `fit`: its output, its wall time and the real and padded tokens it trained on."""

    trainer: NewsllmSFTTrainer
    output: TrainOutput
    seconds: float
    tokens: TokenCounter
    resumed_from: str | None


def fit(trainer: NewsllmSFTTrainer, work_dir: Path, describe: str, log: Callable[[str], None]) -> Fitted:
    """Train, resuming from the last checkpoint in `work_dir` if an earlier run was interrupted."""
    from .trainer import TokenCounter

    checkpoint = last_checkpoint(work_dir)
    tokens = TokenCounter().attach(trainer.model)
    log(describe + (f", resuming from {checkpoint.name}" if checkpoint else ""))
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    return Fitted(trainer, output, seconds, tokens, checkpoint.name if checkpoint else None)


def training_record(
    fitted: Fitted,
    version: str,
    model_dir: str,
    device: str,
    precision: Precision,
    settings: LoraSettings,
    learnable: LearnableRecords,
    validation: LearnableRecords | None,
    dataset_version: str | None,
) -> TrainingRecord:
    from .trainer import parameter_dtypes

    trainer, tokens, seconds = fitted.trainer, fitted.tokens, fitted.seconds
    state = trainer.state
    trainable, total = trainer.model.get_nb_trainable_parameters()
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    return TrainingRecord(
        version=version,
        base_model=str(model_dir),
        device=device,
        precision=precision.name,
        settings=dataclasses.asdict(settings),
        dataset_version=dataset_version,
        examples=len(learnable.records),
        examples_dropped=learnable.dropped,
        dataset_tokens=learnable.tokens,
        completion_tokens=learnable.completion_tokens,
        trainable_parameters=trainable,
        total_parameters=total,
        parameter_dtypes=parameter_dtypes(trainer.model),
        global_step=state.global_step,
        train_runtime_s=round(seconds, 2),
        train_samples_per_second=fitted.output.metrics.get("train_samples_per_second"),
        tokens_trained=tokens.real,
        tokens_per_second=round(tokens.real / seconds, 1),
        padding_share=round(1 - tokens.real / tokens.processed, 3) if tokens.processed else 0.0,
        first_loss=losses[0] if losses else None,
        final_loss=losses[-1] if losses else None,
        train_loss=fitted.output.training_loss,
        resumed_from=fitted.resumed_from,
        validation_examples=len(validation.records) if validation else None,
        best_step=state.best_global_step if validation else None,
        best_eval_loss=state.best_metric if validation else None,
        stopped_early=state.global_step < state.max_steps if validation else None,
    )


def save_adapter(
    adapter_dir: Path, trainer, tokenizer, record: TrainingRecord, extra_files: dict[str, str] | None
) -> None:
    """The adapter folder, written whole: weights, tokenizer, the trainer's arguments, state and log, the record."""
    with staged_folder(adapter_dir) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_args.json").write_text(trainer.args.to_json_string(), encoding="utf-8")
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        (staging / LOG_HISTORY).write_text(json.dumps(trainer.state.log_history, indent=1), encoding="utf-8")
        record.write(staging)
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")


def train_lora(
    model_dir: str,
    records: Sequence[dict],
    adapters_dir: Path,
    settings: LoraSettings,
    device: str = "auto",
    precision: str = "auto",
    log: Callable[[str], None] = print,
    callbacks: Sequence = (),
    dataset_version: str | None = None,
    extra_files: dict[str, str] | None = None,
    early_stopping: EarlyStopping | None = None,
) -> TrainingRun:
    """Train (or reuse, or resume) the adapter for these prompt/completion records.

    `dataset_version` is stored in newsllm_training.json next to the metrics; `extra_files` (name -> text) are
    written into the adapter folder with the weights; with `early_stopping`, its validation records are measured
    during training, which stops when their loss stops improving, and the best checkpoint becomes the adapter.
    """
    from ..models import resolve_device
    from .trainer import LogForwarder, build_trainer

    device = resolve_device(device)
    resolved = resolve_precision(precision, device)
    version = adapter_version(records, model_dir, settings, resolved.name, early_stopping)
    adapters_dir = Path(adapters_dir)
    adapter_dir = adapters_dir / version
    if reused := existing_run(adapter_dir):
        log(f"adapter {version} exists for this data, model and settings: not retraining")
        return reused

    tokenizer = training_tokenizer(model_dir)
    learnable = learnable_or_fail(records, tokenizer, settings.max_length, log)
    validation = None
    if early_stopping:
        validation = learnable_or_fail(
            early_stopping.records, tokenizer, settings.max_length, log, "validation example"
        )
        early_stopping = dataclasses.replace(early_stopping, records=validation.records)
    work_dir = adapters_dir / TRAINING_DIR / version
    trainer = build_trainer(
        model_dir,
        tokenizer,
        learnable.records,
        settings,
        work_dir,
        device,
        resolved,
        [*callbacks, LogForwarder(log)],
        early_stopping,
    )
    trainable, total = trainer.model.get_nb_trainable_parameters()
    describe = (
        f"training adapter {version}: {len(learnable.records)} examples, {learnable.tokens} tokens, "
        f"{trainable:,} trainable of {total:,} parameters, {device}, {resolved.name}"
        + (
            f", validation loss on {len(validation.records)} examples every {early_stopping.eval_every_steps} steps"
            if validation
            else ""
        )
    )
    fitted = fit(trainer, work_dir, describe, log)
    record = training_record(
        fitted, version, model_dir, device, resolved, settings, learnable, validation, dataset_version
    )
    save_adapter(adapter_dir, trainer, tokenizer, record, extra_files)
    shutil.rmtree(work_dir, ignore_errors=True)
    return TrainingRun(adapter_dir, version, record)
