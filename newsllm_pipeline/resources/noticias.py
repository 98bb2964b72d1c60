"""Resources of the noticias domain: the table and its claiming rules, and the categoriser (one class per backend).

`categorizer_from_settings()` is the one place a backend is chosen; the CLI, the code location and the resident
categoriser server (`newsllm categorizer-server`) all use it. The `remote` backend is a client of that server:
a run that uses it loads no model and imports no torch.
A loaded model is shared by every resource with the same settings in a process (the demo and tests run many
jobs in one process), keyed by a frozen settings object; only `MAX_LOADED_CATEGORIZERS` stay loaded, so an
evaluation of base against adapter never holds both.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from .. import db
from ..categorizer import DEFAULT_CATEGORIES, CategorizationError, Prediction, item_text
from ..categorizer.adapter import PromptSettings
from ..categorizer.batch import Claim
from ..device_memory import free_device_memory
from ..files import read_jsonl
from ..models import AdapterError, read_adapter_config, resolve_model_dir, same_model
from ..settings import optional, setting, site_flag, site_int, site_setting
from .devices import ComputeDevice, fresh_copy

log = logging.getLogger(__name__)

PACKAGED_CALIBRATION = Path(__file__).parent.parent / "categorizer" / "calibration_es.jsonl"
MAX_LOADED_CATEGORIZERS = 1
UNBOUNDED_GB = 1024.0  # an exllamav2 split entry that lets one card take the whole model


class NoticiasDatabase(dg.ConfigurableResource):
    """Where the `noticias` table lives, and the rules for claiming its rows and draining its backlog."""

    url: str = Field(description="SQLAlchemy URL, e.g. postgresql+psycopg://user:pass@host/db")
    max_attempts: int = Field(
        default=3, description="An item that failed this many times is not claimed again until reset."
    )
    claim_lease_minutes: int = Field(
        default=30, description="A claim older than this (its run died) lets another run take the rows."
    )
    batch_size: int = Field(default=10, description="Noticias a categorisation run claims and commits together.")
    run_time_budget_s: int = Field(
        default=300,
        description="A categorisation run stops claiming batches after this many seconds (the sensor starts another "
        "for what is left), so a long backlog does not hold one run forever.",
    )
    run_linger_s: int = Field(
        default=0,
        description="A categorisation run that finds the backlog empty keeps its model loaded this many seconds "
        "more (within its time budget), taking new noticias as they arrive (every 0.5 s): on a steady stream no "
        "run has to start. On a card it holds the device's pool meanwhile. 0: the run ends at once.",
    )
    max_parallel_runs: int = Field(
        default=1,
        description="Most categorisation runs working at once (each drains the backlog; more help only where the "
        "categorisation device's pool allows more than one step).",
    )

    _engine: Engine | None = PrivateAttr(default=None)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.create_db_engine(self.url)
        return self._engine

    @property
    def lease(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.claim_lease_minutes)

    def teardown_after_execution(self, context) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def upgrade(self) -> list[str]:
        return db.upgrade(self.engine)

    def claim(self, claimant: str, size: int | None = None) -> Claim:
        """How `claimant` (a run id) takes rows: `size` at a time (default `batch_size`), under these rules."""
        return Claim(self.engine, claimant, size or self.batch_size, self.max_attempts, self.lease)

    def has_table(self) -> bool:
        return sa.inspect(self.engine).has_table(db.noticias.name)

    def count_claimable(self) -> int:
        return db.count_claimable(self.engine, self.max_attempts, self.lease)

    def status(self) -> dict[str, int]:
        return db.status_counts(self.engine, self.max_attempts)


def noticias_database_from_settings() -> NoticiasDatabase:
    return NoticiasDatabase(
        url=site_setting("DATABASE_URL"),
        max_attempts=site_int("MAX_ATTEMPTS"),
        batch_size=site_int("BATCH_SIZE"),
        run_time_budget_s=site_int("RUN_TIME_BUDGET_S"),
        run_linger_s=site_int("RUN_LINGER_S"),
        max_parallel_runs=site_int("MAX_PARALLEL_RUNS"),
    )


# --- the categoriser -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptOptions:
    """What every backend is given besides its model: the categories and how items are put to the model."""

    categories: tuple[str, ...]
    max_item_tokens: int
    batch_size: int
    calibration_texts: tuple[str, ...]
    few_shot: bool = True
    system_prompt: str | None = None  # None: the backend's default

    def as_kwargs(self) -> dict:
        kwargs = dict(self.__dict__)
        if self.system_prompt is None:
            del kwargs["system_prompt"]
        return kwargs


@dataclass(frozen=True)
class TransformersSpec:
    """Everything that decides a loaded transformers categoriser (the cache key)."""

    model_dir: str
    adapter_dir: str | None
    device: str
    dtype: str
    method: str
    prompt: PromptOptions

    def load(self):
        from ..categorizer.transformers_backend import TransformersCategorizer

        return TransformersCategorizer(
            self.model_dir,
            adapter_dir=self.adapter_dir,
            device=self.device,
            dtype=self.dtype,
            method=self.method,
            **self.prompt.as_kwargs(),
        )


@dataclass(frozen=True)
class ExLlamaV2Spec:
    """Everything that decides a loaded ExLlamaV2 categoriser (the cache key)."""

    model_dir: str
    gpu_split: tuple[float, ...] | None
    cache_type: str
    max_seq_len: int
    prompt: PromptOptions

    def load(self):
        from ..categorizer.exllamav2_backend import ExLlamaV2Categorizer

        options = self.prompt.as_kwargs()
        del options["few_shot"]  # scoring with the few-shot prompt always: ExLlamaV2 takes no adapter
        return ExLlamaV2Categorizer(
            self.model_dir,
            gpu_split=self.gpu_split,
            cache_type=self.cache_type,
            max_seq_len=self.max_seq_len,
            **options,
        )


_loaded: OrderedDict = OrderedDict()
_loading = threading.Lock()


def loaded_categorizer(spec: TransformersSpec | ExLlamaV2Spec):
    """The categoriser of `spec`, loaded once per process; the least recently used one is freed beyond the bound."""
    with _loading:
        if spec in _loaded:
            _loaded.move_to_end(spec)
            return _loaded[spec]
        while len(_loaded) >= MAX_LOADED_CATEGORIZERS:
            _loaded.popitem(last=False)
            free_device_memory()
        _loaded[spec] = spec.load()
        return _loaded[spec]


def unload_categorizer(spec: TransformersSpec | ExLlamaV2Spec) -> None:
    """Forget the categoriser of `spec` (its memory is given back by the next `free_device_memory`)."""
    with _loading:
        _loaded.pop(spec, None)


def calibration_texts(calibration: bool, calibration_file: str | None) -> tuple[str, ...]:
    """Texts of a category-balanced JSONL file (titulo, resumen): the site's, else the packaged one."""
    if not calibration:
        return ()
    path = Path(calibration_file) if calibration_file else PACKAGED_CALIBRATION
    return tuple(item_text(record.get("titulo"), record.get("resumen")) for record in read_jsonl(path))


