"""Resources of the document chain: where documents live, the Docling converter, the image describer, the text
generator. Those that load a model are placed on the `describe_device` by the step that uses them (`on`)."""

import os
from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import dagster as dg
from pydantic import Field, PrivateAttr

from ..documents.chain import inbox_files
from ..settings import site_setting
from .devices import ComputeDevice, fresh_copy

if TYPE_CHECKING:
    from ..documents.descriptions import ImageDescriber


class DocumentStore(dg.ConfigurableResource):
    """The inbox people drop files into, and the folders the chain writes."""

    inbox_dir: str = Field(description="Folder watched for new or changed documents")
    work_dir: str = Field(description="One folder per document: texto.md, imagenes_extraidas/, …")
    dataset_dir: str = Field(description="Where the instruction dataset is written")

    def inbox(self) -> dict[str, Path]:
        return inbox_files(Path(self.inbox_dir))

    def source(self, key: str) -> Path:
        files = self.inbox()
        if key not in files:
            raise dg.Failure(f"document {key!r} is no longer in {self.inbox_dir}: put it back or delete the partition")
        return files[key]

    def folder(self, key: str) -> Path:
        return Path(self.work_dir) / key


class DoclingConverterResource(dg.ConfigurableResource):
    """`offline`: Docling's standard PDF pipeline with this package's font-heuristics layout engine, no
    model artifacts (the default). `standard`: Docling's model-based pipeline (layout model, TableFormer;
    the `docling-models` extra and artifacts from `artifacts_path` / DOCLING_ARTIFACTS_PATH). `auto`:
    standard where its artifacts are present, else offline."""

    mode: str = Field(default="auto", description="'offline', 'standard' or 'auto'")
    artifacts_path: str | None = Field(default=None, description="Docling model artifacts (standard mode)")
    images_scale: float = Field(default=2.0, description="Resolution of picture crops (1.0 = 72 dpi)")
    ocr: bool = Field(
        default=False,
        description="offline: read pages without a text layer with RapidOCR (its models ship in its wheel); "
        "costs 1–2 s per page with pictures, so enable it for scanned documents",
    )
    device: str = Field(default="auto", description="standard: where Docling's models run ('auto', 'cpu', 'cuda:1'…)")

    _converter = PrivateAttr(default=None)

    def on(self, device: ComputeDevice) -> "DoclingConverterResource":
        return fresh_copy(self, device=device.device)

    def release(self) -> None:
        self._converter = None

    def resolved_mode(self) -> tuple[str, str]:
        """The mode that will run, and why."""
        artifacts = self.artifacts_path or os.environ.get("DOCLING_ARTIFACTS_PATH")
        if self.mode == "offline":
            return "offline", "configured"
        has_artifacts = bool(artifacts) and Path(artifacts).is_dir() and any(Path(artifacts).iterdir())
        if self.mode == "standard":
            if not has_artifacts:
                raise dg.Failure(
                    "standard mode needs Docling's model artifacts: set artifacts_path or DOCLING_ARTIFACTS_PATH "
                    "(`docling-tools models download`), or use mode 'offline'"
                )
            return "standard", f"configured, artifacts in {artifacts}"
        if has_artifacts:
            return "standard", f"auto: artifacts found in {artifacts}"
        return "offline", "auto: no Docling model artifacts (artifacts_path / DOCLING_ARTIFACTS_PATH)"

    def converter(self):
        if self._converter is None:
            mode, _ = self.resolved_mode()
            if mode == "offline":
                from ..documents.conversion import offline_converter

                self._converter = offline_converter(images_scale=self.images_scale, ocr=self.ocr)
            else:
                from ..documents.conversion import standard_converter

                artifacts = self.artifacts_path or os.environ["DOCLING_ARTIFACTS_PATH"]
                self._converter = standard_converter(artifacts, images_scale=self.images_scale, device=self.device)
        return self._converter


class ImageDescriberResource(dg.ConfigurableResource):
    """Describes extracted pictures. One subclass per backend, each with its own fields:
    `OcrDescriberResource` (offline default), `OpenAIDescriberResource`, `TransformersDescriberResource`;
    `image_describer_from_settings` picks one from the site's settings."""

    backend: ClassVar[str]  # the name NEWSLLM_DESCRIBER and the command line use

    prompt: str | None = Field(default=None, description="Question asked about each picture (Spanish default)")
    min_side_px: int = Field(default=32, description="Pictures with a side shorter than this are skipped")

    runs_here: ClassVar[bool] = True  # False: the model is another process's

    _describer = PrivateAttr(default=None)

    def on(self, device: ComputeDevice) -> "ImageDescriberResource":
        """The same describer placed on `device` (only a local model has a place)."""
        return self

    def release(self) -> None:
        self._describer = None

    def describer(self) -> "ImageDescriber":
        """The backend's describer, loaded on first use and kept."""
        if self._describer is None:
            self._describer = self.load_describer()
        return self._describer

    @abstractmethod
    def load_describer(self) -> "ImageDescriber": ...

    def question(self) -> str:
        from ..documents.descriptions import DEFAULT_PROMPT

        return self.prompt or DEFAULT_PROMPT


class OcrDescriberResource(ImageDescriberResource):
    """RapidOCR reads the figure's text; with the document's own words about it, a Spanish sentence. Offline."""

    backend: ClassVar[str] = "ocr"

    def load_describer(self) -> "ImageDescriber":
        from ..documents.descriptions import OcrDescriber

        return OcrDescriber()


