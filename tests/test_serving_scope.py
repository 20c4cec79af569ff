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
    # German names the article "Artikel" and the law in the genitive ("des Grundgesetzes").
    ("Was regelt Artikel 147 des Grundgesetzes?", None, True, "article 147 of GG"),
    ("Was regelt Artikel 20 des Grundgesetzes?", None, False, None),
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


PARTS = Catalog({"law": frozenset({"EU", "DE"})},
                {"GDPR": frozenset({"10", "83"}), "BDSG 2018": frozenset({"4", "42"}), "BDSG 1990": frozenset({"4f"})},
                {"BDSG 2018": {"4": (("2018-05-25", None),)}, "BDSG 1990": {"4f": (("2001-05-23", "2018-05-25"),)}},
                {"GDPR": {"83": frozenset(str(i) for i in range(1, 10))},
                 "BDSG 2018": {"4": frozenset({"1", "2"}), "42": frozenset({"1", "2", "3"})}})

PARAGRAPH_CASES = [
    # (question, as_of, out of scope?, what the reason names)
    ("What does Article 83(10) GDPR provide on fines for public authorities?", None, True, "paragraph 10"),
    ("What does Article 83(5) GDPR provide?", None, False, None),
    ("What does Art. 83 paragraph 12 GDPR say?", None, True, "paragraph 12"),
    ("Welche Strafe sieht § 42 Abs. 4 BDSG vor?", None, True, "paragraph 4"),
    ("Welche Strafe sieht § 42 Abs. 1 BDSG vor?", None, False, None),
    ("What does Article 10(1) GDPR say?", None, False, None),   # stored whole: (1) is the article
    ("What does Article 10(2) GDPR say?", None, True, "paragraph 2"),
    # § 4f is the 1990 edition's; § 4 of the 2018 edition is another article, not its stand-in.
    ("Welche Pflichten enthält § 4f BDSG in der 2021 geltenden Fassung?", "2021-06-01", True, "4f"),
    ("Welche Pflichten enthielt § 4f BDSG?", "2015-06-01", False, None),
]


@pytest.mark.parametrize(("question", "as_of", "out", "names"), PARAGRAPH_CASES,
                         ids=[c[0][:40] for c in PARAGRAPH_CASES])
def test_a_paragraph_or_lettered_article_must_be_held_itself(question, as_of, out, names):
    verdict = out_of_scope(question, ["law"], PARTS, None, as_of=as_of)
    assert (verdict is not None) == out, verdict
    if out:
        assert names in verdict.reason


def test_a_source_with_no_edition_in_force_on_the_date_is_out_of_scope():
    gap = Catalog({"law": frozenset({"DE"})}, {"BDSG 2018": frozenset({"38"}), "BDSG 1990": frozenset({"4f"})},
                  {"BDSG 2018": {"38": (("2019-11-20", None),)}, "BDSG 1990": {"4f": (("2009-08-14", "2018-05-25"),)}})
    question = "Ab wie vielen Personen musste ein Unternehmen nach dem BDSG einen Datenschutzbeauftragten benennen?"
    verdict = out_of_scope(question, ["law"], gap, None, as_of="2018-12-01")
    assert verdict is not None and "2018-12-01" in verdict.reason
    for day in ("2017-01-01", "2020-01-01"):
        assert out_of_scope(question, ["law"], gap, None, as_of=day) is None


PINPOINT_CASES = [
    # (question, the (code, article) pairs it names in held sources)
    ("Wie viele Euro Geldstrafe sieht § 42 BDSG höchstens vor?", {("BDSG 2018", "42")}),
    ("What does Article 83(5) GDPR provide?", {("GDPR", "83")}),
    ("Welche Pflichten enthielt § 4f BDSG?", {("BDSG 1990", "4f")}),
    ("What does Article 150 GDPR say?", set()),            # not held: out of scope, not a pinpoint
    ("When must a breach be notified under the GDPR?", set()),  # a source without an article
    ("What does Article 12 of the CCPA say?", set()),      # not a held source
]


@pytest.mark.parametrize(("question", "pins"), PINPOINT_CASES, ids=[c[0][:40] for c in PINPOINT_CASES])
def test_pinpoints_name_the_held_provisions_a_question_asks_about(question, pins):
    from twinloop.serving.scope import pinpoints

    assert pinpoints(question, PARTS) == pins
