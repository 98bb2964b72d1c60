"""ConfigurableResources injected into jobs and assets."""

from .categorizer import CategorizerResource
from .database import NoticiasDatabase

__all__ = ["CategorizerResource", "NoticiasDatabase"]
