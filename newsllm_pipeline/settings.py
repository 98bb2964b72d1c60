"""Site settings: NEWSLLM_* environment variables, each declared once in `SETTINGS` with its default and meaning.

Every default points inside the project folder (`NEWSLLM_HOME`, the checkout by default), so a fresh clone runs
with SQLite, the packaged tiny models and the sample feeds and nothing configured.

There is one way to read a setting. Resources take theirs through `site_setting` / `site_int`: a variable the
site sets becomes a `dg.EnvVar` (the UI shows it as such, and it is read when a run starts, not when the code
location loads); an unset one is the default, shown as a plain value. The CLI, the demo and plain modules read
the same declaration with `setting()`. Dagster has no boolean EnvVar, so switches (`site_flag`) are read when
the code location loads: reload it after changing one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Dagster is imported where a resource is built: plain modules (models, training) run without it
    import dagster as dg

ENV_PREFIX = "NEWSLLM_"

CHECKOUT = Path(__file__).resolve().parent.parent


def _default_home() -> Path:
    return CHECKOUT if (CHECKOUT / "pyproject.toml").exists() else Path.cwd()


PROJECT_HOME = Path(os.environ.get("NEWSLLM_HOME", _default_home())).resolve()
DEFAULT_MODEL_DIR = PROJECT_HOME / "models" / "base" / "SmolLM2-135M-Instruct"
# The categoriser's own default: the packaged Gemma 3 270M, measured the better categoriser (README, Benchmarks);
# SmolLM2 stays the default for chat-style generation and document adapters (Gemma 3 270M has no chat template).
DEFAULT_CATEGORIZER_MODEL_DIR = PROJECT_HOME / "models" / "base" / "gemma-3-270m"
DEFAULT_CATEGORIZER_ADAPTERS_DIR = PROJECT_HOME / "models" / "categorizer_adapters"
DEFAULT_FEEDS_GLOB = str(PROJECT_HOME / "data" / "feeds" / "*.xml")
# Shipped with the checkout, not the site's data: found wherever NEWSLLM_HOME points.
SHIPPED_REAL_ITEMS = CHECKOUT / "data" / "noticias_reales" / "items.jsonl"


def default_database_url() -> str:
    return f"sqlite:///{PROJECT_HOME / 'data' / 'newsllm.db'}"


@dataclass(frozen=True)
class Setting:
    """NEWSLLM_<name>; unset, it takes `fallback`'s value when that one is set, else `default`."""

    name: str
    default: str | Callable[[], str]
    description: str
    fallback: str | None = None

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name

    def set_variable(self) -> str | None:
        """The environment variable that decides the value, if the site set one."""
        if self.variable in os.environ:
            return self.variable
        return SETTINGS[self.fallback].set_variable() if self.fallback else None

    def default_value(self) -> str:
        return self.default() if callable(self.default) else self.default


def _home(*parts: str) -> Callable[[], str]:
    return lambda: str(PROJECT_HOME.joinpath(*parts))


def _device(role: str, what: str, fallback: str | None = None) -> list[Setting]:
    """NEWSLLM_<ROLE>_DEVICE, _PRECISION and _MEMORY_GIB: the `<role>_device` resource (resources/devices.py)."""
    role, fallback = role.upper(), fallback and fallback.upper()
    return [
        Setting(
            f"{role}_DEVICE",
            "auto",
            f"{what}: 'auto', 'cpu', 'cuda', 'cuda:1'… (read at load: the steps' concurrency pool is the device's)",
            fallback=fallback and f"{fallback}_DEVICE",
        ),
        Setting(
            f"{role}_PRECISION",
            "auto",
            f"{what}: precision 'auto', 'bf16', 'fp16' (CUDA), 'fp32'",
            fallback=fallback and f"{fallback}_PRECISION",
        ),
        Setting(f"{role}_MEMORY_GIB", "", f"{what}: GiB of the card a step may use (empty: all; read at load)"),
    ]


