"""Filter stages between feedback intake and storage (paper §4.6).

Each stage is a small strategy object with ``name`` and
``apply(sample, ctx) -> FilterResult``. A stage returns either a (possibly redacted) new
:class:`Sample` or a :class:`Rejection` naming the stage and reason; it never mutates the sample,
the context or another stage. :class:`FilterPipeline` runs the stages in order and is the only
thing that records what a batch has accepted so far.

Default order (:func:`default_stages`): schema → PII redaction → dedup → injection/poison →
toxicity. The paper lists dedup before PII; we redact first so the stored SHA-256 is the hash of
the stored (redacted) text — no hash of personal data is kept, the column can be re-verified
from the row, and two samples differing only in an email address are one sample.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from twinloop.kernel.errors import ConfigError
from twinloop.kernel.pii import PiiRedactor
from twinloop.kernel.toxicity import (  # noqa: F401  (part of the filter API)
    DEFAULT_CLASSIFIER_THRESHOLD,
    DEFAULT_TOXICITY_THRESHOLD,
    ToxicityScorer,
    WordList,
)
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
        reason: A short machine-readable code ("duplicate", "unknown_domain", the rule name).
        detail: One human-readable line naming the bad value.
    """

    sample: Sample
    stage: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class FilterResult:
    """Exactly one of ``sample`` (passed, maybe redacted) or ``rejection``."""

    sample: Sample | None = None
    rejection: Rejection | None = None

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


def _reject(sample: Sample, stage: str, reason: str, detail: str) -> FilterResult:
    return FilterResult(rejection=Rejection(sample, stage, reason, detail))


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


_I = re.IGNORECASE
INJECTION_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # Instruction override. The qualifier is required: "courts may not ignore the rules" is law.
    ("ignore_instructions", re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|the|of|your|these|my)\s+)*"
        r"(?:previous|prior|above|earlier|preceding|system|original|safety|initial)\s+"
        r"(?:instructions?|prompts?|rules|guidelines|directions|directives|context)\b"
        r"|\b(?:ignore|disregard|forget)\s+(?:all|everything)\s+(?:you\s+were\s+told|above|before)\b", _I)),
    # Role hijack. Bare "you are now" is everyday prose ("you are now entitled to a refund"),
    # so it needs a persona or a freed state after it.
    ("role_override", re.compile(
        r"\byou\s+are\s+now\s+(?:an?\s+|in\s+)?(?:dan|jailbroken|unrestricted|unfiltered|uncensored|evil|"
        r"developer\s+mode|god\s+mode|no\s+longer\s+(?:bound|restricted|an?\s+(?:ai|assistant)))"
        r"|\bfrom\s+now\s+on,?\s+you\s+(?:are|will|must)\s+(?:an?\s+)?(?:dan|answer\s+without|ignore|"
        r"not\s+follow|act\s+as)"
        r"|\b(?:pretend|imagine)\s+(?:that\s+)?you\s+(?:are|have)\s+(?:no|without)\s+"
        r"(?:restrictions|rules|guidelines|filters|limits)"
        r"|\b(?:dan|developer|jailbreak)\s+mode\b|\bjailbreak(?:ing)?\s+(?:prompt|the\s+(?:model|ai|assistant))", _I)),
    ("system_prompt_exfiltration", re.compile(
        r"\b(?:reveal|print|show|repeat|output|display|leak|dump|recite|tell\s+me)\b[^.\n]{0,40}?"
        r"\b(?:system|hidden|initial|original|secret)\s+(?:prompt|instructions?|message)"
        r"|\bwhat\s+(?:is|are|were)\s+your\s+(?:system\s+|initial\s+|original\s+)?(?:prompt|instructions)\b", _I)),
    # Chat-template control tokens (ChatML, Llama 2/3, generic) let a sample forge turns.
    ("chat_template_token", re.compile(
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id|"
        r"begin_of_text|end_of_text|eom_id|pad)\|>|\[/?INST\]|<<\/?SYS>>|</s>")),
    # Text a reviewer would not see: zero-width and bidi controls, Unicode tag characters
    # (ASCII smuggling), HTML comments, CSS-hidden spans.
    ("hidden_instructions", re.compile(
        "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\U000e0000-\U000e007f]"
        r"|<!--.*?-->|style\s*=\s*[\"'][^\"']*(?:display\s*:\s*none|font-size\s*:\s*0|visibility\s*:\s*hidden)",
        re.IGNORECASE | re.DOTALL)),
    ("executable_url", re.compile(
        r"\b(?:https?|ftp)://[^\s\"'<>]+?\.(?:exe|msi|bat|cmd|scr|ps1|vbs|jar|apk|dll|sh|bin|dmg|pkg|deb|rpm|"
        r"hta|lnk|iso|elf|com)(?=$|[?#\s\"'<>)\],;])", _I)),
    ("malware_keyword", re.compile(
        r"\b(?:meterpreter|mimikatz|msfvenom|cobalt\s*strike\s+beacon|reverse\s+shell|bind\s+shell|"
        r"keylogger\s+(?:code|script|payload)|eicar-standard-antivirus-test-file)\b"
        r"|\b(?:curl|wget)\s[^|\n]{1,300}\|\s*(?:sudo\s+)?(?:ba|z)?sh\b|\brm\s+-rf\s+/(?:\s|$|\*)"
        r"|\bpowershell(?:\.exe)?\s+(?:-\w+\s+)*-(?:e|enc|encodedcommand)\s|\bnc(?:at)?\s+-e\s"
        r"|\beval\s*\(\s*(?:base64_decode|atob|gzinflate)|/bin/(?:ba)?sh\s+-i\b|;\s*drop\s+table\b", _I)),
)
"""(rule name, pattern) for prompt-injection and poisoning (paper §4.6 step 4)."""

