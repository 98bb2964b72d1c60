"""`newsllm`: the pipeline's pieces without the Dagster UI (quick checks, evaluation, the demo)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from . import settings
from .files import BadLine, read_jsonl_lines, staged_file


def _database_option(function):
    return click.option(
        "--url",
        "database_url",
        default=None,
        help="SQLAlchemy URL (default: NEWSLLM_DATABASE_URL or SQLite in data/)",
    )(function)


def _engine(database_url: str | None):
    from . import db

    return db.create_db_engine(database_url or settings.setting("DATABASE_URL"))


@click.group()
def main():
    """newsllm_pipeline: categorise news and specialise LLMs on your own hardware."""


@main.group()
def models():
    """Base models."""


@models.command("prepare")
@click.option(
    "--model",
    "names",
    multiple=True,
    type=click.Choice(["smollm2", "gemma3", "all"]),
    help="Which packaged model (repeatable; default: the categoriser's, `all`: every one)",
)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder (one model; default: models/base/)")
@click.option("--force", is_flag=True, help="Convert again even if the folder exists")
def models_prepare(names: tuple[str, ...], out: Path | None, force: bool):
    """Turn packaged GGUF models (SmolLM2-135M-Instruct, Gemma 3 270M) into transformers folders (once)."""
    from .models import PACKAGED_MODELS, packaged_model_for, prepare_base_model

    default = packaged_model_for(Path(settings.setting("CATEGORIZER_MODEL_DIR")))
    chosen = list(PACKAGED_MODELS) if "all" in names else list(names) or [default.name if default else "gemma3"]
    if out is not None and len(chosen) != 1:
        raise click.UsageError("--out needs exactly one --model")
    for name in chosen:
        click.echo(f"{name} ready: {prepare_base_model(out, force=force, model=name)}")


@models.command("list")
def models_list():
    """The packaged base models: folder, whether it is prepared, licence, and what each is the default for."""
    from .models import PACKAGED_MODELS, is_model_folder, packaged_model_for

    def default_of(model_dir: str) -> str | None:
        packaged = PACKAGED_MODELS.get(model_dir) or packaged_model_for(Path(model_dir))
        return packaged.name if packaged else None

    roles = {
        "categoriser": default_of(settings.setting("CATEGORIZER_MODEL_DIR")),
        "generation": default_of(settings.setting("MODEL_DIR")),
    }
    for name, packaged in PACKAGED_MODELS.items():
        state = "prepared" if is_model_folder(packaged.model_dir) else "not prepared"
        used_for = ", ".join(role for role, default in roles.items() if default == name)
        mark = f" (default for {used_for})" if used_for else ""
        click.echo(f"{name}{mark}: {packaged.model_dir} [{state}] licence: {packaged.licence}")


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
    """Read RSS/Atom FEEDS (URLs or files) into noticias, skipping known urls. Exits 1 when a feed could not
    be read or an item was rejected (both reported); everything else is stored."""
    from . import db
    from .feeds import ingest_feeds

    engine = _engine(database_url)
    db.upgrade(engine)
    reports = ingest_feeds(engine, feeds)
    for report in reports:
        for warning in report.warnings:
            click.echo(f"warning: {warning}", err=True)
        for rejected in report.rejected:
            click.echo(f"rejected: {rejected}", err=True)
        if report.error:
            click.echo(f"error: {report.error}", err=True)
        else:
            rejected = f", {len(report.rejected)} rejected" if report.rejected else ""
            click.echo(f"{report.source}: {report.items} items, {report.new} new{rejected}")
    sys.exit(1 if any(report.error or report.rejected for report in reports) else 0)


@main.command()
@click.argument("input_path", metavar="IN.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "output_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--model",
    "model_dir",
    default=None,
    help="Model folder (default: the site's categoriser, NEWSLLM_CATEGORIZER_MODEL_DIR, else the packaged Gemma 3)",
)
@click.option("--adapter", "adapter_dir", default=None, help="LoRA adapter folder (default: the current one, if any)")
@click.option("--backend", default=None, type=click.Choice(["transformers", "exllamav2"]), help="NEWSLLM_BACKEND")
@click.option("--device", default=None, help="Default: NEWSLLM_CATEGORIZE_DEVICE, else auto")
@click.option("--batch-size", type=int, default=None, help="Items per forward pass (local backends; default 16)")
def categorize(input_path, output_path, model_dir, adapter_dir, backend, device, batch_size):
    """Categorise IN.jsonl (lines with titulo and resumen; other fields pass through) into --out,
    adding categoria and confianza (or error). The output file appears only when complete. A line that is
    not a JSON object with text titulo/resumen is reported (file:line: reason) and left out; exit code 1."""
    from tqdm import tqdm

    from .categorizer import Prediction, item_text
    from .resources.noticias import categorizer_from_settings

    records, bad_lines = _categorizable_records(input_path)
    for bad_line in bad_lines:
        click.echo(f"error: {bad_line}", err=True)
    if not records:
        raise click.ClickException(f"{input_path}: no line to categorise")
    # The site's categoriser: the same class and settings the sensor's runs use; options override them.
    options = dict(model_dir=model_dir, adapter_dir=adapter_dir, device=device, batch_size=batch_size)
    try:
        categorizer = categorizer_from_settings(resolve_now=True, backend=backend, **options)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    categorizer.load()
    chunk = 64
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
    if bad_lines:
        click.echo(f"{len(bad_lines)} bad lines in {input_path} left out (listed above)", err=True)
        sys.exit(1)


def _categorizable_records(path: Path) -> tuple[list[dict], list[BadLine]]:
    """The lines of a categorise input that are JSON objects whose titulo and resumen are text (or absent),
    and the others with the reason: checked before the model loads."""
    objects, bad_lines = read_jsonl_lines(path)
    records = []
    for number, record in objects:
        wrong = [field for field in ("titulo", "resumen") if not isinstance(record.get(field), str | None)]
        if wrong:
            kinds = ", ".join(f"`{field}` is a {type(record[field]).__name__}" for field in wrong)
            bad_lines.append(BadLine(path, number, f"{kinds}, not text"))
        else:
            records.append(record)
    return records, sorted(bad_lines, key=lambda bad_line: bad_line.line)


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
@click.argument("question", required=False)
@click.option("--model", "model_dir", default=None, help="Base model folder (default: NEWSLLM_MODEL_DIR or packaged)")
@click.option("--adapter", "adapter_dir", type=click.Path(file_okay=False, path_type=Path), help="LoRA adapter folder")
@click.option("--device", default="auto", show_default=True, help="'auto', 'cpu', 'cuda', 'cuda:1'")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy")
@click.option("--compare", is_flag=True, help="Answer with the base model too (one load, the adapter switched off)")
def ask(question, model_dir, adapter_dir, device, max_new_tokens, temperature, compare):
    """Answer QUESTION with the model (and --adapter); without QUESTION, answer each line read from stdin."""
    from .models import AdapterError, resolve_model_dir
    from .training.inference import generate_answer, load_for_generation

    if compare and adapter_dir is None:
        raise click.UsageError("--compare needs --adapter: it shows the base model's answer next to the adapter's")
    try:
        model_dir = resolve_model_dir(model_dir or settings.setting("MODEL_DIR"))
        model, tokenizer = load_for_generation(model_dir, adapter_dir, device)
    except (AdapterError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error

    def answer(text: str) -> str:
        return generate_answer(model, tokenizer, text, max_new_tokens, temperature)

    def answer_and_show(text: str) -> None:
        if not compare:
            click.echo(answer(text))
            return
        with model.disable_adapter():
            base_answer = answer(text)
        click.echo(f"[base]\n{base_answer}\n\n[adapter: {adapter_dir}]\n{answer(text)}")

    if question is not None:
        answer_and_show(question)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo("one question per line; Ctrl-D ends", err=True)
    for line in sys.stdin:
        if line.strip():
            answer_and_show(line.strip())
            if interactive or compare:
                click.echo()


@main.command()
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "model_dir", default=None, help="Base model folder (default: NEWSLLM_MODEL_DIR or packaged)")
@click.option("--dtype", default="float32", type=click.Choice(["float32", "bfloat16", "float16"]), show_default=True)
def export(adapter_dir, out_dir, model_dir, dtype):
    """Merge the LoRA adapter into the base model and write a plain Hugging Face folder to --out
    (safetensors, tokenizer, generation config): no PEFT needed to load it."""
    from .models import AdapterError, resolve_model_dir
    from .training.inference import export_merged

    try:
        base = resolve_model_dir(model_dir or settings.setting("MODEL_DIR"))
        result = export_merged(base, adapter_dir, out_dir, dtype)
    except (AdapterError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    if result.tied:
        embeddings = "input and output embeddings stay tied"
    else:
        changed = ", ".join(result.adapted_embeddings) or "the embeddings"
        embeddings = f"embeddings untied: the adapter changes {changed}, so lm_head has its own matrix"
    click.echo(
        f"exported {result.path}: {result.parameters / 1e6:.1f}M parameters, {result.size_bytes / 1e6:.1f} MB "
        f"({result.dtype}), {embeddings}"
    )


@main.command("settings")
def show_settings():
    """Every NEWSLLM_* setting: its value now, whether the site set it, and what it does."""
    from tabulate import tabulate

    click.echo(tabulate(settings.describe_settings(), headers="keys", tablefmt="github"))


@main.command()
@_database_option
def status(database_url):
    """How many noticias are categorised, pending, failed."""
    from . import db

    counts = db.status_counts(_engine(database_url), int(settings.setting("MAX_ATTEMPTS")))
    click.echo("  ".join(f"{key}={value}" for key, value in counts.items()))


@main.command()
@click.argument("key", metavar="[ID_OR_URL]", required=False)
@click.argument("categoria", required=False)
@click.option(
    "--file",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV with a header: url or id, and categoria",
)
@_database_option
def review(key, categoria, csv_path, database_url):
    """Mark an item's category as reviewed (a trusted label for training the categoriser):
    `review ID_OR_URL CATEGORIA`, or many with `review --file labels.csv`."""
    from . import db
    from .db import import_reviews_csv

    if csv_path is not None and (key or categoria):
        raise click.UsageError("give either ID_OR_URL CATEGORIA or --file, not both")
    if csv_path is None and not (key and categoria):
        raise click.UsageError("give ID_OR_URL CATEGORIA, or --file with a CSV of reviews")
    engine = _engine(database_url)
    db.upgrade(engine)
    if csv_path is not None:
        try:
            result = import_reviews_csv(engine, csv_path)
        except ValueError as error:
            raise click.ClickException(str(error)) from error
    else:
        row_key = int(key) if key.isascii() and key.isdigit() else key  # an id out of range is rejected below
        result = db.mark_reviewed(engine, [(row_key, categoria)])
    for rejected in result.rejected:
        click.echo(f"rejected: {rejected.key}: {rejected.reason}", err=True)
    for missing in result.not_found:
        click.echo(f"not found: {missing}: no noticia has this {'id' if isinstance(missing, int) else 'url'}", err=True)
    click.echo(f"{result.written} written, {len(result.rejected)} rejected, {len(result.not_found)} not found")
    sys.exit(0 if result.ok else 1)


@main.command("process-document")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
@click.option("--describer", default="ocr", type=click.Choice(["ocr", "openai", "transformers"]), show_default=True)
@click.option("--vision-url", default=None, help="openai describer: base URL of an OpenAI-compatible endpoint")
@click.option("--vision-model", default=None, help="openai: model name; transformers: model folder")
def process_document(source, out_dir, describer, vision_url, vision_model):
    """The whole chain for one file without Dagster, in the original layout: texto.md,
    imagenes_extraidas/, image_descriptions/, texto_final.md. --out must be new, empty or a previous
    output of this command (it is replaced whole)."""
    from .documents.chain import (
        UnsafeOutputFolder,
        check_output_folder,
        describe_document_images,
        write_described_markdown,
    )
    from .documents.conversion import DocumentConversionError, convert_document, offline_converter
    from .documents.descriptions import write_descriptions
    from .files import staged_folder
    from .resources.documents import describer_resource

    try:
        check_output_folder(out_dir, source)
        converted = convert_document(source, out_dir, offline_converter())
    except (UnsafeOutputFolder, DocumentConversionError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"texto.md: {converted.pages} pages, {converted.pictures} pictures, {converted.seconds:.1f}s")
    resource = describer_resource(
        describer, url=vision_url, model=vision_model, api_key=settings.setting("VISION_API_KEY") or None
    )
    run = describe_document_images(out_dir, resource.describer(), resource.question())
    with staged_folder(out_dir / "image_descriptions") as staging:
        write_descriptions(run, staging)
    for image, error in run.failed.items():
        click.echo(f"warning: {image}: {error}", err=True)
    final, replaced, dropped = write_described_markdown(out_dir)
    click.echo(f"{final.name}: {replaced} pictures described, {dropped} left out -> {out_dir}")


@main.command("vision-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to serve other machines")
@click.option("--port", default=8000, show_default=True)
@click.option("--backend", default="ocr", type=click.Choice(["ocr", "transformers"]), show_default=True)
@click.option("--model", default=None, help="transformers: a local vision-language model folder (e.g. Qwen2-VL)")
@click.option("--device", default="auto", show_default=True, help="transformers: 'auto', 'cuda', 'cuda:1', 'cpu'")
@click.option("--load-in-8bit", is_flag=True, help="transformers: 8-bit weights (bitsandbytes, CUDA)")
@click.option("--max-new-tokens", default=256, show_default=True, help="transformers: longest answer")
@click.option("--max-concurrency", type=click.IntRange(min=1), help="[default: 2 for ocr, 1 for transformers]")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--max-side", type=click.IntRange(min=32), default=1536, show_default=True, help="Longer: scaled down")
@click.option("--no-auth", is_flag=True, help="Serve without a token (trusted networks only)")
def vision_server(
    host, port, backend, model, device, load_in_8bit, max_new_tokens, max_concurrency, max_upload_mb, max_side, no_auth
):
    """Serve an image describer over HTTP: the original REST API (/analyze, /analyze_base64, /status) and
    OpenAI's /v1/chat/completions. Clients send `Authorization: Bearer $NEWSLLM_VISION_TOKEN`."""
    from .vision.server import start_server
    from .vision.uploads import MB

    try:
        start_server(
            host,
            port,
            backend,
            model=model,
            device=device,
            load_in_8bit=load_in_8bit,
            max_new_tokens=max_new_tokens,
            max_concurrency=max_concurrency,
            max_upload_bytes=int(max_upload_mb * MB),
            max_side=max_side,
            no_auth=no_auth,
        )
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise click.ClickException(str(error)) from error


