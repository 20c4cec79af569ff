"""The generation engine on the tiny random Llama: batching, adapters, streaming, limits.

Timing-sensitive cases slow the model down with a forward hook (a sleep per decoding step)
and forbid end of turn, so they depend on the hook rather than on how busy the CPU is.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from helpers import wide_tiny_foundation
from peft import LoraConfig, PeftModel

from twinloop.kernel.config import ServingConfig
from twinloop.kernel.errors import InvalidInputError
from twinloop.serving.adapters import AdapterRegistry
from twinloop.serving.engine import (
    EngineStoppedError,
    GenerationEngine,
    QueueFullError,
    _Detokenizer,
)
from twinloop.serving.types import BASE_ADAPTER, GenRequest

PROMPTS = ["what is the capital of france", "hello there", "x", "tell me about lora adapters"]


def req(prompt: str = PROMPTS[0], n: int = 8, adapter: str = BASE_ADAPTER, **kw) -> GenRequest:
    return GenRequest(messages=({"role": "user", "content": prompt},), max_new_tokens=n, adapter=adapter, **kw)


@pytest.fixture
def tiny(tmp_path):
    """Tiny Llama with larger weights, so different prompts and adapters give different tokens."""
    return wide_tiny_foundation(tmp_path)


@pytest.fixture
def registry(tiny):
    reg = AdapterRegistry(tiny)
    for seed, name in ((1, "law@r1"), (2, "med@r1")):
        torch.manual_seed(seed)
        reg.add(name, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return reg


@pytest.fixture
def make_engine(tiny, registry):
    """Build engines on the tiny model; every one is stopped at teardown."""
    engines = []

    def make(start: bool = True, batching: bool = True, **config) -> GenerationEngine:
        eng = GenerationEngine(tiny, registry, ServingConfig(**config), batching=batching)
        engines.append(eng)
        return eng.start() if start else eng

    yield make
    for eng in engines:
        eng.stop(drain=False, timeout=10)


class Hooks:
    """Forward hooks on the raw base model (below the PEFT wrapper): slow it, steer its logits."""

    def __init__(self, foundation):
        model = foundation.model
        self.model = model.get_base_model() if isinstance(model, PeftModel) else model
        self.stop_ids = foundation.stop_token_ids
        self.handles = []
        self.calls = 0

    def slow(self, seconds: float) -> None:
        self.handles.append(self.model.register_forward_pre_hook(lambda m, a: time.sleep(seconds)))

    def no_end(self) -> None:
        """End of turn can never be the next token: answers run to their limit."""

        def hook(module, args, out):
            out.logits[..., self.stop_ids] = float("-inf")

        self.handles.append(self.model.register_forward_hook(hook))

    def force(self, schedule: dict[int, int]) -> None:
        """At the k-th forward call (1 = prefill) every row's next token is schedule[k]."""

        def hook(module, args, out):
            self.calls += 1
            if self.calls in schedule:
                out.logits[:, -1, schedule[self.calls]] = 1e9

        self.handles.append(self.model.register_forward_hook(hook))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


@pytest.fixture
def hooks(tiny, registry):
    h = Hooks(tiny)
    yield h
    h.remove()


class Recorder:
    def __init__(self):
        self.batches: list[tuple[int, list[str], float, int]] = []
        self.depths: list[int] = []

    def on_batch(self, size, adapters, seconds, new_tokens):
        self.batches.append((size, adapters, seconds, new_tokens))

    def on_queue(self, depth):
        self.depths.append(depth)


def wait_until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.005)


# -- batching and adapters ---------------------------------------------------------------------


