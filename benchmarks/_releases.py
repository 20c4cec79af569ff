"""Shared by the benchmark programs: a real candidate release with adapters on every domain."""

from __future__ import annotations

from pathlib import Path

from twinloop.runtime import Runtime


def candidate_with_adapters(rt: Runtime, tmp: Path) -> str:
    """A release with a fresh r=16 LoRA adapter (non-zero, so it does real work) per domain."""
    import torch
    from peft import LoraConfig, get_peft_model

    lcfg = rt.settings.lora
    torch.manual_seed(0)
    peft = get_peft_model(rt.foundation.model, LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=0.0,
                                                          target_modules=list(lcfg.target_modules),
                                                          init_lora_weights=False))
    folder = tmp / "adapter"
    peft.save_pretrained(str(folder))
    peft.unload()  # leave the shared base as it was
    reg = rt.releases
    art = reg.artifacts.put_dir(folder, "adapter")
    active = reg.pointer("active")
    rel = reg.create_candidate(active, {d: art.digest for d in rt.domains.names()}, rt.knowledge.current_revision(),
                               reg.get(active).router_json, {"benchmark": "release"})
    reg.approve(rel.id, "bench", "benchmark candidate")
    return rel.id
