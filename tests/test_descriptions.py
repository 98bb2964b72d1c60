"""Picture descriptions: the OCR describer on the figures of real PDFs with what the document says around them,
the description rules on their own, the OpenAI-compatible backend against a real local HTTP server, and a batch
with a good, a tiny, a textless and a corrupt picture written to JSON and Markdown."""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from newsllm_pipeline.documents.chain import describe_document_images, figure_contexts
from newsllm_pipeline.documents.conversion import convert_document, offline_converter
from newsllm_pipeline.documents.descriptions import (
    DEFAULT_PROMPT,
    NO_TEXT,
    DescriptionError,
    FigureContext,
    NoUsableDescription,
    OcrDescriber,
    OcrLine,
    OpenAIDescriber,
    describe_images,
    figure_description,
    write_descriptions,
)
from tests.conftest import banner

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"


@pytest.fixture(scope="module")
def ocr():
    return OcrDescriber()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """picture_classification (a bar chart and a map, each with a caption) and misdirection_es (two drawings with
    text set over them in the PDF, two without words), converted offline."""
    out = tmp_path_factory.mktemp("converted")
    converter = offline_converter()
    return {
        name: convert_document(SHARED_PDFS / f"{name}.pdf", out / name, converter).folder
        for name in ("picture_classification", "misdirection_es")
    }


def test_a_chart_and_a_map_are_described_from_caption_and_legible_text_not_pixels(ocr, converted):
    run = describe_document_images(converted["picture_classification"], ocr, DEFAULT_PROMPT)
    chart, map_ = (description.text for description in run.descriptions)
    assert chart.startswith("Gráfico: This is an example image.")  # the caption, without "Figure 1:"
    assert "Eje: «Plot number proportions (%)»" in chart and "Valores de 0 a 100" in chart
    assert "Rótulos: Institutional, residential, commercial, community park, municipal park" in chart
    assert map_.startswith("Mapa: This is an example image. Título: «Florida Power Plant Location Map»")
    assert not any("píxeles" in text or "predomina" in text for text in (chart, map_))


def test_text_set_over_a_drawing_is_used_and_drawings_without_words_are_left_out(ocr, converted):
    folder = converted["misdirection_es"]
    contexts = figure_contexts(folder)
    inner = [context.inner_text for context in contexts.values()]
    assert inner[0] == "El mago mira a los espectadores mientras hace técnicas ocultas"
    assert inner[1].startswith("Los espectadores se sienten mirados y dividen su") and inner[2:] == ["", ""]
    run = describe_document_images(folder, ocr, DEFAULT_PROMPT)
    first = run.descriptions[0].text
    assert first.startswith("Figura con el texto «El mago mira a los espectadores mientras hace técnicas ocultas».")
    assert "Acompaña al pasaje «" in first  # where it sits in the document
    assert len(run.descriptions) == 2 and len(run.undescribed) == 2 and not run.failed  # "14", "20 C)": no words
    assert [Path(image).name[:12] for image in run.undescribed] == ["image_000002", "image_000003"]


def line(text: str, left: float, top: float, right: float, bottom: float) -> OcrLine:
    return OcrLine(text, left, top, right, bottom)


def test_caption_and_the_sentence_that_mentions_the_figure_say_what_it_shows():
    context = FigureContext(
        caption="Figura 2: Ventas por trimestre, 2023–2024",
        before="Las ventas crecieron todo el año. Como muestra el gráfico de barras de la figura 2, el cuarto "
        "trimestre fue el mejor.",
        after="El informe sigue con los costes.",
    )
    ticks = [line(str(value), 0, 200 - value, 20, 210 - value) for value in (0, 50, 100, 150)]
    labels = [line("1T 2023", 30, 215, 70, 225), line("2T 2023", 80, 215, 120, 225)]
    assert figure_description(ticks + labels, context) == (
        "Gráfico de barras: Ventas por trimestre, 2023–2024. Valores de 0 a 150. Rótulos: 1T 2023, 2T 2023. "
        "El documento dice: «Como muestra el gráfico de barras de la figura 2, el cuarto trimestre fue el mejor.»."
    )


def test_nothing_usable_gives_no_description():
    stray = [line("14", 200, 260, 230, 300)]
    assert figure_description(stray, FigureContext(before="Un párrafo que trata de otra cosa.")) is None
    assert figure_description([]) is None
    mentioned = FigureContext(after="La figura muestra el reparto de escaños.")
    assert figure_description(stray, mentioned) == (
        "Figura. El documento dice: «La figura muestra el reparto de escaños.»."
    )


