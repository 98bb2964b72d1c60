"""Held-out evaluation of an adapter against its base model: completion loss and perplexity, answers side by side."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .lora import tokenized_ids


@dataclass(frozen=True)
class CompletionLoss:
    """Mean negative log-likelihood per completion token (the loss the adapter was trained on)."""

    nll: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll) if self.tokens else float("nan")


@torch.inference_mode()
def completion_loss(model, tokenizer, records: Sequence[dict], max_length: int = 2048, batch_size: int = 8):
    """Token-weighted mean NLL of every record's completion given its prompt, as the trainer counts it."""
    encoded = []
    for record in records:
        prompt_ids, full_ids = tokenized_ids(tokenizer, record)
        full_ids = full_ids[:max_length]
        if len(full_ids) > len(prompt_ids):
            encoded.append((full_ids, len(prompt_ids)))
    encoded.sort(key=lambda pair: len(pair[0]))
    total, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad)
        labels = torch.full((len(chunk), width), -100)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, prompt_length) in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
            attention[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
        targets = labels[:, 1:].to(model.device)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        )
        total += losses.item()
        count += int((targets != -100).sum())
    return CompletionLoss(total / count if count else float("nan"), count)


@dataclass(frozen=True)
class AdapterComparison:
    base: CompletionLoss
    adapter: CompletionLoss
    answers: list[dict]  # question, reference, base, adapter

    @property
    def improved(self) -> bool:
        return self.adapter.tokens > 0 and self.adapter.nll < self.base.nll


def prompt_text(record: dict) -> str:
    prompt = record["prompt"]
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def completion_text(record: dict) -> str:
    completion = record["completion"]
    return completion if isinstance(completion, str) else completion[-1]["content"]


def compare_with_base(
    model, tokenizer, records: Sequence[dict], questions: int = 5, max_new_tokens: int = 96, max_length: int = 2048
) -> AdapterComparison:
    """`model` is a PeftModel: the base is the same weights with the adapter disabled."""
    from .inference import generate_answers

    asked = [prompt_text(record) for record in records[:questions]]
    adapter_loss = completion_loss(model, tokenizer, records, max_length)
    adapter_answers = generate_answers(model, tokenizer, asked, max_new_tokens=max_new_tokens) if asked else []
    with model.disable_adapter():
        base_loss = completion_loss(model, tokenizer, records, max_length)
        base_answers = generate_answers(model, tokenizer, asked, max_new_tokens=max_new_tokens) if asked else []
    answers = [
        {"question": question, "reference": completion_text(record), "base": base, "adapter": adapted}
        for question, record, base, adapted in zip(asked, records, base_answers, adapter_answers, strict=False)
    ]
    return AdapterComparison(base_loss, adapter_loss, answers)
