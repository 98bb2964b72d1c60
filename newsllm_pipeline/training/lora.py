"""LoRA fine-tuning with TRL's SFTTrainer and PEFT on prompt/completion records (loss on the completion only).

A training run writes its checkpoints under `<adapters>/.training/<version>/` and, when it ends, the adapter as a
Hugging Face folder `<adapters>/<version>/` (adapter_config.json, adapter_model.safetensors, tokenizer files,
training_args.json, trainer_state.json, log_history.json, newsllm_training.json), renamed into place whole. The
version hashes the records, the base model's files and the settings, so the same input never trains twice, and
a run that was interrupted resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..categorizer.labels import folder_fingerprint
from ..files import staged_folder

TRAINING_DIR = ".training"
TRAINING_INFO = "newsllm_training.json"
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

    @property
    def inference_dtype(self) -> str:
        """The dtype to evaluate in (`load_model`'s names), so base and adapter are judged as trained."""
        return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[self.name]

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


def adapter_version(records: Sequence[dict], model_dir: str, settings: LoraSettings, precision: str) -> str:
    """A short hash of everything that determines the adapter."""
    digest = hashlib.sha256()
    for part in (
        json.dumps(list(records), ensure_ascii=False, sort_keys=True),
        folder_fingerprint(model_dir),
        json.dumps(dataclasses.asdict(settings), sort_keys=True),
        precision,
    ):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def last_checkpoint(work_dir: Path) -> Path | None:
    checkpoints = [path for path in work_dir.glob("checkpoint-*") if (path / "trainer_state.json").exists()]
    return max(checkpoints, key=lambda path: int(path.name.split("-")[1]), default=None)


@dataclass
class TrainingRun:
    adapter_dir: Path
    version: str
    reused: bool = False  # the adapter for this version existed: nothing trained
    resumed_from: str | None = None
    info: dict = field(default_factory=dict)  # newsllm_training.json: metrics, parameters, data sizes

    @property
    def log_history(self) -> list[dict]:
        return json.loads((self.adapter_dir / LOG_HISTORY).read_text(encoding="utf-8"))


def _lora_config(settings: LoraSettings):
    from peft import LoraConfig

    target = settings.target_modules
    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        task_type="CAUSAL_LM",
    )


def _sft_config(settings: LoraSettings, work_dir: Path, device: str, precision: Precision):
    from .trainer_args import OneDeviceSFTConfig, cuda_index

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
        save_steps=settings.save_steps,
        save_total_limit=2,
        seed=settings.seed,
        data_seed=settings.seed,
        report_to=[],
        disable_tqdm=True,
        log_level="warning",
        dataloader_num_workers=0,
    )


def train_lora(
    model_dir: str,
    records: Sequence[dict],
    adapters_dir: Path,
    settings: LoraSettings,
    device: str = "auto",
    precision: str = "auto",
    log: Callable[[str], None] = print,
    callbacks: Sequence = (),
    provenance: dict | None = None,
    extra_files: dict[str, str] | None = None,
) -> TrainingRun:
    """Train (or reuse, or resume) the adapter for these prompt/completion records.

    `provenance` (e.g. the dataset's version) is stored in newsllm_training.json next to the metrics;
    `extra_files` (name -> text) are written into the adapter folder with the weights.
    """
    from transformers import AutoTokenizer

    from ..models import resolve_device

    device = resolve_device(device)
    resolved = resolve_precision(precision, device)
    version = adapter_version(records, model_dir, settings, resolved.name)
    adapters_dir = Path(adapters_dir)
    adapter_dir = adapters_dir / version
    if (adapter_dir / "adapter_model.safetensors").exists():
        log(f"adapter {version} exists for this data, model and settings: not retraining")
        info = json.loads((adapter_dir / TRAINING_INFO).read_text(encoding="utf-8"))
        return TrainingRun(adapter_dir, version, reused=True, info=info)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    learnable = learnable_records(records, tokenizer, settings.max_length)
    if learnable.dropped:
        log(f"{learnable.dropped} of {len(records)} examples dropped: the prompt alone fills max_length")
    if not learnable.records:
        raise ValueError(
            f"no example has a completion token within max_length={settings.max_length}: raise max_length "
            "or shorten the prompts"
        )
    work_dir = adapters_dir / TRAINING_DIR / version
    checkpoint = last_checkpoint(work_dir)
    callbacks = [*callbacks, _log_forwarder(log)]
    trainer = _trainer(model_dir, tokenizer, learnable.records, settings, work_dir, device, resolved, callbacks)
    tokens = TokenCounter().attach(trainer.model)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    log(
        f"training adapter {version}: {len(learnable.records)} examples, {learnable.tokens} tokens, "
        f"{trainable:,} trainable of {total:,} parameters, {device}, {resolved.name}"
        + (f", resuming from {checkpoint.name}" if checkpoint else "")
    )
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    info = {
        "version": version,
        "base_model": str(model_dir),
        "device": device,
        "precision": resolved.name,
        "settings": dataclasses.asdict(settings),
        "examples": len(learnable.records),
        "examples_dropped": learnable.dropped,
        "dataset_tokens": learnable.tokens,
        "completion_tokens": learnable.completion_tokens,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "parameter_dtypes": parameter_dtypes(trainer.model),
        "global_step": trainer.state.global_step,
        "train_runtime_s": round(seconds, 2),
        "train_samples_per_second": output.metrics.get("train_samples_per_second"),
        # Real tokens through the model in this run (a resumed run counts its own steps only).
        "tokens_trained": tokens.real,
        "tokens_per_second": round(tokens.real / seconds, 1),
        "padding_share": round(1 - tokens.real / tokens.processed, 3) if tokens.processed else 0.0,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "train_loss": output.training_loss,
        "resumed_from": checkpoint.name if checkpoint else None,
        **(provenance or {}),
    }
    with staged_folder(adapter_dir) as staging:
        trainer.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "training_args.json").write_text(trainer.args.to_json_string(), encoding="utf-8")
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        (staging / LOG_HISTORY).write_text(json.dumps(history, indent=1), encoding="utf-8")
        (staging / TRAINING_INFO).write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
    shutil.rmtree(work_dir, ignore_errors=True)
    return TrainingRun(adapter_dir, version, resumed_from=info["resumed_from"], info=info)


