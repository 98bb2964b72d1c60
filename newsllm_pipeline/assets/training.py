"""LoRA specialisation: the document adapter and its evaluation, and the categoriser's own training set, adapter
and evaluation. Training runs on the `train_device`, evaluations on the `evaluate_device`, each step in the
concurrency pool of its device (resources/devices.py)."""

import dataclasses
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from ..automation import after_inputs_change, nightly_after_inputs_change
from ..categorizer import Prediction
from ..categorizer.adapter import PROMPT_SETTINGS, PromptSettings, accuracy_report, adapter_records
from ..categorizer.training_set import build_labelled_set, read_labelled_split, with_real_items, write_labelled_set
from ..deployment import device_step_tags
from ..documents.dataset import DatasetFiles
from ..files import content_version, read_jsonl
from ..models import resolve_model_dir
from ..plots import chart_markdown
from ..resources.devices import ComputeDevice, role_pool
from ..resources.documents import DocumentStore
from ..resources.noticias import CategorizerResource, NoticiasDatabase
from ..resources.training import LoraTrainerResource
from ..settings import PROJECT_HOME, SHIPPED_REAL_ITEMS
from ..splits import EVAL_JSONL, REAL_DEV_JSONL, TRAIN_JSONL
from ..training.lora import PROFILES, EarlyStopping, LoraSettings, TrainingRun, alpaca_records, train_lora

GROUP = "lora"


class LoraTrainingConfig(dg.Config):
    """A profile (`cpu`: short run of the packaged tiny model; `gpu`: the original project's r=128, 20 epochs,
    batch 1 x 16, length 2048; `auto`: the one that fits the training device) and optional overrides of its
    values."""

    profile: str = Field(default="auto", description="'auto' (gpu on a CUDA device, else cpu), 'cpu' or 'gpu'")
    epochs: float | None = Field(default=None, description="Passes over the data")
    max_steps: int | None = Field(default=None, description="Optimiser steps; > 0 overrides epochs")
    rank: int | None = Field(default=None, description="LoRA rank r")
    alpha: int | None = Field(default=None, description="LoRA alpha (scale alpha / r)")
    learning_rate: float | None = None
    batch_size: int | None = Field(default=None, description="Rows per device step")
    gradient_accumulation_steps: int | None = None
    max_length: int | None = Field(default=None, description="Tokens per row (packed rows or one example)")
    gradient_checkpointing: bool | None = Field(default=None, description="Recompute activations: less memory")
    packing: bool | None = Field(default=None, description="Pack examples into rows with no padding")
    save_steps: int | None = Field(default=None, description="Checkpoint every this many steps (for resuming)")
    max_time_s: float | None = Field(
        default=None, description="End training after this many seconds (the demo bounds its run on slow machines)"
    )

    def profile_for(self, device: str) -> str:
        """The profile to train with on `device` ('auto', 'cpu', 'cuda', 'cuda:1'…)."""
        if self.profile == "auto":
            from ..models import resolve_device

            return "gpu" if resolve_device(device).startswith("cuda") else "cpu"
        if self.profile not in PROFILES:
            raise dg.Failure(f"unknown training profile {self.profile!r}: use auto or one of {', '.join(PROFILES)}")
        return self.profile

    def settings(self, device: str = "auto") -> LoraSettings:
        overrides = self.model_dump(include={field.name for field in dataclasses.fields(LoraSettings)})
        return PROFILES[self.profile_for(device)].with_overrides(**overrides)


class DocumentTrainingConfig(LoraTrainingConfig):
    # A few dozen passages of a few hundred tokens: one epoch is three steps and barely moves the held-out loss.
    # Measured on the demo's three documents (2 cores, bf16): 3 epochs at the profile's lr 1e-3 take the held-out
    # loss from 2.22 (base) to 2.03 in about 60 s; lr 5e-4 gives the same, 1 epoch only 2.13.
    epochs: float | None = Field(default=3.0, description="Passes over the data")


