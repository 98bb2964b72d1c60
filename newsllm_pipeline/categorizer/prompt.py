"""What the categoriser asks the model, shared by every backend.

The prompt is a few-shot conversation in the model's own chat template, or, for a pretrained model that
has none (Gemma 3 270M), in a plain turn layout of our own: "Noticia: ...\nCategoría:\n<label>". Everything
before the item is identical for all items (the prefix), so backends encode it once and reuse its key/value
cache; each item adds only its own text and the answer turn's opening.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..text import fold

DEFAULT_CATEGORIES = (
    "Política",
    "Economía",
    "Tecnología",
    "Ciencia",
    "Salud",
    "Deportes",
    "Entretenimiento",
    "Internacional",
    "Nacional",
    "Sociedad",
    "Cultura",
    "Medio Ambiente",
    "Educación",
    "Seguridad",
    "Otros",
)

# One short headline per default category, in mixed order so position carries no label signal.
FEW_SHOT_EXAMPLES = (
    ("El IPC se modera al 2,1 % en octubre por el abaratamiento de la electricidad", "Economía"),
    ("Astrónomos detectan vapor de agua en la atmósfera de un exoplaneta templado", "Ciencia"),
    ("El Congreso aprueba la reforma de la ley electoral con el apoyo de cinco grupos", "Política"),
    ("El Betis remonta en el descuento y se mete en los cuartos de final de la Copa", "Deportes"),
    ("Detenidos tres hombres por una oleada de robos en viviendas de Alicante", "Seguridad"),
    ("Francia y Alemania acuerdan un plan conjunto de defensa europea", "Internacional"),
    ("Sanidad amplía la vacunación contra la gripe a los mayores de 60 años", "Salud"),
    ("Crece el número de jóvenes que comparten piso hasta los 35 años", "Sociedad"),
    ("Una empresa valenciana lanza un chip de inteligencia artificial de bajo consumo", "Tecnología"),
    ("El Museo del Prado dedica una gran exposición a Sorolla", "Cultura"),
    ("La sequía deja los embalses del Guadalquivir al 20 % de su capacidad", "Medio Ambiente"),
    ("La nueva temporada de la serie más vista del año bate récords de audiencia", "Entretenimiento"),
    ("Los alumnos de primaria mejoran en comprensión lectora según el informe PIRLS", "Educación"),
    ("Renfe recupera el servicio de Cercanías en toda España tras la avería de la mañana", "Nacional"),
    ("Un hombre encuentra en su jardín un anillo que perdió hace 40 años", "Otros"),
)

SYSTEM_PROMPT = (
    "Eres un editor de un periódico. Clasifica cada noticia en exactamente una de estas categorías: "
    "{categories}. Responde solo con el nombre de la categoría."
)

_ITEM_PLACEHOLDER = "\x00NOTICIA\x00"


def item_text(titulo: str | None, resumen: str | None) -> str:
    """The text the model reads for one news item: headline, then summary."""
    return "\n".join(part.strip() for part in (titulo, resumen) if part and part.strip())


@dataclass(frozen=True)
class PromptParts:
    """The chat-templated prompt split around the item: prefix + item text + suffix."""

    prefix: str
    suffix: str


def build_prompt(tokenizer, categories: Sequence[str], examples=FEW_SHOT_EXAMPLES, system=SYSTEM_PROMPT) -> PromptParts:
    """Render the few-shot conversation with the tokenizer's chat template (or the plain turn layout when
    it has none) and split it at the item. `system` may name {categories}."""
    messages = [{"role": "system", "content": system.format(categories=", ".join(categories))}]
    for text, label in examples:
        if label in categories:
            messages += [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
    messages.append({"role": "user", "content": _ITEM_PLACEHOLDER})
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        rendered = render_plain_turns(messages, bos=getattr(tokenizer, "bos_token", None) or "")
    prefix, suffix = rendered.split(_ITEM_PLACEHOLDER)
    return PromptParts(prefix=prefix, suffix=suffix)


# The plain layout's turn openings: the item and the answer each on their own lines, so a category's tokens
# start a line exactly as in the examples (no leading-space variants of the label tokens).
PLAIN_USER = "Noticia: "
PLAIN_ANSWER = "\nCategoría:\n"


def render_plain_turns(messages: Sequence[dict], bos: str = "") -> str:
    """A conversation as plain text for a pretrained model without a chat template: the system text, then
    each user turn as "Noticia: ..." and each answer after "Categoría:", ending open for the next answer.
    `bos` (the tokenizer's begin-of-text token) starts the text, as such models were trained."""
    parts = [bos]
    for message in messages:
        if message["role"] == "system":
            parts.append(message["content"] + "\n\n")
        elif message["role"] == "user":
            parts.append(PLAIN_USER + message["content"] + PLAIN_ANSWER)
        else:
            parts.append(message["content"] + "\n\n")
    return "".join(parts)


def parse_category(answer: str, categories: Sequence[str]) -> str | None:
    """The category a free-form answer names (accent- and case-insensitive), or None.

    The earliest mention wins, so "Política, no Economía" is Política."""
    folded = fold(answer)
    found = [(folded.find(fold(c)), c) for c in categories if fold(c) in folded]
    return min(found)[1] if found else None
