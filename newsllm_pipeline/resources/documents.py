"""Resources of the document chain: where documents live, the Docling converter, the image describer."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field, PrivateAttr

from ..documents.chain import inbox_files


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

    _converter = PrivateAttr(default=None)

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
                self._converter = standard_converter(artifacts, images_scale=self.images_scale)
        return self._converter


class ImageDescriberResource(dg.ConfigurableResource):
    """Describes extracted pictures. `ocr` (offline default): RapidOCR text, size and colours in a Spanish
    sentence. `openai`: any OpenAI-compatible vision endpoint (vLLM, the project's vision server).
    `transformers`: a local vision-language model folder (e.g. Qwen2-VL), on GPU."""

    backend: str = Field(default="ocr", description="'ocr', 'openai' or 'transformers'")
    prompt: str | None = Field(default=None, description="Question asked about each picture (Spanish default)")
    min_side_px: int = Field(default=32, description="Pictures with a side shorter than this are skipped")
    url: str | None = Field(default=None, description="openai: base URL, e.g. http://gpu-host:8000/v1")
    model: str | None = Field(default=None, description="openai: model name; transformers: model folder")
    api_key: str | None = Field(default=None, description="openai: bearer token (use EnvVar)")
    timeout_s: float = Field(default=60.0)
    retries: int = Field(default=2)
    device: str = Field(default="auto", description="transformers: 'auto', 'cuda', 'cpu'")

    _describer = PrivateAttr(default=None)

    def describer(self):
        if self._describer is None:
            from ..documents import descriptions

            if self.backend == "ocr":
                self._describer = descriptions.OcrDescriber()
            elif self.backend == "openai":
                if not self.url or not self.model:
                    raise dg.Failure("the openai describer needs url and model")
                self._describer = descriptions.OpenAIDescriber(
                    self.url, self.model, api_key=self.api_key, timeout_s=self.timeout_s, retries=self.retries
                )
            elif self.backend == "transformers":
                if not self.model:
                    raise dg.Failure("the transformers describer needs model (a vision-language model folder)")
                self._describer = descriptions.TransformersDescriber(self.model, device=self.device)
            else:
                raise dg.Failure(f"unknown describer backend {self.backend!r}: use 'ocr', 'openai' or 'transformers'")
        return self._describer

    def question(self) -> str:
        from ..documents.descriptions import DEFAULT_PROMPT

        return self.prompt or DEFAULT_PROMPT


class TextGeneratorResource(dg.ConfigurableResource):
    """The LLM that writes question-answer pairs for the `llm` dataset strategy (any HF causal-LM folder)."""

    model_dir: str = Field(description="A Hugging Face model folder (or a hub id where there is internet)")
    device: str = Field(default="auto")
    max_new_tokens: int = Field(default=160)

    _generate = PrivateAttr(default=None)

    def generator(self):
        if self._generate is None:
            from ..documents.synthesis import transformers_generator
            from ..models import resolve_model_dir

            self._generate = transformers_generator(
                resolve_model_dir(self.model_dir), device=self.device, max_new_tokens=self.max_new_tokens
            )
        return self._generate
