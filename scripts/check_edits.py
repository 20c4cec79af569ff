"""Check the knowledge-editing evaluation set ``src/twinloop/packs/eval/edits.jsonl``.

    python scripts/check_edits.py [--root .] [--file PATH]

Each line is one JSON object describing a fact about a made-up entity (ZsRE / counterfactual
editing style). The checker validates:

file
    UTF-8, one JSON object per line, no blank lines, at least 640 facts (both halves hold 300 or more).
fields and types
    ``id``, ``domain``, ``subject``, ``question``, ``answer``, ``paraphrases``, ``locality``
    (required) and ``answer_aliases`` (optional), nothing else; every text a non-empty string
    without leading or trailing whitespace; ``paraphrases`` a list of exactly 2 strings;
    ``answer_aliases``, when present, a non-empty list of distinct strings that differ from
    ``answer``.
id
    kebab-case (``ed-0001-brennor-ceo``) and unique.
domain
    one of law, med, fin, general; each domain holds about 160 facts (150 to 175).
answer
    1 to 6 words; never yes/no (or ja/nein, true/false) and never a bare number; not contained
    in the question or a paraphrase (it would leak the target). Aliases: 1 to 6 words, not
    yes/no.
subject
    occurs verbatim (case-sensitive) in the question and in both paraphrases; at most 3 facts
    per subject.
paraphrases
    differ from the question and from each other by more than a one- or two-word swap (a
    word-level edit distance of at least 3 after casefolding and dropping punctuation).
question
    unique across the file.
locality
    differs from the question and paraphrases; does not mention the fact's subject nor any
    other subject of the file (case-insensitive), so editing a fact cannot change its answer;
    used by at most 2 facts, and only within one domain.
German share
    about 10 % of the law facts are in German (7 % to 15 %); a German fact has its question
    and both paraphrases in German, and no non-German fact has a German paraphrase (a
    heuristic: umlauts or sharp s, or at least two German function words).

Prints one line ``edits.jsonl: N facts, law a, med b, fin c, general d: ok`` and exits 0, or
prints every problem as ``edits.jsonl: <id>: <rule>: <detail>`` and exits 1. Uses only the
standard library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

DEFAULT_FILE = Path("src/twinloop/packs/eval/edits.jsonl")
DOMAINS = ("law", "med", "fin", "general")
REQUIRED = {"id", "domain", "subject", "question", "answer", "paraphrases", "locality"}
OPTIONAL = {"answer_aliases"}
MIN_FACTS = 640
DOMAIN_RANGE = (150, 175)
""""About 80 each": inclusive bounds per domain."""
GERMAN_LAW_SHARE = (0.07, 0.15)
MAX_PER_SUBJECT = 3
MAX_LOCALITY_USES = 2
MIN_PARAPHRASE_DISTANCE = 3
ANSWER_WORDS = (1, 6)
ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
BARE_NUMBER_RE = re.compile(r"^[+-]?[\d\s.,']+$")
POLAR = {"yes", "no", "ja", "nein", "true", "false", "yes.", "no."}
GERMAN_MARKERS = {
    "der", "die", "das", "dem", "den", "des", "ein", "eine", "einen", "einer", "und", "nach",
    "wie", "wo", "wer", "was", "welche", "welcher", "welchem", "welches", "ist", "sind", "hat",
    "muss", "darf", "gilt", "laut", "bis", "ab", "für", "über", "von", "mit", "im", "zu", "auf",
    "eine", "nicht", "wird", "werden", "seinen", "innerhalb",
}


def norm(text: str) -> str:
    """Casefolded, every run of whitespace (including no-break spaces) one space."""
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ").replace("\u202f", " ")).strip().casefold()


def words(text: str) -> list[str]:
    return re.findall(r"\w+", norm(text))


def edit_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance over word lists."""
    prev = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        cur = [i]
        for j, wb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wa != wb)))
        prev = cur
    return prev[-1]


def is_german(text: str) -> bool:
    if re.search(r"[äöüß]", text, re.IGNORECASE):
        return True
    return len(set(words(text)) & GERMAN_MARKERS) >= 2


def contains(haystack: str, needle: str) -> bool:
    """Case-insensitive match of needle as a whole-word run inside haystack."""
    n = norm(needle)
    if not n:
        return False
    return re.search(r"(?<!\w)" + re.escape(n) + r"(?!\w)", norm(haystack)) is not None