def test_mixed_adapter_batch_matches_each_row_alone(tiny, registry, make_engine):
    rows = [(PROMPTS[0], 8, "law@r1"), (PROMPTS[0], 5, BASE_ADAPTER), (PROMPTS[0], 8, "med@r1"), (PROMPTS[1], 3, "law@r1")]
    eng = make_engine(max_wait_ms=2000, max_batch_size=4)
    batched = [eng.submit(req(p, n, a)) for p, n, a in rows]
    results = [p.result(30) for p in batched]
    assert [r.batch_size for r in results] == [4, 4, 4, 4]
    solo_engine = make_engine(batching=False)
    for (p, n, a), pending, r in zip(rows, batched, results, strict=True):
        alone = solo_engine.submit(req(p, n, a))
        assert alone.result(30).batch_size == 1
        assert pending.token_ids == alone.token_ids, a
        assert r.text == alone.result().text
        assert r.completion_tokens <= n and r.adapter == a
    # The base row is the base model's own greedy answer.
    assert results[1].text == tiny.chat(PROMPTS[0], max_new_tokens=5).text
    # Two random adapters really change the answer, differently.
    law, base, med = (batched[i].token_ids for i in range(3))
    assert len({law, med}) == 2 and law[:5] != base and med[:5] != base


def test_batches_form_from_concurrent_requests(make_engine):
    rec = Recorder()
    eng = make_engine(max_wait_ms=500, max_batch_size=4)
    eng.add_observer(rec)
    pendings = []
    lock = threading.Lock()

    def client(i):
        p = eng.submit(req(PROMPTS[i % 4], 4, ("law@r1", "med@r1", BASE_ADAPTER)[i % 3]))
        with lock:
            pendings.append(p)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in pendings:
        p.result(30)
    # Rows are answered as they end; on_batch follows when the whole batch is done.
    wait_until(lambda: sum(b[0] for b in rec.batches) == 6)
    sizes = [b[0] for b in rec.batches]
    assert sum(sizes) == 6 and max(sizes) > 1 and max(sizes) <= 4
    assert all(len(b[1]) == b[0] and b[3] > 0 for b in rec.batches)
    stats = eng.stats()
    assert stats["batches"] == len(sizes) and stats["requests"] == 6 and stats["mean_batch_size"] > 1
    assert max(rec.depths) >= 1 and rec.depths[-1] == 0


def test_prompt_token_cap_splits_long_prompts(make_engine, tiny):
    prompt_len = len(tiny.encode_chat(PROMPTS[0]))
    rec = Recorder()
    # Room for two of these prompts per batch, not three.
    eng = make_engine(max_wait_ms=500, max_batch_size=8, max_batch_prompt_tokens=2 * prompt_len + 1)
    eng.add_observer(rec)
    pendings = [eng.submit(req(PROMPTS[0], 3, BASE_ADAPTER)) for _ in range(5)]
    for p in pendings:
        p.result(30)
    wait_until(lambda: sum(b[0] for b in rec.batches) == 5)
    assert max(b[0] for b in rec.batches) == 2


def test_batching_off_runs_one_by_one(make_engine):
    rec = Recorder()
    eng = make_engine(batching=False, max_wait_ms=500)
    eng.add_observer(rec)
    ps = [eng.submit(req(p, 3)) for p in PROMPTS]
    assert all(p.result(30).batch_size == 1 for p in ps)
    wait_until(lambda: len(rec.batches) == 4)
    assert [b[0] for b in rec.batches] == [1, 1, 1, 1]


def test_only_compatible_sampling_shares_a_batch(make_engine):
    eng = make_engine(start=False, max_wait_ms=50)
    greedy = [eng.submit(req(p, 3)) for p in PROMPTS[:2]]
    hot = [eng.submit(req(p, 3, temperature=0.8, top_p=0.9)) for p in PROMPTS[:2]]
    seeded = [eng.submit(req(PROMPTS[0], 6, temperature=1.0, seed=7)) for _ in range(2)]
    eng.start()
    assert [p.result(30).batch_size for p in greedy + hot] == [2, 2, 2, 2]
    # Seeded requests run alone, so the same seed gives the same answer.
    assert [p.result(30).batch_size for p in seeded] == [1, 1]
    assert seeded[0].token_ids == seeded[1].token_ids


