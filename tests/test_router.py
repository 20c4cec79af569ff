"""Router: prototypes, τ, keyword rules with priorities, multi-domain, fallback, hashable spec."""

from __future__ import annotations

import pytest

from twinloop.kernel.config import RouterConfig
from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.domains import DomainSpec, KeywordRule
from twinloop.routing import Router, RouterSpec

SPECS = [
    DomainSpec(name="law", description="Law, statutes, courts, contracts, legal rights and obligations.",
               examples=("Can my landlord evict me without notice?", "What does article 6 of the GDPR require?",
                         "How do I sue for breach of contract?"),
               rules=(KeywordRule(pattern=r"\bGDPR\b", priority=10),)),
    DomainSpec(name="med", description="Medicine, diseases, symptoms, treatments, drugs and health.",
               examples=("What are the symptoms of diabetes?", "Is ibuprofen safe during pregnancy?",
                         "How is pneumonia treated?"),
               rules=(KeywordRule(pattern=r"\bdiagnos\w*", priority=5),)),
    DomainSpec(name="fin", description="Finance, accounting, company reports, revenue, tax and investments.",
               examples=("What was the company's revenue growth?", "How is EBITDA calculated?",
                         "What is the dividend yield?")),
    DomainSpec(name="general", description="Everyday questions, trivia, small talk, cooking, travel.",
               examples=("What's a good recipe for pancakes?", "Tell me a joke", "What is the tallest mountain?")),
]


@pytest.fixture(scope="module")
def router(embedder):
    return Router(RouterSpec.from_domains(SPECS, RouterConfig()), embedder)


@pytest.mark.parametrize(
    ("query", "primary"),
    [
        ("Can my landlord keep my deposit after I move out?", "law"),
        ("What are the symptoms and treatment of asthma?", "med"),
        ("How much net income did the firm report last quarter?", "fin"),
        ("How long should I boil an egg?", "general"),
        ("Does the GDPR apply to my bakery's mailing list?", "law"),
    ],
)
def test_primary_domain(router, query, primary):
    d = router.route(query)
    assert d.primary == primary, d.scores
    assert set(d.scores) == set(d.similarity) == {"law", "med", "fin", "general"}
    assert abs(sum(d.scores.values()) - 1.0) < 1e-3


def test_rule_activates_and_outranks(router):
    d = router.route("diagnosis codes under GDPR")
    assert d.domains[0] == "law", "the priority-10 rule ranks first"
    assert "med" in d.domains
    assert {m.domain for m in d.rules} == {"law", "med"}


def test_low_confidence_falls_back_to_general(router):
    d = router.route("xqzv blorp")
    assert d.domains == ["general"] and d.fallback


def test_spec_is_serialisable_and_hashable(embedder):
    a = RouterSpec.from_domains(SPECS, RouterConfig())
    b = RouterSpec.from_json(a.to_json())
    assert a == b and a.digest == b.digest and hash(a) == hash(b)
    c = RouterSpec.from_domains(SPECS, RouterConfig(tau=0.45))
    assert c.digest != a.digest, "any change of configuration changes the identity"


def test_needs_fallback_domain_and_valid_query(router):
    with pytest.raises(InvalidInputError, match="fallback domain 'general'"):
        RouterSpec.from_domains(SPECS[:3], RouterConfig())
    with pytest.raises(InvalidInputError, match="non-empty"):
        router.route("  ")


def test_bad_rule_pattern_is_rejected():
    with pytest.raises(ValueError, match="regular expression"):
        KeywordRule(pattern="([unclosed")
