"""End-to-end benchmark of the sensor-driven path, through the real `dagster-daemon`, against the in-process rate.

For each database (PostgreSQL on 127.0.0.1:5432 and SQLite), on a temporary DAGSTER_HOME with the project's own
instance configuration (`dagster_home/dagster.yaml`: run queue, pools, run monitoring; the default run launcher,
one process per run):

1. N real headlines (`data/noticias_reales/items.jsonl`, title and lede) are the backlog;
2. `dagster-daemon run` starts and the categorisation sensor ticks once on the empty table (the pipeline is up
   and idle, as at a site); then the backlog is inserted and the sensor launches runs, which drain it;
3. from the insert, the table is polled until every item is categorised (or failed for good): items/s end to end,
   time to the first category, runs launched, per-run overhead (a run's wall time minus the time its batches
   took), peak RSS of the daemon's process tree;
4. with the pipeline idle, single noticias are inserted one at a time: seconds until each has its category.

Each database is measured four times: with the embedded default (each run loads the model), with the resident
service (`newsllm categorizer-server` holds the model; runs are thin clients, NEWSLLM_BACKEND=remote), and each of
those with lingering runs (NEWSLLM_RUN_LINGER_S=--linger-s): step 4 is then a stream, one noticia every 2 s
arriving while the run that drained the backlog waits for more, and then a second backlog (the next headlines,
up to N) arrives at once on that warm pipeline (the run still alive): its items/s is the rate of a site whose
run is waiting, not of one that was idle.

In the same run the in-process rate is measured on the same items with the same model and settings (the site's
categoriser from `categorizer_from_settings`, loaded once, batches of `NEWSLLM_BATCH_SIZE`), again just before
each pipeline (these machines are shared, and their speed drifts by a tenth from minute to minute): the ratio of
the end-to-end rate to that neighbouring measurement is the share of the model's speed the pipeline delivers
(reported against the rate with the model already loaded, and with its load counted, as `newsllm categorize` pays
it). Each report also says where the time to the first category went (the run's events), how long the backlog's
batches took against the same items in process, and the CPU seconds of each process. Everything runs few-shot
(no adapter), with the default categoriser model.

    .venv/bin/python benchmarks/pipeline.py [--n 500] [--databases postgresql sqlite]
                                            [--backends local remote lingering remote-lingering]
                                            [--latency-probes 2] [--linger-s 60]
    make bench

Results go to --out (default benchmarks/results/pipeline.json) and are printed as a summary.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil
import requests
import sqlalchemy as sa
from harness import package_versions, write_report
from tabulate import tabulate

from newsllm_pipeline import db
from newsllm_pipeline.files import read_jsonl
from newsllm_pipeline.processes import dagster_daemon
from newsllm_pipeline.settings import SHIPPED_REAL_ITEMS

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
DEFAULT_OUT = SCRIPT.parent / "results" / "pipeline.json"
PG_ADMIN_URL = os.environ.get("NEWSLLM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "newsllm_pipeline_bench"
JOB = "categorize_noticias_job"


def headlines(count: int, offset: int = 0) -> list[dict]:
    with_url = [item for item in read_jsonl(SHIPPED_REAL_ITEMS) if item.get("url")]  # the table's key
    items = sorted(with_url, key=lambda item: item["url"])[offset : offset + count]
    return [
        {"titulo": item["titulo"], "resumen": item.get("resumen") or "", "url": item["url"], "fuente": item["outlet"]}
        for item in items
    ]


def database_url(kind: str, folder: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'noticias.db'}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {PG_DATABASE}"))
    admin.dispose()
    return sa.make_url(PG_ADMIN_URL).set(database=PG_DATABASE).render_as_string(hide_password=False)


def site_environment(folder: Path, url: str) -> dict[str, str]:
    """The settings both measurements share: this database, no feeds or documents to pick up, no adapter."""
    (folder / "inbox").mkdir(exist_ok=True)
    (folder / "adapters").mkdir(exist_ok=True)
    return {
        "NEWSLLM_DATABASE_URL": url,
        "NEWSLLM_FEEDS": "",
        "NEWSLLM_INBOX_DIR": str(folder / "inbox"),
        "NEWSLLM_CATEGORIZER_ADAPTERS_DIR": str(folder / "adapters"),
    }


class InProcess:
    """The site's categoriser loaded in this process (from `categorizer_from_settings`), called batch by batch as a
    draining run calls it: the baseline, measured again beside each pipeline, because these machines are shared
    and their speed drifts from minute to minute."""

    def __init__(self, environment: dict[str, str]):
        os.environ.update(environment)
        from newsllm_pipeline.resources.noticias import categorizer_from_settings
        from newsllm_pipeline.settings import setting

        started = time.perf_counter()
        self.categorizer = categorizer_from_settings(resolve_now=True)
        self.categorizer.load()
        self.load_s = time.perf_counter() - started
        self.size = int(setting("BATCH_SIZE"))

    def seconds(self, backlog: list[dict]) -> float:
        from newsllm_pipeline.categorizer import item_text

        texts = [item_text(item["titulo"], item["resumen"]) for item in backlog]
        started = time.perf_counter()
        for start in range(0, len(texts), self.size):
            self.categorizer.categorize(texts[start : start + self.size])
        return time.perf_counter() - started

    def rate(self, backlog: list[dict]) -> dict:
        seconds = self.seconds(backlog)
        return {
            "items": len(backlog),
            "categorize_s": round(seconds, 2),
            "items_per_s": round(len(backlog) / seconds, 2),
            "items_per_s_with_load": round(len(backlog) / (seconds + self.load_s), 2),
        }


def counts(engine) -> tuple[int, int]:
    """(categorised, failed for good) rows."""
    status = db.status_counts(engine, 3)
    return status["processed"], status["failed_permanently"]


def part_of_the_pipeline(process: psutil.Process) -> str:
    """What a process of the daemon's tree is: the daemon, its code server, or a run (and what a run starts)."""
    command = " ".join(process.cmdline())
    if "dagster-daemon" in command:
        return "daemon"
    return "code server" if "api grpc" in command else "runs"


