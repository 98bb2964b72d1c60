"""Schedules: read the feeds regularly and refresh the statistics."""

import dagster as dg

from ..assets.noticias import noticias, noticias_category_stats

ingest_noticias_job = dg.define_asset_job(
    "ingest_noticias_job", selection=[noticias], description="Read the configured feeds into noticias."
)
category_stats_job = dg.define_asset_job(
    "category_stats_job", selection=[noticias_category_stats], description="Refresh the category statistics."
)

ingest_noticias_schedule = dg.ScheduleDefinition(
    job=ingest_noticias_job, cron_schedule="*/15 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
category_stats_schedule = dg.ScheduleDefinition(
    job=category_stats_job, cron_schedule="0 * * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