class CategorizerTrainingConfig(LoraTrainingConfig):
    # The values below were measured on the cpu profile's LoRA shape; on a GPU the same short run is just faster.
    profile: str = Field(default="cpu", description="'cpu', 'gpu' or 'auto' (gpu on a CUDA device, else cpu)")
    # Short examples (about 90 tokens, the category as the answer; each item with its summary and as a headline
    # alone): larger batches. A step budget rather than epochs: with the real labelled set (about 1,450 examples
    # besides the sample's 400) one epoch takes about 115 steps of 1.4 s (Gemma 3 270M, 2 cores). At 80 steps the
    # validation loss was still falling (best step 80; real dev headlines 48 %); at 160 the best step was 140 and
    # early stopping keeps it (55 %, benchmarks/categorize_quality.py, one run each), for about 100 s more.
    epochs: float | None = Field(default=1.0, description="Passes over the data (when max_steps is not set)")
    max_steps: int | None = Field(default=160, description="Optimiser steps; > 0 overrides epochs")
    # Half the cpu profile's rate: with 1e-3, three runs of the same Gemma settings scored 58 %, 82 % and 84 % on
    # the held-out sample (a loss spike late in the run decides); with 5e-4, three scored 76 %, 78 % and 82 %.
    learning_rate: float | None = 5e-4
    batch_size: int | None = Field(default=16, description="Examples per device step")
    max_length: int | None = Field(default=256, description="Tokens per example at most")
    # A validation measurement costs about 5 s on 2 cores (141 headlines of the real set, forward only): 19 s of
    # the demo's 140 s of training.
    early_stopping: bool = Field(
        default=True,
        description="Hold out 10 % of the training items (at least 32, stratified by category, seeded) as "
        "headlines, measure their loss during training, stop when it stops improving and keep the best "
        "checkpoint as the adapter. The real development split is never used for this.",
    )
    patience: int = Field(default=2, description="Validation measurements without improvement before stopping")
    eval_every_steps: int = Field(
        default=20, description="Measure the validation loss (and save a checkpoint) every this many steps"
    )

    def stopping(self, validation: list[dict]) -> EarlyStopping | None:
        """Early stopping on these validation records; None when it is off or no item could be held out."""
        return EarlyStopping(validation, self.patience, self.eval_every_steps) if validation else None


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def _loss_curve(history: list[dict]) -> str:
    steps = [(entry["step"], entry["loss"]) for entry in history if "loss" in entry and "step" in entry]
    validation = [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]

    def draw(axis):
        axis.plot(
            [step for step, _ in steps], [loss for _, loss in steps], color="#4f7cac", marker=".", label="training"
        )
        if validation:
            axis.plot(*zip(*validation, strict=True), color="#c0504d", marker="o", label="validation")
            axis.legend()
        axis.set_xlabel("step")
        axis.set_ylabel("loss (completion tokens)")

    return chart_markdown("Training loss", draw)


def _training_metadata(run: TrainingRun) -> dict:
    record = run.record
    history = run.log_history
    return {
        "version": run.version,
        "adapter_dir": dg.MetadataValue.path(str(run.adapter_dir)),
        "retrained": not run.reused,
        "resumed_from": record.resumed_from or "",
        "dataset_version": record.dataset_version or "",
        "base_model": record.base_model,
        "device": record.device,
        "precision": record.precision,
        "examples": record.examples,
        "examples_dropped": record.examples_dropped,
        "trainable_parameters": record.trainable_parameters,
        "trainable_share_pct": record.trainable_share_pct,
        "adapter_size": _size(run.adapter_dir / "adapter_model.safetensors"),
        "steps": record.global_step,
        "runtime_s": record.train_runtime_s,
        "samples_per_s": record.train_samples_per_second,
        "tokens_per_s": record.tokens_per_second,
        "padding_share": record.padding_share,
        "first_loss": record.first_loss,
        "final_loss": record.final_loss,
        "loss_curve": dg.MetadataValue.md(_loss_curve(history)) if history else "",
        "parameter_dtypes": dg.MetadataValue.json(record.parameter_dtypes or {}),
        **(
            {
                "validation_examples": record.validation_examples,
                "best_step": record.best_step,
                "best_validation_loss": record.best_eval_loss,
                "stopped_early": record.stopped_early,
            }
            if record.validation_examples
            else {}
        ),
    }


