"""`newsllm`: the pipeline's pieces without the Dagster UI (quick checks, evaluation, the demo)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import settings
from .files import staged_file


def _database_option(function):
    return click.option(
        "--url",
        "database_url",
        default=None,
        help="SQLAlchemy URL (default: NEWSLLM_DATABASE_URL or SQLite in data/)",
    )(function)


def _engine(database_url: str | None):
    from . import db

    return db.create_db_engine(database_url or settings.database_url())


@click.group()
def main():
    """newsllm_pipeline: categorise news and specialise LLMs on your own hardware."""


@main.group()
def models():
    """Base models."""


@models.command("prepare")
@click.option("--out", type=click.Path(path_type=Path), default=settings.DEFAULT_MODEL_DIR, show_default=True)
@click.option("--force", is_flag=True, help="Convert again even if the folder exists")
def models_prepare(out: Path, force: bool):
    """Turn the packaged SmolLM2-135M-Instruct GGUF into a transformers folder (once)."""
    from .models import prepare_base_model

    click.echo(f"base model ready: {prepare_base_model(out, force=force)}")


@main.group("db")
def database():
    """The noticias database."""


@database.command("upgrade")
@_database_option
def db_upgrade(database_url):
    """Create the noticias table, or add the columns an existing one lacks (data untouched)."""
    from . import db

    changes = db.upgrade(_engine(database_url))
    click.echo("\n".join(changes) if changes else "noticias is up to date")


@main.command()
@click.argument("feeds", nargs=-1, required=True)
@_database_option
def ingest(feeds, database_url):
    """Read RSS/Atom FEEDS (URLs or files) into noticias, skipping known urls."""
    from . import db
    from .feeds import ingest_feeds

    engine = _engine(database_url)
    db.upgrade(engine)
    reports = ingest_feeds(engine, feeds)
    for report in reports:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
        if report.error:
            click.echo(f"error: {report.error}", err=True)
        else:
            click.echo(f"{report.source}: {report.items} items, {report.new} new")
    sys.exit(1 if any(report.error for report in reports) else 0)


@main.command()
@click.argument("input_path", metavar="IN.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--model",
    "model_dir",
    default=None,
    help="Model folder (default: NEWSLLM_MODEL_DIR or the packaged model)",
)
@click.option("--adapter", "adapter_dir", default=None, help="LoRA adapter folder")
@click.option("--backend", default="transformers", type=click.Choice(["transformers", "exllamav2"]))
@click.option("--device", default="auto")
@click.option("--batch-size", default=16, show_default=True)
def categorize(input_path, output_path, model_dir, adapter_dir, backend, device, batch_size):
    """Categorise IN.jsonl (lines with titulo and resumen; other fields pass through) into --out,
    adding categoria and confianza (or error). The output file appears only when complete."""
    from tqdm import tqdm

    from .categorizer import Prediction, item_text
    from .resources.categorizer import CategorizerResource

    records = [json.loads(line) for line in input_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    categorizer = CategorizerResource(
        backend=backend,
        model_dir=model_dir or settings.model_dir(),
        adapter_dir=adapter_dir,
        device=device,
        batch_size=batch_size,
    )
    categorizer.load()
    chunk = batch_size * 4
    failed = 0
    with (
        staged_file(output_path) as partial,
        partial.open("w", encoding="utf-8") as out,
        tqdm(total=len(records), unit="item", desc="categorising") as bar,
    ):
        for start in range(0, len(records), chunk):
            batch = records[start : start + chunk]
            texts = [item_text(record.get("titulo"), record.get("resumen")) for record in batch]
            for record, result in zip(batch, categorizer.categorize(texts), strict=True):
                if isinstance(result, Prediction):
                    record.update(categoria=result.categoria, confianza=result.confianza)
                else:
                    record.update(categoria=None, confianza=None, error=str(result))
                    failed += 1
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            bar.update(len(batch))
    click.echo(f"{len(records) - failed} categorised, {failed} failed -> {output_path}")


@main.command()
@click.option("--categoria", default=None, help="Only items of this category")
@click.option("--below", "max_confianza", type=float, default=None, help="Only items with confidence below this")
@click.option("--since", type=click.DateTime(), default=None, help="Only items published on or after")
@click.option("--until", type=click.DateTime(), default=None, help="Only items published before")
@_database_option
def reprocess(categoria, max_confianza, since, until, database_url):
    """Reset categorised noticias so the sensor categorises them again."""
    from . import db

    selection = db.Selection(categoria=categoria, max_confianza=max_confianza, fecha_desde=since, fecha_hasta=until)
    click.echo(f"reset {db.reset_for_reprocessing(_engine(database_url), selection)} noticias")


@main.command()
@_database_option
def status(database_url):
    """How many noticias are categorised, pending, failed."""
    from . import db

    counts = db.status_counts(_engine(database_url), int(settings.env("MAX_ATTEMPTS", "3")))
    click.echo("  ".join(f"{key}={value}" for key, value in counts.items()))


@main.command("process-document")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--describer", default="ocr", type=click.Choice(["ocr", "openai", "transformers"]), show_default=True)
@click.option("--vision-url", default=None, help="openai describer: base URL of an OpenAI-compatible endpoint")
@click.option("--vision-model", default=None, help="openai: model name; transformers: model folder")
def process_document(source, out_dir, describer, vision_url, vision_model):
    """The whole chain for one file without Dagster, in the original layout: texto.md,
    imagenes_extraidas/, image_descriptions/, texto_final.md."""
    from .documents.chain import extracted_images, write_described_markdown
    from .documents.conversion import DocumentConversionError, convert_document, offline_converter
    from .documents.descriptions import describe_images, write_descriptions
    from .files import staged_folder
    from .resources.documents import ImageDescriberResource

    try:
        converted = convert_document(source, out_dir, offline_converter())
    except DocumentConversionError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"texto.md: {converted.pages} pages, {converted.pictures} pictures, {converted.seconds:.1f}s")
    resource = ImageDescriberResource(backend=describer, url=vision_url, model=vision_model)
    images = extracted_images(out_dir)
    run = describe_images(images, resource.describer(), prompt=resource.question())
    with staged_folder(out_dir / "image_descriptions") as staging:
        write_descriptions(run, staging)
    for image, error in run.failed.items():
        click.echo(f"warning: {image}: {error}", err=True)
    final, replaced, dropped = write_described_markdown(out_dir)
    click.echo(f"{final.name}: {replaced} pictures described, {dropped} left out -> {out_dir}")


@main.command()
def demo():
    """Ingest the sample feeds and categorise them through the Dagster sensor and job, then show the
    statistics. Uses the local Dagster instance, so `make dev` shows the runs afterwards."""
    from .demo import run_demo

    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_HOME / "dagster_home"))
    run_demo(echo=click.echo)


if __name__ == "__main__":
    main()
