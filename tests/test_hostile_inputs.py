"""Hostile but fair input (issue 15): nothing the user owns is lost, one bad item never stops the others,
and every limit answers with the input and the reason. Database cases run on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import io
import json
import re
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image

from newsllm_pipeline import db
from newsllm_pipeline.cli import main
from newsllm_pipeline.feeds import MB, FeedLimits, ingest_feeds
from newsllm_pipeline.serving.server import free_port, running_in_process
from tests.conftest import sample_rows

SHARED_PDFS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pdfs"

# `newsllm process-document --out`: never delete what the chain did not write ---------------------------------


def _process(source, out, **kwargs):
    return CliRunner().invoke(main, ["process-document", str(source), "--out", str(out)], **kwargs)


def _note(tmp_path, name="nota.md"):
    source = tmp_path / "inbox" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("# Nota\n\nUn párrafo de prueba.\n", encoding="utf-8")
    return source


def test_process_document_refuses_the_sources_own_folder_and_deletes_nothing(tmp_path):
    source = _note(tmp_path)
    neighbour = source.parent / "otro.pdf"
    neighbour.write_bytes(b"%PDF-1.4 not really")
    result = _process(source, source.parent)
    assert result.exit_code != 0
    assert "own folder" in result.output and str(source.parent) in result.output
    assert sorted(p.name for p in source.parent.iterdir()) == ["nota.md", "otro.pdf"]


def test_process_document_refuses_a_folder_that_is_not_its_own_output(tmp_path):
    source, out = _note(tmp_path), tmp_path / "informes"
    out.mkdir()
    (out / "importante.docx").write_bytes(b"irreplaceable")
    result = _process(source, out)
    assert result.exit_code != 0
    assert "importante.docx" in result.output and "not a previous output" in result.output
    assert (out / "importante.docx").read_bytes() == b"irreplaceable"


def test_process_document_refuses_the_current_folder(tmp_path, monkeypatch):
    source = _note(tmp_path)
    monkeypatch.chdir(source.parent)
    result = _process(source.name, ".")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "current folder" in result.output or "own folder" in result.output
    assert source.exists()


def test_process_document_refuses_a_file_as_out(tmp_path):
    source, out = _note(tmp_path), tmp_path / "salida"
    out.write_text("keep me", encoding="utf-8")
    result = _process(source, out)
    assert result.exit_code != 0 and out.read_text(encoding="utf-8") == "keep me"


def test_process_document_replaces_its_own_previous_output(tmp_path):
    source, out = _note(tmp_path), tmp_path / "salida"
    first = _process(source, out)
    assert first.exit_code == 0, first.output
    assert {"texto.md", "documento.json", "texto_final.md"} <= {p.name for p in out.iterdir()}
    source.write_text("# Nota\n\nOtro texto distinto.\n", encoding="utf-8")
    again = _process(source, out)
    assert again.exit_code == 0, again.output
    assert "Otro texto distinto" in (out / "texto_final.md").read_text(encoding="utf-8")


# Ingestion: each item is the unit, on both dialects --------------------------------------------------------


def _feed(tmp_path, name, items):
    entries = "".join(
        f"<item><title>{title}</title><link>{link}</link><description>Resumen {n}</description></item>"
        for n, (title, link) in enumerate(items)
    )
    path = tmp_path / name
    path.write_text(
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{name}</title>{entries}'
        "</channel></rss>",
        encoding="utf-8",
    )
    return str(path)


def _stored(engine):
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(db.noticias.c.url, db.noticias.c.titulo)).all())


def test_nul_characters_are_removed_and_an_unstorable_item_rejects_only_itself(engine, tmp_path):
    long_link = "https://test.example/" + "x" * 2100
    hostile = _feed(
        tmp_path,
        "hostil.xml",
        [
            ("Título con &#0; entidad nula", "https://test.example/a"),
            ("Enlace larguísimo", long_link),
            ("Título normal", "https://test.example/b"),
        ],
    )
    raw_nul = _feed(tmp_path, "nul_crudo.xml", [("Nulo\x00crudo", "https://test.example/c")])
    after = _feed(tmp_path, "despues.xml", [("Otra fuente", "https://test.example/d")])
    reports = ingest_feeds(engine, [hostile, raw_nul, after])
    stored = _stored(engine)
    assert stored["https://test.example/a"] == "Título con entidad nula"
    assert stored["https://test.example/c"] == "Nulo crudo"
    assert {"https://test.example/b", "https://test.example/d"} <= stored.keys()
    assert long_link not in stored and len(stored) == 4
    assert [r.new for r in reports] == [2, 1, 1] and all(r.error is None for r in reports)
    (rejected,) = reports[0].rejected
    assert "hostil.xml" in rejected and "url" in rejected and "2,048" in rejected


def test_cli_ingest_reports_rejected_items_and_exits_non_zero(database_url, tmp_path):
    feed = _feed(
        tmp_path,
        "hostil.xml",
        [("Bueno", "https://test.example/ok"), ("Largo", "https://test.example/" + "y" * 3000)],
    )
    result = CliRunner().invoke(main, ["ingest", feed, "--url", database_url])
    assert result.exit_code == 1, result.output
    assert "rejected: " in result.output and "hostil.xml" in result.output and "2,048" in result.output
    assert "1 new" in result.output


def test_the_noticias_asset_reports_rejected_items(database_url, tmp_path):
    import dagster as dg

    from newsllm_pipeline.assets.noticias import noticias
    from newsllm_pipeline.resources.noticias import NoticiasDatabase

    feed = _feed(
        tmp_path, "hostil.xml", [("Bueno", "https://test.example/ok"), ("Largo", "https://t.example/" + "z" * 3000)]
    )
    result = dg.materialize(
        [noticias],
        resources={"noticias_db": NoticiasDatabase(url=database_url)},
        run_config={"ops": {"noticias": {"config": {"feeds": [feed]}}}},
    )
    assert result.success
    materialization = result.asset_materializations_for_node("noticias")[0]
    assert materialization.metadata["rejected_items"].value == 1
    checks = {check.check_name: check for check in result.get_asset_check_evaluations()}
    assert checks["all_feeds_readable"].passed
    check = checks["no_rejected_items"]
    assert not check.passed and "hostil.xml" in json.dumps(check.metadata["rejected"].value)


def test_insert_new_keeps_the_good_rows_when_one_cannot_be_stored(engine):
    rows = sample_rows(3)
    rows[1]["url"] = "https://test.example/" + "w" * 2048
    rows[2]["titulo"] = "con \x00 nulo"
    result = db.insert_new(engine, rows)
    assert result.new == 2 and len(result.rejected) == 1
    assert "2,048" in result.rejected[0].reason and result.rejected[0].row["url"] == rows[1]["url"]
    assert "con  nulo" in _stored(engine).values()


def test_rows_the_database_refuses_are_rejected_one_by_one(engine):
    rows = [{**row, "fecha": None} for row in sample_rows(4)]
    rows[1]["titulo"] = "suelto \ud800"
    rows[2]["fecha"] = "mañana"  # passes the checks here; the database (or its driver) refuses it
    result = db.insert_new(engine, rows)
    assert result.new == 2 and sorted(_stored(engine)) == [rows[0]["url"], rows[3]["url"]]
    reasons = {item.row["url"]: item.reason for item in result.rejected}
    assert "not valid Unicode" in reasons[rows[1]["url"]] and "refused" in reasons[rows[2]["url"]]


def test_a_feed_that_crashes_the_parser_is_reported_and_the_next_feed_is_stored(engine, tmp_path):
    broken = _feed(tmp_path, "sustituto.xml", [("a &#xD800; b", "https://test.example/s")])
    after = _feed(tmp_path, "despues.xml", [("Otra fuente", "https://test.example/d")])
    reports = ingest_feeds(engine, [broken, after])
    assert "sustituto.xml: the feed could not be parsed" in reports[0].error
    assert reports[1].new == 1 and list(_stored(engine)) == ["https://test.example/d"]


class _EndlessFeedHandler(http.server.BaseHTTPRequestHandler):
    """/huge: an RSS document that never ends (no Content-Length); /drip: a byte every 0.2 s."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/rss+xml")
        self.end_headers()
        item = b"<item><title>Relleno</title><link>https://test.example/r</link></item>" * 100
        try:
            self.wfile.write(b'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>')
            for _ in range(100_000):
                self.wfile.write(item if self.path == "/huge" else b" ")
                if self.path == "/drip":
                    self.wfile.flush()
                    time.sleep(0.2)
        except OSError:
            pass  # the client hung up, as it should

    def log_message(self, *args):
        pass


