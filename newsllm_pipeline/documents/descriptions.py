"""Descriptions of the pictures extracted from documents, one text per PNG.

Three backends share one small interface: `OcrDescriber` (offline default: RapidOCR reads the figure's text and
the document's own words about it, its caption and the sentences around it, say what it is about),
`OpenAIDescriber` (any OpenAI-compatible chat completions server with vision, e.g. vLLM or llama.cpp) and
`TransformersDescriber` (a local vision-language model folder, meant for a CUDA machine). A vision model sees the
picture and answers the prompt; it is given no context, as in the original project. `describe_images` runs one
backend over a batch so that one bad picture does not stop the others, and `write_descriptions` leaves a JSON and
a Markdown file per picture for the step that replaces the image links.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from ..files import write_text_atomically
from ..text import fold

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
    undescribed: list[str] = field(default_factory=list)  # nothing usable to say without a vision model
    failed: dict[str, str] = field(default_factory=dict)


class DescriptionError(Exception):
    """A picture that could not be described: unreadable, or the backend gave no description."""


class ImageDescriber(Protocol):
    name: str

    def describe(self, image: Path, prompt: str, context: FigureContext | None = None) -> str: ...


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


@dataclass(frozen=True)
class FigureContext:
    """What the document says around a picture: its caption, the text the PDF sets inside it (a text layer
    over the picture) and the paragraphs just before and after it."""

    caption: str = ""
    inner_text: str = ""
    before: str = ""
    after: str = ""


@dataclass(frozen=True)
class OcrLine:
    text: str
    left: float
    top: float
    right: float
    bottom: float

    @property
    def height(self) -> float:
        return self.bottom - self.top

    @property
    def width(self) -> float:
        return self.right - self.left


class NoUsableDescription(DescriptionError):
    """A picture with nothing to say about it without a vision model: no caption, no legible words, no
    sentence that refers to it. It is left out rather than described with a template."""


# The kind of figure, from the words of its caption, title, text and the sentences that mention it (folded:
# lowercase, no accents). The first match wins, so specific kinds come before general ones.
FIGURE_KINDS = (
    ("Gráfico de barras", r"graficos? de barras|diagramas? de barras|bar (?:chart|graph|plot)s?|histogram\w*"),
    ("Gráfico de líneas", r"graficos? de lineas|line (?:chart|graph|plot)s?"),
    ("Gráfico circular", r"graficos? (?:circular|de tarta|de sectores)|pie charts?"),
    ("Mapa", r"mapas?|maps?"),
    ("Diagrama", r"diagramas?|esquemas?|organigramas?|diagrams?|flow ?charts?|schematics?"),
    ("Tabla", r"tablas?|tables?"),
    ("Fotografía", r"fotos?|fotografias?|photos?|photographs?"),
    ("Captura de pantalla", r"capturas? de pantalla|screenshots?"),
    ("Gráfico", r"graficos?|charts?|graphs?|plots?"),
    ("Ilustración", r"ilustracion\w*|dibujos?|illustrations?|drawings?"),
)
FIGURE_WORDS = re.compile(
    r"\b(?:figuras?|fig\.|graficos?|imagen(?:es)?|ilustracion\w*|mapas?|diagramas?|esquemas?|figures?|charts?"
    r"|graphs?|images?|diagrams?|maps?|illustrations?)\b"
)
CAPTION_LABEL = re.compile(
    r"^\s*(?:figura|fig\.?|figure|grafico|gráfico|imagen|image|ilustraci[oó]n|illustration|mapa|map|chart|"
    r"diagrama|diagram|esquema|cuadro|tabla|table)\s*[\dIVXivx]+[a-z]?\s*[:.\-–—]?\s*",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"^[-+−]?\d+(?:[.,]\d+)?\s*%?$")
_SENTENCE = re.compile(r"[^.!?…]+[.!?…]+[\"'»”)\]]*|[^.!?…]+$")
MAX_QUOTED_CHARS = 300
MIN_TITLE_RATIO = 1.3  # a title line is this much taller than the figure's other lines


def _words(text: str) -> list[str]:
    """Words of three letters or more: what makes a text legible rather than a page number or a stray mark."""
    return re.findall(r"[^\W\d_]{3,}", text)


def _clip(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """`text` in one line, cut at the last whole word within `limit` (never inside a word)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[: limit + 1].rsplit(" ", 1)[0].rstrip(",;:") + " …"


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else 0.0


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text[-1:] in ".!?…" else f"{text}."


