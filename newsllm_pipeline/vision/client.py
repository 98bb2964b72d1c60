"""A client of the image-description server for people: `VisionClient` and the loops behind
`newsllm vision-client` (status, one image, an interactive session, a batch of images and questions)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import requests

from ..files import write_text_atomically

DEFAULT_SERVER = "http://127.0.0.1:8000"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif")


class VisionClientError(Exception):
    """The server could not be reached, or it answered with an error (its reason included)."""


class VisionClient:
    def __init__(self, server: str = DEFAULT_SERVER, token: str | None = None, timeout_s: float = 300):
        server = server.rstrip("/")
        self.server = server.removesuffix("/v1")  # the pipeline's NEWSLLM_VISION_URL works too
        self.timeout_s = timeout_s
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"  # kept out of repr and messages

    def __repr__(self) -> str:
        return f"VisionClient(server={self.server!r})"

    def _call(self, method: str, path: str, **kwargs) -> dict:
        url = self.server + path
        try:
            response = self._session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.ConnectionError as error:
            raise VisionClientError(
                f"no vision server at {self.server}: start one with `newsllm vision-server` or give --server"
            ) from error
        except requests.Timeout as error:
            raise VisionClientError(f"{url} gave no answer within {self.timeout_s:g} s") from error
        try:
            body = response.json()
        except ValueError:
            body = None
        if not response.ok or not isinstance(body, dict):
            reason = body.get("error") if isinstance(body, dict) else None
            if isinstance(reason, dict):  # OpenAI's error shape
                reason = reason.get("message")
            raise VisionClientError(f"{url}: HTTP {response.status_code}: {reason or response.text[:300]}")
        return body

    def status(self) -> dict:
        return self._call("GET", "/status")

    def health(self) -> dict:
        return self._call("GET", "/health")

    def analyze(self, image: Path, text: str | None = None) -> dict:
        """The server's answer for one image file: `response` (the description), `processing_time`, …"""
        image = Path(image)
        try:
            data = image.read_bytes()
        except OSError as error:
            raise VisionClientError(f"{image}: cannot read the file ({error})") from error
        form = {"text": text} if text else {}
        return self._call("POST", "/analyze", files={"image": (image.name, data)}, data=form)


def status_lines(status: dict) -> list[str]:
    requests_ = status["requests"]
    mean = requests_["mean_latency_ms"]
    return [
        f"server     {status['status']}, up {status['uptime_s']:.0f} s since {status['started_at']}",
        f"model      {status['model']} ({status['backend']} backend on {status['device']}), "
        f"{status['max_concurrency']} at a time",
        f"requests   {requests_['total']} total, {requests_['succeeded']} succeeded, {requests_['failed']} failed, "
        f"{requests_['in_flight']} in flight, mean {'–' if mean is None else f'{mean:.0f} ms'}",
        f"limits     {status['limits']['max_upload_bytes'] / 2**20:g} MB, longest side "
        f"{status['limits']['max_side']} px, {', '.join(status['limits']['formats'])}",
    ]


def answer_text(result: dict) -> str:
    return f"{result['response']}\n({result['processing_time']:.2f} s)"


def interactive_session(
    client: VisionClient, echo: Callable[[str], None] = click.echo, ask: Callable[..., str] = click.prompt
) -> None:
    """Ask for an image and questions about it until an empty image path; an empty question picks a new image."""
    echo("Empty image path to quit; empty question to change image.")
    while True:
        path = ask("image", default="", show_default=False).strip()
        if not path:
            return
        image = Path(path).expanduser()
        if not image.is_file():
            echo(f"{image}: no such file")
            continue
        while question := ask("question", default="", show_default=False).strip():
            try:
                echo(answer_text(client.analyze(image, question)))
            except VisionClientError as error:
                echo(f"error: {error}")


def read_questions(path: Path | None) -> list[str | None]:
    """One question a line (blank lines and lines starting with # skipped); no file: the server's default."""
    if path is None:
        return [None]
    lines = path.read_text(encoding="utf-8").splitlines()
    questions = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not questions:
        raise VisionClientError(f"{path}: no questions (one a line)")
    return questions


def describe_folder(
    client: VisionClient, folder: Path, questions: list[str | None], out_dir: Path, progress: bool = True
) -> tuple[list[Path], int]:
    """Ask every question about every image in `folder` (by extension, not recursive); write `<stem>.json` per
    image into `out_dir` (answers and errors). Returns the files written and the number of failed answers."""
    from tqdm import tqdm

    images = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise VisionClientError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    stems = [image.stem for image in images]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise VisionClientError(f"{folder}: images share the names {duplicates}; their results would collide")
    written, failed = [], 0
    with tqdm(total=len(images) * len(questions), unit="answer", disable=not progress) as bar:
        for image in images:
            answers = []
            for question in questions:
                try:
                    result = client.analyze(image, question)
                    answers.append(
                        {
                            "question": result["prompt"],
                            "response": result["response"],
                            "processing_time": result["processing_time"],
                        }
                    )
                except VisionClientError as error:
                    answers.append({"question": question, "error": str(error)})
                    failed += 1
                bar.update()
            path = out_dir / f"{image.stem}.json"
            record = {"image": str(image), "server": client.server, "answers": answers}
            write_text_atomically(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
            written.append(path)
    return written, failed


def run_client(
    client: VisionClient,
    show_status: bool = False,
    image: Path | None = None,
    text: str | None = None,
    interactive: bool = False,
    batch_dir: Path | None = None,
    questions: Path | None = None,
    out_dir: Path | None = None,
    echo: Callable[[str], None] = click.echo,
) -> int:
    """What `newsllm vision-client` does in its one chosen mode; returns the number of failed answers."""
    if show_status:
        echo("\n".join(status_lines(client.status())))
        return 0
    if image is not None:
        echo(answer_text(client.analyze(image, text)))
        return 0
    if interactive:
        interactive_session(client, echo)
        return 0
    out_dir = out_dir or batch_dir / "vision_results"
    written, failed = describe_folder(client, batch_dir, read_questions(questions), out_dir)
    echo(f"{len(written)} images, {failed} failed answers -> {out_dir}")
    return failed


def docling_picture_description(
    server: str,
    token: str | None = None,
    prompt: str | None = None,
    timeout_s: float = 120,
    concurrency: int = 2,
    picture_area_threshold: float = 0.05,
):
    """Docling's `PictureDescriptionApiOptions` pointed at a vision server (for `offline_converter`'s
    `picture_description`, or any PdfPipelineOptions with `enable_remote_services=True`)."""
    from docling.datamodel.pipeline_options import PictureDescriptionApiOptions

    from ..documents.descriptions import DEFAULT_PROMPT

    return PictureDescriptionApiOptions(
        url=server.rstrip("/").removesuffix("/v1") + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {token}"} if token else {},
        prompt=prompt or DEFAULT_PROMPT,
        timeout=timeout_s,
        concurrency=concurrency,
        picture_area_threshold=picture_area_threshold,
    )
