"""The `llm` dataset strategy: parsing and critique with fixed model answers, then the packaged model end to end.

The fixed answers stand for a model's text; what is tested is how the strategy parses and judges them.
"""

from __future__ import annotations

import time

from newsllm_pipeline.documents.dataset import FIGURE_MARKER, Section
from newsllm_pipeline.documents.synthesis import (
    chunk_section,
    grounding,
    is_copied,
    synthesize_examples,
    transformers_generator,
)

PRESUPUESTOS = Section(
    "informe.pdf",
    ("Economía", "Presupuestos"),
    "El Consejo de Ministros aprobó ayer los presupuestos generales para el próximo año. "
    "El gasto en sanidad crecerá un 7 % y la inversión en vivienda pública alcanzará los 3.000 millones de euros.\n\n"
    "La ministra de Hacienda defendió que las cuentas reducen el déficit hasta el 2,5 % del producto interior bruto.",
)
FIGURA = Section(
    "informe.pdf",
    ("Economía", "Gráficos"),
    "La evolución del paro se resume en la figura siguiente, elaborada con datos trimestrales del INE.\n\n"
    f"{FIGURE_MARKER} gráfico de barras con la tasa de paro por trimestre entre 2019 y 2023, que baja del 16 % "
    "en 2020 al 12 % a finales de 2023.",
)

GROUNDED = (
    "Pregunta: ¿Cuánto crecerá el gasto en sanidad según los presupuestos?\n"
    "Respuesta: El gasto en sanidad crecerá un 7 %."
)
INVENTED = (
    "Pregunta: ¿Qué opina la oposición de los presupuestos?\n"
    "Respuesta: La oposición critica duramente las cuentas y anuncia una moción de censura inmediata."
)


def answering(answers: dict[str, str]):
    """A stand-in for a model: the fixed answer for the first key found in the prompt."""

    def generate(prompt: str) -> str:
        return next(answer for key, answer in answers.items() if key in prompt)

    return generate


def test_a_grounded_answer_becomes_an_example_with_its_document_and_section():
    run = synthesize_examples([PRESUPUESTOS], answering({"Consejo": GROUNDED}))
    assert run.chunks == 1 and run.rejected == 0
    (example,) = run.examples
    assert example.instruction == "¿Cuánto crecerá el gasto en sanidad según los presupuestos?"
    assert example.output == "El gasto en sanidad crecerá un 7 %."
    assert (example.input, example.document, example.section) == ("", "informe.pdf", "Economía › Presupuestos")
    assert not example.uses_image_description


def test_an_invented_answer_is_rejected_as_ungrounded():
    run = synthesize_examples([PRESUPUESTOS], answering({"Consejo": INVENTED}))
    assert run.examples == () and run.ungrounded == 1
    assert "ungrounded" in run.rejected_samples[0].reason
    assert "moción de censura" in run.rejected_samples[0].generated


def test_a_malformed_answer_is_counted_unparseable():
    malformed = "Claro, aquí tienes una pregunta: ¿qué se aprobó? Se aprobaron los presupuestos."
    run = synthesize_examples([PRESUPUESTOS], answering({"Consejo": malformed}))
    assert run.examples == () and run.unparseable == 1 and run.ungrounded == 0
    assert run.rejected_samples[0].generated == malformed


def test_a_question_copied_from_the_text_is_rejected():
    copied = (
        "Pregunta: ¿La ministra de Hacienda defendió que las cuentas reducen el déficit?\n"
        "Respuesta: Sí, hasta el 2,5 % del producto interior bruto."
    )
    run = synthesize_examples([PRESUPUESTOS], answering({"Consejo": copied}))
    assert run.examples == () and run.invalid == 1
    assert "copied" in run.rejected_samples[0].reason


def test_figure_chunks_are_flagged_and_max_examples_stops_asking():
    figure_answer = (
        "**Pregunta:** ¿Qué tasa de paro muestra el gráfico a finales de 2023?\n"
        "**Respuesta:** Un 12 % a finales de 2023."
    )
    generate = answering({"Consejo": GROUNDED, "paro": figure_answer})
    run = synthesize_examples([FIGURA, PRESUPUESTOS], generate)
    assert [example.uses_image_description for example in run.examples] == [True, False]
    assert run.examples[0].output == "Un 12 % a finales de 2023."

    limited = synthesize_examples([FIGURA, PRESUPUESTOS], generate, max_examples=1)
    assert len(limited.examples) == 1 and limited.chunks == 1


def test_long_sections_are_chunked_at_paragraph_boundaries():
    paragraphs = [f"Párrafo {number}: " + "texto de relleno sobre la economía. " * 12 for number in range(8)]
    section = Section("largo.pdf", ("Capítulo",), "\n\n".join(paragraphs))
    chunks = chunk_section(section, max_chars=1200)
    assert len(chunks) > 1 and all(len(chunk) <= 1200 for chunk in chunks)
    assert "\n\n".join(chunks) == section.text  # nothing lost, every cut at a paragraph boundary


def test_the_packaged_model_runs_end_to_end_and_keeps_only_grounded_pairs(model_dir):
    start = time.perf_counter()
    generate = transformers_generator(model_dir, device="cpu", max_new_tokens=48)
    run = synthesize_examples([PRESUPUESTOS], generate)
    elapsed = time.perf_counter() - start
    print(
        f"\nSmolLM2-135M: chunks={run.chunks} kept={len(run.examples)} unparseable={run.unparseable} "
        f"ungrounded={run.ungrounded} invalid={run.invalid} in {elapsed:.1f} s; "
        f"samples={[sample.generated for sample in run.rejected_samples]} examples={run.examples}"
    )
    assert run.chunks == 1
    assert len(run.examples) + run.rejected == run.chunks
    for example in run.examples:
        assert example.instruction.endswith("?")
        assert not is_copied(example.instruction, PRESUPUESTOS.text)
        assert grounding(example.output, PRESUPUESTOS.text) >= 0.6
