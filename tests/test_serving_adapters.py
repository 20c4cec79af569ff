"""The adapter registry on the tiny random Llama: load, reload, unload, refcounts, errors."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from helpers import wide_tiny_foundation
from peft import LoraConfig, PeftModelForCausalLM

from twinloop.kernel.errors import InvalidInputError, ModelLoadError
from twinloop.serving.adapters import AdapterRegistry
from twinloop.serving.types import BASE_ADAPTER

PROMPT = "what is the capital of france"


def lora(seed_init: bool = False, targets=("q_proj", "v_proj"), r: int = 4) -> LoraConfig:
    return LoraConfig(r=r, lora_alpha=8, target_modules=list(targets), init_lora_weights=seed_init)


tiny_foundation = wide_tiny_foundation


def save_adapter(folder, path_for_model, seed: int, hidden: int = 64, targets=("q_proj", "v_proj")):
    """A random-init LoRA saved in the standard PEFT format, made on a separate tiny base."""
    base = tiny_foundation(path_for_model, hidden).model
    torch.manual_seed(seed)
    model = PeftModelForCausalLM(base, lora(targets=targets), adapter_name="default")
    model.save_pretrained(folder)
    return folder


def greedy_ids(foundation, prompt: str = PROMPT, n: int = 10, adapter: str | None = None) -> list[int]:
    """Greedy token ids straight from model.generate (the tiny model's text is mostly noise)."""
    ids = torch.tensor([foundation.encode_chat(prompt)])
    kwargs = {"adapter_names": [adapter]} if adapter is not None else {}
    with torch.inference_mode():
        out = foundation.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
            temperature=None, top_p=None, top_k=None, pad_token_id=foundation.tokenizer.pad_token_id,
            eos_token_id=[], **kwargs,
        )
    return out[0, ids.shape[1]:].tolist()


@pytest.fixture
def tiny(tmp_path):
    return tiny_foundation(tmp_path / "base")


@pytest.fixture
def registry(tiny):
    return AdapterRegistry(tiny)


@pytest.fixture
def adapter_dirs(tmp_path):
    """Two different saved adapters (seeds 1 and 2)."""
    return (
        save_adapter(tmp_path / "a1", tmp_path / "m1", seed=1),
        save_adapter(tmp_path / "a2", tmp_path / "m2", seed=2),
    )


def test_base_generation_unchanged_through_wrap_and_unload(tiny, registry):
    before = greedy_ids(tiny)
    torch.manual_seed(0)
    registry.add("law@r1", lora())
    assert isinstance(tiny.model, PeftModelForCausalLM)
    # No adapter is active by default: a call without adapter_names is the base model.
    assert greedy_ids(tiny) == before
    assert greedy_ids(tiny, adapter=BASE_ADAPTER) == before
    assert greedy_ids(tiny, adapter="law@r1") != before
    registry.unload("law@r1")
    assert not isinstance(tiny.model, PeftModelForCausalLM)
    assert greedy_ids(tiny) == before
    # The emptied wrapper takes adapters again.
    torch.manual_seed(0)
    registry.add("law@r2", lora())
    assert greedy_ids(tiny, adapter="law@r2") != before
    assert greedy_ids(tiny) == before


def test_identity_adapter_equals_base(tiny, registry):
    before = greedy_ids(tiny)
    registry.add("fresh", lora(seed_init=True))  # B = 0
    assert greedy_ids(tiny, adapter="fresh") == before


def test_load_matches_the_saved_adapter(tmp_path, tiny, registry, adapter_dirs):
    a1, a2 = adapter_dirs
    info = registry.load("law@rel_1", a1)
    registry.load("med@rel_1", a2)
    # The same adapter applied by PEFT directly on an identical tiny base.
    reference = PeftModelForCausalLM.from_pretrained(tiny_foundation(tmp_path / "ref").model, a1).eval()
    ref_foundation = tiny_foundation(tmp_path / "ref2")
    ref_foundation.model = reference
    assert greedy_ids(tiny, adapter="law@rel_1") == greedy_ids(ref_foundation)
    assert greedy_ids(tiny, adapter="law@rel_1") != greedy_ids(tiny, adapter="med@rel_1")
    # 2 layers x (q_proj + v_proj) x (A: r x in + B: out x r); q: 64->64, v: 64->32 (2 kv heads of 16).
    assert info.parameters == 2 * ((4 * 64 + 64 * 4) + (4 * 64 + 32 * 4))
    assert info.path == str(a1)
    assert registry.names() == ["law@rel_1", "med@rel_1"]
    assert set(registry.info()) == {"law@rel_1", "med@rel_1"}
    assert "law@rel_1" in registry


def test_chat_batch_with_adapter_names(tiny, registry):
    torch.manual_seed(3)
    registry.add("a", lora())
    gens = tiny.chat_batch([PROMPT, PROMPT], max_new_tokens=6, adapter_names=["a", BASE_ADAPTER])
    assert len(gens) == 2


