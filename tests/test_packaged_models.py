"""The two packaged base models (SmolLM2-135M-Instruct, Gemma 3 270M), the prompt for a model without a chat
template, and which categoriser adapter the sensor's runs pick up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from newsllm_pipeline import settings
from newsllm_pipeline.categorizer import DEFAULT_CATEGORIES
from newsllm_pipeline.categorizer.adapter import PromptSettings, training_records
from newsllm_pipeline.categorizer.prompt import PLAIN_ANSWER, build_prompt
from newsllm_pipeline.models import PACKAGED_MODELS, prepare_base_model, resolve_model_dir
from newsllm_pipeline.resources.noticias import TransformersCategorizerResource


class NoTemplateTokenizer:
    """What build_prompt reads of a pretrained model's tokenizer: no chat template, a begin-of-text token."""

    chat_template = None
    bos_token = "<bos>"


def test_a_model_without_chat_template_gets_plain_turns_with_each_answer_on_its_own_line():
    parts = build_prompt(NoTemplateTokenizer(), ("Deportes", "Economía"), [("Gol en el descuento", "Deportes")])
    assert parts.prefix.startswith("<bos>Eres un editor")
    assert "Noticia: Gol en el descuento\nCategoría:\nDeportes\n\nNoticia: " in parts.prefix
    assert "Economía" in parts.prefix  # the system text names the categories
    assert parts.suffix == PLAIN_ANSWER == "\nCategoría:\n"


def test_packaged_model_names_resolve_to_their_folders(model_dir):
    assert resolve_model_dir("smollm2") == model_dir == str(PACKAGED_MODELS["smollm2"].model_dir)
    assert settings.DEFAULT_CATEGORIZER_MODEL_DIR == PACKAGED_MODELS["gemma3"].model_dir
    with pytest.raises(ValueError, match="unknown packaged model 'llama'"):
        prepare_base_model(model="llama")


@pytest.fixture(scope="session")
def gemma_dir() -> str:
    """Gemma 3 270M assembled from its chunk packages and converted (about 80 s, once)."""
    return str(prepare_base_model(model="gemma3"))


@pytest.mark.slow
def test_gemma_folder_is_a_bf16_gemma3_model_without_chat_template(gemma_dir):
    from transformers import AutoTokenizer

    config = json.loads((Path(gemma_dir) / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["dtype"] == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    assert not tokenizer.chat_template and tokenizer.model_max_length == 32768
    assert not list(Path(gemma_dir).parent.glob(".gemma-3-270m.gguf"))  # the assembled GGUF is removed


@pytest.mark.slow
def test_adapter_records_for_gemma_hold_one_begin_of_text_token_as_the_scorer_sees(gemma_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gemma_dir)
    settings_ = PromptSettings(categories=DEFAULT_CATEGORIES)
    record = training_records(tokenizer, ["El Betis gana la Copa"], ["Deportes"], settings_)[0]
    trained_ids = tokenizer(record["prompt"])["input_ids"]  # as the trainer tokenizes a plain-text prompt
    parts = build_prompt(tokenizer, DEFAULT_CATEGORIES, examples=(), system=settings_.system_prompt)
    scored_ids = tokenizer(parts.prefix + "El Betis gana la Copa" + parts.suffix, add_special_tokens=False)
    assert trained_ids.count(tokenizer.bos_token_id) == 1
    assert trained_ids == scored_ids["input_ids"]


@pytest.mark.slow
def test_gemma_few_shot_beats_chance_by_far_on_the_sample_headlines(gemma_dir):
    import csv

    from newsllm_pipeline.categorizer import Prediction
    from newsllm_pipeline.feeds import parse_feed

    labels_csv = settings.PROJECT_HOME / "data" / "feeds" / "labels.csv"
    with open(labels_csv, encoding="utf-8") as file:
        labels = {row["url"]: row["categoria"] for row in csv.DictReader(file)}
    rows = parse_feed(str(settings.PROJECT_HOME / "data" / "feeds" / "el_diario_nacional.xml"))[0][:45]
    categorizer = TransformersCategorizerResource(model_dir=gemma_dir, device="cpu")
    results = categorizer.categorize([row["titulo"] for row in rows])
    assert all(isinstance(result, Prediction) for result in results)
    right = sum(result.categoria == labels[row["url"]] for row, result in zip(rows, results, strict=True))
    assert right / len(rows) >= 0.3  # chance is 1/15; SmolLM2 few-shot scores about 0.17 here


def _adapter(folder: Path, base: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
    return folder


def test_the_current_adapter_is_used_when_it_was_trained_on_the_same_model_and_not_when_switched_off(
    model_dir, tmp_path
):
    current = _adapter(tmp_path / "current", model_dir)
    resource = TransformersCategorizerResource(model_dir=model_dir, current_adapter_dir=str(current))
    assert resource.trained_adapter() == str(current)
    off = TransformersCategorizerResource(
        model_dir=model_dir, current_adapter_dir=str(current), use_current_adapter=False
    )
    assert off.trained_adapter() is None
    other = _adapter(tmp_path / "other", str(tmp_path / "another-base"))
    assert (
        TransformersCategorizerResource(model_dir=model_dir, current_adapter_dir=str(other)).trained_adapter() is None
    )
    missing = TransformersCategorizerResource(model_dir=model_dir, current_adapter_dir=str(tmp_path / "none"))
    assert missing.trained_adapter() is None


def test_models_cli_lists_both_packaged_models_and_prepares_the_one_asked_for(model_dir):
    from click.testing import CliRunner

    from newsllm_pipeline.cli import main

    listed = CliRunner().invoke(main, ["models", "list"])
    assert listed.exit_code == 0, listed.output
    assert "gemma3 (default for categoriser)" in listed.output and "smollm2 (default for generation)" in listed.output
    assert "Gemma Terms of Use" in listed.output
    prepared = CliRunner().invoke(main, ["models", "prepare", "--model", "smollm2"])
    assert prepared.exit_code == 0 and f"smollm2 ready: {model_dir}" in prepared.output
    both = CliRunner().invoke(main, ["models", "prepare", "--model", "all", "--out", "/tmp/x"])
    assert both.exit_code != 0 and "--out needs exactly one --model" in both.output
