"""What every benchmark shares: the machine's matmul rate measured in its own run, the model FLOPs label scoring
needs per item, the package versions it ran with, and writing its report (JSON beside a printed summary)."""

from __future__ import annotations

import importlib.metadata
import json
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from newsllm_pipeline.categorizer.prompt import build_prompt

MATMUL_SIZE = 2048
MATMUL_SECONDS = 2.0


def measure_matmul_gflops(dtype: torch.dtype, size: int = MATMUL_SIZE, seconds: float = MATMUL_SECONDS) -> float:
    """Sustained matmul throughput in `dtype` with torch's default thread count, after a warm-up."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    product = torch.empty(size, size, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b, out=product)
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        torch.matmul(a, b, out=product)
        count += 1
    return 2 * size**3 * count / elapsed / 1e9


def model_flops(categorizer, texts: list[str]) -> dict:
    """Forward FLOPs label scoring needs per item: the model's own work, without padding or masked-out
    attention (which the batched implementation also computes)."""
    model, config, tokenizer = categorizer.model, categorizer.model.config, categorizer.tokenizer

    def token_count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    prompt = build_prompt(tokenizer, categorizer.categories)
    prefix_tokens, suffix_tokens = token_count(prompt.prefix), token_count(prompt.suffix)
    trie_nodes = len(categorizer.trie.nodes)
    linear_params = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    lm_head_params = model.lm_head.weight.numel()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention_width = config.num_hidden_layers * config.num_attention_heads * head_dim
    tokens_fed, flops = [], []
    for text in texts:
        item_tokens = min(token_count(text), categorizer.max_item_tokens) + suffix_tokens
        fed = item_tokens + trie_nodes
        kv_length = prefix_tokens + item_tokens
        tokens_fed.append(fed)
        flops.append(
            2 * linear_params * fed + 2 * lm_head_params * (1 + trie_nodes) + 4 * attention_width * kv_length * fed
        )
    return {
        "counted": (
            "per item: tokens fed = item tokens (truncated to max_item_tokens) + prompt suffix + trie nodes; "
            "2 x linear-layer params x tokens fed (embedding lookup excluded); "
            "2 x lm_head params x (1 + trie nodes) (logits only where a category token is predicted); "
            "attention 4 x layers x heads x head_dim x (prefix + item + suffix tokens) x tokens fed; "
            "norms, activations, softmax and padding not counted"
        ),
        "flop_per_item": sum(flops) / len(flops),
        "mean_tokens_fed": sum(tokens_fed) / len(tokens_fed),
        "prefix_tokens": prefix_tokens,
        "suffix_tokens": suffix_tokens,
        "trie_nodes": trie_nodes,
        "max_item_tokens": categorizer.max_item_tokens,
        "linear_params": linear_params,
        "lm_head_params": lm_head_params,
        "attention_width": attention_width,
    }


def package_versions(packages: Iterable[str]) -> dict[str, str | None]:
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def write_report(report: dict, out: Path, summary: str) -> None:
    """The report as JSON at `out`, and its summary on stdout."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(summary)
    print(f"\nwritten to {out}")
