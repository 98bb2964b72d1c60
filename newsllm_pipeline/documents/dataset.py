"""Described Markdown to an alpaca-style instruction dataset for LoRA fine-tuning (LLaMA-Factory layout).

The `sections` strategy is deterministic: every section under a heading becomes one example whose
instruction asks about the heading and whose output is the section's own text, and every figure
description (a paragraph that starts with FIGURE_MARKER, plain or in a blockquote) becomes a question
about that figure. Duplicates are dropped, and the train/eval split hashes each instruction, so an
example keeps its side of the split when more documents are added.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..files import content_version, staged_folder
from .markdown import ESCAPED_CHARACTER, HTML_COMMENT, IMAGE_LINK, WORD

FIGURE_MARKER = "Descripción de la figura:"
TRAIN_JSONL = "train.jsonl"
EVAL_JSONL = "eval.jsonl"
TRAIN_PARQUET = "train.parquet"
EVAL_PARQUET = "eval.parquet"
DATASET_INFO = "dataset_info.json"

SECTION_TEMPLATES = (
    "Explica «{heading}» según el documento «{document}».",
    "¿Qué dice el documento «{document}» sobre «{heading}»?",
    "Resume la sección «{heading}» del documento «{document}».",
    "Según el documento «{document}», ¿qué se expone en «{heading}»?",
)
PREAMBLE_INSTRUCTION = "Resume el comienzo del documento «{document}»."
FIGURE_INSTRUCTION = "¿Qué muestra la figura{number} de la sección «{heading}» del documento «{document}»?"
PREAMBLE_FIGURE_INSTRUCTION = "¿Qué muestra la figura{number} del comienzo del documento «{document}»?"
HEADING_SEPARATOR = " › "

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)(?:\s+#+)?\s*$")
_BLOCKQUOTE = re.compile(r"^\s*>\s?")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_TABLE_ROW = re.compile(r"^\s*\|")
_SENTENCE_END = re.compile(r"(?m)(?<!^\d)(?<!^\d\d)[.!?…][\"'»”)\]]*(?=\s|$)")  # not a "1." list marker

_SCHEMA = pa.schema(
    [
        ("instruction", pa.string()),
        ("input", pa.string()),
        ("output", pa.string()),
        ("document", pa.string()),
        ("section", pa.string()),
        ("uses_image_description", pa.bool_()),
    ]
)


@dataclass(frozen=True)
class Section:
    document: str
    heading_path: tuple[str, ...]  # headings from the top level down; empty for text before the first heading
    text: str  # blocks (paragraphs, lists, tables) separated by blank lines

    @property
    def heading(self) -> str:
        return HEADING_SEPARATOR.join(self.heading_path)

    @property
    def paragraphs(self) -> list[str]:
        return self.text.split("\n\n")


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str
    document: str
    section: str
    uses_image_description: bool


@dataclass(frozen=True)
class DatasetStats:
    examples: int
    train: int
    eval: int
    documents: int
    duplicates_removed: int
    output_chars_p10: int
    output_chars_p50: int
    output_chars_p90: int
    image_description_share: float


@dataclass(frozen=True)
class Dataset:
    train: tuple[Example, ...]
    eval: tuple[Example, ...]
    stats: DatasetStats


@dataclass(frozen=True)
class DatasetFiles:
    folder: Path
    name: str = "newsllm_documents"

    @property
    def train_jsonl(self) -> Path:
        return self.folder / TRAIN_JSONL

    @property
    def eval_jsonl(self) -> Path:
        return self.folder / EVAL_JSONL

    @property
    def train_parquet(self) -> Path:
        return self.folder / TRAIN_PARQUET

    @property
    def eval_parquet(self) -> Path:
        return self.folder / EVAL_PARQUET

    @property
    def dataset_info(self) -> Path:
        return self.folder / DATASET_INFO

    def version(self) -> str:
        """A short hash of the train and eval splits: what an adapter was trained and judged on."""
        return content_version(self.train_jsonl, self.eval_jsonl)


def _clean(line: str) -> str:
    return html.unescape(ESCAPED_CHARACTER.sub(r"\1", re.sub(r"\s+", " ", line).strip()))


def split_sections(document: str, markdown: str) -> list[Section]:
    """Sections of a (described) Docling Markdown in reading order. Paragraph lines are joined with spaces,
    list items and table rows keep one line each; image links and HTML comments (Docling's `<!-- image -->`)
    are dropped, and a blockquote counts as the paragraphs inside it. Sections without text are skipped."""
    sections: list[Section] = []
    path: list[tuple[int, str]] = []  # (level, heading) of the open headings
    blocks: list[str] = []
    lines: list[str] = []
    kind = ""  # of the block being read: "paragraph", "list" or "table"

    def end_block() -> None:
        nonlocal lines
        if lines:
            blocks.append((" " if kind == "paragraph" else "\n").join(lines))
        lines = []

    def end_section() -> None:
        nonlocal blocks
        end_block()
        if blocks:
            sections.append(Section(document, tuple(heading for _, heading in path), "\n\n".join(blocks)))
        blocks = []

    for raw in HTML_COMMENT.sub("", markdown).splitlines():
        heading = _HEADING.match(raw)
        if heading:
            end_section()
            level = len(heading.group(1))
            path = [(open_level, text) for open_level, text in path if open_level < level]
            path.append((level, _clean(heading.group(2))))
            continue
        # An image on a line of its own separates blocks, as the blank line it becomes does.
        line = IMAGE_LINK.sub("", _BLOCKQUOTE.sub("", raw))
        if not line.strip():
            end_block()
        elif _LIST_ITEM.match(line) or _TABLE_ROW.match(line):
            new_kind = "list" if _LIST_ITEM.match(line) else "table"
            if kind != new_kind:
                end_block()
                kind = new_kind
            lines.append(_clean(line))
        elif kind == "list" and lines:
            lines[-1] = f"{lines[-1]} {_clean(line)}"  # a continuation line of the last item
        else:
            if kind != "paragraph":
                end_block()
                kind = "paragraph"
            lines.append(_clean(line))
    end_section()
    return sections


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same in every process and Python version (unlike `hash`), for splits."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _shorten(text: str, max_chars: int, min_chars: int) -> str:
    """Cut at the last sentence end within max_chars; at a word when no sentence of min_chars fits."""
    if len(text) <= max_chars:
        return text
    cut = 0
    for end in _SENTENCE_END.finditer(text):
        if end.end() > max_chars:
            break
        cut = end.end()
    if cut >= min_chars:
        return text[:cut]
    words = text[: max_chars - 1].rsplit(None, 1)[0]
    return words.rstrip() + "…"


def _is_figure(paragraph: str) -> bool:
    return paragraph.startswith(FIGURE_MARKER)


def examples_from_sections(
    sections: Iterable[Section], min_output_chars: int = 40, max_output_chars: int = 2000
) -> list[Example]:
    """One example per section with at least min_output_chars of text, plus one per figure description.
    Outputs longer than max_output_chars are cut at a sentence boundary."""
    examples = []
    seen = Counter()
    for section in sections:
        heading = section.heading
        seen[section.document, heading] += 1
        if heading and seen[section.document, heading] > 1:  # a repeated heading would collide in dedup
            heading = f"{heading} (parte {seen[section.document, heading]})"
        output = _shorten(section.text, max_output_chars, min_output_chars)
        if len(output) >= min_output_chars:
            if heading:
                templates = SECTION_TEMPLATES
                template = templates[stable_hash(f"{section.document}\n{heading}") % len(templates)]
            else:
                template = PREAMBLE_INSTRUCTION
            examples.append(
                Example(
                    instruction=template.format(heading=heading, document=section.document),
                    input="",
                    output=output,
                    document=section.document,
                    section=heading,
                    uses_image_description=any(_is_figure(paragraph) for paragraph in output.split("\n\n")),
                )
            )
        figures = [paragraph for paragraph in section.paragraphs if _is_figure(paragraph)]
        template = FIGURE_INSTRUCTION if heading else PREAMBLE_FIGURE_INSTRUCTION
        for number, figure in enumerate(figures, start=1):
            description = _shorten(figure.removeprefix(FIGURE_MARKER).strip(), max_output_chars, min_output_chars)
            if len(description) < min_output_chars:
                continue
            examples.append(
                Example(
                    instruction=template.format(
                        number=f" {number}" if len(figures) > 1 else "", heading=heading, document=section.document
                    ),
                    input="",
                    output=description,
                    document=section.document,
                    section=heading,
                    uses_image_description=True,
                )
            )
    return examples


def normalise_instruction(instruction: str) -> str:
    return " ".join(WORD.findall(unicodedata.normalize("NFKC", instruction).casefold()))


def _percentile(sorted_values: list[int], share: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]  # nearest rank


def build_dataset(examples: Iterable[Example], eval_share: float = 0.1, seed: int = 13) -> Dataset:
    """Drop examples whose normalised instruction or whose output was already seen (the first one stays), then
    split by a hash of seed and instruction: each example's side depends on nothing else, so adding documents
    never moves existing examples between train and eval. Small datasets may get an empty eval split."""
    if not 0 <= eval_share < 1:
        raise ValueError(f"eval_share must be in [0, 1), got {eval_share}")
    kept: list[Example] = []
    instructions: set[str] = set()
    outputs: set[str] = set()
    duplicates = 0
    for example in examples:
        instruction, output = normalise_instruction(example.instruction), example.output.strip()
        if instruction in instructions or output in outputs:
            duplicates += 1
            continue
        instructions.add(instruction)
        outputs.add(output)
        kept.append(example)
    train, evaluation = [], []
    for example in kept:
        bucket = stable_hash(f"{seed}\n{normalise_instruction(example.instruction)}") / 2**64
        (evaluation if bucket < eval_share else train).append(example)
    lengths = sorted(len(example.output) for example in kept)
    stats = DatasetStats(
        examples=len(kept),
        train=len(train),
        eval=len(evaluation),
        documents=len({example.document for example in kept}),
        duplicates_removed=duplicates,
        output_chars_p10=_percentile(lengths, 0.1),
        output_chars_p50=_percentile(lengths, 0.5),
        output_chars_p90=_percentile(lengths, 0.9),
        image_description_share=sum(example.uses_image_description for example in kept) / len(kept) if kept else 0.0,
    )
    return Dataset(train=tuple(train), eval=tuple(evaluation), stats=stats)


def _rows(examples: Iterable[Example]) -> list[dict]:
    return [
        {
            "instruction": example.instruction,
            "input": example.input,
            "output": example.output,
            "document": example.document,
            "section": example.section,
            "uses_image_description": example.uses_image_description,
        }
        for example in examples
    ]


def _dataset_info(name: str) -> dict:
    columns = {"prompt": "instruction", "query": "input", "response": "output"}
    return {
        name: {"file_name": TRAIN_JSONL, "columns": columns},
        f"{name}_eval": {"file_name": EVAL_JSONL, "columns": columns},
    }


def write_dataset(dataset: Dataset, out_dir: Path, name: str = "newsllm_documents") -> DatasetFiles:
    """Write train/eval as JSONL and Parquet plus LLaMA-Factory's `dataset_info.json` into out_dir. The files
    are written into a folder beside out_dir that then replaces it, so a failure leaves the previous dataset."""
    if not dataset.train:
        raise ValueError(f"{out_dir}: no training examples to write; the documents gave no section with enough text")
    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        for split, jsonl, parquet in (
            (dataset.train, TRAIN_JSONL, TRAIN_PARQUET),
            (dataset.eval, EVAL_JSONL, EVAL_PARQUET),
        ):
            rows = _rows(split)
            with open(staging / jsonl, "w", encoding="utf-8") as file:
                file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), staging / parquet)
        (staging / DATASET_INFO).write_text(
            json.dumps(_dataset_info(name), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    return DatasetFiles(folder=out_dir, name=name)
