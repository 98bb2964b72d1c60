"""How a run trains: the base model held in its precision, a fresh LoRA adapter, TRL's SFTTrainer with this
project's sampler and CPU loss, the training arguments and the callbacks.

Imported only when a trainer is built (`train_lora`, the benchmarks): importing TRL takes seconds, which the
Dagster code location should not pay at load time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset, disable_progress_bars
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, EarlyStoppingCallback, PrinterCallback, TrainerCallback
from trl import SFTTrainer

from .lora import EarlyStopping, LoraSettings, Precision
from .trainer_args import OneDeviceSFTConfig, cuda_index


class LengthBucketSampler:
    """Batches of similar lengths drawn from the whole dataset (sorted, ties broken at random), served in a random
    order that depends on the seed and the epoch only, so a resumed run sees the same batches. transformers'
    length-grouped sampler sorts within random mega-batches of 50 batches (4 on a small dataset), which leaves
    the long examples in batches of short ones: 18 % padding on the benchmark's data against 17 % at random."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        tie_breaks = torch.rand(len(self.lengths), generator=generator).tolist()
        order = sorted(range(len(self.lengths)), key=lambda index: (self.lengths[index], tie_breaks[index]))
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        # The data loader cuts the index stream every batch_size: a short batch goes last or it would shift the rest.
        remainder = batches.pop() if len(batches[-1]) < self.batch_size else []
        for position in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[position]
        yield from remainder


class NewsllmSFTTrainer(SFTTrainer):
    """SFTTrainer with batches of similar lengths (`length_buckets`) and, with `completion_head_only` (off CUDA),
    a loss that runs the LM head on the completion tokens only: TRL's fused head scores only the labelled
    positions on CUDA (Triton), elsewhere every position in fp32 (40 % of a CPU step on short answers)."""

    def __init__(self, *args, length_buckets: bool, completion_head_only: bool, **kwargs):
        self.length_buckets, self.completion_head_only = length_buckets, completion_head_only
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        if not self.length_buckets:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(ids) for ids in dataset["input_ids"]]
        return LengthBucketSampler(lengths, self.args.train_batch_size, self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.completion_head_only:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        base = model.get_base_model()
        hidden = base.model(**inputs, use_cache=False).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        scored = targets != -100
        logits = base.lm_head(hidden[scored]).float()
        loss = torch.nn.functional.cross_entropy(logits, targets[scored], reduction="sum")
        loss = loss / (num_items_in_batch if num_items_in_batch is not None else scored.sum().clamp(min=1))
        return (loss, None) if return_outputs else loss


class LogForwarder(TrainerCallback):
    """Reports each logged step (loss, learning rate) and each validation loss through `log`."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log

    def on_log(self, args, state, control, logs=None, **kwargs):
        step = f"step {state.global_step}/{state.max_steps}"
        if logs and "loss" in logs:
            self.log(f"{step}: loss {logs['loss']:.4f}, learning rate {logs['learning_rate']:.1e}")
        if logs and "eval_loss" in logs:
            self.log(f"{step}: validation loss {logs['eval_loss']:.4f}")


class TimeBudget(TrainerCallback):
    """Ends training once `seconds` have passed (checked after each optimiser step), so a run is bounded on a slow
    machine; with early stopping the best checkpoint measured so far is still the one kept."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.started = time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.started >= self.seconds:
            control.should_training_stop = True
        return control


@dataclass
class TokenCounter:
    """Tokens the backbone was given while training: `real` without padding, `processed` with it."""

    real: int = 0
    processed: int = 0

    def attach(self, peft_model) -> TokenCounter:
        peft_model.get_base_model().model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def _count(self, module, args, kwargs):
        if not module.training:  # a validation pass
            return
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        self.processed += input_ids.numel()
        self.real += int(mask.sum()) if mask is not None else input_ids.numel()


def lora_model(base, settings: LoraSettings):
    """`base` with fresh LoRA weights (PEFT), which stay fp32 whatever dtype the frozen base is held in (see
    `Precision`): PEFT upcasts fp16/bf16 adapters by default; doing it here makes it this project's decision."""
    target = settings.target_modules
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    return model


def parameter_dtypes(model) -> dict[str, dict[str, int]]:
    """Parameters per dtype, frozen and trainable apart: {"frozen": {"float16": 3.8e9}, "trainable": {...}}."""
    counts: dict[str, dict[str, int]] = {"frozen": {}, "trainable": {}}
    for parameter in model.parameters():
        side = counts["trainable" if parameter.requires_grad else "frozen"]
        dtype = str(parameter.dtype).removeprefix("torch.")
        side[dtype] = side.get(dtype, 0) + parameter.numel()
    return counts


def load_training_base(model_dir: str, device: str, precision: Precision, settings: LoraSettings):
    """The base model for training, on the CPU, in the precision's base dtype (moved to `device` by the trainer)."""
    # On CPU, eager attention trains 20 % faster than SDPA's flash kernel on batches of short examples (head
    # size 64); a packed row's block mask spans the whole batch, where eager would materialise it in fp32.
    attention = "eager" if not device.startswith("cuda") and not settings.packing else None
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=precision.base_dtype, attn_implementation=attention)


