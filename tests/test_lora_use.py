"""Using and exporting LoRA adapters on the packaged SmolLM2-135M-Instruct (tied input/output embeddings).

Training takes minutes here, so the adapters are made directly with PEFT: LoRA layers whose B matrices get
small seeded random values (PEFT initialises B to zero, which would make the adapter a no-op).
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from newsllm_pipeline.cli import main
from newsllm_pipeline.models import AdapterError
from newsllm_pipeline.training.inference import (
    EXPORT_INFO,
    export_merged,
    generate_answer,
    generate_answers,
    load_for_generation,
)

QUESTION = "¿Qué hace el Banco Central Europeo con los tipos de interés?"


def save_random_adapter(model, folder, target_modules, seed=0, **lora_options):
    """A LoRA adapter on `model` with non-zero B matrices, saved as a PEFT folder. (On embeddings PEFT
    zeroes A instead, so there A gets the random values.)"""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=target_modules, task_type="CAUSAL_LM", **lora_options)
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "lora_embedding_A" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    peft_model.save_pretrained(folder)
    return folder


def load_base(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def linear_adapter(model_dir, tmp_path_factory):
    """LoRA on every linear layer (PEFT's all-linear: lm_head excluded), as the training profiles do."""
    return save_random_adapter(load_base(model_dir), tmp_path_factory.mktemp("linear"), "all-linear")


@pytest.fixture(scope="module")
def head_adapter(model_dir, tmp_path_factory):
    """LoRA that also changes lm_head, which SmolLM2 ties to the input embedding."""
    with pytest.warns(UserWarning, match="tie_word_embeddings"):
        return save_random_adapter(load_base(model_dir), tmp_path_factory.mktemp("head"), ["q_proj", "lm_head"])


@pytest.fixture(scope="module")
def adapted(model_dir, linear_adapter):
    return load_for_generation(model_dir, linear_adapter, device="cpu", dtype="float32")


def logits(model, tokenizer, question=QUESTION):
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        return model(**inputs).logits.float()


def test_adapter_changes_the_model_and_disable_adapter_gives_the_base_back(model_dir, adapted, tokenizer):
    model, _ = adapted
    base_logits = logits(load_base(model_dir), tokenizer)
    adapter_logits = logits(model, tokenizer)
    with model.disable_adapter():
        disabled_logits = logits(model, tokenizer)

    assert (adapter_logits - base_logits).abs().max() > 0.5
    assert torch.equal(disabled_logits, base_logits)


def test_batched_answers_with_left_padding_equal_one_by_one_answers(adapted):
    model, tokenizer = adapted
    questions = ["¿Qué es la inflación?", "Resume en una frase qué hace un parlamento autonómico en España."]

    batched = generate_answers(model, tokenizer, questions, max_new_tokens=8)

    assert batched == [generate_answer(model, tokenizer, question, max_new_tokens=8) for question in questions]
    assert all(batched)


def test_export_reproduces_the_adapter_model_and_stays_tied(model_dir, adapted, tokenizer, linear_adapter, tmp_path):
    model, _ = adapted
    result = export_merged(model_dir, linear_adapter, tmp_path / "merged")

    exported = AutoModelForCausalLM.from_pretrained(result.path)
    with safe_open(result.path / "model.safetensors", "pt") as weights:
        keys = list(weights.keys())
    assert result.tied and exported.config.tie_word_embeddings
    assert exported.lm_head.weight is exported.model.embed_tokens.weight
    assert not any("lora" in key for key in keys) and "lm_head.weight" not in keys
    # fp32 merging rounds differently from the unmerged LoRA path: about 1e-4 after 30 layers, where the
    # adapter itself moves logits by more than 0.5.
    torch.testing.assert_close(logits(exported, tokenizer), logits(model, tokenizer), atol=5e-4, rtol=0)
    assert json.loads((result.path / EXPORT_INFO).read_text()) == {
        "base_model": model_dir,
        "adapter": str(linear_adapter),
        "dtype": "float32",
        "tied": True,
        "adapted_embeddings": [],
    }
    assert {"tokenizer.json", "generation_config.json", "config.json"} <= {p.name for p in result.path.iterdir()}
    assert result.parameters == exported.num_parameters()


def test_export_of_an_adapter_on_lm_head_unties_it_and_keeps_the_input_embedding(
    model_dir, tokenizer, head_adapter, tmp_path
):
    from peft import PeftModel

    base = load_base(model_dir)
    base_embedding = base.model.embed_tokens.weight.detach().clone()
    adapter_model = PeftModel.from_pretrained(base, head_adapter)
    adapter_logits = logits(adapter_model, tokenizer)
    # What merge_and_unload alone does: lm_head's update lands in the shared matrix, so the input
    # embedding changes too and the merged model no longer computes what the adapter model computes.
    naive = adapter_model.merge_and_unload()
    assert (logits(naive, tokenizer) - adapter_logits).abs().max() > 0.1

    result = export_merged(model_dir, head_adapter, tmp_path / "merged")

    exported = AutoModelForCausalLM.from_pretrained(result.path)
    assert not result.tied and result.adapted_embeddings == ("lm_head",)
    assert not exported.config.tie_word_embeddings
    assert torch.equal(exported.model.embed_tokens.weight, base_embedding)
    assert not torch.equal(exported.lm_head.weight, base_embedding)
    torch.testing.assert_close(logits(exported, tokenizer), adapter_logits, atol=5e-4, rtol=0)


def test_export_of_an_adapter_that_changes_both_embeddings_alike_stays_tied(model_dir, tokenizer, tmp_path):
    from peft import PeftModel

    adapter = save_random_adapter(
        load_base(model_dir), tmp_path / "adapter", ["q_proj", "embed_tokens"], ensure_weight_tying=True
    )
    adapter_logits = logits(PeftModel.from_pretrained(load_base(model_dir), adapter), tokenizer)

    result = export_merged(model_dir, adapter, tmp_path / "merged")

    exported = AutoModelForCausalLM.from_pretrained(result.path)
    assert result.tied and result.adapted_embeddings == ("model.embed_tokens", "lm_head")
    assert exported.lm_head.weight is exported.model.embed_tokens.weight
    torch.testing.assert_close(logits(exported, tokenizer), adapter_logits, atol=5e-4, rtol=0)


def test_unusable_adapter_folders_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        load_for_generation(model_dir, tmp_path / "missing", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=r"empty is not a PEFT adapter folder \(no adapter_config.json\)"):
        load_for_generation(model_dir, tmp_path / "empty", device="cpu")

    # Same vocabulary and module names, other widths: an adapter for another base model.
    other = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=49152,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    adapter = save_random_adapter(other, tmp_path / "other", "all-linear")
    with pytest.raises(AdapterError, match="adapter was trained on a different base model: .*size mismatch"):
        load_for_generation(model_dir, adapter, device="cpu")


def test_adapter_recorded_against_another_folder_loads_with_a_warning(model_dir, linear_adapter, tmp_path, caplog):
    moved = shutil.copytree(linear_adapter, tmp_path / "moved")
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/elsewhere/SmolLM2-135M-Instruct"
    (moved / "adapter_config.json").write_text(json.dumps(config))

    with caplog.at_level(logging.WARNING):
        model, _ = load_for_generation(model_dir, moved, device="cpu", dtype="float32")

    assert "was trained on /elsewhere/SmolLM2-135M-Instruct" in caplog.text
    assert hasattr(model, "disable_adapter")


def test_cli_ask_answers_with_the_adapter_and_compares_with_the_base(model_dir, linear_adapter, tmp_path):
    runner = CliRunner()
    common = ["ask", "--model", model_dir, "--adapter", str(linear_adapter), "--max-new-tokens", "8"]

    asked = runner.invoke(main, [*common, "--device", "cpu", QUESTION])
    compared = runner.invoke(main, [*common, "--compare"], input=f"{QUESTION}\n")
    missing = runner.invoke(main, ["ask", "--model", model_dir, "--adapter", str(tmp_path / "nowhere"), "hola"])

    assert asked.exit_code == 0, asked.output
    assert asked.stdout.strip()
    assert compared.exit_code == 0, compared.output
    assert compared.stdout.startswith("[base]\n") and f"[adapter: {linear_adapter}]" in compared.stdout
    assert missing.exit_code == 1 and "nowhere does not exist" in missing.output


def test_cli_export_writes_a_plain_model_folder(model_dir, linear_adapter, tmp_path):
    exported = CliRunner().invoke(
        main, ["export", "--model", model_dir, "--adapter", str(linear_adapter), "--out", str(tmp_path / "merged")]
    )

    assert exported.exit_code == 0, exported.output
    assert "134.5M parameters" in exported.stdout and "embeddings stay tied" in exported.stdout
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "merged").config.tie_word_embeddings
