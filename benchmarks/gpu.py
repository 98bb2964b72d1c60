"""GPU benchmark: categorisation (exllamav2 against transformers) and LoRA training on one NVIDIA GPU, in one run
that fits a short lease: planned for about 6 minutes on an H100/H200 (not yet timed there); a section that would
end after --budget-s is skipped, and the JSON says so.

Weights cannot travel to the GPU machine (64 MiB carried, no network there), so every model is built there from
its configuration (SHAPES, below) with random weights. Speed and memory do not depend on the values; what a model
answers does, so agreement between backends on random weights measures numerical consistency only. Every model
entry in the JSON says `"weights": "random"`. The tokenizer is SmolLM2's (carried, 3.4 MB), so every shape's
vocabulary is at least its 49,152 tokens.

Measured, in this order (the training MFU and the 7B categorisation come first, so a cut-short run keeps them):

- environment: GPU, driver, CUDA, package versions; the bf16 and fp16 matmul peaks of this device (8192^3
  products, mean of 10 after 3 warm-ups), against which every model-FLOPs utilisation (MFU) is reported;
- training (`training/lora.py`'s trainer, the path `lora_adapter` runs): a Phi-4-mini-shaped model (3.8B) with the
  `gpu` profile (r=128, alpha=256, lr 5e-4, gradient checkpointing, batch 1 x 16, length 2048) for a fixed number
  of optimiser steps after a warm-up step: samples/s, tokens/s, MFU, peak memory; the same with fp16 (as a T4
  runs it: frozen base in fp16, LoRA in fp32, loss scaling), showing the dtypes of every parameter; and the
  profile with micro-batches of 4 x 4 (the same 16 examples per step) for comparison;
- categorisation (`categorizer/`'s backends, label scoring): a Mistral-7B-shaped model and a SmolLM2-135M-shaped
  one, each saved once as an fp16 folder and read by both backends: transformers (bf16 and fp16, CUDA) and
  exllamav2 (fp16, its own kernels) on the same 1,000 items: items/s for one batch of 10 (a sensor run's size)
  and for the whole backlog, peak memory, MFU, and the share of items both backends put in the same category.

Counted FLOPs: categorisation as `harness.model_flops` counts them (linear layers on the tokens fed, the LM head
on the scored positions only, attention over the cached prefix); training as 4 x frozen linear parameters x real
tokens (forward 2NT, backward through the activations 2NT), 6 x LoRA parameters x tokens (their weights get
gradients), attention forward and backward (3 x 2 x L^2 x width per layer, causal), and the LM head on the
completion tokens only (TRL's fused head on CUDA scores only the labelled positions). The recomputation of
gradient checkpointing is not model FLOPs (reported apart as hardware FLOPs).

    bash benchmarks/gpu_run.sh                                # on the GPU machine (README, Benchmarks > GPU)
    .venv/bin/python benchmarks/gpu.py --device cpu --tiny    # dry run: every path but exllamav2, tiny shapes
    .venv/bin/python benchmarks/gpu.py --bundle               # the tokenizer and items gpu_wheels.sh carries
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from harness import model_flops, package_versions

from newsllm_pipeline.device_memory import PEAK_KEY, peak_device_memory

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".gpu-bundle"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu.json"
PACKAGES = ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "exllamav2", "flash-attn", "tokenizers")
RANDOM_WEIGHTS = "random"
PER_ITEM = "per_item"  # each run's category and top-two gap per item: kept for agreement, left out of the JSON

# Configurations of the real models (their config.json), written here: the GPU machine reaches no hub.
SHAPES = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
    },
    # Mistral-7B-v0.1 is a Llama with grouped-query attention; its 32,000-token vocabulary is widened to the
    # carried tokenizer's 49,152 (0.14B more parameters in the embedding and the LM head: 7.38B instead of 7.24B).
    "mistral-7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
    },
    # microsoft/Phi-4-mini-instruct (3.8B): fused qkv and gate/up projections, partial rotary embedding.
    "phi-4-mini": {
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 200064,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
        "partial_rotary_factor": 0.75,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
    },
}
# --tiny (the CPU dry run): the same model types and vocabularies, two small layers.
TINY_SHAPE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_KV_HEADS = 2

DEFAULT_BATCH_SIZE = 16  # the categoriser resource's default
CATEGORISATION_GOAL_PER_HOUR = 300_000  # 7B-shaped model on one H200
TRAINING_MFU_GOAL = 0.40  # Phi-4-mini shape, gpu profile


class Budget:
    """Wall-clock budget of the whole run: a section starts only if its estimate fits in what is left."""

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, estimate_s: float) -> bool:
        return self.elapsed() + estimate_s <= self.seconds


class Report:
    """The JSON report, rewritten after every section so that a run cut short still leaves what it measured."""

    def __init__(self, path: Path, data: dict, budget: Budget):
        self.path, self.data, self.budget = path, data, budget

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(without_per_item(self.data), indent=2, ensure_ascii=False) + "\n")

    def section(self, name: str, estimate_s: float, run: Callable[[], None]) -> None:
        """Run one section (it stores its results in the report's data) and note how it went in `sections`:
        skipped with the reason when it would overrun the budget, its error recorded (and the run going on) when
        it fails."""
        elapsed = self.budget.elapsed()
        if not self.budget.allows(estimate_s):
            status = {"skipped": f"time budget: {elapsed:.0f} s used, about {estimate_s:.0f} s needed"}
        else:
            print(f"[{elapsed:6.1f} s] {name} ...", flush=True)
            try:
                run()
                status = {"seconds": round(self.budget.elapsed() - elapsed, 1)}
            except Exception as error:  # a benchmark section failing must not lose the others' numbers
                status = {"error": f"{type(error).__name__}: {error}"[:2000]}
                self.data["errors"].append({"section": name, "traceback": traceback.format_exc()[-4000:]})
                print(traceback.format_exc(), file=sys.stderr, flush=True)
            free_device_memory()
        self.data["sections"][name] = status
        self.save()


def without_per_item(value):
    """The report without the per-item lists (PER_ITEM keys) that agreement is computed from."""
    if isinstance(value, dict):
        return {key: without_per_item(item) for key, item in value.items() if key != PER_ITEM}
    return [without_per_item(item) for item in value] if isinstance(value, list) else value


@dataclass
class Run:
    """What every section of one benchmark run reads: the arguments, the tokenizer and items, this device's
    matmul peaks, a scratch folder for model folders, the budget and the report's data."""

    args: argparse.Namespace
    tokenizer: object
    texts: list[str]
    peaks: dict[str, float]
    work_dir: Path
    budget: Budget
    data: dict

    @property
    def vocab_floor(self) -> int:
        return len(self.tokenizer)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free_device_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- environment


def environment(device: str) -> dict:
    info = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_cuda": torch.version.cuda,
        "packages": package_versions(PACKAGES),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "compute_capability": f"{props.major}.{props.minor}",
            "driver": nvidia_smi("driver_version"),
        }
    return info


