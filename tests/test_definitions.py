"""The code location as a whole: what a person sees in the UI must not change without anyone noticing.

A change to an asset, its dependencies or group, a check, a job (its steps' device pools too), a sensor, a
schedule, a default state or a resource fails here until the snapshot is updated on purpose:
    NEWSLLM_UPDATE_SNAPSHOT=1 .venv/bin/python -m pytest tests/test_definitions.py
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from newsllm_pipeline.definitions import defs

SNAPSHOT = Path(__file__).parent / "data" / "definitions_snapshot.json"


def _status(value) -> str | None:
    return value.value if value is not None else None


def _label(condition) -> str | None:
    return condition.get_label() if condition is not None else None


def describe(definitions: dg.Definitions) -> dict:
    graph = definitions.resolve_asset_graph()
    assets = {
        key.to_user_string(): {
            "group": graph.get(key).group_name,
            "deps": sorted(parent.to_user_string() for parent in graph.get(key).parent_keys),
            "partitioned": graph.get(key).partitions_def is not None,
            "automation": _label(graph.get(key).automation_condition),
            "backfill_policy": str(graph.get(key).backfill_policy) if graph.get(key).backfill_policy else None,
        }
        for key in sorted(graph.get_all_asset_keys(), key=lambda key: key.to_user_string())
    }
    jobs = {
        job.name: {
            "ops": sorted(node.name for node in job.nodes_in_topological_order),
            # The device pool of each step that runs a model (resources/devices.py).
            "pools": {
                node.name: node.definition.pool for node in job.nodes_in_topological_order if node.definition.pool
            },
            "executor": job.executor_def.name,
            "partitioned": job.partitions_def is not None,
        }
        for job in sorted(definitions.resolve_all_job_defs(), key=lambda job: job.name)
        if not job.name.startswith("__")
    }
    sensors = {
        sensor.name: {
            "jobs": sorted(target.job_name for target in sensor.targets),
            "default_status": _status(sensor.default_status),
            "minimum_interval_seconds": sensor.minimum_interval_seconds,
        }
        for sensor in sorted(definitions.sensors or [], key=lambda sensor: sensor.name)
    }
    schedules = {
        schedule.name: {
            "job": schedule.job_name,
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "default_status": _status(schedule.default_status),
        }
        for schedule in sorted(definitions.schedules or [], key=lambda schedule: schedule.name)
    }
    return {
        "assets": assets,
        "checks": sorted(f"{key.asset_key.to_user_string()}:{key.name}" for key in graph.asset_check_keys),
        "jobs": jobs,
        "sensors": sensors,
        "schedules": schedules,
        "resources": {
            key: {"class": type(value).__name__, "fields": sorted(type(value).model_fields)}
            for key, value in sorted(definitions.resources.items())
        },
    }


def test_definitions_match_the_snapshot():
    current = json.dumps(describe(defs), indent=1, ensure_ascii=False) + "\n"
    if os.environ.get("NEWSLLM_UPDATE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(current, encoding="utf-8")
    expected = SNAPSHOT.read_text(encoding="utf-8")
    diff = "".join(difflib.unified_diff(expected.splitlines(True), current.splitlines(True), "snapshot", "now"))
    assert not diff, f"the definitions changed; update the snapshot on purpose (see this file's docstring):\n{diff}"


def test_every_domain_contributes_its_checks():
    """A standalone check in any assets module is loaded (the code location once loaded checks from one module)."""
    checks = describe(defs)["checks"]
    assert "noticias_category_stats:no_permanently_failed_noticias" in checks
    assert {check.split(":")[0] for check in checks} >= {"noticias", "training_dataset", "categorizer_evaluation"}


def test_loading_the_code_location_imports_no_model_stack():
    """The daemon, the webserver and every run load the code location: heavy imports happen where the work is."""
    probe = (
        "import sys, newsllm_pipeline.definitions; "
        "print(sorted(m for m in ('torch', 'transformers', 'docling', 'peft', 'trl', 'rapidocr') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
