"""Filter stages between feedback intake and storage (paper §4.6).

Each stage is a small strategy object with ``name`` and
``apply(sample, ctx) -> FilterResult``. A stage returns either a (possibly redacted) new
:class:`Sample` or a :class:`Rejection` naming the stage and reason; it never mutates the sample,
the context or another stage. :class:`FilterPipeline` runs the stages in order and is the only
thing that records what a batch has accepted so far.

Default order (:func:`default_stages`): schema → PII redaction → dedup → injection/poison →
toxicity → contradiction. The paper lists dedup before PII; we redact first so the stored
SHA-256 is the hash of the stored (redacted) text — no hash of personal data is kept, the column
can be re-verified from the row, and two samples differing only in an email address are one
sample. The contradiction stage runs last because it is the only one that retrieves: a sample
the cheap stages reject never costs a search.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twinloop.kernel.errors import ConfigError
from twinloop.kernel.pii import PiiRedactor
from twinloop.kernel.toxicity import (  # noqa: F401  (part of the filter API)
    DEFAULT_CLASSIFIER_THRESHOLD,
    DEFAULT_TOXICITY_THRESHOLD,
    ToxicityScorer,
    WordList,
)
from twinloop.learning.contradiction import (
    SourcePassage,
    as_passage,
    find_contradiction,
)
from twinloop.learning.injection import InjectionRule, find_injection, load_rules
from twinloop.learning.sample import SOURCES, Sample

DEFAULT_MAX_PROMPT_CHARS = 8000
"""Same bound as a stored correction (serving/requestlog.py MAX_CORRECTION_CHARS): anything
longer is a paste, not a question, and would dominate a LoRA step's sequence budget."""
DEFAULT_MAX_TARGET_CHARS = 8000
"""A correction is stored up to 8000 characters (requestlog.py); targets from documents obey
the same bound so one sample cannot crowd out the replay mix."""
@dataclass(frozen=True)
class Rejection:
    """A sample a stage refused, with why.

    Attributes:
        sample: The sample as the rejecting stage saw it (redacted if PII ran before it).
        stage: The stage's ``name`` ("schema", "dedup", "injection", "toxicity", ...).
        reason: A short machine-readable code ("duplicate", "unknown_domain", the rule name);
            the contradiction stage's is "contradicts indexed source <uri>".
        detail: One human-readable line naming the bad value.
        review: The sample may be right (a correction disagreeing with an indexed source that
            may itself be outdated): a person should look at it, not only an auditor.
    """

    sample: Sample
    stage: str
    reason: str
    detail: str = ""
    review: bool = False


@dataclass(frozen=True)
class FilterResult:
    """Exactly one of ``sample`` (passed, maybe redacted) or ``rejection``; ``note`` says
    what a stage could not check (e.g. no index to compare a correction with)."""

    sample: Sample | None = None
    rejection: Rejection | None = None
    note: str = ""

    def __post_init__(self) -> None:
        assert (self.sample is None) != (self.rejection is None), "exactly one of sample/rejection"

    @property
    def accepted(self) -> bool:
        return self.sample is not None


@dataclass(frozen=True)
class FilterContext:
    """What the stages may consult; built by :class:`FilterPipeline` per batch.

    Attributes:
        domains: Known domain names (the DomainRegistry's, passed in by the caller).
        seen: Returns whether ``(domain, sha256)`` is already stored (the training_samples
            table, for intake); the default knows nothing.
        batch: ``(domain, sha256)`` of samples accepted earlier in this batch. Only the
            pipeline adds to it.
    """

    domains: frozenset[str] = frozenset()
    seen: Callable[[str, str], bool] = lambda domain, sha: False
    batch: frozenset[tuple[str, str]] = frozenset()


class FilterStage(Protocol):
    """One pluggable stage; see the module docstring."""

    name: str

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult: ...


def _reject(sample: Sample, stage: str, reason: str, detail: str, review: bool = False) -> FilterResult:
    return FilterResult(rejection=Rejection(sample, stage, reason, detail, review))


