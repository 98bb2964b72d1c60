"""Categoriser on Hugging Face transformers: CPU or CUDA, any causal LM folder, optional LoRA adapter."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import torch
from transformers import DynamicCache

from ..models import folder_fingerprint, load_model
from .labels import EMPTY_ITEM, CategorizationError, LabelScoringCategorizer, Prediction
from .prompt import DEFAULT_CATEGORIES, SYSTEM_PROMPT, parse_category

GENERATE_PROMPT = (
    "Clasifica la siguiente noticia en una de estas categorías: {categories}.\n"
    'Responde solo con JSON: {{"categoria": "...", "confianza": 0.0-1.0}}\n\n{text}'
)


class TransformersCategorizer(LabelScoringCategorizer):
    """Scores every category after a cached few-shot prompt (see `labels.py`).

    `method="generate"` keeps the original worker's approach (free-form answer of up to 50 tokens,
    category parsed from the text) for comparison; answers that name no category are errors.
    """

    def __init__(
        self,
        model_dir: str,
        categories: Sequence[str] = DEFAULT_CATEGORIES,
        adapter_dir: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_item_tokens: int = 64,
        batch_size: int = 16,
        method: str = "score",
        calibration_texts: Sequence[str] = (),
        few_shot: bool = True,
        system_prompt: str = SYSTEM_PROMPT,
    ):
        if method not in ("score", "generate"):
            raise ValueError(f"unknown categorisation method {method!r}: use 'score' or 'generate'")
        self.categories = tuple(categories)
        self.method = method
        self.few_shot = few_shot
        self.system_prompt = system_prompt
        self.max_item_tokens = max_item_tokens
        self.batch_size = batch_size
        self.model, self.tokenizer = load_model(model_dir, device, adapter_dir, dtype)
        self.device = self.model.device
        self.fingerprint = json.dumps(
            [folder_fingerprint(model_dir), folder_fingerprint(adapter_dir), str(self.model.dtype)]
        )
        self._prepare()
        self._node_ids = torch.tensor(self.trie.nodes, device=self.device)
        self._node_depths = torch.tensor(self.trie.depths, device=self.device)
        self._node_mask = self.trie.ancestor_mask().to(self.device)
        if method == "score":
            self._calibrate(calibration_texts)

    @torch.inference_mode()
    def _encode_prefix(self, prefix_ids: list[int]) -> None:
        ids = torch.tensor([prefix_ids], device=self.device)
        cache = self.model(input_ids=ids, use_cache=True).past_key_values
        self._prefix_len = ids.shape[1]
        self._prefix_kv = [(layer.keys, layer.values) for layer in cache.layers]

    def categorize(self, texts: Sequence[str]) -> list[Prediction | CategorizationError]:
        if self.method == "generate":
            return [self._categorize_by_generation(text) for text in texts]
        return super().categorize(texts)

    @torch.inference_mode()
    def _score_batch(self, items: list[list[int]]) -> torch.Tensor:
        """One forward pass: each row is [item tokens, padding, trie nodes] after the shared prefix."""
        batch, longest, n_nodes, prefix = (
            len(items),
            max(map(len, items)),
            len(self.trie.nodes),
            self._prefix_len,
        )
        width = longest + n_nodes
        lengths = torch.tensor([len(ids) for ids in items], device=self.device)
        input_ids = torch.zeros(batch, width, dtype=torch.long, device=self.device)
        input_ids[:, longest:] = self._node_ids
        for row, ids in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids, device=self.device)
        columns = torch.arange(longest, device=self.device)
        position_ids = torch.cat(
            [prefix + columns.expand(batch, -1), prefix + lengths[:, None] + self._node_depths - 1], dim=1
        )
        # mask[b, query, key]: everything sees the prefix; item tokens are causal; nodes see the whole
        # item and their ancestors. Padding sees only the prefix (never read, but keeps softmax finite).
        is_item = columns[None, :] < lengths[:, None]  # [batch, longest]
        mask = torch.zeros(batch, width, prefix + width, dtype=torch.bool, device=self.device)
        mask[:, :, :prefix] = True
        causal = torch.tril(torch.ones(longest, longest, dtype=torch.bool, device=self.device))
        mask[:, :longest, prefix : prefix + longest] = causal & is_item[:, None, :] & is_item[:, :, None]
        mask[:, longest:, prefix : prefix + longest] = is_item[:, None, :]
        mask[:, longest:, prefix + longest :] = self._node_mask
        cache = DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self._prefix_kv]
        )
        hidden = self.model.model(
            input_ids=input_ids,
            attention_mask=mask[:, None],
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        # Logits only where a category token is predicted: the item's last token and each trie node.
        rows = torch.arange(batch, device=self.device)
        wanted = torch.cat([hidden[rows, lengths - 1][:, None], hidden[:, longest:]], dim=1)
        logprobs = torch.log_softmax(self.model.lm_head(wanted).float(), dim=-1)
        return self.trie.label_scores(logprobs)

    @torch.inference_mode()
    def generate_answer(self, text: str, max_new_tokens: int = 50) -> str:
        """The original worker's call: a zero-shot chat prompt and a greedy free-form answer."""
        prompt = GENERATE_PROMPT.format(categories=", ".join(self.categories), text=text)
        ids = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ).to(self.device)
        output = self.model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.eos_token_id
        )
        return self.tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)

    def _categorize_by_generation(self, text: str) -> Prediction | CategorizationError:
        if not text.strip():
            return CategorizationError(EMPTY_ITEM)
        answer = self.generate_answer(text)
        categoria = parse_category(answer, self.categories)
        if categoria is None:
            return CategorizationError(f"model answer names no category: {answer[:200]!r}")
        return Prediction(categoria, _parse_confidence(answer), {})


def _parse_confidence(answer: str) -> float | None:
    """The confidence the model wrote in its JSON answer, if it wrote a usable one."""
    try:
        value = float(json.loads(answer).get("confianza"))
    except (ValueError, TypeError, AttributeError):
        match = re.search(r"confianza\W+([01](?:\.\d+)?)", answer)
        value = float(match.group(1)) if match else None
    return value if value is not None and 0.0 <= value <= 1.0 else None
