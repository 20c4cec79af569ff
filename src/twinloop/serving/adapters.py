"""The resident LoRA adapters: one PEFT model, many named adapters, chosen per request.

docs/DESIGN.md "Serving": every resident adapter sits on ONE PEFT model under a unique name
such as ``law@rel_ab12``; a request picks its adapter per call with
``generate(..., adapter_names=[...])`` (PEFT's mixed-adapter batch, ``"__base__"`` for none).
Nothing here ever switches a global active adapter for serving: ``set_adapter`` is not
thread-safe (peft#804).

Two locks keep loads and unloads away from generation:

* a reader/writer lock (writer-preferring, so a load is not starved by back-to-back batches):
  ``generating()`` takes the shared side, ``load``/``add``/``unload`` the exclusive side, so
  the set of adapters never changes during a ``generate`` call;
* inside the shared side, generate calls are serialised, because PEFT implements
  ``adapter_names`` by registering forward pre-hooks on the shared LoRA layers for the length
  of each call: two concurrent calls would see each other's hooks (and the wrong batch size).

Refcounts (``acquire``/``release``) cover the time between admission and the end of a
request: ``unload`` refuses new users at once and waits until the last one has finished, so it
never breaks an in-flight generation.

Reading an adapter folder and checking it against the base is in
:mod:`twinloop.serving.adapter_format`; this module keeps adapters resident on the live model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModelForCausalLM,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer

from twinloop.kernel.errors import InvalidInputError, ModelLoadError
from twinloop.serving.adapter_format import prepare_config, read_adapter_folder
from twinloop.serving.types import BASE_ADAPTER

log = logging.getLogger(__name__)

_PEFT_CALL_HOOKS = {"_adapter_names_pre_forward_hook", "_alora_offsets_pre_forward_hook"}
"""PEFT's per-generate-call hooks (peft/tuners/lora/model.py), matched by name."""

# PEFT keys adapters by name inside torch ModuleDicts, which reject "." in keys, and uses
# names as substrings of state-dict keys, so "lora_" inside a name confuses its key mapping.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_@:+\-]{0,127}")


class AdapterNameTakenError(InvalidInputError):
    """A load named an adapter that is already resident and the caller did not allow replacing it."""


