"""The resident categoriser (`newsllm categorizer-server`) for real: a server process on 127.0.0.1 holding the
packaged SmolLM2, answering what the in-process categoriser answers, and pipeline runs that use it through
`RemoteCategorizerResource` (NEWSLLM_BACKEND=remote) without loading a model or importing torch."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import dagster as dg
import pytest
import requests
import sqlalchemy as sa
from click.testing import CliRunner
from starlette.testclient import TestClient

from newsllm_pipeline import db
from newsllm_pipeline.categorizer import CategorizationError, item_text
from newsllm_pipeline.categorizer.batch import run_batch
from newsllm_pipeline.categorizer.client import CategorizerClient, CategorizerServerError
from newsllm_pipeline.categorizer.prompt import DEFAULT_CATEGORIES
from newsllm_pipeline.categorizer.server import create_app
from newsllm_pipeline.categorizer.wire import CATEGORIZE_PATH
from newsllm_pipeline.cli import main
from newsllm_pipeline.jobs.noticias import categorize_noticias_job
from newsllm_pipeline.resources.noticias import (
    NoticiasDatabase,
    RemoteCategorizerResource,
    TransformersCategorizerResource,
    categorizer_from_settings,
)
from newsllm_pipeline.serving.server import free_port, running_in_process
from tests.conftest import sample_rows, site_devices

TOKEN = "token-del-categorizador-4b1e"


@pytest.fixture(scope="module")
def server_url(model_dir):
    """`newsllm categorizer-server` in its own process (its log in the captured output), with the site's settings
    pointing at the packaged model."""
    port = free_port()
    env = {
        **os.environ,
        "NEWSLLM_CATEGORIZER_TOKEN": TOKEN,
        "NEWSLLM_BACKEND": "transformers",
        "NEWSLLM_CATEGORIZER_MODEL_DIR": model_dir,
        "NEWSLLM_USE_CURRENT_ADAPTER": "0",  # as the in-process fixture: the base model alone
    }
    command = [sys.executable, "-m", "newsllm_pipeline.cli", "categorizer-server", "--port", str(port)]
    with running_in_process([*command, "--device", "cpu"], port, env=env) as (url, _):
        yield url


def _rows(engine):
    with engine.connect() as conn:
        return conn.execute(sa.select(db.noticias).order_by(db.noticias.c.id)).mappings().all()


def _sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'noticias.db'}"
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    return url, engine


def test_the_server_answers_what_the_in_process_categoriser_answers(server_url, categorizer):
    texts = [item_text(row["titulo"], row["resumen"]) for row in sample_rows(12)]
    texts += ["", "Sánchez y Feijóo debaten sobre la financiación autonómica en el Congreso"]
    remote = RemoteCategorizerResource(url=server_url, token=TOKEN)
    served = remote.categorize(texts)
    local = categorizer.categorize(texts)
    assert len(served) == len(local) == len(texts)
    for text, mine, theirs in zip(texts, local, served, strict=True):
        if isinstance(mine, CategorizationError):
            assert isinstance(theirs, CategorizationError) and str(theirs) == str(mine), text
            continue
        assert theirs.categoria == mine.categoria, text
        assert theirs.confianza == pytest.approx(mine.confianza, abs=1e-4), text
    status = requests.get(f"{server_url}/status", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).json()
    assert status["backend"] == "transformers" and status["categories"] == list(DEFAULT_CATEGORIES)
    assert status["adapter"] is None and remote.trained_adapter() is None
    assert status["requests"]["succeeded"] >= 1 and status["requests"]["failed"] == 0


def test_the_server_loads_and_runs_the_model_on_one_thread(model_dir, monkeypatch):
    """On CPU, torch work from a second thread (a second OpenMP team) slowed every later call by a sixth: the
    server's model thread loads the model and answers every request, and no other thread touches it."""
    callers = []
    load = TransformersCategorizerResource.load

    def recorded_load(resource):
        callers.append(threading.get_ident())
        return load(resource)

    monkeypatch.setattr(TransformersCategorizerResource, "load", recorded_load)
    app = create_app(TransformersCategorizerResource(model_dir=model_dir, device="cpu"), None)
    with TestClient(app) as client:
        for text in ["Sube el precio de la luz", "El Real Madrid gana la Liga"]:
            assert client.post(CATEGORIZE_PATH, json={"texts": [text]}).status_code == 200
        status = client.get("/status").json()
    assert len(callers) == 3 and len(set(callers)) == 1, callers  # the start's load, then one per request
    assert callers[0] != threading.get_ident()
    assert status["device"] == "cpu"