def check(path: Path) -> tuple[list[str], Counter, int]:
    problems: list[str] = []
    name = path.name

    def bad(fid: str, rule: str, detail: str) -> None:
        problems.append(f"{name}: {fid}: {rule}: {detail}")

    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return [f"{name}: -: file: not found at {path}"], Counter(), 0
    except UnicodeDecodeError as exc:
        return [f"{name}: -: encoding: not UTF-8 ({exc})"], Counter(), 0

    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    facts: list[dict] = []
    for lineno, line in enumerate(lines, 1):
        where = f"line {lineno}"
        if not line.strip():
            bad(where, "format", "blank line")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad(where, "format", f"invalid JSON ({exc.msg})")
            continue
        if not isinstance(obj, dict):
            bad(where, "format", "not a JSON object")
            continue
        obj["_line"] = lineno
        facts.append(obj)

    if len(facts) < MIN_FACTS:
        bad("-", "count", f"{len(facts)} facts, need at least {MIN_FACTS}")

    ids: Counter = Counter()
    domains: Counter = Counter()
    per_subject: Counter = Counter()
    questions: dict[str, str] = {}
    locality_uses: dict[str, list[str]] = defaultdict(list)
    locality_domains: dict[str, set[str]] = defaultdict(set)
    german_law = 0
    valid: list[dict] = []

    for fact in facts:
        fid = fact.get("id") if isinstance(fact.get("id"), str) and fact.get("id") else f"line {fact['_line']}"
        keys = set(fact) - {"_line"}
        missing = REQUIRED - keys
        extra = keys - REQUIRED - OPTIONAL
        if missing:
            bad(fid, "fields", f"missing {sorted(missing)}")
        if extra:
            bad(fid, "fields", f"unknown {sorted(extra)}")
        if missing:
            continue

        ok = True
        for key in ("id", "domain", "subject", "question", "answer", "locality"):
            val = fact[key]
            if not isinstance(val, str) or not val.strip():
                bad(fid, "types", f"{key} must be a non-empty string")
                ok = False
            elif val != val.strip():
                bad(fid, "types", f"{key} has leading or trailing whitespace")
        paras = fact["paraphrases"]
        if not isinstance(paras, list) or len(paras) != 2:
            bad(fid, "paraphrases", "must be a list of exactly 2 questions")
            ok = False
        elif not all(isinstance(p, str) and p.strip() for p in paras):
            bad(fid, "types", "paraphrases must be non-empty strings")
            ok = False
        aliases = fact.get("answer_aliases", [])
        if "answer_aliases" in fact:
            if not isinstance(aliases, list) or not aliases:
                bad(fid, "types", "answer_aliases must be a non-empty list when present")
                aliases, ok = [], False
            elif not all(isinstance(a, str) and a.strip() for a in aliases):
                bad(fid, "types", "answer_aliases must hold non-empty strings")
                aliases, ok = [], False
        if not ok:
            continue

        ids[fact["id"]] += 1
        if not ID_RE.match(fact["id"]):
            bad(fid, "id", "not kebab-case")

        domain = fact["domain"]
        if domain not in DOMAINS:
            bad(fid, "domain", f"{domain!r} not one of {', '.join(DOMAINS)}")
        domains[domain] += 1

        subject, question, answer, locality = (fact[k] for k in ("subject", "question", "answer", "locality"))
        per_subject[subject] += 1

        # answer
        n_words = len(answer.split())
        if not ANSWER_WORDS[0] <= n_words <= ANSWER_WORDS[1]:
            bad(fid, "answer", f"{n_words} words, need {ANSWER_WORDS[0]} to {ANSWER_WORDS[1]}")
        if norm(answer) in POLAR:
            bad(fid, "answer", f"polar answer {answer!r}")
        if BARE_NUMBER_RE.match(answer):
            bad(fid, "answer", f"bare number {answer!r}; add a unit or word")
        for text in [question, *paras]:
            if contains(text, answer):
                bad(fid, "answer", f"answer {answer!r} appears in {text!r}")
        seen_aliases = {norm(answer)}
        for alias in aliases:
            if norm(alias) in seen_aliases:
                bad(fid, "answer_aliases", f"duplicate of answer or another alias: {alias!r}")
            seen_aliases.add(norm(alias))
            if not ANSWER_WORDS[0] <= len(alias.split()) <= ANSWER_WORDS[1]:
                bad(fid, "answer_aliases", f"{alias!r} is not 1 to 6 words")
            if norm(alias) in POLAR:
                bad(fid, "answer_aliases", f"polar alias {alias!r}")

        # subject
        if subject not in question:
            bad(fid, "subject", f"{subject!r} not verbatim in question")
        for i, para in enumerate(paras, 1):
            if subject not in para:
                bad(fid, "subject", f"{subject!r} not verbatim in paraphrase {i}")

        # paraphrases
        qw = words(question)
        pw = [words(p) for p in paras]
        for i, p in enumerate(pw, 1):
            d = edit_distance(qw, p)
            if d < MIN_PARAPHRASE_DISTANCE:
                bad(fid, "paraphrases", f"paraphrase {i} too close to the question (word edit distance {d})")
        if edit_distance(pw[0], pw[1]) < MIN_PARAPHRASE_DISTANCE:
            bad(fid, "paraphrases", "the two paraphrases are (nearly) the same")

        # question uniqueness
        key = norm(question)
        if key in questions:
            bad(fid, "question", f"duplicate of {questions[key]}")
        else:
            questions[key] = fact["id"]

        # locality (per fact)
        if contains(locality, subject) or norm(subject) in norm(locality):
            bad(fid, "locality", f"mentions the subject {subject!r}")
        if norm(locality) in {norm(question), *(norm(p) for p in paras)}:
            bad(fid, "locality", "same as the question or a paraphrase")
        locality_uses[norm(locality)].append(fact["id"])
        locality_domains[norm(locality)].add(domain)

        # German
        german = is_german(question)
        para_german = [is_german(p) for p in paras]
        if german and not all(para_german):
            bad(fid, "language", "German question with a non-German paraphrase")
        if not german and any(para_german):
            bad(fid, "language", "non-German question with a German paraphrase")
        if german and domain != "law":
            bad(fid, "language", "German facts belong to the law domain")
        if german and domain == "law":
            german_law += 1

        valid.append(fact)

    for fid, count in ids.items():
        if count > 1:
            bad(fid, "id", f"used {count} times")
    for subject, count in per_subject.items():
        if count > MAX_PER_SUBJECT:
            first = next(f["id"] for f in valid if f["subject"] == subject)
            bad(first, "subject", f"{subject!r} has {count} facts, at most {MAX_PER_SUBJECT}")
    for loc, users in locality_uses.items():
        if len(users) > MAX_LOCALITY_USES:
            bad(users[0], "locality", f"used by {len(users)} facts ({', '.join(users)}), at most {MAX_LOCALITY_USES}")
        if len(locality_domains[loc]) > 1:
            bad(users[0], "locality", f"shared across domains {sorted(locality_domains[loc])}")

    # a locality must not mention any subject of the file (the entity must be unused elsewhere)
    subjects = sorted(per_subject, key=len, reverse=True)
    for fact in valid:
        for subject in subjects:
            if subject != fact["subject"] and norm(subject) in norm(fact["locality"]):
                bad(fact["id"], "locality", f"mentions {subject!r}, a subject of other facts")

    lo, hi = DOMAIN_RANGE
    for domain in DOMAINS:
        if not lo <= domains[domain] <= hi:
            bad("-", "domain counts", f"{domain} has {domains[domain]} facts, want {lo} to {hi}")
    if domains["law"]:
        share = german_law / domains["law"]
        if not GERMAN_LAW_SHARE[0] <= share <= GERMAN_LAW_SHARE[1]:
            bad("-", "language", f"{german_law} of {domains['law']} law facts in German ({share:.0%}), "
                f"want {GERMAN_LAW_SHARE[0]:.0%} to {GERMAN_LAW_SHARE[1]:.0%}")
    return problems, domains, len(facts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root (default: this script's parent folder)")
    ap.add_argument("--file", type=Path, default=None, help=f"file to check (default: <root>/{DEFAULT_FILE})")
    args = ap.parse_args(argv)
    path = args.file if args.file is not None else args.root / DEFAULT_FILE
    problems, domains, total = check(path)
    counts = ", ".join(f"{d} {domains[d]}" for d in DOMAINS)
    if problems:
        for line in problems:
            print(line)
        print(f"{path.name}: {total} facts, {counts}: {len(problems)} problem(s)")
        return 1
    print(f"{path.name}: {total} facts, {counts}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
