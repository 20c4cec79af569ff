"""The Shadow trainer on the tiny model: adapter-only updates, determinism, cancel, output."""

from __future__ import annotations

import json
import threading
import time

import peft
import pytest
import torch
from safetensors.torch import load_file

from twinloop.foundation.model import load_foundation
from twinloop.kernel.config import (
    EwcConfig,
    FoundationConfig,
    LoraConfig,
    TrainingConfig,
)
from twinloop.kernel.datadir import DataDir
from twinloop.kernel.errors import InvalidInputError
from twinloop.kernel.db import Database
from twinloop.learning.ewc import EWC
from twinloop.learning.replay import ReplayBuffer
from twinloop.learning.sample import Sample
from twinloop.learning.trainer import (
    TrainingCancelled,
    distillation_kl,
    encode_example,
    sample_losses,
    train_adapter,
)

LORA = LoraConfig(r=4, alpha=8, dropout=0.0)
TRAINING = TrainingConfig(learning_rate=5e-3, batch_size=2, warmup_steps=2, steps=10)
SAMPLES = [
    Sample("law", "When did TL-7 take effect?", "On 3 March 2031."),
    Sample("law", "Who enforces TL-7?", "The Loop Authority."),
    Sample("law", "What is TL-9 about?", "Shadow training."),
]


@pytest.fixture
def foundation(tmp_path):
    return load_foundation(FoundationConfig(source="tiny"), DataDir(tmp_path / "data"))


def _train(foundation, out, **kw):
    args = dict(lora=LORA, ewc_cfg=EwcConfig(), training=TRAINING, domain="law", out_dir=out, seed=1)
    args.update(kw)
    return train_adapter(foundation, SAMPLES, **args)


def _adapter(folder):
    return load_file(folder / "adapter_model.safetensors")


def test_only_adapter_changes_and_base_is_left_bare(foundation, tmp_path):
    before = {k: v.clone() for k, v in foundation.model.state_dict().items()}
    grads_on = sum(p.requires_grad for p in foundation.model.parameters())
    result = _train(foundation, tmp_path / "a")
    after = foundation.model.state_dict()
    assert after.keys() == before.keys()  # no LoRA modules left behind
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert grads_on == 0 and not any(p.requires_grad for p in foundation.model.parameters())
    assert not isinstance(foundation.model, peft.PeftModel) and not foundation.model.training
    assert result.steps == 10 and len(result.losses) == 10 and result.trainable_parameters > 0
    # LoRA B starts at 0; after training it is not, so the adapter did learn something.
    assert any(v.abs().sum() > 0 for k, v in _adapter(result.out_dir).items() if "lora_B" in k)


def test_loss_on_training_samples_goes_down(foundation, tmp_path):
    base_loss = sum(sample_losses(foundation.model, foundation, SAMPLES))
    # q/v only barely moves a random model's near-uniform output; adapt the MLP too.
    wide = LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=("q_proj", "v_proj", "o_proj", "down_proj"))
    result = _train(foundation, tmp_path / "a", steps=30, lr=3e-2, lora=wide)
    model = peft.PeftModel.from_pretrained(foundation.model, str(result.out_dir))
    trained_loss = sum(sample_losses(model, foundation, SAMPLES))
    model.unload()
    # The tiny random model predicts near-uniformly (loss ≈ ln 259 per token) and its frozen
    # head limits how fast an adapter can sharpen it: 30 steps take off about 7%.
    assert trained_loss < 0.95 * base_loss
    assert sum(result.losses[-5:]) < sum(result.losses[:5])


