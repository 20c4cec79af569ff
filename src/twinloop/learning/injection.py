"""Prompt-injection detection for the learning filters: rules as data, text normalised first.

The rules live in ``twinloop/packs/injection_rules.yaml`` (format in its header) so they can
be read and extended without code. Attackers write around literal patterns — other languages,
Cyrillic look-alikes, leetspeak, spaced-out letters, zero-width joiners, base64, rot13,
URL-encoding — so each text is matched in several *views*: as written, folded (NFKC,
invisible characters dropped, homoglyphs mapped to Latin, accents stripped, case-folded), with
leetspeak undone, squeezed (separators removed), and decoded. Views only feed the matcher; the
sample is never changed (paper §4.6 step 4, docs/DESIGN.md "Learning").
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import unquote_plus

import yaml

from twinloop.kernel.errors import ConfigError

RULES_RESOURCE = "injection_rules.yaml"
"""File name of the shipped rules inside the ``twinloop.packs`` package."""

_HOMOGLYPHS = str.maketrans({
    # Cyrillic and Greek letters that render like Latin ones (after case folding). A real
    # Russian or Greek word is mangled by this, which is harmless: views only feed the matcher.
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
    "ɡ": "g", "ո": "n", "ı": "i", "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ϲ": "c", "ѵ": "v",
    # Apostrophes become spaces so "d'origine" and "d’origine" read as two words.
    "'": " ", "’": " ", "ʼ": " ", "`": " ", "´": " ",
})
_LEET = (str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                        "!": "i", "|": "l", "€": "e", "8": "b", "9": "g", "+": "t"}),
         # "1" is "l" as often as "i" ("a11" = "all"); a second view rather than a guess.
         str.maketrans({"0": "o", "1": "l", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s",
                        "!": "i", "|": "l", "€": "e", "8": "b", "9": "g", "+": "t"}))
_WS = re.compile(r"\s+")
_NOT_WORD = re.compile(r"[\W_]+")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,}={0,2}")
_URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_HTML_ENTITY = re.compile(r"&#?\w+;")


def fold(text: str) -> str:
    """The folded view: NFKC, format characters (zero-width, bidi, tags) dropped, homoglyphs
    mapped to Latin, accents stripped, case-folded, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    text = text.casefold().translate(_HOMOGLYPHS)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _printable(text: str) -> bool:
    return bool(text) and sum(c.isprintable() or c.isspace() for c in text) >= 0.9 * len(text)


def _decoded(text: str) -> list[tuple[str, str]]:
    """What the encodings an attacker hides instructions in decode to: ``(how, text)``."""
    out: list[tuple[str, str]] = []
    for m in _B64_RUN.finditer(text):
        run = m.group(0)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(run + "=" * (-len(run) % 4))
                plain = raw.decode("utf-8")
            except (binascii.Error, ValueError, UnicodeDecodeError):
                continue
            if _printable(plain):
                out.append(("base64", plain))
                break
    if _URL_ESCAPE.search(text):
        out.append(("url-encoding", unquote_plus(text)))
    if _HTML_ENTITY.search(text):
        out.append(("html entities", html.unescape(text)))
    return out


@dataclass(frozen=True)
class Views:
    """The texts one input is matched in, each with how it was obtained."""

    raw: tuple[tuple[str, str], ...]
    folded: tuple[tuple[str, str], ...]
    squashed: tuple[tuple[str, str], ...]


def text_views(text: str) -> Views:
    """Every view of ``text`` (see the module docstring)."""
    raw = [("as written", text), *_decoded(text)]
    folded: dict[str, str] = {}
    for how, t in raw:
        f = fold(t)
        folded.setdefault(f, "folded" if how == "as written" else f"decoded from {how}")
    base = fold(text)
    for table in _LEET:
        folded.setdefault(_WS.sub(" ", base.translate(table)), "after undoing leetspeak")
    folded.setdefault(codecs.encode(base, "rot13"), "decoded from rot13")
    squashed: dict[str, str] = {}
    for f, how in folded.items():
        squashed.setdefault(_NOT_WORD.sub("", f), f"{how}, separators removed")
    return Views(tuple(raw), tuple((h, t) for t, h in folded.items()), tuple((h, t) for t, h in squashed.items()))


@dataclass(frozen=True)
class InjectionRule:
    """One named rule: its patterns and which views they are matched in."""

    name: str
    on: str
    patterns: tuple[re.Pattern[str], ...]
    squashed: tuple[re.Pattern[str], ...] = ()

    def search(self, views: Views) -> str | None:
        """How the first matching view was obtained, or None."""
        texts = views.raw if self.on == "raw" else views.folded
        for how, text in texts:
            if any(p.search(text) for p in self.patterns):
                return how
        for how, text in views.squashed if self.squashed else ():
            if any(p.search(text) for p in self.squashed):
                return how
        return None


_SQUEEZE = re.compile(r"\\s[+*?]?|\\b| ")


def parse_rules(data: object, origin: str = "injection rules") -> tuple[InjectionRule, ...]:
    """Rules from the parsed YAML; raises ConfigError naming the bad rule or pattern."""
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ConfigError(f"{origin}: expected a mapping with a 'rules' list, got {type(data).__name__}")
    rules = []
    for n, item in enumerate(data["rules"], start=1):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{origin}: rule {n} = {item!r}: needs a name")
        # "match", not "on": YAML 1.1 reads a bare ``on`` key as the boolean true.
        on = item.get("match", "folded")
        if on not in ("raw", "folded"):
            raise ConfigError(f"{origin}: rule {name!r}: match = {on!r}: must be 'raw' or 'folded'")
        sources = item.get("patterns")
        if not isinstance(sources, list) or not sources or not all(isinstance(p, str) for p in sources):
            raise ConfigError(f"{origin}: rule {name!r}: patterns must be a non-empty list of strings")
        try:
            patterns = tuple(re.compile(p) for p in sources)
            squashed = tuple(re.compile(_SQUEEZE.sub("", p)) for p in sources) if item.get("squash") else ()
        except re.error as e:
            raise ConfigError(f"{origin}: rule {name!r}: bad pattern {e.pattern!r}: {e}") from e
        rules.append(InjectionRule(name, on, patterns, squashed))
    return tuple(rules)


@lru_cache(maxsize=1)
def shipped_rules() -> tuple[InjectionRule, ...]:
    """The rules shipped in ``twinloop/packs/injection_rules.yaml``."""
    text = resources.files("twinloop.packs").joinpath(RULES_RESOURCE).read_text("utf-8")
    return parse_rules(yaml.safe_load(text), f"twinloop/packs/{RULES_RESOURCE}")


def load_rules(path: str | Path | None = None) -> tuple[InjectionRule, ...]:
    """The rules at ``path`` (same format), or the shipped ones."""
    if path is None:
        return shipped_rules()
    try:
        text = Path(path).read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read injection rules {str(path)!r}: {e}") from e
    return parse_rules(yaml.safe_load(text), str(path))


def find_injection(text: str, rules: tuple[InjectionRule, ...] | None = None) -> tuple[str, str] | None:
    """``(rule name, how the matching view was obtained)`` of the first rule that matches."""
    views = text_views(text)
    for rule in shipped_rules() if rules is None else rules:
        how = rule.search(views)
        if how is not None:
            return rule.name, how
    return None
