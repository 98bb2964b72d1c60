"""Small text normalisations shared by the categoriser and the document steps."""

import re
import unicodedata


def fold(text: str) -> str:
    """Lowercase without accents: "Económica" -> "economica"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(character for character in decomposed if not unicodedata.combining(character))


def words_only(text: str) -> str:
    """Text for matching, case, punctuation and spacing ignored: "¡Hola, Mundo!" -> "hola mundo"."""
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[^\w]+", " ", text).split())
