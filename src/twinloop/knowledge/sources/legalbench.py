"""LegalBench ``rule_qa``: open questions about US law ("Where is diversity jurisdiction codified?").

Only QA items: the answers cite US statutes and cases that are not in the seed corpus, so the
items carry no document uri. They serve as law-domain router and QA evaluation queries.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from twinloop.kernel.errors import InvalidInputError
from twinloop.knowledge.sources.qa import QAItem
from twinloop.knowledge.sources.reading import read_text

DATASET = "LegalBench rule_qa"


def load_rule_qa(path: str | Path) -> list[QAItem]:
    """Rows of ``rule_qa_test.tsv`` (columns ``text``, ``answer``, ``doctrine``).

    Raises:
        InvalidInputError: The header lacks a column, or a row has an empty question.
    """
    path = Path(path)
    reader = csv.DictReader(io.StringIO(read_text(path)), delimiter="\t")
    missing = {"text", "answer", "doctrine"} - set(reader.fieldnames or ())
    if missing:
        raise InvalidInputError(f"{path}: missing column(s) {sorted(missing)}; header is {reader.fieldnames}")
    items = []
    for n, row in enumerate(reader, start=2):
        question = (row["text"] or "").strip()
        if not question:
            raise InvalidInputError(f"{path} line {n}: empty question")
        items.append(
            QAItem(
                question=question,
                answer=(row["answer"] or "").strip(),
                dataset=DATASET,
                key=str(n - 1),
                split="test",
                answer_type="free",
                meta={"doctrine": (row["doctrine"] or "").strip()},
            )
        )
    return items