def test_exception_fails_its_batch_and_worker_survives(tiny, registry, make_engine, monkeypatch):
    model = tiny.model
    real_generate = model.generate
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(model, "generate", flaky)
    eng = make_engine(start=False, max_wait_ms=50)
    failed = [eng.submit(req(PROMPTS[0], 4, "law@r1")), eng.submit(req(PROMPTS[1], 4))]
    eng.start()
    for p in failed:
        with pytest.raises(RuntimeError, match="boom"):
            p.result(30)
        with pytest.raises(RuntimeError, match="boom"):
            list(p.stream())
        assert p.token_ids is None
    after = eng.submit(req(PROMPTS[2], 4, "law@r1")).result(30)
    assert after.finish_reason == "length" and after.completion_tokens == 4
    assert eng.stats()["failed"] == 2
    assert registry.in_use("law@r1") == 0  # failed requests gave their hold back


def test_failure_inside_mixed_batch_leaves_no_stale_adapter_hooks(tiny, registry, make_engine, hooks):
    """PEFT installs adapter_names hooks for a generate call without try/finally; a failure
    mid-batch must not leave them in place for later calls."""
    eng = make_engine(max_wait_ms=0)
    reference = eng.submit(req(PROMPTS[0], 6)).result(30)

    def fail_on_third_step(module, args):
        hooks.calls += 1
        if hooks.calls == 3:
            raise RuntimeError("step failed")

    hooks.handles.append(hooks.model.register_forward_pre_hook(fail_on_third_step))
    with pytest.raises(RuntimeError, match="step failed"):
        eng.submit(req(PROMPTS[1], 6, "law@r1")).result(30)
    again = eng.submit(req(PROMPTS[0], 6)).result(30)
    assert again.text == reference.text
    assert tiny.chat(PROMPTS[0], max_new_tokens=6).text == reference.text


def test_direct_chat_during_a_mixed_batch_gets_the_base(tiny, make_engine, hooks):
    """PEFT's adapter_names hooks are global while a batch runs; a plain Foundation.chat from
    another thread must wait for the batch rather than run under them."""
    hooks.no_end()
    eng = make_engine(max_wait_ms=0)
    reference = tiny.chat(PROMPTS[0], max_new_tokens=6)
    adapted = eng.submit(req(PROMPTS[1], 40, "law@r1")).result(30)
    hooks.slow(0.01)
    p = eng.submit(req(PROMPTS[1], 40, "law@r1"))
    wait_until(lambda: p._started is not None)
    direct = tiny.chat(PROMPTS[0], max_new_tokens=6)
    assert direct.text == reference.text and direct.completion_tokens == 6
    assert p.result(30).text == adapted.text


# -- limits: queue, timeouts, cancel -----------------------------------------------------------


def test_queue_full_refuses_and_keeps_queued(make_engine, registry):
    eng = make_engine(start=False, queue_size=2)
    queued = [eng.submit(req(PROMPTS[0], 3, "law@r1")), eng.submit(req(PROMPTS[1], 3))]
    with pytest.raises(QueueFullError, match="queue is full") as e:
        eng.submit(req(PROMPTS[2], 3, "law@r1"))
    assert e.value.retry_after_s > 0
    assert eng.queue_depth() == 2
    assert registry.in_use("law@r1") == 1  # the refused request holds nothing
    eng.start()
    assert [p.result(30).finish_reason for p in queued] == ["length", "length"]


def test_timeout_while_queued(make_engine, hooks):
    hooks.slow(0.01)
    hooks.no_end()
    eng = make_engine(batching=False)
    long = eng.submit(req(PROMPTS[0], 400))
    wait_until(lambda: long._started is not None)
    short = eng.submit(req(PROMPTS[1], 5, timeout_s=0.2))
    r = short.result(10)  # answered near its deadline, while `long` still runs
    assert not long.done()
    assert r.finish_reason == "timeout" and r.completion_tokens == 0 and r.text == ""
    assert r.queue_seconds >= 0.2
    long.cancel()
    assert long.result(10).finish_reason == "cancelled"


