"""Rules for :mod:`twinloop.kernel.pii` that find people by the words around them: person names,
postal addresses and dates of birth (paper §4.6, docs/DESIGN.md "Learning").

No NER model can be loaded on the machines this runs on (no model hub, and spaCy models are
separate downloads), so names and addresses are found by the cues people write them with:

- names after a title (``Dr.``, ``Mrs``, ``Herr``, ``Frau``, ``Mme``, ``M.``, chains like
  ``Frau Dr.``), after a self-introduction (``my name is``, ``ich heiße``, ``je m'appelle``;
  ``this is``/``ich bin`` only with two capitalised words), after a form label
  (``Name:``, ``Patient:``) and under a closing (``Best regards,`` / ``Mit freundlichen Grüßen``
  and a line break);
- addresses as a house number with a street word (``12 Baker Street``, ``Hauptstraße 5``,
  ``12 rue de la Paix``, ``Via Roma 15``), with the postcode that follows, UK postcodes on
  their own and US state + ZIP after a comma;
- dates of birth only behind a birth keyword (``born``, ``DOB``, ``geboren am``, ``né le``,
  ``fecha de nacimiento``): a date alone (``25 May 2018``) is a regulation's date far more often.

The cue word stays (``Dr. [PERSON]``, ``born [DATE_OF_BIRTH]``) so stored text still reads.
Capitalised words with no cue (``Sealed Air``, ``Crohn's disease``) are never touched: that is the
price of a low false-positive rate, and names written without any cue are missed.
"""

from __future__ import annotations

import re

from twinloop.kernel.pii_identifiers import Rule, keep_lead

# Latin-1 plus the Latin Extended-A capitals and all of its letters ("Özlem Yıldız", "Łukasz").
_UP = "A-ZÀ-ÖØ-ÞĀĂĄĆČĎĐĒĘĚĞİŁŃŇŐŒŘŚŞŠŢŤŰŹŻŽ"
_LOW = "a-zß-öø-ÿā-ž"
# One name word: "Müller", "O'Connor", "McDonald", "Weiß-Hoffmann", "Hans-Peter".
_WORD = rf"[{_UP}](?:[{_LOW}]+(?:[{_UP}][{_LOW}]+)?|['’][{_UP}][{_LOW}]+)(?:['’][{_UP}][{_LOW}]+)?(?:-[{_UP}][{_LOW}]+){{0,3}}"
# "der"/"den" only after "van"/"von": "Der Herr der Ringe" is a book, "Mrs van der Berg" a person.
_PARTICLE = r"(?:(?:van|von)[ \t]+(?:der|den|de)|van|von|de[ \t]+la|de|du|da|di|del|della|le|la|ten|ter|zu|vom|dos|das)"
_INITIAL = rf"[{_UP}]\.[ \t]*"
_COMPANY = r"(?![ \t]+(?:Inc|Ltd|LLC|GmbH|AG|SA|SE|plc|PLC|Corp|Co|Group|Bank|Holdings?|& )\b)"


def _name(min_words: int = 1) -> str:
    more = f"{{{min_words - 1},2}}" if min_words > 1 else "{0,2}"
    return (rf"(?:{_INITIAL}){{0,2}}(?:{_PARTICLE}[ \t]+)?{_WORD}(?:[ \t]+(?:{_PARTICLE}[ \t]+)?{_WORD}){more}"
            rf"(?![{_UP}{_LOW}]){_COMPANY}")


# --- Person names ------------------------------------------------------------------------------

_TITLE = (r"(?:(?:Dr|Mr|Mrs|Ms|Mx|Prof|Hr|Fr|Mme|Mlle|Sr|Sra|Srta|Sig|Dott|Mag)\.?|M\.|Miss|Sir|Dame|Herrn?|Frau"
          r"|Madame|Mademoiselle|Monsieur|Señora?|Signora?)")
_PERSON_TITLED = re.compile(rf"(?P<lead>\b{_TITLE}(?:[ \t]+{_TITLE})*[ \t]+)(?P<value>{_name()})")
_PERSON_INTRO = re.compile(
    r"(?P<lead>\b(?i:my name is|my name's|mein name ist|mein name lautet|ich heiße|ich heisse|je m['’]appelle"
    r"|je me nomme|me llamo|mi nombre es|mi chiamo|il mio nome è)[ \t]+)"
    rf"(?P<value>{_name()})")
_PERSON_INTRO_WEAK = re.compile(
    r"(?P<lead>\b(?i:this is|i am|i'm|ich bin|hier ist|je suis|c'est|soy|sono)[ \t]+)"
    rf"(?P<value>{_name(2)})")
_PERSON_LABEL = re.compile(
    r"(?P<lead>\b(?i:full name|name|vorname|nachname|nom|nombre|patient|patientin|paziente|client|kunde|kundin"
    r"|mandant|applicant|tenant|landlord|contact|ansprechpartner|signed|signature|unterschrift|signé)[ \t]*:[ \t]*)"
    rf"(?P<value>{_name()})")