class SchemaFilter:
    """Required fields, types, known domain, size limits (paper §4.6 step 1).

    Args:
        domains: Known domain names; ``None`` uses the context's (the intake passes the
            registry's current names there, so a domain added later is known).
        max_prompt_chars: Longest accepted prompt (default :data:`DEFAULT_MAX_PROMPT_CHARS`).
        max_target_chars: Longest accepted target (default :data:`DEFAULT_MAX_TARGET_CHARS`).
        sources: Accepted ``source`` values (default :data:`~twinloop.learning.sample.SOURCES`).
    """

    name = "schema"

    def __init__(self, domains: Collection[str] | None = None, *,
                 max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
                 max_target_chars: int = DEFAULT_MAX_TARGET_CHARS,
                 sources: Collection[str] = SOURCES) -> None:
        for label, value in (("max_prompt_chars", max_prompt_chars), ("max_target_chars", max_target_chars)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{label} = {value!r}: must be a positive integer")
        self.domains = None if domains is None else frozenset(domains)
        self.max_prompt_chars = max_prompt_chars
        self.max_target_chars = max_target_chars
        self.sources = frozenset(sources)

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        for attr in ("domain", "prompt", "target", "source"):
            value = getattr(sample, attr)
            if not isinstance(value, str):
                return _reject(sample, self.name, "bad_type", f"{attr} is {type(value).__name__}, not str")
        if sample.request_id is not None and not isinstance(sample.request_id, str):
            return _reject(sample, self.name, "bad_type", f"request_id = {sample.request_id!r}: not a string")
        score = sample.score
        if score is not None and (not isinstance(score, (int, float)) or isinstance(score, bool)
                                  or not math.isfinite(score) or not -1.0 <= score <= 1.0):
            return _reject(sample, self.name, "bad_score", f"score = {score!r}: must be a number from -1 to 1")
        if not isinstance(sample.meta, dict):
            return _reject(sample, self.name, "bad_type", f"meta is {type(sample.meta).__name__}, not dict")
        try:
            json.dumps(sample.meta)
        except (TypeError, ValueError) as e:
            return _reject(sample, self.name, "bad_type", f"meta is not JSON-serialisable: {e}")
        domains = self.domains if self.domains is not None else ctx.domains
        if sample.domain not in domains:
            return _reject(sample, self.name, "unknown_domain",
                           f"unknown domain {sample.domain!r}; known: {', '.join(sorted(domains))}")
        if sample.source not in self.sources:
            return _reject(sample, self.name, "unknown_source",
                           f"unknown source {sample.source!r}; known: {', '.join(sorted(self.sources))}")
        for attr, limit in (("prompt", self.max_prompt_chars), ("target", self.max_target_chars)):
            text = getattr(sample, attr)
            if not text.strip():
                return _reject(sample, self.name, f"empty_{attr}", f"{attr} is empty")
            if len(text) > limit:
                return _reject(sample, self.name, "too_long", f"{attr} is {len(text)} characters, over {limit}")
        return FilterResult(sample=sample)


class PiiFilter:
    """Redacts personal data in prompt and target; never rejects.

    Args:
        redactor: The :class:`~twinloop.kernel.pii.PiiRedactor` to use (default: patterns,
            plus Presidio when installed).
    """

    name = "pii"

    def __init__(self, redactor: PiiRedactor | None = None) -> None:
        self.redactor = redactor or PiiRedactor()

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        prompt = self.redactor.redact(sample.prompt)
        target = self.redactor.redact(sample.target)
        counts = dict(prompt.counts)
        for k, n in target.counts.items():
            counts[k] = counts.get(k, 0) + n
        if not counts:
            return FilterResult(sample=sample)
        meta = {**sample.meta, "redactions": counts}
        return FilterResult(sample=dataclasses.replace(sample, prompt=prompt.text, target=target.text, meta=meta))


class DedupFilter:
    """Drops a sample whose SHA-256 (normalised prompt + target) is already stored for its
    domain or was accepted earlier in the batch (paper §4.6 step 2).

    Dedup is per domain: the same correction may rightly train two domains' adapters.
    """

    name = "dedup"

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        sha = sample.sha256()
        if (sample.domain, sha) in ctx.batch:
            return _reject(sample, self.name, "duplicate", f"sha256 {sha[:12]} repeats an earlier sample in this batch")
        if ctx.seen(sample.domain, sha):
            return _reject(sample, self.name, "duplicate", f"sha256 {sha[:12]} is already stored for {sample.domain!r}")
        return FilterResult(sample=sample)


INJECTION_RULES: tuple[InjectionRule, ...] = load_rules()
"""The shipped prompt-injection and poisoning rules (paper §4.6 step 4), read from
``twinloop/packs/injection_rules.yaml``; matched after normalising (learning/injection.py)."""

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{64,}={0,2}(?![A-Za-z0-9+/=])")


def _base64_blob(text: str) -> bool:
    # 64+ characters from the base64 alphabet with no space, mixing upper, lower and digits:
    # no word, number or hex digest (lowercase only) looks like that; an encoded payload does.
    for m in _BASE64.finditer(text):
        s = m.group(0)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return True
    return False


def _as_rule(rule: InjectionRule | tuple[str, re.Pattern[str]]) -> InjectionRule:
    if isinstance(rule, InjectionRule):
        return rule
    name, pattern = rule
    return InjectionRule(name, "raw", (pattern,))


class InjectionFilter:
    """Rejects prompt-injection and poisoning patterns; the reason is the matched rule's name.

    Each text is matched as written and normalised — homoglyphs, leetspeak, spacing, invisible
    characters, base64 / rot13 / URL-encoding undone (learning/injection.py) — in the languages
    the rules cover (EN, DE, FR, ES, IT, NL).

    Args:
        rules: :class:`~twinloop.learning.injection.InjectionRule` s, or a path to a rules file
            (default: the shipped ``packs/injection_rules.yaml``); bare ``(name, pattern)``
            pairs are matched against the raw text. ``base64_blob`` is checked in addition
            unless ``check_base64=False``.

    Raises:
        ConfigError: An unreadable or malformed rules file.
    """

    name = "injection"

    def __init__(self, rules: Iterable[InjectionRule | tuple[str, re.Pattern[str]]] | str | None = None, *,
                 check_base64: bool = True) -> None:
        if rules is None or isinstance(rules, str):
            self.rules = load_rules(rules)
        else:
            self.rules = tuple(_as_rule(r) for r in rules)
        self.check_base64 = check_base64

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        for attr in ("prompt", "target"):
            text = getattr(sample, attr)
            found = find_injection(text, self.rules)
            if found is not None:
                rule, how = found
                seen = "" if how == "as written" else f" ({how})"
                return _reject(sample, self.name, rule, f"{attr} matches injection rule {rule!r}{seen}")
            if self.check_base64 and _base64_blob(text):
                return _reject(sample, self.name, "base64_blob", f"{attr} holds a base64 blob")
        return FilterResult(sample=sample)


class ToxicityFilter(ToxicityScorer):
    """Rejects toxic samples (paper §4.6 step 5): the worse of prompt and target is scored by
    the kernel's :class:`~twinloop.kernel.toxicity.ToxicityScorer` (same arguments).

    A target matching a directive pattern of the word list — a hateful generalisation, a
    dangerous medical instruction — is rejected with that category as the reason: training on
    it would teach the model to say it. Only the target is checked for those; a user may ask
    "should I double the dose?" and the prompt is not what the model learns to say.
    """

    name = "toxicity"

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        found = self.categories(sample.target)
        if found:
            return _reject(sample, self.name, found[0], f"target reads as a {found[0].replace('_', ' ')}")
        score = max(self.score(sample.prompt) if not self.categories(sample.prompt) else 0.0,
                    self.score(sample.target))
        if score > self.threshold:
            return _reject(sample, self.name, "toxic", f"toxicity {score:.2f} above threshold {self.threshold:.2f}")
        return FilterResult(sample=sample)


Retrieve = Callable[[str, str], Sequence[Any] | None]
"""``(domain, question) -> passages`` of the domain's index, best first: each a
:class:`~twinloop.learning.contradiction.SourcePassage`, a mapping with ``text`` and ``uri``,
or a retrieval hit (``text``, ``citation["uri"]``). None or an exception: no index."""


class ContradictionFilter:
    """Sends a correction that contradicts the domain's indexed sources to review.

    For a sample from ``sources`` (corrections) in a domain whose policy requires citations,
    the passages retrieved for its question are compared with it
    (:func:`~twinloop.learning.contradiction.find_contradiction`: other numbers, durations or
    dates for the same kind of quantity; "was repealed" of a law in force). A hit is rejected
    with reason ``contradicts indexed source <uri>`` and ``review=True``: it lands in the
    quarantine marked for review, never silently dropped. Without retrieval (no index, or the
    search failed) the sample passes and the result's ``note`` says it was not checked.

    The retrieval is injected (the learning loop must not import serving, docs/DESIGN.md
    "Map"): the composition root passes a callable over the knowledge index.

    Args:
        retrieve: See :data:`Retrieve`; None: nothing to compare with.
        cited: Domains whose corrections are checked: names, or ``domain -> bool`` (the
            registry's ``citations_required``, read per sample so a changed policy counts);
            None: every domain.
        sources: Sample sources checked (default: corrections only — a rated answer came from
            the model, which quoted the index).
    """

    name = "contradiction"

    def __init__(self, retrieve: Retrieve | None = None, *,
                 cited: Collection[str] | Callable[[str], bool] | None = None,
                 sources: Collection[str] = ("correction",)) -> None:
        if retrieve is not None and not callable(retrieve):
            raise ConfigError(f"retrieve = {retrieve!r}: must be a callable (domain, question) -> passages")
        self.retrieve = retrieve
        if cited is None or callable(cited):
            self.cited = cited
        else:
            names = frozenset(cited)
            self.cited = names.__contains__
        self.sources = frozenset(sources)

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        if sample.source not in self.sources or (self.cited is not None and not self.cited(sample.domain)):
            return FilterResult(sample=sample)
        if self.retrieve is None:
            return FilterResult(sample=sample, note="contradiction not checked: no retrieval available")
        try:
            found = self.retrieve(sample.domain, sample.prompt)
        except Exception as e:  # noqa: BLE001 — no index (or a broken one) must not stop intake; the note says so
            return FilterResult(sample=sample, note=f"contradiction not checked: retrieval failed ({type(e).__name__}: {e})")
        if found is None:
            return FilterResult(sample=sample, note="contradiction not checked: no retrieval available")
        passages: list[SourcePassage] = [as_passage(p) for p in found]
        if not passages:
            return FilterResult(sample=sample, note=f"contradiction not checked: no indexed passage in {sample.domain!r}")
        hit = find_contradiction(sample.prompt, sample.target, passages)
        if hit is None:
            return FilterResult(sample=sample)
        uri = hit.passage.uri or "(passage without uri)"
        return _reject(sample, self.name, f"contradicts indexed source {uri}", hit.detail, review=True)


def default_stages(domains: Collection[str] | None = None, *, redactor: PiiRedactor | None = None,
                   toxicity: ToxicityFilter | None = None, retrieve: Retrieve | None = None,
                   cited: Collection[str] | Callable[[str], bool] | None = None) -> list[FilterStage]:
    """Schema → PII → dedup → injection → toxicity → contradiction (order explained in the
    module docstring); ``retrieve`` and ``cited`` go to :class:`ContradictionFilter`."""
    return [SchemaFilter(domains), PiiFilter(redactor), DedupFilter(), InjectionFilter(),
            toxicity or ToxicityFilter(), ContradictionFilter(retrieve, cited=cited)]


def feedback_stages(*, retrieve: Retrieve | None = None,
                    cited: Collection[str] | Callable[[str], bool] | None = None) -> list[FilterStage]:
    """:func:`default_stages` without PII: feedback text is redacted once, when it is stored
    (docs/DESIGN.md "Follow one feedback item")."""
    return [s for s in default_stages(retrieve=retrieve, cited=cited) if s.name != "pii"]


@dataclass(frozen=True)
class PipelineResult:
    """What a batch came to: accepted (redacted) samples and rejections, in input order, and
    the distinct notes of checks the stages could not make (``"stage: note"``)."""

    accepted: tuple[Sample, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class FilterPipeline:
    """Runs stages in order; the first rejection stops a sample.

    Attributes:
        stages: The stages; default :func:`default_stages`.
    """

    stages: list[FilterStage] = field(default_factory=default_stages)

    @property
    def redactor(self) -> PiiRedactor | None:
        """The PII stage's redactor, for anything else that stores text (the quarantine)."""
        return next((s.redactor for s in self.stages if isinstance(s, PiiFilter)), None)

    def run(self, samples: Iterable[Sample], *, domains: Collection[str] = (),
            seen: Callable[[str, str], bool] | None = None) -> PipelineResult:
        """Filter a batch.

        Args:
            samples: The incoming samples.
            domains: Known domain names for a :class:`SchemaFilter` built without its own.
            seen: ``(domain, sha256) -> already stored?`` for dedup against the store.
        """
        batch: set[tuple[str, str]] = set()
        accepted: list[Sample] = []
        rejected: list[Rejection] = []
        notes: dict[str, None] = {}
        base = FilterContext(domains=frozenset(domains), seen=seen or FilterContext.seen)
        for sample in samples:
            ctx = dataclasses.replace(base, batch=frozenset(batch))
            for stage in self.stages:
                result = stage.apply(sample, ctx)
                if result.note:
                    notes[f"{stage.name}: {result.note}"] = None
                if result.rejection is not None:
                    rejected.append(result.rejection)
                    break
                assert result.sample is not None
                sample = result.sample
            else:
                accepted.append(sample)
                batch.add((sample.domain, sample.sha256()))
        return PipelineResult(tuple(accepted), tuple(rejected), tuple(notes))
