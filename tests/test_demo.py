"""`newsllm demo` (what `make demo` runs) end to end in a fresh project home, as a user runs it."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.sensor import execute_sensor_iteration

from newsllm_pipeline import db
from newsllm_pipeline.assets import documents as document_assets
from newsllm_pipeline.demo import DemoStepFailed, process_documents
from newsllm_pipeline.jobs.documents import process_documents_job, raw_documents_sensor, training_dataset_job
from newsllm_pipeline.resources.documents import (
    DoclingConverterResource,
    DocumentStore,
    OcrDescriberResource,
    TextGeneratorResource,
)
from newsllm_pipeline.settings import CHECKOUT
from tests.conftest import FEEDS, site_devices
from tests.test_dataset import SHARED_PDFS


def test_demo_ingests_categorises_through_the_sensor_and_reports(tmp_path, model_dir):
    database = tmp_path / "demo.db"
    env = {
        **os.environ,
        "NEWSLLM_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "NEWSLLM_DATABASE_URL": f"sqlite:///{database}",
        "NEWSLLM_FEEDS": f"{FEEDS / 'valid_rss.xml'} {FEEDS / 'malformed.xml'}",
        "NEWSLLM_MODEL_DIR": model_dir,
    }
    (tmp_path / "dagster_home").mkdir()
    demo = subprocess.run(
        [sys.executable, "-m", "newsllm_pipeline.cli", "demo"], env=env, capture_output=True, text=True, timeout=900
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "5 new noticias" in demo.stdout
    assert "sensor: launching 1 runs" in demo.stdout and "5 noticias categorised" in demo.stdout
    assert "'processed': 5" in demo.stdout
    with db.create_db_engine(f"sqlite:///{database}").connect() as conn:
        categories = conn.execute(sa.select(db.noticias.c.llm_categoria)).scalars().all()
    assert len(categories) == 5 and all(categories)


def document_definitions(home: str | Path, model_dir: str) -> dg.Definitions:
    """The demo's documents domain on `home`/raw_pdfs, writing under `home`."""
    home = Path(home)
    store = DocumentStore(
        inbox_dir=str(home / "raw_pdfs"), work_dir=str(home / "documents"), dataset_dir=str(home / "dataset")
    )
    return dg.Definitions(
        assets=dg.load_assets_from_modules([document_assets]),
        jobs=[process_documents_job, training_dataset_job],
        sensors=[raw_documents_sensor],
        resources={
            "document_store": store,
            "docling_converter": DoclingConverterResource(mode="offline"),
            "image_describer": OcrDescriberResource(),
            "text_generator": TextGeneratorResource(model_dir=model_dir),
            **site_devices(),
        },
    )


def test_a_document_that_fails_fails_the_demo_after_the_others_are_processed(tmp_path, model_dir):
    inbox = tmp_path / "raw_pdfs"
    inbox.mkdir()
    shutil.copy(SHARED_PDFS / "multi_page.pdf", inbox)
    (inbox / "roto.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 20)
    defs = document_definitions(tmp_path, model_dir)
    lines: list[str] = []
    with dg.instance_for_test() as instance, pytest.raises(DemoStepFailed, match="roto_pdf: .*roto.pdf"):
        process_documents(defs, instance, lines.append)
    assert any(line.startswith("  multi_page_pdf: done") for line in lines)
    assert any(line.startswith("  roto_pdf: FAILED") for line in lines)
    assert (tmp_path / "documents" / "multi_page_pdf" / "texto_final.md").exists()
    assert not (tmp_path / "dataset").exists()  # the dataset is not built from a partial inbox


def test_the_daemon_does_not_process_the_demo_documents_again(tmp_path, model_dir):
    """`make dev` after `make demo`: the daemon's first tick of the inbox sensor launches nothing for documents the
    demo processed and that did not change since."""
    (tmp_path / "raw_pdfs").mkdir()
    shutil.copy(SHARED_PDFS / "multi_page.pdf", tmp_path / "raw_pdfs")
    location = tmp_path / "location.py"
    location.write_text(
        f"from tests.test_demo import document_definitions\ndefs = document_definitions({str(tmp_path)!r}, "
        f"{model_dir!r})\n"
    )
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(python_file=str(location), attribute="defs", working_directory=str(CHECKOUT)),
        location_name="demo",
    )
    queued = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    with dg.instance_for_test(overrides={"run_coordinator": queued}) as instance:
        assert process_documents(document_definitions(tmp_path, model_dir), instance, print)
        demo_runs = instance.get_runs_count()
        with create_test_daemon_workspace_context(InProcessWorkspaceLoadTarget(origin), instance) as workspace:
            list(execute_sensor_iteration(workspace, logging.getLogger("daemon"), None, None))
            sensor = (
                workspace.create_request_context()
                .get_code_location("demo")
                .get_repository(SINGLETON_REPOSITORY_NAME)
                .get_sensor(raw_documents_sensor.name)
            )
            [tick] = instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)
        assert tick.status == TickStatus.SKIPPED, tick
        assert instance.get_runs_count() == demo_runs