_CLOSING = (r"(?i:(?:best|kind|warm|warmest)[ \t]+regards|regards|many[ \t]+thanks|thanks|thank[ \t]+you|cheers"
            r"|merci(?:[ \t]+(?:d['’]avance|beaucoup))?|danke(?:[ \t]+sch(?:ö|oe)n)?|gracias|grazie"
            r"|(?:yours[ \t]+)?sincerely|yours[ \t]+(?:faithfully|truly)|best[ \t]+wishes|all[ \t]+the[ \t]+best"
            r"|mit[ \t]+freundlichen[ \t]+gr(?:ü|ue|u)(?:ß|ss)en|(?:freundliche|viele|beste|liebe|herzliche)[ \t]+"
            r"gr(?:ü|ue|u)(?:ß|ss)e|lg|mfg|(?:bien[ \t]+)?cordialement|bien[ \t]+à[ \t]+vous|(?:sincères[ \t]+)?"
            r"salutations|(?:un[ \t]+)?saludos?|atentamente|(?:cordiali|distinti)[ \t]+saluti)")
# Under a closing the name follows a comma or a line break; one word only if the line ends there.
_PERSON_SIGNATURE = re.compile(
    rf"(?P<lead>\b{_CLOSING}(?:[ \t]*,[ \t]*(?:\r?\n[ \t]*)?|[ \t]*[!.]?[ \t]*\r?\n[ \t]*))"
    rf"(?P<value>{_name(2)}|(?:{_INITIAL}){{0,2}}{_WORD}(?=[ \t]*(?:\r?\n|$)))")

# --- Postal addresses ---------------------------------------------------------------------------

_EN_STREET = (r"(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Grove|Terrace|Close|Place|Square|Crescent|Way"
              r"|Gardens|Boulevard|Blvd|Row|Hill|Walk|Mews|Parkway|Highway)")
_DE_SUFFIX = (r"(?:straße|strasse|str\.|weg|allee|platz|gasse|damm|ufer|chaussee|steig|pfad|graben"
              r"|-(?:Straße|Strasse|Str\.|Weg|Allee|Platz|Gasse|Ring|Damm|Ufer))")
_DE_WORD = r"(?:Straße|Strasse|Str\.|Weg|Allee|Platz|Gasse|Ring|Damm|Ufer|Chaussee)"
_DE_PREP = r"(?:Am|An[ \t]+der|Auf[ \t]+der|Auf[ \t]+dem|Im|In[ \t]+der|Zum|Zur|Unter[ \t]+den)"
_FR_WAY = r"(?i:rue|avenue|av\.|boulevard|bd|place|allée|allee|impasse|chemin|quai|cours|route|square|passage)"
_FR_LINK = r"(?:(?:de|du|des|la|le|les|l['’]|d['’])[ \t]*)"
_SOUTH_WAY = r"(?:Via|Viale|Piazza|Piazzale|Corso|Vicolo|Calle|Avenida|Avda\.|Plaza|Paseo|Carrer|Rua)"
_POSTCODE5 = rf"(?:[ \t]*,[ \t]*|[ \t]+in[ \t]+|[ \t]+)(?:[A-Z]-)?\d{{5}}(?=[ \t]+[{_UP}])"
_HOUSE = r"\d{1,3}(?:[ \t]?[a-zA-Z])?(?![\w.,]\d)\b"

_ADDRESS_EN = re.compile(rf"\b\d{{1,5}}[A-Za-z]?(?:[ \t]*,)?[ \t]+(?:[{_UP}][{_LOW}]+(?:['’]s)?[ \t]+){{0,2}}[{_UP}][{_LOW}]+(?:['’]s)?"
                         rf"[ \t]+{_EN_STREET}\b\.?")
_ADDRESS_DE = re.compile(
    rf"\b(?:[{_UP}][{_LOW}]+(?:-[{_UP}][{_LOW}]+){{0,3}}{_DE_SUFFIX}|[{_UP}][{_LOW}]+[ \t]+{_DE_WORD})[ \t]+{_HOUSE}"
    rf"(?:{_POSTCODE5})?")
_ADDRESS_DE_PREP = re.compile(rf"\b{_DE_PREP}[ \t]+[{_UP}][{_LOW}]+[ \t]+{_HOUSE}[ \t]*,[ \t]*\d{{5}}(?=[ \t]+[{_UP}])")
_ADDRESS_FR = re.compile(
    rf"\b\d{{1,4}}(?:[ \t]?(?:bis|ter))?[ \t]*,?[ \t]+{_FR_WAY}[ \t]+{_FR_LINK}*[{_UP}][\w'’-]*"
    rf"(?:[ \t]+{_FR_LINK}*[{_UP}][\w'’-]*){{0,3}}(?:{_POSTCODE5})?")