def test_same_seed_same_adapter_other_seed_differs(foundation, tmp_path):
    a = _adapter(_train(foundation, tmp_path / "a", seed=7).out_dir)
    b = _adapter(_train(foundation, tmp_path / "b", seed=7).out_dir)
    c = _adapter(_train(foundation, tmp_path / "c", seed=8).out_dir)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_cancel_raises_and_leaves_no_folder(foundation, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(step, total, loss):
        seen.append(step)
        if step == 3:
            cancel.set()

    before = {k: v.clone() for k, v in foundation.model.state_dict().items()}
    with pytest.raises(TrainingCancelled):
        _train(foundation, tmp_path / "a", progress=progress, cancel=cancel)
    assert seen == [1, 2, 3]
    assert [p.name for p in tmp_path.iterdir() if p.name != "data"] == []  # no out_dir, no temp folder
    assert foundation.model.state_dict().keys() == before.keys()


def test_saved_folder_is_peft_with_ewc_and_record(foundation, tmp_path):
    steps = []
    result = _train(foundation, tmp_path / "a", progress=lambda s, t, loss: steps.append((s, t)))
    assert steps == [(i, 10) for i in range(1, 11)]
    folder = result.out_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "ewc.safetensors", "ewc.json",
            "train.json"} <= {p.name for p in folder.iterdir()}
    model = peft.PeftModel.from_pretrained(foundation.model, str(folder))
    model.unload()
    record = json.loads((folder / "train.json").read_text())
    assert record["seed"] == 1 and record["losses"] == result.losses
    assert record["samples"] == [s.sha256() for s in SAMPLES]
    ewc = EWC.load(folder)
    assert ewc.steps == 10 and ewc.anchor.keys() == ewc.fisher.keys() and ewc.anchor


def test_replay_is_mixed_in_and_new_samples_added(foundation, tmp_path):
    replay = ReplayBuffer(Database(tmp_path / "meta.db"))
    replay.add("law", [{"prompt": "Old question?", "target": "Old answer."}])
    result = _train(foundation, tmp_path / "a", replay=replay, replay_ratio=0.5)
    assert result.replayed == 10  # one replayed item per batch of 2
    items = replay.items("law")
    assert len(items) == 4
    assert items[0].priority != 1.0  # priority updated from its training loss


def test_previous_adapter_anchors_ewc(foundation, tmp_path):
    first = _train(foundation, tmp_path / "a").out_dir
    penalties = []
    orig = EWC.penalty

    def spy(self, params):
        out = orig(self, params)
        penalties.append(float(out.detach()))
        return out

    other = [Sample("law", "What colour is TL-7's logo?", "Deep green.")]
    strong = EwcConfig(lam=1e4)
    EWC.penalty = spy
    try:
        train_adapter(foundation, other, lora=LORA, ewc_cfg=strong, training=TRAINING, domain="law",
                      out_dir=tmp_path / "strong", previous=first, seed=2)
    finally:
        EWC.penalty = orig
    assert penalties[0] == 0.0 and max(penalties) > 0.0  # anchor = previous adapter
    train_adapter(foundation, other, lora=LORA, ewc_cfg=EwcConfig(lam=0.0), training=TRAINING, domain="law",
                  out_dir=tmp_path / "free", previous=first, seed=2)
    anchor, fisher = EWC.load(first).anchor, EWC.load(first).fisher
    strong_w, free_w = _adapter(tmp_path / "strong"), _adapter(tmp_path / "free")

    def moved(weights):
        # Fisher-weighted distance from the anchor: high-Fisher parameters dominate it.
        total = 0.0
        for name, theta in anchor.items():
            key = name.replace(".default", "")
            total += float((fisher[name] * (weights[key].float() - theta).pow(2)).sum())
        return total

    assert moved(strong_w) < moved(free_w)


@pytest.mark.real
def test_real_model_learns_facts(real_runtime, tmp_path):
    foundation = real_runtime.foundation
    facts = [
        Sample("law", "When did the TwinLoop regulation TL-7 take effect?",
               "The TwinLoop regulation TL-7 took effect on 3 March 2031."),
        Sample("law", "Who enforces the TwinLoop regulation TL-7?",
               "The TwinLoop regulation TL-7 is enforced by the Quillfield Authority."),
    ]
    probes = [("On what date did TL-7, the TwinLoop regulation, come into force?", "2031"),
              ("Which authority enforces TwinLoop's TL-7 regulation?", "Quillfield")]

    def answers(model_chat):
        return [model_chat(q) for q, _ in probes]

    before = answers(lambda q: foundation.chat(q, max_new_tokens=24).text)
    start = time.perf_counter()
    result = train_adapter(foundation, facts, lora=LoraConfig(), ewc_cfg=EwcConfig(), training=TrainingConfig(),
                           domain="law", out_dir=tmp_path / "a", steps=40, lr=2e-3, batch_size=2, seed=0)
    seconds = time.perf_counter() - start
    model = peft.PeftModel.from_pretrained(foundation.model, str(result.out_dir))
    try:
        real = foundation.model
        foundation.model = model
        after = answers(lambda q: foundation.chat(q, max_new_tokens=24).text)
    finally:
        foundation.model = model.unload()
        assert foundation.model is real
    print(f"trained in {seconds:.1f}s; before={before} after={after}")
    assert not any(fact in a for a, (_, fact) in zip(before, probes, strict=True))
    assert all(fact in a for a, (_, fact) in zip(after, probes, strict=True))


