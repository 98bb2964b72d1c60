"""The code location: each domain's definitions (noticias, documents, training; see `jobs/`) merged into one.

Resource settings come from NEWSLLM_* environment variables where the site sets them (shown as such in the UI and
read when a run starts), else from the offline defaults: SQLite under data/ and the packaged tiny models
(`settings.SETTINGS` lists them all).
"""

import dagster as dg

from .jobs import documents, noticias, training

defs = dg.Definitions.merge(noticias.definitions(), documents.definitions(), training.definitions())
