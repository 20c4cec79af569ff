"""The base model on the tiny random Llama: prompting, limits, generation modes."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from twinloop.foundation import load_foundation
from twinloop.kernel.config import FoundationConfig
from twinloop.kernel.datadir import DataDir
from twinloop.kernel.errors import InvalidInputError, ModelLoadError


@pytest.fixture
def tiny(tmp_path):
    return load_foundation(FoundationConfig(source="tiny", max_input_tokens=256), DataDir(tmp_path))


def test_base_is_frozen(tiny):
    assert tiny.parameter_count > 0
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training


def test_chat_template_applied(tiny):
    ids = tiny.encode_chat("hello")
    text = tiny.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\nhello<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_system_prompt_from_config(tmp_path):
    f = load_foundation(FoundationConfig(source="tiny", system_prompt="Be brief."), DataDir(tmp_path))
    assert f.tokenizer.decode(f.encode_chat("hi")).startswith("<|im_start|>system\nBe brief.")


def test_token_limit_respected(tiny):
    gen = tiny.chat("tell me a story", max_new_tokens=5)
    assert gen.completion_tokens <= 5
    assert gen.finish_reason in {"stop", "length"}
    if gen.finish_reason == "length":
        assert gen.completion_tokens == 5
    assert gen.prompt_tokens == len(tiny.encode_chat("tell me a story"))


def test_greedy_is_deterministic(tiny):
    a = tiny.chat("abc", max_new_tokens=8)
    b = tiny.chat("abc", max_new_tokens=8)
    assert a.text == b.text


def test_sampling_repeatable_under_seed_and_varies_across_seeds(tiny):
    runs = {s: tiny.chat("abc", max_new_tokens=12, temperature=1.5, seed=s).text for s in range(4)}
    assert tiny.chat("abc", max_new_tokens=12, temperature=1.5, seed=0).text == runs[0]
    assert len(set(runs.values())) > 1, "different seeds should sample different texts"


def test_batch_matches_one_by_one(tiny):
    questions = ["a", "a much longer question than the first", "mid length"]
    batched = tiny.chat_batch(questions, max_new_tokens=6)
    single = [tiny.chat(q, max_new_tokens=6) for q in questions]
    assert [g.text for g in batched] == [g.text for g in single]


def test_stop_at_end_of_turn(tiny):
    # Force the model to emit <|im_end|> first by making it the only likely token.
    im_end = tiny.tokenizer.convert_tokens_to_ids("<|im_end|>")

    class OnlyEndOfTurn(LogitsProcessor):
        def __call__(self, input_ids, scores):
            bias = torch.full_like(scores, -1e4)
            bias[:, im_end] = 1e4
            return scores + bias

    gen = tiny.chat_batch(["x"], max_new_tokens=10, logits_processor=LogitsProcessorList([OnlyEndOfTurn()]))[0]
    assert gen.finish_reason == "stop"
    assert gen.completion_tokens == 0
    assert gen.text == ""


def test_long_history_drops_oldest_turns(tiny):
    long = "word " * 60
    chat = [
        {"role": "user", "content": long},
        {"role": "assistant", "content": long},
        {"role": "user", "content": "short question"},
    ]
    ids = tiny.encode_chat(chat)
    assert len(ids) <= 256
    assert "short question" in tiny.tokenizer.decode(ids)


def test_single_turn_over_limit_is_an_input_error(tiny):
    with pytest.raises(InvalidInputError, match="over the limit of 256"):
        tiny.encode_chat("x" * 2000)


@pytest.mark.parametrize(
    ("chat", "match"),
    [
        ([], "at least one message"),
        ([{"role": "robot", "content": "hi"}], "unknown role 'robot'"),
        ([{"role": "user", "content": 3}], "must be a string"),
    ],
    ids=["empty", "bad-role", "bad-content"],
)
def test_malformed_chat(tiny, chat, match):
    with pytest.raises(InvalidInputError, match=match):
        tiny.chat(chat)


def test_bad_generation_arguments(tiny):
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        tiny.chat("x", max_new_tokens=0)
    with pytest.raises(InvalidInputError, match="temperature"):
        tiny.chat("x", temperature=-1)


def test_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load_foundation(FoundationConfig(source="gguf", path=tmp_path), DataDir(tmp_path))
    with pytest.raises(ModelLoadError, match="foundation.path is not set"):
        load_foundation(FoundationConfig(source="hf"), DataDir(tmp_path))
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_foundation(FoundationConfig(source="hf", path=tmp_path), DataDir(tmp_path))


def test_hf_folder_source_loads_saved_model(tiny, tmp_path):
    folder = tmp_path / "hf-model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    f = load_foundation(FoundationConfig(source="hf", path=folder), DataDir(tmp_path))
    assert f.info.source == "hf"
    assert f.chat("abc", max_new_tokens=6).text == tiny.chat("abc", max_new_tokens=6).text