class CategorizerResource(dg.ConfigurableResource):
    """What jobs and assets ask of a categoriser, whatever runs it. Assets and jobs take this type;
    `categorizer_from_settings()` binds the backend's class."""

    categories: list[str] = Field(default=list(DEFAULT_CATEGORIES))

    runs_here: ClassVar[bool] = True  # False: the model is another process's (nothing to measure or free here)

    def on(self, device: ComputeDevice) -> CategorizerResource:
        """The same categoriser placed on `device` (a step's `<role>_device`)."""
        return self

    def release(self) -> None:
        """Let go of the loaded model (a step on a card frees it when it ends)."""

    def load(self):
        """The backend, ready to categorise."""
        raise NotImplementedError

    def categorize(self, texts: Sequence[str]) -> list[Prediction | CategorizationError]:
        return self.load().categorize(texts)

    def trained_adapter(self) -> str | None:
        """The categoriser adapter this resource uses, if any."""
        return None

    def with_adapter(self, adapter_dir: str | None) -> CategorizerResource:
        """The same categoriser with exactly this adapter (None: the base model alone)."""
        raise dg.Failure(f"the {type(self).__name__} takes no LoRA adapter: use the transformers backend")


class LocalCategorizerResource(CategorizerResource):
    """A categoriser whose model this process loads: the model folder and how items are scored."""

    model_dir: str = Field(description="A Hugging Face model folder (or a hub id where there is internet)")
    max_item_tokens: int = Field(default=64, description="Item text (titulo, then resumen) is cut to this many tokens")
    batch_size: int = Field(default=16, description="Items per forward pass")
    calibration: bool = Field(
        default=True,
        description="Divide each category's likelihood by the model's prior for it, measured on a "
        "category-balanced set of news, so a small model stops favouring one category",
    )
    calibration_file: str | None = Field(
        default=None,
        description="JSONL (titulo, resumen) balanced over your categories; default: the packaged Spanish "
        "set, balanced over the 15 default categories",
    )

    _spec: TransformersSpec | ExLlamaV2Spec | None = PrivateAttr(default=None)

    def spec(self) -> TransformersSpec | ExLlamaV2Spec:
        raise NotImplementedError

    def release(self) -> None:
        if self._spec is not None:
            unload_categorizer(self._spec)

    def load(self):
        """Loaded on first use (inside the step, so after its device pool's slot is held; a step that only reads
        the categories, or a run with nothing to claim, loads nothing) and shared by every resource of the same
        settings in this process. The spec (calibration file, adapter prompt, where `current` points) is read once
        per resource, not on every batch; the model itself stays in the bounded cache, not on the resource."""
        if self._spec is None:
            self._spec = self.spec()
        return loaded_categorizer(self._spec)

    def _prompt(self, adapter_prompt: PromptSettings | None = None) -> PromptOptions:
        """The categories and item settings; an adapter trained by `categorizer_adapter` brings the prompt it was
        trained on, which is then used."""
        options = dict(
            categories=tuple(self.categories),
            max_item_tokens=self.max_item_tokens,
            batch_size=self.batch_size,
            calibration_texts=calibration_texts(self.calibration, self.calibration_file),
        )
        if adapter_prompt is None:
            return PromptOptions(**options)
        if tuple(adapter_prompt.categories) != tuple(self.categories):
            raise ValueError(f"the adapter was trained on other categories: {adapter_prompt.categories}")
        options.update(
            max_item_tokens=adapter_prompt.max_item_tokens,
            calibration_texts=calibration_texts(self.calibration and adapter_prompt.calibration, self.calibration_file),
        )
        return PromptOptions(**options, few_shot=adapter_prompt.few_shot, system_prompt=adapter_prompt.system_prompt)