def _train(
    context,
    config: LoraTrainingConfig,
    trainer: LoraTrainerResource,
    device: ComputeDevice,
    kind: str,
    records,
    base_model=None,
    **options,
):
    """Train (or reuse) the adapter of `kind` on `base_model` (default: the trainer's) on `device` and make it the
    current one: the run and its metadata (the profile the device chose, the device's pool, the peak memory)."""
    profile = config.profile_for(device.device)
    context.log.info(f"training with the {profile} profile on {device.device} ({device.precision})")
    with device.step(context) as placement:
        run = train_lora(
            base_model or trainer.base_model(),
            records,
            trainer.folder(kind),
            config.settings(device.device),
            device=device.device,
            precision=device.precision,
            log=context.log.info,
            **options,
        )
    trainer.point_current(kind, run.version)
    # The record's device and precision are the resolved ones ('auto' made concrete): they win.
    return run, {**placement, **_training_metadata(run), "profile": profile}


@dg.asset(
    group_name=GROUP,
    deps=["training_dataset"],  # by key: each domain loads only its own assets
    kinds={"pytorch"},
    automation_condition=nightly_after_inputs_change(),
    pool=role_pool("train"),
    op_tags=device_step_tags("train"),
    description="A LoRA adapter trained on the instruction dataset (loss on the answers only). The version "
    "hashes data, base model and settings: unchanged input is not retrained; an interrupted run resumes.",
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: DocumentTrainingConfig,
    lora_trainer: LoraTrainerResource,
    train_device: ComputeDevice,
    document_store: DocumentStore,
) -> dg.MaterializeResult:
    files = DatasetFiles(folder=Path(document_store.dataset_dir))
    if not files.train_jsonl.exists():
        raise dg.Failure(f"no instruction dataset in {files.folder}: materialise training_dataset first")
    rows = read_jsonl(files.train_jsonl)
    run, metadata = _train(
        context,
        config,
        lora_trainer,
        train_device,
        "documents",
        alpaca_records(rows),
        dataset_version=files.version(),
    )
    return dg.MaterializeResult(data_version=dg.DataVersion(run.version), metadata=metadata)


class AdapterEvaluationConfig(dg.Config):
    questions: int = Field(default=5, description="Held-out questions answered side by side")
    max_new_tokens: int = Field(default=96, description="Length limit of each answer")


def _answers_table(answers: list[dict], limit: int = 300) -> str:
    frame = pd.DataFrame(answers).map(lambda text: " ".join(str(text).split())[:limit])
    return frame.to_markdown(index=False)


def _compare_with_base(base_model: str, adapter_dir: Path, device: ComputeDevice, records, config):
    """Base and adapter side by side on `records`; the model is loaded here and gone when this returns."""
    from ..models import resolve_device
    from ..training.evaluation import compare_with_base
    from ..training.inference import load_for_generation
    from ..training.lora import resolve_precision

    where = resolve_device(device.device)
    # As trained: the evaluation's precision defaults to the training's (NEWSLLM_EVALUATE_PRECISION).
    precision = resolve_precision(device.precision, where).name  # `load_model` takes the precision names too
    model, tokenizer = load_for_generation(base_model, adapter_dir, where, precision)
    return compare_with_base(model, tokenizer, records, config.questions, config.max_new_tokens)


