"""News categorisation with a local LLM: prompt, label scoring and the model backends."""

from .answers import CategorizationError, Prediction
from .prompt import DEFAULT_CATEGORIES, item_text, parse_category

__all__ = ["DEFAULT_CATEGORIES", "CategorizationError", "Prediction", "item_text", "parse_category"]
