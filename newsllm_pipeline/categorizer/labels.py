"""Label scoring shared by the backends: the category token trie and the maths on its log-probs.

A category's score is the log-likelihood of its tokens after the prompt. All categories are scored in
the same forward pass: their token sequences form a trie, each trie node is one extra input token that
attends to the item and to its own ancestors only, so shared prefixes are computed once and each
category costs its length minus one token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..files import sha256_hex, write_text_atomically
from ..settings import PROJECT_HOME
from .answers import CategorizationError, Prediction
from .prompt import FEW_SHOT_EXAMPLES, SYSTEM_PROMPT, build_prompt

EMPTY_ITEM = "the item has neither titulo nor resumen"


@dataclass(frozen=True)
class LabelTrie:
    """Token trie of the categories.

    nodes:      one entry per proper prefix of a category's tokens (length >= 1): its last token.
    depths:     1-based length of each node's prefix (a node sits `depth` positions after the item).
    parents:    index of the node's parent node, or -1 for a depth-1 node.
    sources:    for each category and each of its tokens, which logits predict that token:
                0 = the item's last position, k = node k - 1.
    targets:    the token each (category, step) must produce; padded steps hold 0.
    valid:      which (category, step) entries are real.
    """

    labels: tuple[str, ...]
    nodes: tuple[int, ...]
    depths: tuple[int, ...]
    parents: tuple[int, ...]
    sources: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def build(cls, labels: Sequence[str], token_ids: Sequence[Sequence[int]]) -> LabelTrie:
        if len(set(map(tuple, token_ids))) != len(labels):
            raise ValueError("two categories tokenise to the same tokens; rename one of them")
        node_of: dict[tuple[int, ...], int] = {}
        nodes, depths, parents = [], [], []
        steps = max(len(ids) for ids in token_ids)
        sources = torch.zeros(len(labels), steps, dtype=torch.long)
        targets = torch.zeros(len(labels), steps, dtype=torch.long)
        valid = torch.zeros(len(labels), steps, dtype=torch.bool)
        for row, ids in enumerate(token_ids):
            if not ids:
                raise ValueError(f"category {labels[row]!r} tokenises to nothing")
            for step, token in enumerate(ids):
                prefix = tuple(ids[:step])
                if prefix and prefix not in node_of:
                    node_of[prefix] = len(nodes)
                    nodes.append(prefix[-1])
                    depths.append(len(prefix))
                    parents.append(node_of.get(prefix[:-1], -1))
                sources[row, step] = node_of[prefix] + 1 if prefix else 0
                targets[row, step] = token
                valid[row, step] = True
        return cls(tuple(labels), tuple(nodes), tuple(depths), tuple(parents), sources, targets, valid)

    def ancestor_mask(self) -> torch.Tensor:
        """[nodes, nodes] boolean: node i may attend to node j (j is i or an ancestor of i)."""
        size = len(self.nodes)
        mask = torch.eye(size, dtype=torch.bool)
        for i in range(size):
            parent = self.parents[i]
            while parent >= 0:
                mask[i, parent] = True
                parent = self.parents[parent]
        return mask

    def label_scores(self, logprobs: torch.Tensor) -> torch.Tensor:
        """Sum each category's token log-probs. logprobs: [batch, 1 + nodes, vocab] -> [batch, labels]."""
        device = logprobs.device
        picked = logprobs[:, self.sources.to(device), self.targets.to(device)]  # [batch, labels, steps]
        return picked.masked_fill(~self.valid.to(device), 0.0).sum(dim=-1)

    def predictions(self, scores: torch.Tensor) -> list[Prediction | CategorizationError]:
        """Turn label log-likelihoods into the best category and its probability among the categories."""
        probabilities = torch.softmax(scores.double(), dim=-1)
        results: list[Prediction | CategorizationError] = []
        for row in probabilities.tolist():
            if not all(math.isfinite(p) for p in row):
                results.append(CategorizationError("the model returned non-finite scores for every category"))
                continue
            best = max(range(len(row)), key=row.__getitem__)
            results.append(Prediction(self.labels[best], row[best], dict(zip(self.labels, row, strict=True))))
        return results