@main.command("categorizer-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="0.0.0.0 to serve other machines")
@click.option("--port", default=8100, show_default=True)
@click.option("--model", default=None, help="Model folder (default: NEWSLLM_CATEGORIZER_MODEL_DIR)")
@click.option("--adapter", default=None, help="LoRA adapter folder (default: NEWSLLM_ADAPTER_DIR, else the current)")
@click.option("--device", default=None, help="Default: NEWSLLM_CATEGORIZE_DEVICE, else auto")
@click.option("--no-auth", is_flag=True, help="Serve without a token (trusted networks only)")
def categorizer_server(host, port, model, adapter, device, no_auth):
    """Hold the site's categoriser (NEWSLLM_BACKEND and the other NEWSLLM_* settings) loaded and serve it over HTTP,
    so pipeline runs with NEWSLLM_BACKEND=remote share it. Clients send `Authorization: Bearer
    $NEWSLLM_CATEGORIZER_TOKEN`."""
    from .categorizer.server import start_server

    try:
        start_server(host, port, model=model, adapter=adapter, device=device, no_auth=no_auth)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise click.ClickException(str(error)) from error


@main.command("vision-client")
@click.option("--server", default="http://127.0.0.1:8000", show_default=True, envvar="NEWSLLM_VISION_SERVER")
@click.option("--token", envvar="NEWSLLM_VISION_TOKEN", help="[default: $NEWSLLM_VISION_TOKEN]")
@click.option("--status", "show_status", is_flag=True, help="Show the server's model and counts")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Describe one image")
@click.option("--text", help="The question about --image (default: the server's)")
@click.option("--interactive", is_flag=True, help="Ask about images until an empty answer")
@click.option("--batch", "batch_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--questions", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="One a line")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), help="[default: DIR/vision_results]"
)
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to wait for each answer")
def vision_client(server, token, show_status, image, text, interactive, batch_dir, questions, out_dir, timeout):
    """Talk to `newsllm vision-server`: --status, --image FILE [--text Q], --interactive, or --batch DIR
    [--questions FILE] [--out DIR] (each question about every image; one <image>.json per image)."""
    from .vision.client import VisionClient, VisionClientError, run_client

    if sum((show_status, image is not None, interactive, batch_dir is not None)) != 1:
        raise click.UsageError("choose one of --status, --image, --interactive, --batch")
    client = VisionClient(server, token, timeout)
    try:
        failed = run_client(client, show_status, image, text, interactive, batch_dir, questions, out_dir)
    except VisionClientError as error:
        raise click.ClickException(str(error)) from error
    sys.exit(1 if failed else 0)


@main.command()
def demo():
    """Ingest the sample feeds and categorise them through the Dagster sensor and job, then show the
    statistics. Uses the local Dagster instance, so `make dev` shows the runs afterwards."""
    from .demo import DemoStepFailed, run_demo

    os.environ.setdefault("DAGSTER_HOME", str(settings.PROJECT_HOME / "dagster_home"))
    try:
        run_demo(echo=click.echo)
    except DemoStepFailed as error:
        raise click.ClickException(f"demo failed: {error}") from error


if __name__ == "__main__":
    main()
