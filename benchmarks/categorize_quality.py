"""Categorisation quality: each packaged model x {few-shot, adapter}, on headlines alone and with their lede.

For every combination it measures, on the held-out (development) items, accuracy, macro-F1, expected
calibration error (ECE, 10 bins), accuracy on the most confident half, the mean confidence of right and of
wrong answers, and items/s over every sample item (model loading excluded). The adapters are trained here, one
per model, exactly as `categorizer_adapter` trains the demo's (the scorer's zero-shot prompt, each item with
its lede and as a headline alone, CategorizerTrainingConfig's epochs); an adapter already trained on the same
data, model and settings is reused. The review threshold the statistics use is chosen from the default model's
few-shot answers: the lowest confidence whose answers are right at least REVIEW_TARGET of the time.

Two item sets (--items), each split by a hash of the item's url (of its section page and headline where it has
no url) into training items and 20 % held out, the development split the adapters never see:

- real: data/noticias_reales/items.jsonl, real headlines (a lede where the source had one) from many outlets,
  labelled only by the outlets' own signals (url section, feed tag, section page; see its README);
- sample: the sample feeds' hand labels (data/feeds/labels.csv), hand-written items, easier and more uniform
  than real headlines.

"headline+lede" is measured on the held-out items that have a lede. items/s: over up to 200 items, after a
warm-up.

    .venv/bin/python benchmarks/categorize_quality.py [--items real|sample] [--models smollm2 gemma3] [--out PATH]

The results go into --out (default benchmarks/results/categorize.json) under "quality" -> the item set, next to
the speed benchmark's results, and are printed as a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from collections import Counter
from pathlib import Path

import torch
from tabulate import tabulate

from newsllm_pipeline import settings
from newsllm_pipeline.assets.training import CategorizerTrainingConfig
from newsllm_pipeline.categorizer import DEFAULT_CATEGORIES, Prediction, item_text
from newsllm_pipeline.categorizer.adapter import PROMPT_SETTINGS, PromptSettings, adapter_records
from newsllm_pipeline.categorizer.metrics import quality_report, review_threshold
from newsllm_pipeline.categorizer.training_set import REAL_EVAL_SHARE, split_real_items
from newsllm_pipeline.demo import gold_labels
from newsllm_pipeline.feeds import parse_feed
from newsllm_pipeline.files import read_jsonl
from newsllm_pipeline.models import PACKAGED_MODELS, packaged_model_for, resolve_model_dir
from newsllm_pipeline.resources.noticias import TransformersCategorizerResource
from newsllm_pipeline.training.lora import train_lora

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "categorize.json"
ADAPTERS_DIR = settings.PROJECT_HOME / "models" / "benchmark_adapters"
REAL_ITEMS = settings.SHIPPED_REAL_ITEMS
SPEED_ITEMS = 200
REVIEW_TARGET = 0.8
FIELDS = {
    "headline": lambda row: row["titulo"],
    "headline+lede": lambda row: item_text(row["titulo"], row["resumen"]),
}
# Issue 9's goals on real headlines (title only).
GOALS = {"few_shot_default": 0.25, "adapter": 0.50, "adapter_gain": 0.10, "items_per_s": 7.2 / 2}


def sample_items() -> list[dict]:
    """The sample feed items with a hand label."""
    gold = gold_labels()
    rows = [row for source in settings.feed_sources() for row in parse_feed(source)[0] if row["url"] in gold]
    return [{**row, "categoria": gold[row["url"]]} for row in rows]


def real_items() -> list[dict]:
    """Real headlines labelled by their outlets' own signals (data/noticias_reales)."""
    if not REAL_ITEMS.exists():
        raise SystemExit(f"{REAL_ITEMS} is missing: use --items sample")
    return read_jsonl(REAL_ITEMS)


ITEM_SETS = {
    "real": (real_items, "real headlines labelled by their outlets' own signals (data/noticias_reales)"),
    "sample": (sample_items, "sample feeds with hand labels: hand-written items, easier than real headlines"),
}


def train_adapter(model_dir: str, train: list[dict], item_set: str) -> Path:
    """The categoriser adapter for this model, trained as the `categorizer_adapter` asset trains it."""
    from transformers import AutoTokenizer

    prompt, config = PromptSettings(categories=DEFAULT_CATEGORIES), CategorizerTrainingConfig()
    records = adapter_records(
        AutoTokenizer.from_pretrained(model_dir),
        [FIELDS["headline+lede"](row) for row in train],
        [row["categoria"] for row in train],
        prompt,
        hold_out=config.early_stopping,
        seed=config.settings().seed,
    )
    name = packaged_model_for(Path(model_dir)).name
    run = train_lora(
        model_dir,
        records.training,
        ADAPTERS_DIR / item_set / name,
        config.settings(),
        extra_files={PROMPT_SETTINGS: prompt.to_json()},
        early_stopping=config.stopping(records.validation),
    )
    print(
        f"{name}: adapter {run.version} ({'reused' if run.reused else 'trained'}, "
        f"{run.record.train_runtime_s:.0f} s, {len(records.training)} examples, best step {run.record.best_step})"
    )
    return run.adapter_dir


