"""The categorisation and the document chain on a real Celery worker (dagster-celery, deploy/celery/celery.yaml):
RabbitMQ as broker, Redis for results, the worker on the `default` and `gpu` queues; steps that load a model go to
`gpu`. The run is orchestrated here; every step executes in the worker, against the same instance and settings."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import dagster as dg
import pytest

from newsllm_pipeline import db
from newsllm_pipeline.categorizer import DEFAULT_CATEGORIES
from newsllm_pipeline.definitions import defs
from newsllm_pipeline.deployment import (
    CELERY_CONFIG,
    CELERY_QUEUE_TAG,
    GPU_QUEUE,
    GPU_STEP_TAGS,
    card_steps,
    celery_executor_config,
)
from newsllm_pipeline.documents.chain import document_key
from newsllm_pipeline.processes import BIN, LoggedProcess
from tests.conftest import sample_rows

ROOT = Path(__file__).parent.parent
SAMPLE_PDF = ROOT / "data" / "raw_pdfs" / "misdirection_es.pdf"
RUN_TIMEOUT_S = 180  # a step no worker takes would keep the run waiting
SERVICES = {"RabbitMQ": ("127.0.0.1", 5672), "Redis": ("127.0.0.1", 6379)}


def test_every_step_that_holds_a_card_goes_to_the_gpu_queue():
    """Ops in a card's concurrency pool carry the GPU step tags: the Celery queue and the Kubernetes GPU."""
    pooled = card_steps(defs)
    assert "categorize_backlog" in pooled
    untagged = sorted(name for name, tags in pooled.items() if tags.get(CELERY_QUEUE_TAG) != GPU_QUEUE)
    assert not untagged, f"in a card's pool but not tagged with GPU_STEP_TAGS: {untagged}"
    assert {CELERY_QUEUE_TAG: GPU_QUEUE}.items() <= GPU_STEP_TAGS.items()


def _services_or_skip() -> None:
    for name, address in SERVICES.items():
        try:
            socket.create_connection(address, timeout=2).close()
        except OSError as error:
            message = f"no {name} at {address[0]}:{address[1]}: {error}"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)


@pytest.fixture
def site(tmp_path, model_dir, monkeypatch):
    """The NEWSLLM_* settings of a small site (SQLite noticias, an inbox with one PDF), set here and for the worker."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(SAMPLE_PDF, inbox / SAMPLE_PDF.name)
    settings = {
        "NEWSLLM_DATABASE_URL": f"sqlite:///{tmp_path / 'noticias.db'}",
        "NEWSLLM_CATEGORIZER_MODEL_DIR": model_dir,
        "NEWSLLM_CATEGORIZER_ADAPTERS_DIR": str(tmp_path / "adapters"),
        "NEWSLLM_INBOX_DIR": str(inbox),
        "NEWSLLM_DOCUMENTS_DIR": str(tmp_path / "documents"),
        "NEWSLLM_DATASET_DIR": str(tmp_path / "dataset"),
        "NEWSLLM_DOCLING_MODE": "offline",
        "NEWSLLM_DESCRIBER": "ocr",
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return settings


@pytest.fixture
def worker(site, tmp_path):
    """`dagster-celery worker start` with deploy/celery/celery.yaml on both queues, one step at a time; yields the
    Dagster instance it shares with this process (a DAGSTER_HOME folder with the project's instance config) and the
    worker's name."""
    _services_or_skip()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    name = f"newsllm-test-{uuid.uuid4().hex[:6]}"
    command = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app", "-y", str(CELERY_CONFIG)]
    # One -q with both: celery 5 keeps only the last of several -Q options.
    command += ["-q", f"default,{GPU_QUEUE}", "-n", name, "--", "--concurrency=1"]
    env = {**os.environ, "DAGSTER_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with LoggedProcess(command, tmp_path / "worker.log", env=env) as process:
        process.wait_for(" ready.", timeout_s=60)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            yield instance, name


def _run(instance: dg.DagsterInstance, job_name: str, **tags) -> dg.DagsterRun:
    """`dagster job execute` on this instance: the run's process hands every step to the broker and waits."""
    command = [str(BIN / "dagster"), "job", "execute", "-m", "newsllm_pipeline.definitions", "-a", "defs"]
    command += ["-j", job_name, "--tags", json.dumps(tags)]
    env = {**os.environ, "DAGSTER_HOME": instance.root_directory}
    subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=RUN_TIMEOUT_S)
    return instance.get_runs(dg.RunsFilter(job_name=job_name))[0]


def _where_steps_ran(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict[str, tuple[str, str]]:
    """Per step: the queue it was sent to and the Celery worker that executed it (from the run's engine events)."""
    queues, workers = {}, {}
    for record in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        if event.message.startswith("Submitting celery task"):
            queues[event.step_key] = event.message.rsplit('queue "', 1)[1].rstrip('".')
        if "Celery worker" in event.event_specific_data.metadata:
            workers[event.step_key] = event.event_specific_data.metadata["Celery worker"].value.split("@")[0]
    return {step: (queues.get(step), workers.get(step)) for step in queues.keys() | workers.keys()}


def _expected(job_name: str, worker: str) -> dict[str, tuple[str, str]]:
    """Every step of the job executed by `worker`, from the `gpu` queue if it is in a pool, else the default one."""
    default = celery_executor_config()["config_source"]["task_default_queue"]
    nodes = defs.get_job_def(job_name).nodes_in_topological_order
    return {node.name: (GPU_QUEUE if node.definition.pool else default, worker) for node in nodes}


@pytest.mark.slow
def test_categorisation_and_a_document_run_on_a_celery_worker(worker, site):
    instance, name = worker
    engine = db.create_db_engine(site["NEWSLLM_DATABASE_URL"])
    db.upgrade(engine)
    db.insert_new(engine, sample_rows(3))

    run = _run(instance, "categorize_noticias_celery_job")
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
    steps = _where_steps_ran(instance, run)
    assert steps == _expected("categorize_noticias_celery_job", name) and steps["categorize_backlog"][0] == GPU_QUEUE
    rows = db.fetch_categorized(engine)
    assert len(rows) == 3 and {row["llm_categoria"] for row in rows} <= set(DEFAULT_CATEGORIES)
    engine.dispose()

    key = document_key(SAMPLE_PDF)
    instance.add_dynamic_partitions("documents", [key])
    run = _run(instance, "process_documents_celery_job", **{"dagster/partition": key})
    assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
    assert _where_steps_ran(instance, run) == _expected("process_documents_celery_job", name)
    folder = Path(site["NEWSLLM_DOCUMENTS_DIR"]) / key
    assert list((folder / "imagenes_extraidas").glob("*.png"))
    final = (folder / "texto_final.md").read_text(encoding="utf-8")
    assert final.strip() and "](imagenes_extraidas/" not in final
