"""`newsllm demo` (what `make demo` runs) end to end in a fresh project home, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import sqlalchemy as sa

from newsllm_pipeline import db
from tests.conftest import FEEDS


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
        [sys.executable, "-m", "newsllm_pipeline.cli", "demo"], env=env, capture_output=True, text=True, timeout=600
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "5 new noticias" in demo.stdout
    assert "sensor: launching 1 runs" in demo.stdout and "5 noticias categorised" in demo.stdout
    assert "'processed': 5" in demo.stdout
    with db.create_db_engine(f"sqlite:///{database}").connect() as conn:
        categories = conn.execute(sa.select(db.noticias.c.llm_categoria)).scalars().all()
    assert len(categories) == 5 and all(categories)
