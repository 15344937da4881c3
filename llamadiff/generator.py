"""The Python API: ``Generator``, ``GenerationConfig``, results and streaming.

A ``Generator`` owns one llama.cpp context, made on first use and reused by every later
call (its memory is cleared between prompts); it is re-made only when a call needs a
larger batch than it has. Calls on one Generator are serialised by a lock, so a
Generator can be shared between threads; for parallel generation use one Generator per
thread -- they can share a ``Model``.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from llamadiff._block import BlockDiffusion, StepInfo
from llamadiff._core import Context, Model, default_threads
from llamadiff._remask import RemaskPolicy, STRATEGIES, make_policy
from llamadiff.errors import UnsupportedModelError
from llamadiff.samplers import make_row_sampler

__all__ = ["Generator", "GenerationConfig", "GenerationResult", "StreamChunk", "StepInfo"]

Prompt = Union[str, Sequence[int], Sequence[dict]]


@dataclasses.dataclass
class GenerationConfig:
    """Options of one generation, validated on creation (and by ``replace``).

    ``block_length=None`` takes the model's trained block length (GGUF key
    ``diffusion.block_length``) or 4; ``steps=None`` means one step per position
    (``steps = block_length``). ``steps`` may not exceed ``block_length``: a step that
    has no position to commit would be a wasted forward pass.
    """

    max_new_tokens: int = 256
    block_length: Optional[int] = None
    steps: Optional[int] = None
    strategy: Union[str, RemaskPolicy] = "low_confidence_dynamic"
    threshold: float = 0.85
    eb_gamma: float = 0.35
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: Optional[Sequence[Union[str, int]]] = None
    cache: bool = True
    progress: bool = False
    callback: Optional[Callable[[StepInfo], Any]] = None
    profile: bool = False

    def __post_init__(self):
        self.validate()

    def replace(self, **changes) -> "GenerationConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        def integer(name, value, minimum):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, got {value}")

        integer("max_new_tokens", self.max_new_tokens, 1)
        if self.block_length is not None:
            integer("block_length", self.block_length, 1)
        if self.steps is not None:
            integer("steps", self.steps, 1)
            if self.block_length is not None and self.steps > self.block_length:
                raise ValueError(f"steps ({self.steps}) cannot exceed block_length "
                                 f"({self.block_length}): each step commits at least one token")
        if not isinstance(self.strategy, RemaskPolicy) and self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of "
                             f"{sorted(STRATEGIES)} or pass a RemaskPolicy")
        if not (0.0 < float(self.threshold) <= 1.0):
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not float(self.eb_gamma) > 0.0:
            raise ValueError(f"eb_gamma must be > 0, got {self.eb_gamma}")
        if not float(self.temperature) >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        integer("top_k", self.top_k, 0)
        if not (0.0 < float(self.top_p) <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        integer("seed", self.seed, 0)
        if self.seed >= 2 ** 64:
            raise ValueError("seed must be < 2**64")
        if self.callback is not None and not callable(self.callback):
            raise TypeError("callback must be callable")
        if self.stop is not None:
            if isinstance(self.stop, (str, int)):
                raise TypeError("stop must be a list of strings / token ids")
            for item in self.stop:
                if isinstance(item, bool) or not isinstance(item, (str, int)) or item == "":
                    raise TypeError(f"stop entries must be non-empty strings or token ids, got {item!r}")


@dataclasses.dataclass
class GenerationResult:
    text: str
    tokens: list            # generated token ids, cut at the first stop
    stop_reason: str        # "stop", "length", "cancelled" or "interrupted"
    stats: dict
    prompt_tokens: list


@dataclasses.dataclass
class StreamChunk:
    text: str               # text added by this block (UTF-8 safe across chunks)
    tokens: list            # token ids added by this block
    block_index: int
    stop_reason: Optional[str] = None   # set on the last chunk


class _StopMatcher:
    """Finds the first stop (token id or string) in generated tokens."""

    def __init__(self, model: Model, stop):
        self.ids = set(model.eog_token_ids if stop is None else ())
        self.strings = []
        for item in stop or ():
            if isinstance(item, int):
                if not 0 <= item < model.n_vocab:
                    raise ValueError(f"stop token id {item} is out of range")
                self.ids.add(item)
            else:
                ids = model.tokenize(item, add_special=False, parse_special=True)
                if len(ids) == 1 and model.token_to_piece(ids[0], special=True) == item:
                    self.ids.add(ids[0])      # a single (special) token: match by id
                else:
                    self.strings.append(item)

    def first_stop(self, model: Model, tokens: list) -> Optional[int]:
        """Index of the first token to drop (the stop itself), or None."""
        cut = next((i for i, t in enumerate(tokens) if t in self.ids), None)
        if self.strings:
            limit = len(tokens) if cut is None else cut
            text = b""
            for i in range(limit):
                text += model.token_bytes(tokens[i], special=True)
                decoded = text.decode("utf-8", "replace")
                if any(s in decoded for s in self.strings):
                    return i if cut is None else min(cut, i)
        return cut


class Generator:
    """Block-diffusion text generation (SDAR family) on a GGUF model.

    Parameters
    ----------
    model: a path to a GGUF file or a loaded ``Model``. Omitted: not yet available.
    n_ctx: KV cache size: prompt + generated tokens (rounded up to whole blocks) must fit.
    n_gpu_layers, n_threads: passed to llama.cpp (n_threads defaults to all usable cores).
    n_batch: tokens per decode call; prompts longer than this are prefilled in chunks.
    flash_attn, type_k, type_v: llama.cpp context settings.
    sampler: where the logits rows are sampled: "auto" (GPU when built with CUDA and a device
        is usable, else CPU), "cpu", "cuda", "backend" (greedy, inside llama.cpp's graph) or a
        RowSampler; see ``llamadiff.samplers``.
    """

    def __init__(self, model: Union[str, os.PathLike, Model], *, n_ctx: int = 4096,
                 n_gpu_layers: int = 0, n_threads: Optional[int] = None, n_batch: int = 512,
                 flash_attn="auto", type_k: str = "f16", type_v: str = "f16",
                 use_mmap: bool = True, sampler="auto"):
        if isinstance(model, Model):
            self.model = model
        else:
            self.model = Model(model, n_gpu_layers=n_gpu_layers, use_mmap=use_mmap)
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx <= 0:
            raise ValueError(f"n_ctx must be a positive int, got {n_ctx!r}")
        self.n_ctx = n_ctx
        self.n_threads = default_threads() if n_threads is None else int(n_threads)
        if self.n_threads < 1:
            raise ValueError("n_threads must be >= 1")
        self.n_batch = int(n_batch)
        if self.n_batch < 2:
            raise ValueError("n_batch must be >= 2")
        self._context_args = dict(flash_attn=flash_attn, type_k=type_k, type_v=type_v)
        self.sampler = make_row_sampler(sampler, n_threads=self.n_threads, model=self.model)
        self._ctx: Optional[Context] = None
        self._lock = threading.Lock()
        self.default_block_length = self._model_block_length()

    # -- resources -------------------------------------------------------------------

    def _model_block_length(self) -> int:
        value = self.model.meta("diffusion.block_length")
        try:
            value = int(value)
        except (TypeError, ValueError):
            return 4
        return value if value > 0 else 4

    def _context(self, block_length: int) -> tuple:
        """The reusable context; made (or re-made, for a larger batch) only when needed."""
        # the fused store pass decodes two blocks at once; llama.cpp caps batches at n_ctx
        need = min(max(self.n_batch, 2 * block_length), self.n_ctx)
        if self._ctx is not None and not self._ctx.closed and self._ctx.n_ubatch >= need:
            return self._ctx, 0.0
        if self._ctx is not None:
            self._ctx.close()
        t0 = time.perf_counter()
        self._ctx = Context(self.model, n_ctx=self.n_ctx, n_batch=need, n_ubatch=need,
                            n_threads=self.n_threads, causal=False, **self._context_args)
        if not self.sampler.uses_host_logits:
            self.sampler.attach(self._ctx)      # the backend route samples inside this context
        return self._ctx, (time.perf_counter() - t0) * 1e3

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._ctx.close()
                self._ctx = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- prompts ---------------------------------------------------------------------

    def prompt_tokens(self, prompt: Prompt, chat: bool = False) -> list:
        """Token ids for a prompt: text, token ids, or chat messages."""
        if isinstance(prompt, str):
            if chat:
                text = self.model.apply_chat_template([{"role": "user", "content": prompt}])
                return self.model.tokenize(text, add_special=False, parse_special=True)
            return self.model.tokenize(prompt, add_special=True, parse_special=False)
        items = list(prompt)
        if items and all(isinstance(m, dict) for m in items):
            text = self.model.apply_chat_template(items)
            return self.model.tokenize(text, add_special=False, parse_special=True)
        ids = []
        for t in items:
            if isinstance(t, bool) or not isinstance(t, int):
                raise TypeError("a prompt is a str, a list of token ids, or a list of chat messages")
            if not 0 <= t < self.model.n_vocab:
                raise ValueError(f"prompt token id {t} is out of range for a vocabulary of {self.model.n_vocab}")
            ids.append(t)
        return ids

    def _config(self, config: Optional[GenerationConfig], overrides: dict) -> GenerationConfig:
        cfg = config if config is not None else GenerationConfig()
        if not isinstance(cfg, GenerationConfig):
            raise TypeError("config must be a GenerationConfig")
        if overrides:
            cfg = cfg.replace(**overrides)
        block = cfg.block_length or self.default_block_length
        steps = cfg.steps or block
        if steps > block:
            raise ValueError(f"steps ({steps}) cannot exceed block_length ({block})")
        return cfg.replace(block_length=block, steps=steps)

    # -- generation ------------------------------------------------------------------

    def generate(self, prompt: Prompt, config: Optional[GenerationConfig] = None, *,
                 chat: bool = False, **options) -> GenerationResult:
        """Generate a completion. Options are GenerationConfig's fields."""
        result = None
        for chunk in self._run(prompt, config, chat, options):
            result = chunk
        return result

    def stream(self, prompt: Prompt, config: Optional[GenerationConfig] = None, *,
               chat: bool = False, **options) -> Iterator[StreamChunk]:
        """Yield one StreamChunk per finalised block; the last one carries stop_reason."""
        for item in self._run(prompt, config, chat, options, stream=True):
            if isinstance(item, StreamChunk):
                yield item

    def _run(self, prompt, config, chat, options, stream=False):
        if self.model.family != "block":
            family = self.model.family
            raise UnsupportedModelError(
                f"this model ({self.model.architecture}, family {family!r}) is not a "
                "block-diffusion model: the block loop needs a causal-architecture model with a "
                "mask token (SDAR-style)" + ("; full-diffusion models (LLaDA, Dream) are not "
                                             "supported by this loop" if family == "full" else ""))
        cfg = self._config(config, options)
        prompt_ids = self.prompt_tokens(prompt, chat=chat)
        stops = _StopMatcher(self.model, cfg.stop)
        B = cfg.block_length
        total = -(-(len(prompt_ids) + cfg.max_new_tokens) // B) * B
        if total > self.n_ctx:
            raise ValueError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({cfg.max_new_tokens}), "
                             f"rounded up to whole blocks of {B} ({total}), exceeds n_ctx={self.n_ctx}")

        with self._lock:
            t_start = time.perf_counter()
            ctx, context_ms = self._context(B)
            run = BlockDiffusion(ctx, prompt_ids, cfg.max_new_tokens, B, cfg.steps,
                                 make_policy(cfg.strategy, threshold=cfg.threshold, eb_gamma=cfg.eb_gamma),
                                 temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                 seed=cfg.seed, cache=cfg.cache, n_threads=self.n_threads,
                                 sampler=self.sampler)
            bar = _progress_bar(cfg.progress, cfg.max_new_tokens)
            generated: list = []
            stop_reason = None
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            n_prompt = len(prompt_ids)
            try:
                run.prefill()
                while not run.done:
                    block = run.next_block
                    if not run.run_block(cfg.callback):
                        stop_reason = "cancelled"
                        break
                    start = max(block * B, n_prompt)
                    new = run.tokens_between(start, (block + 1) * B)
                    room = cfg.max_new_tokens - len(generated)
                    new = new[:room]
                    cut = stops.first_stop(self.model, generated + new)
                    if cut is not None:
                        new = new[:max(0, cut - len(generated))]
                        stop_reason = "stop"
                    elif len(generated) + len(new) >= cfg.max_new_tokens:
                        stop_reason = "length"
                    generated += new
                    if bar is not None:
                        bar.update(len(new))
                    if stream:
                        text = decoder.decode(b"".join(self.model.token_bytes(t, special=False) for t in new),
                                              final=stop_reason is not None)
                        yield StreamChunk(text, new, block, stop_reason)
                    if stop_reason is not None:
                        break
            except KeyboardInterrupt:
                stop_reason = "interrupted"
            finally:
                if bar is not None:
                    bar.close()
            if stop_reason is None:
                stop_reason = "length"
            if stream and stop_reason in ("cancelled", "interrupted"):
                yield StreamChunk(decoder.decode(b"", final=True), [], run.next_block, stop_reason)
            wall_ms = (time.perf_counter() - t_start) * 1e3
            stats = self._stats(run, cfg, generated, wall_ms, context_ms)
        yield GenerationResult(self.model.detokenize(generated), generated, stop_reason, stats, prompt_ids)

    def _stats(self, run, cfg, generated, wall_ms, context_ms) -> dict:
        decode_ms = run.decode_us / 1e3
        sample_ms = run.sample_us / 1e3
        select_ms = run.select_us / 1e3
        committed = run.committed_per_step()
        stats = {
            "prompt_tokens": run.n_prompt,
            "generated_tokens": len(generated),
            "block_length": cfg.block_length,
            "sampler": run.sampler.name,
            "steps": cfg.steps,
            "context_created": context_ms > 0,
            "context_ms": context_ms,
            "prefill_ms": run.prefill_us / 1e3,
            "decode_calls": run.n_decode,
            "decode_tokens": run.n_decode_tokens,
            "decode_ms": decode_ms,
            "sampling_ms": sample_ms,
            "selection_ms": select_ms,
            "wall_ms": wall_ms,
            "steps_per_block": list(run.steps_per_block),
            "committed_per_step": committed,
            "tokens_per_step": (sum(committed) / len(committed)) if committed else 0.0,
            "tokens_per_second": len(generated) / (wall_ms / 1e3) if wall_ms > 0 else 0.0,
        }
        if cfg.profile:
            # where the wall time went; "python" is everything else (batch filling,
            # KV bookkeeping, stop checks, streaming, callbacks, the interpreter)
            step_decode = (run.decode_us - run.prefill_decode_us) / 1e3
            parts = {"context_ms": context_ms, "prefill_ms": run.prefill_us / 1e3,
                     "decode_ms": step_decode, "sampling_ms": sample_ms, "selection_ms": select_ms}
            parts["python_ms"] = max(0.0, wall_ms - sum(parts.values()))
            stats["profile"] = parts
        return stats


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with gguf; degrade silently if it is missing
        return None
    return tqdm(total=total, unit="tok", desc="llamadiff")