class TransformersCategorizerResource(LocalCategorizerResource):
    """Any HF causal-LM folder on CPU or CUDA, optionally with a LoRA adapter."""

    adapter_dir: str | None = Field(default=None, description="A PEFT LoRA adapter folder")
    use_current_adapter: bool = Field(
        default=True,
        description="Without adapter_dir: use the categoriser adapter `current_adapter_dir` points at, once "
        "training made one for this model_dir (NEWSLLM_USE_CURRENT_ADAPTER=0 switches it off)",
    )
    current_adapter_dir: str | None = Field(
        default=None, description="The `current` link of the categoriser adapters (categorizer_adapter writes it)"
    )
    device: str = Field(default="auto", description="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'…")
    dtype: str = Field(
        default="auto",
        description="'auto' (bf16 on CUDA and on CPUs with native bf16, else fp32), 'bf16', 'fp16', 'fp32' "
        "(or torch's names: 'bfloat16'…)",
    )
    method: str = Field(
        default="score",
        description="'score': likelihood of every category (always a valid answer, calibrated among the "
        "categories); 'generate': the original free-form answer, parsed",
    )

    def on(self, device: ComputeDevice) -> TransformersCategorizerResource:
        return fresh_copy(self, device=device.device, dtype=device.precision)

    def spec(self) -> TransformersSpec:
        adapter_dir = self.adapter_dir or self.trained_adapter()
        # `current` is a symlink that retraining moves: load (and cache) what it points at now.
        adapter_dir = str(Path(adapter_dir).resolve()) if adapter_dir else None
        return TransformersSpec(
            model_dir=resolve_model_dir(self.model_dir),
            adapter_dir=adapter_dir,
            device=self.device,
            dtype=self.dtype,
            method=self.method,
            prompt=self._prompt(PromptSettings.read(adapter_dir)),
        )

    def trained_adapter(self) -> str | None:
        """The adapter in use: adapter_dir, else the current categoriser adapter when use_current_adapter is on
        and it was trained on this model_dir (another base's adapter is skipped with a warning)."""
        if self.adapter_dir:
            return self.adapter_dir
        current = self.current_adapter_dir
        if not (self.use_current_adapter and current and Path(current).exists()):
            return None
        try:
            recorded = read_adapter_config(current).get("base_model_name_or_path")
        except AdapterError as error:
            log.warning("not using the current categoriser adapter: %s", error)
            return None
        if recorded and not same_model(recorded, resolve_model_dir(self.model_dir)):
            log.warning("skipping the categoriser adapter %s: trained on %s, not %s", current, recorded, self.model_dir)
            return None
        return current

    def with_adapter(self, adapter_dir: str | None) -> TransformersCategorizerResource:
        return fresh_copy(self, adapter_dir=adapter_dir, use_current_adapter=False)


