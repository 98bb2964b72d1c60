"""A categoriser adapter: training records in the scorer's own prompt, the prompt settings it is used with, and
its accuracy against the base model.

The adapter learns on a short zero-shot prompt (a one-line system message and the item: no examples, no list
of categories, which the adapter learns from the data; about 80 tokens per example instead of 800), with the
category as the completion. The scorer then reads the category likelihoods exactly where training put the
labels. `newsllm_categorizer.json` in the adapter folder tells the categoriser which prompt to use with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .prompt import build_prompt

PROMPT_SETTINGS = "newsllm_categorizer.json"
ADAPTER_SYSTEM_PROMPT = "Clasifica la noticia."


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
