"""Shared fixtures: real databases (PostgreSQL and SQLite) and the real packaged model."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image, ImageDraw, ImageFont

from newsllm_pipeline import db
from newsllm_pipeline.resources.devices import ROLES, device_resources

TESTS = Path(__file__).parent
FEEDS = TESTS / "data" / "feeds"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
PG_URL = os.environ.get("NEWSLLM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _server_or_skip(url: str) -> sa.Engine:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as error:
        message = f"no PostgreSQL server at {url} (set NEWSLLM_TEST_DATABASE_URL): {error.orig}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return engine


@pytest.fixture(scope="session")
def pg_server_url():
    """A fresh database on the test server for this session, dropped afterwards."""
    admin = _server_or_skip(PG_URL)
    name = f"newsllm_test_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """Each test using this runs on SQLite and on PostgreSQL, with an empty noticias table."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'noticias.db'}"
        return
    url = request.getfixturevalue("pg_server_url")
    engine = sa.create_engine(url)
    db.metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS noticias")
    engine.dispose()
    yield url


@pytest.fixture
def engine(database_url):
    engine = db.create_db_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def site_devices() -> dict:
    """Every `<role>_device` resource as the site's settings make them (here: `auto`, card 0's pool, the CPU)."""
    return device_resources(*ROLES)


def sample_rows(count: int, prefix: str = "n") -> list[dict]:
    """Realistic short news rows for database tests."""
    topics = [
        ("El Gobierno aprueba los presupuestos", "El Consejo de Ministros dio luz verde al proyecto."),
        ("El Valencia gana al Sevilla en Mestalla", "Dos goles en la segunda parte decidieron el partido."),
        ("Suben los precios de la vivienda", "El alquiler se encarece un 8 % en las grandes ciudades."),
        ("Nuevo tratamiento contra la diabetes", "Un ensayo clínico muestra resultados prometedores."),
    ]
    return [
        {
            "titulo": f"{topics[i % 4][0]} ({i})",
            "resumen": topics[i % 4][1],
            "url": f"https://test.example/{prefix}/{i}",
            "fuente": "Test",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The packaged SmolLM2-135M-Instruct as a transformers folder (converted once, ~20 s)."""
    from newsllm_pipeline.models import prepare_base_model

    return str(prepare_base_model())


@pytest.fixture(scope="session")
def categorizer(model_dir):
    from newsllm_pipeline.resources.noticias import TransformersCategorizerResource

    resource = TransformersCategorizerResource(model_dir=model_dir, device="auto")
    resource.load()
    return resource


def banner(path: Path, lines: list[str]) -> Path:
    """A 640 × 480 figure that real OCR reads: a blue band on top, black DejaVu text on white below."""
    font = ImageFont.truetype(FONT, 48) if FONT.exists() else ImageFont.load_default(size=48)
    picture = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, 640, 180), fill=(30, 70, 200))
    for row, line in enumerate(lines):
        draw.text((30, 230 + 80 * row), line, fill="black", font=font)
    picture.save(path)
    return path
