"""The categoriser on the real packaged model: exact label scores, valid answers, failures as errors."""

from __future__ import annotations

import copy

import pytest
import torch

from newsllm_pipeline.categorizer import CategorizationError, Prediction, parse_category
from newsllm_pipeline.categorizer.labels import LabelTrie
from newsllm_pipeline.categorizer.prompt import DEFAULT_CATEGORIES, build_prompt
from newsllm_pipeline.resources.noticias import TransformersCategorizerResource

TEXTS = [
    "El Real Madrid gana la Liga tras vencer al Barcelona\nDos goles de Vinicius sentenciaron el campeonato.",
    "El Banco Central Europeo sube los tipos de interés\nLa decisión busca contener la inflación en la eurozona.",
    "Científicos descubren una nueva especie de dinosaurio en la Patagonia",
]


def reference_label_probabilities(backend, text: str) -> torch.Tensor:
    """Reference: the whole prompt through the model's ordinary causal path, then each category's tokens
    after a copy of that cache (no trie, no custom mask)."""
    prompt = build_prompt(backend.tokenizer, backend.categories)
    context = backend._encode(prompt.prefix) + backend._encode(text)[: backend.max_item_tokens] + backend._suffix_ids
    with torch.no_grad():
        out = backend.model(torch.tensor([context], device=backend.device), use_cache=True)
        scores = []
        for label in backend.categories:
            label_ids = backend._encode(label)
            logprobs = [torch.log_softmax(out.logits[0, -1].float(), dim=-1)]
            if len(label_ids) > 1:
                more = backend.model(
                    torch.tensor([label_ids[:-1]], device=backend.device),
                    past_key_values=copy.deepcopy(out.past_key_values),
                ).logits[0]
                logprobs += list(torch.log_softmax(more.float(), dim=-1))
            scores.append(sum(lp[token].item() for lp, token in zip(logprobs, label_ids, strict=True)))
    return torch.softmax(torch.tensor(scores, dtype=torch.float64), dim=-1)


@pytest.fixture(scope="module")
def exact_backend(model_dir):
    """fp32, uncalibrated: the raw label probabilities, comparable to the reference at 1e-4."""
    return TransformersCategorizerResource(model_dir=model_dir, dtype="float32", calibration=False).load()


def test_batched_trie_scoring_equals_scoring_each_category_separately(exact_backend):
    backend = exact_backend
    results = backend.categorize(TEXTS)
    for text, result in zip(TEXTS, results, strict=True):
        reference = reference_label_probabilities(backend, text)
        ours = torch.tensor([result.probabilities[label] for label in backend.categories], dtype=torch.float64)
        assert torch.allclose(ours, reference, atol=1e-4), (text, ours, reference)
        assert result.categoria == backend.categories[int(reference.argmax())]
        assert result.confianza == pytest.approx(float(reference.max()), abs=1e-4)


def test_every_answer_is_a_category_with_a_probability_and_batching_does_not_change_it(exact_backend):
    backend = exact_backend
    alone = [backend.categorize([text])[0] for text in TEXTS]
    together = backend.categorize(TEXTS + ["", "Breve"])
    for single, batched in zip(alone, together, strict=False):
        assert batched.categoria == single.categoria
        assert batched.confianza == pytest.approx(single.confianza, abs=1e-4)
    assert all(isinstance(r, Prediction) and r.categoria in DEFAULT_CATEGORIES for r in together[:3])
    assert all(sum(r.probabilities.values()) == pytest.approx(1.0) for r in together[:3])
    assert isinstance(together[3], CategorizationError) and "neither titulo nor resumen" in str(together[3])
    assert isinstance(together[4], Prediction)


def test_calibration_divides_by_the_prior_measured_once_on_the_balanced_set(model_dir, exact_backend, tmp_path):
    texts = ["Noticia de prueba número uno", "Otra noticia de prueba", "Y una tercera noticia"]
    calibration_file = tmp_path / "calibration.jsonl"
    calibration_file.write_text("".join(f'{{"titulo": "{t}"}}\n' for t in texts), encoding="utf-8")
    settings = dict(model_dir=model_dir, dtype="float32", calibration_file=str(calibration_file))
    calibrated = TransformersCategorizerResource(**settings).load()
    raw = torch.tensor([[r.probabilities[c] for c in DEFAULT_CATEGORIES] for r in exact_backend.categorize(texts)])
    prior = raw.double().mean(0)
    assert torch.allclose(calibrated.log_prior.exp(), prior, atol=1e-4)
    (result,) = calibrated.categorize([TEXTS[1]])
    (plain,) = exact_backend.categorize([TEXTS[1]])
    expected = torch.tensor([plain.probabilities[c] for c in DEFAULT_CATEGORIES], dtype=torch.float64) / prior
    expected /= expected.sum()
    assert [result.probabilities[c] for c in DEFAULT_CATEGORIES] == pytest.approx(expected.tolist(), abs=1e-4)
    # A second load (another run's process) reads the prior from disk instead of scoring the set again.
    calibrated._mean_probabilities = None
    calibrated._calibrate(texts)
    assert torch.allclose(calibrated.log_prior.exp(), prior, atol=1e-4)


