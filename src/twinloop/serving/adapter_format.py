"""An adapter on disk: reading a LoRA folder in PEFT's standard format and checking that it fits
a base model, before anything touches the model.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` — the layout PEFT
writes with ``save_pretrained``, so vLLM or LoRAX can load the same artifacts (docs/DESIGN.md
"State"). Everything here is pure: it reads files and compares the config with the base's module
names, and needs no lock. :class:`~twinloop.serving.adapters.AdapterRegistry` calls it before it
puts an adapter onto the live model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors.torch import load_file

from twinloop.kernel.errors import ModelLoadError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def read_adapter_folder(folder: Path, module_names: Sequence[str], *,
                        label: str | None = None) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """Read and check an adapter folder without touching any model.

    Args:
        folder: Folder with :data:`CONFIG_FILE` and :data:`WEIGHTS_FILE`.
        module_names: Module names of the base the adapter is meant for.
        label: How error messages name the adapter instead of its folder, e.g.
            ``"adapter artifact 3f2a…"``: a caller that answers remote requests must not
            reveal where its files live (docs/DESIGN.md "State").

    Returns:
        The config, prepared as by :func:`prepare_config`, and the weights on CPU.

    Raises:
        ModelLoadError: Missing folder or file, unreadable or not a causal-LM LoRA config,
            target modules absent from the base, no tensors, or a tensor holding NaN or Inf.
    """
    what = label or f"adapter folder {folder}"

    def clean(e: Exception) -> str:
        # Library errors (PEFT, safetensors, OSError) may quote the file's path.
        text = str(e)
        return text.replace(str(folder), "<adapter>") if label else text

    if not folder.is_dir():
        raise ModelLoadError(f"{what}: not found" if label else f"adapter folder not found: {folder}")
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / file).is_file():
            raise ModelLoadError(f"{what} has no {file}")
    try:
        raw = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{what}: cannot read {CONFIG_FILE}: {clean(e)}") from e
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        kind = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ModelLoadError(f"{what}: {CONFIG_FILE} is not a LoRA adapter (peft_type={kind!r})")
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{what}: cannot read {CONFIG_FILE}: {clean(e)}") from e
    config = prepare_config(config, module_names, what)
    try:
        weights = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ModelLoadError(f"{what}: cannot read {WEIGHTS_FILE}: {clean(e)}") from e
    if not weights:
        raise ModelLoadError(f"{what}: {WEIGHTS_FILE} holds no tensors")
    check_finite(weights, what)
    return config, weights


def check_finite(weights: dict[str, torch.Tensor], what: str) -> None:
    """Refuse weights holding NaN or Inf.

    PEFT loads them without complaint, and every request routed to the adapter would then
    generate garbage (NaN logits sample token 0) while the release looks healthy.

    Raises:
        ModelLoadError: Naming the first bad tensor and how many values are bad.
    """
    for key in sorted(weights):
        t = weights[key]
        if not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            kinds = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            if kinds == "NaN" and bool(torch.isinf(t).any()):
                kinds = "NaN and Inf"
            raise ModelLoadError(f"{what}: tensor {key!r} holds {bad} {kinds} value(s) of {t.numel()}")


def prepare_config(config: Any, module_names: Sequence[str], what: str) -> LoraConfig:
    """Make ``config`` a causal-LM, inference-mode LoRA config whose targets exist in the base.

    Args:
        config: The config read from a folder or given by a caller (changed in place).
        module_names: Module names of the base.
        what: How error messages name the adapter, e.g. ``"adapter 'law@rel_ab12'"``.

    Raises:
        ModelLoadError: Not a LoRA config, a task other than causal LM, or targets absent
            from the base.
    """
    if not isinstance(config, LoraConfig):
        raise ModelLoadError(f"{what}: not a LoRA adapter ({type(config).__name__})")
    task = getattr(config.task_type, "value", config.task_type)
    if task not in (None, "CAUSAL_LM"):
        raise ModelLoadError(f"{what}: task_type {task!r} is not CAUSAL_LM")
    # Always a causal-LM wrapper: a plain PeftModel would forward generate() to the base
    # and silently ignore adapter_names.
    config.task_type = "CAUSAL_LM"
    config.inference_mode = True
    check_target_modules(config.target_modules, module_names, what)
    return config


def check_target_modules(targets: Any, module_names: Sequence[str], what: str) -> None:
    """Check that every target module of an adapter exists in the base.

    PEFT itself only fails when *none* match; a partial match would silently leave some of
    the adapter's weights unused.

    Raises:
        ModelLoadError: ``targets`` unset, a pattern matching nothing, or names missing.
    """
    if targets is None:
        raise ModelLoadError(f"{what}: target_modules is not set")
    if isinstance(targets, str):
        if targets == "all-linear":
            return
        if not any(re.fullmatch(targets, n) for n in module_names):
            raise ModelLoadError(f"{what}: target_modules pattern {targets!r} matches no module of the base")
        return
    missing = [t for t in sorted(targets) if not any(n == t or n.endswith("." + t) for n in module_names)]
    if missing:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in module_names if "proj" in n})
        raise ModelLoadError(f"{what}: target modules {missing} not found in the base (it has e.g. {leaves})")