def test_a_run_with_the_remote_categoriser_categorises_the_rows(server_url, tmp_path):
    database_url, engine = _sqlite(tmp_path)
    db.insert_new(engine, sample_rows(12))
    resources = {
        "noticias_db": NoticiasDatabase(url=database_url),
        "categorizer": RemoteCategorizerResource(url=server_url, token=TOKEN),
        **site_devices(),
    }
    result = categorize_noticias_job.execute_in_process(
        run_config={"ops": {"categorize_backlog": {"config": {"batch_size": 5}}}}, resources=resources
    )
    assert result.output_for_node("categorize_backlog") == 12
    assert len(result.get_asset_observation_events()) == 3  # one per committed batch of 5, 5, 2
    rows = _rows(engine)
    assert all(row["llm_processed"] and row["llm_categoria"] in DEFAULT_CATEGORIES for row in rows)
    assert all(0 < row["llm_confianza"] <= 1 and row["llm_claimed_by"] is None for row in rows)


def test_a_missing_or_wrong_token_is_a_401(server_url):
    assert requests.get(f"{server_url}/health", timeout=10).status_code == 200  # open
    missing = requests.post(f"{server_url}/v1/categorize", json={"texts": ["x"]}, timeout=10)
    assert missing.status_code == 401 and "NEWSLLM_CATEGORIZER_TOKEN" in missing.json()["error"]
    with pytest.raises(CategorizerServerError, match="HTTP 401: invalid token"):
        RemoteCategorizerResource(url=server_url, token="not-the-token").load()


def test_a_malformed_request_is_a_400_with_the_reason(server_url):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for body in ({"texts": "one text"}, {"texts": [1, 2]}, {"items": []}):
        reply = requests.post(f"{server_url}/v1/categorize", json=body, headers=auth, timeout=10)
        assert reply.status_code == 400 and "a list of strings" in reply.json()["error"]


def test_with_the_server_down_a_run_fails_and_its_rows_stay_unclaimed(tmp_path):
    database_url, engine = _sqlite(tmp_path)
    db.insert_new(engine, sample_rows(5))
    down = f"http://127.0.0.1:{free_port()}"
    resources = {
        "noticias_db": NoticiasDatabase(url=database_url),
        "categorizer": RemoteCategorizerResource(url=down, retries=0),
        **site_devices(),
    }
    with pytest.raises(dg.DagsterResourceFunctionError) as failed:  # the resource checks the server at start
        categorize_noticias_job.execute_in_process(resources=resources)
    assert "no categoriser server at" in str(failed.value.__cause__)
    # A server that goes away while a run holds a batch: the batch fails whole and its claims are given back.
    database = NoticiasDatabase(url=database_url)
    client = CategorizerClient(down, retries=0)
    with pytest.raises(CategorizerServerError):
        run_batch(database.claim("run-1", 5), client.categorize)
    rows = _rows(engine)
    assert all(not row["llm_processed"] and row["llm_categoria"] is None for row in rows)
    assert all(row["llm_claimed_by"] is None and row["llm_attempts"] == 0 for row in rows)
    assert database.count_claimable() == 5


NO_TORCH_RUN = """
import sys
from newsllm_pipeline import db
from newsllm_pipeline.jobs.noticias import categorize_noticias_job
from newsllm_pipeline.resources.devices import device_resources
from newsllm_pipeline.resources.noticias import NoticiasDatabase, categorizer_from_settings

engine = db.create_db_engine(sys.argv[1])
db.upgrade(engine)
db.insert_new(engine, [{"titulo": "El Valencia gana", "resumen": "", "url": "https://x.example/1", "fuente": "X"}])
resources = {
    "noticias_db": NoticiasDatabase(url=sys.argv[1]),
    "categorizer": categorizer_from_settings(),
    **device_resources("categorize"),
}
assert categorize_noticias_job.execute_in_process(resources=resources).output_for_node("categorize_backlog") == 1
print(sorted(name for name in ("torch", "transformers", "docling") if name in sys.modules))
"""


def test_a_run_with_the_remote_backend_imports_no_torch(server_url, tmp_path):
    env = {**os.environ, "NEWSLLM_BACKEND": "remote", "NEWSLLM_CATEGORIZER_URL": server_url}
    env["NEWSLLM_CATEGORIZER_TOKEN"] = TOKEN
    database_url = f"sqlite:///{tmp_path / 'noticias.db'}"
    run = subprocess.run(
        [sys.executable, "-c", NO_TORCH_RUN, database_url], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[]"


def test_settings_choose_the_remote_backend_and_the_server_needs_a_token(monkeypatch):
    monkeypatch.setenv("NEWSLLM_BACKEND", "remote")
    monkeypatch.setenv("NEWSLLM_CATEGORIZER_URL", "http://gpu-host:8100")
    resource = categorizer_from_settings(resolve_now=True)
    assert isinstance(resource, RemoteCategorizerResource) and resource.url == "http://gpu-host:8100"
    assert not resource.runs_here  # its model is the server's: a step measures and frees nothing here
    with pytest.raises(ValueError, match="takes no model_dir"):
        categorizer_from_settings(resolve_now=True, model_dir="models/x")
    monkeypatch.delenv("NEWSLLM_CATEGORIZER_TOKEN", raising=False)
    result = CliRunner().invoke(main, ["categorizer-server"])
    assert result.exit_code == 1 and "NEWSLLM_CATEGORIZER_TOKEN is not set" in result.output
