"""Site settings: environment variables with the NEWSLLM_ prefix, with defaults that work offline.

Every default points inside the project folder (`NEWSLLM_HOME`, the checkout by default), so a fresh
clone runs with SQLite, the packaged tiny model and the sample feeds and nothing configured.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dagster is imported where a resource is built: plain modules (models, training) run without it
    import dagster as dg

ENV_PREFIX = "NEWSLLM_"


CHECKOUT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return CHECKOUT if (CHECKOUT / "pyproject.toml").exists() else Path.cwd()


PROJECT_HOME = Path(os.environ.get("NEWSLLM_HOME", _default_home())).resolve()
DEFAULT_MODEL_DIR = PROJECT_HOME / "models" / "base" / "SmolLM2-135M-Instruct"
# The categoriser's own default: the packaged Gemma 3 270M, measured the better categoriser (README, Benchmarks);
# SmolLM2 stays the default for chat-style generation and document adapters (Gemma 3 270M has no chat template).
DEFAULT_CATEGORIZER_MODEL_DIR = PROJECT_HOME / "models" / "base" / "gemma-3-270m"
DEFAULT_CATEGORIZER_ADAPTERS_DIR = PROJECT_HOME / "models" / "categorizer_adapters"
DEFAULT_FEEDS_GLOB = str(PROJECT_HOME / "data" / "feeds" / "*.xml")
# Shipped with the checkout, not the site's data: found wherever NEWSLLM_HOME points.
SHIPPED_REAL_ITEMS = CHECKOUT / "data" / "noticias_reales" / "items.jsonl"


def default_database_url() -> str:
    return f"sqlite:///{PROJECT_HOME / 'data' / 'newsllm.db'}"


def env(name: str, default: str | None = None) -> str | None:
    """Read NEWSLLM_<name> from the environment."""
    return os.environ.get(ENV_PREFIX + name, default)


def site_setting(name: str, default: str) -> str | dg.EnvVar:
    """A resource field value: the environment variable when the site sets it (shown as such in the
    Dagster UI and read at run time), else the offline default."""
    import dagster as dg

    return dg.EnvVar(ENV_PREFIX + name) if ENV_PREFIX + name in os.environ else default


def database_url() -> str:
    return env("DATABASE_URL") or default_database_url()


def model_dir() -> str:
    return env("MODEL_DIR") or str(DEFAULT_MODEL_DIR)


def categorizer_model_dir() -> str:
    """NEWSLLM_CATEGORIZER_MODEL_DIR, else NEWSLLM_MODEL_DIR (a site's own model serves both), else the
    packaged Gemma 3 270M."""
    return env("CATEGORIZER_MODEL_DIR") or env("MODEL_DIR") or str(DEFAULT_CATEGORIZER_MODEL_DIR)


def feed_sources() -> list[str]:
    """NEWSLLM_FEEDS: feed URLs, files or globs separated by commas or whitespace (default: the samples)."""
    import glob

    sources = []
    for entry in (env("FEEDS") or DEFAULT_FEEDS_GLOB).replace(",", " ").split():
        matches = sorted(glob.glob(entry)) if any(ch in entry for ch in "*?[") else [entry]
        sources.extend(matches)
    return sources
