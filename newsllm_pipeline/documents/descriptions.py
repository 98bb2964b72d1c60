"""Descriptions of the pictures extracted from documents, one text per PNG.

Three backends share one small interface: `OcrDescriber` (offline default: RapidOCR reads the text, Pillow gives
the size and dominant colours), `OpenAIDescriber` (any OpenAI-compatible chat completions server with vision, e.g.
vLLM or llama.cpp) and `TransformersDescriber` (a local vision-language model folder, meant for a CUDA machine).
`describe_images` runs one backend over a batch so that one bad picture does not stop the others, and
`write_descriptions` leaves a JSON and a Markdown file per picture for the step that replaces the image links.
"""

from __future__ import annotations

import base64
import colorsys
import json
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from ..files import write_text_atomically

DEFAULT_PROMPT = (
    "Describe detalladamente esta imagen en español: transcribe todo el texto visible tal como aparece "
    "y explica qué muestra (tipo de imagen, elementos, datos o relaciones que representa)."
)


@dataclass(frozen=True)
class ImageDescription:
    image: str
    prompt: str
    backend: str
    text: str
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DescriptionRun:
    descriptions: list[ImageDescription] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class DescriptionError(Exception):
    """A picture that could not be described: unreadable, or the backend gave no description."""


class ImageDescriber(Protocol):
    name: str

    def describe(self, image: Path, prompt: str) -> str: ...


class PictureDescriber(ImageDescriber, Protocol):
    """A describer that also takes a picture already in memory (what the vision server hands it)."""

    def describe_picture(self, picture: Image.Image, prompt: str) -> str: ...


def rgb_on_white(picture: Image.Image) -> Image.Image:
    """The picture as RGB, transparent areas on white (how they look on the page)."""
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return picture.convert("RGB")


def _open_rgb(image: Path) -> Image.Image:
    try:
        with Image.open(image) as opened:
            opened.load()
            return rgb_on_white(opened)
    except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DescriptionError(f"{image}: not a readable image ({error})") from error


def _colour_name(red: int, green: int, blue: int) -> str:
    hue, saturation, value = colorsys.rgb_to_hsv(red / 255, green / 255, blue / 255)
    if value < 0.2:
        return "negro"
    if saturation < 0.2:
        return "blanco" if value > 0.85 else "gris"
    degrees = hue * 360
    if degrees < 15 or degrees >= 345:
        return "marrón" if value < 0.55 else "rojo"
    if degrees < 40:
        return "marrón" if value < 0.6 else "naranja"
    for limit, name in ((70, "amarillo"), (170, "verde"), (200, "celeste"), (260, "azul"), (300, "morado")):
        if degrees < limit:
            return name
    return "rosa"


def dominant_colours(picture: Image.Image, most: int = 3, min_share: float = 0.1) -> list[str]:
    """Spanish names of the colours covering at least `min_share` of the picture, largest first (always one)."""
    small = picture.copy()
    small.thumbnail((128, 128))
    quantised = small.quantize(colors=8)
    palette = quantised.getpalette() or []
    shares: dict[str, int] = {}
    for count, index in quantised.getcolors() or []:
        name = _colour_name(*palette[3 * index : 3 * index + 3])
        shares[name] = shares.get(name, 0) + count
    ranked = sorted(shares, key=shares.get, reverse=True)
    total = sum(shares.values())
    return [ranked[0], *(name for name in ranked[1:most] if shares[name] / total >= min_share)]


def _spanish_list(names: list[str]) -> str:
    items = [f"el {name}" for name in names]
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} y {items[-1]}"


class OcrDescriber:
    """Offline description: size, dominant colours and the text RapidOCR reads (about 1–2 s per picture on one
    core). It describes what is measurable and ignores the prompt."""

    name = "rapidocr"

    def __init__(self, max_text_chars: int = 600):
        from rapidocr import RapidOCR

        self.max_text_chars = max_text_chars
        # "error": an empty detection (a picture without text) is a normal outcome here, not a warning.
        self._engine = RapidOCR(params={"Global.log_level": "error"})

    def read_text(self, picture: Image.Image) -> str:
        result = self._engine(picture)  # a PIL image, which RapidOCR takes as RGB (a numpy array as BGR)
        text = " ".join(line.strip() for line in result.txts or () if line.strip())
        if len(text) <= self.max_text_chars:
            return text
        return text[: self.max_text_chars].rsplit(" ", 1)[0] + "…"

    def describe(self, image: Path, prompt: str) -> str:
        return self.describe_picture(_open_rgb(image), prompt)

    def describe_picture(self, picture: Image.Image, prompt: str) -> str:
        """`picture` must be RGB (see `rgb_on_white`). Safe to call from several threads at once: the ONNX
        Runtime sessions are, and RapidOCR keeps no per-call state that differs between calls."""
        colours = dominant_colours(picture)
        verb = "predomina" if len(colours) == 1 else "predominan"
        sentence = f"Imagen de {picture.width} × {picture.height} píxeles en la que {verb} {_spanish_list(colours)}."
        text = self.read_text(picture)
        return f'{sentence} Texto legible: "{text}".' if text else f"{sentence} No contiene texto legible."


