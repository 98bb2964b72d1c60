"""A real backfill of the document chain, launched as the UI launches one: the UI's GraphQL mutation creates it
against the project's workspace.yaml (its code location in its own code server process); the daemon's backfill
iterations queue its runs and its run-queue iterations start them, each as its own process."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import dagster as dg
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.tags import BACKFILL_ID_TAG
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.backfill import execute_backfill_iteration
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon
from dagster._utils.error import SerializableErrorInfo
from dagster_graphql.client.query import LAUNCH_PARTITION_BACKFILL_MUTATION
from dagster_graphql.test.utils import execute_dagster_graphql

WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"
CHAIN = ["raw_documents", "docling_markdown", "image_descriptions", "described_markdown"]
DOCUMENTS_PER_RUN = 2
TOPICS = {"agua": "el agua", "energia": "la energía", "transporte": "el transporte"}


def _inbox(folder: Path) -> list[str]:
    """Three small Markdown documents (cheap to convert, no pictures); their partition keys."""
    folder.mkdir()
    for name, topic in TOPICS.items():
        paragraph = f"El informe sobre {topic} resume los datos del último trimestre y las medidas previstas."
        (folder / f"{name}.md").write_text(f"# {topic.capitalize()}\n\n{paragraph}\n\n## Medidas\n\n{paragraph}\n")
    return [f"{name}_md" for name in TOPICS]


def _finish(workspace: WorkspaceProcessContext, backfill_id: str, timeout_s: float = 150) -> None:
    """What `dagster-daemon` does every few seconds, until the backfill is done: a backfill iteration (submits its
    runs to the queue, then follows them) and a run-queue iteration (starts queued runs)."""
    instance, logger = workspace.instance, logging.getLogger("test_backfill")
    deadline = time.monotonic() + timeout_s
    with QueuedRunCoordinatorDaemon(interval_seconds=1) as run_queue:
        while instance.get_backfill(backfill_id).status == BulkActionStatus.REQUESTED:
            runs = {run.run_id[:8]: run.status.value for run in instance.get_runs()}
            assert time.monotonic() < deadline, f"backfill {backfill_id} still running after {timeout_s}s: {runs}"
            events = [*execute_backfill_iteration(workspace, logger), *run_queue.run_iteration(workspace)]
            errors = [event.to_string() for event in events if isinstance(event, SerializableErrorInfo)]
            assert not errors, "\n".join(errors)
            time.sleep(1)


def test_a_backfill_from_the_ui_batches_documents_per_run(tmp_path, monkeypatch):
    keys = _inbox(tmp_path / "inbox")
    settings = {
        "INBOX_DIR": tmp_path / "inbox",
        "DOCUMENTS_DIR": tmp_path / "documents",
        "DATASET_DIR": tmp_path / "dataset",
        "DOCLING_MODE": "offline",
        "DESCRIBER": "ocr",
        "DOCUMENTS_PER_RUN": DOCUMENTS_PER_RUN,  # the code server reads it when it loads the code location
    }
    for name, value in settings.items():
        monkeypatch.setenv(f"NEWSLLM_{name}", str(value))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", keys)
        with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(WORKSPACE)])) as workspace:
            launched = execute_dagster_graphql(
                workspace.create_request_context(),
                LAUNCH_PARTITION_BACKFILL_MUTATION,
                variables={
                    "backfillParams": {
                        "partitionNames": keys,
                        "assetSelection": [{"path": [name]} for name in CHAIN],
                    }
                },
            ).data["launchPartitionBackfill"]
            assert launched["__typename"] == "LaunchBackfillSuccess", launched
            backfill_id = launched["backfillId"]
            _finish(workspace, backfill_id)

        assert instance.get_backfill(backfill_id).status == BulkActionStatus.COMPLETED_SUCCESS
        runs = instance.get_runs(filters=dg.RunsFilter(tags={BACKFILL_ID_TAG: backfill_id}))
        assert len(runs) == math.ceil(len(keys) / DOCUMENTS_PER_RUN)  # 3 documents, 2 a run: 2 runs
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        for name in CHAIN:
            assert instance.get_materialized_partitions(dg.AssetKey(name)) == set(keys), name
        for key in keys:
            final = (tmp_path / "documents" / key / "texto_final.md").read_text(encoding="utf-8")
            assert TOPICS[key.removesuffix("_md")].capitalize() in final