@dg.asset(
    group_name=GROUP,
    deps=[lora_adapter],
    automation_condition=after_inputs_change(),
    pool=role_pool("evaluate"),
    op_tags=device_step_tags("evaluate"),
    check_specs=[
        dg.AssetCheckSpec(
            "adapter_beats_base",
            asset="adapter_evaluation",
            description="The adapter's held-out loss is lower than the base model's (fails the run otherwise)",
            blocking=True,
        )
    ],
    description="Held-out loss and perplexity of the base model and of the current adapter, and their answers "
    "to the first held-out questions side by side.",
)
def adapter_evaluation(
    context: dg.AssetExecutionContext,
    config: AdapterEvaluationConfig,
    lora_trainer: LoraTrainerResource,
    evaluate_device: ComputeDevice,
    document_store: DocumentStore,
) -> dg.MaterializeResult:
    adapter_dir = lora_trainer.current("documents")
    records = alpaca_records(read_jsonl(DatasetFiles(folder=Path(document_store.dataset_dir)).eval_jsonl))
    if not records:
        return dg.MaterializeResult(
            metadata={"adapter_dir": dg.MetadataValue.path(str(adapter_dir)), "held_out_examples": 0},
            check_results=[
                dg.AssetCheckResult(
                    check_name="adapter_beats_base",
                    passed=False,
                    severity=dg.AssetCheckSeverity.ERROR,
                    description="the dataset has no held-out examples: add documents or raise eval_share",
                )
            ],
        )
    context.log.info(f"evaluating {adapter_dir.name} on {len(records)} held-out examples on {evaluate_device.device}")
    with evaluate_device.step(context) as placement:
        comparison = _compare_with_base(lora_trainer.base_model(), adapter_dir, evaluate_device, records, config)
    base, adapter = comparison.base, comparison.adapter
    return dg.MaterializeResult(
        metadata={
            "adapter_dir": dg.MetadataValue.path(str(adapter_dir)),
            "held_out_examples": len(records),
            "completion_tokens": adapter.tokens,
            "base_loss": round(base.nll, 4),
            "adapter_loss": round(adapter.nll, 4),
            "base_perplexity": round(base.perplexity, 2),
            "adapter_perplexity": round(adapter.perplexity, 2),
            "answers": dg.MetadataValue.md(_answers_table(comparison.answers)),
            **placement,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="adapter_beats_base",
                passed=comparison.improved,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"base_loss": round(base.nll, 4), "adapter_loss": round(adapter.nll, 4)},
            )
        ],
    )


class CategorizerSetConfig(dg.Config):
    real_items: str = Field(
        default=str(SHIPPED_REAL_ITEMS),
        description="The real labelled set merged into the table's labels (a relative path is read from the "
        "project home); default: the set this checkout ships; empty: the table's labels only",
    )

    def real_rows(self) -> list[dict]:
        if not self.real_items:
            return []
        path = PROJECT_HOME / self.real_items
        if not path.exists():
            raise dg.Failure(f"real labelled set {path} does not exist: fix real_items or set it to ''")
        return read_jsonl(path)


@dg.asset(
    group_name=GROUP,
    deps=["noticias"],
    kinds={"parquet"},
    description="Noticias with a trusted category (reviewed, or feed tags / url section that map to one category), "
    "split by url hash into train and a held-out set that keeps its items as the table grows, merged with the "
    "real labelled set's training split (its development split is held out as real_dev.jsonl).",
)
def categorizer_training_set(
    config: CategorizerSetConfig,
    noticias_db: NoticiasDatabase,
    lora_trainer: LoraTrainerResource,
    categorizer: CategorizerResource,
) -> dg.MaterializeResult:
    from .. import db

    labelled = build_labelled_set(db.fetch_labelled(noticias_db.engine), categories=categorizer.categories)
    labelled = with_real_items(labelled, config.real_rows(), categorizer.categories)
    folder = write_labelled_set(labelled, Path(lora_trainer.categorizer_dataset_dir))
    stats = labelled.stats
    counts = pd.DataFrame(stats.categories).fillna(0).astype(int)
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(str(folder)),
            "train": stats.train,
            "eval": stats.eval,
            "eval_reviewed": stats.eval_reviewed,
            "real_train": stats.real_train,
            "real_dev": stats.real_dev,
            "skipped": dg.MetadataValue.json(stats.skipped),
            "feed_tags_agree_with_reviews": f"{stats.feed_agreed}/{stats.feed_checked}",
            "url_sections_agree_with_reviews": f"{stats.url_agreed}/{stats.url_checked}",
            "per_category": dg.MetadataValue.md(counts.to_markdown()),
        }
    )