@pytest.fixture
def endless_feed_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EndlessFeedHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_feed_over_the_byte_cap_or_the_deadline_is_refused_and_the_next_is_read(
    engine, tmp_path, endless_feed_server
):
    after = _feed(tmp_path, "despues.xml", [("Otra fuente", "https://test.example/d")])
    limits = FeedLimits(max_bytes=2 * MB, total_seconds=1.5)
    started = time.monotonic()
    huge, drip, good = ingest_feeds(
        engine, [f"{endless_feed_server}/huge", f"{endless_feed_server}/drip", after], limits
    )
    assert time.monotonic() - started < 10
    assert "/huge: the feed is larger than 2 MB" in huge.error
    assert "/drip: the feed was still arriving after 1.5 s" in drip.error
    assert good.new == 1 and list(_stored(engine)) == ["https://test.example/d"]


def test_a_feed_file_over_the_byte_cap_is_refused(engine, tmp_path, monkeypatch):
    path = tmp_path / "grande.xml"
    path.write_bytes(b" " * (MB + 1))
    monkeypatch.setenv("NEWSLLM_FEED_MAX_MB", "1")
    (report,) = ingest_feeds(engine, [str(path)])
    assert "grande.xml: the feed is larger than 1 MB (NEWSLLM_FEED_MAX_MB)" in report.error