def test_the_ocr_describer_reads_a_picture_on_its_own_as_the_vision_server_hands_it(ocr, tmp_path):
    image = banner(tmp_path / "grafico.png", ["Presupuestos 2024", "Gasto en sanidad"])
    text = ocr.describe(image, DEFAULT_PROMPT)
    assert text.startswith("Figura con el texto «") and "Presupuestos 2024" in text and "sanidad" in text
    blank = tmp_path / "blanco.png"
    Image.new("RGB", (200, 120), "white").save(blank)
    with pytest.raises(NoUsableDescription, match="blanco.png: no caption, no legible text"):
        ocr.describe(blank, DEFAULT_PROMPT)
    assert ocr.describe_picture(Image.new("RGB", (200, 120), "white"), DEFAULT_PROMPT) == NO_TEXT


class _FakeVisionServer:
    """A real HTTP server on 127.0.0.1 answering chat completions; `statuses` are served in order (then 200)."""

    def __init__(self, statuses: list[int] | None = None):
        self.requests: list[dict] = []
        self.statuses = list(statuses or [])
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status = server.statuses.pop(0) if server.statuses else 200
                if status == 200:
                    answer = {"choices": [{"message": {"role": "assistant", "content": " Un gráfico de barras. "}}]}
                else:
                    answer = {"error": {"message": f"fallo simulado {status}"}}
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def vision_server(request):
    server = _FakeVisionServer(getattr(request, "param", None))
    yield server
    server.close()


def test_openai_backend_sends_prompt_and_picture_in_openai_format(vision_server, tmp_path):
    image = banner(tmp_path / "grafico.png", ["Hola"])
    describer = OpenAIDescriber(vision_server.base_url, "qwen2-vl", api_key="clave-secreta")
    assert describer.describe(image, "Describe la imagen.") == "Un gráfico de barras."
    [request] = vision_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Bearer clave-secreta"
    body = request["body"]
    assert body["model"] == "qwen2-vl" and body["temperature"] == 0 and body["max_tokens"] > 0
    [message] = body["messages"]
    text_part, image_part = message["content"]
    assert message["role"] == "user" and text_part == {"type": "text", "text": "Describe la imagen."}
    prefix, encoded = image_part["image_url"]["url"].split(",", 1)
    assert image_part["type"] == "image_url" and prefix == "data:image/png;base64"
    assert base64.b64decode(encoded) == image.read_bytes()
    assert "clave-secreta" not in repr(describer)


@pytest.mark.parametrize("vision_server", [[500]], indirect=True)
def test_openai_backend_retries_a_server_error(vision_server, tmp_path):
    image = banner(tmp_path / "grafico.png", ["Hola"])
    describer = OpenAIDescriber(vision_server.base_url, "qwen2-vl", backoff_s=0.01)
    assert describer.describe(image, DEFAULT_PROMPT) == "Un gráfico de barras."
    assert len(vision_server.requests) == 2 and "Authorization" not in vision_server.requests[0]["headers"]


@pytest.mark.parametrize("vision_server", [[401, 401, 401]], indirect=True)
def test_openai_backend_fails_at_once_on_a_client_error(vision_server, tmp_path):
    image = banner(tmp_path / "grafico.png", ["Hola"])
    describer = OpenAIDescriber(vision_server.base_url, "qwen2-vl", api_key="mala", backoff_s=0.01)
    with pytest.raises(DescriptionError, match=r"grafico\.png.*HTTP 401: fallo simulado 401") as raised:
        describer.describe(image, DEFAULT_PROMPT)
    assert len(vision_server.requests) == 1 and "mala" not in str(raised.value)


def test_openai_backend_gives_up_when_no_server_answers(tmp_path):
    image = banner(tmp_path / "grafico.png", ["Hola"])
    server = _FakeVisionServer()
    server.close()  # the port is now closed: every attempt is refused
    describer = OpenAIDescriber(server.base_url, "qwen2-vl", retries=1, backoff_s=0.01)
    with pytest.raises(DescriptionError, match="after 2 attempts"):
        describer.describe(image, DEFAULT_PROMPT)


