"""Out of scope: a jurisdiction, legal source or article the index does not hold."""

from __future__ import annotations

import pytest

from twinloop.kernel.errors import ConfigError, InvalidInputError
from twinloop.serving.scope import (
    Catalog,
    check_jurisdiction,
    out_of_scope,
    parse_gazetteer,
)

CATALOG = Catalog({"law": frozenset({"EU", "DE"}), "med": frozenset()},
                  {"GDPR": frozenset(str(i) for i in range(1, 100)), "GG": frozenset({"1", "20", "90"}),
                   "BDSG 2018": frozenset({"1", "43"}), "BDSG 1990": frozenset({"4f", "43"})})

CASES = [
    # (question, jurisdiction, out of scope?, what the reason names)
    ("What does Article 150 GDPR say about fines?", None, True, "article 150 of GDPR"),
    ("Under US law, how fast must a breach be reported?", None, True, "US"),
    ("What does the CCPA require of a business?", None, True, "CCPA"),
    ("What is the German VAT rate on books?", None, True, "UStG"),
    ("Which punishment does the German criminal code set for theft?", None, True, "StGB"),
    ("What fines apply under the UK GDPR?", None, True, "UK GDPR"),
    ("Was regelt § 99 BDSG?", None, True, "article 99 of BDSG"),
    ("How long must a controller answer a request?", "US", True, "jurisdiction US"),
    ("How long must a controller answer a request?", "EU", False, None),
    ("Does the GDPR apply to a company in France?", None, False, None),  # a held source named
    ("What does Article 12 GDPR say?", None, False, None),
    ("Was regelt § 4f BDSG?", None, False, None),
    ("When must a breach be notified?", None, False, None),
]


@pytest.mark.parametrize(("question", "jurisdiction", "out", "names"), CASES, ids=[c[0][:40] for c in CASES])
def test_scope_rules(question, jurisdiction, out, names):
    verdict = out_of_scope(question, ["law"], CATALOG, jurisdiction)
    assert (verdict is not None) == out, verdict
    if out:
        assert names in verdict.reason


def test_domains_without_jurisdictions_are_never_out_of_scope():
    assert out_of_scope("What is the US dosage of aspirin?", ["med"], CATALOG) is None


@pytest.mark.parametrize(("value", "ok"), [("eu", "EU"), (" DE ", "DE"), ("US-CA", "US-CA"), (None, None)])
def test_jurisdiction_codes(value, ok):
    assert check_jurisdiction(value) == ok


@pytest.mark.parametrize("value", ["Narnia", "E", "EUROPE", "12", 5, "DE-TOOLONG"])
def test_bad_jurisdiction_names_the_value(value):
    with pytest.raises(InvalidInputError, match="jurisdiction = "):
        check_jurisdiction(value)


@pytest.mark.parametrize(("text", "says"), [
    ("jurisdictions: 3", "jurisdictions"),
    ("jurisdictions: {Narnia: [x]}", "Narnia"),
    ("jurisdictions: {DE: [germany]}\nsources: [{code: X, jurisdiction: FR, aliases: [x]}]", "FR"),
    ("jurisdictions: {DE: [germany]}\nsources: [{code: X}]", r"sources\[0\]"),
])
def test_bad_gazetteer_names_the_field(text, says):
    with pytest.raises(ConfigError, match=says):
        parse_gazetteer(text, "scope.yaml")


DATED = Catalog({"law": frozenset({"DE"})}, {"BDSG 2018": frozenset({"37", "43"}), "BDSG 1990": frozenset({"43"})},
                {"BDSG 2018": {"37": (("2018-05-25", None),), "43": (("2018-05-25", None),)},
                 "BDSG 1990": {"43": (("2009-08-14", "2018-05-25"),)}})

AS_OF_CASES = [
    # (question, as_of, out of scope?)
    ("Was bestimmte § 37 BDSG?", "2015-01-01", True),   # § 37 exists only in the 2018 edition
    ("Was bestimmte § 37 BDSG?", "2020-01-01", False),
    ("Was bestimmte § 43 BDSG?", "2015-01-01", False),  # the 1990 edition was in force then
    ("Was bestimmte § 43 BDSG?", None, False),
]


@pytest.mark.parametrize(("question", "as_of", "out"), AS_OF_CASES, ids=[f"{c[0][:20]}-{c[1]}" for c in AS_OF_CASES])
def test_an_article_must_be_held_in_an_edition_in_force_on_the_date(question, as_of, out):
    verdict = out_of_scope(question, ["law"], DATED, None, as_of=as_of)
    assert (verdict is not None) == out, verdict
    if out:
        assert as_of in verdict.reason and "37" in verdict.reason


def test_a_catalog_without_dates_says_nothing_about_editions():
    assert CATALOG.held_on("GDPR", "12", "2015-01-01") is None
    assert out_of_scope("What does Article 12 GDPR say?", ["law"], CATALOG, None, as_of="1990-01-01") is None