def test_reload_replaces_and_bad_reload_keeps_old(tmp_path, tiny, registry, adapter_dirs):
    a1, a2 = adapter_dirs
    registry.load("x", a1)
    out1 = greedy_ids(tiny, adapter="x")
    registry.load("x", a2)
    out2 = greedy_ids(tiny, adapter="x")
    assert out2 != out1
    registry.load("y", a2)
    assert greedy_ids(tiny, adapter="y") == out2
    bad = save_adapter(tmp_path / "bad", tmp_path / "m3", seed=3, hidden=32)
    with pytest.raises(ModelLoadError, match="does not fit"):
        registry.load("x", bad)
    assert "x" in registry
    assert greedy_ids(tiny, adapter="x") == out2
    assert registry.names() == ["x", "y"]  # no temporary names left behind


@pytest.mark.parametrize(
    "name",
    ["", " ", "law ", "la w", "law\n", BASE_ADAPTER, "law.v1", "my_lora_x", "x" * 200],
    ids=["empty", "space", "trailing-space", "inner-space", "newline", "base", "dot", "lora-prefix", "long"],
)
def test_bad_names(registry, adapter_dirs, name):
    with pytest.raises(InvalidInputError, match="adapter name"):
        registry.load(name, adapter_dirs[0])
    with pytest.raises(InvalidInputError, match="adapter name"):
        registry.add(name, lora())


def _break(folder, case):
    if case == "missing-folder":
        return folder / "nope"
    if case == "no-weights":
        (folder / "adapter_model.safetensors").unlink()
    elif case == "no-config":
        (folder / "adapter_config.json").unlink()
    elif case == "bad-json":
        (folder / "adapter_config.json").write_text("{not json")
    elif case in ("wrong-targets", "not-lora", "wrong-task"):
        cfg = json.loads((folder / "adapter_config.json").read_text())
        if case == "wrong-targets":
            cfg["target_modules"] = ["q_proj", "nope_proj"]
        elif case == "not-lora":
            cfg["peft_type"] = "IA3"
        else:
            cfg["task_type"] = "SEQ_CLS"
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    elif case == "corrupt-weights":
        (folder / "adapter_model.safetensors").write_bytes(b"garbage")
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-folder", "adapter folder not found"),
        ("no-weights", "no adapter_model.safetensors"),
        ("no-config", "no adapter_config.json"),
        ("bad-json", "cannot read"),
        ("wrong-targets", "nope_proj"),
        ("not-lora", "not a LoRA adapter"),
        ("wrong-task", "SEQ_CLS"),
        ("corrupt-weights", "cannot read"),
    ],
)
def test_bad_folders(tmp_path, tiny, registry, case, message):
    folder = _break(save_adapter(tmp_path / "a", tmp_path / "m", seed=1), case)
    with pytest.raises(ModelLoadError, match=message):
        registry.load("law", folder)
    assert registry.names() == []
    assert not isinstance(tiny.model, PeftModelForCausalLM)


def test_first_load_of_a_foreign_adapter_leaves_the_base_serving(tmp_path, tiny, registry):
    before = greedy_ids(tiny)
    foreign = save_adapter(tmp_path / "foreign", tmp_path / "m32", seed=1, hidden=32)
    with pytest.raises(ModelLoadError, match="does not fit this base model"):
        registry.load("law", foreign)
    assert registry.names() == [] and not isinstance(tiny.model, PeftModelForCausalLM)
    assert greedy_ids(tiny) == before
    torch.manual_seed(0)
    registry.add("law", lora())  # the emptied wrapper is reused
    assert greedy_ids(tiny) == before and greedy_ids(tiny, adapter="law") != before


def test_add_with_unknown_targets(registry):
    with pytest.raises(ModelLoadError, match="w_nope"):
        registry.add("a", lora(targets=("q_proj", "w_nope")))
    with pytest.raises(ModelLoadError, match="matches no module"):
        registry.add("a", LoraConfig(r=4, target_modules=r".*\.nothing_here"))


def test_unknown_names(registry):
    with pytest.raises(InvalidInputError, match="'ghost' is not loaded"):
        registry.unload("ghost")
    with pytest.raises(InvalidInputError, match="'ghost' is not loaded"):
        registry.acquire("ghost")
    registry.acquire(BASE_ADAPTER)  # the base needs no hold
    registry.release(BASE_ADAPTER)


