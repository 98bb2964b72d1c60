"""The `sections` dataset strategy on the shared reference Markdown and a described Markdown with figure
descriptions: sections follow headings, examples stay within bounds, duplicates go, the split is stable, and
the files land complete or not at all."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from newsllm_pipeline.documents import dataset as dataset_module
from newsllm_pipeline.documents.dataset import (
    FIGURE_MARKER,
    Example,
    build_dataset,
    examples_from_sections,
    split_sections,
    write_dataset,
)

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"

RAIN_CHART = (
    "Un gráfico de barras con la lluvia mensual entre 2014 y 2024; marzo de 2024 destaca con 180 mm, "
    "el doble de la media."
)
STATION_MAP = "Un mapa de la región norte con las doce estaciones meteorológicas marcadas con puntos rojos."
DESCRIBED = f"""# Informe de lluvias

Este informe resume las precipitaciones registradas durante 2024 en la región norte.

## 1 Datos

Las precipitaciones de marzo fueron las más altas de la década
en la región norte.

> {FIGURE_MARKER} {RAIN_CHART}

## 2 Conclusiones

- Conviene revisar el estado de los embalses antes del verano.
- Los datos de diciembre son provisionales.

![Figura 2](imagenes_extraidas/image_000001.png)

# Anexo

## A Métodos

Las medidas proceden de pluviómetros automáticos revisados cada mes.

