"""Small text normalisations shared by the categoriser and the document steps."""

import unicodedata


def fold(text: str) -> str:
    """Lowercase without accents: "Económica" -> "economica"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(character for character in decomposed if not unicodedata.combining(character))
