"""PII redaction: typed placeholders for personal data before anything is stored (paper §4.6).

Paper §4.6 asks for "pattern matching for emails, SSNs, phone numbers"; we add national
IDs, payment cards (Luhn-checked) and IBANs (ISO 13616 mod-97). Checksums matter here: the
corpora are full of numbers that must survive (``Art. 17(1)``, ``Regulation (EU) 2016/679``,
years, case numbers), so a digit run is only redacted when its shape *and* its checksum say it
is a card, an IBAN or an ID.

Patterns, in the order they run (a later one never sees an earlier one's placeholder digits):

==========================  ==================================================================
``[EMAIL]``                 local@domain.tld (Unicode letters allowed), then spelled-out forms
                            (``jane [at] example [dot] org``, ``john dot smith at gmail dot com``)
``[IP_ADDRESS]``            IPv6 (parsed by :mod:`ipaddress`) and IPv4 (octets ≤ 255, not after
                            ``Section``/``Version``/``see``) — :mod:`twinloop.kernel.pii_identifiers`
``[DATE_OF_BIRTH]``         a date behind a birth keyword (``born``, ``DOB``, ``geboren am``, ``né le``)
``[SSN]``, ``[PASSPORT]``   values a keyword names (``SSN 536 90 4399``, ``passport no. X1234567``)
``[IBAN]``                  2 letters, 2 check digits, 11–30 alphanumerics (spaces allowed); mod-97 = 1
``[CARD]``                  13–19 digits, optional single space/hyphen separators; Luhn-valid only
``[SSN]``                   US Social Security number, dashed ``AAA-GG-SSSS`` (area not 000/666/9xx,
                            group not 00, serial not 0000); undashed 9-digit runs only after ``SSN``
``[PHONE]``                 French pairs (``06 12 34 56 78``) and international (``+`` or ``00``, country
                            code, 8–15 digits in all, E.164)
``[NATIONAL_ID]``           UK National Insurance number (``QQ 12 34 56 C``, HMRC prefix rules) and
                            Canadian SIN (``046 454 286``, 3-3-3 digits, Luhn-valid)
``[PHONE]``                 NANP (``(555) 123-4567``, ``1-800-555-0199``) and trunk-prefixed national
                            numbers (``030 1234567``, ``020 7946 0958``, ``089/12345-678``)
``[ADDRESS]``               house number + street word, postcodes — :mod:`twinloop.kernel.pii_people`
``[PERSON]``                names after a title, a self-introduction, a form label or a closing
==========================  ==================================================================

National phone numbers must start with the trunk prefix 0 or be NANP-shaped with separators,
which is what keeps ``2016/679`` and ``1998`` out. Names, addresses and dates of birth are found
by the words around them, not by a model; :mod:`twinloop.kernel.pii_people` says what that misses.
``benchmarks/pii.py`` measures recall per category and the false-positive rate on ordinary
legal/medical/financial questions (``packs/eval/pii_strings.jsonl``; ``docs/bench/pii.md``).

Why our own patterns rather than Presidio's: ``presidio-analyzer`` installs offline from PyPI and
its pattern recognizers do run without an NLP model (``recognizer.analyze(text, entities,
nlp_artifacts=None)``), but (measured here, presidio-analyzer 2.2.366) the package pulls in spaCy
and 18 other packages (~375 MB), its import takes ~6 s, its e-mail check (tldextract) tries to
fetch the public-suffix list over the network, and the recognizers for the categories we were
missing are unusable without the model: passport recognizers score 0.05 until NLP-based context
enhancement lifts them, the date recognizer cannot tell a birth date from ``25 May 2018``,
and there is no address or name recognizer apart from the spaCy/transformer NER ones. Its IP
recognizer is a regex plus validation, which :mod:`ipaddress` gives us from the standard library.
When ``presidio_analyzer`` *with* a working NLP engine is installed it still runs as well, after the
patterns, and its entities become ``[<ENTITY_TYPE>]``; with ``use_presidio=None`` an engine that
cannot be built (no spaCy model, no network to download one) is skipped rather than fatal.
"""

from __future__ import annotations

import importlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from twinloop.kernel.errors import ConfigError
from twinloop.kernel.pii_identifiers import (
    IDENTIFIER_RULES,
    KEYWORD_RULES,
    PHONE_RULES,
    Rule,
)
from twinloop.kernel.pii_people import ADDRESS_RULES, DOB_RULES, PERSON_RULES

PLACEHOLDERS = ("EMAIL", "IP_ADDRESS", "DATE_OF_BIRTH", "IBAN", "CARD", "SSN", "PASSPORT", "NATIONAL_ID", "PHONE",
                "ADDRESS", "PERSON")


def luhn_valid(digits: str) -> bool:
    """Luhn (mod 10) check used by payment cards (ISO/IEC 7812) and Canadian SINs."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: move the first four characters to the end, letters to 10..35, mod 97 == 1."""
    s = iban.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s.isalnum() or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# Letters beyond ASCII on both sides: internationalised addresses (RFC 6531) such as
# "info@müller-bäckerei.de" are ordinary in the German and French feedback.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.%+-]+@[^\W_][\w-]*(?:\.[\w-]+)*\.[^\W\d_]{2,}\b")
# Groups of up to four after the check digits, as IBANs are printed; validated (and trimmed
# from the right, see _iban) because a trailing capitalised word would otherwise be swallowed.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{1,4}){3,8}\b")
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d])")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_NINO = re.compile(r"\b(?!BG|GB|KN|NK|NT|TN|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_SIN = re.compile(r"(?<![\d-])\d{3}[ -]\d{3}[ -]\d{3}(?![\d-])")
_PHONE_INTL = re.compile(r"(?<![\w+])(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\d])")
# A leading country code 1 ("1-800-555-0199") is part of the number, not a reason to skip it.
_PHONE_NANP = re.compile(r"(?<![\d-])(?<!\d[ .])(?:\+?1[ .-])?(?:\(\d{3}\)\s?|\d{3}[.-])\d{3}[ .-]\d{4}(?![\d-])")
# An extension after a hyphen ("089/12345-678") belongs to the number.
_PHONE_NATIONAL = re.compile(r"(?<![\d/.-])(?<!\d )(?:\(0\d{2,4}\)|0\d{2,4})[ /.-]?\d{3,4}(?:[ .-]?\d{2,5})?(?:-\d{1,5})?"
                             r"(?![\d/])")


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _iban(m: re.Match[str]) -> str | None:
    # Trim trailing space-separated groups until the checksum holds ("DE89 3704 ... 00 THE").
    text = m.group(0)
    while text:
        if iban_valid(text):
            return "[IBAN]" + m.group(0)[len(text):]
        if " " not in text:
            return None
        text = text.rsplit(" ", 1)[0]
    return None


def _card(m: re.Match[str]) -> str | None:
    d = _digits(m.group(0))
    return "[CARD]" if 13 <= len(d) <= 19 and luhn_valid(d) else None


def _sin(m: re.Match[str]) -> str | None:
    return "[NATIONAL_ID]" if luhn_valid(_digits(m.group(0))) else None


def _phone_intl(m: re.Match[str]) -> str | None:
    n = len(_digits(m.group(0)))
    return "[PHONE]" if 8 <= n <= 15 else None


def _phone_national(m: re.Match[str]) -> str | None:
    n = len(_digits(m.group(0)))
    return "[PHONE]" if 9 <= n <= 12 else None


# Private-use code points (no digits, no letters) mark spans set aside during redaction.
_KEEP_OPEN, _KEEP_CLOSE, _KEEP_BASE = "\ue000", "\ue001", 0xF0000
_KEPT = re.compile(f"{_KEEP_OPEN}(.){_KEEP_CLOSE}")



def _restore(m: re.Match[str], kept: list[str]) -> str:
    i = ord(m.group(1)) - _KEEP_BASE
    return kept[i] if 0 <= i < len(kept) else m.group(0)  # a marker that was in the input


RULES: tuple[Rule, ...] = (
    ("EMAIL", _EMAIL, lambda m: "[EMAIL]"),
    *IDENTIFIER_RULES,  # obfuscated e-mails, IPv6, IPv4: before any digit rule splits them
    *DOB_RULES,
    *KEYWORD_RULES,  # SSN/passport named by a keyword: "passport AB123456" is IBAN-shaped
    ("IBAN", _IBAN, _iban),  # an IBAN-shaped run failing mod-97 is kept whole, see redact()
    ("CARD", _CARD, _card),
    ("SSN", _SSN, lambda m: "[SSN]"),
    *PHONE_RULES,  # French numbers in pairs, before the SIN can take "06 12 34 56 78" apart
    # International numbers before the SIN: "+34 612 345 678" is 3-3-3 digits and Luhn-valid.
    ("PHONE", _PHONE_INTL, _phone_intl),
    ("NATIONAL_ID", _NINO, lambda m: "[NATIONAL_ID]"),
    ("NATIONAL_ID", _SIN, _sin),
    ("PHONE", _PHONE_NANP, lambda m: "[PHONE]"),
    ("PHONE", _PHONE_NATIONAL, _phone_national),
    *ADDRESS_RULES,
    *PERSON_RULES,
)
"""(placeholder, pattern, replacement or None to keep the match), applied in order."""


@dataclass(frozen=True)
class Redaction:
    """A redacted text and how many of each placeholder were inserted."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)


class PiiRedactor:
    """Replaces personal data with typed placeholders; pure apart from an optional Presidio engine.

    Args:
        use_presidio: ``None`` (default) runs Presidio when ``presidio_analyzer`` is importable;
            ``True`` requires it; ``False`` never uses it.
        language: Language passed to Presidio's analyzer.

    Raises:
        ConfigError: ``use_presidio=True`` and ``presidio_analyzer`` is not installed.
    """

    def __init__(self, use_presidio: bool | None = None, language: str = "en") -> None:
        self.language = language
        self._analyzer: Any = None
        if use_presidio is not False:
            try:
                presidio = importlib.import_module("presidio_analyzer")
            except ImportError as e:
                if use_presidio:
                    raise ConfigError("use_presidio=True but presidio_analyzer is not installed "
                                      "(pip install presidio-analyzer)") from e
            else:
                try:
                    self._analyzer = presidio.AnalyzerEngine()
                except Exception as e:  # no spaCy model and no network: AnalyzerEngine downloads one
                    if use_presidio:
                        raise ConfigError(f"use_presidio=True but Presidio's AnalyzerEngine failed: {e!r} "
                                          "(install a spaCy model, e.g. en_core_web_lg)") from e

    @property
    def uses_presidio(self) -> bool:
        """Whether Presidio runs after the built-in patterns."""
        return self._analyzer is not None

    def redact(self, text: str) -> Redaction:
        """Return ``text`` with every recognised PII span replaced by its placeholder."""
        counts: Counter[str] = Counter()
        kept: list[str] = []
        for name, pattern, replace in RULES:
            def sub(m: re.Match[str], name: str = name, replace=replace) -> str:
                out = replace(m)
                if out is None:
                    if name != "IBAN":
                        return m.group(0)
                    # An IBAN-shaped run that fails mod-97 is set aside whole, so the phone
                    # patterns cannot take "0044 0532..." out of its middle as "+44 ...".
                    kept.append(m.group(0))
                    return f"{_KEEP_OPEN}{chr(_KEEP_BASE + len(kept) - 1)}{_KEEP_CLOSE}"
                counts[name] += 1
                return out
            text = pattern.sub(sub, text)
        text = _KEPT.sub(lambda m: _restore(m, kept), text)
        if self._analyzer is not None:
            text = self._presidio(text, counts)
        return Redaction(text, dict(counts))

    def _presidio(self, text: str, counts: Counter[str]) -> str:
        results = self._analyzer.analyze(text=text, language=self.language)
        # Replace right to left so earlier offsets stay valid; skip spans overlapping a kept one.
        spans = sorted(((r.start, r.end, r.entity_type) for r in results), key=lambda s: (-s[0], s[0] - s[1]))
        last_start = len(text) + 1
        for start, end, kind in spans:
            if end > last_start or text[start:end].startswith("[") and text[start:end].endswith("]"):
                continue
            text = text[:start] + f"[{kind}]" + text[end:]
            counts[kind] += 1
            last_start = start
        return text
