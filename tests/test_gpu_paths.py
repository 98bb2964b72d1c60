"""The GPU paths: what precision holds which weights (decided without a GPU, checked here on the real packaged
model), the plain modules the GPU benchmark runs without Dagster, and, where CUDA exists (`gpu` marker), fp16
training, training on the device asked for and the peak device memory in every GPU step's metadata."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import torch

from newsllm_pipeline.assets import training as training_assets
from newsllm_pipeline.categorizer.exllamav2_backend import transformers5_rope_theta
from newsllm_pipeline.device_memory import PEAK_KEY, peak_device_memory
from newsllm_pipeline.documents.dataset import Example, build_dataset, write_dataset
from newsllm_pipeline.resources.documents import DocumentStore
from newsllm_pipeline.resources.training import LoraTrainerResource
from newsllm_pipeline.training.lora import PROFILES, Precision, alpaca_records, resolve_precision, train_lora
from newsllm_pipeline.training.trainer import load_training_base, lora_model, parameter_dtypes
from newsllm_pipeline.training.trainer_args import cuda_index
from tests.conftest import site_devices

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and a CUDA build of torch")
TINY = {"max_steps": 2, "batch_size": 2, "max_length": 128, "save_steps": 1}
FACTS = [
    ("el puerto", "El puerto de Valencia movió 5,1 millones de contenedores el año pasado."),
    ("la huerta", "La huerta valenciana produce naranjas, alcachofas y arroz."),
    ("el metro", "La línea 10 del metro une el centro con Natzaret desde 2022."),
    ("las Fallas", "Las Fallas se celebran del 15 al 19 de marzo."),
    ("la Albufera", "La Albufera es un parque natural de 21.000 hectáreas."),
    ("la Lonja", "La Lonja de la Seda es Patrimonio de la Humanidad desde 1996."),
]


def _rows() -> list[dict]:
    return [{"instruction": f"¿Qué dice la guía sobre {topic}?", "input": "", "output": text} for topic, text in FACTS]


@pytest.mark.parametrize(
    ("precision", "device", "frozen"),
    [("fp16", "cuda", "float16"), ("bf16", "cpu", "bfloat16"), ("fp32", "cpu", "float32")],
)
def test_each_precision_holds_the_frozen_base_in_its_dtype_and_the_adapter_in_fp32(
    model_dir, precision, device, frozen
):
    """fp16 is planned for a CUDA device (as on a T4) and built on the CPU: the decision needs no GPU."""
    settings = PROFILES["gpu"]
    resolved = resolve_precision(precision, device)
    model = lora_model(load_training_base(model_dir, device, resolved, settings), settings)
    dtypes = parameter_dtypes(model)
    assert list(dtypes["frozen"]) == [frozen] and list(dtypes["trainable"]) == ["float32"]
    assert dtypes["frozen"][frozen] > 100 * 10**6  # the whole 135M base, not a part of it
    # r=128 on SmolLM2's 7 projections (q, k, v, o, gate, up, down) in 30 layers: r x (inputs + outputs)
    inputs, outputs = 576 * 6 + 1536, 576 + 192 + 192 + 576 + 1536 + 1536 + 576
    assert dtypes["trainable"]["float32"] == 30 * 128 * (inputs + outputs)


def test_fp16_trains_with_loss_scaling_and_bf16_autocasts_only_on_cuda():
    assert Precision("fp16").trainer_flags("cuda:1") == {"bf16": False, "fp16": True}
    assert Precision("bf16").trainer_flags("cuda") == {"bf16": True, "fp16": False}
    assert Precision("bf16").trainer_flags("cpu") == {"bf16": False, "fp16": False}
    with pytest.raises(ValueError, match="fp16 training needs CUDA"):
        resolve_precision("fp16", "cpu")
    assert cuda_index("cuda:1") == 1 and cuda_index("cpu") is None


def test_the_gpu_benchmark_imports_nothing_the_gpu_machine_lacks():
    """The GPU machine has no Dagster, SQLAlchemy or feedparser: the modules benchmarks/gpu.py runs must not need
    them (imported as it imports them, with the benchmarks folder on the path)."""
    modules = [
        "harness",
        "newsllm_pipeline.training.lora",
        "newsllm_pipeline.training.trainer",
        "newsllm_pipeline.training.trainer_args",
        "newsllm_pipeline.categorizer.transformers_backend",
        "newsllm_pipeline.categorizer.exllamav2_backend",
    ]
    code = (
        f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r})\n"
        f"for module in {modules!r}: __import__(module)\n"
        "print(sorted({'dagster', 'sqlalchemy', 'feedparser', 'docling'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_exllamav2_gets_the_rope_base_that_transformers_5_writes(model_dir, tmp_path):
    """exllamav2 reads only a top-level rope_theta; the packaged folder has it under rope_parameters (100,000),
    where exllamav2 would silently use Llama's 10,000 and compute another model."""
    assert transformers5_rope_theta(model_dir) == 100000.0
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for name, edit in (
        ("legacy", {"rope_theta": 100000.0}),
        ("scaled", {"rope_parameters": {"rope_theta": 5e5, "rope_type": "llama3"}}),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config | edit))
    assert transformers5_rope_theta(str(tmp_path / "legacy")) is None  # exllamav2 reads it itself
    with pytest.raises(ValueError, match="RoPE scaling .* exllamav2 does not read"):
        transformers5_rope_theta(str(tmp_path / "scaled"))


