"""The `llm` dataset strategy: a language model writes one question and answer per chunk of a section.

In the spirit of docling-sdg, in three steps:

- sample: sections with enough text, cut into chunks of about CHUNK_CHARS at paragraph boundaries;
- generate: a Spanish prompt asks for ONE question and its answer using only the chunk, in a strict
  `Pregunta: …` / `Respuesta: …` format;
- critique: the pair is kept only if it parses, the question ends with "?" and is not copied from the chunk,
  the answer is non-empty and shorter than the chunk, and at least `min_grounding` of the answer's content
  words appear in the chunk.

`generate` is any `prompt -> text` callable, so the strategy works with any backend; `transformers_generator`
builds one from a Hugging Face model folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..text import fold
from .dataset import FIGURE_MARKER, STOP_WORDS, Example, Section, split_passages
from .markdown import WORD

CHUNK_CHARS = 1200
MIN_CHUNK_CHARS = 200
MAX_REJECTED_SAMPLES = 5

PROMPT = (
    "Lee el siguiente texto y escribe UNA pregunta sobre su contenido y su respuesta, usando solo la "
    "información del texto. La pregunta debe entenderse sin ver el texto y no debe copiar sus frases; "
    "la respuesta debe ser breve.\n"
    "Responde exactamente con este formato, sin nada más:\n"
    "Pregunta: <la pregunta>\n"
    "Respuesta: <la respuesta>\n\n"
    "Texto:\n{chunk}"
)

_PREFIX = r"^[\s>*_#-]*{label}[\s*_]*:[\s*_]*"  # tolerates Markdown bold, list and quote marks around the label
_QUESTION = re.compile(_PREFIX.format(label="pregunta"), re.IGNORECASE | re.MULTILINE)
_ANSWER = re.compile(_PREFIX.format(label="respuesta"), re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Rejection:
    document: str
    section: str
    reason: str
    generated: str  # the model's text, or the parsed pair for a pair the critique rejected


@dataclass(frozen=True)
class SynthesisRun:
    examples: tuple[Example, ...]
    chunks: int  # chunks sent to the model
    unparseable: int  # answers without a `Pregunta:` / `Respuesta:` pair
    ungrounded: int  # answers with too few content words from the chunk
    invalid: int  # questions without "?" or copied from the chunk, answers empty or as long as the chunk
    rejected_samples: tuple[Rejection, ...]  # the first few rejections, to show what the critique drops

    @property
    def rejected(self) -> int:
        return self.unparseable + self.ungrounded + self.invalid

    @property
    def kept_share(self) -> float:
        return len(self.examples) / self.chunks if self.chunks else 0.0


def words(text: str) -> list[str]:
    return WORD.findall(fold(text))


def content_words(text: str) -> list[str]:
    return [word for word in words(text) if word not in STOP_WORDS and word != "_"]


def grounding(answer: str, chunk: str) -> float:
    """Share of the answer's content words that appear in the chunk; 0 for an answer without content words."""
    answer_words = content_words(answer)
    if not answer_words:
        return 0.0
    vocabulary = set(words(chunk))
    return sum(word in vocabulary for word in answer_words) / len(answer_words)


def chunk_section(section: Section, max_chars: int = CHUNK_CHARS) -> list[str]:
    """The section cut into chunks of at most max_chars between paragraphs or sentences (the dataset's passages;
    a sentence longer than max_chars stays whole)."""
    return split_passages(section.text, max_chars)


def sample_chunks(
    sections: Iterable[Section], max_chars: int = CHUNK_CHARS, min_chars: int = MIN_CHUNK_CHARS
) -> list[tuple[Section, str]]:
    """(section, chunk) pairs in reading order, leaving out chunks too short to ask about."""
    return [
        (section, chunk)
        for section in sections
        for chunk in chunk_section(section, max_chars)
        if len(chunk) >= min_chars
    ]