{FIGURE_MARKER} {STATION_MAP}
"""


def reference(name: str) -> str:
    return (SHARED_PDFS / f"{name}.docling-standard.md").read_text(encoding="utf-8")


def reference_examples(**bounds) -> list[Example]:
    return [
        example
        for name in ("multi_page", "picture_classification")
        for example in examples_from_sections(split_sections(name, reference(name)), **bounds)
    ]


def described_examples() -> list[Example]:
    return examples_from_sections(split_sections("informe_lluvias", DESCRIBED))


def test_sections_of_multi_page_follow_its_headings():
    sections = split_sections("multi_page", reference("multi_page"))
    assert len(sections) == 11
    assert [section.heading_path for section in sections[:3]] == [
        ("The Evolution of the Word Processor",),
        ("Pre-Digital Era (19th - Early 20th Century)",),
        ("The Birth of Word Processing (1960s - 1970s)",),
    ]
    assert sections[-1].heading_path == ("A Glimpse Into the Future",)
    holding = [section.heading_path for section in sections if "Christopher Latham Sholes" in section.text]
    assert holding == [("Pre-Digital Era (19th - Early 20th Century)",)]
    birth = sections[2].text
    assert "\n- Wang Laboratories : In the 1970s" in birth  # list items kept, one per line
    assert birth.endswith("without retyping entire documents.")
    assert sections[-1].text.endswith("connect with one another.")


def test_nested_headings_skip_empty_sections_and_drop_images():
    sections = split_sections("informe_lluvias", DESCRIBED)
    assert [section.heading_path for section in sections] == [
        ("Informe de lluvias",),
        ("Informe de lluvias", "1 Datos"),
        ("Informe de lluvias", "2 Conclusiones"),
        ("Anexo", "A Métodos"),
    ]
    datos = sections[1]
    assert datos.paragraphs == [
        "Las precipitaciones de marzo fueron las más altas de la década en la región norte.",
        f"{FIGURE_MARKER} {RAIN_CHART}",
    ]
    pictures = split_sections("picture_classification", reference("picture_classification"))
    assert len(pictures) == 1 and "Figure 2: This is an example image." in pictures[0].text
    assert not any("image" in section.text for section in sections)
    assert "<!--" not in pictures[0].text


def test_examples_are_within_bounds_and_cut_at_sentences():
    examples = reference_examples()
    assert len(examples) == 12
    assert all(example.instruction and example.input == "" for example in examples)
    assert all(40 <= len(example.output) <= 2000 for example in examples)
    assert all(f"«{example.section}»" in example.instruction for example in examples)
    assert len({re.sub("«[^»]*»", "", example.instruction) for example in examples}) >= 3  # templates vary
    assert examples == reference_examples()  # template choice is deterministic
    short = reference_examples(max_output_chars=300)
    assert all(len(example.output) <= 300 and re.search(r"[a-z]\.$", example.output) for example in short)
    sections = split_sections("picture_classification", reference("picture_classification"))
    assert sections[0].text.startswith(short[-1].output)


def test_figure_descriptions_become_image_examples():
    examples = described_examples()
    figures = [example for example in examples if example.instruction.startswith("¿Qué muestra la figura")]
    assert [(example.section, example.output) for example in figures] == [
        ("Informe de lluvias › 1 Datos", RAIN_CHART),
        ("Anexo › A Métodos", STATION_MAP),
    ]
    assert "«informe_lluvias»" in figures[0].instruction and all(f.uses_image_description for f in figures)
    by_section = {example.section: example for example in examples if example not in figures}
    assert by_section["Informe de lluvias › 1 Datos"].uses_image_description
    assert not by_section["Informe de lluvias › 2 Conclusiones"].uses_image_description
    stats = build_dataset(examples).stats
    assert stats.image_description_share == pytest.approx(4 / 6)


def test_duplicates_are_removed_and_counted():
    examples = reference_examples()
    renamed = Example(
        instruction="  " + examples[0].instruction.upper(),
        input="",
        output="Otro texto distinto con longitud suficiente para ser un ejemplo.",
        document="multi_page",
        section=examples[0].section,
        uses_image_description=False,
    )
    dataset = build_dataset(examples + examples + [renamed])
    assert dataset.stats.examples == 12 and dataset.stats.duplicates_removed == 13
    assert len(dataset.train) + len(dataset.eval) == 12
    kept = dataset.train + dataset.eval
    assert len({example.instruction for example in kept}) == len({example.output for example in kept}) == 12
    assert dataset.stats.output_chars_p10 <= dataset.stats.output_chars_p50 <= dataset.stats.output_chars_p90


def test_the_split_is_deterministic_and_stable_when_documents_are_added():
    before = build_dataset(reference_examples())
    assert before == build_dataset(reference_examples())
    after = build_dataset(reference_examples() + described_examples())
    assert set(before.train) <= set(after.train) and set(before.eval) <= set(after.eval)
    assert after.stats.examples == before.stats.examples + 6


def test_the_split_is_roughly_the_eval_share():
    examples = [
        Example(f"Pregunta {number}", "", f"Respuesta número {number}.", "doc", "s", False) for number in range(3000)
    ]
    dataset = build_dataset(examples, eval_share=0.1)
    assert 0.08 <= len(dataset.eval) / len(examples) <= 0.12
    assert build_dataset(examples, seed=14).eval != dataset.eval


def test_write_dataset_produces_matching_jsonl_parquet_and_dataset_info(tmp_path):
    dataset = build_dataset(reference_examples() + described_examples(), eval_share=0.3)
    files = write_dataset(dataset, tmp_path / "dataset", name="noticias_docs")
    for split, jsonl, parquet in (
        (dataset.train, files.train_jsonl, files.train_parquet),
        (dataset.eval, files.eval_jsonl, files.eval_parquet),
    ):
        rows = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines()]
        assert rows == pd.read_parquet(parquet).to_dict("records")
        assert [row["instruction"] for row in rows] == [example.instruction for example in split]
    assert len(dataset.eval) >= 1
    info = json.loads(files.dataset_info.read_text(encoding="utf-8"))
    assert set(info) == {"noticias_docs", "noticias_docs_eval"}
    assert (files.folder / info["noticias_docs"]["file_name"]) == files.train_jsonl
    assert (files.folder / info["noticias_docs_eval"]["file_name"]) == files.eval_jsonl
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    assert all(entry["columns"] == columns for entry in info.values())


def test_a_failed_write_leaves_the_previous_dataset_intact(tmp_path, monkeypatch):
    out_dir = tmp_path / "dataset"
    write_dataset(build_dataset(reference_examples()), out_dir)
    before = {path.name: path.read_bytes() for path in out_dir.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(dataset_module.pq, "write_table", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_dataset(build_dataset(reference_examples() + described_examples()), out_dir)
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["dataset"]