def test_peak_device_memory_is_empty_off_cuda():
    with peak_device_memory("cpu") as memory:
        torch.ones(1000)
    assert memory == {}


@pytest.mark.gpu
@needs_cuda
def test_peak_device_memory_counts_what_the_step_allocated():
    with peak_device_memory("cuda") as memory:
        block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
        del block
    assert memory[PEAK_KEY] >= 0.25


@pytest.mark.gpu
@needs_cuda
def test_fp16_training_on_cuda_keeps_the_base_in_fp16_and_learns(model_dir, tmp_path):
    """As a T4 trains: the loss scaler may skip the first steps (an overflow halves the scale), but the adapter
    must leave its initialisation (LoRA's B matrices start at zero)."""
    from safetensors.torch import load_file

    settings = PROFILES["cpu"].with_overrides(**{**TINY, "max_steps": 6})
    run = train_lora(model_dir, alpaca_records(_rows()), tmp_path, settings, device="cuda", precision="fp16")
    dtypes = run.record.parameter_dtypes
    assert list(dtypes["frozen"]) == ["float16"] and list(dtypes["trainable"]) == ["float32"]
    assert all(math.isfinite(entry["loss"]) for entry in run.log_history if "loss" in entry)
    weights = load_file(run.adapter_dir / "adapter_model.safetensors")
    assert any(tensor.abs().sum() > 0 for name, tensor in weights.items() if "lora_B" in name)


@pytest.mark.gpu
@needs_cuda
def test_training_stays_on_the_device_it_was_given(model_dir, tmp_path):
    """The last GPU ("cuda:1" on a two-GPU machine): no DataParallel, nothing allocated on the others."""
    from newsllm_pipeline.training.trainer import build_trainer

    device = f"cuda:{torch.cuda.device_count() - 1}"
    others = {index: torch.cuda.memory_allocated(index) for index in range(torch.cuda.device_count() - 1)}
    settings = PROFILES["cpu"].with_overrides(**TINY)
    precision = resolve_precision("auto", device)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = build_trainer(model_dir, tokenizer, alpaca_records(_rows()), settings, tmp_path, device, precision, [])
    trainer.train()
    assert trainer.args.device == torch.device(device) and trainer.args.n_gpu == 1
    assert {parameter.device for parameter in trainer.model.parameters()} == {torch.device(device)}
    assert {index: torch.cuda.memory_allocated(index) for index in others} == others


@pytest.mark.gpu
@needs_cuda
def test_gpu_training_steps_report_their_peak_device_memory(model_dir, tmp_path):
    examples = [Example(instruction, "", output, "Guía", instruction, False) for instruction, output in FACTS]
    dataset_dir = write_dataset(build_dataset(examples, eval_share=0.3), tmp_path / "dataset").folder
    trainer = LoraTrainerResource(
        model_dir=model_dir,
        adapters_dir=str(tmp_path / "adapters"),
        categorizer_adapters_dir=str(tmp_path / "categorizer_adapters"),
        categorizer_dataset_dir=str(tmp_path / "categorizer_dataset"),
    )
    store = DocumentStore(inbox_dir=str(dataset_dir), work_dir=str(dataset_dir), dataset_dir=str(dataset_dir))
    run_config = {
        "ops": {
            "lora_adapter": {"config": TINY},
            "adapter_evaluation": {"config": {"questions": 1, "max_new_tokens": 4}},
        }
    }
    result = dg.materialize(
        [training_assets.lora_adapter, training_assets.adapter_evaluation],
        resources={"lora_trainer": trainer, "document_store": store, **site_devices()},  # auto: card 0
        run_config=run_config,
        raise_on_error=False,  # adapter_beats_base blocks the run when a two-step adapter loses; not measured here
    )
    for step in ("lora_adapter", "adapter_evaluation"):
        metadata = result.asset_materializations_for_node(step)[0].metadata
        assert metadata[PEAK_KEY].value > 0.1, step  # at least the 135M model's weights
