"""Elastic Weight Consolidation on adapter parameters (paper §4.3)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from twinloop.kernel.config import EwcConfig
from twinloop.kernel.errors import IntegrityError, InvalidInputError
from twinloop.learning.ewc import (
    EWC,
    META_FILE,
    TENSORS_FILE,
    estimate_fisher,
    trainable_parameters,
)


def seeded_ewc(lam: float = 0.7, beta: float = 0.9) -> tuple[EWC, dict[str, torch.Tensor]]:
    """An EWC state on two small tensors with a random positive Fisher and anchor."""
    g = torch.Generator().manual_seed(0)
    params = {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(3, generator=g)}
    ewc = EWC(lam=lam, beta=beta)
    ewc.consolidate(params)
    ewc.fisher = {k: torch.rand(v.shape, generator=g) + 0.1 for k, v in params.items()}
    return ewc, params


def test_penalty_is_zero_at_the_anchor():
    ewc, params = seeded_ewc()
    assert ewc.penalty(params).item() == 0.0


def test_penalty_gradient_is_2_lambda_F_delta():
    ewc, anchor = seeded_ewc(lam=0.7)
    theta = {k: (v + torch.randn_like(v)).requires_grad_(True) for k, v in anchor.items()}
    ewc.penalty(theta).backward()
    for name, t in theta.items():
        expected = 2 * 0.7 * ewc.fisher[name] * (t.detach() - anchor[name])
        assert torch.allclose(t.grad, expected, atol=1e-6), name


def test_penalty_value():
    ewc, anchor = seeded_ewc(lam=0.3)
    theta = {k: v + 0.5 for k, v in anchor.items()}
    expected = 0.3 * sum((ewc.fisher[k] * 0.25).sum() for k in anchor)
    assert torch.allclose(ewc.penalty(theta), expected)


def test_parameters_without_an_anchor_contribute_zero():
    ewc, anchor = seeded_ewc()
    new = torch.ones(5, requires_grad=True)
    assert ewc.penalty({"b.weight": new}).item() == 0.0  # first task for this module
    assert EWC(1.0, 0.9).penalty({"a.weight": anchor["a.weight"]}).item() == 0.0  # nothing anchored
    theta = {**{k: v + 1 for k, v in anchor.items()}, "b.weight": new}
    assert ewc.penalty(theta).item() == pytest.approx(ewc.penalty({k: v + 1 for k, v in anchor.items()}).item())


def test_fisher_decay_over_two_accumulations():
    ewc = EWC(lam=1.0, beta=0.9)
    g1, g2 = torch.tensor([1.0, -2.0, 0.0]), torch.tensor([3.0, 0.5, -1.0])
    ewc.accumulate({"w": g1})
    assert torch.allclose(ewc.fisher["w"], 0.1 * g1**2)  # F starts at 0
    ewc.accumulate({"w": g2})
    assert torch.allclose(ewc.fisher["w"], 0.9 * (0.1 * g1**2) + 0.1 * g2**2)
    ewc.accumulate({"w": g2**2}, squared=True)
    assert torch.allclose(ewc.fisher["w"], 0.9 * (0.9 * (0.1 * g1**2) + 0.1 * g2**2) + 0.1 * g2**2)
    assert ewc.steps == 3


def test_accumulate_rejects_shape_change_naming_the_parameter():
    ewc = EWC(1.0, 0.9)
    ewc.accumulate({"w": torch.ones(3)})
    with pytest.raises(InvalidInputError, match=r"'w'.*\(4,\).*\(3,\)"):
        ewc.accumulate({"w": torch.ones(4)})


@pytest.mark.parametrize(("lam", "beta", "needle"), [(-1.0, 0.9, "-1.0"), (0.1, 1.5, "1.5"), (0.1, -0.1, "-0.1")])
def test_bad_hyperparameters_name_the_value(lam, beta, needle):
    with pytest.raises(InvalidInputError, match=needle):
        EWC(lam, beta)


def test_from_config():
    ewc = EWC.from_config(EwcConfig(lam=0.2, beta=0.8))
    assert (ewc.lam, ewc.beta) == (0.2, 0.8)


def test_save_load_round_trip(tmp_path):
    ewc, anchor = seeded_ewc(lam=0.05)
    ewc.steps = 4
    ewc.save(tmp_path)
    assert json.loads((tmp_path / META_FILE).read_text())["lam"] == 0.05
    back = EWC.load(tmp_path)
    assert (back.lam, back.beta, back.steps) == (0.05, 0.9, 4)
    for name in anchor:
        assert torch.equal(back.anchor[name], ewc.anchor[name])
        assert torch.equal(back.fisher[name], ewc.fisher[name])
    theta = {k: v * 1.3 for k, v in anchor.items()}
    assert torch.allclose(back.penalty(theta), ewc.penalty(theta))
    assert EWC.load(tmp_path, lam=0.5).lam == 0.5  # settings may override the stored λ
    state = ewc.state_dict()
    other = EWC(0.0, 0.0)
    other.load_state_dict(state)
    assert torch.allclose(other.penalty(theta), ewc.penalty(theta))


def test_load_detects_a_mismatched_tensor_file(tmp_path):
    ewc, _ = seeded_ewc()
    ewc.save(tmp_path)
    (tmp_path / TENSORS_FILE).write_bytes((tmp_path / TENSORS_FILE).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError, match="SHA-256"):
        EWC.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        EWC.load(tmp_path / "nowhere")


class Tiny(nn.Module):
    """A frozen 'base' layer under a trainable 'adapter' layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Linear(4, 4)
        self.adapter = nn.Linear(4, 2)
        self.base.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, 4) → (batch, 2)
        return self.adapter(torch.tanh(self.base(x)))


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_estimate_fisher_touches_only_trainable_parameters():
    model = Tiny()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(1, 4, generator=g), torch.randn(1, 2, generator=g)) for _ in range(8)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    fisher = estimate_fisher(model, batches, mse, n_samples=5)
    assert set(fisher) == {"adapter.weight", "adapter.bias"} == set(trainable_parameters(model))
    assert all(p.grad is None for p in model.parameters())  # no .grad written, frozen or not
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training  # mode restored
    # the mean over exactly the first 5 batches
    manual = torch.zeros(2, 4)
    for batch in batches[:5]:
        (gw,) = torch.autograd.grad(mse(model, batch), [model.adapter.weight])
        manual += gw**2 / 5
    assert torch.allclose(fisher["adapter.weight"], manual)
    with pytest.raises(InvalidInputError, match="0"):
        estimate_fisher(model, batches, mse, n_samples=0)


