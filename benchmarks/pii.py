"""PII redaction by category: what still reaches storage, and what is changed that should not be.

    python benchmarks/pii.py                      # the built-in patterns (what storage uses)
    python benchmarks/pii.py --show-misses        # print every miss and false positive too

Strings: ``packs/eval/pii_strings.jsonl``, one ``{"id", "text", "category", "lang", "pii"}`` a
line, where ``pii`` lists the exact substrings that must not survive redaction and category
``none`` marks ordinary domain questions (articles, doses, amounts, dates of laws, company and
disease names) that must come back unchanged.

Figures, per category and overall:

- recall: share of strings whose listed substrings are all gone after
  :meth:`~twinloop.kernel.pii.PiiRedactor.redact` (the one thing storage needs);
- typed: share of those whose expected placeholder (``[EMAIL]`` for ``email_obfuscated``,
  ``[DATE_OF_BIRTH]`` for ``date_of_birth``, …) is in the output, i.e. the span was also
  named right;
- false-positive rate, on ``none`` only: share of strings changed at all.

Runs on the CPU in about a second. Writes ``docs/bench/pii.json`` and ``docs/bench/pii.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from twinloop.kernel.pii import PiiRedactor

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "src" / "twinloop" / "packs" / "eval" / "pii_strings.jsonl"

# The placeholder a category should produce; categories absent here are judged on recall only.
EXPECTED = {"email": "EMAIL", "email_obfuscated": "EMAIL", "phone": "PHONE", "iban": "IBAN", "card": "CARD",
            "ssn": "SSN", "passport": "PASSPORT", "address": "ADDRESS", "person": "PERSON",
            "date_of_birth": "DATE_OF_BIRTH", "ipv4": "IP_ADDRESS", "ipv6": "IP_ADDRESS"}


def load(path: Path = EVAL) -> list[dict]:
    """The eval rows, in file order."""
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def judge(row: dict, redacted: str) -> dict:
    """One row's outcome: which listed substrings survived, and for negatives whether it changed."""
    if row["category"] == "none":
        return {"changed": redacted != row["text"], "redacted": redacted}
    left = [p for p in row["pii"] if p in redacted]
    expected = EXPECTED.get(row["category"])
    return {"recalled": not left, "left": left, "typed": expected is None or f"[{expected}]" in redacted,
            "redacted": redacted}


def summarise(rows: list[dict]) -> dict:
    """Recall and typed share over positive rows, false-positive rate over ``none`` rows."""
    pos = [r for r in rows if r["category"] != "none"]
    neg = [r for r in rows if r["category"] == "none"]
    out: dict = {"n": len(rows)}
    if pos:
        out["recall"] = round(sum(r["judged"]["recalled"] for r in pos) / len(pos), 4)
        out["typed"] = round(sum(r["judged"]["recalled"] and r["judged"]["typed"] for r in pos) / len(pos), 4)
    if neg:
        out["false_positive_rate"] = round(sum(r["judged"]["changed"] for r in neg) / len(neg), 4)
    return out


def evaluate(redactor: PiiRedactor, rows: list[dict]) -> dict:
    """Redact every row and return the per-category and overall figures (rows gain ``judged``)."""
    for row in rows:
        row["judged"] = judge(row, redactor.redact(row["text"]).text)
    cats = sorted({r["category"] for r in rows}, key=lambda c: (c == "none", c))
    return {"per_category": {c: summarise([r for r in rows if r["category"] == c]) for c in cats},
            "overall": summarise(rows)}


def markdown(doc: dict) -> str:
    lines = ["| category | strings | recall | typed | false-positive rate |", "|---|---|---|---|---|"]
    for cat, s in [*doc["per_category"].items(), ("all", doc["overall"])]:
        cells = [f"{s[k]:.1%}" if k in s else "–" for k in ("recall", "typed", "false_positive_rate")]
        lines.append(f"| {cat} | {s['n']} | " + " | ".join(cells) + " |")
    misses = [r for r in doc["strings"] if not r["judged"].get("recalled", True) or r["judged"].get("changed")]
    if misses:
        lines += ["", "Missed strings and false positives:", ""]
        lines += [f"- `{r['id']}` ({r['lang']}): {json.dumps(r['text'], ensure_ascii=False)} → "
                  f"{json.dumps(r['judged']['redacted'], ensure_ascii=False)}" for r in misses]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=Path, default=EVAL, help="the JSONL of strings to redact")
    ap.add_argument("--show-misses", action="store_true", help="print misses and false positives to stderr")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "pii.json")
    args = ap.parse_args(argv)
    rows = load(args.eval)
    # Presidio off: the figures are those of the shipped patterns, the same on every machine.
    redactor = PiiRedactor(use_presidio=False)
    started = time.perf_counter()
    figures = evaluate(redactor, rows)
    seconds = time.perf_counter() - started
    doc = {"benchmark": "pii", "eval": str(args.eval.relative_to(ROOT)) if args.eval.is_relative_to(ROOT)
           else str(args.eval), "seconds": round(seconds, 3), **figures,
           "strings": [{k: r[k] for k in ("id", "category", "lang", "text", "judged")} for r in rows]}
    if args.show_misses:
        for r in doc["strings"]:
            if not r["judged"].get("recalled", True) or r["judged"].get("changed"):
                print(f"{r['id']}: {r['text']!r} -> {r['judged']['redacted']!r}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", "utf-8")
    md = markdown(doc)
    args.out.with_suffix(".md").write_text(
        "# PII redaction by category\n\n"
        f"`python benchmarks/pii.py` over `{doc['eval']}` ({len(rows)} strings). Recall: every listed substring gone; typed: and the expected "
        "placeholder present; false-positive rate: negatives changed at all.\n\n" + md, "utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