def test_timeout_mid_generation(make_engine, hooks):
    hooks.slow(0.01)
    hooks.no_end()
    eng = make_engine(max_wait_ms=100)
    slow_one = eng.submit(req(PROMPTS[0], 400, timeout_s=0.5))
    other = eng.submit(req(PROMPTS[1], 6))  # same batch, ends on its own limit
    r = slow_one.result(10)
    assert r.finish_reason == "timeout"
    assert 1 <= r.completion_tokens < 400 and len(slow_one.token_ids) == r.completion_tokens
    assert other.result(10).finish_reason == "length" and other.result().completion_tokens == 6


def test_cancel_running_and_queued(make_engine, hooks, registry):
    hooks.slow(0.01)
    hooks.no_end()
    eng = make_engine(batching=False)
    running = eng.submit(req(PROMPTS[0], 400, "law@r1"))
    queued = eng.submit(req(PROMPTS[1], 400, "law@r1"))
    wait_until(lambda: running._started is not None)
    assert queued.cancel()
    rq = queued.result(1)  # answered at once, without running
    assert rq.finish_reason == "cancelled" and rq.completion_tokens == 0
    time.sleep(0.05)
    assert running.cancel()
    r = running.result(10)
    assert r.finish_reason == "cancelled" and 1 <= r.completion_tokens < 400
    assert not running.cancel()  # already finished
    assert registry.in_use("law@r1") == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n": 0}, "max_new_tokens"),
        ({"n": 65}, "over this server.s limit of 64"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"adapter": "ghost@r9"}, "'ghost@r9' is not loaded"),
        ({"prompt": "a" * 3000}, "over the limit"),
    ],
    ids=["zero-tokens", "over-limit", "negative-temperature", "bad-top-p", "bad-timeout", "unknown-adapter", "long-prompt"],
)
def test_submit_rejects_bad_requests(make_engine, kwargs, message):
    eng = make_engine(start=False, max_new_tokens_limit=64)
    with pytest.raises(InvalidInputError, match=message):
        eng.submit(req(**kwargs))
    assert eng.queue_depth() == 0


def test_stop_drains_then_refuses(make_engine, registry):
    eng = make_engine(max_wait_ms=0)
    ps = [eng.submit(req(p, 3, "law@r1")) for p in PROMPTS]
    assert eng.stop(drain=True, timeout=30)
    assert all(p.result(0).finish_reason == "length" for p in ps)
    with pytest.raises(EngineStoppedError):
        eng.submit(req())
    with pytest.raises(EngineStoppedError):
        eng.start()
    assert registry.in_use("law@r1") == 0


def test_stop_without_drain_cancels(make_engine, hooks):
    hooks.slow(0.01)
    hooks.no_end()
    eng = make_engine(batching=False)
    running = eng.submit(req(PROMPTS[0], 400))
    queued = eng.submit(req(PROMPTS[1], 400))
    wait_until(lambda: running._started is not None)
    assert eng.stop(drain=False, timeout=10)
    assert running.result(0).finish_reason == "cancelled"
    assert queued.result(0).finish_reason == "cancelled" and queued.result().completion_tokens == 0


# -- text: streaming, end of turn --------------------------------------------------------------


def test_stream_concatenates_to_text(make_engine):
    eng = make_engine(max_wait_ms=100)
    ps = [eng.submit(req(p, 24, temperature=1.0)) for p in PROMPTS[:3]]
    for p in ps:
        deltas = list(p.stream())
        r = p.result(30)
        assert "".join(deltas) == r.text
        assert r.completion_tokens == len(p.token_ids)