class OpenAIDescriber:
    """A vision model behind an OpenAI-compatible `/chat/completions` endpoint, with the standard library only.
    Connection errors, timeouts and 5xx answers are retried with a doubling backoff; a 4xx is final."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60,
        retries: int = 2,
        max_tokens: int = 512,
        backoff_s: float = 1.0,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.name = f"openai:{model}"
        self._api_key = api_key  # kept out of messages and repr
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_tokens = max_tokens
        self.backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"OpenAIDescriber(url={self.url!r}, model={self.model!r})"

    def _request(self, image: Path, prompt: str) -> urllib.request.Request:
        try:
            encoded = base64.b64encode(image.read_bytes()).decode("ascii")
        except OSError as error:
            raise DescriptionError(f"{image}: cannot read the picture ({error})") from error
        payload = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": prompt},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}},
                    ],
                }
            ],
            "max_tokens": self.max_tokens,
            "temperature": 0,
        }
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return urllib.request.Request(self.url, data=json.dumps(payload).encode("utf-8"), headers=headers)

    def describe(self, image: Path, prompt: str) -> str:
        request = self._request(image, prompt)
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    body = response.read()
                break
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    raise DescriptionError(
                        f"{image}: {self.url} answered HTTP {error.code}: {_server_message(error)}"
                    ) from error
                last_error = f"HTTP {error.code}: {_server_message(error)}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
                last_error = str(getattr(error, "reason", error))
            if attempt + 1 < attempts:
                time.sleep(self.backoff_s * 2**attempt)
        else:
            raise DescriptionError(f"{image}: no answer from {self.url} after {attempts} attempts ({last_error})")
        try:
            content = json.loads(body)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise DescriptionError(f"{image}: {self.url} answered without choices[0].message.content") from error
        if not isinstance(content, str) or not content.strip():
            raise DescriptionError(f"{image}: {self.url} answered with an empty description")
        return content.strip()


def _server_message(error: urllib.error.HTTPError) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    body = error.read().decode("utf-8", errors="replace")
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = body
    return str(message).strip()[:300] or error.reason


class TransformersDescriber:
    """A local vision-language model folder (e.g. Qwen2-VL) run with transformers: greedy decoding of the
    processor's chat template with the picture and the prompt. Meant for CUDA; on CPU it works, slowly.
    `load_in_8bit` quantises the weights with bitsandbytes on a CUDA device (about half the memory)."""

    def __init__(
        self, model_dir: str | Path, device: str = "auto", max_new_tokens: int = 256, load_in_8bit: bool = False
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ..models import resolve_device, resolve_dtype

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a model folder (no config.json); give a local VLM folder")
        device = resolve_device(device)
        self.name = f"transformers:{model_dir.name}"
        self.device = device
        self.max_new_tokens = max_new_tokens
        self._torch = torch
        dtype = resolve_dtype("auto", device)
        if load_in_8bit:
            loading = {"quantization_config": _eight_bit_config(device), "device_map": {"": device}}
        else:
            loading = {}
        self._processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, **loading)
        self._model = (model if load_in_8bit else model.to(device)).eval()

    def describe(self, image: Path, prompt: str) -> str:
        picture = _open_rgb(image)
        try:
            return self.describe_picture(picture, prompt)
        except DescriptionError as error:
            raise DescriptionError(f"{image}: {error}") from error

    def describe_picture(self, picture: Image.Image, prompt: str) -> str:
        messages = [
            {
                "role": "user",
                "content": [{"type": "image", "image": picture}, {"type": "text", "text": prompt}],
            }
        ]
        inputs = self._processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        ).to(self._model.device)
        with self._torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        text = self._processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()
        if not text:
            raise DescriptionError(f"{self.name} generated an empty description")
        return text


def _eight_bit_config(device: str):
    """bitsandbytes' 8-bit quantisation, or a clear error where it cannot run."""
    import importlib.util

    if not device.startswith("cuda"):
        raise ValueError(f"8-bit loading needs a CUDA device, not {device!r}: drop load_in_8bit on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("8-bit loading needs the bitsandbytes package: `pip install bitsandbytes` on the GPU host")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def describe_images(
    images: list[Path], describer: ImageDescriber, prompt: str = DEFAULT_PROMPT, min_side_px: int = 32
) -> DescriptionRun:
    """Describe each picture; pictures with a side under `min_side_px` (icons, rules, bullets) are skipped, and a
    picture that cannot be described is recorded in `failed` while the others go on."""
    run = DescriptionRun()
    for image in images:
        image = Path(image)
        try:
            with Image.open(image) as opened:
                width, height = opened.size
        except OSError as error:
            run.failed[str(image)] = f"{image}: not a readable image ({error})"
            continue
        if min(width, height) < min_side_px:
            run.skipped.append(str(image))
            continue
        started = time.perf_counter()
        try:
            text = describer.describe(image, prompt)
        except DescriptionError as error:
            run.failed[str(image)] = str(error)
            continue
        run.descriptions.append(
            ImageDescription(str(image), prompt, describer.name, text, round(time.perf_counter() - started, 3))
        )
    return run


def write_descriptions(run: DescriptionRun, out_dir: Path) -> list[Path]:
    """Write `<image stem>.json` (the ImageDescription) and `<image stem>.md` (`# <image name>` and the text) per
    described picture into `out_dir`; returns the paths written."""
    stems = [Path(description.image).stem for description in run.descriptions]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ValueError(f"pictures from different folders share the names {duplicates}: write them separately")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for description in run.descriptions:
        image = Path(description.image)
        json_path, markdown_path = out_dir / f"{image.stem}.json", out_dir / f"{image.stem}.md"
        write_text_atomically(json_path, json.dumps(description.to_dict(), ensure_ascii=False, indent=2) + "\n")
        write_text_atomically(markdown_path, f"# {image.name}\n\n{description.text}\n")
        written += [json_path, markdown_path]
    return written