def figure_kind(*texts: str) -> str | None:
    folded = fold(" ".join(texts))
    for kind, pattern in FIGURE_KINDS:
        if re.search(rf"\b(?:{pattern})\b", folded):
            return kind
    return None


def caption_subject(caption: str) -> str:
    """The caption without its label: "Figura 3: Ventas por trimestre" -> "Ventas por trimestre"."""
    return CAPTION_LABEL.sub("", " ".join(caption.split())).strip()


def mentions(context: FigureContext) -> list[str]:
    """Sentences of the paragraphs around the figure that refer to a figure (figura, gráfico, figure, chart…)."""
    found = []
    for paragraph in (context.before, context.after):
        for sentence in _SENTENCE.findall(" ".join(paragraph.split())):
            if FIGURE_WORDS.search(fold(sentence)) and len(sentence) <= MAX_QUOTED_CHARS:
                found.append(sentence.strip())
    return found


@dataclass(frozen=True)
class _Reading:
    """The OCR lines of a figure sorted into a title, axis labels, numbers and the rest."""

    title: str
    axis: list[str]
    numbers: list[float]
    labels: list[str]

    @classmethod
    def of(cls, lines: list[OcrLine]) -> _Reading:
        numbers, axis, others = [], [], []
        for line in lines:
            if _NUMBER.match(line.text):
                numbers.append(float(line.text.rstrip("% ").replace(",", ".").replace("−", "-")))
            elif line.height > 2 * line.width and len(_words(line.text)) >= 2:
                axis.append(line.text)  # set vertically: an axis title
            else:
                others.append(line)
        title = ""
        if len(others) >= 2:
            top = min(others, key=lambda line: line.top)
            typical = _median([line.height for line in others if line is not top])
            if len(_words(top.text)) >= 2 and top.height >= MIN_TITLE_RATIO * typical:
                title = top.text
                others.remove(top)
        # Reading order: rows a typical line high, from top to bottom, left to right within a row.
        row = max(_median([line.height for line in others]), 1.0)
        others.sort(key=lambda line: (round(line.top / row), line.left))
        return cls(title, axis, numbers, [line.text for line in others])


def figure_description(lines: list[OcrLine], context: FigureContext | None = None) -> str | None:
    """A Spanish description of a figure from what can be read without a vision model: its kind and subject
    (caption, or a title set in larger type), what a chart plots (axis title, value range, labels), its legible
    text and the sentences around it that refer to it. None when there is nothing usable to say."""
    context = context or FigureContext()
    reading = _Reading.of(lines)
    text = " ".join(context.inner_text.split()) or " ".join(reading.labels)
    caption = caption_subject(context.caption)
    subject = caption or reading.title
    referring = mentions(context)
    chart = len(reading.numbers) >= 4  # a value axis: tick labels
    legible = bool(_words(text))  # a word, not just numbers and marks ("14", "20 C)")
    if not (subject or legible or referring):
        return None
    kind = figure_kind(context.caption, reading.title, text, *reading.axis, *referring)
    kind = kind or ("Gráfico" if chart else "Figura")
    if subject:
        parts = [f"{kind}: {subject}"]
    elif legible and not chart:
        parts = [f"{kind} con el texto «{_clip(text)}»"]
    else:
        parts = [kind]
    if caption and reading.title:
        parts.append(f"Título: «{reading.title}»")
    if chart:
        if reading.axis:
            parts.append(f"Eje: «{_clip(' / '.join(reading.axis))}»")
        parts.append(f"Valores de {min(reading.numbers):g} a {max(reading.numbers):g}")
        if text:  # category labels are often codes or years ("1T 2023"): shown even without a word
            parts.append(f"Rótulos: {_clip(', '.join(reading.labels) if not context.inner_text else text)}")
    elif subject and legible:
        parts.append(f"Texto de la figura: «{_clip(text)}»")
    if referring:
        parts.append(f"El documento dice: «{_clip(referring[0])}»")
    elif not subject and context.before.strip():
        first = _SENTENCE.findall(" ".join(context.before.split()))[0].strip()
        parts.append(f"Acompaña al pasaje «{_clip(first, 200)}»")
    return " ".join(_sentence(part) for part in parts)