class OpenAIDescriberResource(ImageDescriberResource):
    """Any OpenAI-compatible vision endpoint (vLLM, the project's vision server)."""

    backend: ClassVar[str] = "openai"
    runs_here: ClassVar[bool] = False

    url: str | None = Field(default=None, description="Base URL, e.g. http://gpu-host:8000/v1")
    model: str | None = Field(default=None, description="Model name the endpoint serves")
    api_key: str | None = Field(default=None, description="Bearer token (use EnvVar)")
    timeout_s: float = Field(default=60.0)
    retries: int = Field(default=2, description="Further attempts after a connection error or a 5xx")

    def load_describer(self) -> "ImageDescriber":
        from ..documents.descriptions import OpenAIDescriber

        if not self.url or not self.model:
            raise dg.Failure(
                "the openai describer needs url and model (NEWSLLM_VISION_URL and NEWSLLM_VISION_MODEL, or "
                "--vision-url and --vision-model)"
            )
        return OpenAIDescriber(
            self.url, self.model, api_key=self.api_key, timeout_s=self.timeout_s, retries=self.retries
        )


class TransformersDescriberResource(ImageDescriberResource):
    """A local vision-language model folder (e.g. Qwen2-VL) run with transformers, meant for a GPU."""

    backend: ClassVar[str] = "transformers"

    model: str | None = Field(default=None, description="A local vision-language model folder")
    device: str = Field(default="auto", description="'auto', 'cuda', 'cuda:1', 'cpu' (a step: its describe_device)")
    dtype: str = Field(default="auto", description="'auto', 'bf16', 'fp16', 'fp32' (a step: its describe_device's)")
    max_new_tokens: int = Field(default=256, description="Longest description, in tokens")
    load_in_8bit: bool = Field(default=False, description="8-bit weights (bitsandbytes, CUDA only)")

    def on(self, device: ComputeDevice) -> "TransformersDescriberResource":
        return fresh_copy(self, device=device.device, dtype=device.precision)

    def load_describer(self) -> "ImageDescriber":
        from ..documents.descriptions import TransformersDescriber

        if not self.model:
            raise dg.Failure("the transformers describer needs model: a vision-language model folder")
        return TransformersDescriber(
            self.model,
            device=self.device,
            dtype=self.dtype,
            max_new_tokens=self.max_new_tokens,
            load_in_8bit=self.load_in_8bit,
        )


DESCRIBER_RESOURCES: dict[str, type[ImageDescriberResource]] = {
    resource.backend: resource
    for resource in (OcrDescriberResource, OpenAIDescriberResource, TransformersDescriberResource)
}


def describer_resource(backend: str, **fields) -> ImageDescriberResource:
    """The resource of `backend` ('ocr', 'openai' or 'transformers') with those `fields` it has: fields set to
    None and other backends' fields are left out, so a caller (a command line) may offer every backend's."""
    resource = DESCRIBER_RESOURCES.get(backend)
    if resource is None:
        raise ValueError(f"unknown image describer {backend!r}: choose one of {', '.join(DESCRIBER_RESOURCES)}")
    unknown = set(fields).difference(*(other.model_fields for other in DESCRIBER_RESOURCES.values()))
    if unknown:
        raise TypeError(f"no image describer has the fields {sorted(unknown)}")
    return resource(
        **{name: value for name, value in fields.items() if value is not None and name in resource.model_fields}
    )


def image_describer_from_settings() -> ImageDescriberResource:
    """The site's describer. NEWSLLM_DESCRIBER (ocr, openai or transformers; default ocr) picks the class, so it is
    read when the code location loads; NEWSLLM_VISION_URL, NEWSLLM_VISION_MODEL and NEWSLLM_VISION_API_KEY fill
    the fields that backend has, read at run time and shown in the UI."""
    backend = site_setting("DESCRIBER", "ocr")
    name = backend.get_value() if isinstance(backend, dg.EnvVar) else backend
    try:
        return describer_resource(
            name,
            url=site_setting("VISION_URL", "") or None,
            model=site_setting("VISION_MODEL", "") or None,
            api_key=site_setting("VISION_API_KEY", "") or None,
        )
    except ValueError as error:
        raise ValueError(f"NEWSLLM_DESCRIBER: {error}") from error


class TextGeneratorResource(dg.ConfigurableResource):
    """The LLM that writes question-answer pairs for the `llm` dataset strategy (any HF causal-LM folder)."""

    model_dir: str = Field(description="A Hugging Face model folder (or a hub id where there is internet)")
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda:1'… (a step: its describe_device)")
    dtype: str = Field(default="auto", description="'auto', 'bf16', 'fp16', 'fp32' (a step: its describe_device's)")
    max_new_tokens: int = Field(default=160)

    _generate = PrivateAttr(default=None)

    def on(self, device: ComputeDevice) -> "TextGeneratorResource":
        return fresh_copy(self, device=device.device, dtype=device.precision)

    def release(self) -> None:
        self._generate = None

    def generator(self):
        if self._generate is None:
            from ..documents.synthesis import transformers_generator
            from ..models import resolve_model_dir

            self._generate = transformers_generator(
                resolve_model_dir(self.model_dir),
                device=self.device,
                dtype=self.dtype,
                max_new_tokens=self.max_new_tokens,
            )
        return self._generate