@dataclass
class TokenCounter:
    """Tokens the backbone was given: `real` without padding, `processed` with it."""

    real: int = 0
    processed: int = 0

    def attach(self, peft_model) -> TokenCounter:
        peft_model.get_base_model().model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def _count(self, module, args, kwargs):
        input_ids, mask = kwargs["input_ids"], kwargs.get("attention_mask")
        self.processed += input_ids.numel()
        self.real += int(mask.sum()) if mask is not None else input_ids.numel()


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
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        tie_breaks = torch.rand(len(self.lengths), generator=generator).tolist()
        order = sorted(range(len(self.lengths)), key=lambda index: (self.lengths[index], tie_breaks[index]))
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        # The data loader cuts the index stream every batch_size: a short batch goes last or it would shift the rest.
        remainder = batches.pop() if len(batches[-1]) < self.batch_size else []
        for position in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[position]
        yield from remainder


def _trainer_class(device: str, settings: LoraSettings):
    """SFTTrainer with batches of similar lengths (`group_by_length`, without packing) and, off CUDA, a loss
    that runs the LM head on the completion tokens only: TRL's fused head scores only the labelled positions
    on CUDA (Triton), elsewhere every position in fp32 (40 % of a CPU step on short answers)."""
    import torch
    from trl import SFTTrainer

    class NewsllmSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if settings.packing or not settings.group_by_length:
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return LengthBucketSampler(lengths, self.args.train_batch_size, self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if device.startswith("cuda"):
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

    return NewsllmSFTTrainer


def lora_model(base, settings: LoraSettings):
    """`base` with fresh LoRA weights (PEFT), which stay fp32 whatever dtype the frozen base is held in (see
    `Precision`): PEFT upcasts fp16/bf16 adapters by default; doing it here makes it this project's decision."""
    from peft import get_peft_model

    model = get_peft_model(base, _lora_config(settings))
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
    from transformers import AutoModelForCausalLM

    # On CPU, eager attention trains 20 % faster than SDPA's flash kernel on batches of short examples (head
    # size 64); a packed row's block mask spans the whole batch, where eager would materialise it in fp32.
    attention = "eager" if not device.startswith("cuda") and not settings.packing else None
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=precision.base_dtype, attn_implementation=attention)


def build_trainer(base, tokenizer, records, settings, work_dir, device, precision, callbacks):
    """The SFT trainer for `base` (a causal LM in the precision's base dtype) with a fresh LoRA adapter on
    `device`: the one place that decides how a run trains, for `train_lora` and the benchmarks alike."""
    from datasets import Dataset, disable_progress_bars
    from transformers import PrinterCallback

    disable_progress_bars()  # the dataset preparation's bars would clutter Dagster's logs; `log` reports progress
    base.generation_config.pad_token_id = tokenizer.pad_token_id
    trainer = _trainer_class(device, settings)(
        model=lora_model(base, settings).to(device),
        args=_sft_config(settings, work_dir, device, precision),
        train_dataset=Dataset.from_list(list(records)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; `log` reports the steps instead
    return trainer


def _trainer(model_dir, tokenizer, records, settings, work_dir, device, precision, callbacks):
    base = load_training_base(model_dir, device, precision, settings)
    return build_trainer(base, tokenizer, records, settings, work_dir, device, precision, callbacks)


def _log_forwarder(log: Callable[[str], None]):
    """A trainer callback that reports each logged step (loss, learning rate, tokens) through `log`."""
    from transformers import TrainerCallback

    class LogForwarder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                step = f"step {state.global_step}/{state.max_steps}"
                log(f"{step}: loss {logs['loss']:.4f}, learning rate {logs['learning_rate']:.1e}")

    return LogForwarder()