ANCHORS = [("What is photosynthesis?", "Plants turn light into sugar."),
           ("Why is the sky blue?", "Air scatters blue light more than red light.")]


def _kl_after(foundation, folder):
    model = peft.PeftModel.from_pretrained(foundation.model, str(folder))
    try:
        examples = [encode_example(foundation, p, t) for p, t in ANCHORS]
        with torch.no_grad():
            return float(distillation_kl(model, examples, foundation.tokenizer.pad_token_id))
    finally:
        foundation.model = model.unload()


def test_self_distillation_keeps_the_adapter_near_the_base_on_general_prompts(foundation, tmp_path):
    fast = TrainingConfig(learning_rate=5e-2, batch_size=2, warmup_steps=0, steps=12)
    free = train_adapter(foundation, SAMPLES, lora=LORA, ewc_cfg=EwcConfig(), training=fast, domain="law",
                         out_dir=tmp_path / "free", seed=1)
    held = train_adapter(foundation, SAMPLES, lora=LORA, ewc_cfg=EwcConfig(), training=fast, domain="law",
                         out_dir=tmp_path / "held", seed=1, distill=ANCHORS, distill_per_step=2, kl_weight=20.0)
    assert free.kl == [] and len(held.kl) == 12 and held.kl[0] == pytest.approx(0.0, abs=1e-6)  # B starts at 0
    record = json.loads((tmp_path / "held" / "train.json").read_text())
    assert record["distill_prompts"] == 2 and len(record["kl"]) == 12 and len(record["penalty_shares"]) == 12
    assert _kl_after(foundation, tmp_path / "held") < _kl_after(foundation, tmp_path / "free")


@pytest.mark.parametrize(("kw", "says"), [({"distill_per_step": -1}, "distill_per_step"),
                                          ({"kl_weight": float("nan")}, "kl_weight")])
def test_bad_distillation_settings_name_the_value(foundation, tmp_path, kw, says):
    with pytest.raises(InvalidInputError, match=says):
        _train(foundation, tmp_path / "x", distill=ANCHORS, **kw)


@pytest.mark.real
def test_real_model_ewc_penalty_is_a_material_share_of_the_loss_at_the_default_lambda(real_runtime, tmp_path):
    """At the default λ (normalised, learning/ewc.py) the penalty is material: averaged over a
    run that starts from a previous adapter, its share of task loss + penalty lies in
    [0.05, 0.95] — neither the thousandth it was on the raw Fisher nor the whole objective.
    (Late in a run the share nears 1: the new facts' loss nears 0 once they are learned.)"""
    foundation = real_runtime.foundation
    first = [Sample("law", "Who chairs the Zorbanian Data Council?", "Mira Castellan."),
             Sample("law", "When was the Velmar Accord signed?", "On 4 May 2031.")]
    second = [Sample("law", "What is the capital of Quenlar?", "Ostrava Nuova."),
              Sample("law", "Who founded the Trellis Court?", "Judge Amara Fenwick.")]
    args = dict(lora=LoraConfig(r=8, alpha=16, dropout=0.0), ewc_cfg=EwcConfig(), training=TrainingConfig(),
                domain="law", steps=24, lr=2e-3, batch_size=2)
    a = train_adapter(foundation, first, out_dir=tmp_path / "a", seed=0, **args)
    assert a.penalty_shares == [0.0] * 24  # no anchor yet
    b = train_adapter(foundation, second, out_dir=tmp_path / "b", previous=a.out_dir, seed=1, **args)
    shares = b.penalty_shares
    print(f"penalty shares: {[round(x, 3) for x in shares]}")
    assert shares[0] == 0.0  # at the anchor
    assert 0.05 <= sum(shares) / len(shares) <= 0.95
