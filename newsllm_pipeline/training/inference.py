"""Using a trained LoRA adapter: answering questions with it (next to the base model), and exporting base +
adapter as one plain Hugging Face model folder.

Questions go through the tokenizer's chat template as one user message, as the training records do, so the
adapter sees at use time the prompt shape it learnt on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..files import staged_folder
from ..models import adapted_embeddings, embeddings_tied, load_adapter, merge_adapter, resolve_device, resolve_dtype

EXPORT_INFO = "newsllm_export.json"
EXPORT_DTYPES = ("float32", "bfloat16", "float16")


def load_for_generation(
    model_dir: str, adapter_dir: str | Path | None = None, device: str = "auto", dtype: str = "auto"
):
    """(model, tokenizer) for `generate_answers`. With an adapter the model is a `PeftModel`, unmerged, so
    `with model.disable_adapter():` answers as the base model without loading it twice."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, device)).to(device)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir, model_dir)
    model.eval()
    return model, tokenizer


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system: str | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """One answer per question: each question as a user message (after `system`, if given) in the chat
    template, greedy decoding (sampling at `temperature` > 0), batches left-padded. Only the new text is
    returned, without special tokens and surrounding whitespace."""
    import torch

    prefix = [{"role": "system", "content": system}] if system else []
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    answers: list[str] = []
    for start in range(0, len(questions), batch_size):
        prompts = [
            tokenizer.apply_chat_template(
                [*prefix, {"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
            )
            for question in questions[start : start + batch_size]
        ]
        # The template already holds the special tokens; left padding keeps every prompt's end where
        # generation starts.
        inputs = tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(model.device)
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id, **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers.extend(text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if progress:
            progress(len(answers), len(questions))
    return answers


def generate_answer(
    model,
    tokenizer,
    question: str,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    system: str | None = None,
) -> str:
    """The answer to one question (see `generate_answers`)."""
    return generate_answers(model, tokenizer, [question], max_new_tokens, temperature, system)[0]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    parameters: int
    size_bytes: int  # the weight files
    dtype: str
    tied: bool  # input and output embeddings share one matrix in the export
    adapted_embeddings: tuple[str, ...]  # embedding modules the adapter changes (why `tied` may be False)
    seconds: float


def export_merged(model_dir: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> ExportResult:
    """Base model + adapter merged into one Hugging Face folder (safetensors, tokenizer, generation config,
    and `newsllm_export.json`) that any transformers-compatible tool loads without PEFT. Merging happens on
    the CPU in `dtype`; the folder appears whole or not at all.

    Tied embeddings stay tied when the adapter leaves them alone (LoRA on linear layers, `all-linear`). An
    adapter that changes `lm_head` or the input embedding gets an untied export that computes what the
    adapter model computes (see `models.merge_adapter`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"unknown export dtype {dtype!r}: use one of {', '.join(EXPORT_DTYPES)}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, "cpu"))
    model = load_adapter(base, adapter_dir, model_dir)
    adapted = adapted_embeddings(model)
    merged = merge_adapter(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tied = embeddings_tied(merged)
    with staged_folder(out_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {
            "base_model": _absolute(model_dir),
            "adapter": _absolute(adapter_dir),
            "dtype": dtype,
            "tied": tied,
            "adapted_embeddings": list(adapted),
        }
        (staging / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return ExportResult(
        path=out_dir,
        parameters=merged.num_parameters(),
        size_bytes=sum(file.stat().st_size for file in out_dir.glob("*.safetensors")),
        dtype=dtype,
        tied=tied,
        adapted_embeddings=adapted,
        seconds=time.perf_counter() - started,
    )


def _absolute(folder: str | Path) -> str:
    """A local folder as an absolute path; a hub id as it is."""
    return str(Path(folder).resolve()) if Path(folder).exists() else str(folder)