@dg.asset(
    group_name=GROUP,
    deps=[categorizer_training_set],
    kinds={"pytorch"},
    pool=role_pool("train"),
    op_tags=device_step_tags("train"),
    description="A LoRA adapter that teaches the base model the categories on the zero-shot scoring prompt. "
    "Use it with NEWSLLM_ADAPTER_DIR=<categorizer adapters>/current.",
)
def categorizer_adapter(
    context: dg.AssetExecutionContext,
    config: CategorizerTrainingConfig,
    lora_trainer: LoraTrainerResource,
    train_device: ComputeDevice,
    categorizer: CategorizerResource,
) -> dg.MaterializeResult:
    from transformers import AutoTokenizer

    folder = Path(lora_trainer.categorizer_dataset_dir)
    train = read_labelled_split(folder / TRAIN_JSONL)
    prompt = PromptSettings(categories=tuple(categorizer.categories), max_item_tokens=categorizer.max_item_tokens)
    # The adapter belongs to the categoriser's model, which may differ from the document adapters' base.
    base_model = resolve_model_dir(categorizer.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    records = adapter_records(
        tokenizer,
        [item.text for item in train],
        [item.categoria for item in train],
        prompt,
        hold_out=config.early_stopping,
        seed=config.settings(train_device.device).seed,
    )
    if config.early_stopping and not records.validation:
        context.log.warning(f"{len(train)} training items are too few to hold some out: no early stopping")
    run, metadata = _train(
        context,
        config,
        lora_trainer,
        train_device,
        "categorizer",
        records.training,
        base_model=base_model,
        early_stopping=config.stopping(records.validation),
        extra_files={PROMPT_SETTINGS: prompt.to_json()},
        dataset_version=content_version(folder / TRAIN_JSONL, folder / EVAL_JSONL, folder / REAL_DEV_JSONL),
    )
    return dg.MaterializeResult(data_version=dg.DataVersion(run.version), metadata=metadata)


def _predictions(categorizer: CategorizerResource, texts: list[str]) -> list[str | None]:
    return [result.categoria if isinstance(result, Prediction) else None for result in categorizer.categorize(texts)]


@dg.asset(
    group_name=GROUP,
    deps=[categorizer_adapter],
    pool=role_pool("evaluate"),
    op_tags=device_step_tags("evaluate"),
    check_specs=[dg.AssetCheckSpec("adapter_beats_base", asset="categorizer_evaluation")],
    description="Accuracy of the categoriser with and without the current adapter on the held-out noticias, "
    "with both confusion tables.",
)
def categorizer_evaluation(
    context: dg.AssetExecutionContext,
    lora_trainer: LoraTrainerResource,
    categorizer: CategorizerResource,
    evaluate_device: ComputeDevice,
) -> dg.MaterializeResult:
    folder = Path(lora_trainer.categorizer_dataset_dir)
    items = read_labelled_split(folder / EVAL_JSONL)
    # Issue 9's measure: the real set's development headlines, title only.
    real_dev = read_labelled_split(folder / REAL_DEV_JSONL) if (folder / REAL_DEV_JSONL).exists() else []
    adapter_dir = lora_trainer.current("categorizer")
    texts, truth = [item.text for item in items], [item.categoria for item in items]
    titles, real_truth = [item.text.split("\n", 1)[0] for item in real_dev], [item.categoria for item in real_dev]
    reports, real_accuracy = {}, {}
    placed = categorizer.on(evaluate_device)
    models = {"base": placed.with_adapter(None), "adapter": placed.with_adapter(str(adapter_dir))}
    with evaluate_device.step(context, *models.values(), measure=categorizer.runs_here) as placement:
        for name, model in models.items():
            context.log.info(f"categorising {len(texts)} held-out noticias, {len(titles)} real headlines: {name}")
            reports[name] = accuracy_report(truth, _predictions(model, texts))
            if titles:
                real_accuracy[name] = round(accuracy_report(real_truth, _predictions(model, titles)).accuracy, 3)
    base, adapted = reports["base"], reports["adapter"]
    per_category = base.per_category()[["items", "accuracy"]].join(
        adapted.per_category()[["accuracy"]], lsuffix="_base", rsuffix="_adapter"
    )
    return dg.MaterializeResult(
        metadata={
            "adapter_dir": dg.MetadataValue.path(str(adapter_dir)),
            "held_out": len(items),
            "base_accuracy": round(base.accuracy, 3),
            "adapter_accuracy": round(adapted.accuracy, 3),
            "real_dev": len(real_dev),
            **{f"real_dev_{name}_accuracy": accuracy for name, accuracy in real_accuracy.items()},
            "per_category": dg.MetadataValue.md(per_category.to_markdown()),
            "confusion_base": dg.MetadataValue.md(base.confusion.to_markdown()),
            "confusion_adapter": dg.MetadataValue.md(adapted.confusion.to_markdown()),
            **placement,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="adapter_beats_base",
                passed=bool(items) and adapted.accuracy > base.accuracy,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"base_accuracy": round(base.accuracy, 3), "adapter_accuracy": round(adapted.accuracy, 3)},
            )
        ],
    )
