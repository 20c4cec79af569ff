"""Identifier rules for :mod:`twinloop.kernel.pii`: IP addresses, passports, SSNs named as such,
obfuscated e-mail addresses and French phone numbers (paper §4.6, docs/DESIGN.md "Learning").

Each rule is ``(placeholder, pattern, replace)`` as in :data:`twinloop.kernel.pii.RULES`:
``replace(match)`` returns the text to put in place of the whole match, or ``None`` to keep it.
Where a keyword decides (``passport no.``, ``SSN``), the keyword stays and only the value goes,
so a reader of the stored text still knows what was there.

Validation is what keeps the legal and financial corpora intact: an IPv4 candidate must have
four octets ≤ 255 and not follow ``Section``/``Version``/``Clause`` (``clause 4.1.2.3``), an
IPv6 one must parse (:mod:`ipaddress`) and hold a digit (``12:30:45`` and ``3:2`` never parse),
and an obfuscated e-mail must end in a known top-level domain behind a spelled-out dot.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

Rule = tuple[str, re.Pattern[str], Callable[[re.Match[str]], "str | None"]]
"""(placeholder, pattern, replacement or None to keep the match)."""

# --- IP addresses ---------------------------------------------------------------------------

_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
# Dotted numbering in statutes, standards and software is the only common lookalike.
_NUMBERING = re.compile(r"(?i)(?:\b(?:version|ver|v|section|sec|clause|chapter|chap|para|paragraph|art|article|"
                        r"table|figure|fig|rule|item|annex|appendix|step|no|nr|see|cf|siehe|voir)\.?|§|\bv)\s*$")
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\w)")


def _ipv4(m: re.Match[str]) -> str | None:
    octets = [int(o) for o in m.group(0).split(".")]
    if octets[0] == 0 or any(o > 255 for o in octets):
        return None
    if _NUMBERING.search(m.string[max(0, m.start() - 20):m.start()]):
        return None
    return "[IP_ADDRESS]"


def _ipv6(m: re.Match[str]) -> str | None:
    text = m.group(0)
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    # "a::b" parses but is not an address anyone writes; real ones carry digits.
    return "[IP_ADDRESS]" if any(c.isdigit() for c in text) else None


# --- E-mail written to dodge a pattern ("jane [at] example [dot] org") ---------------------

_TLDS = ("com|org|net|edu|gov|int|mil|info|biz|io|co|me|eu|uk|de|fr|at|ch|nl|be|lu|li|es|it|pt|ie|pl|se|no|dk|fi"
         "|cz|us|ca|au|nz|jp|in|br|ru|ai|app|dev")
# A spelled-out "@" / "." either bracketed ("[at]", "(dot)", "{at}", "<at>") or as a word between
# spaces ("at", "arobase", "punkt"); a bare " . " or " @ " with spaces counts as well.
_AT = r"(?:\s*[\[({<]\s*(?i:at|@|ät|arobase|chez)\s*[\])}>]\s*|\s+(?i:at|arobase|ät|@)\s+)"
_DOT = r"(?:\s*[\[({<]\s*(?i:dot|punkt|point|\.)\s*[\])}>]\s*|\s+(?i:dot|punkt|point)\s+|\s+\.\s+)"
_LOCAL = r"[^\W_][\w.+-]*"
_LABEL = r"[^\W_][\w-]*"
# Chains are bounded: unbounded ones make "a dot a dot …" quadratic in the text's length.
_EMAIL_OBF = re.compile(rf"(?<![\w.+-]){_LOCAL}(?:{_DOT}{_LOCAL}){{0,4}}{_AT}{_LABEL}(?:{_DOT}{_LABEL}){{0,4}}{_DOT}"
                        rf"(?i:{_TLDS})\b(?![.\-]\w)")

# --- Passports, and SSNs written without dashes, where a keyword names them ----------------

_PASSPORT = re.compile(
    r"(?P<lead>\b(?i:passport|passeport|pasaporte|passaporto|paspoort|reisepass(?:nummer|nr\.?)?|pass-?nr\.?"
    r"|passnummer)"
    r"(?:[ \t]*(?:[:#)(]|n[°º]|(?i:number|num[ée]ro|no|nr|n|id|lautet|is|est|ist|es|è)\b\.?))*[ \t]*)"
    r"(?P<value>(?=[A-Z0-9]*\d)[A-Z0-9]{6,10}|\d{3}[ -]\d{3}[ -]\d{3})\b(?![-/.]\d)")
_SSN_NAMED = re.compile(
    r"(?P<lead>\b(?i:ssn|social security(?:[ \t]+(?:number|no\.?|#))?)[ \t]*[:#]?[ \t]*)"
    r"(?P<value>(?!000|666|9\d\d)\d{3}([ -]?)(?!00)\d{2}\3(?!0000)\d{4})(?![\d-])")


def keep_lead(placeholder: str) -> Callable[[re.Match[str]], str]:
    """A replacement that keeps the cue before the value ("born ", "passport no. ") and
    puts ``placeholder`` where the value was."""
    return lambda m: m.group("lead") + placeholder


# --- French numbers in pairs ("06 12 34 56 78"), which the trunk-prefix rule cannot split ---

_PHONE_FR = re.compile(r"(?<![\d/.,-])0[1-9](?P<sep>[ .-]?)\d{2}(?:(?P=sep)\d{2}){3}(?![\d/])")


IDENTIFIER_RULES: tuple[Rule, ...] = (
    ("EMAIL", _EMAIL_OBF, lambda m: "[EMAIL]"),
    ("IP_ADDRESS", _IPV6, _ipv6),  # before IPv4: "::ffff:192.0.2.128" is one address
    ("IP_ADDRESS", _IPV4, _ipv4),
)
"""Run right after plain e-mails, before any digit rule can take an octet or a group."""

KEYWORD_RULES: tuple[Rule, ...] = (
    ("SSN", _SSN_NAMED, keep_lead("[SSN]")),
    ("PASSPORT", _PASSPORT, keep_lead("[PASSPORT]")),
)
"""Run before IBANs and national IDs: "passport AB123456" is IBAN-shaped (and set aside whole
when mod-97 fails), "passport 545 123 987" is SIN-shaped."""

PHONE_RULES: tuple[Rule, ...] = (("PHONE", _PHONE_FR, lambda m: "[PHONE]"),)
"""Run with the other phone rules, after IBANs and cards have taken their digits."""
