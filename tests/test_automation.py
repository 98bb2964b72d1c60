"""Declarative automation as its sensor evaluates it: described documents refresh the dataset (once, and not while
a backfill is still describing documents), a changed dataset retrains the adapter at the nightly tick and only
then, the retraining picks the profile of its device, and the site's timezone reaches every schedule and the
nightly condition."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill

from newsllm_pipeline.assets.training import CategorizerTrainingConfig, DocumentTrainingConfig
from newsllm_pipeline.automation import site_timezone
from newsllm_pipeline.definitions import defs

WATCHED = ["training_dataset", "lora_adapter", "adapter_evaluation"]
KEYS = ["agua_md", "energia_md"]


class AutomationSensor:
    """The automation sensor's ticks: each evaluation continues from the previous one's cursor."""

    def __init__(self, instance: dg.DagsterInstance, now: dt.datetime):
        self.instance, self.now, self.cursor = instance, now, None

    def tick(self, at: dt.datetime | None = None) -> set[str]:
        """The watched assets this tick requests (one minute after the previous tick unless `at`)."""
        self.now = at or self.now + dt.timedelta(minutes=1)
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=self.instance, cursor=self.cursor, evaluation_time=self.now
        )
        self.cursor = result.cursor
        return {name for name in WATCHED if result.get_num_requested(dg.AssetKey(name))}


def _materialized(instance: dg.DagsterInstance, name: str, partition: str | None = None) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(name, partition=partition))


def _dataset_built(instance: dg.DagsterInstance, passed: bool = True) -> None:
    """A training_dataset run: its materialisation and its blocking check's result."""
    _materialized(instance, "training_dataset")
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("training_dataset"), check_name="answers_whole_and_not_templates", passed=passed
        )
    )


def _describing(instance: dg.DagsterInstance, keys: list[str]) -> PartitionBackfill:
    """A backfill of described_markdown still working on `keys`."""
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id="describing",
        asset_graph=defs.resolve_asset_graph(),
        partition_names=keys,
        asset_selection=[dg.AssetKey("described_markdown")],
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    return backfill


def test_described_documents_refresh_the_dataset_once_and_not_during_a_backfill():
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("documents", KEYS)
        sensor = AutomationSensor(instance, dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC))
        assert sensor.tick() == set()
        for key in KEYS:
            _materialized(instance, "described_markdown", key)
        assert sensor.tick() == {"training_dataset"}  # once for both documents
        assert sensor.tick() == set()  # requested: nothing new since
        _dataset_built(instance)  # the run it requested
        assert sensor.tick() == set()  # unchanged documents: not requested again

        backfill = _describing(instance, KEYS[1:])
        _materialized(instance, "described_markdown", KEYS[0])  # the backfill's first batch is done
        assert sensor.tick() == set()  # the other document is still in the backfill
        instance.update_backfill(backfill.with_status(BulkActionStatus.COMPLETED_SUCCESS))
        assert sensor.tick() == {"training_dataset"}


def test_a_changed_dataset_retrains_the_adapter_at_the_nightly_tick_only():
    with dg.instance_for_test() as instance:
        sensor = AutomationSensor(instance, dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC))
        assert sensor.tick() == set()
        _dataset_built(instance)
        assert sensor.tick() == set()  # changed at 14:01: waits for the night
        night = dt.datetime(2026, 12, 2, 2, 0, 30, tzinfo=dt.UTC)
        assert sensor.tick(at=night) == {"lora_adapter", "adapter_evaluation"}  # one run: train, then evaluate
        _materialized(instance, "lora_adapter")
        _materialized(instance, "adapter_evaluation")
        assert sensor.tick() == set()
        assert sensor.tick(at=night + dt.timedelta(days=1)) == set()  # the dataset did not change
        _dataset_built(instance, passed=False)  # answers cut mid-word: the previous dataset stays
        assert sensor.tick(at=night + dt.timedelta(days=2)) == set()
        _dataset_built(instance)
        assert sensor.tick(at=night + dt.timedelta(days=2, hours=8)) == set()
        assert sensor.tick(at=night + dt.timedelta(days=3)) == {"lora_adapter", "adapter_evaluation"}


def test_the_retraining_profile_fits_its_device():
    assert DocumentTrainingConfig().profile == "auto"
    assert DocumentTrainingConfig().profile_for("cuda:1") == "gpu"
    assert DocumentTrainingConfig().settings("cuda").rank == 128
    assert DocumentTrainingConfig().profile_for("cpu") == "cpu"
    assert DocumentTrainingConfig(profile="gpu").profile_for("cpu") == "gpu"  # asked for by name: as asked
    # The categoriser's short recipe was measured on the cpu profile's shape; it keeps it on a GPU.
    assert CategorizerTrainingConfig().profile_for("cuda") == "cpu"
    with pytest.raises(dg.Failure, match="unknown training profile 'tpu'"):
        DocumentTrainingConfig(profile="tpu").settings("cpu")


def test_the_site_timezone_reaches_every_schedule_and_the_nightly_condition(monkeypatch):
    probe = (
        "import json, dagster as dg; from newsllm_pipeline.definitions import defs; "
        "adapter = defs.resolve_asset_graph().get(dg.AssetKey('lora_adapter')); "
        "print(json.dumps({'schedules': {s.name: s.execution_timezone for s in defs.schedules}, "
        "'nightly': adapter.automation_condition.get_label()}))"
    )
    env = {**os.environ, "NEWSLLM_TIMEZONE": "Europe/Madrid"}
    output = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    loaded = json.loads(output.stdout.splitlines()[-1])
    assert loaded["schedules"] and set(loaded["schedules"].values()) == {"Europe/Madrid"}, loaded
    assert loaded["nightly"] == "at 0 2 * * * (Europe/Madrid) after inputs changed"

    monkeypatch.setenv("NEWSLLM_TIMEZONE", "Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="NEWSLLM_TIMEZONE='Mars/Olympus_Mons' is not a timezone name"):
        site_timezone()
