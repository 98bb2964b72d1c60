"""One way to read a setting: every NEWSLLM_* variable is declared once, read at run time by resources."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

import newsllm_pipeline
from newsllm_pipeline import settings
from newsllm_pipeline.cli import main
from newsllm_pipeline.resources.noticias import (
    ExLlamaV2CategorizerResource,
    TransformersCategorizerResource,
    categorizer_from_settings,
    noticias_database_from_settings,
)

PACKAGE = Path(newsllm_pipeline.__file__).parent
# Read before the catalogue exists: where the project's data lives.
PROCESS_VARIABLES = {"NEWSLLM_HOME", "NEWSLLM_"}


def test_every_variable_the_package_names_is_declared():
    named = set()
    for path in PACKAGE.rglob("*"):
        if path.suffix in (".py", ".html"):
            named |= set(re.findall(r"NEWSLLM_[A-Z0-9_]*", path.read_text(encoding="utf-8")))
    declared = {entry.variable for entry in settings.SETTINGS.values()}
    assert named - PROCESS_VARIABLES <= declared, named - PROCESS_VARIABLES - declared


LOAD = """
import dagster as dg
from newsllm_pipeline.definitions import defs
dg.Definitions.validate_loadable(defs)
print("loaded")
"""


def test_a_site_that_sets_every_setting_still_loads():
    """Every set variable becomes an EnvVar of its field: a field Dagster cannot fill from the environment (a float,
    say) would stop the code location from loading at exactly the sites that configure it."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("NEWSLLM_")}
    env.update({entry.variable: settings.setting(entry.name) for entry in settings.SETTINGS.values()})
    run = subprocess.run([sys.executable, "-c", LOAD], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("loaded"), run.stderr[-3000:]


def test_a_set_variable_becomes_an_env_var_read_at_run_time(monkeypatch):
    monkeypatch.delenv("NEWSLLM_BATCH_SIZE", raising=False)
    assert settings.site_int("BATCH_SIZE") == 10
    monkeypatch.setenv("NEWSLLM_BATCH_SIZE", "25")
    assert settings.site_int("BATCH_SIZE").env_var_name == "NEWSLLM_BATCH_SIZE"
    database = noticias_database_from_settings()
    monkeypatch.setenv("NEWSLLM_BATCH_SIZE", "30")  # after the code location loaded: the run still sees it
    with dg.build_resources({"noticias_db": database}) as resources:
        assert resources.noticias_db.batch_size == 30


def test_fallback_and_defaults(monkeypatch):
    monkeypatch.delenv("NEWSLLM_CATEGORIZER_MODEL_DIR", raising=False)
    monkeypatch.delenv("NEWSLLM_MODEL_DIR", raising=False)
    assert settings.setting("CATEGORIZER_MODEL_DIR") == str(settings.DEFAULT_CATEGORIZER_MODEL_DIR)
    monkeypatch.setenv("NEWSLLM_MODEL_DIR", "/site/model")
    assert settings.setting("CATEGORIZER_MODEL_DIR") == "/site/model"
    assert settings.site_setting("CATEGORIZER_MODEL_DIR").env_var_name == "NEWSLLM_MODEL_DIR"
    monkeypatch.setenv("NEWSLLM_CATEGORIZER_MODEL_DIR", "/site/categoriser")
    assert settings.setting("CATEGORIZER_MODEL_DIR") == "/site/categoriser"
    with pytest.raises(KeyError):
        settings.setting("NO_SUCH_SETTING")


def test_the_backend_is_chosen_in_one_place_with_only_its_own_fields(monkeypatch):
    monkeypatch.setenv("NEWSLLM_BACKEND", "exllamav2")
    resource = categorizer_from_settings()
    assert isinstance(resource, ExLlamaV2CategorizerResource)
    assert "adapter_dir" not in type(resource).model_fields and "device" not in type(resource).model_fields
    assert "cache_type" not in TransformersCategorizerResource.model_fields
    monkeypatch.setenv("NEWSLLM_BACKEND", "llamacpp")
    with pytest.raises(ValueError, match="transformers, exllamav2"):
        categorizer_from_settings()


def test_the_seed_worker_settings_reach_the_exllamav2_backend(monkeypatch):
    """The original worker's gpu_split, cache mode (FP16/Q4, any case) and max_seq_len, as site settings."""
    monkeypatch.setenv("NEWSLLM_BACKEND", "exllamav2")
    monkeypatch.setenv("NEWSLLM_GPU_SPLIT", "20, 24")
    monkeypatch.setenv("NEWSLLM_CACHE_TYPE", "Q4")
    monkeypatch.setenv("NEWSLLM_MAX_SEQ_LEN", "8192")
    resource = categorizer_from_settings(resolve_now=True, model_dir=".")
    assert (resource.gpu_split, resource.cache_type, resource.max_seq_len) == ([20.0, 24.0], "Q4", 8192)
    assert resource.spec().cache_type == "q4"
    at_run_time = categorizer_from_settings()
    assert at_run_time.max_seq_len.env_var_name == "NEWSLLM_MAX_SEQ_LEN"


def test_settings_command_lists_values_and_hides_secrets(monkeypatch):
    monkeypatch.setenv("NEWSLLM_VISION_API_KEY", "s3cret")
    monkeypatch.setenv("NEWSLLM_MAX_ATTEMPTS", "5")
    result = CliRunner().invoke(main, ["settings"])
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    row = next(line for line in result.output.splitlines() if "NEWSLLM_MAX_ATTEMPTS" in line)
    assert "| 5 " in row and "NEWSLLM_MAX_ATTEMPTS" in row.split("|")[3]
