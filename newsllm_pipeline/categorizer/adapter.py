"""A categoriser adapter: training records in the scorer's own prompt, the prompt settings it is used with, and
its accuracy against the base model.

The adapter learns on a short zero-shot prompt (a one-line system message and the item: no examples, no list
of categories, which the adapter learns from the data; about 80 tokens per example instead of 800), with the
category as the completion. The scorer then reads the category likelihoods exactly where training put the
labels. `newsllm_categorizer.json` in the adapter folder tells the categoriser which prompt to use with it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .prompt import build_prompt

PROMPT_SETTINGS = "newsllm_categorizer.json"
ADAPTER_SYSTEM_PROMPT = "Clasifica la noticia."
# Early stopping's validation items, held out of the training items (the real development split stays unseen).
VALIDATION_SHARE = 0.1
MIN_VALIDATION_ITEMS = 32


@dataclass(frozen=True)
class PromptSettings:
    """How the categoriser must prompt the model when this adapter is loaded."""

    categories: tuple[str, ...]
    few_shot: bool = False
    system_prompt: str = ADAPTER_SYSTEM_PROMPT
    max_item_tokens: int = 64
    calibration: bool = False  # the adapter learned the label distribution from the data

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "categories": list(self.categories)}, ensure_ascii=False, indent=1)

    @classmethod
    def read(cls, adapter_dir: str | Path | None) -> PromptSettings | None:
        path = Path(adapter_dir) / PROMPT_SETTINGS if adapter_dir else None
        if path is None or not path.exists():
            return None
        payload = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**payload, "categories": tuple(payload["categories"])})


def with_headline_only(texts: Sequence[str], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """Each item as it is and, where it has a summary, its headline alone: the `noticias` table holds both kinds
    (feeds with and without a lede), so the adapter learns from both. An item's text is the headline, a newline,
    then the summary (`item_text`)."""
    expanded = [(text, label) for text, label in zip(texts, labels, strict=True)]
    expanded += [(text.split("\n", 1)[0], label) for text, label in zip(texts, labels, strict=True) if "\n" in text]
    return [text for text, _ in expanded], [label for _, label in expanded]


def training_records(tokenizer, texts: Sequence[str], labels: Sequence[str], settings: PromptSettings) -> list[dict]:
    """Plain-text prompt/completion records: the chat-templated prompt around the item (cut to max_item_tokens
    as the scorer cuts it) and the category as the completion."""
    parts = build_prompt(tokenizer, settings.categories, examples=(), system=settings.system_prompt)
    prefix = _without_added_bos(tokenizer, parts.prefix)
    records = []
    for text, label in zip(texts, labels, strict=True):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: settings.max_item_tokens]
        records.append({"prompt": prefix + tokenizer.decode(ids) + parts.suffix, "completion": label})
    return records


def validation_split(
    labels: Sequence[str], seed: int, share: float = VALIDATION_SHARE, minimum: int = MIN_VALIDATION_ITEMS
) -> set[int]:
    """Indices of a seeded hold-out of `share` of the items (at least `minimum`), stratified by category: the
    items shuffled with the seed, grouped by category, and evenly spaced ones taken, so each category gives its
    share. Empty when there are too few items to spare (fewer than four times `minimum`)."""
    if len(labels) < 4 * minimum:
        return set()
    size = max(minimum, round(share * len(labels)))
    order = list(range(len(labels)))
    random.Random(seed).shuffle(order)
    order.sort(key=lambda index: labels[index])  # stable: shuffled within each category
    return {order[position * len(order) // size] for position in range(size)}


@dataclass(frozen=True)
class AdapterRecords:
    training: list[dict]  # each training item as it is and as its headline alone
    validation: list[dict]  # the held-out items as headlines alone, as the adapter is judged (issue 9)


def adapter_records(
    tokenizer, texts: Sequence[str], labels: Sequence[str], settings: PromptSettings, hold_out: bool, seed: int
) -> AdapterRecords:
    """The categoriser adapter's training records and, with `hold_out`, validation records for early stopping
    from a stratified `validation_split` of the items (none when the items are too few)."""
    held = validation_split(labels, seed) if hold_out else set()
    kept = [index for index in range(len(texts)) if index not in held]
    train_texts, train_labels = with_headline_only([texts[i] for i in kept], [labels[i] for i in kept])
    held_out = sorted(held)
    return AdapterRecords(
        training=training_records(tokenizer, train_texts, train_labels, settings),
        validation=training_records(
            tokenizer, [texts[i].split("\n", 1)[0] for i in held_out], [labels[i] for i in held_out], settings
        ),
    )


def _without_added_bos(tokenizer, prefix: str) -> str:
    """The prompt text without its leading begin-of-text token when the tokenizer adds that token itself
    (Gemma): the trainer tokenizes with special tokens, the scorer encodes the text as is, and both must
    see exactly one."""
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bos is not None and tokenizer.bos_token_id in tokenizer("")["input_ids"]
    return prefix[len(bos) :] if adds_bos and prefix.startswith(bos) else prefix


@dataclass(frozen=True)
class AccuracyReport:
    accuracy: float
    answered: int
    confusion: pd.DataFrame  # rows: true category, columns: predicted

    def per_category(self) -> pd.DataFrame:
        confusion = self.confusion
        correct = [confusion.at[label, label] if label in confusion.columns else 0 for label in confusion.index]
        frame = pd.DataFrame({"items": confusion.sum(axis=1), "correct": correct}, index=confusion.index)
        frame["accuracy"] = (frame["correct"] / frame["items"]).round(3)
        return frame


def accuracy_report(truth: Sequence[str], predicted: Sequence[str | None]) -> AccuracyReport:
    """Accuracy over all items (an unanswered item counts as wrong) and the confusion table."""
    pairs = [(true, guess or "(sin respuesta)") for true, guess in zip(truth, predicted, strict=True)]
    correct = sum(true == guess for true, guess in pairs)
    confusion = pd.crosstab(
        pd.Series([true for true, _ in pairs], name="categoria \\ predicha"),
        pd.Series([guess for _, guess in pairs], name=None),
    )
    return AccuracyReport(
        accuracy=correct / len(pairs) if pairs else 0.0,
        answered=sum(guess is not None for guess in predicted),
        confusion=confusion,
    )
