"""The image-description server for real on 127.0.0.1: real OCR behind every endpoint, authentication, limits on
what clients send, bounded concurrency under 16 parallel requests, and the three clients that use it: the
pipeline's `openai` describer, Docling's picture-description API option on a real PDF, and `newsllm vision-client`.

Two servers run for the module: one with the real `OcrDescriber`, and one with an instant describer that
records what it receives and how many calls overlap (for the checks where OCR would only cost time)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner
from PIL import Image, ImageDraw, ImageFont

from newsllm_pipeline.cli import main
from newsllm_pipeline.documents.descriptions import DescriptionError, OcrDescriber
from newsllm_pipeline.serving.server import running_in_thread
from newsllm_pipeline.vision.app import create_app
from newsllm_pipeline.vision.client import docling_picture_description
from newsllm_pipeline.vision.server import load_describer
from newsllm_pipeline.vision.service import ServerSettings
from newsllm_pipeline.vision.uploads import MB
from tests.conftest import FONT, banner

TOKEN = "token-de-prueba-9f2c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"


@dataclass
class Server:
    url: str
    service: object  # the app's VisionService: its counts and settings
    describer: object


@contextlib.contextmanager
def serving(describer, **settings):
    app = create_app(describer, TOKEN, ServerSettings(model=describer.name, **settings))
    with running_in_thread(app) as url:
        yield Server(url, app.state.service, describer)


@pytest.fixture(scope="module")
def ocr_server():
    with serving(OcrDescriber(), max_concurrency=2) as server:
        yield server


class RecordingDescriber:
    """Answers at once with the size it was given; records sizes and the most calls running together.
    The prompt `fallar` makes it fail as a model can (DescriptionError), `romper` as a bug would."""

    name = "registrador"

    def __init__(self, seconds: float = 0.05):
        self.seconds = seconds
        self.sizes: list[tuple[int, int]] = []
        self.running = self.peak = 0
        self._lock = threading.Lock()

    def describe_picture(self, picture: Image.Image, prompt: str) -> str:
        if prompt == "fallar":
            raise DescriptionError("el modelo no generó texto")
        if prompt == "romper":
            raise RuntimeError("CUDA out of memory")
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.sizes.append(picture.size)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
        return f"{picture.mode} {picture.width}x{picture.height}: {prompt}"

    def describe(self, image: Path, prompt: str) -> str:
        return self.describe_picture(Image.open(image).convert("RGB"), prompt)


@pytest.fixture(scope="module")
def quick_server():
    with serving(RecordingDescriber(), max_concurrency=2, max_upload_bytes=256 * 1024, max_side=512) as server:
        yield server


def encoded(picture: Image.Image, kind: str, **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, kind, **options)
    return buffer.getvalue()


def word_image(word: str) -> bytes:
    """A PNG with one word on it, cheap for OCR (about 0.3 s: RapidOCR scales the short side up to 736 px, so
    squarish pictures cost least)."""
    picture = Image.new("RGB", (240, 160), "white")
    ImageDraw.Draw(picture).text((15, 60), word, fill="black", font=ImageFont.truetype(FONT, 36))
    return encoded(picture, "PNG")


def analyze(server: Server, data: bytes, text: str | None = None, headers=AUTH) -> requests.Response:
    form = {"text": text} if text else {}
    return requests.post(f"{server.url}/analyze", files={"image": ("x", data)}, data=form, headers=headers, timeout=60)


# Authentication ----------------------------------------------------------------------------------------------


def test_health_and_page_are_open_and_everything_else_needs_the_token(quick_server, caplog):
    caplog.set_level(logging.INFO)
    url, png = quick_server.url, encoded(Image.new("RGB", (64, 64), "white"), "PNG")

    assert requests.get(f"{url}/health", timeout=5).json() == {"status": "ok"}
    page = requests.get(f"{url}/", timeout=5)
    assert page.status_code == 200 and '<input id="image"' in page.text and 'fetch("analyze"' in page.text

    missing = requests.get(f"{url}/status", timeout=5)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json()["success"] is False and "Authorization: Bearer" in missing.json()["error"]
    wrong = analyze(quick_server, png, headers={"Authorization": "Bearer otro-token"})
    assert wrong.status_code == 401 and wrong.json() == {"success": False, "error": "invalid token"}
    basic = requests.get(f"{url}/status", headers={"Authorization": f"Basic {TOKEN}"}, timeout=5)
    assert basic.status_code == 401 and "malformed" in basic.json()["error"]
    openai = requests.post(f"{url}/v1/chat/completions", json={"messages": []}, timeout=5)
    assert openai.status_code == 401
    assert openai.json()["error"]["type"] == "authentication_error" and openai.json()["error"]["code"]
    assert requests.get(f"{url}/status", headers=AUTH, timeout=5).status_code == 200

    assert "GET /status 401" in caplog.text and "POST /analyze 401" in caplog.text
    assert TOKEN not in caplog.text and "otro-token" not in caplog.text


def test_the_server_refuses_to_start_without_a_token(monkeypatch):
    monkeypatch.delenv("NEWSLLM_VISION_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["vision-server", "--port", "0"])
    assert result.exit_code == 1
    assert "NEWSLLM_VISION_TOKEN is not set" in result.output and "--no-auth" in result.output


# Real OCR behind each endpoint -------------------------------------------------------------------------------


def test_analyze_describes_an_uploaded_picture_with_its_text(ocr_server, tmp_path):
    image = banner(tmp_path / "grafico.png", ["Presupuestos 2024"])
    reply = analyze(ocr_server, image.read_bytes(), text="¿Qué dice la imagen?")
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["success"] is True and "Presupuestos 2024" in result["response"]
    assert result["prompt"] == "¿Qué dice la imagen?" and result["model"] == "rapidocr"
    assert result["image"] == dict(format="PNG", width=640, height=480, bytes=image.stat().st_size, described_at=None)
    assert 0 < result["timing"]["model_s"] <= result["processing_time"] == result["timing"]["total_s"]


@pytest.mark.parametrize("as_data_url", [True, False], ids=["data_url", "plain_base64"])
def test_analyze_base64_takes_a_data_url_or_plain_base64(ocr_server, as_data_url):
    text = base64.b64encode(word_image("Sanidad")).decode("ascii")
    image = f"data:image/png;base64,{text}" if as_data_url else text
    reply = requests.post(f"{ocr_server.url}/analyze_base64", json={"image": image}, headers=AUTH, timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["success"] is True and "Sanidad" in reply.json()["response"]


def test_status_counts_requests_and_reports_the_backend(ocr_server):
    before = requests.get(f"{ocr_server.url}/status", headers=AUTH, timeout=5).json()
    assert analyze(ocr_server, b"no es una imagen").status_code == 400
    status = requests.get(f"{ocr_server.url}/status", headers=AUTH, timeout=5).json()
    described_by = (status["backend"], status["model"], status["device"], status["max_concurrency"])
    assert described_by == ("ocr", "rapidocr", "cpu", 2)
    assert status["uptime_s"] > 0 and status["limits"]["formats"] == ["JPEG", "PNG", "BMP", "TIFF", "GIF"]
    counts = status["requests"]
    assert counts["total"] == before["requests"]["total"] + 1 and counts["failed"] == before["requests"]["failed"] + 1
    assert counts["in_flight"] == 0 and counts["total"] == counts["succeeded"] + counts["failed"]


def test_sixteen_parallel_requests_are_each_answered_for_their_own_image(ocr_server):
    words = ["Madrid", "Sevilla", "Bilbao", "Oviedo", "Cuenca", "Toledo", "Zamora", "Lugo"] * 2
    images = [word_image(word) for word in words]
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda data: analyze(ocr_server, data), images))
    assert [reply.status_code for reply in replies] == [200] * 16
    assert all(word in reply.json()["response"] for word, reply in zip(words, replies, strict=True))
    status = requests.get(f"{ocr_server.url}/status", headers=AUTH, timeout=5).json()["requests"]
    assert status["peak_running"] == 2 and status["in_flight"] == status["running"] == 0


def test_the_pipelines_openai_describer_uses_the_server(ocr_server, tmp_path):
    from newsllm_pipeline.resources.documents import OpenAIDescriberResource

    image = banner(tmp_path / "grafico.png", ["Gasto en sanidad"])
    resource = OpenAIDescriberResource(url=f"{ocr_server.url}/v1", model="qwen2-vl", api_key=TOKEN)
    assert "Gasto en sanidad" in resource.describer().describe(image, resource.question())

    anonymous = OpenAIDescriberResource(url=f"{ocr_server.url}/v1", model="qwen2-vl")
    with pytest.raises(DescriptionError, match="HTTP 401: missing token"):
        anonymous.describer().describe(image, "Describe la imagen.")


def test_doclings_picture_description_api_option_describes_a_real_pdf(ocr_server):
    from newsllm_pipeline.documents.conversion import offline_converter

    options = docling_picture_description(ocr_server.url, TOKEN, prompt="Describe la figura.")
    before = ocr_server.service.counts.succeeded
    document = offline_converter(picture_description=options).convert(SHARED_PDFS / "picture_classification.pdf")
    pictures = document.document.pictures

    described = [picture.meta.description.text for picture in pictures if picture.meta and picture.meta.description]
    assert len(described) == ocr_server.service.counts.succeeded - before >= 2
    assert any(text.startswith("Mapa: Florida Power Plant") for text in described)  # the map's title, read by OCR
    assert any("Plot number" in text for text in described)  # the bar chart's axis


# What clients send -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "BMP", "TIFF", "GIF"])
def test_every_accepted_format_is_described(quick_server, kind):
    picture = Image.new("RGB", (120, 80), (200, 30, 30))
    reply = analyze(quick_server, encoded(picture, kind), text="color")
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"] == "RGB 120x80: color" and reply.json()["image"]["format"] == kind


def test_transparent_pictures_reach_the_describer_on_white(quick_server):
    picture = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    reply = analyze(quick_server, encoded(picture, "PNG"))
    assert reply.status_code == 200 and reply.json()["response"].startswith("RGB 40x40")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the image is empty"),
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", "not an image in a known format"),
        (encoded(Image.new("RGB", (50, 50)), "WEBP"), "WEBP images are not accepted: send JPG, PNG, BMP, TIFF"),
        (encoded(Image.new("RGB", (300, 300), "white"), "PNG")[:150], "not a readable image"),
        (encoded(Image.effect_noise((200, 200), 60).convert("RGB"), "GIF")[:2000], "not a readable image"),
        (encoded(Image.new("1", (8000, 6000)), "PNG"), "declares 8000 × 6000 pixels, over the limit"),
    ],
    ids=["empty", "pdf", "webp", "truncated_png", "truncated_gif", "decompression_bomb"],
)
def test_a_bad_image_is_a_400_with_the_reason(quick_server, data, reason):
    reply = analyze(quick_server, data)
    assert reply.status_code == 400, reply.text
    assert reply.json()["success"] is False and reason in reply.json()["error"]


def test_an_oversized_upload_is_refused_with_the_limit(quick_server):
    noise = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))
    image = encoded(noise, "BMP")  # 480 kB, over the 256 kB limit of this server but within its body limit
    reply = analyze(quick_server, image)
    assert reply.status_code == 413 and "over the 0.25 MB limit" in reply.json()["error"]

    body_limit = quick_server.service.settings.max_body_bytes
    reply = analyze(quick_server, b"x" * (body_limit + 1))  # refused on its Content-Length, before reading
    assert reply.status_code == 413 and "the request is larger than" in reply.json()["error"]
    chunks = (b"x" * 65536 for _ in range(body_limit // 65536 + 2))  # chunked: no Content-Length to go by
    headers = {**AUTH, "Content-Type": "application/json"}
    reply = requests.post(f"{quick_server.url}/analyze_base64", data=chunks, headers=headers, timeout=10)
    assert reply.status_code == 413 and "the request is larger than" in reply.json()["error"]

    data_url = "data:image/bmp;base64," + base64.b64encode(image).decode()
    reply = requests.post(f"{quick_server.url}/analyze_base64", json={"image": data_url}, headers=AUTH, timeout=10)
    assert reply.status_code == 413 and "over the 0.25 MB limit" in reply.json()["error"]


def test_a_large_picture_is_scaled_down_before_the_describer(quick_server):
    reply = analyze(quick_server, encoded(Image.new("RGB", (2000, 500), "white"), "PNG"))
    assert reply.status_code == 200
    assert reply.json()["response"].startswith("RGB 512x128") and quick_server.describer.sizes[-1] == (512, 128)
    assert reply.json()["image"]["described_at"] == [512, 128] and reply.json()["image"]["width"] == 2000


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"text": "hola"}, "no `image`"),
        ({"image": "data:image/png;base64,@@@no-base64@@@"}, "not valid base64"),
        ({"image": "data:image/png,texto-sin-base64"}, "only base64 data URLs"),
        ({"image": 42}, "must be a data URL"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_analyze_base64_explains_a_malformed_body(quick_server, body, reason):
    reply = requests.post(f"{quick_server.url}/analyze_base64", json=body, headers=AUTH, timeout=10)
    assert reply.status_code == 400 and reason in reply.json()["error"]


def test_a_describer_failure_is_a_500_with_a_short_error(quick_server):
    png = encoded(Image.new("RGB", (64, 64), "white"), "PNG")
    model_failure = analyze(quick_server, png, text="fallar")
    assert model_failure.status_code == 500
    assert model_failure.json()["error"] == "the model could not describe the image: el modelo no generó texto"
    crash = analyze(quick_server, png, text="romper")
    assert crash.status_code == 500
    assert crash.json()["error"] == "the describer failed (RuntimeError); see the server log"


def test_sixteen_parallel_requests_never_run_more_than_the_bound(quick_server):
    describer = quick_server.describer
    describer.peak = 0
    png = encoded(Image.new("RGB", (64, 64), "white"), "PNG")
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda index: analyze(quick_server, png, text=f"pregunta {index}"), range(16)))
    assert [reply.json()["response"] for reply in replies] == [f"RGB 64x64: pregunta {index}" for index in range(16)]
    assert describer.peak == quick_server.service.settings.max_concurrency == 2
    assert max(reply.json()["timing"]["queue_s"] for reply in replies) > 0  # the others waited for a slot


def test_a_full_queue_is_a_503_to_retry_later():
    png = encoded(Image.new("RGB", (64, 64), "white"), "PNG")
    with serving(RecordingDescriber(seconds=0.5), max_concurrency=1, max_waiting=1) as server:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: analyze(server, png), range(4)))
    statuses = sorted(reply.status_code for reply in replies)
    assert statuses[:2] == [200, 200] and set(statuses[2:]) == {503}
    busy = next(reply for reply in replies if reply.status_code == 503)
    assert busy.headers["Retry-After"] == "5" and "the server is busy" in busy.json()["error"]


# OpenAI's chat completions -----------------------------------------------------------------------------------


def chat(server: Server, content, **fields) -> requests.Response:
    body = {"messages": [{"role": "system", "content": "Eres útil."}, {"role": "user", "content": content}], **fields}
    return requests.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10)


def test_chat_completions_answers_in_openais_format(quick_server):
    data_url = "data:image/gif;base64," + base64.b64encode(encoded(Image.new("RGB", (30, 20)), "GIF")).decode()
    content = [{"type": "image_url", "image_url": {"url": data_url}}, {"type": "text", "text": "¿Qué es?"}]
    reply = chat(quick_server, content, model="qwen2-vl", max_tokens=64)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["model"] == "qwen2-vl" and abs(answer["created"] - time.time()) < 60
    [choice] = answer["choices"]
    assert choice["message"] == {"role": "assistant", "content": "RGB 30x20: ¿Qué es?"}
    assert (choice["index"], choice["finish_reason"]) == (0, "stop")
    usage = answer["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0

    models = requests.get(f"{quick_server.url}/v1/models", headers=AUTH, timeout=5).json()
    assert models["data"][0]["id"] == "registrador"


@pytest.mark.parametrize(
    ("content", "fields", "status", "message"),
    [
        ([{"type": "image_url", "image_url": {"url": "https://example.org/a.png"}}], {}, 400, "remote image URLs"),
        ("solo texto", {}, 400, "has no image"),
        ([{"type": "text", "text": "hola"}], {}, 400, "exactly one `image_url` part"),
        ([{"type": "input_audio"}], {}, 400, "unsupported content part 'input_audio'"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}], {}, 400, "not an image"),
        ([{"type": "image_url", "image_url": "data:x"}], {"max_tokens": 0}, 400, "`max_tokens` must be a positive"),
    ],
    ids=["remote_url", "no_image", "text_only", "audio", "bad_image", "bad_max_tokens"],
)
def test_chat_completions_errors_come_in_openais_error_format(quick_server, content, fields, status, message):
    reply = chat(quick_server, content, **fields)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error" and error["code"]


# The client --------------------------------------------------------------------------------------------------


def test_vision_client_shows_status_describes_an_image_and_a_batch(ocr_server, tmp_path):
    runner = CliRunner()
    server = ["--server", ocr_server.url, "--token", TOKEN]

    status = runner.invoke(main, ["vision-client", *server, "--status"])
    assert status.exit_code == 0, status.output
    assert "rapidocr (ocr backend on cpu), 2 at a time" in status.output

    image = tmp_path / "grafico.png"
    image.write_bytes(word_image("Cultura"))
    single = runner.invoke(main, ["vision-client", *server, "--image", str(image), "--text", "¿Qué pone?"])
    assert single.exit_code == 0, single.output
    assert "Figura con el texto «Cultura»" in single.output

    folder = tmp_path / "imagenes"
    folder.mkdir()
    (folder / "deportes.png").write_bytes(word_image("Deportes"))
    (folder / "economia.jpg").write_bytes(encoded(Image.open(io.BytesIO(word_image("Economía"))), "JPEG"))
    (folder / "notas.txt").write_text("no es una imagen", encoding="utf-8")
    questions = tmp_path / "preguntas.txt"
    questions.write_text("# una pregunta por línea\n¿Qué texto aparece?\n\n", encoding="utf-8")
    batch = runner.invoke(main, ["vision-client", *server, "--batch", str(folder), "--questions", str(questions)])
    assert batch.exit_code == 0, batch.output
    results = folder / "vision_results"
    assert sorted(path.name for path in results.iterdir()) == ["deportes.json", "economia.json"]
    record = json.loads((results / "deportes.json").read_text(encoding="utf-8"))
    assert record["image"] == str(folder / "deportes.png") and len(record["answers"]) == 1
    assert record["answers"][0]["question"] == "¿Qué texto aparece?" and "Deportes" in record["answers"][0]["response"]
    assert "Econom" in json.loads((results / "economia.json").read_text(encoding="utf-8"))["answers"][0]["response"]


def test_vision_client_says_what_went_wrong(quick_server, tmp_path):
    runner = CliRunner()
    wrong = runner.invoke(main, ["vision-client", "--server", quick_server.url, "--token", "otro", "--status"])
    assert wrong.exit_code == 1 and "HTTP 401: invalid token" in wrong.output

    nobody = runner.invoke(main, ["vision-client", "--server", "http://127.0.0.1:9", "--status"])
    assert nobody.exit_code == 1 and "no vision server at http://127.0.0.1:9" in nobody.output

    both = runner.invoke(main, ["vision-client", "--status", "--interactive"])
    assert both.exit_code == 2 and "choose one of" in both.output


def test_vision_client_interactive_session(quick_server, tmp_path):
    image = tmp_path / "foto.png"
    image.write_bytes(encoded(Image.new("RGB", (90, 60), "white"), "PNG"))
    answers = f"{image}\n¿Qué es?\n\n\n"  # image, question, new image?, quit
    result = CliRunner().invoke(
        main, ["vision-client", "--server", quick_server.url, "--token", TOKEN, "--interactive"], input=answers
    )
    assert result.exit_code == 0, result.output
    assert "RGB 90x60: ¿Qué es?" in result.output


# The transformers backend ------------------------------------------------------------------------------------


def test_eight_bit_loading_fails_clearly_where_it_cannot_run(tmp_path):
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ValueError, match="8-bit loading needs a CUDA device"):
        load_describer("transformers", model=str(tmp_path), device="cpu", load_in_8bit=True)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("NEWSLLM_TEST_VLM_DIR"), reason="set NEWSLLM_TEST_VLM_DIR to a VLM folder")
def test_a_vision_language_model_behind_the_server_reads_the_picture(tmp_path):
    describer = load_describer("transformers", model=os.environ["NEWSLLM_TEST_VLM_DIR"], max_new_tokens=96)
    with serving(describer, backend="transformers", device=describer.device, max_upload_bytes=20 * MB) as server:
        reply = analyze(server, banner(tmp_path / "grafico.png", ["PRESUPUESTOS"]).read_bytes())
    assert reply.status_code == 200 and "presupuestos" in reply.json()["response"].lower()
