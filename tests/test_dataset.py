"""The `sections` dataset strategy on the shared reference Markdown and a described Markdown with figure
descriptions: sections follow headings, examples stay within bounds, duplicates go, the split is stable, and
the files land complete or not at all."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from newsllm_pipeline import splits
from newsllm_pipeline.documents.dataset import (
    FIGURE_MARKER,
    Example,
    answer_defects,
    build_dataset,
    examples_from_sections,
    sentences,
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


def test_passages_are_whole_sentences_within_bounds_and_cover_each_section():
    sections = [
        section
        for name in ("multi_page", "picture_classification")
        for section in split_sections(name, reference(name))
    ]
    for max_chars in (1200, 300):
        examples = reference_examples(max_output_chars=max_chars)
        assert all(example.instruction and example.input == "" for example in examples)
        assert all(40 <= len(example.output) <= max_chars for example in examples)
        assert all(f"«{example.section}»" in example.instruction for example in examples)
        assert answer_defects(examples, sections).passed  # nothing cut inside a word
        for section in sections:
            passages = [
                example.output
                for example in examples
                if example.section == section.heading and not example.instruction.startswith("Resume")
            ]
            # In order and whole: joined back they are the section (cuts only between sentences or paragraphs).
            assert " ".join(" ".join(passages).split()) == " ".join(section.text.split())
    short = reference_examples(max_output_chars=300)
    assert len(short) > len(reference_examples())  # long sections give several examples
    assert len({re.sub("«[^»]*»", "", example.instruction) for example in short}) >= 3  # templates vary
    assert short == reference_examples(max_output_chars=300)  # deterministic
    parts = [example.instruction for example in short if "(parte " in example.instruction]
    assert "Explica «Figures Example» (parte 12 de 12) según el documento «picture_classification»." in parts


def test_a_summary_instruction_gets_the_key_sentences_of_its_section():
    sections = {section.heading: section for section in split_sections("multi_page", reference("multi_page"))}
    summaries = {
        e.section: e.output
        for e in reference_examples()
        if e.instruction.startswith("Resume") and e.document == "multi_page"
    }
    assert summaries  # sections with four sentences of prose or more
    for heading, summary in summaries.items():
        text = sections[heading].text
        chosen = sentences(summary)
        assert 2 <= len(chosen) <= 3 and len(summary) <= 0.6 * len(text)
        assert all(sentence in text for sentence in chosen)  # extractive: whole sentences of the section
    # A section of three sentences or fewer has nothing to summarise: no "Resume" instruction for it.
    short = [heading for heading, section in sections.items() if len(sentences(section.text)) < 4]
    assert short and not set(short) & set(summaries)
    future = summaries["Future of Word Processing"]
    assert future.startswith("Today, word processors are more than just tools for typing.")


def test_answers_cut_inside_a_word_or_made_from_a_template_are_caught():
    sections = split_sections("multi_page", reference("multi_page"))
    whole = examples_from_sections(sections)
    assert answer_defects(whole, sections).passed
    birth = next(example for example in whole if "Birth of Word Processing" in example.section)
    cut = dataclasses.replace(birth, output=birth.output[:200].rstrip())
    marked = dataclasses.replace(birth, instruction="marcado", output=birth.output[:120].rstrip() + "…")
    pixels = dataclasses.replace(
        birth,
        instruction="plantilla",
        output='Imagen de 221 × 190 píxeles en la que predominan el blanco y el gris. Texto legible: "14".',
    )
    assert birth.output[200].isalpha() and birth.output[199].isalpha()  # the cut is inside a word
    defects = answer_defects([*whole, cut, marked, pixels], sections)
    assert defects.cut_mid_word == (cut.instruction, "marcado")
    assert defects.templates == ("plantilla",) and not defects.passed
    sentence_end = dataclasses.replace(birth, output=sentences(birth.output)[0])
    assert answer_defects([sentence_end], sections).passed


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
    assert stats.image_description_share == pytest.approx(4 / len(examples))


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
    count = len(examples)
    assert dataset.stats.examples == count and dataset.stats.duplicates_removed == count + 1
    assert len(dataset.train) + len(dataset.eval) == count
    kept = dataset.train + dataset.eval
    assert len({example.instruction for example in kept}) == len({example.output for example in kept}) == count
    assert dataset.stats.output_chars_p10 <= dataset.stats.output_chars_p50 <= dataset.stats.output_chars_p90


def test_the_split_holds_out_whole_sections_and_is_stable_when_documents_are_added():
    before = build_dataset(reference_examples(), eval_share=0.3)
    assert before == build_dataset(reference_examples(), eval_share=0.3) and before.eval
    held_out = {(example.document, example.section) for example in before.eval}
    assert not held_out & {(example.document, example.section) for example in before.train}
    after = build_dataset(reference_examples() + described_examples(), eval_share=0.3)
    assert set(before.train) <= set(after.train) and set(before.eval) <= set(after.eval)
    assert after.stats.examples == before.stats.examples + len(described_examples())


def test_the_split_is_roughly_the_eval_share_of_sections_and_never_empty_with_two_sections():
    examples = [
        Example(f"Pregunta {number}", "", f"Respuesta número {number}.", "doc", f"s{number}", False)
        for number in range(3000)
    ]
    dataset = build_dataset(examples, eval_share=0.1)
    assert 0.08 <= len(dataset.eval) / len(examples) <= 0.12
    assert build_dataset(examples, seed=14).eval != dataset.eval
    pair = build_dataset(examples[:2], eval_share=0.01)  # no hash under 1 %: the lowest is held out
    assert len(pair.train) == len(pair.eval) == 1
    assert not build_dataset(examples[:2], eval_share=0).eval and not build_dataset(examples[:1]).eval


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

    monkeypatch.setattr(splits.pq, "write_table", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_dataset(build_dataset(reference_examples() + described_examples()), out_dir)
    assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before
    assert [path.name for path in tmp_path.iterdir()] == ["dataset"]


def test_control_characters_of_a_form_do_not_reach_the_answers():
    """The sample questionnaire's check boxes come out of its PDF as "\x84"."""
    fixture = Path(__file__).parent / "data" / "documents" / "questionnaire_texto_final.md"
    markdown = fixture.read_text(encoding="utf-8")  # texto_final.md of table_mislabeled_as_picture.pdf
    assert "\x84" in markdown
    examples = examples_from_sections(split_sections("table_mislabeled_as_picture", markdown))
    assert examples and not any(re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", e.output) for e in examples)
