"""Label scoring shared by the backends: the category token trie and the maths on its log-probs.

A category's score is the log-likelihood of its tokens after the prompt. All categories are scored in
the same forward pass: their token sequences form a trie, each trie node is one extra input token that
attends to the item and to its own ancestors only, so shared prefixes are computed once and each
category costs its length minus one token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .prompt import build_prompt


@dataclass(frozen=True)
class Prediction:
    categoria: str
    # Probability among the categories; None where the method gives none (a free-form answer without one).
    confianza: float | None
    # Probability of every category, for review tools and calibration.
    probabilities: dict[str, float]


class CategorizationError(Exception):
    """An item the model could not categorise (an empty text, an answer that is not a category)."""


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

    def to(self, device) -> LabelTrie:
        return replace(
            self, sources=self.sources.to(device), targets=self.targets.to(device), valid=self.valid.to(device)
        )

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
        picked = logprobs[:, self.sources, self.targets]  # [batch, labels, steps]
        return picked.masked_fill(~self.valid, 0.0).sum(dim=-1)

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
    """What every backend shares: the prompt split around the item, item encoding, the category trie
    and batching. A backend loads its model, sets `tokenizer`, calls `_prepare()`, and implements
    `_encode_prefix` and `_score_batch` (rows of item token ids -> one result per row)."""

    categories: tuple[str, ...]
    tokenizer = None
    max_item_tokens: int = 96
    batch_size: int = 16

    def _prepare(self) -> None:
        prompt = build_prompt(self.tokenizer, self.categories)
        self._suffix_ids = self._encode(prompt.suffix)
        self.trie = LabelTrie.build(self.categories, [self._encode(label) for label in self.categories])
        self._encode_prefix(self._encode(prompt.prefix))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_prefix(self, prefix_ids: list[int]) -> None:
        raise NotImplementedError

    def _score_batch(self, items: list[list[int]]) -> list[Prediction | CategorizationError]:
        raise NotImplementedError

    def categorize(self, texts: Sequence[str]) -> list[Prediction | CategorizationError]:
        """One result per text, in order; an item that fails is a CategorizationError, not a raise."""
        results: list[Prediction | CategorizationError | None] = [None] * len(texts)
        encoded = []
        for index, text in enumerate(texts):
            if not text.strip():
                results[index] = CategorizationError("the item has neither titulo nor resumen")
            else:
                encoded.append((index, self._encode(text)[: self.max_item_tokens] + self._suffix_ids))
        # Similar lengths together: less padding per forward pass.
        encoded.sort(key=lambda pair: len(pair[1]))
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start : start + self.batch_size]
            for (index, _), result in zip(chunk, self._score_batch([ids for _, ids in chunk]), strict=True):
                results[index] = result
        return results
