"""The document chain through Dagster: inbox sensor, partitions, a two-document backfill, a corrupt
document failing alone (in its own run and within a batch), and the dataset with its checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from newsllm_pipeline.assets.documents import (
    described_markdown,
    docling_markdown,
    image_descriptions,
    raw_documents,
    training_dataset,
)
from newsllm_pipeline.documents.dataset import FIGURE_MARKER
from newsllm_pipeline.jobs.documents import raw_documents_sensor
from newsllm_pipeline.resources.documents import (
    DoclingConverterResource,
    DocumentStore,
    OcrDescriberResource,
    TextGeneratorResource,
)
from tests.conftest import site_devices

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"
CHAIN = [raw_documents, docling_markdown, image_descriptions, described_markdown]


@pytest.fixture
def store(tmp_path) -> DocumentStore:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("picture_classification.pdf", "misdirection_es.pdf"):
        shutil.copy(SHARED_PDFS / name, inbox / name)
    (inbox / "Roto Informe.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    return DocumentStore(
        inbox_dir=str(inbox), work_dir=str(tmp_path / "documents"), dataset_dir=str(tmp_path / "dataset")
    )


@pytest.fixture
def resources(store, model_dir):
    return {
        "document_store": store,
        "docling_converter": DoclingConverterResource(mode="offline"),
        "image_describer": OcrDescriberResource(),
        "text_generator": TextGeneratorResource(model_dir=model_dir, max_new_tokens=24),
        **site_devices(),
    }


def _tick(instance, store, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"document_store": store}) as context:
        return raw_documents_sensor(context), context.cursor


def test_sensor_adds_a_partition_per_document_and_reruns_only_changed_ones(store):
    with dg.instance_for_test() as instance:
        result, _ = _tick(instance, store)
        keys = ["misdirection_es_pdf", "picture_classification_pdf", "roto_informe_pdf"]
        assert sorted(result.dynamic_partitions_requests[0].partition_keys) == keys
        assert sorted(request.partition_key for request in result.run_requests) == keys
        instance.add_dynamic_partitions("documents", keys)
        idle, _ = _tick(instance, store, result.cursor)
        assert isinstance(idle, dg.SkipReason) and "none new or changed" in idle.skip_message
        (Path(store.inbox_dir) / "misdirection_es.pdf").write_bytes((SHARED_PDFS / "multi_page.pdf").read_bytes())
        changed, _ = _tick(instance, store, result.cursor)
        assert [request.partition_key for request in changed.run_requests] == ["misdirection_es_pdf"]
        assert not changed.dynamic_partitions_requests
        assert changed.run_requests[0].run_key != next(
            r.run_key for r in result.run_requests if r.partition_key == "misdirection_es_pdf"
        )


def test_two_document_backfill_a_corrupt_one_fails_alone_and_the_dataset_is_built(store, resources):
    with dg.instance_for_test() as instance:
        keys = ["misdirection_es_pdf", "picture_classification_pdf", "roto_informe_pdf"]
        instance.add_dynamic_partitions("documents", keys)
        for key in keys[:2]:
            assert dg.materialize(CHAIN, partition_key=key, instance=instance, resources=resources).success
        broken = dg.materialize(
            CHAIN, partition_key=keys[2], instance=instance, resources=resources, raise_on_error=False
        )
        assert not broken.success
        failure = next(event for event in broken.all_events if event.is_step_failure)
        assert "Roto Informe.pdf: Docling could not convert it" in failure.event_specific_data.error.message
        assert not (Path(store.work_dir) / keys[2]).exists()

        folder = Path(store.work_dir) / "picture_classification_pdf"
        assert (folder / "texto.md").exists() and list((folder / "imagenes_extraidas").glob("*.png"))
        assert list((folder / "image_descriptions").glob("*.json"))
        final = (folder / "texto_final.md").read_text(encoding="utf-8")
        assert FIGURE_MARKER in final and "](imagenes_extraidas/" not in final

        dataset = dg.materialize([training_dataset], instance=instance, resources=resources)
        metadata = dataset.asset_materializations_for_node("training_dataset")[0].metadata
        assert metadata["documents"].value == 2 and metadata["train"].value > 0
        checks = {check.check_name: check.passed for check in dataset.get_asset_check_evaluations()}
        assert checks == dict.fromkeys(
            [
                "not_empty",
                "no_duplicate_instructions",
                "output_lengths_within_bounds",
                "answers_whole_and_not_templates",
                "uses_image_descriptions",
            ],
            True,
        )
        assert metadata["eval"].value > 0  # whole sections held out
        assert (Path(store.dataset_dir) / "train.jsonl").exists()
        assert (Path(store.dataset_dir) / "dataset_info.json").exists()

        # The llm strategy asks the packaged model for grounded question-answer pairs per chunk.
        synthesised = dg.materialize(
            [training_dataset],
            instance=instance,
            resources=resources,
            run_config={"ops": {"training_dataset": {"config": {"strategy": "llm"}}}},
        )
        metadata = synthesised.asset_materializations_for_node("training_dataset")[0].metadata
        chunks = metadata["chunks"].value
        assert chunks > 0
        assert chunks == sum(metadata[key].value for key in ("kept", "unparseable", "ungrounded", "invalid"))


def _markdown_document(inbox: Path, name: str, topic: str) -> None:
    paragraph = f"El informe sobre {topic} describe los resultados del último trimestre con detalle suficiente."
    (inbox / name).write_text(f"# {topic.capitalize()}\n\n{paragraph}\n\n## Conclusiones\n\n{paragraph}\n")


def test_a_batch_goes_on_past_a_broken_document_and_names_it(tmp_path):
    """A backfill's run holds a range of documents: the broken one in the middle fails the step after the others
    were converted, each with its own metadata, and the step's error names it."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    _markdown_document(inbox, "agua.md", "el agua")
    (inbox / "Roto Informe.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    _markdown_document(inbox, "energia.md", "la energía")
    store = DocumentStore(inbox_dir=str(inbox), work_dir=str(tmp_path / "documents"), dataset_dir=str(tmp_path / "d"))
    resources = {
        "document_store": store,
        "docling_converter": DoclingConverterResource(mode="offline"),
        "image_describer": OcrDescriberResource(),
        **site_devices(),
    }
    keys = ["agua_md", "roto_informe_pdf", "energia_md"]
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", keys)
        result = dg.materialize(
            CHAIN,
            instance=instance,
            resources=resources,
            tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
            raise_on_error=False,
        )
        assert not result.success
        failure = next(event for event in result.all_events if event.is_step_failure)
        assert failure.step_key == "docling_markdown"
        message = failure.event_specific_data.error.message
        assert "roto_informe_pdf: " in message and "Roto Informe.pdf: Docling could not convert it" in message
        assert instance.get_materialized_partitions(dg.AssetKey("raw_documents")) == set(keys)
        assert instance.get_materialized_partitions(dg.AssetKey("docling_markdown")) == {"agua_md", "energia_md"}
        assert not instance.get_materialized_partitions(dg.AssetKey("image_descriptions"))  # the step waits

        def latest(name: str) -> dict:
            records = instance.fetch_materializations(dg.AssetKey(name), limit=10).records
            return {record.partition_key: record.asset_materialization.metadata for record in records}

        paths = {key: metadata["markdown"].value for key, metadata in latest("docling_markdown").items()}
        assert paths == {key: str(tmp_path / "documents" / key / "texto.md") for key in ("agua_md", "energia_md")}
        assert len({metadata["sha256"].value for metadata in latest("raw_documents").values()}) == 3  # each its own


def test_a_dataset_of_template_answers_fails_its_check_and_is_not_written(store, resources):
    """The described Markdown the old describer wrote for misdirection_es ("Imagen de 221 × 190 píxeles…")."""
    old = (Path(__file__).parent / "data" / "documents" / "misdirection_old_describer.md").read_text(encoding="utf-8")
    folder = Path(store.work_dir) / "misdirection_es_pdf"
    folder.mkdir(parents=True)
    (folder / "texto_final.md").write_text(old, encoding="utf-8")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", ["misdirection_es_pdf"])
        result = dg.materialize([training_dataset], instance=instance, resources=resources, raise_on_error=False)
    assert not result.success  # the check blocks: nothing downstream trains on it
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "answers_whole_and_not_templates")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["templates"].value == 6  # the four figure questions and the two passages quoting them
    assert not Path(store.dataset_dir).exists()


def test_converter_mode_auto_uses_standard_only_with_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("DOCLING_ARTIFACTS_PATH", raising=False)
    mode, reason = DoclingConverterResource(mode="auto").resolved_mode()
    assert mode == "offline" and "no Docling model artifacts" in reason
    (tmp_path / "docling-project--docling-layout-heron").mkdir()
    monkeypatch.setenv("DOCLING_ARTIFACTS_PATH", str(tmp_path))
    assert DoclingConverterResource(mode="auto").resolved_mode()[0] == "standard"
    assert DoclingConverterResource(mode="offline").resolved_mode()[0] == "offline"
    with pytest.raises(dg.Failure, match="standard mode needs Docling's model artifacts"):
        DoclingConverterResource(mode="standard", artifacts_path=str(tmp_path / "missing")).resolved_mode()