def test_unload_waits_for_users(registry):
    registry.add("a", lora())
    registry.acquire("a")
    registry.acquire("a")
    assert registry.in_use("a") == 2
    done = threading.Event()
    t = threading.Thread(target=lambda: (registry.unload("a"), done.set()))
    t.start()
    time.sleep(0.1)
    assert not done.is_set() and "a" in registry
    assert registry.info()["a"].retiring
    with pytest.raises(InvalidInputError, match="being unloaded"):
        registry.acquire("a")  # no new users while it drains
    registry.release("a")
    time.sleep(0.05)
    assert not done.is_set()
    registry.release("a")
    t.join(5)
    assert done.is_set() and "a" not in registry


def test_unload_timeout_keeps_adapter(registry):
    registry.add("a", lora())
    registry.acquire("a")
    with pytest.raises(TimeoutError, match="'a' still has 1"):
        registry.unload("a", timeout=0.05)
    assert not registry.info()["a"].retiring
    registry.acquire("a")  # usable again
    registry.release("a")
    registry.release("a")
    registry.unload("a", timeout=1)
    assert registry.names() == []


def test_unload_waits_for_generation(tiny, registry):
    """The exclusive side waits for a generate call holding the shared side."""
    registry.add("a", lora())
    entered, leave, unloaded = threading.Event(), threading.Event(), threading.Event()

    def generate_slowly():
        with registry.generating():
            entered.set()
            leave.wait(5)

    g = threading.Thread(target=generate_slowly)
    g.start()
    entered.wait(5)
    u = threading.Thread(target=lambda: (registry.unload("a"), unloaded.set()))
    u.start()
    time.sleep(0.1)
    assert not unloaded.is_set() and "a" in registry
    leave.set()
    u.join(5)
    g.join(5)
    assert unloaded.is_set() and "a" not in registry


# -- weights that would poison every answer, names that must not be replaced, no paths out --------

def _poison(folder, value: float, dtype=None):
    from safetensors.torch import load_file, save_file

    weights = load_file(str(folder / "adapter_model.safetensors"))
    key = max(weights)
    if dtype is not None:
        weights = {k: v.to(dtype) for k, v in weights.items()}
    weights[key].view(-1)[3] = value
    save_file(weights, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    return key


@pytest.mark.parametrize(("value", "dtype", "says"), [
    (float("nan"), None, "1 NaN value"),
    (float("inf"), None, "1 Inf value"),
    (float("-inf"), None, "1 Inf value"),
    (float("nan"), torch.float16, "1 NaN value"),
    (float("inf"), torch.bfloat16, "1 Inf value"),
], ids=["nan", "inf", "-inf", "nan-fp16", "inf-bf16"])
def test_non_finite_weights_are_refused_and_the_old_adapter_stays(tmp_path, tiny, registry, adapter_dirs,
                                                                  value, dtype, says):
    registry.load("x", adapter_dirs[0])
    before = greedy_ids(tiny, adapter="x")
    bad = save_adapter(tmp_path / "bad", tmp_path / "mb", seed=5)
    key = _poison(bad, value, dtype)
    with pytest.raises(ModelLoadError, match=says) as e:
        registry.load("x", bad)
    assert repr(key) in str(e.value)
    with pytest.raises(ModelLoadError, match=says):
        registry.load("fresh", bad)
    assert registry.names() == ["x"] and greedy_ids(tiny, adapter="x") == before


@pytest.mark.parametrize("case", ["missing-folder", "no-weights", "no-config", "bad-json", "not-lora", "wrong-targets",
                                  "corrupt-weights", "nan"])
def test_a_label_keeps_the_folder_out_of_errors(tmp_path, registry, case):
    folder = save_adapter(tmp_path / "secret-place", tmp_path / "m", seed=1)
    folder = _break(folder, case) if case != "nan" else folder
    if case == "nan":
        _poison(folder, float("nan"))
    with pytest.raises(ModelLoadError) as e:
        registry.load("law", folder, label="adapter artifact 0123456789ab")
    assert "adapter artifact 0123456789ab" in str(e.value)
    assert "secret-place" not in str(e.value) and str(tmp_path) not in str(e.value)


def test_replace_false_refuses_a_resident_name(tiny, registry, adapter_dirs):
    from twinloop.serving.adapters import AdapterNameTakenError

    registry.load("law@rel_1", adapter_dirs[0])
    before = greedy_ids(tiny, adapter="law@rel_1")
    with pytest.raises(AdapterNameTakenError, match="'law@rel_1' is already loaded"):
        registry.load("law@rel_1", adapter_dirs[1], replace=False)
    assert greedy_ids(tiny, adapter="law@rel_1") == before
    registry.load("other", adapter_dirs[1], replace=False)  # a free name loads
    assert registry.names() == ["law@rel_1", "other"]


def test_listing_shows_the_source_not_the_path(registry, adapter_dirs):
    registry.load("x", adapter_dirs[0])
    doc = registry.info()["x"].to_dict()
    assert "path" not in doc and doc["source"] == adapter_dirs[0].name
    assert registry.info()["x"].path == str(adapter_dirs[0])  # kept for this process's own logs