class Daemon:
    """`dagster-daemon run` on its own DAGSTER_HOME with the project's instance config; samples the RSS of its process
    tree, and the CPU time of each process in it and of the `watched` others (this script, a categoriser server)."""

    def __init__(self, home: Path, environment: dict[str, str]):
        self.home = home
        shutil.copy(ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
        self.daemon = dagster_daemon(home, environment)
        self.process = self.daemon.process
        self.peak_rss_gib = 0.0
        self.peak_process_rss_gib = 0.0
        self.watched = {psutil.Process().pid: "benchmark (polling)"}
        self.cpu_s: dict[int, tuple[str, float]] = {}  # pid: (part, user + system seconds at the last sample)

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Until the categorisation sensor has ticked once: the pipeline is up and idle."""
        self.daemon.wait_for("sensor: uncategorized_noticias_sensor", timeout_s)
        time.sleep(1)

    def sample(self) -> None:
        try:
            tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        sizes = []
        for process in tree:
            try:
                with process.oneshot():
                    sizes.append(process.memory_info().rss / 2**30)
                    self._count_cpu(process, self.cpu_s.get(process.pid, (None,))[0] or part_of_the_pipeline(process))
            except psutil.NoSuchProcess:
                pass
        for pid, part in self.watched.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                self._count_cpu(psutil.Process(pid), part)
        self.peak_rss_gib = max(self.peak_rss_gib, sum(sizes))
        self.peak_process_rss_gib = max(self.peak_process_rss_gib, max(sizes, default=0.0))

    def _count_cpu(self, process: psutil.Process, part: str) -> None:
        times = process.cpu_times()
        self.cpu_s[process.pid] = (part, times.user + times.system)

    def cpu_since(self, then: dict[int, tuple[str, float]]) -> dict[str, float]:
        """CPU seconds each part used since the samples `then` (a copy of `cpu_s`); a process that ended between
        two samples is counted up to its last one."""
        used: dict[str, float] = {}
        for pid, (part, seconds) in self.cpu_s.items():
            used[part] = used.get(part, 0.0) + seconds - then.get(pid, (part, 0.0))[1]
        return {part: round(seconds, 1) for part, seconds in sorted(used.items())}

    def stop(self) -> None:
        self.daemon.stop()


def wait_until(condition, timeout_s: float, on_poll=lambda: None, every_s: float = 0.25) -> float | None:
    """Seconds until `condition()` held, or None after `timeout_s`."""
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < timeout_s:
        on_poll()
        if condition():
            return elapsed
        time.sleep(every_s)
    return None


# A run's milestones, in order, from its creation by the sensor to its first committed batch.
MILESTONES = ["RUN_STARTING", "RUN_START", "STEP_START", "ASSET_OBSERVATION"]
START_PHASES = ["sensor", "queue", "run process", "step start", "model and first batch"]


def instance_query(home: Path, body: str):
    """What `body` prints as its last line (JSON), run against the instance in `home` in a fresh interpreter (the
    daemon owns that instance; this script keeps Dagster's state out of its own process)."""
    script = f"import json, dagster as dg\nwith dg.DagsterInstance.get() as instance:\n{textwrap.indent(body, '    ')}"
    output = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "DAGSTER_HOME": str(home)}, capture_output=True, text=True
    )
    if output.returncode:
        raise RuntimeError(output.stderr[-2000:])
    return json.loads(output.stdout.strip().splitlines()[-1])


