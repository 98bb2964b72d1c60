"""Categoriser on ExLlamaV2 (CUDA only): EXL2, GPTQ or FP16 Llama-family folders.

Imported only when the `exllamav2` backend is chosen: `import exllamav2` JIT-compiles CUDA kernels
and fails where torch has no CUDA. Install with the `gpu` extra.

The prompt prefix is run once into the cache; for each item the cache is rewound to the prefix, the
item is appended, and each category's tokens are evaluated from the item's end, so every category
gets its exact log-likelihood, as in the transformers backend (the same trie maths).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..models import folder_fingerprint
from .labels import LabelScoringCategorizer
from .prompt import DEFAULT_CATEGORIES


def transformers5_rope_theta(model_dir: str) -> float | None:
    """The RoPE base of a folder written by transformers 5 (under `rope_parameters`, as `newsllm models prepare`
    writes the packaged model), which exllamav2 0.3 does not read: it looks for a top-level `rope_theta` and
    otherwise silently uses its architecture's default (10,000 for Llama; SmolLM2 uses 100,000). None where the
    folder has the top-level key. RoPE scaling in that layout is an error rather than a silently different model."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in config or "rope_theta" not in rope:
        return None
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"{model_dir}: RoPE scaling {rope} is in transformers 5's rope_parameters, which exllamav2 does not "
            "read: use the transformers backend, or give the folder a top-level rope_scaling"
        )
    return float(rope["rope_theta"])


class ExLlamaV2Categorizer(LabelScoringCategorizer):
    def __init__(
        self,
        model_dir: str,
        categories: Sequence[str] = DEFAULT_CATEGORIES,
        gpu_split: Sequence[float] | None = None,
        cache_type: str = "fp16",
        max_seq_len: int = 4096,
        max_item_tokens: int = 64,
        batch_size: int = 16,
        calibration_texts: Sequence[str] = (),
    ):
        if not torch.cuda.is_available():
            raise RuntimeError(
                "the exllamav2 backend needs a CUDA GPU and a CUDA build of torch; use backend 'transformers' on CPU"
            )
        try:
            from exllamav2 import ExLlamaV2, ExLlamaV2Cache, ExLlamaV2Cache_Q4, ExLlamaV2Config
        except ImportError as error:
            raise RuntimeError(f"exllamav2 is not usable here ({error}); install the `gpu` extra") from error
        from transformers import AutoTokenizer

        cache_type = cache_type.lower()  # the seed's settings said FP16 / Q4
        if cache_type not in ("fp16", "q4"):
            raise ValueError(f"unknown cache_type {cache_type!r}: use 'fp16' or 'q4'")
        self.categories = tuple(categories)
        self.max_item_tokens = max_item_tokens
        self.batch_size = batch_size
        config = ExLlamaV2Config(model_dir)
        config.max_seq_len = max_seq_len
        if (rope_theta := transformers5_rope_theta(model_dir)) is not None:
            config.rotary_embedding_base = rope_theta
        self.model = ExLlamaV2(config)
        cache_class = ExLlamaV2Cache_Q4 if cache_type == "q4" else ExLlamaV2Cache
        if gpu_split:
            self.model.load(list(gpu_split))
            self.cache = cache_class(self.model, max_seq_len=max_seq_len)
        else:
            self.cache = cache_class(self.model, max_seq_len=max_seq_len, lazy=True)
            self.model.load_autosplit(self.cache)
        # The HF tokenizer of the same folder renders the chat template; ids are the same vocabulary.
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.fingerprint = json.dumps([folder_fingerprint(model_dir), cache_type])
        self._prepare()
        self._calibrate(calibration_texts)

    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Append `ids` to the cache and return their log-probs [len(ids), vocab]."""
        logits = self.model.forward(torch.tensor([ids]), self.cache, last_id_only=False)
        return torch.log_softmax(logits[0].float(), dim=-1)

    @torch.inference_mode()
    def _encode_prefix(self, prefix_ids: list[int]) -> None:
        self.cache.current_seq_len = 0
        self.model.forward(torch.tensor([prefix_ids]), self.cache, preprocess_only=True)
        self._prefix_len = len(prefix_ids)

    @torch.inference_mode()
    def _score_batch(self, items: list[list[int]]) -> torch.Tensor:
        scores = []
        for ids in items:
            self.cache.current_seq_len = self._prefix_len
            item_end = self._prefix_len + len(ids)
            last = self._forward(ids)[-1]
            logprobs = torch.empty(1 + len(self.trie.nodes), last.shape[-1])
            logprobs[0] = last.cpu()
            for row in range(len(self.trie.labels)):
                steps = int(self.trie.valid[row].sum())
                if steps < 2:
                    continue
                self.cache.current_seq_len = item_end
                label_tokens = self.trie.targets[row, : steps - 1].tolist()
                continuation = self._forward(label_tokens).cpu()
                for step in range(1, steps):
                    logprobs[self.trie.sources[row, step]] = continuation[step - 1]
            scores.append(self.trie.label_scores(logprobs[None])[0])
        return torch.stack(scores)
