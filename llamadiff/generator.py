"""The Python API: ``Generator``, ``GenerationConfig``, results and streaming.

One ``Generator`` serves both families: block diffusion (SDAR: causal architectures with a
mask token, exact KV cache) and full diffusion (LLaDA, Dream, RND1: architectures for which
``llama_model_is_diffusion`` is true). Options that only one family reads are marked so.

A ``Generator`` owns one llama.cpp context, made on first use and reused by every later
call (its memory is cleared between prompts); it is re-made only when a call needs a
larger batch than it has. Calls on one Generator are serialised by a lock, so a
Generator can be shared between threads; for parallel generation use one Generator per
thread -- they can share a ``Model``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import warnings
import weakref
from typing import Iterator, Optional, Sequence, Union

from llamadiff import rpc
from llamadiff._core import Model, default_threads, set_log_level
from llamadiff.batch import RunningBatch
from llamadiff.chat import check_template
from llamadiff.config import MAX_THREADS, GenerationConfig, _int_argument, _suggest, length_given
from llamadiff.contexts import ContextCache
from llamadiff.engine import Scheduler, StepInfo
from llamadiff.errors import DecodeAborted, GeneratorClosedError, ModelDefaultWarning, TrainedLengthWarning
from llamadiff.families import FAMILIES, Family, ModelDefaults, Setup, check_runnable
from llamadiff.families.base import model_flag
from llamadiff.paths import default_model
from llamadiff.policy import RemaskPolicy
from llamadiff.results import GenerationResult, StopMatcher, StreamChunk, transfer_stats
from llamadiff.samplers import make_row_sampler

__all__ = ["Generator", "GenerationConfig", "GenerationResult", "StreamChunk", "StepInfo"]

Prompt = Union[str, Sequence[int], Sequence[dict]]

# the most characters a chat template may print per token of the context: more could not fit
CHAT_CHARS_PER_TOKEN = 64

class _CallLock:
    """Serialises calls on one Generator (its context is shared state).

    Another thread waits its turn. The thread that already holds it -- a ``stream()`` iterator
    suspended between chunks, or a callback calling back into the Generator -- gets a
    RuntimeError instead of waiting for itself forever; closing the iterator (``it.close()``,
    exhausting it, or dropping the last reference) releases the Generator. Ownership is by
    thread: a stream advanced by whichever worker of a thread pool is free should have a
    Generator of its own (``llamadiff`` serving will schedule many requests on one model).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: Optional[int] = None

    def __enter__(self):
        if self._owner == threading.get_ident():
            raise RuntimeError(
                "this Generator is busy in this thread: a stream() iterator on it is still open, or "
                "a callback is calling it from inside a generation. Finish or close() the iterator, "
                "or use a second Generator (they can share a Model)")
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        self._owner = None
        self._lock.release()

    def owned_here(self) -> bool:
        return self._owner == threading.get_ident()

    def acquire(self, timeout: float) -> bool:
        """Take the lock within ``timeout`` seconds (close(): any thread, no owner check)."""
        if not self._lock.acquire(timeout=timeout):
            return False
        self._owner = threading.get_ident()
        return True

    def release(self) -> None:
        self._owner = None
        self._lock.release()


class _Stream:
    """What ``Generator.stream()`` returns: an iterator of StreamChunks. ``close()`` stops it and
    frees the Generator. When the Generator itself is closed (from any thread), the stream ends:
    its next chunk raises GeneratorClosedError instead."""

    __slots__ = ("_chunks", "_closed_by_generator", "__weakref__")

    def __init__(self, chunks):
        self._chunks = chunks
        self._closed_by_generator = False

    def __iter__(self):
        return self

    def __next__(self) -> "StreamChunk":
        if self._closed_by_generator:
            raise GeneratorClosedError(_CLOSED_WHILE_RUNNING)
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()

    def _close_for_generator(self) -> None:
        try:
            self._chunks.close()
        except ValueError:          # running in another thread: it sees the close at its next step
            return
        self._closed_by_generator = True