def run_records(home: Path) -> list[dict]:
    """Each categorisation run: its wall time, when it was created and when it reached each milestone, and each of
    its batches (from their observations): commit time (epoch), seconds and items."""
    return instance_query(
        home,
        f"""
from dagster._core.events import DagsterEventType
rows = []
for record in instance.get_run_records(dg.RunsFilter(job_name={JOB!r})):
    reached, committed = {{}}, []
    for event in instance.all_logs(record.dagster_run.run_id):
        if event.is_dagster_event and event.dagster_event_type.name in {MILESTONES!r}:
            reached.setdefault(event.dagster_event_type.name, event.timestamp)
        if event.dagster_event_type == DagsterEventType.ASSET_OBSERVATION:
            metadata = event.dagster_event.event_specific_data.asset_observation.metadata
            committed.append([event.timestamp, metadata["seconds"].value, metadata["claimed"].value])
    rows.append({{"wall_s": (record.end_time or 0) - (record.start_time or 0),
                 "created": record.create_timestamp.timestamp(), "reached": reached, "committed": committed}})
print(json.dumps(rows))
""",
    )


def start_phases(runs: list[dict], inserted: float) -> dict[str, float] | None:
    """Where the time to the first category went, for the first run created after `inserted` (epoch seconds):
    the sensor's tick, the run queue, the run's process and code location, the step's start, and the step's
    resources and model up to its first committed batch (that batch included)."""
    first = min((run for run in runs if run["created"] >= inserted), key=lambda run: run["created"], default=None)
    if first is None or set(MILESTONES) - set(first["reached"]):
        return None
    times = [inserted, first["created"], *(first["reached"][name] for name in MILESTONES)]
    spans = zip(START_PHASES, times[:-1], times[1:], strict=True)
    return {name: round(later - earlier, 1) for name, earlier, later in spans}


def active_runs(home: Path) -> int:
    return instance_query(
        home,
        f"""
active = [dg.DagsterRunStatus(status) for status in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")]
print(instance.get_runs_count(dg.RunsFilter(job_name={JOB!r}, statuses=active)))
""",
    )


class CategorizerServer:
    """`newsllm categorizer-server` on a free loopback port: the resident model the `remote` backend calls."""

    def __init__(self, environment: dict[str, str], log: Path):
        from newsllm_pipeline.serving.server import free_port

        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "newsllm"),
                "categorizer-server",
                "--no-auth",
                "--port",
                self.url.rsplit(":", 1)[1],
            ],
            env={**os.environ, **environment},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait_until(self.healthy, 300, every_s=0.5) is None:
            self.stop()
            raise RuntimeError(f"the categoriser server did not start; see {log}")

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).ok
        except requests.ConnectionError:
            return False

    def rss_gib(self) -> float:
        return psutil.Process(self.process.pid).memory_info().rss / 2**30

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait(timeout=60)
        self.log.close()


BACKENDS = {
    "local": "model in the run",
    "remote": "resident service",
    "lingering": "model in the run, lingering",
    "remote-lingering": "resident service, lingering",
}


