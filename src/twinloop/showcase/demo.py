"""``twinloop demo --basic``: load the real base model and answer built-in questions with timings.

The narrated twin-loop demo (paper §6.3) is :mod:`twinloop.showcase.casestudy` (``twinloop demo``,
``make demo``); these questions are the quick check that the model loads and answers. Each
has the word a correct answer must contain, so the demo reports plainly whether the model got
it right instead of only printing text.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from twinloop.runtime import Runtime

BUILTIN_QUESTIONS: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "paris"),
    ("What is the capital of Japan?", "tokyo"),
    ("Which planet is known as the Red Planet?", "mars"),
    ("What gas do plants absorb from the air for photosynthesis?", "carbon dioxide"),
)


@dataclass(frozen=True)
class DemoAnswer:
    question: str
    answer: str
    expected: str
    correct: bool
    seconds: float
    completion_tokens: int


@dataclass(frozen=True)
class DemoReport:
    model: str
    load_seconds: float
    loaded_from_cache: bool
    answers: list[DemoAnswer]

    @property
    def correct(self) -> int:
        return sum(a.correct for a in self.answers)

    def to_dict(self) -> dict:
        return asdict(self) | {"correct": self.correct, "total": len(self.answers)}


def run_basic_demo(runtime: Runtime, max_new_tokens: int = 48) -> DemoReport:
    """Load the base model and answer :data:`BUILTIN_QUESTIONS` greedily."""
    start = time.perf_counter()
    foundation = runtime.foundation
    load_seconds = time.perf_counter() - start
    answers = []
    for question, expected in BUILTIN_QUESTIONS:
        gen = foundation.chat(question, max_new_tokens=max_new_tokens)
        answers.append(
            DemoAnswer(
                question=question,
                answer=gen.text,
                expected=expected,
                correct=expected in gen.text.lower(),
                seconds=round(gen.seconds, 3),
                completion_tokens=gen.completion_tokens,
            )
        )
    return DemoReport(foundation.name, round(load_seconds, 3), foundation.info.from_cache, answers)