def test_estimate_fisher_on_a_peft_lora_model():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(Tiny(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["adapter"]))
    batches = [(torch.randn(1, 4), torch.randn(1, 2)) for _ in range(3)]
    fisher = estimate_fisher(model, batches, mse, n_samples=100)
    assert fisher and all("lora_" in name for name in fisher)
    ewc = EWC(1.0, 0.9)
    ewc.accumulate(fisher, squared=True)
    ewc.consolidate(trainable_parameters(model))
    assert ewc.penalty(trainable_parameters(model)).item() == 0.0


def sgd_on_new_task(lam: float, ewc: EWC, start: dict[str, torch.Tensor], steps: int = 20) -> torch.Tensor:
    """Train a fresh copy of the anchored weights on task B; return the weight change (2, 4)."""
    layer = nn.Linear(4, 2)
    layer.load_state_dict(start)
    ewc.lam = lam
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x_b = torch.ones(16, 4)  # task B uses every input feature
    y_b = torch.full((16, 2), 3.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((layer(x_b) - y_b) ** 2).mean() + ewc.penalty(dict(layer.named_parameters()))
        loss.backward()
        opt.step()
    return (layer.weight.detach() - start["weight"]).abs()


def test_larger_lambda_moves_important_parameters_less():
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    # Task A only uses feature 0, so only weight[:, 0] (and the bias) get Fisher mass.
    x_a = torch.zeros(32, 4)
    x_a[:, 0] = torch.randn(32)
    y_a = torch.randn(32, 2)
    batches = [(x_a[i:i + 1], y_a[i:i + 1]) for i in range(32)]
    fisher = estimate_fisher(layer, batches, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), n_samples=32)
    assert fisher["weight"][:, 1:].abs().max() == 0 and fisher["weight"][:, 0].min() > 0
    ewc = EWC(lam=0.0, beta=0.0)  # β = 0: F is exactly this estimate
    ewc.accumulate(fisher, squared=True)
    ewc.consolidate(layer.named_parameters())
    start = {k: v.detach().clone() for k, v in layer.state_dict().items()}

    free = sgd_on_new_task(0.0, ewc, start)
    held = sgd_on_new_task(3.0, ewc, start)  # 2λF·lr < 1 keeps SGD on the penalty stable
    # important weights (column 0) move much less under EWC; unimportant ones move as freely
    assert held[:, 0].max() < 0.5 * free[:, 0].min()
    assert held[:, 1:].sum() > 0.5 * free[:, 1:].sum()


NORMALISED = [
    # (share of the anchor moved, penalty / λ): λ is the cost of undoing the adapter entirely
    (0.0, 0.0),
    (0.3, 0.09),
    (1.0, 1.0),
]


@pytest.mark.parametrize(("moved", "expected"), NORMALISED)
def test_the_normalised_penalty_is_the_squared_share_of_the_adapter_moved(moved, expected):
    anchor = {"a": torch.tensor([1.0, -2.0, 0.5]), "b": torch.tensor([[3.0]])}
    fisher = {"a": torch.tensor([1e-6, 4e-6, 2e-6]), "b": torch.tensor([[9e-6]])}  # any scale
    for scale in (1.0, 1e6):
        ewc = EWC(lam=2.0, beta=0.9, normalised=True)
        ewc.anchor = {k: v.clone() for k, v in anchor.items()}
        ewc.fisher = {k: v * scale for k, v in fisher.items()}
        params = {k: v * (1 - moved) for k, v in anchor.items()}
        assert float(ewc.penalty(params)) == pytest.approx(2.0 * expected, rel=1e-5)


def test_a_normalised_penalty_without_anything_learned_is_zero():
    ewc = EWC(lam=1.0, beta=0.9, normalised=True)
    ewc.anchor = {"a": torch.zeros(3)}
    ewc.fisher = {"a": torch.ones(3)}
    assert float(ewc.penalty({"a": torch.ones(3)})) == 0.0


def test_the_penalty_form_survives_save_and_load(tmp_path):
    ewc = EWC(lam=1.0, beta=0.9, normalised=True)
    ewc.accumulate({"a": torch.ones(2)})
    ewc.consolidate({"a": torch.ones(2)})
    ewc.save(tmp_path)
    assert EWC.load(tmp_path).normalised is True
    assert EWC.load(tmp_path, normalised=False).normalised is False
