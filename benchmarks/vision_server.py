"""Vision-server benchmark: requests/s and latency of `POST /analyze` with the `ocr` backend.

The server runs in this process on a free 127.0.0.1 port (uvicorn in a thread, the describer loaded once), with
the default bound on describer calls (`--max-concurrency`, 2 on a 2-core machine). Clients send 640 × 480 PNG
figures with Spanish text (a blue band and two lines, like a chart title), cycling through a few of them:

- baseline: the same describer called directly, one call at a time (no HTTP);
- over HTTP at client concurrency 1, 4 and 16 (threads, one keep-alive session each): requests/s over the
  wall time, p50/p95 latency per request, and errors; the HTTP overhead is the p50 at concurrency 1 over the
  baseline's p50.

Every level is preceded by warm-up requests that are not measured.

    .venv/bin/python benchmarks/vision_server.py [--requests 32] [--concurrency 1 4 16] [--out PATH]
    make bench

The results are written as JSON to --out (default benchmarks/results/vision_server.json) and printed as a summary.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from harness import package_versions, write_report
from PIL import Image, ImageDraw, ImageFont
from tabulate import tabulate

from newsllm_pipeline.documents.descriptions import DEFAULT_PROMPT, OcrDescriber
from newsllm_pipeline.serving.server import running_in_thread
from newsllm_pipeline.vision.app import create_app
from newsllm_pipeline.vision.server import default_concurrency
from newsllm_pipeline.vision.service import ServerSettings

SCRIPT = Path(__file__).resolve()
DEFAULT_OUT = SCRIPT.parent / "results" / "vision_server.json"
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
TOKEN = "benchmark-token"
FIGURES = [
    ["Presupuestos 2024", "Gasto en sanidad"],
    ["Paro registrado", "Comunidad de Madrid"],
    ["Temperatura media", "Julio de 2023"],
    ["Resultados electorales", "Participación 66 %"],
]
VERSIONED_PACKAGES = ("starlette", "uvicorn", "rapidocr", "onnxruntime", "pillow")


def figure(lines: list[str]) -> bytes:
    font = ImageFont.truetype(FONT, 44) if FONT.exists() else ImageFont.load_default(size=44)
    picture = Image.new("RGB", (640, 480), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle((0, 0, 640, 180), fill=(30, 70, 200))
    for row, line in enumerate(lines):
        draw.text((30, 230 + 80 * row), line, fill="black", font=font)
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def latency_summary(latencies: list[float], wall_s: float) -> dict:
    milliseconds = 1000 * np.asarray(latencies)
    return {
        "requests": len(latencies),
        "wall_s": wall_s,
        "requests_per_s": len(latencies) / wall_s,
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p95_ms": float(np.percentile(milliseconds, 95)),
        "mean_ms": float(milliseconds.mean()),
    }


def measure_direct(describer: OcrDescriber, images: list[bytes], count: int) -> dict:
    """The describer on its own, one call at a time, from the decoded picture (as the server hands it)."""
    pictures = [Image.open(io.BytesIO(image)).convert("RGB") for image in images]
    describer.describe_picture(pictures[0], DEFAULT_PROMPT)  # warm-up
    latencies, started = [], time.perf_counter()
    for index in range(count):
        began = time.perf_counter()
        describer.describe_picture(pictures[index % len(pictures)], DEFAULT_PROMPT)
        latencies.append(time.perf_counter() - began)
    return latency_summary(latencies, time.perf_counter() - started)


def measure_http(url: str, images: list[bytes], count: int, concurrency: int) -> dict:
    """`count` /analyze requests from `concurrency` threads, each with its own keep-alive session."""
    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.headers["Authorization"] = f"Bearer {TOKEN}"
        return local.session

    def send(index: int) -> tuple[float, bool]:
        began = time.perf_counter()
        files = {"image": (f"figura{index}.png", images[index % len(images)], "image/png")}
        reply = session().post(f"{url}/analyze", files=files, timeout=600)
        return time.perf_counter() - began, reply.status_code == 200 and reply.json().get("success") is True

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(concurrency)))  # warm-up: one request per thread opens its connection
        started = time.perf_counter()
        results = list(pool.map(send, range(count)))
        wall_s = time.perf_counter() - started
    summary = latency_summary([latency for latency, _ in results], wall_s)
    summary["errors"] = sum(not ok for _, ok in results)
    return {"concurrency": concurrency, **summary}


def summary(report: dict) -> str:
    direct = report["direct"]
    rows = [["direct (no HTTP)", 1, direct["requests_per_s"], direct["p50_ms"], direct["p95_ms"], "–"]]
    rows += [
        ["HTTP /analyze", *(level[key] for key in ("concurrency", "requests_per_s", "p50_ms", "p95_ms", "errors"))]
        for level in report["http"]
    ]
    table = tabulate(
        rows,
        headers=["", "clients", "requests/s", "p50 ms", "p95 ms", "errors"],
        floatfmt=("", "", ".2f", ".0f", ".0f", ""),
    )
    server = report["server"]
    return "\n".join(
        [
            f"Vision-server benchmark: {report['requests']} requests per level, 640 × 480 PNG figures, "
            f"{server['backend']} backend ({server['model']}), {server['max_concurrency']} describer calls at a "
            f"time, {report['cpu_count']} CPUs (load average {report['load_average_before'][0]:.1f} before)",
            "",
            table,
            "",
            f"HTTP overhead       p50 at 1 client / direct p50 = {ratio:.2f}x"
            if (ratio := report["http_overhead_ratio"])
            else "HTTP overhead       not measured (no level with 1 client)",
            f"server side         peak describer calls {server['peak_running']}, "
            f"{server['succeeded']} succeeded, {server['failed']} failed",
            "versions            " + ", ".join(f"{name} {version}" for name, version in report["versions"].items()),
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32, help="measured requests per level (default: 32)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client levels (1 4 16)")
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="describer calls at a time in the server (its default)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default: {DEFAULT_OUT})")
    args = parser.parse_args()
    if args.requests < 1 or min(args.concurrency) < 1:
        parser.error("--requests and --concurrency must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    images = [figure(lines) for lines in FIGURES]
    load_average_before = os.getloadavg()
    started = time.perf_counter()
    describer = OcrDescriber()
    load_s = time.perf_counter() - started
    print(f"direct: {args.requests} describer calls ...", file=sys.stderr, flush=True)
    direct = measure_direct(describer, images, args.requests)
    settings = ServerSettings(
        backend="ocr", model=describer.name, max_concurrency=args.max_concurrency or default_concurrency("ocr")
    )
    app = create_app(describer, TOKEN, settings)
    http = []
    with running_in_thread(app) as url:
        for concurrency in args.concurrency:
            print(f"HTTP: {args.requests} requests from {concurrency} clients ...", file=sys.stderr, flush=True)
            http.append(measure_http(url, images, args.requests, concurrency))
    counts = app.state.service.counts
    single = [level for level in http if level["concurrency"] == 1]
    report = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "load_average_before": load_average_before,
        "load_average_after": os.getloadavg(),
        "requests": args.requests,
        "image": {"width": 640, "height": 480, "format": "PNG", "bytes": [len(image) for image in images]},
        "server": {
            "backend": settings.backend,
            "model": settings.model,
            "max_concurrency": settings.max_concurrency,
            "max_side": settings.max_side,
            "describer_load_s": load_s,
            "peak_running": counts.peak_running,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
        },
        "direct": direct,
        "http": http,
        "http_overhead_ratio": single[0]["p50_ms"] / direct["p50_ms"] if single else None,
        "versions": package_versions(VERSIONED_PACKAGES),
    }
    write_report(report, args.out, summary(report))


if __name__ == "__main__":
    main()