def items_per_s(categorizer: TransformersCategorizerResource, texts: list[str]) -> float:
    """Throughput on `texts` after a short warm-up (the first batches pick their kernels)."""
    categorizer.categorize(texts[:16])
    started = time.perf_counter()
    categorizer.categorize(texts)
    return round(len(texts) / (time.perf_counter() - started), 2)


def measure(categorizer: TransformersCategorizerResource, held_out: list[dict], speed_items: list[dict]) -> dict:
    """Quality per input field on the held-out items (with a lede for "headline+lede"), and items/s per field
    on `speed_items`."""
    results = {}
    for field, text_of in FIELDS.items():
        rows = [row for row in held_out if field == "headline" or row.get("resumen")]
        truth = [row["categoria"] for row in rows]
        answers = categorizer.categorize([text_of(row) for row in rows])
        predicted = [a.categoria if isinstance(a, Prediction) else None for a in answers]
        confidences = [a.confianza if isinstance(a, Prediction) else 0.0 for a in answers]
        report = quality_report(truth, predicted, confidences).as_dict()
        report["review_threshold"] = round(
            review_threshold(confidences, [t == p for t, p in zip(truth, predicted, strict=True)], REVIEW_TARGET), 4
        )
        results[field] = {**report, "items_per_s": items_per_s(categorizer, [text_of(row) for row in speed_items])}
    return results


def evaluate(names: list[str], item_set: str = "real") -> dict:
    load, description = ITEM_SETS[item_set]
    train, held_out = split_real_items(load(), REAL_EVAL_SHARE)  # the split categorizer_training_set uses
    print(f"{len(train)} training items, {len(held_out)} held out ({description})")
    speed_items = (held_out + train)[:SPEED_ITEMS]
    combos = {}
    for name in names:
        model_dir = resolve_model_dir(name)
        adapter_dir = train_adapter(model_dir, train, item_set)
        for method, adapter in (("few-shot", None), ("adapter", str(adapter_dir))):
            categorizer = TransformersCategorizerResource(model_dir=model_dir, adapter_dir=adapter, device="cpu")
            categorizer.load()  # loading (and the calibration prior) is not timed
            combos[f"{name} {method}"] = measure(categorizer, held_out, speed_items)
            print(f"  {name} {method}: {combos[f'{name} {method}']['headline']}")
    default = packaged_model_for(Path(settings.DEFAULT_CATEGORIZER_MODEL_DIR)).name
    return {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "items": f"{description}: {len(train)} to train the adapters, {len(held_out)} held out "
        f"(url hash, {REAL_EVAL_SHARE:.0%})",
        "held_out_per_category": dict(Counter(row["categoria"] for row in held_out)),
        "torch_threads": torch.get_num_threads(),
        "default_model": default,
        "review_target": REVIEW_TARGET,
        "results": combos,
        "goals": GOALS,
    }


def summary(quality: dict) -> str:
    rows = []
    for combo, fields in quality["results"].items():
        for field, r in fields.items():
            rows.append(
                [
                    combo,
                    field,
                    f"{r['accuracy']:.0%}",
                    f"{r['macro_f1']:.2f}",
                    f"{r['ece']:.3f}",
                    f"{r['accuracy_at_half']:.0%}",
                    f"{r['mean_confidence_right'] or 0:.2f} / {r['mean_confidence_wrong'] or 0:.2f}",
                    f"{r['review_threshold']:.2f}",
                    f"{r['items_per_s']:.1f}",
                ]
            )
    headers = [
        "model, method",
        "input",
        "accuracy",
        "macro-F1",
        "ECE",
        "acc. top half",
        "conf. right/wrong",
        f"review < (acc. {quality['review_target']:.0%})",
        "items/s",
    ]
    return f"Categorisation quality: {quality['items']}\n\n" + tabulate(rows, headers=headers)


def merge_into(out: Path, item_set: str, quality: dict) -> None:
    """Keep the speed benchmark's results and the other item set's in the same file; replace this one's."""
    report = json.loads(out.read_text()) if out.exists() else {}
    report["quality"] = {**report.get("quality", {}), item_set: quality}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(PACKAGED_MODELS), choices=list(PACKAGED_MODELS))
    parser.add_argument("--items", default="real", choices=list(ITEM_SETS), help="item set (default: real)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    quality = evaluate(args.models, args.items)
    merge_into(args.out, args.items, quality)
    print(summary(quality))
    print(f"\nwritten to {args.out} (quality, {args.items})")


if __name__ == "__main__":
    main()