_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=])[A-Za-z0-9+/]{64,}={0,2}(?![A-Za-z0-9+/=])")


def _base64_blob(text: str) -> bool:
    # 64+ characters from the base64 alphabet with no space, mixing upper, lower and digits:
    # no word, number or hex digest (lowercase only) looks like that; an encoded payload does.
    for m in _BASE64.finditer(text):
        s = m.group(0)
        if any(c.isupper() for c in s) and any(c.islower() for c in s) and any(c.isdigit() for c in s):
            return True
    return False


class InjectionFilter:
    """Rejects prompt-injection and poisoning patterns; the reason is the matched rule's name.

    Args:
        rules: ``(name, pattern)`` pairs (default :data:`INJECTION_RULES`); ``base64_blob`` is
            checked in addition unless ``check_base64=False``.
    """

    name = "injection"

    def __init__(self, rules: Iterable[tuple[str, re.Pattern[str]]] = INJECTION_RULES, *,
                 check_base64: bool = True) -> None:
        self.rules = tuple(rules)
        self.check_base64 = check_base64

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        for attr in ("prompt", "target"):
            text = getattr(sample, attr)
            for rule, pattern in self.rules:
                if pattern.search(text):
                    return _reject(sample, self.name, rule, f"{attr} matches injection rule {rule!r}")
            if self.check_base64 and _base64_blob(text):
                return _reject(sample, self.name, "base64_blob", f"{attr} holds a base64 blob")
        return FilterResult(sample=sample)


class ToxicityFilter(ToxicityScorer):
    """Rejects toxic samples (paper §4.6 step 5): the worse of prompt and target is scored by
    the kernel's :class:`~twinloop.kernel.toxicity.ToxicityScorer` (same arguments)."""

    name = "toxicity"

    def apply(self, sample: Sample, ctx: FilterContext) -> FilterResult:
        score = max(self.score(sample.prompt), self.score(sample.target))
        if score > self.threshold:
            return _reject(sample, self.name, "toxic", f"toxicity {score:.2f} above threshold {self.threshold:.2f}")
        return FilterResult(sample=sample)


def default_stages(domains: Collection[str] | None = None, *, redactor: PiiRedactor | None = None,
                   toxicity: ToxicityFilter | None = None) -> list[FilterStage]:
    """Schema → PII → dedup → injection → toxicity (order explained in the module docstring)."""
    return [SchemaFilter(domains), PiiFilter(redactor), DedupFilter(), InjectionFilter(),
            toxicity or ToxicityFilter()]


@dataclass(frozen=True)
class PipelineResult:
    """What a batch came to: accepted (redacted) samples and rejections, in input order."""

    accepted: tuple[Sample, ...] = ()
    rejected: tuple[Rejection, ...] = ()


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
        base = FilterContext(domains=frozenset(domains), seen=seen or FilterContext.seen)
        for sample in samples:
            ctx = dataclasses.replace(base, batch=frozenset(batch))
            for stage in self.stages:
                result = stage.apply(sample, ctx)
                if result.rejection is not None:
                    rejected.append(result.rejection)
                    break
                assert result.sample is not None
                sample = result.sample
            else:
                accepted.append(sample)
                batch.add((sample.domain, sample.sha256()))
        return PipelineResult(tuple(accepted), tuple(rejected))