NO_TEXT = "No se lee texto en la imagen: sin un modelo de visión no hay más que decir de ella."


class OcrDescriber:
    """Offline description without a vision model (about 1–2 s per picture on one core): RapidOCR reads the
    figure's text, and `figure_description` turns it and the document's own words about the figure (caption,
    surrounding paragraphs) into a sentence. The prompt is ignored: nothing here can answer a question."""

    name = "rapidocr"

    def __init__(self, min_score: float = 0.5):
        from rapidocr import RapidOCR

        self.min_score = min_score
        # "error": an empty detection (a picture without text) is a normal outcome here, not a warning.
        self._engine = RapidOCR(params={"Global.log_level": "error"})

    def read_lines(self, picture: Image.Image) -> list[OcrLine]:
        """The text lines RapidOCR reads with at least `min_score` confidence, with their boxes in pixels.
        Safe to call from several threads at once: the ONNX Runtime sessions are, and RapidOCR keeps no
        per-call state that differs between calls."""
        result = self._engine(picture)  # a PIL image, which RapidOCR takes as RGB (a numpy array as BGR)
        if result.boxes is None:
            return []
        lines = []
        for box, text, score in zip(result.boxes, result.txts, result.scores, strict=True):
            if score >= self.min_score and text.strip():
                (left, top), (right, bottom) = box.min(axis=0), box.max(axis=0)
                lines.append(OcrLine(text.strip(), float(left), float(top), float(right), float(bottom)))
        return lines

    def describe(self, image: Path, prompt: str, context: FigureContext | None = None) -> str:
        description = figure_description(self.read_lines(_open_rgb(image)), context)
        if description is None:
            raise NoUsableDescription(f"{image}: no caption, no legible text and no sentence that refers to it")
        return description

    def describe_picture(self, picture: Image.Image, prompt: str) -> str:
        """A picture on its own (the vision server): `picture` must be RGB (see `rgb_on_white`)."""
        return figure_description(self.read_lines(picture)) or NO_TEXT


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

    def describe(self, image: Path, prompt: str, context: FigureContext | None = None) -> str:
        """The model's answer to `prompt` about the picture; `context` is not sent (the model sees the picture)."""
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
        self,
        model_dir: str | Path,
        device: str = "auto",
        max_new_tokens: int = 256,
        load_in_8bit: bool = False,
        dtype: str = "auto",
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
        dtype = resolve_dtype(dtype, device)
        if load_in_8bit:
            loading = {"quantization_config": _eight_bit_config(device), "device_map": {"": device}}
        else:
            loading = {}
        self._processor = AutoProcessor.from_pretrained(model_dir)
        model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype, **loading)
        self._model = (model if load_in_8bit else model.to(device)).eval()

    def describe(self, image: Path, prompt: str, context: FigureContext | None = None) -> str:
        """The model's answer to `prompt` about the picture; `context` is not used (the model sees the picture)."""
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
    images: list[Path],
    describer: ImageDescriber,
    prompt: str = DEFAULT_PROMPT,
    min_side_px: int = 32,
    contexts: dict[str, FigureContext] | None = None,
) -> DescriptionRun:
    """Describe each picture, with its `FigureContext` (by image file name) where the document gives one.
    Pictures with a side under `min_side_px` (icons, rules, bullets) are skipped, pictures with nothing usable to
    say are recorded in `undescribed`, and a picture that cannot be described is recorded in `failed` while the
    others go on."""
    run = DescriptionRun()
    contexts = contexts or {}
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
            text = describer.describe(image, prompt, contexts.get(image.name))
        except NoUsableDescription:
            run.undescribed.append(str(image))
            continue
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
