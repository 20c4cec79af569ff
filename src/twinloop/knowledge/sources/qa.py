"""Labelled question/answer items from the public QA sets, for evaluation.

One record type for every set, so a QA dry-run or a retrieval benchmark can iterate items
without knowing which data set they came from (identity by key: ``uri`` is the
key of the document that supports the answer in the seed corpus).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class QAItem:
    """One labelled question.

    Attributes:
        question: The question as the data set states it.
        answer: The reference answer as text (a label such as ``"yes"``, a span, a number).
        dataset: Name of the data set, e.g. ``"PubMedQA"``.
        key: The item's own id in the data set (PMID, question uid, row number).
        uri: ``uri`` of the seed-corpus document that supports the answer, or None when the
            answer is not in any shipped document (e.g. LegalBench).
        split: ``"test"`` for an official test split, ``"train"``/``"dev"`` otherwise.
        answer_type: How to score it: ``"yes/no/maybe"``, ``"span"``, ``"arithmetic"``, ``"free"``...
        meta: Further labels kept as strings (scale, derivation, question type, doctrine).
    """

    question: str
    answer: str
    dataset: str
    key: str
    uri: str | None = None
    split: str | None = None
    answer_type: str | None = None
    meta: dict[str, str] = field(default_factory=dict)