def sft_config(
    settings: LoraSettings, work_dir: Path, device: str, precision: Precision, early_stopping: EarlyStopping | None
) -> OneDeviceSFTConfig:
    # With early stopping, the validation loss is measured every `eval_every_steps` and a checkpoint saved with
    # it, so the best one can be loaded at the end (transformers keeps it beside the last two).
    validation = (
        {
            "eval_strategy": "steps",
            "eval_steps": early_stopping.eval_every_steps,
            "per_device_eval_batch_size": settings.batch_size,
            "prediction_loss_only": True,
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
        }
        if early_stopping
        else {}
    )
    return OneDeviceSFTConfig(
        cuda_index=cuda_index(device),
        output_dir=str(work_dir),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        warmup_steps=settings.warmup_steps,
        max_length=settings.max_length,
        packing=settings.packing,
        gradient_checkpointing=settings.gradient_checkpointing,
        completion_only_loss=True,
        use_cpu=not device.startswith("cuda"),
        **precision.trainer_flags(device),
        logging_steps=settings.logging_steps,
        save_strategy="steps",
        save_steps=early_stopping.eval_every_steps if early_stopping else settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        disable_tqdm=True,
        log_level="warning",
        dataloader_num_workers=0,
        **validation,
    )


def build_trainer(
    base,
    tokenizer,
    records: Sequence[dict],
    settings: LoraSettings,
    work_dir: Path,
    device: str,
    precision: Precision,
    callbacks: Sequence,
    early_stopping: EarlyStopping | None = None,
) -> NewsllmSFTTrainer:
    """The SFT trainer for `base` (a causal LM in the precision's base dtype, or the model folder to load it from)
    with a fresh LoRA adapter on `device`: the one place that decides how a run trains, for `train_lora` and the
    benchmarks alike. With `early_stopping`, it evaluates on its records and stops when their loss stops
    improving."""
    if isinstance(base, str | Path):
        base = load_training_base(str(base), device, precision, settings)
    disable_progress_bars()  # the dataset preparation's bars would clutter Dagster's logs; `log` reports progress
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    callbacks = list(callbacks)
    if settings.max_time_s:
        callbacks.append(TimeBudget(settings.max_time_s))
    if early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping.patience))
    trainer = NewsllmSFTTrainer(
        model=lora_model(base, settings).to(device),
        args=sft_config(settings, work_dir, device, precision, early_stopping),
        train_dataset=Dataset.from_list(list(records)),
        eval_dataset=Dataset.from_list(list(early_stopping.records)) if early_stopping else None,
        processing_class=tokenizer,
        callbacks=callbacks,
        length_buckets=settings.group_by_length and not settings.packing,
        completion_head_only=not device.startswith("cuda"),
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; `log` reports the steps instead
    return trainer