def through_daemon(
    kind: str,
    backend: str,
    items: list[dict],
    probes: list[dict],
    warm: list[dict],
    folder: Path,
    timeout_s: float,
    linger_s: float,
) -> dict:
    """The backlog `items` on an idle pipeline, then `probes` one at a time; lingering, the probes are a stream and
    `warm` (the next headlines) a second backlog inserted while the run that took the stream still waits."""
    url = database_url(kind, folder)
    environment = site_environment(folder, url)
    server = None
    lingering = backend.endswith("lingering")
    if backend.startswith("remote"):
        server = CategorizerServer(environment, folder / "categorizer_server.log")
        environment.update(NEWSLLM_BACKEND="remote", NEWSLLM_CATEGORIZER_URL=server.url)
    if lingering:
        # A run's time budget long enough for the whole measurement: the second backlog is then taken by the run
        # that lingered, not split by its end (on a slow CPU, 500 + 500 items outlast the default 300 s).
        environment.update(NEWSLLM_RUN_LINGER_S=str(int(linger_s)), NEWSLLM_RUN_TIME_BUDGET_S="3600")
    engine = db.create_db_engine(url)
    db.upgrade(engine)
    home = folder / "dagster_home"
    home.mkdir()
    daemon = Daemon(home, environment)
    if server:
        daemon.watched[server.process.pid] = "categorizer server"
    report = {"database": kind, "backend": BACKENDS[backend], "items": len(items)}
    try:
        daemon.wait_ready()
        daemon.sample()
        idle_cpu = dict(daemon.cpu_s)
        db.insert_new(engine, items)
        inserted, inserted_at = time.perf_counter(), time.time()
        first = wait_until(lambda: counts(engine)[0] > 0, timeout_s, daemon.sample)
        done = wait_until(lambda: sum(counts(engine)) >= len(items), timeout_s, daemon.sample)
        if first is None or done is None:
            raise RuntimeError(f"{kind}: the backlog was not categorised within {timeout_s} s; see {home}/daemon.log")
        total_s = time.perf_counter() - inserted
        categorised, failed = counts(engine)
        report.update(
            first_category_s=round(first, 1),
            total_s=round(total_s, 1),
            categorized=categorised,
            failed=failed,
            items_per_s=round(len(items) / total_s, 2),
            cpu_s=daemon.cpu_since(idle_cpu),
        )
        # Lingering: the noticias of a stream, one every 2 s after the backlog, while the run that drained it waits.
        # Otherwise: an idle pipeline (no run alive), one new noticia at a time.
        latencies = []
        for probe in probes:
            if lingering:
                time.sleep(2)
            else:
                wait_until(lambda: active_runs(home) == 0, 120, daemon.sample, every_s=2)
            before = sum(counts(engine))
            db.insert_new(engine, [probe])
            latency = wait_until(lambda done=before: sum(counts(engine)) > done, timeout_s, daemon.sample, every_s=0.05)
            latencies.append(round(latency, 1) if latency is not None else None)
        report["stream_item_latency_s" if lingering else "single_item_latency_s"] = latencies
        if lingering:
            before = sum(counts(engine))
            db.insert_new(engine, warm)
            inserted = time.perf_counter()
            done = wait_until(lambda: sum(counts(engine)) >= before + len(warm), timeout_s, daemon.sample)
            if done is None:
                raise RuntimeError(f"{kind}: the second backlog was not categorised within {timeout_s} s")
            report["warm_items_per_s"] = round(len(warm) / (time.perf_counter() - inserted), 2)
    finally:
        daemon.stop()
        engine.dispose()
        if server:
            report["server_rss_gib"] = round(server.rss_gib(), 2)
            server.stop()
    runs = run_records(home)
    overheads = [run["wall_s"] - sum(s for _, s, _ in run["committed"]) for run in runs if run["committed"]]
    backlog_end = inserted_at + report["total_s"] + 1
    # The model's share: the backlog batches' categorisation (the model, or the service's answer; not the commits),
    # leaving out each run's first batch, which loads the model.
    batches = [batch for run in runs for batch in run["committed"][1:] if inserted_at <= batch[0] <= backlog_end]
    report.update(
        start_phases_s=start_phases(runs, inserted_at),
        backlog_batches={"items": sum(items for _, _, items in batches), "s": sum(s for _, s, _ in batches)},
        runs=len(runs),
        batches=sum(len(run["committed"]) for run in runs),
        per_run_overhead_s=round(sum(overheads) / len(overheads), 1) if overheads else None,
        peak_rss_gib=round(daemon.peak_rss_gib, 2),
        peak_process_rss_gib=round(daemon.peak_process_rss_gib, 2),
    )
    return report


