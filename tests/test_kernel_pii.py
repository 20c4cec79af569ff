"""PII redaction by category (paper §4.6, docs/DESIGN.md "Learning"): every category the
redactor knows is replaced by its typed placeholder with the cue word kept, ordinary legal,
medical and financial text comes back unchanged, and on the eval set
(``packs/eval/pii_strings.jsonl``) recall per category stays ≥ 0.9 with ≤ 5 % of negatives changed."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from twinloop.kernel.pii import PLACEHOLDERS, PiiRedactor

EVAL = Path(__file__).resolve().parents[1] / "src" / "twinloop" / "packs" / "eval" / "pii_strings.jsonl"
CATEGORIES = {"email", "email_obfuscated", "phone", "iban", "card", "ssn", "passport", "address", "person",
              "date_of_birth", "ipv4", "ipv6", "none"}


@pytest.fixture(scope="module")
def redactor():
    return PiiRedactor(use_presidio=False)


# --- (id, text, must disappear, expected output) ---------------------------------------------

CASES = [
    ("email_unicode_domain", "an info@bäckerei-köhler.de schreiben", ["info@bäckerei-köhler.de"],
     "an [EMAIL] schreiben"),
    ("email_obf_words", "reach me: paul dot weller at example dot co dot uk", ["paul", "weller", "example"],
     "reach me: [EMAIL]"),
    ("email_obf_brackets", "an.na[at]web[dot]de bitte", ["an.na", "web"], "[EMAIL] bitte"),
    ("email_obf_french", "jeanne (arobase) free (point) fr", ["jeanne", "free"], "[EMAIL]"),
    ("ipv4", "blocked 91.198.174.192 today", ["91.198.174.192"], "blocked [IP_ADDRESS] today"),
    ("ipv4_with_port", "proxy 10.20.30.40:3128", ["10.20.30.40"], "proxy [IP_ADDRESS]:3128"),
    ("ipv6_compressed", "from 2001:db8:0:1::5 ok", ["2001:db8:0:1::5"], "from [IP_ADDRESS] ok"),
    ("ipv6_full_then_dot", "host fd00:1:2:3:4:5:6:7.", ["fd00:1:2:3:4:5:6:7"], "host [IP_ADDRESS]."),
    ("dob_en_slash", "I was born 01/02/1970.", ["01/02/1970"], "I was born [DATE_OF_BIRTH]."),
    ("dob_iso", "DOB: 1970-02-01", ["1970-02-01"], "DOB: [DATE_OF_BIRTH]"),
    ("dob_de_words", "geboren am 9. Oktober 1961", ["9. Oktober 1961"], "geboren am [DATE_OF_BIRTH]"),
    ("dob_fr", "née le 3 mars 1944", ["3 mars 1944"], "née le [DATE_OF_BIRTH]"),
    ("passport_en", "passport number 120938475", ["120938475"], "passport number [PASSPORT]"),
    ("passport_de", "Reisepassnummer C7H2J4K9L", ["C7H2J4K9L"], "Reisepassnummer [PASSPORT]"),
    ("passport_fr", "passeport n° 21CD98765", ["21CD98765"], "passeport n° [PASSPORT]"),
    ("ssn_spaced_named", "SSN 212 67 1034", ["212 67 1034"], "SSN [SSN]"),
    ("phone_fr_pairs", "tél. 07 98 76 54 32", ["07 98 76 54 32"], "tél. [PHONE]"),
    ("phone_nanp_country", "dial 1-888-555-0123", ["555-0123"], "dial [PHONE]"),
    ("address_uk", "at 3 Mill Lane, Cambridge CB2 1RX", ["3 Mill Lane", "CB2 1RX"],
     "at [ADDRESS], Cambridge [ADDRESS]"),
    ("address_de", "Kastanienweg 14b, 01069 Dresden", ["Kastanienweg 14b", "01069"], "[ADDRESS] Dresden"),
    ("address_de_hyphen", "Rosa-Luxemburg-Straße 2", ["Rosa-Luxemburg-Straße 2"], "[ADDRESS]"),
    ("address_fr", "au 9 rue du Bac, 75007 Paris", ["9 rue du Bac", "75007"], "au [ADDRESS] Paris"),
    ("address_us_zip", "100 Main Street, Austin, TX 78701", ["100 Main Street", "78701"],
     "[ADDRESS], Austin, TX [ADDRESS]"),
    ("person_title", "Dr. Helen Park called", ["Helen", "Park"], "Dr. [PERSON] called"),
    ("person_title_chain_hyphen", "Frau Prof. Dr. Ute Lang-Meier", ["Ute", "Lang-Meier"], "Frau Prof. Dr. [PERSON]"),
    ("person_herr", "Herr Özdemir rief an", ["Özdemir"], "Herr [PERSON] rief an"),
    ("person_intro_en", "my name is Grace Hopper, hi", ["Grace", "Hopper"], "my name is [PERSON], hi"),
    ("person_intro_de", "ich heiße Jan Kowalski", ["Jan", "Kowalski"], "ich heiße [PERSON]"),
    ("person_intro_fr", "je m'appelle Léa Girard", ["Léa", "Girard"], "je m'appelle [PERSON]"),
    ("person_particle", "Mr. van der Merwe agreed", ["Merwe"], "Mr. [PERSON] agreed"),
    ("person_signature", "Kind regards,\nNora Quinn", ["Nora", "Quinn"], "Kind regards,\n[PERSON]"),
    ("person_signature_de", "Viele Grüße\nFinn", ["Finn"], "Viele Grüße\n[PERSON]"),
    ("person_label", "Patient: Omar Haddad, 61", ["Omar", "Haddad"], "Patient: [PERSON], 61"),
]


@pytest.mark.parametrize(("text", "secrets", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_category_redacted_to_typed_placeholder(redactor, text, secrets, expected):
    red = redactor.redact(text)
    assert red.text == expected
    assert not [s for s in secrets if s in red.text]
    assert red.counts and set(red.counts) <= set(PLACEHOLDERS)


NEGATIVES = [
    ("article_hours", "Article 33 GDPR: notify within 72 hours."),
    ("bdsg", "Was regelt § 42 BDSG?"),
    ("amount", "Net sales were $13,428 million in 2019."),
    ("regulation_date", "The GDPR applies from 25 May 2018."),
    ("date_without_birth", "The firm was founded on 14/03/1985."),
    ("born_no_date", "Patients born after 1 January 1990 were excluded."),
    ("company", "Is Sealed Air's debt covenant at risk?"),
    ("drug", "Metformin 500 mg and Ibuprofen 400 mg daily."),
    ("disease", "Does Crohn's disease raise colorectal cancer risk?"),
    ("version_number", "Section 1.2.3.4 and version 10.0.0.1 of the spec."),
    ("clock_and_ratio", "From 09:00:00 to 17:30, ratio 3:2."),
    ("street_count", "Top 10 Wall Street banks paid fines."),
    ("book_title", "Ist 'Der Herr der Ringe' geschützt?"),
    ("german_noun_number", "Im Jahr 2019 stieg der Umsatz um 12 Prozent."),
    ("road_act", "Section 12 of the Road Traffic Act 1988 applies."),
    ("french_law", "Loi Informatique et Libertés du 6 janvier 1978, article 1240 du Code civil."),
]


@pytest.mark.parametrize("text", [c[1] for c in NEGATIVES], ids=[c[0] for c in NEGATIVES])
def test_ordinary_text_untouched(redactor, text):
    red = redactor.redact(text)
    assert red.text == text and red.counts == {}


def _eval_rows() -> list[dict]:
    return [json.loads(line) for line in EVAL.read_text("utf-8").splitlines() if line.strip()]


def test_eval_set_shape():
    rows = _eval_rows()
    assert len(rows) >= 200 and len({r["id"] for r in rows}) == len(rows)
    assert {r["category"] for r in rows} == CATEGORIES
    assert sum(r["category"] == "none" for r in rows) >= 60
    assert {"en", "de", "fr"} <= {r["lang"] for r in rows}
    for r in rows:
        assert all(p in r["text"] for p in r["pii"]), r["id"]
        assert bool(r["pii"]) == (r["category"] != "none"), r["id"]


def test_eval_recall_and_false_positive_rate(redactor):
    hit: dict[str, list[bool]] = defaultdict(list)
    for r in _eval_rows():
        out = redactor.redact(r["text"]).text
        hit[r["category"]].append(out != r["text"] if r["category"] == "none"
                                  else not any(p in out for p in r["pii"]))
    recall = {c: sum(v) / len(v) for c, v in hit.items() if c != "none"}
    assert {c: x for c, x in recall.items() if x < 0.9} == {}
    assert sum(hit["none"]) / len(hit["none"]) <= 0.05


def test_presidio_engine_without_model_is_skipped_unless_required(monkeypatch):
    import sys
    import types

    class Engine:
        def __init__(self):
            raise OSError("no spaCy model en_core_web_lg and no network")

    monkeypatch.setitem(sys.modules, "presidio_analyzer", types.SimpleNamespace(AnalyzerEngine=Engine))
    assert PiiRedactor().uses_presidio is False
    from twinloop.kernel.errors import ConfigError
    with pytest.raises(ConfigError, match="en_core_web_lg"):
        PiiRedactor(use_presidio=True)