SETTINGS: dict[str, Setting] = {
    entry.name: entry
    for entry in [
        Setting("TIMEZONE", "UTC", "The site's timezone for schedules and nightly retraining, e.g. Europe/Madrid"),
        # noticias
        Setting("DATABASE_URL", default_database_url, "SQLAlchemy URL of the noticias table (SQLite under data/)"),
        Setting("FEEDS", DEFAULT_FEEDS_GLOB, "Feed URLs, files or globs, separated by commas or spaces"),
        Setting("FEED_MAX_MB", "20", "A feed larger than this is refused whole"),
        Setting("FEED_TIMEOUT_S", "60", "A feed still arriving after this many seconds is refused whole"),
        Setting("MAX_ATTEMPTS", "3", "An item that failed this many times is not claimed again until reset"),
        Setting("BATCH_SIZE", "10", "Noticias a categorisation run claims and commits together"),
        Setting("RUN_TIME_BUDGET_S", "300", "A categorisation run stops claiming batches after this many seconds"),
        Setting("RUN_LINGER_S", "0", "An idle categorisation run waits this many seconds for new noticias"),
        Setting("MAX_PARALLEL_RUNS", "1", "Most categorisation runs working at once"),
        Setting("SENSOR_INTERVAL_S", "5", "Seconds between the categorisation sensor's ticks (read at load)"),
        Setting(
            "BACKEND",
            "transformers",
            "Categoriser backend: 'transformers' (CPU or CUDA), 'exllamav2' (CUDA) or 'remote' (a categoriser server)",
        ),
        Setting("MODEL_DIR", lambda: str(DEFAULT_MODEL_DIR), "Base model for generation and document adapters"),
        Setting(
            "CATEGORIZER_MODEL_DIR",
            lambda: str(DEFAULT_CATEGORIZER_MODEL_DIR),
            "The categoriser's model folder (NEWSLLM_MODEL_DIR when only that is set)",
            fallback="MODEL_DIR",
        ),
        Setting("ADAPTER_DIR", "", "A categoriser LoRA adapter to use instead of the current one"),
        Setting("USE_CURRENT_ADAPTER", "1", "Use the categoriser adapter trained last (0 switches it off)"),
        *_device("categorize", "Categorisation runs"),
        Setting("GPU_SPLIT", "", "exllamav2: GB per GPU, e.g. '20,24' (empty: autosplit; read at load)"),
        Setting("CACHE_TYPE", "fp16", "exllamav2 KV cache: FP16 or Q4 (any case)"),
        Setting("MAX_SEQ_LEN", "4096", "exllamav2 cache length in tokens"),
        Setting("CATEGORIZER_URL", "http://127.0.0.1:8100", "remote backend: where `newsllm categorizer-server` runs"),
        Setting("CATEGORIZER_TOKEN", "", "The categoriser server's bearer token (the server and its clients)"),
        # documents
        Setting("INBOX_DIR", _home("data", "raw_pdfs"), "Folder watched for new or changed documents"),
        Setting("DOCUMENTS_DIR", _home("data", "documents"), "One folder per converted document"),
        Setting("DATASET_DIR", _home("data", "datasets", "documents"), "Where the instruction dataset is written"),
        Setting("DOCLING_MODE", "auto", "'offline', 'standard' (Docling's models) or 'auto'"),
        Setting("DOCLING_OCR", "0", "Read pages without a text layer with RapidOCR (1 switches it on)"),
        Setting("DOC_MAX_MB", "200", "A document file larger than this is refused"),
        Setting("DOCX_MAX_UNCOMPRESSED_MB", "100", "An Office file that unpacks to more than this is refused"),
        Setting("DOCX_MAX_RATIO", "100", "An Office file that unpacks this many times its size is refused"),
        Setting("DOC_TIMEOUT_S", "600", "A PDF conversion still running after this many seconds is stopped"),
        Setting("DOCUMENTS_PER_RUN", "4", "Documents a backfill converts and describes in one run (read at load)"),
        Setting("DESCRIBER", "ocr", "Picture describer: 'ocr', 'openai' or 'transformers'"),
        Setting("VISION_URL", "", "openai describer: base URL of the vision endpoint"),
        Setting("VISION_MODEL", "", "openai: the model name; transformers: a vision-language model folder"),
        Setting("VISION_API_KEY", "", "openai describer: bearer token"),
        Setting("VISION_TOKEN", "", "The vision server's own bearer token (`newsllm serve-vision`)"),
        Setting("VISION_SERVER", "http://127.0.0.1:8000", "Where `newsllm vision-client` finds the vision server"),
        *_device("describe", "Docling, the picture describer and the dataset's text generator"),
        Setting(
            "GENERATOR_MODEL_DIR",
            lambda: str(DEFAULT_MODEL_DIR),
            "Model of the `llm` dataset strategy",
            fallback="MODEL_DIR",
        ),
        # training
        Setting(
            "TRAIN_BASE_MODEL_DIR",
            lambda: str(DEFAULT_MODEL_DIR),
            "Base model document adapters are trained on",
            fallback="MODEL_DIR",
        ),
        *_device("train", "Adapter training"),
        *_device("evaluate", "Adapter evaluations (default: the training device's settings)", fallback="train"),
        Setting("ADAPTERS_DIR", _home("models", "lora_adapters"), "Document adapters, one folder per version"),
        Setting(
            "CATEGORIZER_ADAPTERS_DIR",
            lambda: str(DEFAULT_CATEGORIZER_ADAPTERS_DIR),
            "Categoriser adapters, one folder per version",
        ),
        Setting(
            "CATEGORIZER_DATASET_DIR",
            _home("data", "datasets", "categorizer"),
            "Where categorizer_training_set writes its splits",
        ),
    ]
}