_ADDRESS_SOUTH = re.compile(
    rf"\b{_SOUTH_WAY}[ \t]+(?:(?:de|del|della|dei|di|la|las|los|el)[ \t]+)*[{_UP}][{_LOW}]+(?:[ \t]+[{_UP}][{_LOW}]+)"
    rf"{{0,2}},?[ \t]+{_HOUSE}(?:{_POSTCODE5})?")
# Royal Mail's letter rules for the outward and inward code; the space is required.
_UK_POSTCODE = re.compile(r"\b[A-PR-UWYZ][A-HK-Y]?\d[A-Z\d]?[ \t]\d[ABD-HJLNP-UW-Z]{2}\b")
_US_ZIP = re.compile(
    r"(?P<lead>,[ \t]*(?:AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH"
    r"|NJ|NM|NY|NC|ND|OH|OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY)[ \t]+)(?P<value>\d{5}(?:-\d{4})?)\b")

# --- Dates of birth ---------------------------------------------------------------------------

_MONTH = (r"(?i:january|february|march|april|may|june|july|august|september|october|november|december"
          r"|jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec"
          r"|januar|jänner|februar|märz|mai|juni|juli|oktober|dezember"
          r"|janvier|février|fevrier|mars|avril|juin|juillet|août|aout|septembre|octobre|novembre|décembre"
          r"|enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre"
          r"|gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre)")
_DATE = (rf"(?:\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}|\d{{1,2}}[./-]\d{{1,2}}[./-](?:\d{{4}}|\d{{2}})"
         rf"|\d{{1,2}}[-/ ]{_MONTH}[-/ ](?:\d{{4}}|\d{{2}})"
         rf"|\d{{1,2}}(?:st|nd|rd|th|er|\.)?[ \t]+(?:of[ \t]+|de[ \t]+)?{_MONTH}\.?,?[ \t]+(?:de[ \t]+)?\d{{4}}"
         rf"|{_MONTH}\.?[ \t]+\d{{1,2}}(?:st|nd|rd|th)?,?[ \t]+\d{{4}})(?![\d/.-]\d)")
_BIRTH = (r"(?i:born|date[ \t]+of[ \t]+birth|birth[ \t]?date|birthday|d\.?o\.?b\.?|geboren|geb\.|geburtsdatum"
          r"|geburtstag|née?|nee?|date[ \t]+de[ \t]+naissance|fecha[ \t]+de[ \t]+nacimiento|nacid[oa]|nat[oa]"
          r"|data[ \t]+di[ \t]+nascita)")
_DOB = re.compile(
    rf"(?P<lead>\b{_BIRTH}(?![\w])[ \t]*[:=,]?[ \t]*(?:(?i:on|am|le|el|il|the|der|den|is|ist|was|:)[ \t]+)*)"
    rf"(?P<value>{_DATE})")


# A count before a famous street ("Top 10 Wall Street banks") is no house number.
_COUNTED = re.compile(r"(?i)\b(?:top|the|of|than|over|under|about|around|some|all|first|last|past|next|nearly)\s*$")


def _address_en(m: re.Match[str]) -> str | None:
    return None if _COUNTED.search(m.string[max(0, m.start() - 12):m.start()]) else "[ADDRESS]"


DOB_RULES: tuple[Rule, ...] = (("DATE_OF_BIRTH", _DOB, keep_lead("[DATE_OF_BIRTH]")),)
"""Run before the phone rules, which would take ``03.05.1979``-like runs apart otherwise."""

ADDRESS_RULES: tuple[Rule, ...] = (
    ("ADDRESS", _ADDRESS_EN, _address_en),
    ("ADDRESS", _ADDRESS_DE, lambda m: "[ADDRESS]"),
    ("ADDRESS", _ADDRESS_DE_PREP, lambda m: "[ADDRESS]"),
    ("ADDRESS", _ADDRESS_FR, lambda m: "[ADDRESS]"),
    ("ADDRESS", _ADDRESS_SOUTH, lambda m: "[ADDRESS]"),
    ("ADDRESS", _UK_POSTCODE, lambda m: "[ADDRESS]"),
    ("ADDRESS", _US_ZIP, keep_lead("[ADDRESS]")),
)
"""Run after the digit rules and before names ("55 Riverside Dr" is no Dr. Riverside)."""

PERSON_RULES: tuple[Rule, ...] = (
    ("PERSON", _PERSON_TITLED, keep_lead("[PERSON]")),
    ("PERSON", _PERSON_INTRO, keep_lead("[PERSON]")),
    ("PERSON", _PERSON_LABEL, keep_lead("[PERSON]")),
    ("PERSON", _PERSON_SIGNATURE, keep_lead("[PERSON]")),
    ("PERSON", _PERSON_INTRO_WEAK, keep_lead("[PERSON]")),
)
"""Run last: every other placeholder is in place, so no name rule can swallow one."""