class LabelScoringCategorizer:
    """What every backend shares: the prompt split around the item, item encoding, the category trie,
    batching and calibration. A backend loads its model, sets `tokenizer` and `fingerprint` (what
    identifies its weights), calls `_prepare()`, and implements `_encode_prefix` and `_score_batch`
    (rows of item token ids -> category log-likelihoods [rows, categories])."""

    categories: tuple[str, ...]
    tokenizer = None
    fingerprint: str = ""
    max_item_tokens: int = 64
    batch_size: int = 16
    # A categoriser adapter's own prompt (see categorizer/adapter.py): no examples, a shorter system message.
    few_shot: bool = True
    system_prompt: str = SYSTEM_PROMPT

    def _prepare(self) -> None:
        examples = FEW_SHOT_EXAMPLES if self.few_shot else ()
        self._prompt = build_prompt(self.tokenizer, self.categories, examples, self.system_prompt)
        self._suffix_ids = self._encode(self._prompt.suffix)
        self.trie = LabelTrie.build(self.categories, [self._encode(label) for label in self.categories])
        self._encode_prefix(self._encode(self._prompt.prefix))
        self.log_prior = torch.zeros(len(self.categories), dtype=torch.float64)

    def _calibrate(self, texts: Sequence[str]) -> None:
        """Estimate the model's prior over the categories on `texts` (cached on disk per model and prompt)."""
        if texts:
            key = json.dumps([self.fingerprint, self._prompt.prefix, self._prompt.suffix, self.max_item_tokens, *texts])
            prior = cached_prior(key, lambda: self._mean_probabilities(texts))
            self.log_prior = torch.tensor(prior, dtype=torch.float64).log()

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_prefix(self, prefix_ids: list[int]) -> None:
        raise NotImplementedError

    def _score_batch(self, items: list[list[int]]) -> torch.Tensor:
        raise NotImplementedError

    def _scores(self, texts: Sequence[str]) -> dict[int, torch.Tensor]:
        """Category log-likelihoods of each non-empty text, by position."""
        encoded = [
            (index, self._encode(text)[: self.max_item_tokens] + self._suffix_ids)
            for index, text in enumerate(texts)
            if text.strip()
        ]
        encoded.sort(key=lambda pair: len(pair[1]))  # similar lengths together: less padding
        scores = {}
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            batch_scores = self._score_batch([ids for _, ids in chunk]).double().cpu()
            scores.update((index, row) for (index, _), row in zip(chunk, batch_scores, strict=True))
        return scores

    def _mean_probabilities(self, texts: Sequence[str]) -> list[float]:
        return torch.stack([row.softmax(-1) for row in self._scores(texts).values()]).mean(0).tolist()

    def categorize(self, texts: Sequence[str]) -> list[Prediction | CategorizationError]:
        """One result per text, in order; an item that fails is a CategorizationError, not a raise.

        With calibration, each category's likelihood is divided by the model's mean probability for it
        over a category-balanced set of news (its prior), which removes the model's bias toward a
        favourite category; the confidence is the resulting probability among the categories."""
        scores = self._scores(texts)
        results: list[Prediction | CategorizationError] = [CategorizationError(EMPTY_ITEM) for _ in texts]
        if scores:
            indexes = sorted(scores)
            calibrated = torch.stack([scores[index] for index in indexes]) - self.log_prior
            for index, prediction in zip(indexes, self.trie.predictions(calibrated), strict=True):
                results[index] = prediction
        return results


def cached_prior(key: str, compute) -> list[float]:
    """The calibration prior for `key` (model, prompt, texts), computed once and kept on disk."""
    path = PROJECT_HOME / "models" / ".calibration" / f"{sha256_hex(key)[:16]}.json"
    if path.exists():
        return json.loads(path.read_text())
    prior = compute()
    write_text_atomically(path, json.dumps(prior))
    return prior
