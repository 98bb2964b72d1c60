"""The LLM that categorises noticias, injected per job: backend, model folder, device, adapter."""

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from ..categorizer import DEFAULT_CATEGORIES, CategorizationError, Prediction, item_text
from ..categorizer.adapter import PromptSettings
from ..files import read_jsonl
from ..models import AdapterError, read_adapter_config, resolve_model_dir, same_model

log = logging.getLogger(__name__)

PACKAGED_CALIBRATION = Path(__file__).parent.parent / "categorizer" / "calibration_es.jsonl"


def calibration_texts(calibration: bool, calibration_file: str | None) -> tuple[str, ...]:
    """Texts of a category-balanced JSONL file (titulo, resumen): the site's, else the packaged one."""
    if not calibration:
        return ()
    path = Path(calibration_file) if calibration_file else PACKAGED_CALIBRATION
    records = read_jsonl(path)
    return tuple(item_text(record.get("titulo"), record.get("resumen")) for record in records)


@functools.cache
def load_categorizer(
    backend,
    model_dir,
    adapter_dir,
    device,
    dtype,
    categories,
    method,
    max_item_tokens,
    batch_size,
    calibration,
    calibration_file,
    gpu_split,
    cache_type,
    max_seq_len,
):
    """Load a categoriser backend once per process (demo and tests run many jobs in one process).

    An adapter trained by `categorizer_adapter` carries the prompt it was trained on; that prompt is used."""
    model_dir = resolve_model_dir(model_dir)
    prompt = {}
    adapter_prompt = PromptSettings.read(adapter_dir)
    if adapter_prompt is not None:
        if tuple(adapter_prompt.categories) != tuple(categories):
            raise ValueError(f"adapter {adapter_dir} was trained on other categories: {adapter_prompt.categories}")
        prompt = {"few_shot": adapter_prompt.few_shot, "system_prompt": adapter_prompt.system_prompt}
        max_item_tokens = adapter_prompt.max_item_tokens
        calibration = calibration and adapter_prompt.calibration
    common = dict(
        categories=categories,
        max_item_tokens=max_item_tokens,
        batch_size=batch_size,
        calibration_texts=calibration_texts(calibration, calibration_file),
    )
    if backend == "transformers":
        from ..categorizer.transformers_backend import TransformersCategorizer

        return TransformersCategorizer(
            model_dir, adapter_dir=adapter_dir, device=device, dtype=dtype, method=method, **prompt, **common
        )
    if backend == "exllamav2":
        if adapter_dir or method != "score":
            raise ValueError("the exllamav2 backend scores categories only and takes no adapter_dir")
        from ..categorizer.exllamav2_backend import ExLlamaV2Categorizer

        return ExLlamaV2Categorizer(
            model_dir, gpu_split=gpu_split, cache_type=cache_type, max_seq_len=max_seq_len, **common
        )
    raise ValueError(f"unknown categoriser backend {backend!r}: use 'transformers' or 'exllamav2'")


class CategorizerResource(dg.ConfigurableResource):
    """Loads the model once per process (in `setup_for_execution`) and categorises texts in batches.

    backend `transformers` runs any HF causal-LM folder on CPU or CUDA; `exllamav2` runs EXL2, GPTQ or
    FP16 folders on CUDA only (the `gpu` extra).
    """

    backend: str = Field(default="transformers", description="'transformers' or 'exllamav2'")
    model_dir: str = Field(description="A Hugging Face model folder (or a hub id where there is internet)")
    adapter_dir: str | None = Field(default=None, description="A PEFT LoRA adapter folder (transformers only)")
    use_current_adapter: bool = Field(
        default=True,
        description="Without adapter_dir: use the categoriser adapter `current_adapter_dir` points at, once "
        "training made one for this model_dir (NEWSLLM_USE_CURRENT_ADAPTER=0 switches it off)",
    )
    current_adapter_dir: str | None = Field(
        default=None, description="The `current` link of the categoriser adapters (categorizer_adapter writes it)"
    )
    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'…")
    dtype: str = Field(
        default="auto",
        description="transformers: 'auto' (bf16 on CUDA and on CPUs with native bf16, else fp32), "
        "'float32', 'bfloat16'",
    )
    categories: list[str] = Field(default=list(DEFAULT_CATEGORIES))
    method: str = Field(
        default="score",
        description="'score': likelihood of every category (always a valid answer, calibrated among the "
        "categories); 'generate': the original free-form answer, parsed (transformers only)",
    )
    max_item_tokens: int = Field(default=64, description="Item text (titulo, then resumen) is cut to this many tokens")
    batch_size: int = Field(default=16, description="Items per forward pass")
    calibration: bool = Field(
        default=True,
        description="Divide each category's likelihood by the model's prior for it, measured on a "
        "category-balanced set of news, so a small model stops favouring one category",
    )
    calibration_file: str | None = Field(
        default=None,
        description="JSONL (titulo, resumen) balanced over your categories; default: the packaged Spanish "
        "set, balanced over the 15 default categories",
    )
    gpu_split: list[float] | None = Field(default=None, description="exllamav2: GB per GPU; None = autosplit")
    cache_type: str = Field(default="fp16", description="exllamav2 KV cache: 'fp16' or 'q4'")
    max_seq_len: int = Field(default=4096, description="exllamav2 cache length")

    _categorizer = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.load()

    def load(self):
        """The backend: loaded on first use, shared by every resource of the same settings in this process."""
        if self._categorizer is None:
            settings = self.model_dump(exclude={"use_current_adapter", "current_adapter_dir"})
            settings["categories"] = tuple(self.categories)
            settings["gpu_split"] = tuple(self.gpu_split) if self.gpu_split else None
            adapter_dir = self.adapter_dir or self.trained_adapter()
            # `current` is a symlink that retraining moves: load (and cache) what it points at now.
            settings["adapter_dir"] = str(Path(adapter_dir).resolve()) if adapter_dir else None
            self._categorizer = load_categorizer(**settings)
        return self._categorizer

    def trained_adapter(self) -> str | None:
        """The current categoriser adapter, when one exists, use_current_adapter is on, the backend takes
        adapters, and it was trained on this model_dir (another base's adapter is skipped with a warning)."""
        current = self.current_adapter_dir
        if not (self.use_current_adapter and current and self.backend == "transformers" and Path(current).exists()):
            return None
        try:
            recorded = read_adapter_config(current).get("base_model_name_or_path")
        except AdapterError as error:
            log.warning("not using the current categoriser adapter: %s", error)
            return None
        if recorded and not same_model(recorded, resolve_model_dir(self.model_dir)):
            log.warning("skipping the categoriser adapter %s: trained on %s, not %s", current, recorded, self.model_dir)
            return None
        return current

    def categorize(self, texts: Sequence[str]) -> list[Prediction | CategorizationError]:
        return self.load().categorize(texts)
