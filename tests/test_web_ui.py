"""The Dagster web UI as a person uses it: `dagster dev` (webserver and daemon) on loopback, with its own instance and
data folders; the asset graph and the categorisation job opened in headless Chromium; a materialisation launched
through the UI's GraphQL API and followed to success. Screenshots are kept in the test's tmp folder and, when
NEWSLLM_TEST_ARTIFACTS is set, in that folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsllm_pipeline import db
from newsllm_pipeline.serving.server import free_port
from newsllm_pipeline.settings import CHECKOUT, SETTINGS
from tests.browser import Chromium
from tests.conftest import FEEDS

LOCATION = "newsllm_pipeline.definitions"  # workspace.yaml's module, the code location's name
REPOSITORY = "__repository__"
LINEAGE = ["raw_documents", "docling_markdown", "image_descriptions", "described_markdown", "training_dataset"]
LINEAGE_END = "lora_adapter"
GROUPS = ["documents", "lora", "noticias"]
INGEST_JOB = "ingest_noticias_job"
SENSOR = "uncategorized_noticias_sensor"


def data_folders(root: Path) -> dict[str, str]:
    """NEWSLLM_* settings for a database and every data folder the pipeline writes (not the base models) under
    `root`, so the UI's runs leave the checkout alone."""
    folders = {
        setting.variable: str(root / name.lower())
        for name, setting in SETTINGS.items()
        if name.endswith("_DIR") and not name.endswith("MODEL_DIR") and setting.default_value()
    }
    return {**folders, "NEWSLLM_DATABASE_URL": f"sqlite:///{root / 'noticias.db'}"}


class DagsterDev:
    """`dagster dev -w workspace.yaml` on a free loopback port and a fresh DAGSTER_HOME; `graphql` asks it."""

    def __init__(self, root: Path, environment: dict[str, str]):
        self.environment = environment
        home = root / "dagster_home"
        home.mkdir()
        shutil.copy(CHECKOUT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = root / "dagster_dev.log"
        self.log = self.log_path.open("w")
        dagster = Path(sys.executable).parent / "dagster"
        self.process = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=CHECKOUT,
            env={**os.environ, **environment, "DAGSTER_HOME": str(home)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def graphql(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        assert "errors" not in answer, answer["errors"]
        return answer["data"]

    def wait_until_loaded(self, timeout_s: float = 120) -> None:
        """Until the webserver answers and the code location has loaded."""
        query = """{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
                     locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited: {self.log_path.read_text()[-3000:]}")
            try:
                entries = self.graphql(query)["workspaceOrError"]["locationEntries"]
            except (urllib.error.URLError, ConnectionError):
                entries = []
            loaded = [entry for entry in entries if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED"]
            if loaded:
                location = loaded[0]["locationOrLoadError"]
                assert location["__typename"] == "RepositoryLocation", location
                return
            time.sleep(0.5)
        raise RuntimeError(f"dagster dev not up within {timeout_s} s: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """Ctrl-C, as a person stops it: webserver, daemon, code server and runs go together."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> list[Path]:
    """Folders screenshots go to: the test's tmp folder and, if set, NEWSLLM_TEST_ARTIFACTS."""
    folders = [tmp_path_factory.mktemp("web_ui_screenshots")]
    if os.environ.get("NEWSLLM_TEST_ARTIFACTS"):
        folders.append(Path(os.environ["NEWSLLM_TEST_ARTIFACTS"]) / "web_ui")
        folders[-1].mkdir(parents=True, exist_ok=True)
    return folders


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium = Chromium(tmp_path_factory.mktemp("chromium_profile"))
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory, browser):
    root = tmp_path_factory.mktemp("dagster_dev")
    environment = {**data_folders(root), "NEWSLLM_FEEDS": str(FEEDS / "valid_rss.xml")}
    Path(environment["NEWSLLM_INBOX_DIR"]).mkdir()  # an empty inbox: the documents sensor finds nothing
    server = DagsterDev(root, environment)
    try:
        server.wait_until_loaded()
        server.graphql("mutation { setNuxSeen }")  # the "Join the Dagster community" dialog's Skip
        yield server
    finally:
        server.stop()


def screenshot(browser: Chromium, name: str, artifacts: list[Path]) -> Path:
    first = browser.screenshot(artifacts[0] / name)
    for folder in artifacts[1:]:
        shutil.copy(first, folder / name)
    return first


def test_the_asset_graph_shows_the_lineage_from_raw_documents_to_the_lora_adapter(dagster_dev, browser, artifacts):
    nodes = dagster_dev.graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]
    upstream = {node["assetKey"]["path"][-1]: {key["path"][-1] for key in node["dependencyKeys"]} for node in nodes}
    chain = [*LINEAGE, LINEAGE_END]
    for parent, child in zip(chain, chain[1:], strict=False):
        assert parent in upstream[child], f"{child} does not depend on {parent}: {upstream[child]}"

    browser.open(f"{dagster_dev.url}/asset-groups")
    browser.wait_for_text(["Global asset lineage", *GROUPS])
    browser.press_alt("KeyE")  # "Expand all groups": the graph opens with each group folded into one box
    browser.wait_for_text(chain)
    shot = screenshot(browser, "asset_graph.png", artifacts)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000

    browser.open(f"{dagster_dev.url}/assets/{LINEAGE_END}?view=lineage&lineageScope=upstream&lineageDepth=10")
    browser.wait_for_text(chain)
    screenshot(browser, "lora_adapter_upstream.png", artifacts)


def test_the_categorisation_job_page_shows_its_op(dagster_dev, browser, artifacts):
    browser.open(f"{dagster_dev.url}/locations/{LOCATION}/jobs/categorize_noticias_job")
    browser.wait_for_text(["categorize_noticias_job", "categorize_backlog"])
    screenshot(browser, "categorize_noticias_job.png", artifacts)


def test_a_materialisation_launched_through_the_ui_succeeds(dagster_dev, browser, artifacts):
    # The categorisation sensor would start a model run on the new noticias: switched off, as from its UI toggle.
    sensor = dagster_dev.graphql(
        """query ($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
             __typename ... on Sensor { id } } }""",
        selector={"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": SENSOR},
    )["sensorOrError"]
    stopped = dagster_dev.graphql(
        """mutation ($id: String!) { stopSensor(id: $id) { __typename
             ... on StopSensorMutationResult { instigationState { status } } } }""",
        id=sensor["id"],
    )["stopSensor"]
    assert stopped["instigationState"]["status"] == "STOPPED", stopped

    launched = dagster_dev.graphql(
        """mutation ($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
             ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }""",
        params={
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": INGEST_JOB},
            "runConfigData": {},
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 90
    status = None
    while time.monotonic() < deadline:
        status = dagster_dev.graphql(
            "query ($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", id=run_id
        )["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    browser.open(f"{dagster_dev.url}/runs/{run_id}")
    browser.wait_for_text([run_id[:8], INGEST_JOB, "RUN_SUCCESS" if status == "SUCCESS" else "RUN_FAILURE"])
    screenshot(browser, "ingest_run.png", artifacts)
    assert status == "SUCCESS", f"run {run_id}: {status}; see {dagster_dev.log_path}"
    with db.create_db_engine(dagster_dev.environment["NEWSLLM_DATABASE_URL"]).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(db.noticias)).scalar() == 5  # valid_rss.xml
