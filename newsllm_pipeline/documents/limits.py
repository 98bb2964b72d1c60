"""How much of a document the chain will read, checked before Docling opens it, and how long a conversion may run.

A DOCX is a zip: 200 KB on disk can declare a `document.xml` of tens of megabytes that Docling then parses for
minutes (about 0.4 ms a paragraph, 8 s for 20,000 paragraphs here). The zip's own directory says how large every
member is uncompressed, so a bomb is refused from that directory alone, without inflating anything.

Docling bounds conversion time only in its PDF pipelines (`document_timeout`, checked between pages, which ends
with a partial result); its simple pipeline (DOCX, HTML, Markdown) ignores it. So a PDF past the limit is stopped
by Docling and refused here, and a DOCX/HTML/Markdown conversion is refused afterwards when it ran past the limit:
its time is bounded in practice by the size limits above.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from .. import settings

MB = 1024 * 1024


class DocumentLimitExceeded(Exception):
    """A document over one of the limits: the message names the limit and the setting that changes it."""


def _declared(name: str) -> float:
    return float(settings.SETTINGS[name].default_value())


@dataclass(frozen=True)
class DocumentLimits:
    max_file_mb: float = _declared("DOC_MAX_MB")  # any document, as it is on disk
    max_docx_uncompressed_mb: float = _declared("DOCX_MAX_UNCOMPRESSED_MB")  # the DOCX's members, uncompressed
    max_docx_ratio: float = _declared("DOCX_MAX_RATIO")  # uncompressed / on disk (Word's own files: about 3 to 20)
    max_seconds: float = _declared("DOC_TIMEOUT_S")  # one conversion

    @classmethod
    def from_settings(cls) -> DocumentLimits:
        """NEWSLLM_DOC_MAX_MB, NEWSLLM_DOCX_MAX_UNCOMPRESSED_MB, NEWSLLM_DOCX_MAX_RATIO, NEWSLLM_DOC_TIMEOUT_S."""
        return cls(
            max_file_mb=float(settings.setting("DOC_MAX_MB")),
            max_docx_uncompressed_mb=float(settings.setting("DOCX_MAX_UNCOMPRESSED_MB")),
            max_docx_ratio=float(settings.setting("DOCX_MAX_RATIO")),
            max_seconds=float(settings.setting("DOC_TIMEOUT_S")),
        )


def check_document_input(source: Path, limits: DocumentLimits) -> None:
    """Raise DocumentLimitExceeded when `source` is over a size limit (judged without converting it)."""
    size = source.stat().st_size
    if size > limits.max_file_mb * MB:
        raise DocumentLimitExceeded(
            f"the file is {size / MB:.1f} MB, over the {limits.max_file_mb:g} MB limit (NEWSLLM_DOC_MAX_MB)"
        )
    if source.suffix.lower() == ".docx" and zipfile.is_zipfile(source):
        _check_docx(source, size, limits)


def _check_docx(source: Path, size: int, limits: DocumentLimits) -> None:
    with zipfile.ZipFile(source) as archive:
        uncompressed = sum(member.file_size for member in archive.infolist())
    if uncompressed > limits.max_docx_uncompressed_mb * MB:
        raise DocumentLimitExceeded(
            f"the DOCX expands to {uncompressed / MB:.1f} MB, over the {limits.max_docx_uncompressed_mb:g} MB "
            "limit (NEWSLLM_DOCX_MAX_UNCOMPRESSED_MB): split the document"
        )
    ratio = uncompressed / max(size, 1)
    if ratio > limits.max_docx_ratio:
        raise DocumentLimitExceeded(
            f"the DOCX expands {ratio:.0f} times ({size / 1024:.0f} KB to {uncompressed / MB:.1f} MB), over the "
            f"limit of {limits.max_docx_ratio:g} (NEWSLLM_DOCX_MAX_RATIO): a zip bomb, or a file to re-save in Word"
        )


def check_conversion_time(seconds: float, docling_errors: list[str], limits: DocumentLimits) -> None:
    """Raise DocumentLimitExceeded when the conversion ran past `max_seconds` (Docling stopped a PDF, or a
    DOCX/HTML/Markdown conversion finished late): nothing of it is written."""
    stopped = any("timeout" in message.lower() for message in docling_errors)
    if stopped or seconds > limits.max_seconds:
        raise DocumentLimitExceeded(
            f"the conversion {'was stopped' if stopped else 'ran'} after {seconds:.0f} s, over the "
            f"{limits.max_seconds:g} s limit (NEWSLLM_DOC_TIMEOUT_S): split the document or raise the limit"
        )
