"""LoRA training on the real packaged model: loss on completions only, packing without cross-talk, the Dagster
assets end to end (train, reuse, evaluate), resuming an interrupted run, and the retraining schedule."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import dagster as dg
import pytest
import torch

from newsllm_pipeline.assets import training as training_assets
from newsllm_pipeline.categorizer.adapter import validation_split
from newsllm_pipeline.documents.dataset import Example, build_dataset, write_dataset
from newsllm_pipeline.files import read_jsonl
from newsllm_pipeline.models import resolve_model_dir
from newsllm_pipeline.resources.documents import DocumentStore
from newsllm_pipeline.resources.training import LoraTrainerResource
from newsllm_pipeline.training.lora import (
    PROFILES,
    TrainingRun,
    adapter_version,
    alpaca_records,
    learnable_records,
    train_lora,
)
from newsllm_pipeline.training.record import TrainingRecord
from newsllm_pipeline.training.trainer import LengthBucketSampler
from tests.conftest import site_devices

FEEDS = Path(__file__).parent.parent / "data" / "feeds"
TINY = {"max_steps": 2, "batch_size": 2, "max_length": 256, "save_steps": 1}

SECTIONS = [
    ("La planta de Sagunto", "La planta de baterías de Sagunto empleará a 3.000 personas cuando esté terminada."),
    ("El puerto de Valencia", "El puerto de Valencia movió 5,1 millones de contenedores el año pasado."),
    ("La huerta", "La huerta valenciana produce naranjas, alcachofas y arroz en más de 10.000 hectáreas."),
    ("El metro", "La línea 10 del metro une el centro con el barrio de Natzaret desde 2022."),
    ("Las Fallas", "Las Fallas se celebran del 15 al 19 de marzo y reúnen a un millón de visitantes."),
    ("La Albufera", "La Albufera es un parque natural de 21.000 hectáreas al sur de la ciudad."),
    ("El Turia", "El antiguo cauce del Turia es hoy un jardín de nueve kilómetros."),
    ("La universidad", "La Universitat de València, fundada en 1499, tiene más de 50.000 estudiantes."),
    ("El clima", "Valencia tiene 300 días de sol al año y una temperatura media de 18 grados."),
    ("El aeropuerto", "El aeropuerto de Manises recibió 10 millones de pasajeros el año pasado."),
    ("La Lonja", "La Lonja de la Seda es Patrimonio de la Humanidad desde 1996."),
    ("La paella", "La paella valenciana lleva pollo, conejo, judía verde, garrofó y arroz."),
]


def _examples() -> list[Example]:
    return [
        Example(
            instruction=f"¿Qué dice el documento «Guía de Valencia» sobre «{heading}»?",
            input="",
            output=text,
            document="Guía de Valencia",
            section=heading,
            uses_image_description=False,
        )
        for heading, text in SECTIONS
    ]


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    return write_dataset(build_dataset(_examples(), eval_share=0.3), tmp_path / "dataset").folder


def _trainer(model_dir: str, tmp_path: Path) -> LoraTrainerResource:
    return LoraTrainerResource(
        model_dir=model_dir,
        adapters_dir=str(tmp_path / "adapters"),
        categorizer_adapters_dir=str(tmp_path / "categorizer_adapters"),
        categorizer_dataset_dir=str(tmp_path / "categorizer_dataset"),
    )


def _store(dataset_dir: Path) -> DocumentStore:
    return DocumentStore(inbox_dir=str(dataset_dir), work_dir=str(dataset_dir), dataset_dir=str(dataset_dir))


def test_records_whose_completion_is_cut_away_are_dropped_and_all_cut_is_an_error(model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = alpaca_records(
        [
            {"instruction": "¿Cuál es la capital de Francia?", "input": "", "output": "París."},
            {"instruction": "Resume este texto.", "input": "palabra " * 400, "output": "Un resumen."},
        ]
    )
    learnable = learnable_records(records, tokenizer, max_length=128)
    assert learnable.records == records[:1] and learnable.dropped == 1
    assert 0 < learnable.completion_tokens < learnable.tokens <= 128

    settings = PROFILES["cpu"].with_overrides(**{**TINY, "max_length": 64})
    with pytest.raises(ValueError, match="no example has a completion token within max_length=64"):
        train_lora(model_dir, records[1:], tmp_path / "adapters", settings, device="cpu")
    assert not (tmp_path / "adapters").exists() or not any((tmp_path / "adapters").glob("[!.]*"))


def test_packed_rows_do_not_attend_across_examples(model_dir):
    """Packing relies on position ids restarting per example (no attention mask, no cache: as the trainer calls
    the model): each example's logits in a packed row must equal its logits alone, or packed training would
    learn from its neighbours."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    first, second = torch.arange(100, 130), torch.arange(500, 520)
    with torch.inference_mode():
        alone = [model(input_ids=ids[None]).logits[0] for ids in (first, second)]
        packed = model(
            input_ids=torch.cat([first, second])[None],
            position_ids=torch.cat([torch.arange(30), torch.arange(20)])[None],
            use_cache=False,
        ).logits[0]
    torch.testing.assert_close(packed[:30], alone[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(packed[30:], alone[1], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_lora_adapter_trains_reuses_and_evaluates_through_dagster(model_dir, dataset_dir, tmp_path):
    resources = {"lora_trainer": _trainer(model_dir, tmp_path), "document_store": _store(dataset_dir), **site_devices()}
    run_config = {
        "ops": {
            "lora_adapter": {"config": TINY},
            "adapter_evaluation": {"config": {"questions": 2, "max_new_tokens": 8}},
        }
    }
    assets = [training_assets.lora_adapter, training_assets.adapter_evaluation]
    result = dg.materialize(assets, resources=resources, run_config=run_config, raise_on_error=False)
    trained = result.asset_materializations_for_node("lora_adapter")[0].metadata
    adapter_dir = Path(trained["adapter_dir"].value)
    assert adapter_dir.parent == tmp_path / "adapters" and trained["retrained"].value is True
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "training_args.json",
        "trainer_state.json",
        "log_history.json",
        "newsllm_training.json",
    ):
        assert (adapter_dir / name).exists(), name
    assert trained["steps"].value == 2 and 0 < trained["trainable_share_pct"].value < 10
    assert trained["tokens_per_s"].value > 0 and "data:image/png;base64" in trained["loss_curve"].value
    assert (tmp_path / "adapters" / "current").resolve() == adapter_dir

    evaluation = result.asset_materializations_for_node("adapter_evaluation")[0].metadata
    assert evaluation["held_out_examples"].value >= 1
    assert evaluation["base_loss"].value != evaluation["adapter_loss"].value
    assert "| question" in evaluation["answers"].value
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "adapter_beats_base" and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.passed == (evaluation["adapter_loss"].value < evaluation["base_loss"].value)
    assert result.success == check.passed  # a blocking check: an adapter worse than the base fails the run

    again = dg.materialize(
        [training_assets.lora_adapter], resources=resources, run_config={"ops": {"lora_adapter": {"config": TINY}}}
    )
    reused = again.asset_materializations_for_node("lora_adapter")[0].metadata
    assert reused["retrained"].value is False and reused["version"].value == trained["version"].value


class Interrupt(Exception):
    pass


def test_interrupted_training_resumes_from_its_last_checkpoint(model_dir, dataset_dir, tmp_path):
    from transformers import TrainerCallback

    class StopAfterSecondCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise Interrupt

    records = alpaca_records(read_jsonl(dataset_dir / "train.jsonl"))
    settings = PROFILES["cpu"].with_overrides(**{**TINY, "max_steps": 3})
    adapters = tmp_path / "adapters"
    with pytest.raises(Interrupt):
        train_lora(model_dir, records, adapters, settings, device="cpu", callbacks=[StopAfterSecondCheckpoint()])
    assert not any(path.name != ".training" for path in adapters.iterdir()), "no adapter folder before the end"

    run = train_lora(model_dir, records, adapters, settings, device="cpu")
    assert run.resumed_from == "checkpoint-2"
    steps = [entry["step"] for entry in run.log_history if "loss" in entry]
    assert steps == [1, 2, 3] and run.record.global_step == 3
    assert not (adapters / ".training" / run.version).exists()


def test_a_time_budget_ends_training_early_and_is_part_of_the_version(model_dir, dataset_dir, tmp_path):
    records = alpaca_records(read_jsonl(dataset_dir / "train.jsonl"))
    unbounded = PROFILES["cpu"].with_overrides(**{**TINY, "max_steps": 50})
    bounded = unbounded.with_overrides(max_time_s=0.01)  # spent after the first step
    run = train_lora(model_dir, records, tmp_path / "adapters", bounded, device="cpu")
    assert run.record.global_step == 1 and (run.adapter_dir / "adapter_model.safetensors").exists()
    model = resolve_model_dir(model_dir)
    assert adapter_version(records, model, bounded, "fp32") != adapter_version(records, model, unbounded, "fp32")
    # Without a budget the version is the one adapters had before the field existed (they are reused): the value
    # below is what the code before it computed.
    pinned = [
        {"prompt": [{"role": "user", "content": "¿Qué?"}], "completion": [{"role": "assistant", "content": "Esto."}]}
    ]
    assert adapter_version(pinned, "org/model", PROFILES["cpu"], "fp32") == "7126c72c171e"


def test_a_training_record_written_by_older_code_reads_with_defaults(tmp_path):
    """An adapter trained by an older version is reused as long as its version matches: its record may lack
    fields added since and hold keys dropped since, and the asset must still report it."""
    old = {
        "version": "0123456789ab",
        "base_model": "/models/SmolLM2-135M-Instruct",
        "global_step": 80,
        "trainable_parameters": 4_884_480,
        "total_parameters": 139_399_488,
        "first_loss": 3.2,
        "retired_field": "an old key",
    }
    (tmp_path / "newsllm_training.json").write_text(json.dumps(old), encoding="utf-8")
    record = TrainingRecord.read(tmp_path)
    assert record.version == "0123456789ab" and record.global_step == 80 and record.trainable_share_pct == 3.504
    assert record.dataset_version is None and record.tokens_per_second is None and record.parameter_dtypes is None
    assert not hasattr(record, "retired_field")

    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "log_history.json").write_text("[]", encoding="utf-8")
    metadata = training_assets._training_metadata(TrainingRun(tmp_path, record.version, record, reused=True))
    assert metadata["steps"] == 80 and metadata["dataset_version"] == "" and metadata["tokens_per_s"] is None

    again = tmp_path / "again"
    again.mkdir()
    record.write(again)
    assert TrainingRecord.read(again) == record


def test_early_stopping_keeps_the_best_checkpoint_and_versions_its_validation_set(model_dir, dataset_dir, tmp_path):
    """With a learning rate of 0 the validation loss never improves: patience 1 stops at the second measurement,
    well before the step budget, and the adapter is the first (best) checkpoint."""
    from newsllm_pipeline.training.lora import EarlyStopping, adapter_version

    records = alpaca_records(read_jsonl(dataset_dir / "train.jsonl"))
    settings = PROFILES["cpu"].with_overrides(**{**TINY, "max_steps": 6, "learning_rate": 0.0})
    stopping = EarlyStopping(records[:2], patience=1, eval_every_steps=1)
    run = train_lora(model_dir, records[2:], tmp_path / "adapters", settings, device="cpu", early_stopping=stopping)
    record = run.record
    assert record.stopped_early is True and record.global_step == 2 < 6
    assert record.best_step == 1 and record.validation_examples == 2 and record.best_eval_loss > 0
    assert [entry["step"] for entry in run.log_history if "eval_loss" in entry] == [1, 2]

    version = adapter_version(records[2:], model_dir, settings, record.precision, stopping)
    assert run.version == version != adapter_version(records[2:], model_dir, settings, record.precision)
    other_split = EarlyStopping(records[1:3], patience=1, eval_every_steps=1)
    assert adapter_version(records[2:], model_dir, settings, record.precision, other_split) != version


def test_validation_items_are_a_seeded_stratified_tenth_and_none_from_a_small_set():
    labels = ["Deportes"] * 300 + ["Economía"] * 150 + ["Cultura"] * 50
    held = validation_split(labels, seed=13)
    assert len(held) == 50 and held == validation_split(labels, seed=13) != validation_split(labels, seed=14)
    counts = {label: sum(labels[index] == label for index in held) for label in set(labels)}
    assert counts == {"Deportes": 30, "Economía": 15, "Cultura": 5}
    assert len(validation_split(labels[:200], seed=13)) == 32  # at least 32
    assert validation_split(labels[:100], seed=13) == set()  # too few to spare 32


@pytest.mark.slow
def test_categorizer_adapter_trains_on_trusted_labels_and_changes_the_scores(model_dir, tmp_path):
    from newsllm_pipeline import db
    from newsllm_pipeline.db import import_reviews_csv
    from newsllm_pipeline.feeds import ingest_feeds
    from newsllm_pipeline.resources.noticias import NoticiasDatabase, TransformersCategorizerResource
    from newsllm_pipeline.settings import SHIPPED_REAL_ITEMS

    url = f"sqlite:///{tmp_path / 'noticias.db'}"
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    ingest_feeds(engine, sorted(str(path) for path in FEEDS.glob("*.xml")))
    import_reviews_csv(engine, FEEDS / "labels.csv")
    trainer = _trainer(model_dir, tmp_path)
    resources = {
        "noticias_db": NoticiasDatabase(url=url),
        "categorizer": TransformersCategorizerResource(model_dir=model_dir, device="cpu"),
        "lora_trainer": trainer,
        **site_devices(),
    }
    assets = [
        training_assets.categorizer_training_set,
        training_assets.categorizer_adapter,
        training_assets.categorizer_evaluation,
    ]
    # 40 items of the shipped real labelled set: its training split joins train, its development split is scored.
    real = tmp_path / "real.jsonl"
    lines = SHIPPED_REAL_ITEMS.read_text(encoding="utf-8")
    real.write_text("".join(lines.splitlines(keepends=True)[:40]), encoding="utf-8")
    run_config = {
        "ops": {
            "categorizer_training_set": {"config": {"real_items": str(real)}},
            "categorizer_adapter": {
                "config": {"max_steps": 2, "batch_size": 2, "max_length": 256, "eval_every_steps": 1}
            },
        }
    }
    result = dg.materialize(assets, resources=resources, run_config=run_config, raise_on_error=False)

    labelled = result.asset_materializations_for_node("categorizer_training_set")[0].metadata
    assert labelled["train"].value > 150 and labelled["eval"].value > 30
    assert labelled["real_dev"].value > 0 and labelled["real_train"].value + labelled["real_dev"].value == 40
    trained = result.asset_materializations_for_node("categorizer_adapter")[0].metadata
    assert trained["validation_examples"].value == max(32, round(labelled["train"].value / 10))
    assert trained["best_step"].value in (1, 2) and trained["best_validation_loss"].value > 0
    evaluation = result.asset_materializations_for_node("categorizer_evaluation")[0].metadata
    assert evaluation["held_out"].value == labelled["eval"].value
    assert evaluation["real_dev"].value == labelled["real_dev"].value
    assert all(0 <= evaluation[f"real_dev_{name}_accuracy"].value <= 1 for name in ("base", "adapter"))
    assert "predicha" in evaluation["confusion_adapter"].value
    [check] = result.get_asset_check_evaluations()
    assert check.passed == (evaluation["adapter_accuracy"].value > evaluation["base_accuracy"].value)

    adapter = trainer.current("categorizer")
    assert json.loads((adapter / "newsllm_categorizer.json").read_text())["few_shot"] is False
    text = "El Valencia gana al Sevilla en Mestalla con dos goles en la segunda parte"
    base = TransformersCategorizerResource(model_dir=model_dir, device="cpu", calibration=False).categorize([text])[0]
    tuned = TransformersCategorizerResource(
        model_dir=model_dir, device="cpu", adapter_dir=str(tmp_path / "categorizer_adapters" / "current")
    ).categorize([text])[0]
    assert max(abs(base.probabilities[c] - tuned.probabilities[c]) for c in base.probabilities) > 1e-3


def test_length_buckets_cover_every_example_once_in_a_repeatable_order():
    lengths = [((index * 37) % 101) + 5 for index in range(50)]
    sampler = LengthBucketSampler(lengths, batch_size=8, seed=13)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and list(sampler) == first
    batches = [first[start : start + 8] for start in range(0, 50, 8)]
    spans = sorted((min(lengths[i] for i in batch), max(lengths[i] for i in batch)) for batch in batches)
    assert all(high <= next_low for (_, high), (next_low, _) in itertools.pairwise(spans)), "batches overlap in length"
    assert [low for low, _ in spans] != [min(lengths[i] for i in batch) for batch in batches], "batch order shuffled"
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_cpu_loss_on_completion_tokens_equals_the_full_cross_entropy(model_dir, dataset_dir):
    """The CPU trainer runs the LM head on completion positions only; its loss must be the usual one."""
    from transformers import AutoTokenizer

    from newsllm_pipeline.training.lora import resolve_precision
    from newsllm_pipeline.training.trainer import build_trainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    records = alpaca_records(read_jsonl(dataset_dir / "train.jsonl"))
    settings = PROFILES["cpu"].with_overrides(**TINY)
    trainer = build_trainer(
        model_dir, tokenizer, records, settings, dataset_dir / "work", "cpu", resolve_precision("fp32", "cpu"), []
    )
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch))
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reference = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=-100
        )
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
