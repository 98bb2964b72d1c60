"""Categorisation benchmark: the original worker's free-form generation against label scoring.

On the same model and the same feed items, in one run, it measures for each method items/s (model
loading excluded, reported apart), peak RSS and how many items got a valid category:

- baseline: the original worker's method, one greedy free-form answer of up to 50 tokens per item with
  the category parsed from the text (`TransformersCategorizer(model_dir, method="generate")`);
- ours: every category's log-likelihood scored after a cached few-shot prompt (`method="score"`).

Each method runs in a fresh process of its own, so its peak RSS is its own. The run also measures the
machine's matmul throughput (fp32 and bf16) and counts the model FLOPs label scoring needs per item, which give
the items/s ceiling on this machine and the share of it reached (utilisation).

    .venv/bin/python benchmarks/categorize.py [--items 200] [--model DIR] [--out PATH]
    .venv/bin/python benchmarks/categorize.py --quality   # categorize_quality.py: both packaged models x methods
    make bench

Items come from NEWSLLM_FEEDS (default: the sample feeds, data/feeds/*.xml). The results are written
as JSON to --out (default benchmarks/results/categorize.json) and printed as a summary; the quality
section (`--quality`: accuracy, macro-F1 and ECE per packaged model x {few-shot, adapter} x {headline,
headline + lede}) is kept in the same file when the speed comparison runs again.
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
from harness import MATMUL_SECONDS, MATMUL_SIZE, measure_matmul_gflops, model_flops, write_report
from tabulate import tabulate

from newsllm_pipeline import settings
from newsllm_pipeline.categorizer import Prediction, item_text
from newsllm_pipeline.demo import gold_labels
from newsllm_pipeline.feeds import parse_feed
from newsllm_pipeline.models import resolve_model_dir
from newsllm_pipeline.resources.noticias import calibration_texts

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = SCRIPT.parent / "results" / "categorize.json"
# Benchmark name -> TransformersCategorizer method.
METHODS = {"baseline": "generate", "ours": "score"}
METHOD_LABELS = {"baseline": "baseline: free-form generation", "ours": "ours: label scoring"}
RATIO_GOAL = 10.0
ITEMS_PER_S_GOAL = 5.0
MATMUL_DTYPES = (torch.float32, torch.bfloat16)


def load_items(limit: int) -> tuple[list[str], list[str | None]]:
    """The first `limit` feed items as the text the categoriser reads, in feed-file order, and their
    hand labels where data/feeds/labels.csv has one."""
    sources = settings.feed_sources()
    gold = gold_labels()
    texts, labels = [], []
    for source in sources:
        rows, _ = parse_feed(source)
        texts += [item_text(row["titulo"], row["resumen"]) for row in rows]
        labels += [gold.get(row["url"]) for row in rows]
    if not texts:
        sys.exit(f"no feed items in {sources or settings.DEFAULT_FEEDS_GLOB}: add feeds or set NEWSLLM_FEEDS")
    if len(texts) < limit:
        print(f"only {len(texts)} feed items available; benchmarking those instead of {limit}", file=sys.stderr)
    return texts[:limit], labels[:limit]


def run_worker(name: str, model_dir: str, texts: list[str]) -> dict:
    """Load the categoriser, categorise every text in one call, and report on this process alone."""
    from newsllm_pipeline.categorizer.transformers_backend import TransformersCategorizer

    started = time.perf_counter()
    categorizer = TransformersCategorizer(
        model_dir, method=METHODS[name], calibration_texts=calibration_texts(True, None)
    )
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    results = categorizer.categorize(texts)
    elapsed = time.perf_counter() - started
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    categories = [result.categoria if isinstance(result, Prediction) else None for result in results]
    report = {
        "method": METHODS[name],
        "items": len(texts),
        "valid": sum(categoria is not None for categoria in categories),
        "seconds": elapsed,
        "items_per_s": len(texts) / elapsed,
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb,
        "torch_threads": torch.get_num_threads(),
        "dtype": str(categorizer.model.dtype).removeprefix("torch."),
        "categories": categories,
        "error_examples": [str(result) for result in results if not isinstance(result, Prediction)][:5],
    }
    if name == "ours":
        report["model_flops"] = model_flops(categorizer, texts)
    return report


def run_in_subprocess(name: str, model_dir: str, texts: list[str]) -> dict:
    """Run one method in a fresh Python process (texts on stdin, its report as the last stdout line)."""
    print(f"{METHOD_LABELS[name]}: {len(texts)} items in a fresh process ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--worker", name, "--model", model_dir],
        input=json.dumps(texts),
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.splitlines()[-1])


def agreement(first: list[str | None], second: list[str | None]) -> float:
    """Share of items both methods put in the same category (an item without one never agrees)."""
    same = sum(a is not None and a == b for a, b in zip(first, second, strict=True))
    return same / len(first)


def accuracy(categories: list[str | None], labels: list[str | None]) -> float | None:
    """Share of hand-labelled items given their label (an item without a category counts as wrong)."""
    pairs = [(c, label) for c, label in zip(categories, labels, strict=True) if label is not None]
    return sum(c == label for c, label in pairs) / len(pairs) if pairs else None


def build_report(
    model_dir: str, texts: list[str], labels: list, matmul_gflops: dict[str, float], baseline: dict, ours: dict
) -> dict:
    flops = ours.pop("model_flops")
    gflop_per_item = flops["flop_per_item"] / 1e9
    achieved_gflops = ours["items_per_s"] * gflop_per_item
    peak = matmul_gflops[ours["dtype"]]
    for result in (baseline, ours):
        result["accuracy"] = accuracy(result["categories"], labels)
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": model_dir,
        "n_items": len(texts),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "baseline": baseline,
        "ours": ours,
        "ratio": ours["items_per_s"] / baseline["items_per_s"],
        "agreement": agreement(baseline["categories"], ours["categories"]),
        "labelled_items": sum(label is not None for label in labels),
        "matmul_gflops": peak,
        "matmul_gflops_by_dtype": matmul_gflops,
        "matmul": f"square {MATMUL_SIZE} matmuls for {MATMUL_SECONDS:g} s after a warm-up, per dtype; "
        f"matmul_gflops is the peak of the dtype the model ran in ({ours['dtype']})",
        "model_gflop_per_item": gflop_per_item,
        "model_flops": flops,
        "ceiling_items_per_s": peak / gflop_per_item,
        "achieved_gflops": achieved_gflops,
        "utilisation": achieved_gflops / peak,
        "goals": {"ratio": RATIO_GOAL, "items_per_s": ITEMS_PER_S_GOAL},
    }


def summary(report: dict) -> str:
    def met(value: float, goal: float) -> str:
        return "met" if value >= goal else "NOT met"

    rows = [
        [
            METHOD_LABELS[name],
            f"{r['items_per_s']:.2f}",
            f"{1 / r['items_per_s']:.2f}",
            f"{r['valid']}/{r['items']}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['load_s']:.1f}",
            "–" if r["accuracy"] is None else f"{r['accuracy']:.0%}",
        ]
        for name, r in (("baseline", report["baseline"]), ("ours", report["ours"]))
    ]
    table = tabulate(rows, headers=["method", "items/s", "s/item", "valid", "peak RSS MB", "load s", "accuracy"])
    ours, flops = report["ours"], report["model_flops"]
    return "\n".join(
        [
            f"Categorisation benchmark: {report['n_items']} items, {Path(report['model']).name}, "
            f"{report['cpu_count']} CPUs, {report['torch_threads']} torch threads",
            "",
            table,
            "",
            f"speed-up            {report['ratio']:.1f}x  (goal >= {RATIO_GOAL:g}x: "
            f"{met(report['ratio'], RATIO_GOAL)})",
            f"ours items/s        {ours['items_per_s']:.2f}  (goal >= {ITEMS_PER_S_GOAL:g}: "
            f"{met(ours['items_per_s'], ITEMS_PER_S_GOAL)})",
            f"agreement           {report['agreement']:.0%} of items in the same category",
            f"accuracy            against {report['labelled_items']} hand labels (chance: 7%)",
            f"matmul peak         {report['matmul_gflops']:.1f} GFLOP/s {ours['dtype']} "
            f"({', '.join(f'{k} {v:.0f}' for k, v in report['matmul_gflops_by_dtype'].items())})",
            f"model work          {report['model_gflop_per_item']:.2f} GFLOP/item "
            f"({flops['mean_tokens_fed']:.0f} tokens fed after a "
            f"{flops['prefix_tokens']}-token cached prefix)",
            f"ceiling             {report['ceiling_items_per_s']:.1f} items/s at the matmul peak",
            f"achieved            {report['achieved_gflops']:.1f} GFLOP/s "
            f"= {report['utilisation']:.0%} utilisation of the matmul peak",
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=200, help="feed items to categorise (default: 200)")
    parser.add_argument(
        "--model",
        default=settings.setting("MODEL_DIR"),
        help="model folder (default: NEWSLLM_MODEL_DIR or the packaged SmolLM2, prepared if missing)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument(
        "--quality", action="store_true", help="measure quality per packaged model and method instead (slow: trains)"
    )
    args = parser.parse_args()
    if args.items < 1:
        parser.error("--items must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.model, json.load(sys.stdin))))
        return
    if args.quality:
        import categorize_quality  # the workers stay free of its imports (Dagster assets): their RSS is their own

        for item_set in categorize_quality.ITEM_SETS:
            quality = categorize_quality.evaluate(list(categorize_quality.PACKAGED_MODELS), item_set)
            categorize_quality.merge_into(args.out, item_set, quality)
            print(categorize_quality.summary(quality))
        return
    model_dir = resolve_model_dir(args.model)
    texts, labels = load_items(args.items)
    # Before the workers, so nothing else competes for the cores.
    matmul_gflops = {str(dtype).removeprefix("torch."): measure_matmul_gflops(dtype) for dtype in MATMUL_DTYPES}
    baseline = run_in_subprocess("baseline", model_dir, texts)
    ours = run_in_subprocess("ours", model_dir, texts)
    report = build_report(model_dir, texts, labels, matmul_gflops, baseline, ours)
    if args.out.exists() and "quality" in (previous := json.loads(args.out.read_text())):
        report["quality"] = previous["quality"]  # measured apart (--quality); kept until measured again
    write_report(report, args.out, summary(report))


if __name__ == "__main__":
    main()