def compare(report: dict, beside: dict, warm: dict | None) -> None:
    """The pipeline's rates as shares of the in-process ones measured just before it (`warm`: on the second
    backlog's items, just after)."""
    report["in_process_beside"] = beside
    report["ratio_to_in_process"] = round(report["items_per_s"] / beside["items_per_s"], 2)
    report["ratio_to_in_process_with_load"] = round(report["items_per_s"] / beside["items_per_s_with_load"], 2)
    batches = report.pop("backlog_batches")
    # > 1: the model ran slower in the pipeline's run (or through the service) than alone in this process.
    report["batches_to_in_process_time"] = round(
        batches["s"] / (beside["categorize_s"] * batches["items"] / beside["items"]), 2
    )
    if warm:
        report["in_process_beside_warm"] = warm
        report["warm_ratio_to_in_process"] = round(report["warm_items_per_s"] / warm["items_per_s"], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="noticias in the backlog")
    parser.add_argument("--databases", nargs="+", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    parser.add_argument(
        "--backends",
        nargs="+",
        default=list(BACKENDS),
        choices=list(BACKENDS),
        help="local: each run loads the model; remote: runs call a resident categoriser server; *lingering: with "
        "NEWSLLM_RUN_LINGER_S, the probes then a stream arriving while the run waits, then a second backlog",
    )
    parser.add_argument("--linger-s", type=float, default=60, help="NEWSLLM_RUN_LINGER_S of the lingering backend")
    parser.add_argument("--latency-probes", type=int, default=2, help="single noticias inserted on an idle pipeline")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a backlog")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    items = headlines(args.n)
    probes = headlines(args.latency_probes, offset=args.n)
    warm = headlines(args.n, offset=args.n + args.latency_probes)  # the lingering backend's second backlog
    with tempfile.TemporaryDirectory(prefix="newsllm-bench-") as scratch:
        reference = Path(scratch) / "in_process"
        reference.mkdir()
        baseline = InProcess(site_environment(reference, database_url("sqlite", reference)))
        in_process = {"load_s": round(baseline.load_s, 2), **baseline.rate(items)}
        pipelines = []
        for kind in args.databases:
            for backend in args.backends:
                folder = Path(scratch) / f"{kind}-{backend}"
                folder.mkdir()
                beside = baseline.rate(items)
                report = through_daemon(kind, backend, items, probes, warm, folder, args.timeout, args.linger_s)
                compare(report, beside, baseline.rate(warm) if "warm_items_per_s" in report else None)
                pipelines.append(report)
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "packages": package_versions(["dagster", "torch", "transformers", "sqlalchemy", "psycopg"]),
        "n": args.n,
        "linger_s": args.linger_s,
        "in_process": in_process,
        "pipelines": pipelines,
    }
    table = [
        {
            "path": f"daemon, {report['database']}, {report['backend']}",
            "items/s": report["items_per_s"],
            "in-process items/s beside": report["in_process_beside"]["items_per_s"],
            "× in-process": report["ratio_to_in_process"],
            "× in-process with load": report["ratio_to_in_process_with_load"],
            "first category s": report["first_category_s"],
            "start: " + " / ".join(START_PHASES) + " s": " / ".join(
                str(seconds) for seconds in (report["start_phases_s"] or {}).values()
            ),
            "single item s": report.get("single_item_latency_s", ""),
            "stream item s": report.get("stream_item_latency_s", ""),
            "warm backlog: items/s (× in-process)": (
                f"{report['warm_items_per_s']} ({report['warm_ratio_to_in_process']})"
                if "warm_items_per_s" in report
                else ""
            ),
            "runs": report["runs"],
            "overhead/run s": report["per_run_overhead_s"],
            "peak RSS GiB": report["peak_rss_gib"],
        }
        for report in pipelines
    ]
    table.insert(0, {"path": "in process, model loaded", "items/s": in_process["items_per_s"], "× in-process": 1.0})
    table.insert(1, {"path": "in process, with the load", "items/s": in_process["items_per_s_with_load"]})
    write_report(result, args.out, tabulate(table, headers="keys", tablefmt="github"))


if __name__ == "__main__":
    main()
