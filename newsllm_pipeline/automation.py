"""Declarative automation: the conditions the dataset and adapter assets carry, the sensor that evaluates them (on
by default, switchable on the UI's Automation page) and the site's timezone, which every schedule and cron
condition takes.

- `training_dataset` is rebuilt once described documents changed and none is still being processed: a backfill
  of many documents rebuilds it once, after its last run, not after every batch.
- `lora_adapter` retrains at the nightly tick (02:00 in NEWSLLM_TIMEZONE) when the dataset changed since the
  adapter last ran and its blocking checks passed; `adapter_evaluation` follows a new adapter.
"""

import zoneinfo

import dagster as dg

from .settings import setting

NIGHTLY = "0 2 * * *"


def site_timezone() -> str:
    """NEWSLLM_TIMEZONE (an IANA name such as Europe/Madrid; UTC by default), read when the code location loads."""
    name = setting("TIMEZONE")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(
            f"NEWSLLM_TIMEZONE={name!r} is not a timezone name: use an IANA name such as Europe/Madrid or UTC"
        ) from error
    return name


def after_inputs_change() -> dg.AutomationCondition:
    """True once an input was updated since this asset last ran (or was requested) and none is being updated now."""
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("inputs changed, none in progress")


def nightly_after_inputs_change(cron: str = NIGHTLY) -> dg.AutomationCondition:
    """`after_inputs_change` at the first evaluation after the cron tick (site timezone), with the inputs' blocking
    checks passed: at most once a night, and only when an input changed. A change during the day waits for the
    next tick; a tick that finds an input still being updated waits for the next night."""
    timezone = site_timezone()
    return (
        after_inputs_change()
        & dg.AutomationCondition.cron_tick_passed(cron, timezone)
        & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label(f"at {cron} ({timezone}) after inputs changed")


automation_sensor = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: the dataset after described documents change, the "
    "document adapter and its evaluation at night after the dataset changed. Stop it to pause all of them.",
)