class Generator:
    """Diffusion text generation on a GGUF model: block diffusion (SDAR family) or full
    diffusion (LLaDA, Dream, RND1), picked from the model's architecture.

    Parameters
    ----------
    model: a path to a GGUF file or a loaded ``Model``. Omitted: the tiny block-diffusion
        model shipped with llamadiff (``llamadiff.default_model()``).
    n_ctx: KV cache size: prompt + generated tokens (rounded up to whole blocks for block
        diffusion) must fit.
    n_gpu_layers, n_threads: passed to llama.cpp (n_threads defaults to the physical cores with
        one CPU left free -- 1 on a 2-core machine; see ``llamadiff._core.default_threads``).
    n_batch: tokens per decode call; prompts longer than this are prefilled in chunks.
    flash_attn, type_k, type_v: llama.cpp context settings.
    rpc_servers: ["host:port", ...] of llama.cpp rpc-server processes that hold the model's
        layers (ggml RPC backend; see ``llamadiff.rpc``). Checked with a bounded handshake
        first: an unreachable or silent server raises ConnectionError.
    rpc_timeout: seconds (> 0, default ``llamadiff.rpc.DEFAULT_TIMEOUT`` = 10) that any wait
        on an RPC server may last without progress -- the handshake, connecting, each send and
        receive, a decode's graph computation; a stalled server then raises ConnectionError.
        Must exceed the slowest decode a server does. Ctrl-C interrupts such waits at once.
        Used when ``model`` is a path (a loaded ``Model`` keeps its own ``rpc_timeout``).
    sampler: where the logits rows are sampled: "auto" (where the logits are: on the GPU when
        built with CUDA and a device is usable, else on the CPU), "device" (where llama.cpp
        computed them, with no copy), "cpu" (the reference: llama.cpp's host copy on the CPU),
        "cuda" (that host copy uploaded to the GPU), "backend" (greedy, inside llama.cpp's
        graph) or a RowSampler; see ``llamadiff.samplers``.
    chat_template: how chat messages become a prompt: None (the model's own
        ``tokenizer.chat_template``), Jinja text, or a llama.cpp built-in format's name such as
        ``"chatml"`` (see ``llamadiff.chat``).
    chat_template_kwargs: variables for a Jinja chat template, e.g. ``{"enable_thinking":
        False}`` for Qwen3 / SDAR templates, ``{"tools": [...]}``.
    """

    def __init__(self, model: Union[str, os.PathLike, Model, None] = None, *, n_ctx: int = 4096,
                 n_gpu_layers: int = 0, n_threads: Optional[int] = None, n_batch: int = 512,
                 flash_attn="auto", type_k: str = "f16", type_v: str = "f16",
                 use_mmap: bool = True, sampler="auto", rpc_servers: Optional[Sequence[str]] = None,
                 rpc_timeout: float = rpc.DEFAULT_TIMEOUT, chat_template: Optional[str] = None,
                 chat_template_kwargs: Optional[dict] = None, model_path=None, verbose: bool = False,
                 **unknown):
        if unknown:
            valid = [p for p in Generator.__init__.__code__.co_varnames[1:Generator.__init__.__code__.co_argcount
                                                                        + Generator.__init__.__code__.co_kwonlyargcount]
                     if p != "unknown"]
            raise TypeError(f"unknown Generator argument(s): {_suggest(sorted(unknown), valid)}")
        if model_path is not None:          # llama-cpp-python's name
            if model is not None:
                raise TypeError("give model or its alias model_path, not both")
            model = model_path
        if chat_template is not None:
            check_template(chat_template)      # before anything is loaded
        if chat_template_kwargs is not None and (not isinstance(chat_template_kwargs, dict) or not all(
                isinstance(k, str) for k in chat_template_kwargs)):
            raise TypeError("chat_template_kwargs must be a dict of variable names to values")
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        if verbose:                         # llama-cpp-python's switch: llama.cpp's log on stderr
            set_log_level(logging.INFO)
            logger = logging.getLogger("llamadiff.llama")
            if not logger.handlers:
                logger.addHandler(logging.StreamHandler())
        # checked before anything is loaded: these reach C as int32
        n_ctx = _int_argument("n_ctx", n_ctx, 1)
        n_batch = _int_argument("n_batch", n_batch, 2)
        n_gpu_layers = _int_argument("n_gpu_layers", n_gpu_layers, -1)
        if n_threads is not None:
            n_threads = _int_argument("n_threads", n_threads, 1, MAX_THREADS)
        rpc.validate_timeout(rpc_timeout, "rpc_timeout")
        if model is None:
            model = default_model("block")
        if isinstance(model, Model):
            if rpc_servers:
                raise ValueError("rpc_servers places the layers while loading: pass a path, not a loaded Model")
            if rpc_timeout != rpc.DEFAULT_TIMEOUT:
                raise ValueError("rpc_timeout applies while loading: pass it to Model(..., rpc_timeout=...) "
                                 "or give the Generator a path")
            self.model = model
            self._owns_model = False
        else:
            self.model = Model(model, n_gpu_layers=n_gpu_layers, use_mmap=use_mmap, rpc_servers=rpc_servers,
                               rpc_timeout=rpc_timeout)
            self._owns_model = True
        self.n_ctx = n_ctx
        self.n_threads = default_threads() if n_threads is None else n_threads
        self.n_batch = n_batch
        self.sampler = make_row_sampler(sampler, n_threads=self.n_threads, model=self.model)
        # full diffusion and batches read host logits: a route that does not falls back to the CPU
        self._batch_sampler = (self.sampler if self.sampler.uses_host_logits
                               else make_row_sampler("cpu", n_threads=self.n_threads))
        self._lock = _CallLock()
        self._closing = threading.Event()    # close() was called: running calls stop at their next step
        self._streams: "weakref.WeakSet" = weakref.WeakSet()   # open stream() iterators
        try:
            family = check_runnable(self.model)      # refused at construction: no generation could run
        except BaseException:
            if self._owns_model:
                self.model.close()
            raise
        self._family: Family = FAMILIES[family]
        #: the contexts of this Generator, kept for reuse between calls
        self.contexts = ContextCache(self.model, n_threads=self.n_threads, on_new_single=self._attach_sampler,
                                     flash_attn=flash_attn, type_k=type_k, type_v=type_v)
        #: how chat messages become a prompt: Jinja text or a built-in format's name (None: none)
        self.chat_template = chat_template if chat_template is not None else self.model.chat_template
        # the model's own defaults (GGUF diffusion.*; see docs/GENERATION.md, "Model defaults")
        self.defaults = ModelDefaults.read(self.model)
        if self.defaults.block_length is not None and 2 * self.defaults.block_length > self.n_ctx:
            # no model value may make a call with default options fail
            warnings.warn(f"this model's diffusion.block_length ({self.defaults.block_length}) needs n_ctx >= "
                          f"{2 * self.defaults.block_length} (a step decodes the finished block and the next "
                          f"one); this Generator has n_ctx={self.n_ctx}, so the built-in block length 4 applies "
                          "unless a call gives block_length (or make the Generator with a larger n_ctx)",
                          ModelDefaultWarning, stacklevel=2)
            self.defaults = self.defaults._replace(block_length=None)
        self.default_block_length = self.defaults.block_length or 4
        self.default_steps = self.defaults.steps
        self._setup = Setup(self.model, self.defaults, self.n_ctx, self.n_batch)

    # -- what front ends build on (llamadiff.serving) ----------------------------------

    @property
    def family(self) -> Family:
        """The diffusion family this model runs as (``llamadiff.families``)."""
        return self._family

    @property
    def setup(self) -> Setup:
        """What the family's rules read of this Generator."""
        return self._setup

    def exclusive(self) -> "_CallLock":
        """The lock that serialises this Generator's calls (``with gen.exclusive(): ...``): a
        front end that drives batches itself holds it meanwhile."""
        return self._lock

    def model_flag(self, key: str, default: bool) -> bool:
        """A boolean GGUF value of this model's defaults (``diffusion.*``); ``default`` when absent."""
        return model_flag(self.model, key, default)

    def _attach_sampler(self, ctx) -> None:
        if not self.sampler.uses_host_logits and not self.model.is_diffusion:
            self.sampler.attach(ctx)      # the backend route samples inside this context

    def close(self) -> None:
        """Free the contexts, and the model when this Generator loaded it from a path (a
        Model passed in stays open). Safe to call twice, and from any thread: open
        ``stream()`` iterators are closed first, and a call or stream running in another
        thread ends at its next step (within the decode in flight) with
        ``GeneratorClosedError``; close() waits for that, then frees."""
        if self._lock.owned_here():
            # this thread holds the Generator: a stream it left suspended (closed here), or a
            # callback inside a generation (which cannot close what it runs in)
            self._close_streams()
            if self._lock.owned_here():
                raise RuntimeError("close() from inside a generation of this Generator (a callback): "
                                   "return False from the callback to stop it, then close the Generator")
        self._closing.set()
        self.contexts.request_abort()          # a decode in flight stops early (CPU back end)
        # a call running in another thread stops at its next step and lets go; a stream that
        # thread left suspended would never step again: after a moment it is closed from here
        while not self._lock.acquire(timeout=0.2):
            self._close_streams()
        try:
            self.contexts.close()
            if self._owns_model:
                self.model.close()
        finally:
            self._lock.release()

    def _close_streams(self) -> None:
        """Close the open stream() iterators that are not running right now: each then raises
        GeneratorClosedError when it is next asked for a chunk."""
        for stream in list(self._streams):
            stream._close_for_generator()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- prompts ---------------------------------------------------------------------

    def prompt_tokens(self, prompt: Prompt, chat: bool = False) -> list:
        """Token ids for a prompt: text, token ids, or chat messages."""
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            raise TypeError("a prompt is a str, a list of token ids, or a list of chat messages, "
                            f"not {type(prompt).__name__}: decode bytes to str first")
        if not isinstance(prompt, (str, list, tuple)):
            raise TypeError("a prompt is a str, a list of token ids, or a list of chat messages, "
                            f"not {type(prompt).__name__}")
        if isinstance(prompt, str):
            if chat:
                return self._chat_tokens([{"role": "user", "content": prompt}])
            return self.model.tokenize(prompt, add_special=True, parse_special=False)
        items = list(prompt)
        if items and all(isinstance(m, dict) for m in items):
            return self._chat_tokens(items)
        ids = []
        for t in items:
            if isinstance(t, bool) or not isinstance(t, int):
                raise TypeError("a prompt is a str, a list of token ids, or a list of chat messages")
            if not 0 <= t < self.model.n_vocab:
                raise ValueError(f"prompt token id {t} is out of range for a vocabulary of {self.model.n_vocab}")
            ids.append(t)
        return ids

    def _chat_tokens(self, messages: list) -> list:
        """Messages through the chat template, then the tokenizer with special-token text parsed.
        A Jinja template writes its own BOS (``{{ bos_token }}``), as in transformers; a
        llama.cpp built-in format cannot, so its text gets the vocab's BOS as llama.cpp's tools
        give it."""
        # a prompt of more characters than this could not fit the context (see llamadiff.chat)
        text = self.model.apply_chat_template(messages, template=self.chat_template,
                                              max_chars=CHAT_CHARS_PER_TOKEN * self.n_ctx,
                                              **self.chat_template_kwargs)
        builtin = self.chat_template is not None and check_template(self.chat_template)
        return self.model.tokenize(text, add_special=builtin, parse_special=True)

    def resolve(self, config: Optional[GenerationConfig] = None, options: Optional[dict] = None,
                n_prompt: Optional[int] = None) -> GenerationConfig:
        """The options of a call (``config`` with ``options`` over it), resolved for this model:
        the family's defaults filled in, its rules checked (``n_prompt``: the prompt's length,
        for a model whose default generation length depends on it)."""
        cfg = config if config is not None else GenerationConfig()
        if not isinstance(cfg, GenerationConfig):
            raise TypeError("config must be a GenerationConfig")
        if options:
            cfg = cfg.replace(**options)
        self._check_family_options(cfg)
        if cfg.max_new_tokens is None:
            cfg = cfg.replace(max_new_tokens=self.default_max_new_tokens(n_prompt))
        return self._family.resolve(self.setup, cfg)

    def prepare(self, prompt: Prompt, config: Optional[GenerationConfig] = None, options: Optional[dict] = None,
                *, chat: bool = False, resolved: Optional[GenerationConfig] = None, single: bool = True) -> tuple:
        """(token ids, resolved options) of one prompt, checked to fit: ``resolve``, per prompt
        when the call leaves the generation length to the model. ``resolved``: the call's
        options already resolved without a prompt."""
        options = options or {}
        cfg = resolved if resolved is not None else self.resolve(config, options)   # bad options first
        ids = self.prompt_tokens(prompt, chat=chat)
        if not length_given(config, options):      # the model's length may depend on the prompt
            cfg = self.resolve(config, options, len(ids))
        self._family.check_prompt(self.setup, cfg, ids, single)
        return ids, cfg

    def _warn_if_longer_than_trained(self, n_prompt: int, n_new: int) -> None:
        """A TrainedLengthWarning when prompt + generation exceed what the model learned: its
        context length, or a full-diffusion model's ``diffusion.seq_length``."""
        n = n_prompt + n_new
        trained, what = self._family.trained_length(self.setup)
        if trained and n > trained:
            warnings.warn(f"prompt ({n_prompt} tokens) + max_new_tokens ({n_new}) = {n} positions, but this "
                          f"model ({os.path.basename(self.model.path)}) was trained on {what} {trained}: "
                          "expect noise", TrainedLengthWarning, stacklevel=_caller_level())

    def _check_open(self) -> None:
        if self._closing.is_set():
            raise GeneratorClosedError("this Generator is closed; make a new one (it can share the Model)")

    def _check_family_options(self, cfg: GenerationConfig) -> None:
        """An option of the other family (set away from its default) would be ignored: refused,
        with the family named. A RemaskPolicy object drives either family."""
        family = self._family.name
        for f in dataclasses.fields(cfg):
            group = f.metadata.get("group")
            value = getattr(cfg, f.name)
            if group not in ("block", "full", "canvas") or group == family or value == f.default:
                continue
            if f.name == "strategy" and isinstance(value, RemaskPolicy) and family != "canvas":
                continue
            this = {"block": "block diffusion", "full": "full diffusion",
                    "canvas": "canvas diffusion (DiffusionGemma)"}[family]
            other = {"full": "full diffusion (LLaDA, Dream, RND1)",
                     "block": "block diffusion (SDAR and the other causal bodies)",
                     "canvas": "canvas diffusion (DiffusionGemma)"}[group]
            hint = {"strategy": (" (full diffusion picks positions with algorithm=..., or takes a RemaskPolicy object)"
                                 if family == "full" else " (a canvas accepts positions by entropy_bound)"),
                    "mode": " (autoregressive and speculative decoding need a body that decodes causally; llama.cpp "
                            "runs this architecture with bidirectional attention only)",
                    "editing_threshold": " (token editing keeps earlier blocks frozen, which only block "
                                         "diffusion has)"}.get(f.name, "")
            raise ValueError(f"{f.name} is an option of {other}; this model ({self.model.architecture}) runs "
                             f"{this}, which would ignore it{hint}")

    def default_max_new_tokens(self, n_prompt: Optional[int] = None) -> int:
        """The model's generation length: its GGUF's ``diffusion.gen_length``, or what
        ``diffusion.seq_length`` (the length a model was trained to denoise whole) leaves
        after a prompt of ``n_prompt`` tokens; else 256."""
        if self.defaults.gen_length is not None:
            return self.defaults.gen_length
        if self.defaults.seq_length is not None and n_prompt is not None:
            return max(1, self.defaults.seq_length - n_prompt)
        return 256

    # -- generation ------------------------------------------------------------------

    def generate(self, prompt, config: Optional[GenerationConfig] = None, *,
                 chat: bool = False, n_parallel: Optional[int] = None, **options):
        """Generate a completion. Options are GenerationConfig's fields (``max_tokens`` is
        accepted for ``max_new_tokens``).

        A list of prompts (strings, token-id lists or chat-message lists) returns a list of
        results, in order; see ``generate_batch``. ``stream=True`` returns ``stream(...)``'s
        iterator instead (llama-cpp-python's convention).
        """
        if options.pop("stream", False) is True:     # llama-cpp-python's convention
            return self.stream(prompt, config, chat=chat, n_parallel=n_parallel, **options)
        if _is_prompt_list(prompt):
            return self.generate_batch(prompt, config, chat=chat, n_parallel=n_parallel, **options)
        if n_parallel is not None:
            raise TypeError("n_parallel applies to a list of prompts")
        return self._results([prompt], config, chat, options, None, single=True)[0]

    def stream(self, prompt, config: Optional[GenerationConfig] = None, *,
               chat: bool = False, n_parallel: Optional[int] = None, **options) -> Iterator[StreamChunk]:
        """Yield one StreamChunk per finalised block; the last one carries stop_reason.

        Over a list of prompts, chunks of all prompts interleave, each tagged with ``index``,
        and every prompt ends with a chunk that carries its stop_reason -- also a prompt that
        failed (``"error"``) or that a cancel or Ctrl-C stopped before or while it ran (that
        closing chunk has no tokens and ``block_index`` -1).
        """
        iterator = _Stream(self._stream(prompt, config, chat, n_parallel, options))
        self._streams.add(iterator)        # close() closes it (it may hold the Generator)
        return iterator

    def _stream(self, prompt, config, chat, n_parallel, options):
        single = not _is_prompt_list(prompt)
        if single and n_parallel is not None:
            raise TypeError("n_parallel applies to a list of prompts")
        prompts = [prompt] if single else list(prompt)
        closed = set()
        for item in self._run(prompts, config, chat, options, n_parallel, stream=True, single=single):
            if isinstance(item, StreamChunk):
                if item.stop_reason is not None:
                    closed.add(item.index)
                yield item
            else:                          # the results: close the prompts that had no last chunk
                for index, result in enumerate(item):
                    tag = None if single else index
                    if tag not in closed:
                        yield StreamChunk("", [], -1, result.stop_reason, index=tag)

    def generate_batch(self, prompts: Sequence, config: Optional[GenerationConfig] = None, *,
                       chat: bool = False, n_parallel: Optional[int] = None, **options) -> list:
        """Generate for many prompts; returns one GenerationResult per prompt, in order.

        Up to ``n_parallel`` sequences (default: min(len(prompts), 16); for full diffusion
        also as many as fit 2048 tokens per decode) decode together, one llama_decode per
        step carrying every active sequence's tokens; a sequence that stops frees its slot
        (and its KV cells) for the next queued prompt. Greedy tokens equal generating each
        prompt alone (see docs/GENERATION.md for the float-rounding caveat). A prompt that
        cannot run (too long, bad token ids) gets a result with ``stop_reason="error"`` and
        ``error``; the others still run. ``rng="llama.cpp"`` and ``cache=False`` run the
        prompts one after another.
        """
        return self._results(list(prompts), config, chat, options, n_parallel, single=False)

    def _results(self, prompts, config, chat, options, n_parallel, single):
        results = None
        for item in self._run(prompts, config, chat, options, n_parallel, stream=False, single=single):
            results = item
        return results

    # -- the engine ------------------------------------------------------------------

    def open_batch(self, cfg: GenerationConfig, *, slots: int, capacity: Optional[int] = None,
                   single: bool = False) -> tuple:
        """(RunningBatch, slots) for sequences of ``cfg``'s kind, on a reused context where one
        fits: the one-sequence context for a single prompt (``single``) and for the modes that
        run alone, else a context whose KV buffer up to ``slots`` sequences of ``capacity``
        positions share (None: serving, each up to ``n_ctx``). ``RunningBatch.context_ms`` is
        the time spent making the context (0.0 when reused)."""
        family, setup = self._family, self.setup
        alone = single or family.runs_alone(cfg)
        # a device-side route samples one sequence's rows: single prompts only, and only where the
        # sequence reads no host rows itself (speculation's drafts do). The backend route's context
        # computes no host rows at all: such a sequence runs on the shared context instead
        own = single and family.device_sampling and (self.sampler.uses_host_logits
                                                     or not family.needs_host_logits(cfg))
        if alone:
            shape = family.context(setup, cfg, 1, setup.n_ctx if capacity is None else capacity)
            if shape.n_seq == 1 and (own or self.sampler.uses_host_logits):
                ctx, ms = self.contexts.get(ContextCache.SINGLE, shape._replace(
                    n_ctx=self.n_ctx, n_ubatch=min(shape.n_ubatch, self.n_ctx)))
                sampler = self.sampler if own else self._batch_sampler
                return RunningBatch(self.model, family, Scheduler(ctx, sampler), ms), 1
            slots = 1
        if capacity is None:
            shape = family.serving_context(setup, cfg, slots)
        else:
            slots = max(1, min(slots, family.max_slots(cfg, capacity)))
            shape = family.context(setup, cfg, slots, capacity)
        ctx, ms = self.contexts.get(ContextCache.SHARED, shape)
        return RunningBatch(self.model, family, Scheduler(ctx, self._batch_sampler), ms), slots

    def _run(self, prompts: list, config, chat, options, n_parallel, stream: bool, single: bool):
        """Every generation: the prompts queue for the batch's slots; each step is one decode
        for all running sequences; a finished block (region) is emitted, checked for stops, and
        a sequence that stops leaves at once, freeing its slot. Yields StreamChunks (when
        ``stream``), then the list of results."""
        self._check_open()
        if not prompts:
            raise ValueError("the list of prompts is empty")
        if n_parallel is not None and (isinstance(n_parallel, bool) or not isinstance(n_parallel, int)
                                       or n_parallel < 1):
            raise ValueError(f"n_parallel must be an int >= 1, got {n_parallel!r}")
        cfg = self.resolve(config, options)       # bad options fail the whole call, up front
        results: list = [None] * len(prompts)
        ids: dict = {}
        cfgs: dict = {}
        for index, prompt in enumerate(prompts):
            try:
                ids[index], cfgs[index] = self.prepare(prompt, config, options, chat=chat, resolved=cfg,
                                                       single=single)
                self._warn_if_longer_than_trained(len(ids[index]), cfgs[index].max_new_tokens)
            except (ValueError, TypeError) as exc:
                if single:
                    raise
                ids.pop(index, None)
                results[index] = GenerationResult("", [], "error", {}, [], error=str(exc))
        if not ids:                       # every prompt failed: nothing to run
            yield results
            return
        stops = StopMatcher(self.model, cfg.stop)
        policy = self._family.policy(cfg)   # one policy object serves every sequence of the call
        tag = (lambda index: None) if single else (lambda index: index)
        capacity = max(self._family.positions(cfgs[i], len(t)) for i, t in ids.items())
        with self._lock:
            self._check_open()
            t_start = time.perf_counter()
            batch, slots = None, 1
            queue = list(ids)
            halted = None
            bar = _progress_bar(cfg.progress and single, cfgs[next(iter(ids))].max_new_tokens)
            try:
                batch, slots = self.open_batch(cfg, slots=min(n_parallel or 16, len(ids)), capacity=capacity,
                                               single=single)
                while (queue or batch.running) and not halted:
                    while queue and len(batch) < slots:
                        index = queue.pop(0)
                        try:
                            batch.admit(index, ids[index], cfgs[index], policy, stops,
                                        t_start if single else None)
                        except (ValueError, TypeError) as exc:
                            if single:
                                raise
                            results[index] = GenerationResult("", [], "error", {}, ids[index], error=str(exc))
                    if not batch.running:
                        continue
                    if self._closing.is_set():
                        raise GeneratorClosedError(_CLOSED_WHILE_RUNNING)
                    try:
                        stepped, finished = batch.step(text=stream)
                    except DecodeAborted:
                        if self._closing.is_set():      # close() cut the decode short
                            raise GeneratorClosedError(_CLOSED_WHILE_RUNNING) from None
                        raise
                    if cfg.callback is not None:
                        for seq in stepped:
                            if cfg.callback(batch.step_info(seq, tag(batch.running[seq].key))) is False:
                                halted = "cancelled"     # a callback returned False: stop after this step
                    for block in finished:
                        if bar is not None:
                            bar.update(len(block.tokens))
                        if stream:
                            yield StreamChunk(block.text, block.tokens, block.region, block.reason,
                                              index=tag(block.run.key))
                        if block.reason is not None:
                            results[block.run.key] = batch.retire(
                                block.seq, block.reason, batch.context_ms if single else 0.0, slot=not single)
            except KeyboardInterrupt:
                halted = "interrupted"
            finally:
                if bar is not None:
                    if bar.n < bar.total:        # stopped early: the bar ends where generation did
                        bar.total = bar.n
                        bar.refresh()
                    bar.close()
                if batch is not None:
                    batch.clear()
            # stopped early: every sequence returns what it had (queued ones: nothing)
            for seq, run in (batch.running.items() if batch is not None else ()):
                if stream:
                    yield StreamChunk(run.out.text([], True), [], seq.region if single else -1, halted,
                                      index=tag(run.key))
                results[run.key] = batch.result(seq, halted, batch.context_ms if single else 0.0,
                                                  slot=not single)
            for index in range(len(prompts)):
                if results[index] is None:
                    results[index] = GenerationResult("", [], halted or "interrupted", {}, ids.get(index, []))
            sched = batch.scheduler if batch is not None else None
            if single and sched is not None and results[0].stats:
                results[0].stats.update(transfer_stats(sched))
            if not single:
                wall_ms = (time.perf_counter() - t_start) * 1e3
                n_gen = sum(len(r.tokens) for r in results)
                totals = {"prompts": len(prompts), "n_parallel": slots, "generated_tokens": n_gen,
                          "wall_ms": wall_ms, "context_ms": batch.context_ms if batch is not None else 0.0,
                          "tokens_per_second": n_gen / (wall_ms / 1e3) if wall_ms > 0 else 0.0,
                          "decode_calls": sched.n_decode if sched else 0,
                          "decode_tokens": sched.n_decode_tokens if sched else 0,
                          "steps": sched.n_steps if sched else 0,
                          "decode_ms": sched.decode_us / 1e3 if sched else 0.0,
                          "sampling_ms": sched.sample_us / 1e3 if sched else 0.0,
                          "selection_ms": sched.select_us / 1e3 if sched else 0.0,
                          "prefill_ms": sched.prefill_us / 1e3 if sched else 0.0,
                          "kv_tokens_peak": sched.kv_tokens_peak if sched else 0,
                          "kv_tokens_per_sequence_max": capacity,
                          "errors": sum(r.stop_reason == "error" for r in results),
                          **(transfer_stats(sched) if sched else {})}
                for r in results:
                    r.stats["batch"] = totals
        yield results


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside llamadiff (a warning points at the
    user's call, through generators and helpers)."""
    import sys
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level


_CLOSED_WHILE_RUNNING = "the Generator was closed (close() from another thread) while this call ran"


def _is_prompt_list(prompt) -> bool:
    """A list of prompts (vs one prompt given as token ids or chat messages)."""
    if isinstance(prompt, (str, bytes)) or not isinstance(prompt, (list, tuple)):
        return False
    return len(prompt) == 0 or all(isinstance(p, (str, list, tuple)) for p in prompt)


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with gguf; degrade silently if it is missing
        return None
    return tqdm(total=total, unit="tok", desc="llamadiff")