def validate_adapter_name(name: str) -> str:
    """Check that ``name`` can be a resident adapter's name and return it.

    Raises:
        InvalidInputError: Empty, with whitespace or other characters PEFT cannot key
            modules by, containing ``lora_``, or the reserved ``__base__``.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"adapter name must be a non-empty string, got {name!r}")
    if name == BASE_ADAPTER:
        raise InvalidInputError(f"adapter name {name!r} is reserved for the base model")
    if not _NAME_RE.fullmatch(name) or "lora_" in name:
        raise InvalidInputError(
            f"invalid adapter name {name!r}: use letters, digits and _ @ : + - "
            "(no whitespace or '.', at most 128 characters, not containing 'lora_')"
        )
    return name


@dataclass(frozen=True)
class AdapterInfo:
    """A snapshot of one resident adapter."""

    name: str
    path: str | None
    """Folder it was loaded from; None for an adapter created in memory with ``add``. Kept
    for this process's logs; :meth:`to_dict` (what the API lists) leaves it out."""
    loaded_at: float
    """Unix time of the (last) load."""
    parameters: int
    """Adapter parameters (LoRA A and B matrices)."""
    r: int
    target_modules: tuple[str, ...]
    in_use: int
    """Requests holding it now (queued or generating)."""
    retiring: bool
    """True while ``unload`` waits for its last users."""

    @property
    def source(self) -> str | None:
        """The folder's own name: for an artifact-store folder, its content digest."""
        return Path(self.path).name if self.path else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for the API's adapter listing): ``source`` instead of the
        folder path, so a listing never tells a caller where files live on the server."""
        doc = asdict(self)
        doc.pop("path")
        doc["source"] = self.source
        return doc


@dataclass
class _Record:
    """One resident adapter: everything about it in one place, not in parallel dicts."""

    name: str
    path: str | None
    loaded_at: float
    parameters: int
    config: LoraConfig
    in_use: int = 0
    retiring: bool = False

    def snapshot(self) -> AdapterInfo:
        targets = self.config.target_modules
        if isinstance(targets, str):
            targets_t: tuple[str, ...] = (targets,)
        else:
            targets_t = tuple(sorted(targets or ()))
        return AdapterInfo(self.name, self.path, self.loaded_at, self.parameters, self.config.r, targets_t,
                           self.in_use, self.retiring)


class _RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (writer preference)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _GuardedPeftModel(PeftModelForCausalLM):
    """A causal-LM PEFT wrapper whose every ``generate``/``forward`` holds the registry's
    generation lock, whoever calls it (see :meth:`AdapterRegistry.generating`)."""

    twinloop_registry: AdapterRegistry | None = None

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        registry = self.twinloop_registry
        if registry is None:
            return super().generate(*args, **kwargs)
        with registry.generating():
            return super().generate(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        registry = self.twinloop_registry
        if registry is None:
            return super().forward(*args, **kwargs)
        with registry.generating():
            return super().forward(*args, **kwargs)


class AdapterRegistry:
    """The LoRA adapters resident on a Foundation's model, keyed by unique name.

    The first ``load``/``add`` wraps ``foundation.model`` in a ``PeftModelForCausalLM`` and
    sets ``foundation.model`` to the wrapper, so ``Foundation.chat_batch(...,
    adapter_names=[...])`` works; before that, and again once the last adapter is unloaded,
    ``foundation.model`` is the plain base. No adapter is ever *active* by default: a call
    without ``adapter_names`` always gets the base model's answer.

    The wrapper holds :meth:`generating` in its own ``generate``/``forward``, so direct calls
    such as ``Foundation.chat`` from other threads queue behind a running batch instead of
    picking up its PEFT per-call hooks. Do not call ``load``/``unload``
    from inside a ``generating()`` block (or from an engine observer): the exclusive lock waits
    for that block to end.
    """

    def __init__(self, foundation: Any) -> None:
        """Wrap nothing yet; remember the base model and its module names.

        Args:
            foundation: The :class:`~twinloop.foundation.model.Foundation` whose model the
                adapters attach to.
        """
        self.foundation = foundation
        model = foundation.model
        if isinstance(model, PeftModelForCausalLM):
            raise ModelLoadError("the foundation's model is already a PEFT model; build one AdapterRegistry per base")
        self._base = model
        self._peft: PeftModelForCausalLM | None = None
        # Leaf module names of the base, for checking an adapter's target_modules before PEFT
        # injects anything (PEFT only fails when *none* match; a partial match would silently
        # leave some of the adapter's weights unused).
        self._module_names = [n for n, _ in model.named_modules() if n]
        self._records: dict[str, _Record] = {}
        self._state = threading.Condition()  # guards _records and refcounts
        self._rw = _RWLock()
        self._forward = threading.Lock()
        self._local = threading.local()  # generating() depth per thread, for re-entrance
        self._reload_seq = 0

    # -- queries -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the resident adapters, sorted (retiring ones included)."""
        with self._state:
            return sorted(self._records)

    def __contains__(self, name: object) -> bool:
        with self._state:
            return name in self._records

    def info(self) -> dict[str, AdapterInfo]:
        """Name → snapshot (path, load time, parameter count, users) of each resident adapter."""
        with self._state:
            return {n: r.snapshot() for n, r in sorted(self._records.items())}

    def in_use(self, name: str) -> int:
        """How many requests hold ``name`` now (0 for an unknown name)."""
        with self._state:
            rec = self._records.get(name)
            return rec.in_use if rec else 0

    # -- refcounts ---------------------------------------------------------------------------

    def acquire(self, name: str) -> None:
        """Hold ``name`` for one request, so ``unload`` waits for it; ``__base__`` is free.

        Raises:
            InvalidInputError: ``name`` is not resident or is being unloaded.
        """
        if name == BASE_ADAPTER:
            return
        with self._state:
            rec = self._records.get(name)
            if rec is None:
                raise InvalidInputError(f"adapter {name!r} is not loaded (resident: {sorted(self._records)})")
            if rec.retiring:
                raise InvalidInputError(f"adapter {name!r} is being unloaded")
            rec.in_use += 1

    def release(self, name: str) -> None:
        """Give back one hold taken with :meth:`acquire`. Never blocks."""
        if name == BASE_ADAPTER:
            return
        with self._state:
            rec = self._records.get(name)
            if rec is None or rec.in_use <= 0:
                log.warning("release of adapter %r that is not held", name)
                return
            rec.in_use -= 1
            if rec.in_use == 0:
                self._state.notify_all()

    @contextlib.contextmanager
    def generating(self) -> Iterator[Any]:
        """Hold while calling ``generate`` on ``foundation.model``; yields that model.

        Shared against load/unload (they wait for it, and it waits for them), and serialised
        against other generate calls because PEFT's ``adapter_names`` works through forward
        hooks installed on the shared layers for the length of a call. Re-entrant within a
        thread. The wrapped model takes it by itself in ``generate``/``forward``, so a plain
        ``Foundation.chat`` from another thread waits for a running batch instead of picking
        up its hooks.
        """
        if getattr(self._local, "depth", 0):
            self._local.depth += 1
            try:
                yield self.foundation.model
            finally:
                self._local.depth -= 1
            return
        with self._rw.shared(), self._forward:
            self._local.depth = 1
            try:
                yield self.foundation.model
            finally:
                self._local.depth = 0
                self._drop_stale_hooks()

    def _drop_stale_hooks(self) -> None:
        """Remove PEFT per-call hooks left behind by a generate call that raised.

        PEFT (0.21) installs the ``adapter_names`` forward pre-hooks in a context manager
        without try/finally, so an exception mid-generate leaves them on every LoRA layer and
        every later call silently runs with the failed batch's adapters. Outside a generate
        call (we hold the forward lock) any such hook is stale.
        """
        if self._peft is None:
            return
        dropped = 0
        for module in self._peft.modules():
            hooks = module._forward_pre_hooks
            if not hooks:
                continue
            for key, fn in list(hooks.items()):
                if getattr(getattr(fn, "func", None), "__name__", "") in _PEFT_CALL_HOOKS:
                    del hooks[key]
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
                    dropped += 1
        if dropped:
            log.warning("removed %d stale PEFT adapter hooks left by a failed generate call", dropped)

    # -- load / add / unload -----------------------------------------------------------------

    def load(self, name: str, path: str | Path, *, replace: bool = True, label: str | None = None) -> AdapterInfo:
        """Load a LoRA adapter folder (standard PEFT format) under ``name``.

        Loading a name that is already resident replaces it (unless ``replace`` is False):
        the new weights are first loaded and checked under a temporary name, so a bad folder
        leaves the old adapter in place. Requests already admitted with that name use the new
        weights from their next batch.

        Args:
            name: Unique resident name, e.g. ``law@rel_ab12``.
            path: Folder with ``adapter_config.json`` and ``adapter_model.safetensors``.
            replace: False refuses a name that is already resident (checked under the
                writer lock, so two loads cannot both pass the check).
            label: How errors name the adapter instead of its folder (see
                :func:`~twinloop.serving.adapter_format.read_adapter_folder`).

        Raises:
            InvalidInputError: Bad name.
            AdapterNameTakenError: ``name`` is resident and ``replace`` is False.
            ModelLoadError: Missing folder or file, not a causal-LM LoRA adapter, target
                modules absent from the base, weights that do not fit the base or that hold
                NaN or Inf.
        """
        validate_adapter_name(name)
        if not replace:
            self._check_free(name)  # cheap refusal before reading any file; re-checked under the lock
        folder = Path(path)
        config, weights = read_adapter_folder(folder, self._module_names, label=label)
        return self._install_replacing(name, config, weights, str(folder), replace=replace)

    def add(self, name: str, peft_config: LoraConfig) -> AdapterInfo:
        """Create a fresh adapter in memory under ``name`` (replacing a resident one).

        With ``init_lora_weights=True`` (PEFT's default) B is zero, so the adapter is the
        identity until trained (paper §4.2).

        Raises:
            InvalidInputError: Bad name, or not a LoRA config.
            ModelLoadError: Target modules absent from the base.
        """
        validate_adapter_name(name)
        if not isinstance(peft_config, LoraConfig):
            raise InvalidInputError(f"adapter {name!r}: expected a peft.LoraConfig, got {type(peft_config).__name__}")
        config = prepare_config(copy.deepcopy(peft_config), self._module_names, f"adapter {name!r}")
        return self._install_replacing(name, config, None, None)

    def unload(self, name: str, timeout: float | None = None) -> None:
        """Remove ``name`` once no request holds it.

        New ``acquire`` calls for it fail at once; the removal waits for queued and
        in-flight requests that hold it, then takes the exclusive lock briefly.

        Args:
            name: A resident adapter.
            timeout: Seconds to wait for its users; None waits as long as it takes.

        Raises:
            InvalidInputError: ``name`` is not resident.
            TimeoutError: Users still hold it after ``timeout``; it stays resident and usable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state:
            rec = self._records.get(name)
            if rec is None:
                raise InvalidInputError(f"adapter {name!r} is not loaded (resident: {sorted(self._records)})")
            rec.retiring = True
            while rec.in_use > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    rec.retiring = False
                    raise TimeoutError(f"adapter {name!r} still has {rec.in_use} request(s) after {timeout} s")
                self._state.wait(left)
                if self._records.get(name) is not rec:  # replaced or removed meanwhile
                    return
        with self._rw.exclusive():
            with self._state:
                if self._records.get(name) is not rec:
                    return
                del self._records[name]
            self._delete(name)
        log.info("unloaded adapter %s", name)

    # -- internals ---------------------------------------------------------------------------

    def _check_free(self, name: str) -> None:
        with self._state:
            if name in self._records:
                raise AdapterNameTakenError(f"adapter {name!r} is already loaded; unload it first")

    def _install_replacing(
        self, name: str, config: LoraConfig, weights: dict[str, torch.Tensor] | None, path: str | None,
        *, replace: bool = True,
    ) -> AdapterInfo:
        with self._rw.exclusive():
            if not replace:
                self._check_free(name)
            with self._state:
                old = self._records.get(name)
            if old is not None and weights is not None:
                # Prove the new weights load before the old adapter goes.
                with self._state:
                    self._reload_seq += 1
                    probe = f"{name}-reload{self._reload_seq}"
                self._install(probe, copy.deepcopy(config), weights)
                self._delete(probe)
            if old is not None:
                self._delete(name)
            try:
                parameters = self._install(name, config, weights)
            except Exception:
                if old is not None:
                    with self._state:
                        self._records.pop(name, None)
                        self._state.notify_all()
                raise
            rec = _Record(name, path, time.time(), parameters, config)
            with self._state:
                if old is not None:
                    # Admitted requests keep their holds on the new weights.
                    rec.in_use = old.in_use
                self._records[name] = rec
                self._state.notify_all()
        log.info("%s adapter %s (%d parameters)", "reloaded" if old else "loaded", name, parameters)
        return rec.snapshot()

    def _install(self, name: str, config: LoraConfig, weights: dict[str, torch.Tensor] | None) -> int:
        """Add ``name`` to the PEFT model, load ``weights`` if given; caller holds the writer lock."""
        try:
            if self._peft is None:
                self._peft = _GuardedPeftModel(self._base, config, adapter_name=name)
                self._peft.twinloop_registry = self
            else:
                self._peft.add_adapter(name, config)
                if not self._peft.peft_config.keys() - {name}:
                    # The wrapper was emptied by unloads: its config pointer must name a resident
                    # adapter. Safe here (no generate runs under the writer lock); layers are
                    # deactivated again just below.
                    self._peft.set_adapter(name, inference_mode=True)
        except (ValueError, RuntimeError, TypeError, KeyError) as e:
            raise ModelLoadError(f"cannot add adapter {name!r}: {e}") from e
        try:
            if weights is not None:
                self._load_weights(name, weights)
        except Exception:
            self._delete(name)
            raise
        self._settle()
        self.foundation.model = self._peft
        return sum(t.numel() for t in get_peft_model_state_dict(self._peft, adapter_name=name).values())

    def _load_weights(self, name: str, weights: dict[str, torch.Tensor]) -> None:
        assert self._peft is not None
        expected = set(get_peft_model_state_dict(self._peft, adapter_name=name))
        given = set(weights)
        if expected != given:
            extra, missing = sorted(given - expected), sorted(expected - given)
            raise ModelLoadError(
                f"adapter {name!r}: weights do not match its config "
                f"(unexpected: {extra[:3]}{'...' if len(extra) > 3 else ''}; "
                f"missing: {missing[:3]}{'...' if len(missing) > 3 else ''})"
            )
        try:
            with torch.no_grad():
                set_peft_model_state_dict(self._peft, weights, adapter_name=name)
        except RuntimeError as e:  # size mismatch: trained on another base
            raise ModelLoadError(f"adapter {name!r} does not fit this base model: {e}") from e

    def _delete(self, name: str) -> None:
        """Remove ``name`` from the PEFT model; caller holds the writer lock."""
        assert self._peft is not None
        self._peft.delete_adapter(name)
        remaining = list(self._peft.peft_config)
        if remaining:
            # delete_adapter may leave the wrapper's config pointer on nothing; point it at any
            # resident adapter (writer lock held, so peft#804's race cannot happen).
            active = self._peft.active_adapter
            if not isinstance(active, str) or active not in self._peft.peft_config:
                self._peft.set_adapter(remaining[0], inference_mode=True)
            self._settle()
        else:
            # No adapters: serve from the base itself (its LoRA layers are now empty shells).
            self.foundation.model = self._base

    def _settle(self) -> None:
        """No adapter active by default, nothing trainable, eval mode (dropout off)."""
        assert self._peft is not None
        # PEFT re-activates its "current" adapter on every add; clearing each layer's active
        # list makes a call without adapter_names the pure base, so only per-call names pick
        # an adapter (docs/DESIGN.md "Serving").
        for module in self._peft.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([], inference_mode=True)
        self._peft.requires_grad_(False)
        self._peft.eval()