def nvidia_smi(field: str) -> str | None:
    try:
        output = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return output.stdout.strip().splitlines()[0] if output.returncode == 0 and output.stdout.strip() else None


def matmul_tflops(dtype: torch.dtype, device: str, size: int, repeats: int = 10) -> float:
    """Square `size` matmuls in `dtype`: mean rate of `repeats` products after 3 warm-ups."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    product = torch.empty(size, size, dtype=dtype, device=device)
    for _ in range(3):
        torch.matmul(a, b, out=product)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b, out=product)
    synchronize(device)
    return round(2 * size**3 * repeats / (time.perf_counter() - started) / 1e12, 3)


class ExtensionBuild:
    """`import exllamav2` JIT-compiles its CUDA extension (minutes, on the CPU cores): started in a process of its
    own at the beginning, so it compiles while the GPU runs the other sections."""

    def __init__(self):
        # Half the cores: the process driving the GPU needs some (its kernel launches are single-threaded Python).
        self.jobs = os.environ.get("MAX_JOBS", str(max(1, (os.cpu_count() or 2) // 2)))
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import exllamav2, exllamav2.ext"],
            env={**os.environ, "MAX_JOBS": self.jobs},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.result: dict = {}
        self.thread = threading.Thread(target=self._wait, daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        output, _ = self.process.communicate()
        self.result = {
            "ok": self.process.returncode == 0,
            "seconds": round(time.perf_counter() - self.started, 1),
            "jobs": f"{self.jobs} compile jobs of {os.cpu_count()} cores, alongside the first sections",
            "log_tail": output[-3000:],
        }

    def wait(self, timeout_s: float) -> dict:
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            return {"ok": False, "seconds": round(time.perf_counter() - self.started, 1), "log_tail": "still building"}
        return self.result


# --------------------------------------------------------------------------------------------------------- models


def shape_config(name: str, tiny: bool, vocab_floor: int) -> dict:
    config = dict(SHAPES[name])
    if tiny:
        config |= TINY_SHAPE | {"num_key_value_heads": TINY_KV_HEADS}
    config["vocab_size"] = max(config["vocab_size"], vocab_floor)
    return config


def random_model(config: dict, dtype: torch.dtype, device: str, seed: int = 0):
    """A causal LM of this configuration with random weights (transformers' own initialisation), built on `device`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    params = dict(config)
    hf_config = AutoConfig.for_model(params.pop("model_type"), **params)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    return model


def model_entry(config: dict, model) -> dict:
    return {
        "weights": RANDOM_WEIGHTS,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "config": config,
    }


def model_folder(config: dict, tokenizer_dir: Path, folder: Path, device: str) -> dict:
    """Write a random-weight fp16 model folder (config, safetensors, tokenizer) that both backends read."""
    started = time.perf_counter()
    model = random_model(config, torch.float16, device)
    entry = model_entry(config, model)
    model.save_pretrained(folder)
    del model
    for file in tokenizer_dir.iterdir():
        if file.is_file() and not (folder / file.name).exists():
            shutil.copy2(file, folder / file.name)
    return entry | {"folder_dtype": "float16", "build_and_save_s": round(time.perf_counter() - started, 1)}


# ------------------------------------------------------------------------------------------------- categorisation


def make_categorizer(backend: str, model_dir: Path, dtype: str | None, device: str, batch_size: int):
    if backend == "transformers":
        from newsllm_pipeline.categorizer.transformers_backend import TransformersCategorizer

        return TransformersCategorizer(str(model_dir), device=device, dtype=dtype, batch_size=batch_size)
    from newsllm_pipeline.categorizer.exllamav2_backend import ExLlamaV2Categorizer

    return ExLlamaV2Categorizer(str(model_dir), batch_size=batch_size)


def backlog(categorizer, texts: list[str], device: str, cap_s: float, chunk: int = 256) -> tuple[list, float]:
    """Categorise `texts` in chunks until done or `cap_s` has passed: (results so far, seconds)."""
    results, started = [], time.perf_counter()
    for start in range(0, len(texts), chunk):
        results += categorizer.categorize(texts[start : start + chunk])
        if time.perf_counter() - started > cap_s:
            break
    synchronize(device)
    return results, time.perf_counter() - started


def top_two_gap(result) -> float | None:
    probabilities = sorted(getattr(result, "probabilities", {}).values(), reverse=True)
    return probabilities[0] - probabilities[1] if len(probabilities) > 1 else None


def categorisation_run(ctx: Run, backend: str, model_dir: Path, dtype: str | None, flops: dict) -> dict:
    """Load one backend and measure it: a batch of 10 (median of 5 different batches) and the backlog. The first
    transformers run of a shape counts its FLOPs per item into `flops` (`harness.model_flops`: the same model and
    prompt for every backend)."""
    device, texts = ctx.args.device, ctx.texts
    batch_sizes = (DEFAULT_BATCH_SIZE,) if backend == "exllamav2" else ctx.args.batch_sizes
    with peak_device_memory(device) as memory:
        started = time.perf_counter()
        categorizer = make_categorizer(backend, model_dir, dtype, device, batch_sizes[0])
        run = {"backend": backend, "dtype": dtype or "float16", "load_s": round(time.perf_counter() - started, 1)}
        if device.startswith("cuda"):
            run["loaded_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)  # weights (and exllamav2's cache)
        if backend == "transformers" and not flops:
            flops.update(model_flops(categorizer, texts))
        peak = ctx.peaks["bfloat16" if dtype == "bfloat16" else "float16"]
        categorizer.categorize(texts[:10])  # warm-up: kernels, allocator
        batch_seconds = []
        for batch in range(5):
            started = time.perf_counter()
            categorizer.categorize(texts[10 * batch : 10 * batch + 10])
            synchronize(device)
            batch_seconds.append(time.perf_counter() - started)
        run["batch_of_10_items_per_s"] = round(10 / statistics.median(batch_seconds), 2)
        run["backlog"] = []
        for batch_size in batch_sizes:
            categorizer.batch_size = batch_size
            results, seconds = backlog(categorizer, texts, device, ctx.args.cap_s)
            items_per_s = len(results) / seconds
            run["backlog"].append(
                {
                    "batch_size": batch_size,
                    "items": len(results),
                    "seconds": round(seconds, 2),
                    "items_per_s": round(items_per_s, 2),
                    "items_per_hour": round(items_per_s * 3600),
                    "mfu": round(items_per_s * flops["flop_per_item"] / (peak * 1e12), 4) if flops else None,
                }
            )
    run["peak_memory_gib"] = memory.get(PEAK_KEY)
    run["errors"] = sum(not hasattr(result, "categoria") for result in results)
    run[PER_ITEM] = [(getattr(result, "categoria", None), top_two_gap(result)) for result in results]
    return run


def agreement(first: dict, second: dict, near_tie: float = 0.02) -> dict:
    """Share of items both runs put in the same category, over all items they both categorised and over those
    whose top two categories are at least `near_tie` apart in both (where rounding cannot decide)."""
    # A backlog cut short by --cap-s holds fewer items: the comparison covers those both runs categorised.
    pairs = [(a, b, gap_a, gap_b) for (a, gap_a), (b, gap_b) in zip(first[PER_ITEM], second[PER_ITEM], strict=False)]
    clear = [(a, b) for a, b, gap_a, gap_b in pairs if min(gap_a or 0, gap_b or 0) >= near_tie]
    return {
        "items": len(pairs),
        "same_category": round(sum(a is not None and a == b for a, b, *_ in pairs) / len(pairs), 4) if pairs else None,
        "near_ties": len(pairs) - len(clear),
        "same_category_without_near_ties": round(sum(a == b for a, b in clear) / len(clear), 4) if clear else None,
        "near_tie": f"top two category probabilities closer than {near_tie} in either run",
    }


def categorise(ctx: Run, shape: str, plan: list[tuple[str, str, str | None]]) -> None:
    """Build the shape's fp16 folder once, then run each (label, backend, dtype) of `plan` on the same items."""
    result = ctx.data["categorisation"].setdefault(shape, {"runs": {}, "flops": {}})
    folder = ctx.work_dir / shape
    if not folder.exists():
        config = shape_config(shape, ctx.args.tiny, ctx.vocab_floor)
        result["model"] = model_folder(config, ctx.args.tokenizer, folder, ctx.args.device)
    for label, backend, dtype in plan:
        result["runs"][label] = categorisation_run(ctx, backend, folder, dtype, result["flops"])
        runs = list(result["runs"])
        result["agreement"] = {
            f"{a} vs {b}": agreement(result["runs"][a], result["runs"][b])
            for i, a in enumerate(runs)
            for b in runs[i + 1 :]
        }


def categorise_with_exllamav2(ctx: Run, build: ExtensionBuild | None) -> None:
    if build is None:
        ctx.data["exllamav2"] = {"skipped": "exllamav2 needs CUDA: `import exllamav2` compiles CUDA kernels"}
        return
    ctx.data["exllamav2"] = status = build.wait(timeout_s=max(0.0, ctx.budget.seconds - 150 - ctx.budget.elapsed()))
    if not status["ok"]:
        raise RuntimeError(f"the exllamav2 extension did not build: {status['log_tail'][-500:]}")
    for shape, estimate_s in (("smollm2-135m", 40), ("mistral-7b", 100)):
        if ctx.budget.allows(estimate_s):
            categorise(ctx, shape, [("exllamav2 fp16", "exllamav2", None)])
        else:
            status.setdefault("skipped_for_time", []).append(shape)


# ------------------------------------------------------------------------------------------------------- training


def long_records(texts: list[str], tokenizer, count: int, max_length: int) -> list[dict]:
    """Summarisation-style chat examples from the news texts: a prompt of several news items (a half to three
    quarters of max_length) and a completion of about an eighth, so the `gpu` profile's rows are mostly full (at
    2048: 1,400 to 2,048 tokens after truncation, mean 1,710, 18 % of them completion)."""
    records, cursor = [], 0

    def take(target: int) -> str:
        nonlocal cursor
        parts, tokens = [], 0
        while tokens < target:
            text = texts[cursor % len(texts)]
            cursor += 1
            parts.append(text)
            tokens += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        return "\n\n".join(parts)

    for index in range(count):
        prompt_tokens = int(max_length * (0.5 + 0.25 * (index % 5) / 4))
        prompt = "Resume estas noticias en un párrafo:\n\n" + take(prompt_tokens)
        completion = take(max_length // 8)
        records.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": completion}],
            }
        )
    return records


def training_flops(peft_model, lengths: list[int], completion_share: float) -> dict:
    """Model FLOPs per real token (see the module docstring) and the recomputation gradient checkpointing adds."""
    base = peft_model.get_base_model()
    config = base.config
    lora = sum(parameter.numel() for parameter in peft_model.parameters() if parameter.requires_grad)
    frozen_linear = sum(
        module.weight.numel()
        for name, module in base.model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    )
    head = base.get_output_embeddings().weight.numel()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = config.num_attention_heads * head_dim
    # Causal attention forward per sequence of length L: QK^T and AV over L^2/2 pairs, 2 FLOPs each: 2 L^2 width.
    attention_forward = 2 * config.num_hidden_layers * width * sum(n * n for n in lengths) / sum(lengths)
    per_token = 4 * frozen_linear + 6 * lora + 3 * attention_forward + 4 * head * completion_share
    return {
        "model_flop_per_token": per_token,
        "recompute_flop_per_token": 2 * frozen_linear + 2 * lora + attention_forward,
        "frozen_linear_parameters": frozen_linear,
        "lora_parameters": lora,
        "lm_head_parameters": head,
        "completion_share": round(completion_share, 3),
        "mean_length": round(sum(lengths) / len(lengths), 1),
    }


def step_timer(device: str, warmup_steps: int):
    """A trainer callback that times the optimiser steps after `warmup_steps` (the device synchronised at both
    ends), counts their real tokens (`TokenCounter`, attached to the model) and keeps the logged losses."""
    from transformers import TrainerCallback

    from newsllm_pipeline.training.trainer import TokenCounter

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.tokens, self.seconds, self.timed_tokens, self.losses, self.started = TokenCounter(), 0.0, 0, [], 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.tokens.real = self.tokens.processed = 0
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            if state.global_step > warmup_steps:
                self.seconds += time.perf_counter() - self.started
                self.timed_tokens += self.tokens.real

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    return StepTimer()


def train(ctx: Run, label: str, precision_name: str, overrides: dict) -> None:
    """Train the Phi-4-mini shape with `build_trainer` for warm-up + timed optimiser steps."""
    from newsllm_pipeline.training.lora import PROFILES, Precision, learnable_records, tokenized_ids
    from newsllm_pipeline.training.trainer import build_trainer, lora_model, parameter_dtypes

    args, tokenizer = ctx.args, ctx.tokenizer
    precision = Precision(precision_name)
    steps = args.warmup_steps + (args.fp16_steps if precision_name == "fp16" else args.train_steps)
    shape_overrides = {**(args.tiny_training if args.tiny else {}), **overrides}
    settings = PROFILES["gpu"].with_overrides(max_steps=steps, save_steps=1_000_000, logging_steps=1, **shape_overrides)
    config = shape_config("phi-4-mini", args.tiny, ctx.vocab_floor)
    with peak_device_memory(args.device) as memory:
        base = random_model(config, precision.base_dtype, args.device)
        ctx.data["training"][label] = run = {
            "shape": "phi-4-mini",
            "model": model_entry(config, base),
            "precision": precision_name,
            "settings": {k: getattr(settings, k) for k in ("rank", "alpha", "learning_rate", "batch_size")}
            | {
                "gradient_accumulation_steps": settings.gradient_accumulation_steps,
                "max_length": settings.max_length,
                "gradient_checkpointing": settings.gradient_checkpointing,
            },
        }
        if precision_name == "fp16" and not args.device.startswith("cuda"):
            # fp16 autocast and loss scaling need CUDA: the CPU dry run checks the dtype plan only.
            run["parameter_dtypes"] = parameter_dtypes(lora_model(base, settings))
            run["skipped"] = "fp16 training needs CUDA (autocast with loss scaling); dtype plan only"
            return
        examples = settings.batch_size * settings.gradient_accumulation_steps * steps
        learnable = learnable_records(
            long_records(ctx.texts, tokenizer, examples, settings.max_length), tokenizer, settings.max_length
        )
        lengths = [min(len(tokenized_ids(tokenizer, record)[1]), settings.max_length) for record in learnable.records]
        timer = step_timer(args.device, args.warmup_steps)
        with tempfile.TemporaryDirectory() as work_dir:
            trainer = build_trainer(
                base, tokenizer, learnable.records, settings, Path(work_dir), args.device, precision, [timer]
            )
            timer.tokens.attach(trainer.model)
            run["parameter_dtypes"] = parameter_dtypes(trainer.model)
            flops = training_flops(trainer.model, lengths, learnable.completion_tokens / learnable.tokens)
            trainer.train()
            scaler = getattr(trainer.accelerator, "scaler", None)
            run["loss_scale"] = scaler.get_scale() if scaler is not None else None
            run["training_device"] = {"device": str(trainer.args.device), "n_gpu": trainer.args.n_gpu}
    tokens_per_s = timer.timed_tokens / timer.seconds
    peak = ctx.peaks["float16" if precision_name == "fp16" else "bfloat16"]
    run |= {
        "timed_steps": steps - args.warmup_steps,
        "seconds": round(timer.seconds, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "samples_per_s": round(tokens_per_s / flops["mean_length"], 3),
        "model_tflops_per_s": round(tokens_per_s * flops["model_flop_per_token"] / 1e12, 2),
        "mfu": round(tokens_per_s * flops["model_flop_per_token"] / (peak * 1e12), 4),
        "hardware_flops_utilisation": round(
            tokens_per_s * (flops["model_flop_per_token"] + flops["recompute_flop_per_token"]) / (peak * 1e12), 4
        ),
        "peak_memory_gib": memory.get(PEAK_KEY),
        "losses": timer.losses,
        "flops": flops,
    }


# ----------------------------------------------------------------------------------------------------------- main


def scratch_dir() -> Path:
    """Where the model folders go: /dev/shm (memory) when it has room for the 7B folder (15 GB, written and read
    at memory speed), else the temporary folder."""
    shm = Path("/dev/shm")
    room = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 40 * 2**30
    return Path(tempfile.mkdtemp(prefix="newsllm-gpu-", dir=shm if room else None))


def load_texts(items_file: Path, count: int) -> tuple[list[str], int]:
    """`count` item texts: the file's texts in order, repeated as needed; and how many are unique."""
    texts = [json.loads(line)["text"] for line in items_file.read_text(encoding="utf-8").splitlines() if line]
    return [texts[index % len(texts)] for index in range(count)], len(texts)


def write_bundle(bundle: Path) -> None:
    """The tokenizer and the items the GPU machine reads (it has neither the packaged model nor feedparser)."""
    from transformers import AutoTokenizer

    from newsllm_pipeline.categorizer import item_text
    from newsllm_pipeline.feeds import parse_feed
    from newsllm_pipeline.files import read_jsonl
    from newsllm_pipeline.models import prepare_base_model
    from newsllm_pipeline.resources.noticias import PACKAGED_CALIBRATION
    from newsllm_pipeline.settings import feed_sources

    AutoTokenizer.from_pretrained(prepare_base_model()).save_pretrained(bundle / "tokenizer")
    rows = [row for source in feed_sources() for row in parse_feed(source)[0]] + read_jsonl(PACKAGED_CALIBRATION)
    texts = [text for row in rows if (text := item_text(row.get("titulo"), row.get("resumen")))]
    with open(bundle / "items.jsonl", "w", encoding="utf-8") as file:
        file.writelines(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts)
    print(f"wrote {bundle / 'tokenizer'} and {len(texts)} items to {bundle / 'items.jsonl'}")


def summary(data: dict) -> str:
    lines = [f"GPU benchmark on {data['environment'].get('gpu', data['device'])} ({data['mode']}), random weights"]
    lines.append(f"matmul peak TFLOP/s: {data.get('matmul_tflops')}")
    for shape, result in data.get("categorisation", {}).items():
        for label, run in result.get("runs", {}).items():
            for entry in run.get("backlog", []):
                lines.append(
                    f"categorise {shape:13} {label:18} batch {entry['batch_size']:3}: {entry['items_per_s']:9.1f} "
                    f"items/s ({entry['items_per_hour']:>10,}/h), MFU {entry['mfu']}, batch of 10: "
                    f"{run['batch_of_10_items_per_s']} items/s, peak {run['peak_memory_gib']} GiB"
                )
        for pair, value in result.get("agreement", {}).items():
            lines.append(f"agreement {shape} {pair}: {value['same_category']} ({value['near_ties']} near ties)")
    for name, run in data.get("training", {}).items():
        if "mfu" in run:
            lines.append(
                f"train {name:22} {run['tokens_per_s']:9.0f} tokens/s, {run['samples_per_s']} samples/s, MFU "
                f"{run['mfu']:.1%}, peak {run['peak_memory_gib']} GiB, frozen {list(run['parameter_dtypes']['frozen'])}"
            )
        else:
            lines.append(f"train {name}: {run.get('skipped') or run.get('error')}")
    lines.append(f"goals: {data.get('goals')}")
    return "\n".join(lines)


def goals(data: dict) -> dict:
    seven_b = data["categorisation"].get("mistral-7b", {}).get("runs", {})
    rates = [entry for run in seven_b.values() for entry in run.get("backlog", [])]
    best = max(rates, key=lambda entry: entry["items_per_hour"], default=None)
    training = data["training"].get("gpu profile, bf16", {})
    return {
        "categorisation_7b_items_per_hour": {
            "goal": CATEGORISATION_GOAL_PER_HOUR,
            "best": best and best["items_per_hour"],
            "mfu": best and best["mfu"],
            "met": bool(best and best["items_per_hour"] >= CATEGORISATION_GOAL_PER_HOUR),
        },
        "training_mfu_phi_4_mini": {
            "goal": TRAINING_MFU_GOAL,
            "measured": training.get("mfu"),
            "met": bool(training.get("mfu") and training["mfu"] >= TRAINING_MFU_GOAL),
        },
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--device", default="cuda", help="'cuda' (the benchmark) or 'cpu' (with --tiny: a dry run)")
    parser.add_argument("--tiny", action="store_true", help="two-layer shapes, few items and steps: the dry run")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--items-file", type=Path, default=BUNDLE / "items.jsonl")
    parser.add_argument("--tokenizer", type=Path, default=BUNDLE / "tokenizer")
    parser.add_argument("--train-steps", type=int, default=3, help="timed optimiser steps (16 examples each)")
    parser.add_argument("--fp16-steps", type=int, default=2)
    parser.add_argument("--warmup-steps", type=int, default=1)
    parser.add_argument("--budget-s", type=float, default=450, help="skip sections that would end later than this")
    parser.add_argument("--cap-s", type=float, default=60, help="stop a backlog run after this many seconds")
    parser.add_argument("--bundle", action="store_true", help="write the tokenizer and items into .gpu-bundle")
    args = parser.parse_args()
    args.batch_sizes = (16, 128) if args.device.startswith("cuda") else (16,)
    if args.tiny:
        args.items = min(args.items, 40)
        args.tiny_training = {"max_length": 256, "gradient_accumulation_steps": 2}
    return args


def main() -> None:
    args = parse_args()
    if args.bundle:
        write_bundle(BUNDLE)
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device here: run on the GPU machine, or use --device cpu --tiny for a dry run")
    from transformers import AutoTokenizer

    budget = Budget(args.budget_s)
    build = ExtensionBuild() if args.device.startswith("cuda") else None
    texts, unique = load_texts(args.items_file, args.items)
    size = 8192 if args.device.startswith("cuda") else 512
    peaks = {
        str(dtype).removeprefix("torch."): matmul_tflops(dtype, args.device, size)
        for dtype in (torch.bfloat16, torch.float16)
    }
    data = {
        "benchmark": "gpu",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "tiny dry run" if args.tiny else "full",
        "device": args.device,
        "environment": environment(args.device),
        "weights": "every model is built here from the configuration in benchmarks/gpu.py with random weights "
        "(transformers' initialisation, seed 0): speeds and memory are real, categories mean nothing; agreement "
        "between backends measures numerical consistency on identical weights",
        "matmul_tflops": peaks,
        "matmul": f"{size}^3 products, mean of 10 after 3 warm-ups, per dtype",
        "items": {"count": len(texts), "unique": unique, "source": str(args.items_file)},
        "sections": {},
        "training": {},
        "categorisation": {},
        "errors": [],
    }
    report = Report(args.out, data, budget)
    report.save()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    ctx = Run(args, tokenizer, texts, peaks, scratch_dir(), budget, data)
    data["model_folders"] = str(ctx.work_dir)
    transformers_bf16 = ("transformers bf16", "transformers", "bfloat16")
    transformers_fp16 = ("transformers fp16", "transformers", "float16")
    try:
        report.section("train: gpu profile, bf16", 60, lambda: train(ctx, "gpu profile, bf16", "bf16", {}))
        report.section("categorise: mistral-7b", 100, lambda: categorise(ctx, "mistral-7b", [transformers_bf16]))
        report.section("train: fp16 (T4 path)", 45, lambda: train(ctx, "fp16 (T4 path)", "fp16", {}))
        both = [transformers_bf16, transformers_fp16]
        report.section("categorise: smollm2-135m", 40, lambda: categorise(ctx, "smollm2-135m", both))
        report.section("categorise: exllamav2", 60, lambda: categorise_with_exllamav2(ctx, build))
        micro_batches = {"batch_size": 4, "gradient_accumulation_steps": 4}
        report.section(
            "train: micro-batches 4 x 4", 45, lambda: train(ctx, "micro-batches 4 x 4", "bf16", micro_batches)
        )
        report.section("categorise: mistral-7b fp16", 60, lambda: categorise(ctx, "mistral-7b", [transformers_fp16]))
    finally:
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
    data["goals"] = goals(data) if not args.tiny else "not applicable: tiny shapes"
    data["elapsed_s"] = round(budget.elapsed(), 1)
    data["dagster_imported"] = "dagster" in sys.modules
    report.save()
    print(summary(data))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
