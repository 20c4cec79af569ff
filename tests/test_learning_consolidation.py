"""What goes into an adapter besides the corrections: paraphrases and the base's own answers."""

from __future__ import annotations

from types import SimpleNamespace

from twinloop.kernel.config import ConsolidationConfig
from twinloop.learning import consolidation
from twinloop.learning.consolidation import base_answers, distill_pairs, distill_prompts, with_paraphrases
from twinloop.learning.sample import Sample


class Counting:
    """A base model that answers every prompt with its length, counting the prompts it saw."""

    name = "counting-base"

    def __init__(self) -> None:
        self.asked = 0

    def chat_batch(self, prompts, max_new_tokens=None):
        self.asked += len(prompts)
        return [SimpleNamespace(text="" if p.startswith("Empty") else f"{len(p)} characters") for p in prompts]


def test_the_shipped_prompts_are_general_and_many():
    prompts = distill_prompts()
    assert len(prompts) >= 64 and len(set(prompts)) == len(prompts) and not any(p.startswith("#") for p in prompts)


def test_base_answers_are_cached_on_disk_across_processes(tmp_path):
    base = Counting()
    first = base_answers(base, ["What is tax?", "Empty answer?"], cache_dir=tmp_path)
    assert first == [("What is tax?", "12 characters")] and base.asked == 2  # an empty answer is left out
    consolidation._CACHE.clear()  # a new worker process: only the disk copy is left
    again = Counting()
    assert base_answers(again, ["What is tax?", "Empty answer?"], cache_dir=tmp_path) == first and again.asked == 0
    (next(tmp_path.iterdir())).write_text("{not json")  # a corrupt cache file is regenerated
    consolidation._CACHE.clear()
    assert base_answers(again, ["What is tax?", "Empty answer?"], cache_dir=tmp_path) == first and again.asked == 2


def test_switched_off_parts_add_nothing():
    base = Counting()
    assert distill_pairs(base, ConsolidationConfig(kl_weight=0.0)) == [] and base.asked == 0
    samples = [Sample("law", "Who chairs the Zorbanian Data Council?", "Mira Castellan.", source="correction"),
               Sample("law", "Was the answer helpful?", "Yes.", source="feedback")]
    off = ConsolidationConfig(template_paraphrases=0, model_paraphrases=0)
    assert with_paraphrases(samples, off) == samples
    on = with_paraphrases(samples, ConsolidationConfig(template_paraphrases=3, model_paraphrases=0))
    extra = on[len(samples):]
    # Only corrections are paraphrased, each rewording keeps its answer and says where it came from.
    assert len(extra) == 3 and all(s.target == "Mira Castellan." and s.source == "augmentation" for s in extra)
    assert all("Zorbanian" in s.prompt for s in extra)
