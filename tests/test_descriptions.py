"""Picture descriptions: real OCR on rendered Spanish text, the OpenAI-compatible backend against a real local HTTP
server, and a batch with a good, a tiny and a corrupt picture written to JSON and Markdown."""

from __future__ import annotations

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from newsllm_pipeline.documents.descriptions import (
    DEFAULT_PROMPT,
    DescriptionError,
    OcrDescriber,
    OpenAIDescriber,
    describe_images,
    write_descriptions,
)
from tests.conftest import banner


@pytest.fixture(scope="module")
def ocr():
    return OcrDescriber()


def test_ocr_description_reads_the_text_and_names_size_and_colours(ocr, tmp_path):
    image = banner(tmp_path / "grafico.png", ["Presupuestos 2024", "Gasto en sanidad"])
    text = ocr.describe(image, DEFAULT_PROMPT)
    assert text.startswith("Imagen de 640 × 480 píxeles")
    assert "el blanco" in text and "el azul" in text
    assert "Presupuestos 2024" in text and "sanidad" in text


def test_ocr_description_of_a_blank_picture_says_there_is_no_text(ocr, tmp_path):
    image = tmp_path / "blanco.png"
    Image.new("RGB", (200, 120), "white").save(image)
    assert ocr.describe(image, DEFAULT_PROMPT) == (
        "Imagen de 200 × 120 píxeles en la que predomina el blanco. No contiene texto legible."
    )


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
    corrupt = tmp_path / "roto.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"esto no es una imagen" * 10)

    run = describe_images([good, tiny, corrupt], ocr)

    assert [description.image for description in run.descriptions] == [str(good)]
    assert "Presupuestos 2024" in run.descriptions[0].text and run.descriptions[0].backend == "rapidocr"
    assert run.skipped == [str(tiny)]
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