def parse_pair(generated: str) -> tuple[str, str] | None:
    """The first `Pregunta:` and the `Respuesta:` after it; the answer ends at a blank line or at a next
    `Pregunta:`. None when either is missing or empty."""
    question = _QUESTION.search(generated)
    if not question:
        return None
    answer = _ANSWER.search(generated, question.end())
    if not answer:
        return None
    question_text = " ".join(generated[question.end() : answer.start()].split()).strip("*_ ")
    rest = generated[answer.end() :]
    next_question = _QUESTION.search(rest)
    if next_question:
        rest = rest[: next_question.start()]
    answer_text = " ".join(re.split(r"\n\s*\n", rest.strip(), maxsplit=1)[0].split()).strip("*_ ")
    if not question_text or not answer_text:
        return None
    return question_text, answer_text


def is_copied(question: str, chunk: str) -> bool:
    """True when the question's words (three or more) appear in the same order, contiguously, in the chunk."""
    question_words = words(question)
    return len(question_words) >= 3 and f" {' '.join(question_words)} " in f" {' '.join(words(chunk))} "


def critique(question: str, answer: str, chunk: str, min_grounding: float) -> tuple[str, str] | None:
    """None for a pair worth keeping, else (kind, reason) with kind "ungrounded" or "invalid"."""
    if not question.endswith("?"):
        return "invalid", "the question does not end with '?'"
    if is_copied(question, chunk):
        return "invalid", "the question is copied from the text"
    if not answer.strip():
        return "invalid", "the answer is empty"
    if len(answer) >= len(chunk):
        return "invalid", f"the answer ({len(answer)} chars) is not shorter than the text ({len(chunk)} chars)"
    share = grounding(answer, chunk)
    if share < min_grounding:
        return "ungrounded", f"{share:.0%} of the answer's content words are in the text (needs {min_grounding:.0%})"
    return None


def synthesize_examples(
    sections: Iterable[Section],
    generate: Callable[[str], str],
    max_examples: int | None = None,
    min_grounding: float = 0.6,
    max_chunk_chars: int = CHUNK_CHARS,
    min_chunk_chars: int = MIN_CHUNK_CHARS,
    progress: Callable[[int, int], None] | None = None,
) -> SynthesisRun:
    """Ask `generate` for one question-answer pair per chunk and keep those the critique accepts, stopping
    once max_examples are kept. `progress(done, total)` is called after each chunk."""
    if not 0 <= min_grounding <= 1:
        raise ValueError(f"min_grounding must be in [0, 1], got {min_grounding}")
    chunks = sample_chunks(sections, max_chunk_chars, min_chunk_chars)
    examples: list[Example] = []
    counts = {"unparseable": 0, "ungrounded": 0, "invalid": 0}
    samples: list[Rejection] = []
    asked = 0
    for section, chunk in chunks:
        if max_examples is not None and len(examples) >= max_examples:
            break
        asked += 1
        generated = generate(PROMPT.format(chunk=chunk))
        pair = parse_pair(generated)
        if pair is None:
            verdict, shown = ("unparseable", "no 'Pregunta: …' / 'Respuesta: …' pair"), generated
        else:
            question, answer = pair
            verdict = critique(question, answer, chunk, min_grounding)
            shown = f"Pregunta: {question}\nRespuesta: {answer}"
        if verdict is None:
            examples.append(
                Example(
                    instruction=question,
                    input="",
                    output=answer,
                    document=section.document,
                    section=section.heading,
                    uses_image_description=FIGURE_MARKER in chunk,
                )
            )
        else:
            kind, reason = verdict
            counts[kind] += 1
            if len(samples) < MAX_REJECTED_SAMPLES:
                samples.append(Rejection(section.document, section.heading, f"{kind}: {reason}", shown[:500]))
        if progress:
            progress(asked, len(chunks))
    return SynthesisRun(examples=tuple(examples), chunks=asked, rejected_samples=tuple(samples), **counts)


def transformers_generator(
    model_dir: str, device: str = "auto", max_new_tokens: int = 160, dtype: str = "auto"
) -> Callable[[str], str]:
    """A `generate` callable on a Hugging Face causal LM folder: the prompt as one user message in the
    tokenizer's chat template, greedy decoding, and only the new text returned."""
    import torch

    from ..models import load_model

    model, tokenizer = load_model(model_dir, device, dtype=dtype)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @torch.inference_mode()
    def generate(prompt: str) -> str:
        inputs = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        ).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id)
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return generate
