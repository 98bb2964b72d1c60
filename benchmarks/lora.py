"""LoRA training benchmark: throughput, memory and model-FLOPs utilisation of `train_lora`'s trainer.

The workload: the 240 sample noticias as instruction examples ("write the lede for this headline", the lede as
the answer; 50 to 200 tokens, so batches need padding), trained for a fixed number of steps on the packaged
SmolLM2-135M-Instruct with the `cpu` profile. Configurations, each in a fresh process (so its peak RSS is its own):

- padded (random batches): BATCH examples padded to the longest, in random order: the trainer's default, the
  baseline;
- packed: the BATCH examples of a step flattened into one row without padding (attention within each example
  through a block-diagonal mask over the row);
- length-grouped: batches of similar lengths (transformers' length-grouped sampler), padded to the longest:
  the profile's default;
- length-grouped + gradient checkpointing: the same, recomputing activations in the backward pass.

Counted: model FLOPs = 4 x N x T, where N is the base model's parameters (134.5 M; the tied embedding counted
once, as the LM head matmul) and T the real tokens trained (padding excluded): 2NT for the forward pass and 2NT
for the backward pass through the activations (the frozen base weights get no gradient). Not counted: attention
scores (about 1 % at these lengths), the LoRA matmuls (about 4 % of N at r=16), the recomputation of gradient
checkpointing (which is why it lowers utilisation). Utilisation = model FLOP/s divided by the peak matmul rate
measured in the same run, in the dtype the base model trains in. The first steps (warm-up) are not timed.

    .venv/bin/python benchmarks/lora.py [--steps 8] [--warmup 2] [--out PATH]
    make bench
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from harness import MATMUL_SECONDS, MATMUL_SIZE, measure_matmul_gflops, write_report
from tabulate import tabulate

from newsllm_pipeline.feeds import parse_feed
from newsllm_pipeline.models import resolve_model_dir
from newsllm_pipeline.settings import DEFAULT_MODEL_DIR, feed_sources
from newsllm_pipeline.training.lora import alpaca_records

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = SCRIPT.parent / "results" / "lora.json"
BATCH = 16
CONFIGS = {
    "padded (random batches)": {"packing": False, "group_by_length": False, "gradient_checkpointing": False},
    "packed": {"packing": True, "gradient_checkpointing": False},
    "length-grouped": {"packing": False, "group_by_length": True, "gradient_checkpointing": False},
    "length-grouped + gradient checkpointing": {
        "packing": False,
        "group_by_length": True,
        "gradient_checkpointing": True,
    },
}
BASELINE, OURS = "padded (random batches)", "length-grouped"
UTILISATION_GOAL = 0.6


def headline_records() -> list[dict]:
    """Every sample noticia as an instruction example: write the lede for this headline (lengths vary)."""
    items = [item for source in feed_sources() for item in parse_feed(source)[0] if item.get("resumen")]
    rows = [
        {"instruction": f"Escribe la entradilla de esta noticia: {item['titulo']}", "output": item["resumen"]}
        for item in items
    ]
    return alpaca_records(rows)


def run_worker(name: str, model_dir: str, steps: int, warmup: int) -> dict:
    """Train `steps` steps of configuration `name`; time the steps after `warmup` and count their tokens."""
    import tempfile

    from transformers import AutoTokenizer, TrainerCallback

    from newsllm_pipeline.training.lora import PROFILES, learnable_records, resolve_precision
    from newsllm_pipeline.training.trainer import TokenCounter, build_trainer

    records = headline_records()
    settings = PROFILES["cpu"].with_overrides(
        max_steps=steps, batch_size=BATCH, max_length=256, save_steps=10_000, **CONFIGS[name]
    )
    precision = resolve_precision("auto", "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    learnable = learnable_records(records, tokenizer, settings.max_length)
    timing = {"seconds": 0.0, "real": 0, "processed": 0, "started": 0.0}
    counter = TokenCounter()

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            counter.real = counter.processed = 0
            timing["started"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > warmup:
                timing["seconds"] += time.perf_counter() - timing["started"]
                timing["real"] += counter.real
                timing["processed"] += counter.processed

    with tempfile.TemporaryDirectory() as work_dir:
        trainer = build_trainer(
            model_dir, tokenizer, learnable.records, settings, Path(work_dir), "cpu", precision, [StepTimer()]
        )
        counter.attach(trainer.model)
        base_parameters = sum(
            parameter.numel() for name, parameter in trainer.model.named_parameters() if "lora_" not in name
        )
        trainer.train()
    mean_tokens = learnable.tokens / len(learnable.records)
    tokens_per_s = timing["real"] / timing["seconds"]
    return {
        "config": name,
        "settings": {**CONFIGS[name], "batch_size": BATCH, "max_length": settings.max_length, "rank": settings.rank},
        "precision": precision.name,
        "base_dtype": str(precision.base_dtype).removeprefix("torch."),
        "base_parameters": base_parameters,
        "timed_steps": steps - warmup,
        "seconds": round(timing["seconds"], 2),
        "real_tokens": timing["real"],
        "processed_tokens": timing["processed"],
        "padding_share": round(1 - timing["real"] / timing["processed"], 3),
        "tokens_per_s": round(tokens_per_s, 1),
        # Examples per second: real tokens per second over the mean example length.
        "samples_per_s": round(tokens_per_s / mean_tokens, 2),
        "model_gflops_per_s": round(4 * base_parameters * tokens_per_s / 1e9, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_in_subprocess(name: str, model_dir: str, steps: int, warmup: int) -> dict:
    command = [sys.executable, str(SCRIPT), "--worker", name, "--model", model_dir, "--steps", str(steps)]
    output = subprocess.run(command + ["--warmup", str(warmup)], check=True, capture_output=True, text=True)
    return json.loads(output.stdout.strip().splitlines()[-1])


def summary(report: dict) -> str:
    rows = [
        [
            run["config"],
            f"{run['tokens_per_s']:.0f}",
            f"{run['samples_per_s']:.2f}",
            f"{run['padding_share']:.0%}",
            f"{run['model_gflops_per_s']:.0f}",
            f"{run['utilisation']:.0%}",
            f"{run['peak_rss_mb']:.0f}",
        ]
        for run in report["runs"]
    ]
    table = tabulate(rows, headers=["config", "tokens/s", "samples/s", "padding", "GFLOP/s", "util.", "peak RSS MB"])
    return "\n".join(
        [
            f"LoRA training, {report['model']} ({report['base_parameters'] / 1e6:.1f} M), {report['precision']}, "
            f"{report['cpu_count']} cores, {report['timed_steps']} timed steps of {BATCH} examples",
            f"matmul peak {report['matmul_gflops']:.0f} GFLOP/s ({report['base_dtype']}); "
            + ", ".join(f"{k} {v:.0f}" for k, v in report["matmul_gflops_by_dtype"].items()),
            table,
            f"{OURS} vs {BASELINE}: {report['ours_vs_baseline']:.2f}x tokens/s; "
            f"best utilisation {report['best_utilisation']:.0%} (goal {UTILISATION_GOAL:.0%})",
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    model_dir = resolve_model_dir(args.model)
    if args.worker:
        print(json.dumps(run_worker(args.worker, model_dir, args.steps, args.warmup)))
        return
    matmul = {
        str(dtype).removeprefix("torch."): measure_matmul_gflops(dtype) for dtype in (torch.float32, torch.bfloat16)
    }
    runs = []
    for name in CONFIGS:
        print(f"training: {name} …", file=sys.stderr)
        runs.append(run_in_subprocess(name, model_dir, args.steps, args.warmup))
    peak = matmul[runs[0]["base_dtype"]]
    for run in runs:
        run["utilisation"] = round(run["model_gflops_per_s"] / peak, 3)
    by_name = {run["config"]: run for run in runs}
    report = {
        "benchmark": "lora",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": Path(model_dir).name,
        "base_parameters": runs[0]["base_parameters"],
        "precision": runs[0]["precision"],
        "base_dtype": runs[0]["base_dtype"],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "timed_steps": runs[0]["timed_steps"],
        "matmul_gflops": peak,
        "matmul_gflops_by_dtype": matmul,
        "matmul": f"square {MATMUL_SIZE} matmuls for {MATMUL_SECONDS:g} s after a warm-up, per dtype",
        "flops_counted": "4 x base parameters x real tokens (forward 2NT + backward through activations 2NT)",
        "runs": runs,
        "ours_vs_baseline": round(by_name[OURS]["tokens_per_s"] / by_name[BASELINE]["tokens_per_s"], 2),
        "best_utilisation": max(run["utilisation"] for run in runs),
    }
    write_report(report, args.out, summary(report))


if __name__ == "__main__":
    main()
