"""Described Markdown to an alpaca-style instruction dataset for LoRA fine-tuning (LLaMA-Factory layout).

The `sections` strategy is deterministic and only asks what its answers answer: every section under a heading
is cut into passages of whole paragraphs or sentences (never inside a word), each the answer to a question about
the heading ("parte 2 de 3" when a long section gives several); a section with enough prose also gets an
extractive summary of its key sentences as the answer to "Resume …"; every figure description (a paragraph that
starts with FIGURE_MARKER) becomes a question about that figure. Duplicates are dropped, and the train/eval split
hashes each example's section, so a held-out section is unseen text (none of its passages, summary or figures is
trained on) and keeps its side of the split when more documents are added. `answer_defects` is the check that
no answer is cut inside a word or is a template.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from ..files import content_version
from ..splits import DATASET_INFO, EVAL_JSONL, EVAL_PARQUET, TRAIN_JSONL, TRAIN_PARQUET, stable_hash, write_splits
from ..text import fold
from .markdown import ESCAPED_CHARACTER, HTML_COMMENT, IMAGE_LINK, WORD

FIGURE_MARKER = "Descripción de la figura:"

# Questions a passage of the section answers; {section} is «heading», plus "(parte 2 de 3)" for long sections.
SECTION_TEMPLATES = (
    "Explica {section} según el documento «{document}».",
    "¿Qué dice el documento «{document}» sobre {section}?",
    "Según el documento «{document}», ¿qué se expone en {section}?",
)
PREAMBLE_TEMPLATE = "¿Qué dice el comienzo del documento «{document}»{part}?"
SUMMARY_TEMPLATE = "Resume la sección «{heading}» del documento «{document}»."
PREAMBLE_SUMMARY_TEMPLATE = "Resume el comienzo del documento «{document}»."
FIGURE_INSTRUCTION = "¿Qué muestra la figura{number} de la sección «{heading}» del documento «{document}»?"
PREAMBLE_FIGURE_INSTRUCTION = "¿Qué muestra la figura{number} del comienzo del documento «{document}»?"
HEADING_SEPARATOR = " › "

_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)(?:\s+#+)?\s*$")
_BLOCKQUOTE = re.compile(r"^\s*>\s?")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_TABLE_ROW = re.compile(r"^\s*\|")
_SENTENCE_END = re.compile(r"(?m)(?<!^\d)(?<!^\d\d)[.!?…][\"'»”)\]]*(?=\s|$)")  # not a "1." list marker
# Answers made by a fill-in template rather than from the document: the old picture sentence
# ("Imagen de 221 × 190 píxeles en la que predominan el blanco y el gris…") and its "no text" variant.
TEMPLATE_ANSWER = re.compile(r"\d+ × \d+ píxeles|\bpredominan? (?:el|la|los|las) \w+|no contiene texto legible", re.I)
_CUT_MARK = re.compile(r"\w…$")  # a word cut short and marked as such, at the end of an answer

# Words that carry no topic (folded: lowercase, no accents), for summaries and the llm strategy's grounding.
STOP_WORDS = frozenset(
    """
    a al algo algun alguna algunas alguno algunos ante antes aqui asi aun bajo bien cada como con contra cual
    cuales cuando de del desde donde dos e el ella ellas ello ellos en entre era eran es esa esas ese eso esos
    esta estaba estado estan estar estas este esto estos fue fueron ha han hasta hay la las le les lo los mas
    me mi mis mucho muy nada ni no nos o otra otras otro otros para pero poco por porque que quien quienes se
    segun ser si sin sino sobre solo son su sus tambien tanto te tiene tienen toda todas todo todos tu un una
    unas uno unos y ya yo texto documento
    about an and are as at be been but by can do does for from had has have he her his how i if in into is it
    its not of on or our she so than that the their them then there these they this those to was we were what
    when where which who why will with would you
    """.split()
)

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


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")  # e.g. form check boxes decoded as "\x84"


def _clean(line: str) -> str:
    line = _CONTROL.sub(" ", line)
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


def sentences(paragraph: str) -> list[str]:
    """The paragraph cut after each sentence end (., !, ?, … and closing quotes; not a "1." list marker)."""
    pieces, start = [], 0
    for end in _SENTENCE_END.finditer(paragraph):
        pieces.append(paragraph[start : end.end()].strip())
        start = end.end()
    pieces.append(paragraph[start:].strip())
    return [piece for piece in pieces if piece]


def _units(text: str, max_chars: int) -> list[tuple[str, str]]:
    """(piece, separator before it): paragraphs; the lines of a long list or table; the sentences of a long
    paragraph or line. Joining them back with their separators gives the text again."""
    units = []
    for block in text.split("\n\n"):
        lines = [block] if len(block) <= max_chars else block.split("\n")
        for number, line in enumerate(lines):
            pieces = [line] if len(line) <= max_chars else sentences(line)
            separator = "\n\n" if number == 0 else "\n"
            units += [(piece, separator if index == 0 else " ") for index, piece in enumerate(pieces)]
    return units


def split_passages(text: str, max_chars: int) -> list[str]:
    """The text cut into passages of about equal length, at most max_chars each, only between paragraphs, lines
    of a list or table, or sentences: never inside a sentence or a word. A single sentence longer than max_chars
    stays whole, as its own passage."""
    units = _units(text, max_chars)
    total = sum(len(separator) + len(piece) for piece, separator in units)
    target = total / math.ceil(total / max_chars) if total else 0
    passages: list[str] = []
    current = ""
    for piece, separator in units:
        joined = f"{current}{separator}{piece}" if current else piece
        if current and (len(joined) > max_chars or len(current) >= target):
            passages.append(current)
            joined = piece
        current = joined
    if current:
        passages.append(current)
    return passages


def _content_words(text: str) -> list[str]:
    return [word for word in WORD.findall(fold(text)) if len(word) > 3 and word not in STOP_WORDS]


def _is_summary_sentence(sentence: str) -> bool:
    """A whole sentence that stands alone: capitalised, ended, with a few content words (not "hacia ellos.")."""
    return sentence[0].isupper() and sentence[-1] in ".!?…" and len(_content_words(sentence)) >= 4


def extractive_summary(text: str, max_sentences: int = 3, max_share: float = 0.6) -> str | None:
    """The section's key sentences in their order: those whose content words recur most in the section (the
    first sentence gets a small bonus: it usually states the topic). Only prose counts (no list items, table
    rows or figure descriptions). None when the section has fewer than four sentences or the summary would not
    be much shorter than the text (max_share of its length): then there is nothing to summarise."""
    prose = [
        block
        for block in text.split("\n\n")
        if "\n" not in block and not _LIST_ITEM.match(block) and not _is_figure(block)
    ]
    candidates = [sentence for block in prose for sentence in sentences(block) if _is_summary_sentence(sentence)]
    if len(candidates) < 4:
        return None
    counts = Counter(word for sentence in candidates for word in set(_content_words(sentence)))

    def score(index: int) -> float:
        words = set(_content_words(candidates[index]))
        weight = sum(counts[word] - 1 for word in words) / math.sqrt(len(words) or 1)
        return weight * (1.25 if index == 0 else 1.0)

    keep = min(max_sentences, max(2, len(candidates) // 3))
    chosen = sorted(sorted(range(len(candidates)), key=score, reverse=True)[:keep])
    summary = " ".join(candidates[index] for index in chosen)
    return summary if len(summary) <= max_share * len(text) else None


def _is_figure(paragraph: str) -> bool:
    return paragraph.startswith(FIGURE_MARKER)


def _example(instruction: str, output: str, section: Section, heading: str, figure: bool | None = None) -> Example:
    uses_figure = any(_is_figure(paragraph) for paragraph in output.split("\n\n")) if figure is None else figure
    return Example(instruction, "", output, section.document, heading, uses_figure)


def _section_examples(section: Section, heading: str, min_chars: int, max_chars: int) -> list[Example]:
    """One example per passage of the section, with a question about its heading, and its summary if any."""
    passages = [
        passage for passage in split_passages(section.text, max_chars) if min_chars <= len(passage) <= max_chars
    ]
    examples = []
    for number, passage in enumerate(passages, start=1):
        part = f" (parte {number} de {len(passages)})" if len(passages) > 1 else ""
        if heading:
            template = SECTION_TEMPLATES[stable_hash(f"{section.document}\n{heading}") % len(SECTION_TEMPLATES)]
            instruction = template.format(section=f"«{heading}»{part}", document=section.document)
        else:
            instruction = PREAMBLE_TEMPLATE.format(document=section.document, part=part)
        examples.append(_example(instruction, passage, section, heading))
    summary = extractive_summary(section.text)
    if summary and min_chars <= len(summary) <= max_chars:
        template = SUMMARY_TEMPLATE if heading else PREAMBLE_SUMMARY_TEMPLATE
        examples.append(
            _example(template.format(heading=heading, document=section.document), summary, section, heading)
        )
    return examples


def _figure_examples(section: Section, heading: str, min_chars: int, max_chars: int) -> list[Example]:
    """A question about each figure of the section, answered by its description (whole sentences up to
    max_chars)."""
    figures = [
        paragraph.removeprefix(FIGURE_MARKER).strip() for paragraph in section.paragraphs if _is_figure(paragraph)
    ]
    template = FIGURE_INSTRUCTION if heading else PREAMBLE_FIGURE_INSTRUCTION
    examples = []
    for number, description in enumerate(figures, start=1):
        description = split_passages(description, max_chars)[0] if description else ""
        if min_chars <= len(description) <= max_chars:
            instruction = template.format(
                number=f" {number}" if len(figures) > 1 else "", heading=heading, document=section.document
            )
            examples.append(_example(instruction, description, section, heading, figure=True))
    return examples


def examples_from_sections(
    sections: Iterable[Section], min_output_chars: int = 40, max_output_chars: int = 1200
) -> list[Example]:
    """Per section: its passages (at most max_output_chars, at least min_output_chars), its summary when it has
    one, and one example per figure description."""
    examples = []
    seen = Counter()
    for section in sections:
        heading = section.heading
        seen[section.document, heading] += 1
        if heading and seen[section.document, heading] > 1:  # a repeated heading would collide in dedup
            heading = f"{heading} ({seen[section.document, heading]})"
        examples += _section_examples(section, heading, min_output_chars, max_output_chars)
        examples += _figure_examples(section, heading, min_output_chars, max_output_chars)
    return examples


@dataclass(frozen=True)
class AnswerDefects:
    """Answers the dataset must not teach: cut inside a word, or filled into a template (by instruction)."""

    cut_mid_word: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.cut_mid_word and not self.templates


def _ends_inside_a_word(output: str, source: str) -> bool:
    """The output ends with a letter or digit that the source (where the output is found verbatim) continues."""
    if not output[-1:].isalnum():
        return False
    tail = output[-80:]
    followers = [source[found + len(tail) : found + len(tail) + 1] for found in _occurrences(source, tail)]
    return bool(followers) and all(follower.isalnum() for follower in followers)


def _occurrences(text: str, part: str) -> list[int]:
    found, start = [], text.find(part)
    while start != -1:
        found.append(start)
        start = text.find(part, start + 1)
    return found


def answer_defects(examples: Iterable[Example], sections: Iterable[Section]) -> AnswerDefects:
    """The check behind the dataset's `answers_whole_and_not_templates`: an answer is cut mid-word when it ends
    in a word marked as cut ("palab…") or stops inside a word of the section it was copied from; it is a
    template when it is the fill-in picture sentence (pixel sizes, dominant colours)."""
    sources: dict[str, list[str]] = {}
    for section in sections:
        sources.setdefault(section.document, []).append(section.text)
    texts = {document: "\n\n".join(parts) for document, parts in sources.items()}
    cut, templates = [], []
    for example in examples:
        output = example.output.strip()
        if _CUT_MARK.search(output) or _ends_inside_a_word(output, texts.get(example.document, "")):
            cut.append(example.instruction)
        if TEMPLATE_ANSWER.search(output):
            templates.append(example.instruction)
    return AnswerDefects(tuple(cut), tuple(templates))


def normalise_instruction(instruction: str) -> str:
    return " ".join(WORD.findall(unicodedata.normalize("NFKC", instruction).casefold()))


def _percentile(sorted_values: list[int], share: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[max(0, math.ceil(share * len(sorted_values)) - 1)]  # nearest rank


def _held_out_sections(examples: list[Example], eval_share: float, seed: int) -> set[tuple[str, str]]:
    """Sections whose hash (with the seed) falls under eval_share. By section, so that a held-out section's
    passages, summary and figures are all unseen text. When that leaves none but there are at least two sections
    and eval_share > 0, the section with the lowest hash is held out, so a small dataset is still evaluated
    (it goes back to training once the collection has held-out sections of its own)."""
    buckets = {
        (example.document, example.section): stable_hash(f"{seed}\n{example.document}\n{example.section}") / 2**64
        for example in examples
    }
    held_out = {section for section, bucket in buckets.items() if bucket < eval_share}
    if not held_out and len(buckets) >= 2 and eval_share > 0:
        held_out = {min(buckets, key=buckets.get)}
    return held_out


def build_dataset(examples: Iterable[Example], eval_share: float = 0.1, seed: int = 13) -> Dataset:
    """Drop examples whose normalised instruction or whose output was already seen (the first one stays), then
    hold out whole sections by a hash of seed, document and section: each section's side depends on nothing
    else, so adding documents does not move existing examples between train and eval (but for the fallback of
    `_held_out_sections`)."""
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
    held_out = _held_out_sections(kept, eval_share, seed)
    train = [example for example in kept if (example.document, example.section) not in held_out]
    evaluation = [example for example in kept if (example.document, example.section) in held_out]
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
    folder = write_splits(
        out_dir, _rows(dataset.train), _rows(dataset.eval), _SCHEMA, json_files={DATASET_INFO: _dataset_info(name)}
    )
    return DatasetFiles(folder=folder, name=name)
