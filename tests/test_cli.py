"""The `newsllm` command line without Dagster."""

from __future__ import annotations

import json

import dagster as dg
from click.testing import CliRunner

from newsllm_pipeline.categorizer.prompt import DEFAULT_CATEGORIES
from newsllm_pipeline.cli import main


def test_categorize_jsonl_adds_categoria_and_confianza_and_passes_other_fields_through(tmp_path, model_dir):
    lines = [
        {"id": "a", "titulo": "El Atlético gana la Supercopa", "resumen": "Griezmann marcó en la prórroga."},
        {"id": "b", "titulo": "", "resumen": ""},
        {"id": "c", "titulo": "La inflación baja al 2 %", "fuente": "Agencia"},
    ]
    source, out = tmp_path / "in.jsonl", tmp_path / "out" / "result.jsonl"
    source.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    result = CliRunner().invoke(main, ["categorize", str(source), "--out", str(out), "--model", model_dir])
    assert result.exit_code == 0, result.output
    assert "2 categorised, 1 failed" in result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "c"] and records[2]["fuente"] == "Agencia"
    assert records[0]["categoria"] in DEFAULT_CATEGORIES and 0 < records[0]["confianza"] <= 1
    assert records[1]["categoria"] is None and "neither titulo nor resumen" in records[1]["error"]
    assert [path.name for path in out.parent.iterdir()] == ["result.jsonl"]


def test_db_upgrade_then_status(tmp_path):
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    assert "created table noticias" in runner.invoke(main, ["db", "upgrade", "--url", url]).output
    assert "up to date" in runner.invoke(main, ["db", "upgrade", "--url", url]).output
    assert "total=0" in runner.invoke(main, ["status", "--url", url]).output


def test_definitions_load_with_every_job_sensor_and_schedule():
    from newsllm_pipeline.definitions import defs

    assert {job.name for job in defs.jobs} >= {"categorize_noticias_job", "reprocess_noticias_job"}
    assert defs.resolve_sensor_def("uncategorized_noticias_sensor").job_name == "categorize_noticias_job"
    assert defs.resolve_job_def("categorize_noticias_job").executor_def.name == "in_process"
    assert dg.Definitions.validate_loadable(defs) is None