def test_astream_under_asyncio(make_engine):
    eng = make_engine(max_wait_ms=100)

    async def consume(p):
        deltas = [d async for d in p.astream()]
        return deltas, await p.aresult()

    async def main():
        ps = [eng.submit(req(p, 16, temperature=1.0)) for p in PROMPTS[:2]]
        return await asyncio.gather(*(consume(p) for p in ps))

    for deltas, result in asyncio.run(main()):
        assert "".join(deltas) == result.text and result.completion_tokens == 16


def test_aresult_cancelled_task_cancels_request(make_engine, hooks):
    hooks.slow(0.01)
    hooks.no_end()
    eng = make_engine()
    p = eng.submit(req(PROMPTS[0], 400))

    async def main():
        task = asyncio.ensure_future(p.aresult())
        await asyncio.sleep(0.1)
        task.cancel()  # what an HTTP server does when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert p.result(10).finish_reason == "cancelled"


@pytest.mark.parametrize("text", ["héllo wörld", "€ 100", "emoji 😀 ok", "日本語"])
def test_detokenizer_never_splits_characters(tiny, text):
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text.encode())  # the tiny tokenizer is one token per byte
    detok = _Detokenizer(tiny.tokenizer)
    deltas = [detok.push(t) for t in ids] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_end_of_turn_and_special_tokens(tiny, make_engine, hooks):
    im_start = tiny.tokenizer.convert_tokens_to_ids("<|im_start|>")
    space, a = tiny.tokenizer.encode(" a", add_special_tokens=False)
    # tokens: " ", <|im_start|>, "a", then end of turn.
    hooks.force({1: space, 2: im_start, 3: a, 4: tiny.stop_token_ids[0]})
    eng = make_engine()
    p = eng.submit(req(PROMPTS[0], 50))
    r = p.result(30)
    assert r.finish_reason == "stop"
    assert p.token_ids == (space, im_start, a) and r.completion_tokens == 3
    assert r.text == "a"  # no special token, no leading space


# -- adapters under load -----------------------------------------------------------------------


def test_unload_waits_for_in_flight_request(make_engine, registry, hooks):
    hooks.no_end()
    eng = make_engine()
    reference = eng.submit(req(PROMPTS[0], 30, "law@r1")).result(30)
    hooks.slow(0.01)
    p = eng.submit(req(PROMPTS[0], 30, "law@r1"))
    wait_until(lambda: p._started is not None)
    unloaded = threading.Event()
    t = threading.Thread(target=lambda: (registry.unload("law@r1"), unloaded.set()))
    t.start()
    time.sleep(0.05)
    assert not unloaded.is_set() and "law@r1" in registry
    r = p.result(30)
    assert r.text == reference.text and r.finish_reason == "length" and r.completion_tokens == 30
    t.join(10)
    assert unloaded.is_set() and "law@r1" not in registry
    with pytest.raises(InvalidInputError, match="not loaded"):
        eng.submit(req(adapter="law@r1"))
    assert eng.submit(req(PROMPTS[0], 4, "med@r1")).result(30).completion_tokens == 4


# -- the real model ----------------------------------------------------------------------------


@pytest.mark.real
def test_real_identity_adapter_and_base_in_one_batch(real_runtime):
    foundation = real_runtime.foundation
    registry = AdapterRegistry(foundation)
    registry.add("general@fresh", LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    try:
        question = "What is the capital of France?"
        with GenerationEngine(foundation, registry, ServingConfig(max_wait_ms=1000)) as eng:
            ps = [eng.submit(req(question, 24, a)) for a in ("general@fresh", BASE_ADAPTER)]
            results = [p.result(120) for p in ps]
        assert [r.batch_size for r in results] == [2, 2]
        for r in results:
            assert "Paris" in r.text, r.text
        # B = 0: the fresh adapter answers exactly as the base.
        assert results[0].text == results[1].text
    finally:
        registry.unload("general@fresh")
    assert not isinstance(foundation.model, PeftModel)