def test_bf16_scoring_agrees_with_fp32(model_dir, exact_backend):
    fast = TransformersCategorizerResource(model_dir=model_dir, dtype="bfloat16", calibration=False).categorize(TEXTS)
    for bf16, fp32 in zip(fast, exact_backend.categorize(TEXTS), strict=True):
        assert max(abs(bf16.probabilities[c] - fp32.probabilities[c]) for c in DEFAULT_CATEGORIES) < 0.05


def test_custom_categories_are_the_only_possible_answers(model_dir):
    resource = TransformersCategorizerResource(
        model_dir=model_dir, categories=["Fútbol", "Baloncesto", "Tenis"], calibration=False
    )
    results = resource.categorize([TEXTS[0], "Nadal gana su decimoquinto Roland Garros"])
    assert {r.categoria for r in results} <= {"Fútbol", "Baloncesto", "Tenis"}
    assert all(set(r.probabilities) == {"Fútbol", "Baloncesto", "Tenis"} for r in results)


def test_a_generated_answer_that_names_no_category_is_an_error_not_otros(model_dir):
    resource = TransformersCategorizerResource(
        model_dir=model_dir, method="generate", categories=["Xqzvblorp", "Wrrkthmax"]
    )
    (result,) = resource.categorize([TEXTS[1]])
    assert isinstance(result, CategorizationError)
    assert "model answer names no category" in str(result)


def test_an_adapter_changes_the_answer(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(0)
    config = LoraConfig(r=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    plain = TransformersCategorizerResource(model_dir=model_dir, calibration=False).categorize(TEXTS)
    adapted = TransformersCategorizerResource(
        model_dir=model_dir, adapter_dir=str(tmp_path / "adapter"), calibration=False
    ).categorize(TEXTS)
    assert any(abs(a.confianza - p.confianza) > 1e-3 for a, p in zip(adapted, plain, strict=True))


def test_a_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist: give a Hugging Face model folder"):
        TransformersCategorizerResource(model_dir=str(tmp_path / "nope")).load()


def test_label_trie_shares_prefixes_and_sums_token_logprobs():
    trie = LabelTrie.build(["ab", "ac", "d"], [[1, 2], [1, 3], [4]])
    assert trie.nodes == (1,) and trie.depths == (1,)
    logprobs = torch.full((1, 2, 5), -10.0)
    logprobs[0, 0, 1], logprobs[0, 0, 4] = -0.1, -3.0  # after the item: token 1 likely, token 4 not
    logprobs[0, 1, 2], logprobs[0, 1, 3] = -0.2, -2.0  # after token 1
    assert trie.label_scores(logprobs)[0].tolist() == pytest.approx([-0.3, -2.1, -3.0])


def test_parse_category_finds_the_first_named_category_ignoring_accents():
    assert parse_category('{"categoria": "politica", "confianza": 0.8}', DEFAULT_CATEGORIES) == "Política"
    assert parse_category("Internacional (no Nacional)", DEFAULT_CATEGORIES) == "Internacional"
    assert parse_category("No lo sé", DEFAULT_CATEGORIES) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["transformers", "exllamav2"])
def test_cuda_backends_agree_with_the_cpu_reference(model_dir, categorizer, backend):
    cpu = categorizer.categorize(TEXTS)
    gpu = TransformersCategorizerResource(model_dir=model_dir, backend=backend, device="cuda").categorize(TEXTS)
    for on_cpu, on_gpu in zip(cpu, gpu, strict=True):
        assert on_gpu.categoria == on_cpu.categoria
        assert on_gpu.confianza == pytest.approx(on_cpu.confianza, abs=0.03)  # bf16 / fp16 rounding