def setting(name: str) -> str:
    """The value of NEWSLLM_<name> now: the site's, else the declared default."""
    declared = SETTINGS[name]
    variable = declared.set_variable()
    return os.environ[variable] if variable else declared.default_value()


def describe_settings() -> list[dict[str, str]]:
    """Every setting with its value now and where the value comes from (the site's variable or the default)."""
    rows = []
    for declared in SETTINGS.values():
        variable = declared.set_variable()
        secret = any(word in declared.name for word in ("KEY", "TOKEN"))
        value = setting(declared.name)
        rows.append(
            {
                "setting": declared.variable,
                "value": "***" if secret and value else value,
                "from": variable or "default",
                "meaning": declared.description,
            }
        )
    return rows


def site_setting(name: str, default: str | None = None) -> str | dg.EnvVar:
    """A string resource field: EnvVar when the site sets the variable (read at run time), else the default."""
    import dagster as dg

    variable = SETTINGS[name].set_variable()
    return dg.EnvVar(variable) if variable else (default if default is not None else SETTINGS[name].default_value())


def site_int(name: str) -> int | dg.EnvVar:
    """An integer resource field, like `site_setting`."""
    import dagster as dg

    variable = SETTINGS[name].set_variable()
    return dg.EnvVar.int(variable) if variable else int(SETTINGS[name].default_value())


def site_flag(name: str) -> bool:
    """A switch: '0', 'false', 'no', 'off' and '' are off. Read when the code location loads."""
    return setting(name).strip().lower() not in ("0", "false", "no", "off", "")


def optional(value: str | dg.EnvVar) -> str | dg.EnvVar | None:
    """An empty default means 'not set' for optional fields (adapter_dir, vision url…)."""
    return value or None


def feed_sources(spec: str | None = None) -> list[str]:
    """Feed URLs, files or globs separated by commas or whitespace (default: NEWSLLM_FEEDS, else the samples)."""
    import glob

    sources = []
    for entry in (spec if spec is not None else setting("FEEDS")).replace(",", " ").split():
        matches = sorted(glob.glob(entry)) if any(ch in entry for ch in "*?[") else [entry]
        sources.extend(matches)
    return sources