# `newsllm categorize`: bad lines reported with file, line and reason, before the model loads --------------


def test_categorize_reports_every_bad_line_before_loading_the_model(tmp_path):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(
        b'{"titulo": "Bueno", "resumen": "ok"}\n'
        b"{no es json\n"
        b'{"titulo": "\xff\xfe mal codificado"}\n'
        b'{"titulo": 42}\n'
        b'{"titulo": ["a", "b"]}\n'
        b'["una", "lista"]\n'
    )
    result = CliRunner().invoke(main, ["categorize", str(source), "--out", str(out), "--model", str(tmp_path / "no")])
    assert "Traceback" not in result.output
    for line, reason in [(2, "not valid JSON"), (3, "UTF-8"), (4, "titulo"), (5, "titulo"), (6, "JSON object")]:
        assert f"in.jsonl:{line}: " in result.output and reason in result.output, (line, result.output)
    assert "in.jsonl:1:" not in result.output
    assert result.exit_code != 0 and not out.exists()


def test_categorize_writes_the_valid_lines_and_exits_1_on_bad_ones(tmp_path, model_dir):
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_bytes(b'{"titulo": "El Valencia gana en Mestalla"}\n{roto\n{"titulo": "Sube el IPC"}\n')
    result = CliRunner().invoke(main, ["categorize", str(source), "--out", str(out), "--model", model_dir])
    assert result.exit_code == 1, result.output
    assert "in.jsonl:2: not valid JSON" in result.output
    titles = [json.loads(line)["titulo"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert titles == ["El Valencia gana en Mestalla", "Sube el IPC"]


# `newsllm review`: an id no row can have is a reported row, not a traceback ------------------------------


def _review_csv(tmp_path, rows):
    path = tmp_path / "revisiones.csv"
    path.write_text("id,url,categoria\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows), encoding="utf-8")
    return path


def test_review_file_rejects_out_of_range_and_non_ascii_ids_and_writes_the_rest(database_url, tmp_path):
    engine = db.create_db_engine(database_url)
    db.upgrade(engine)
    db.insert_new(engine, sample_rows(2))
    csv_path = _review_csv(
        tmp_path,
        [("1", "", "Deportes"), ("99999999999999999999", "", "Economía"), ("²", "", "Salud"), ("2", "", "Cultura")],
    )
    result = CliRunner().invoke(main, ["review", "--file", str(csv_path), "--url", database_url])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "revisiones.csv:3" in result.output and "revisiones.csv:4" in result.output
    assert "2 written, 2 rejected" in result.output
    with engine.connect() as conn:
        reviewed = dict(conn.execute(sa.select(db.noticias.c.id, db.noticias.c.categoria_revisada)).all())
    assert reviewed == {1: "Deportes", 2: "Cultura"}


@pytest.mark.parametrize("key", ["99999999999999999999", "²"])
def test_review_one_id_no_row_can_have_is_an_error_not_a_traceback(database_url, key):
    result = CliRunner().invoke(main, ["review", key, "Deportes", "--url", database_url])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output and key in result.output


def test_mark_reviewed_rejects_ids_outside_the_id_range(engine):
    db.insert_new(engine, sample_rows(1))
    result = db.mark_reviewed(engine, [(2**63, "Deportes"), (-1, "Deportes"), (1, "Deportes")])
    assert result.written == 1 and [r.key for r in result.rejected] == [2**63, -1]


# The vision server: decoding waits for a slot, so memory follows max_concurrency -------------------------------

SIZE_SERVER = """
import sys
from newsllm_pipeline.vision.app import create_app
from newsllm_pipeline.vision.server import serve
from newsllm_pipeline.vision.service import ServerSettings

class SizeDescriber:  # instant, so the test measures the server's own decoding
    name = "tamaño"

    def describe_picture(self, picture, prompt):
        return "x".join(map(str, picture.size))

settings = ServerSettings(model="tamaño", max_concurrency=2)
serve(create_app(SizeDescriber(), None, settings), "127.0.0.1", int(sys.argv[1]))
"""


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


@contextlib.contextmanager
def _size_server():
    port = free_port()
    command = [sys.executable, "-c", SIZE_SERVER, str(port)]
    with running_in_process(command, port, timeout_s=60, stderr=subprocess.DEVNULL) as (url, server):
        yield url, server.pid


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's peak RSS from /proc")
def test_vision_server_memory_follows_max_concurrency_not_the_requests_in_flight():
    side, requests_at_once = 5000, 12
    png = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(png, "PNG")  # about 75 KB on the wire
    decoded_mb = side * side * 4 / MB  # Pillow holds RGB in 4 bytes a pixel
    body = {"image": base64.b64encode(png.getvalue()).decode(), "text": "?"}
    with _size_server() as (url, pid):
        post = functools.partial(requests.post, f"{url}/analyze_base64", json=body, timeout=120)
        assert post().json()["response"] == "1536x1536"
        after_one = _peak_rss_mb(pid)
        with ThreadPoolExecutor(requests_at_once) as pool:
            answers = list(pool.map(lambda _: post(), range(requests_at_once)))
        growth = _peak_rss_mb(pid) - after_one
    assert [answer.status_code for answer in answers] == [200] * requests_at_once
    # Two slots: about one more decoded picture than the single request held (145 MB measured for 95 MB
    # pictures); decoding outside the slots held all twelve at once (2,442 MB measured).
    assert growth < 3 * decoded_mb, f"peak RSS grew {growth:.0f} MB under {requests_at_once} requests"


class _SizeDescriber:
    name = "tamaño"

    def describe_picture(self, picture, prompt):
        return "x".join(map(str, picture.size))


@pytest.mark.parametrize("body", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000 + "1" + "}" * 50_000, "[]", '"x"'])
def test_deep_or_non_object_json_bodies_get_a_400_in_each_apis_error_shape(body):
    from newsllm_pipeline.serving.server import running_in_thread
    from newsllm_pipeline.vision.app import create_app

    with running_in_thread(create_app(_SizeDescriber(), None)) as url:
        original = requests.post(f"{url}/analyze_base64", data=body, timeout=30)
        openai = requests.post(f"{url}/v1/chat/completions", data=body, timeout=30)
    assert original.status_code == 400 and original.json()["success"] is False
    assert "JSON" in original.json()["error"]
    assert openai.status_code == 400 and openai.json()["error"]["type"] == "invalid_request_error"


# Documents: size limits judged before conversion, and a time limit ------------------------------------------


def _docx(path: Path, paragraphs: int) -> Path:
    import docx

    document = docx.Document()
    for number in range(paragraphs):
        document.add_paragraph(f"Párrafo {number} del informe.")
    document.save(path)
    return path


def _docx_bomb(path: Path, paragraphs: int) -> Path:
    """A valid DOCX whose document.xml repeats one paragraph: a few hundred KB that expand a few hundred times."""
    template = _docx(path.with_name("plantilla.docx"), 1)
    body = "<w:p><w:r><w:t>a</w:t></w:r></w:p>" * paragraphs
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "word/document.xml":
                data = re.sub(rb"<w:body>.*<w:sectPr", f"<w:body>{body}<w:sectPr".encode(), data, flags=re.S)
            bomb.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return path


@pytest.fixture(scope="module")
def converter():
    from newsllm_pipeline.documents.conversion import offline_converter

    return offline_converter()


def test_a_docx_bomb_is_refused_from_its_zip_directory_in_moments(tmp_path, converter):
    from newsllm_pipeline.documents.conversion import DocumentConversionError, convert_document

    bomb = _docx_bomb(tmp_path / "bomba.docx", 1_000_000)
    assert bomb.stat().st_size < 500 * 1024
    started = time.monotonic()
    with pytest.raises(DocumentConversionError, match=r"bomba\.docx: the DOCX expands \d+ times") as raised:
        convert_document(bomb, tmp_path / "salida", converter)
    assert time.monotonic() - started < 5 and "NEWSLLM_DOCX_MAX_RATIO" in str(raised.value)
    assert not (tmp_path / "salida").exists()


def test_the_docx_size_limit_is_configurable_and_a_normal_docx_converts(tmp_path, converter, monkeypatch):
    from newsllm_pipeline.documents.conversion import DocumentConversionError, convert_document

    report = _docx(tmp_path / "informe.docx", 50)
    assert "Párrafo 49" in convert_document(report, tmp_path / "bien", converter).markdown_path.read_text()
    monkeypatch.setenv("NEWSLLM_DOCX_MAX_UNCOMPRESSED_MB", "0.01")
    with pytest.raises(DocumentConversionError, match="over the 0.01 MB limit .NEWSLLM_DOCX_MAX_UNCOMPRESSED_MB."):
        convert_document(report, tmp_path / "mal", converter)


def test_a_conversion_over_the_time_limit_is_an_error_and_writes_nothing(tmp_path, monkeypatch):
    from newsllm_pipeline.documents.conversion import DocumentConversionError, convert_document, offline_converter

    monkeypatch.setenv("NEWSLLM_DOC_TIMEOUT_S", "0.001")
    slow = offline_converter()  # Docling reads the PDF timeout when the converter is built
    for source in (SHARED_PDFS / "multi_page.pdf", _docx(tmp_path / "informe.docx", 20)):
        with pytest.raises(DocumentConversionError, match=r"over the 0\.001 s limit \(NEWSLLM_DOC_TIMEOUT_S\)"):
            convert_document(source, tmp_path / source.stem, slow)
        assert not (tmp_path / source.stem).exists()


def test_process_document_reports_a_limit_and_exits_non_zero(tmp_path):
    bomb = _docx_bomb(tmp_path / "bomba.docx", 200_000)
    result = _process(bomb, tmp_path / "salida")
    assert result.exit_code == 1 and "the DOCX expands" in result.output