def test_a_batch_describes_good_pictures_skips_tiny_ones_and_records_failures(ocr, tmp_path):
    good = banner(tmp_path / "grafico.png", ["Presupuestos 2024"])
    tiny = tmp_path / "icono.png"
    Image.new("RGB", (16, 300), "red").save(tiny)
    blank = tmp_path / "blanco.png"
    Image.new("RGB", (200, 120), "white").save(blank)
    corrupt = tmp_path / "roto.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"esto no es una imagen" * 10)
    contexts = {"grafico.png": FigureContext(caption="Figura 1: Presupuesto municipal por áreas")}

    run = describe_images([good, tiny, blank, corrupt], ocr, contexts=contexts)

    assert [description.image for description in run.descriptions] == [str(good)]
    assert run.descriptions[0].text == (
        "Figura: Presupuesto municipal por áreas. Texto de la figura: «Presupuestos 2024»."
    )
    assert run.descriptions[0].backend == "rapidocr"
    assert run.skipped == [str(tiny)] and run.undescribed == [str(blank)]
    assert list(run.failed) == [str(corrupt)] and "roto.png" in run.failed[str(corrupt)]

    out_dir = tmp_path / "descripciones"
    written = write_descriptions(run, out_dir)
    assert (
        sorted(path.name for path in out_dir.iterdir())
        == ["grafico.json", "grafico.md"]
        == sorted(path.name for path in written)
    )
    saved = json.loads((out_dir / "grafico.json").read_text(encoding="utf-8"))
    assert saved == run.descriptions[0].to_dict() and saved["prompt"] == DEFAULT_PROMPT
    assert (out_dir / "grafico.md").read_text(encoding="utf-8") == f"# grafico.png\n\n{run.descriptions[0].text}\n"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NEWSLLM_TEST_VLM_DIR"), reason="set NEWSLLM_TEST_VLM_DIR to a VLM folder")
def test_a_local_vision_language_model_reads_the_picture(tmp_path):
    from newsllm_pipeline.documents.descriptions import TransformersDescriber

    describer = TransformersDescriber(os.environ["NEWSLLM_TEST_VLM_DIR"], max_new_tokens=96)
    image = banner(tmp_path / "grafico.png", ["PRESUPUESTOS"])
    text = describer.describe(image, DEFAULT_PROMPT)
    assert "presupuestos" in text.lower()


# The describer resources: one class per backend, chosen from the site's settings ------------------------------

VISION_SETTINGS = ("NEWSLLM_DESCRIBER", "NEWSLLM_VISION_URL", "NEWSLLM_VISION_MODEL", "NEWSLLM_VISION_API_KEY")


def test_each_describer_resource_has_only_its_own_fields():
    from newsllm_pipeline.resources.documents import (
        ImageDescriberResource,
        OcrDescriberResource,
        OpenAIDescriberResource,
        TransformersDescriberResource,
        describer_resource,
    )

    shared = {"prompt", "min_side_px"}
    assert set(OcrDescriberResource.model_fields) == shared
    assert set(OpenAIDescriberResource.model_fields) == shared | {"url", "model", "api_key", "timeout_s", "retries"}
    assert set(TransformersDescriberResource.model_fields) == shared | {
        "model",
        "device",
        "dtype",
        "max_new_tokens",
        "load_in_8bit",
    }
    with pytest.raises(TypeError, match="abstract"):
        ImageDescriberResource()

    # A command line offers every backend's options: the chosen one takes its own and leaves the rest.
    ocr = describer_resource("ocr", model="qwen2-vl", device="cuda", prompt="¿Qué es?")
    assert type(ocr) is OcrDescriberResource and ocr.question() == "¿Qué es?"
    transformers = describer_resource("transformers", url=None, model="/srv/qwen2-vl", device="cuda")
    assert (transformers.model, transformers.device, transformers.max_new_tokens) == ("/srv/qwen2-vl", "cuda", 256)
    with pytest.raises(TypeError, match="no image describer has the fields"):
        describer_resource("ocr", modle="qwen2-vl")


@pytest.mark.parametrize("backend", [None, "ocr", "openai", "transformers"])
def test_the_site_setting_picks_the_describer_class(monkeypatch, backend):
    import dagster as dg

    from newsllm_pipeline.resources.documents import DESCRIBER_RESOURCES, image_describer_from_settings

    for variable in VISION_SETTINGS:
        monkeypatch.delenv(variable, raising=False)
    if backend:
        monkeypatch.setenv("NEWSLLM_DESCRIBER", backend)
    monkeypatch.setenv("NEWSLLM_VISION_URL", "http://gpu-host:8000/v1")
    monkeypatch.setenv("NEWSLLM_VISION_MODEL", "qwen2-vl")

    chosen = image_describer_from_settings()
    assert type(chosen) is DESCRIBER_RESOURCES[backend or "ocr"] and chosen.backend == (backend or "ocr")
    if backend == "openai":  # the endpoint is read when a run starts, not when the code location loads
        monkeypatch.setenv("NEWSLLM_VISION_URL", "http://otro-host:8000/v1")
        with dg.build_resources({"image_describer": chosen}) as resources:
            describer = resources.image_describer.describer()
        assert describer.url == "http://otro-host:8000/v1/chat/completions" and describer.model == "qwen2-vl"


def test_an_unknown_describer_setting_fails_with_the_choices(monkeypatch):
    from newsllm_pipeline.resources.documents import image_describer_from_settings

    monkeypatch.setenv("NEWSLLM_DESCRIBER", "gpt4")
    with pytest.raises(
        ValueError, match="NEWSLLM_DESCRIBER: unknown image describer 'gpt4': choose one of ocr, openai"
    ):
        image_describer_from_settings()