class ExLlamaV2CategorizerResource(LocalCategorizerResource):
    """EXL2, GPTQ or FP16 folders on CUDA GPUs (the `gpu` extra); scores categories, takes no adapter."""

    gpu_split: list[float] | None = Field(default=None, description="GB per GPU; None = autosplit")
    cache_type: str = Field(default="fp16", description="KV cache: 'fp16' or 'q4' (any case, as the seed's FP16/Q4)")
    max_seq_len: int = Field(default=4096, description="Cache length in tokens")

    def on(self, device: ComputeDevice) -> ExLlamaV2CategorizerResource:
        """On card N alone: the split gives the other cards nothing (and card N the memory budget, if any), unless
        gpu_split is configured, which then wins."""
        if device.on_cpu:
            raise dg.Failure("the exllamav2 categoriser runs on CUDA cards only: set a cuda device or use transformers")
        if self.gpu_split:
            return self
        card = device.card_index()
        return fresh_copy(self, gpu_split=[0.0] * card + [device.memory_budget_gib or UNBOUNDED_GB])

    def spec(self) -> ExLlamaV2Spec:
        return ExLlamaV2Spec(
            model_dir=resolve_model_dir(self.model_dir),
            gpu_split=tuple(self.gpu_split) if self.gpu_split else None,
            cache_type=self.cache_type.lower(),
            max_seq_len=self.max_seq_len,
            prompt=self._prompt(),
        )


class RemoteCategorizerResource(CategorizerResource):
    """A client of the resident categoriser (`newsllm categorizer-server`), which holds the model: every run on
    the machine shares its one loaded model, and a run loads none (nor torch). A server that cannot be reached
    or answers with an error fails the batch, whose claims are given back; an item it could not categorise is a
    CategorizationError, as in-process."""

    url: str = Field(description="The categoriser server's base URL, e.g. http://127.0.0.1:8100")
    token: str | None = Field(default=None, description="The server's bearer token (its NEWSLLM_CATEGORIZER_TOKEN)")
    timeout_s: float = Field(default=120.0, description="Seconds to wait for the answer to one batch")
    retries: int = Field(
        default=2, description="Further tries of a request that cannot reach the server, times out or finds it busy"
    )

    runs_here: ClassVar[bool] = False  # the model's memory is the server's

    _client = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.load()  # cheap (one request), and a run fails at once, claiming nothing, when the server is away

    def load(self):
        """A client of a server that answers, checked to categorise into `categories`."""
        if self._client is None:
            from ..categorizer.client import CategorizerClient

            client = CategorizerClient(self.url, self.token, self.timeout_s, self.retries)
            served = client.status()["categories"]
            if list(served) != list(self.categories):
                raise dg.Failure(
                    f"the categoriser server at {self.url} answers with the categories {served}, not the configured "
                    f"{self.categories}: configure the same categories on both"
                )
            self._client = client
        return self._client

    def trained_adapter(self) -> str | None:
        """The adapter the server uses now."""
        return self.load().status()["adapter"]


CATEGORIZER_BACKENDS: dict[str, type[CategorizerResource]] = {
    "transformers": TransformersCategorizerResource,
    "exllamav2": ExLlamaV2CategorizerResource,
    "remote": RemoteCategorizerResource,
}


def categorizer_from_settings(resolve_now: bool = False, **overrides) -> CategorizerResource:
    """The site's categoriser: NEWSLLM_BACKEND picks the class, the other NEWSLLM_* settings fill its fields as
    EnvVars read when a run starts (`resolve_now`: their values now, for the CLI); `overrides` win over both."""
    read = setting if resolve_now else site_setting
    backend = overrides.pop("backend", None) or setting("BACKEND")
    if backend not in CATEGORIZER_BACKENDS:
        raise ValueError(f"unknown categoriser backend {backend!r}: use one of {', '.join(CATEGORIZER_BACKENDS)}")
    kind = CATEGORIZER_BACKENDS[backend]
    given = {key: value for key, value in overrides.items() if value is not None}
    if unknown := sorted(set(given) - set(kind.model_fields)):
        raise ValueError(f"the {backend} categoriser backend takes no {', '.join(unknown)}")
    if backend == "remote":
        fields = {"url": read("CATEGORIZER_URL"), "token": optional(read("CATEGORIZER_TOKEN"))}
    else:
        fields = {"model_dir": read("CATEGORIZER_MODEL_DIR")}
    if backend == "transformers":
        fields.update(
            adapter_dir=optional(read("ADAPTER_DIR")),
            device=setting("CATEGORIZE_DEVICE"),  # the categorisation steps' pool is this device's: read at load
            dtype=read("CATEGORIZE_PRECISION"),
            use_current_adapter=site_flag("USE_CURRENT_ADAPTER"),
            current_adapter_dir=str(Path(setting("CATEGORIZER_ADAPTERS_DIR")) / "current"),
        )
    if backend == "exllamav2":
        split = setting("GPU_SPLIT").replace(",", " ").split()  # a list field: read when the code location loads
        fields.update(
            gpu_split=[float(gb) for gb in split] or None,
            cache_type=read("CACHE_TYPE"),
            max_seq_len=int(setting("MAX_SEQ_LEN")) if resolve_now else site_int("MAX_SEQ_LEN"),
        )
    return kind(**{**fields, **given})
