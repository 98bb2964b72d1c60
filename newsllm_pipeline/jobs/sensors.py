"""Sensors: notice work and decide how many runs to launch; each run claims its own batch."""

import math
import time

import dagster as dg

from ..resources import NoticiasDatabase
from .categorize import categorize_noticias_job

# Runs launched but not yet claiming: their batches are still counted in the backlog.
_WAITING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING]


def build_uncategorized_noticias_sensor(
    batch_size: int = 10, max_runs_per_tick: int = 4, interval_seconds: int = 30
) -> dg.SensorDefinition:
    @dg.sensor(
        name="uncategorized_noticias_sensor",
        job=categorize_noticias_job,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Launches one categorize_noticias_job run per {batch_size} uncategorised noticias "
        f"(at most {max_runs_per_tick} per tick).",
    )
    def uncategorized_noticias_sensor(context: dg.SensorEvaluationContext, noticias_db: NoticiasDatabase):
        backlog = noticias_db.count_claimable()
        if backlog == 0:
            status = noticias_db.status()
            return dg.SkipReason(
                f"no uncategorised noticias ({status['processed']} categorised, "
                f"{status['failed_permanently']} failed {noticias_db.max_attempts} times, "
                f"{status['claimed']} in progress)"
            )
        waiting = context.instance.get_runs_count(
            dg.RunsFilter(job_name=categorize_noticias_job.name, statuses=_WAITING)
        )
        wanted = min(math.ceil(backlog / batch_size) - waiting, max_runs_per_tick)
        if wanted <= 0:
            return dg.SkipReason(f"{backlog} uncategorised noticias; {waiting} runs already waiting to claim them")
        # Keys unique per tick: a run key deduplicates forever, and reset rows must be processed again.
        tick = time.time_ns()
        context.log.info(f"{backlog} uncategorised noticias: launching {wanted} runs of {batch_size}")
        return [
            dg.RunRequest(
                run_key=f"{tick}-{index}",
                run_config=dg.RunConfig(ops={"categorize_batch": {"config": {"batch_size": batch_size}}}),
                tags={"newsllm/backlog": str(backlog)},
            )
            for index in range(wanted)
        ]

    return uncategorized_noticias_sensor
