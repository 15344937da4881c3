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

import codecs
import dataclasses
import difflib
import logging
import math
import operator
import os
import struct
import threading
import time
import warnings
import weakref
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from llamadiff import rpc
from llamadiff._block import BlockFamily
from llamadiff._full import ALGORITHMS, CACHE_MODES, PARALLEL_MODES, FullFamily
from llamadiff._core import Context, Model, default_threads
from llamadiff.engine import Scheduler, StepInfo
from llamadiff.policy import RemaskPolicy, STRATEGIES
from llamadiff.chat import check_template
from llamadiff.errors import DecodeAborted, GeneratorClosedError, TrainedLengthWarning, UnsupportedModelError
from llamadiff.samplers import make_row_sampler

__all__ = ["Generator", "GenerationConfig", "GenerationResult", "StreamChunk", "StepInfo"]

Prompt = Union[str, Sequence[int], Sequence[dict]]

# What each diffusion family brings (option defaults and rules, its engine sequence, the
# contexts it needs), by ``Model.family``. A new family is one module and one entry here.
FAMILIES = {"block": BlockFamily(), "full": FullFamily()}

# Bounds of numeric options. Integers reach C as int32 (a larger top_k or block length is
# an error naming the option, not an OverflowError); no float option means anything past
# 1e4 (a temperature of 1e4 already samples uniformly).
MAX_INT_OPTION = 2 ** 31 - 1
# the most characters a chat template may print per token of the context: more could not fit
CHAT_CHARS_PER_TOKEN = 64
MAX_FLOAT_OPTION = 1e4
FLT_MIN = 1.1754943508222875e-38     # the smallest normal single-precision number
# stops: how many, and how long a string; searching costs (stops x their length) per token
MAX_STOPS = 64
MAX_STOP_CHARS = 256

# names users of llama-cpp-python / OpenAI reach for, accepted as they are (README, "Coming
# from llama-cpp-python")
OPTION_ALIASES = {"max_tokens": "max_new_tokens"}


def _aliases(given: dict, aliases: dict, what: str) -> dict:
    """``given`` with aliases renamed; both names at once is an error."""
    out = dict(given)
    for alias, name in aliases.items():
        if alias in out:
            if name in out:
                raise TypeError(f"give {name} or its alias {alias}, not both")
            out[name] = out.pop(alias)
    return out


# names given to generate() that belong to the Generator (or its model) instead
_GENERATOR_SETTINGS = {"template": "chat_template", "chat_template": "chat_template",
                       "chat_format": "chat_template", "chat_template_kwargs": "chat_template_kwargs",
                       "enable_thinking": "chat_template_kwargs", "tools": "chat_template_kwargs",
                       "add_generation_prompt": "chat_template_kwargs", "n_ctx": "n_ctx",
                       "n_threads": "n_threads", "n_gpu_layers": "n_gpu_layers", "n_batch": "n_batch",
                       "flash_attn": "flash_attn"}


def _suggest(unknown: list, valid: list, settings: Optional[dict] = None) -> str:
    """``a (did you mean b?), c`` for unknown names; a name in ``settings`` is pointed to the
    Generator argument that takes it."""
    parts = []
    for name in unknown:
        if settings and name in settings:
            parts.append(f"{name} (a Generator setting: Generator(..., {settings[name]}=...))")
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        parts.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(parts)


def _option(default, help: str, *, flags: tuple = (), choices: Optional[tuple] = None,
            bounds: Optional[tuple] = None, minimum: Optional[int] = None,
            maximum: Optional[int] = MAX_INT_OPTION, cli: Optional[str] = "value", group: str = "generation"):
    """A GenerationConfig field and everything else about it, stated once: its help, CLI flags
    (default ``--name``; ``cli``: "value", "flag", "append", or None for no flag), choices,
    float ``bounds`` (low, high, brackets: "(]" is low < x <= high; None: unbounded) or
    integer ``minimum`` / ``maximum``. Validation and the CLI read these."""
    meta = dict(help=help, flags=flags, choices=choices, bounds=bounds, minimum=minimum,
                maximum=maximum, cli=cli, group=group)
    return dataclasses.field(default=default, metadata=meta)


def _check_option(f: dataclasses.Field, value) -> None:
    """One option against its declaration (see ``_option``)."""
    meta, name = f.metadata, f.name
    if not meta:
        return
    if value is None:
        if f.default is not None:
            raise TypeError(f"{name} may not be None")
        return
    if meta["bounds"] is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, not {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
        if abs(value) > MAX_FLOAT_OPTION:
            # beyond this a softmax is uniform noise (temperature) or every score saturates
            raise ValueError(f"{name}={value} is out of range (|{name}| <= {MAX_FLOAT_OPTION:g})")
        # the C core holds float options in single precision: checked as it will see them
        single = struct.unpack("f", struct.pack("f", value))[0]
        if single != 0.0 and abs(single) < FLT_MIN:
            raise ValueError(f"{name}={value} is below the smallest normal single-precision number "
                             f"({FLT_MIN:.3g}), which llamadiff's C core computes with: too small to mean anything")
        low, high, brackets = meta["bounds"]
        ok = (low is None or (single > low if brackets[0] == "(" else single >= low)) and \
             (high is None or (single < high if brackets[-1] == ")" else single <= high))
        if not ok:
            shown = f"{value}" + (f" ({single:g} in single precision, as the C core computes)" if single != value else "")
            if high is None:
                raise ValueError(f"{name} must be {'>' if brackets[0] == '(' else '>='} {low:g}, got {shown}")
            raise ValueError(f"{name} must be in {brackets[0]}{low:g}, {high:g}{brackets[-1]}, got {shown}")
    elif meta["minimum"] is not None:
        _int_argument(name, value, meta["minimum"], meta["maximum"])
    elif isinstance(f.default, bool) and not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    policy_ok = name == "strategy" and isinstance(value, RemaskPolicy)
    if meta["choices"] is not None and not policy_ok and (not isinstance(value, str) or value not in meta["choices"]):
        extra = " or pass a RemaskPolicy" if name == "strategy" else ""
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, meta['choices']))}{extra}")
    if name in ("shift_logits", "fixed_step_shape") and not isinstance(value, bool):
        raise TypeError(f"{name} must be None, True or False")


@dataclasses.dataclass
class GenerationConfig:
    """Options of one generation, validated on creation (and by ``replace``).

    Block diffusion (SDAR): ``block_length=None`` takes the model's trained block length
    (GGUF key ``diffusion.block_length``) or 4; ``steps`` counts steps *per block*
    (``None``: one per position) and may not exceed ``block_length``. ``strategy``,
    ``threshold`` and ``eb_gamma`` pick the remasking policy; ``cache`` is True (exact KV
    cache) or False (recompute, the reference behaviour).

    Full diffusion (LLaDA, Dream; names as in llama-diffusion-cli): one schedule, either
    ``block_length`` (LLaDA-style blocks) or ``eps`` (Dream-style timesteps) -- neither takes
    the architecture's default (llada: blocks of 32; dream / rnd1: eps 1e-3); ``steps``
    counts *all* steps (``None``: one per new token) and is spread over the blocks.
    ``algorithm`` (origin, entropy, margin, random, confidence), ``alg_temp``,
    ``cfg_scale``, ``add_gumbel_noise``, ``shift_logits`` (both families; None: GGUF
    metadata, else True for full and False for block diffusion),
    ``cache`` ("none", "prefix", "dual"), ``parallel`` (None, "threshold", "factor") with
    ``threshold`` / ``factor``, and ``rng`` ("counter", or "llama.cpp" to reproduce
    llama-diffusion-cli draw for draw). See docs/GENERATION.md.
    """

    max_new_tokens: Optional[int] = _option(
        None, "tokens to generate at most (default: the model's -- its GGUF's diffusion.gen_length, or "
        "what diffusion.seq_length leaves after the prompt -- else 256)",
        flags=("-n", "--max-new-tokens", "--max-tokens", "--n-predict"),
        minimum=1)
    block_length: Optional[int] = _option(
        None, "block length (block diffusion default: the model's diffusion.block_length, else 4; full "
        "diffusion: LLaDA-style block schedule, default 32 for llada)",
        flags=("-b", "--block-length", "--diffusion-block-length"), minimum=1)
    steps: Optional[int] = _option(
        None, "block diffusion: steps per block (default: block length); full diffusion: total steps "
        "(default: one per new token)", flags=("-s", "--steps", "--diffusion-steps"), minimum=1)
    strategy: Union[str, RemaskPolicy] = _option(
        "low_confidence_dynamic", "remasking policy of block diffusion (default low_confidence_dynamic: every "
        "position above --threshold at once; low_confidence_static: the schedule's count per step; a "
        "RemaskPolicy object drives either family)", choices=tuple(STRATEGIES), group="block")
    threshold: Optional[float] = _option(
        None, "confidence threshold: low_confidence_dynamic (default 0.85) or --parallel threshold "
        "(default 0.9)", bounds=(0.0, 1.0, "(]"))
    eb_gamma: float = _option(0.35, "entropy bound (entropy_bounded)", bounds=(0.0, None, "("), group="block")
    temperature: float = _option(0.0, "0 = greedy", flags=("--temperature", "--temp"), bounds=(0.0, None, "["))
    top_k: int = _option(0, "keep the k most likely tokens (0: off)", minimum=0)
    top_p: float = _option(1.0, "nucleus sampling mass (1: off)", bounds=(0.0, 1.0, "(]"))
    seed: int = _option(0, "seed of the counter-based RNG", minimum=0, maximum=2 ** 64 - 1)
    stop: Optional[Sequence[Union[str, int]]] = _option(
        None, "stop string (repeatable; default: the model's end-of-generation tokens)", cli="append")
    cache: Union[bool, str, None] = _option(
        None, "block diffusion: True (exact KV cache, default) or False (recompute); full diffusion: "
        "none (exact, default), prefix or dual (Fast-dLLM caches)", cli=None)
    # full diffusion only
    eps: Optional[float] = _option(None, "Dream-style timestep schedule (default for dream / rnd1: 1e-3)",
                                   flags=("--eps", "--diffusion-eps"), bounds=(0.0, 1.0, "()"), group="full")
    algorithm: str = _option("confidence", "which positions a full-diffusion step commits",
                             flags=("--algorithm", "--diffusion-algorithm"), choices=ALGORITHMS, group="full")
    alg_temp: float = _option(0.0, "sample the committed positions from softmax(score / alg_temp)",
                              flags=("--alg-temp", "--diffusion-alg-temp"), bounds=(0.0, None, "["), group="full")
    cfg_scale: float = _option(0.0, "classifier-free guidance scale", bounds=(0.0, None, "["), group="full")
    add_gumbel_noise: bool = _option(False, "LLaDA-style Gumbel-noise sampling (confidence from the plain "
                                     "softmax)", flags=("--gumbel",), cli="flag", group="full")
    shift_logits: Optional[bool] = _option(None, "row i predicts position i + 1 (None: GGUF metadata, else "
                                           "True for full diffusion, False for block diffusion)", cli=None)
    fixed_step_shape: Optional[bool] = _option(
        None, "block diffusion with the KV cache: every step decodes the same batch shape (the "
        "finished block again, a row for every position of the block), so a GPU back end replays "
        "one CUDA graph; the same tokens (None: on for one sequence per context with the model's layers "
        "on a CUDA GPU)", cli=None, group="block")
    parallel: Optional[str] = _option(None, "Fast-dLLM parallel decoding", choices=PARALLEL_MODES, group="full")
    factor: float = _option(1.0, "factor of --parallel factor", bounds=(0.0, None, "("), group="full")
    rng: str = _option("counter", "llama.cpp: reproduce llama-diffusion-cli draw for draw",
                       choices=("counter", "llama.cpp"), group="full")
    progress: bool = _option(False, "a progress bar (tqdm)", cli=None)
    callback: Optional[Callable[[StepInfo], Any]] = _option(None, "called after every step with a StepInfo; "
                                                            "False stops the generation", cli=None)
    profile: bool = _option(False, "where the time went, in stats['profile']", cli=None)

    def __post_init__(self):
        self.validate()

    def replace(self, **changes) -> "GenerationConfig":
        changes = _aliases(changes, OPTION_ALIASES, "generation option")
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise TypeError(f"unknown generation option(s): "
                            f"{_suggest(unknown, names + list(OPTION_ALIASES), _GENERATOR_SETTINGS)}")
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Each option against its declared type, bounds and choices, then the rules that
        tie options together."""
        for f in dataclasses.fields(self):
            _check_option(f, getattr(self, f.name))
        if self.cache is not None and not isinstance(self.cache, bool) and self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be True/False (block diffusion) or one of "
                             f"{', '.join(CACHE_MODES)} (full diffusion), got {self.cache!r}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError("callback must be callable")
        if self.stop is not None:
            if not isinstance(self.stop, (list, tuple)):
                raise TypeError(f"stop must be a list of strings / token ids, not {type(self.stop).__name__}"
                                + (f" (stop=[{self.stop!r}] for one)" if isinstance(self.stop, (str, int)) else ""))
            if len(self.stop) > MAX_STOPS:
                raise ValueError(f"stop holds {len(self.stop)} entries; at most {MAX_STOPS} (each one is looked "
                                 "for in every token's text)")
            for item in self.stop:
                if isinstance(item, bool) or not isinstance(item, (str, int)) or item == "":
                    raise TypeError(f"stop entries must be non-empty strings or token ids, got {item!r}")
                if isinstance(item, str) and len(item) > MAX_STOP_CHARS:
                    raise ValueError(f"a stop string of {len(item)} characters; at most {MAX_STOP_CHARS}")


def options_table() -> str:
    """Every generation option as a Markdown table (docs/GENERATION.md holds it; a test keeps the
    two equal): name, the family it is for, its default, its command-line flags and its help."""
    rows = ["| option | for | default | command line | what it does |", "|---|---|---|---|---|"]
    for f in dataclasses.fields(GenerationConfig):
        meta = f.metadata
        family = {"block": "block diffusion", "full": "full diffusion"}.get(meta["group"], "both")
        default = "`None`" if f.default is None else f"`{f.default!r}`"
        if meta["cli"] is None:
            flags = "(API only)"
        else:
            flags = ", ".join(f"`{x}`" for x in (meta["flags"] or ("--" + f.name.replace("_", "-"),)))
        rows.append(f"| `{f.name}` | {family} | {default} | {flags} | {meta['help']} |")
    return "\n".join(rows)


def option_fields() -> list:
    """GenerationConfig's fields that users set by name from outside Python -- command-line
    flags, the HTTP server's request fields: their declarations (``_option``) are the one source
    of names, defaults, choices and help."""
    return [f for f in dataclasses.fields(GenerationConfig) if f.metadata.get("cli")]


@dataclasses.dataclass
class GenerationResult:
    text: str
    tokens: list            # generated token ids, cut at the first stop
    stop_reason: str        # "stop", "length", "cancelled", "interrupted" or "error"
    stats: dict
    prompt_tokens: list
    error: Optional[str] = None   # why this prompt of a batch failed (stop_reason "error")


@dataclasses.dataclass
class StreamChunk:
    text: str               # text added by this block (UTF-8 safe across chunks)
    tokens: list            # token ids added by this block
    block_index: int
    stop_reason: Optional[str] = None   # set on the last chunk
    index: Optional[int] = None         # the prompt's index when streaming a list of prompts


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


class _StopMatcher:
    """The stops of a call (token ids and strings), checked once; each sequence searches its
    text with a ``_StopScan`` of its own."""

    def __init__(self, model: Model, stop):
        self.ids = set(model.eog_token_ids if stop is None else ())
        self.strings = []
        for item in stop or ():
            if isinstance(item, int):
                if not 0 <= item < model.n_vocab:
                    raise ValueError(f"stop token id {item} is out of range")
                self.ids.add(item)
            else:
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"stop string {item!r} is not valid UTF-8 text") from None
                ids = model.tokenize(item, add_special=False, parse_special=True)
                if len(ids) == 1 and model.token_to_piece(ids[0], special=True) == item:
                    self.ids.add(ids[0])      # a single (special) token: match by id
                else:
                    self.strings.append(item)
        self.longest = max((len(x) for x in self.strings), default=0)


class _StopScan:
    """One sequence's search for its first stop, fed its generated tokens a finished block at
    a time. Each token is looked at once, and stop strings are searched for only in the text
    the newest token completes plus the characters before it that a stop could start in: the
    cost stays linear in the generated text."""

    def __init__(self, model: Model, stops: _StopMatcher):
        self.model = model
        self.stops = stops
        self.tail = ""                # the last characters of the text, for stops that span tokens
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def first_stop(self, new: list, final: bool = False) -> Optional[int]:
        """Index in ``new`` (the tokens that follow those of earlier calls) of the first token
        to drop (the stop itself), or None. ``final``: no tokens follow, so bytes of an
        unfinished character at the end count as the replacement character."""
        ids, strings, keep = self.stops.ids, self.stops.strings, self.stops.longest - 1
        for i, token in enumerate(new):
            if token in ids:
                return i
            if strings:
                piece = self._decoder.decode(self.model.token_bytes(token, special=True),
                                             final=final and i == len(new) - 1)
                window = self.tail + piece
                if any(x in window for x in strings):
                    return i
                self.tail = window[-keep:] if keep > 0 else ""
        return None


class _Output:
    """The generated tokens of one sequence, taken a finished block at a time: cut at the
    first stop, capped at max_new_tokens, and decoded to text safely across blocks."""

    def __init__(self, model: Model, stops: _StopMatcher, max_new_tokens: int):
        self.model = model
        self.stops = stops
        self.max_new_tokens = max_new_tokens
        self.tokens: list = []
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._scan = _StopScan(model, stops)

    def add(self, new: list, last: bool) -> tuple:
        """Take a finished block's tokens; returns (tokens kept, stop reason or None).
        ``last``: the sequence has no more blocks."""
        new = new[:self.max_new_tokens - len(self.tokens)]
        reason = None
        cut = self._scan.first_stop(new, final=last or len(self.tokens) + len(new) >= self.max_new_tokens)
        if cut is not None:
            new = new[:cut]
            reason = "stop"
        elif last or len(self.tokens) + len(new) >= self.max_new_tokens:
            reason = "length"
        self.tokens += new
        return new, reason

    def text(self, new: list, final: bool) -> str:
        """Text of tokens just added (an incomplete UTF-8 sequence waits for the next block)."""
        return self._decoder.decode(b"".join(self.model.token_bytes(t, special=False) for t in new),
                                    final=final)

    def result(self, reason: str, stats: dict, prompt_ids: list) -> GenerationResult:
        return GenerationResult(self.model.detokenize(self.tokens), self.tokens, reason, stats, prompt_ids)


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
            from llamadiff import set_log_level
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
            from llamadiff import default_model
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
        self._context_args = dict(flash_attn=flash_attn, type_k=type_k, type_v=type_v)
        self.sampler = make_row_sampler(sampler, n_threads=self.n_threads, model=self.model)
        # full diffusion and batches read host logits: a route that does not falls back to the CPU
        self._host_sampler = (self.sampler if self.sampler.uses_host_logits
                              else make_row_sampler("cpu", n_threads=self.n_threads))
        self._ctx: Optional[Context] = None
        self._batch_ctx: Optional[Context] = None
        self._lock = _CallLock()
        self._closing = threading.Event()    # close() was called: running calls stop at their next step
        self._streams: "weakref.WeakSet" = weakref.WeakSet()   # open stream() iterators
        try:
            self._check_model()
        except BaseException:
            if self._owns_model:
                self.model.close()
            raise
        self._family = FAMILIES[self.model.family]
        #: how chat messages become a prompt: Jinja text or a built-in format's name (None: none)
        self.chat_template = chat_template if chat_template is not None else self.model.chat_template
        # the model's own defaults (GGUF diffusion.*; see docs/GENERATION.md, "Model defaults")
        self.default_block_length = self._model_int("diffusion.block_length") or 4
        self.default_steps = self._model_int("diffusion.steps")

    # -- resources -------------------------------------------------------------------

    def _check_model(self) -> None:
        """Refuse, at construction, a model no generation could run on."""
        family = self.model.family
        if family is None:
            problem = self.model.block_diffusion_problem
            if problem is not None and self.model.mask_token_id is not None:
                raise UnsupportedModelError(
                    f"block diffusion cannot run on this model ({self.model.architecture}): {problem}")
            raise UnsupportedModelError(
                f"this model ({self.model.architecture}) is not a diffusion model: block diffusion "
                "needs a causal-architecture model with a mask token (SDAR-style), full diffusion "
                "a diffusion architecture (llada, llada-moe, dream, rnd1) with a mask token")
        mask = self.model.mask_token_id
        if family == "full" and mask is None:
            raise UnsupportedModelError(
                f"this {self.model.architecture} model has no mask token "
                "(tokenizer.ggml.mask_token_id): full diffusion cannot run without one")
        if mask is not None and mask in self.model.eog_token_ids:
            # the mask token is never predicted, so an end-of-generation token equal to it could
            # never be generated: every run would go on to max_new_tokens
            raise UnsupportedModelError(
                f"the mask token ({mask}, {self.model.token_to_piece(mask, special=True)!r}) is also an "
                "end-of-generation token of this model: generation could never stop. The GGUF's "
                "tokenizer.ggml.mask_token_id or its eos/eot token ids are wrong")

    def model_flag(self, key: str, default: bool) -> bool:
        """A boolean GGUF value of this model's defaults (``diffusion.*``); ``default`` when absent."""
        meta = self.model.meta(key)
        return default if meta is None else str(meta).strip().lower() in ("true", "1")

    def _model_int(self, key: str) -> Optional[int]:
        """A positive int GGUF value of this model's defaults (``diffusion.*``), or None when
        absent or not a sensible number (a corrupt value falls back to the built-in default)."""
        try:
            value = int(self.model.meta(key))
        except (TypeError, ValueError):
            return None
        return value if 0 < value <= MAX_INT_OPTION else None

    def _context(self, need: int, diffusion_kv: bool = False) -> tuple:
        """The reusable context; made (or re-made, for a larger batch or another memory
        kind) only when needed."""
        need = min(need, self.n_ctx)
        ctx = self._ctx
        if (ctx is not None and not ctx.closed and ctx.n_ubatch >= need
                and (not self.model.is_diffusion or ctx.has_memory == diffusion_kv)):
            return ctx, 0.0
        if ctx is not None:
            ctx.close()
        t0 = time.perf_counter()
        self._ctx = Context(self.model, n_ctx=self.n_ctx, n_batch=need, n_ubatch=need,
                            n_threads=self.n_threads, causal=False, diffusion_kv=diffusion_kv,
                            **self._context_args)
        if not self.sampler.uses_host_logits and not self.model.is_diffusion:
            self.sampler.attach(self._ctx)      # the backend route samples inside this context
        return self._ctx, (time.perf_counter() - t0) * 1e3

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
        for ctx in (self._ctx, self._batch_ctx):
            if ctx is not None and not ctx.closed:
                ctx.request_abort()            # a decode in flight stops early (CPU back end)
        # a call running in another thread stops at its next step and lets go; a stream that
        # thread left suspended would never step again: after a moment it is closed from here
        while not self._lock.acquire(timeout=0.2):
            self._close_streams()
        try:
            for ctx in (self._ctx, self._batch_ctx):
                if ctx is not None:
                    ctx.close()
            self._ctx = self._batch_ctx = None
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

    def _config(self, config: Optional[GenerationConfig], overrides: dict,
                n_prompt: Optional[int] = None) -> GenerationConfig:
        """The options of a call, resolved for this model (``n_prompt``: the prompt's length,
        for a model whose default generation length depends on it)."""
        cfg = config if config is not None else GenerationConfig()
        if not isinstance(cfg, GenerationConfig):
            raise TypeError("config must be a GenerationConfig")
        if overrides:
            cfg = cfg.replace(**overrides)
        self._check_family_options(cfg)
        if cfg.max_new_tokens is None:
            cfg = cfg.replace(max_new_tokens=self.default_max_new_tokens(n_prompt))
        return self._family.resolve(self, cfg)

    def _warn_if_longer_than_trained(self, n_prompt: int, n_new: int) -> None:
        """A TrainedLengthWarning when prompt + generation exceed what the model learned: its
        context length, or a full-diffusion model's ``diffusion.seq_length``."""
        n = n_prompt + n_new
        trained = self._model_int("diffusion.seq_length") if self._family.name == "full" else None
        what = "sequences of"
        if trained is None:
            trained, what = self.model.n_ctx_train, "a context of"
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
            if group not in ("block", "full") or group == family or value == f.default:
                continue
            if f.name == "strategy" and isinstance(value, RemaskPolicy):
                continue
            this = "block diffusion" if family == "block" else "full diffusion"
            other = ("full diffusion (LLaDA, Dream, RND1)" if group == "full"
                     else "block diffusion (SDAR and the other causal bodies)")
            hint = " (full diffusion picks positions with algorithm=..., or takes a RemaskPolicy object)" \
                if f.name == "strategy" else ""
            raise ValueError(f"{f.name} is an option of {other}; this model ({self.model.architecture}) runs "
                             f"{this}, which would ignore it{hint}")

    def default_max_new_tokens(self, n_prompt: Optional[int] = None) -> int:
        """The model's generation length: its GGUF's ``diffusion.gen_length``, or what
        ``diffusion.seq_length`` (the length a model was trained to denoise whole) leaves
        after a prompt of ``n_prompt`` tokens; else 256."""
        gen_length = self._model_int("diffusion.gen_length")
        if gen_length is not None:
            return gen_length
        seq_length = self._model_int("diffusion.seq_length")
        if seq_length is not None and n_prompt is not None:
            return max(1, seq_length - n_prompt)
        return 256

    @staticmethod
    def _length_given(config: Optional[GenerationConfig], options: dict) -> bool:
        given = options.get("max_new_tokens", options.get("max_tokens"))
        return given is not None or (config is not None and config.max_new_tokens is not None)

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

    def _scheduler(self, cfg: GenerationConfig, ids: dict, cfgs: dict, n_parallel, single: bool) -> tuple:
        """(Scheduler, context_ms, slots) for a call: the reusable one-sequence context for a
        single prompt (and for the modes that run one sequence at a time), else a context
        with one KV buffer shared by ``slots`` sequences."""
        family = self._family
        capacity = max([family.positions(cfgs[i], len(t)) for i, t in ids.items()] or [1])
        alone = single or family.runs_alone(cfg)
        _, need, diffusion_kv, per_slot = family.context(self, cfg, 1, capacity)
        if alone and per_slot == 1:
            ctx, ms = self._context(need, diffusion_kv)
            # a device-side route samples one sequence's rows: single prompts only
            on_device = single and family.device_sampling
            return Scheduler(ctx, self.sampler if on_device else self._host_sampler), ms, 1
        if n_parallel is None:
            n_parallel = min(len(ids), 16)
        slots = 1 if alone else max(1, min(n_parallel, len(ids), family.max_slots(cfg, capacity)))
        ctx, ms = self._batch_context(cfg, slots, capacity)
        return Scheduler(ctx, self._host_sampler), ms, slots

    def _run(self, prompts: list, config, chat, options, n_parallel, stream: bool, single: bool):
        """Every generation: the prompts queue for the scheduler's slots; each step is one
        decode for all running sequences; a finished block (region) is emitted, checked for
        stops, and a sequence that stops leaves at once, freeing its slot. Yields StreamChunks
        (when ``stream``), then the list of results."""
        self._check_open()
        if not prompts:
            raise ValueError("the list of prompts is empty")
        if n_parallel is not None and (isinstance(n_parallel, bool) or not isinstance(n_parallel, int)
                                       or n_parallel < 1):
            raise ValueError(f"n_parallel must be an int >= 1, got {n_parallel!r}")
        cfg = self._config(config, options)       # bad options fail the whole call, up front
        per_prompt = not self._length_given(config, options)  # the model's length may depend on the prompt
        results: list = [None] * len(prompts)
        ids: dict = {}
        cfgs: dict = {}
        for index, prompt in enumerate(prompts):
            try:
                toks = self.prompt_tokens(prompt, chat=chat)
                cfgs[index] = self._config(config, options, len(toks)) if per_prompt else cfg
                self._family.check_prompt(self, cfgs[index], toks, single)
                self._warn_if_longer_than_trained(len(toks), cfgs[index].max_new_tokens)
                ids[index] = toks
            except (ValueError, TypeError) as exc:
                if single:
                    raise
                results[index] = GenerationResult("", [], "error", {}, [], error=str(exc))
        if not ids:                       # every prompt failed: nothing to run
            yield results
            return
        stops = _StopMatcher(self.model, cfg.stop)
        policy = self._family.policy(cfg)   # one policy object serves every sequence of the call
        tag = (lambda index: None) if single else (lambda index: index)
        with self._lock:
            self._check_open()
            t_start = time.perf_counter()
            sched, context_ms, slots = None, 0.0, 1
            queue = list(ids)
            running: dict = {}           # Sequence -> _Running
            halted = None
            bar = _progress_bar(cfg.progress and single, cfgs[next(iter(ids))].max_new_tokens)
            try:
                sched, context_ms, slots = self._scheduler(cfg, ids, cfgs, n_parallel, single)
                while (queue or running) and not halted:
                    while queue and len(running) < slots:
                        index = queue.pop(0)
                        try:
                            seq = self._family.sequence(self.model, ids[index], cfgs[index], policy)
                            sched.add(seq)
                        except (ValueError, TypeError) as exc:
                            if single:
                                raise
                            results[index] = GenerationResult("", [], "error", {}, ids[index], error=str(exc))
                            continue
                        running[seq] = _Running(index, _Output(self.model, stops, cfgs[index].max_new_tokens),
                                                t_start if single else time.perf_counter(), seq.slot,
                                                sched.sampler.name)
                    if not running:
                        continue
                    if self._closing.is_set():
                        raise GeneratorClosedError(_CLOSED_WHILE_RUNNING)
                    try:
                        stepped, finished = sched.step()
                    except DecodeAborted:
                        if self._closing.is_set():      # close() cut the decode short
                            raise GeneratorClosedError(_CLOSED_WHILE_RUNNING) from None
                        raise
                    if cfg.callback is not None:
                        for seq in stepped:
                            positions, tokens = seq.last_step()
                            start, end = seq.region_bounds(seq.step_region)
                            info = StepInfo(seq.step_region, seq.step_index, positions, tokens,
                                            seq.step_left, tag(running[seq].index), start, end)
                            if cfg.callback(info) is False:
                                halted = "cancelled"     # a callback returned False: stop after this step
                    for seq in finished:
                        run = running[seq]
                        region = seq.region - 1
                        start, end = seq.region_bounds(region)
                        new, reason = run.out.add(seq.tokens_between(max(start, seq.n_prompt), end),
                                                  last=seq.done)
                        if bar is not None:
                            bar.update(len(new))
                        if stream:
                            yield StreamChunk(run.out.text(new, reason is not None), new, region, reason,
                                              index=tag(run.index))
                        if reason is not None:
                            results[run.index] = run.out.result(
                                reason, self._stats(seq, cfgs[run.index], run, context_ms, single), ids[run.index])
                            sched.remove(seq)
                            del running[seq]
            except KeyboardInterrupt:
                halted = "interrupted"
            finally:
                if bar is not None:
                    if bar.n < bar.total:        # stopped early: the bar ends where generation did
                        bar.total = bar.n
                        bar.refresh()
                    bar.close()
                if sched is not None:
                    sched.clear()
            # stopped early: every sequence returns what it had (queued ones: nothing)
            for seq, run in running.items():
                if stream:
                    yield StreamChunk(run.out.text([], True), [], seq.region if single else -1, halted,
                                      index=tag(run.index))
                results[run.index] = run.out.result(halted, self._stats(seq, cfgs[run.index], run, context_ms,
                                                                        single), ids[run.index])
            for index in range(len(prompts)):
                if results[index] is None:
                    results[index] = GenerationResult("", [], halted or "interrupted", {}, ids.get(index, []))
            if single and sched is not None and results[0].stats:
                results[0].stats.update(_transfer_stats(sched))
            if not single:
                wall_ms = (time.perf_counter() - t_start) * 1e3
                n_gen = sum(len(r.tokens) for r in results)
                totals = {"prompts": len(prompts), "n_parallel": slots, "generated_tokens": n_gen,
                          "wall_ms": wall_ms, "context_ms": context_ms,
                          "tokens_per_second": n_gen / (wall_ms / 1e3) if wall_ms > 0 else 0.0,
                          "decode_calls": sched.n_decode if sched else 0,
                          "decode_tokens": sched.n_decode_tokens if sched else 0,
                          "steps": sched.n_steps if sched else 0,
                          "decode_ms": sched.decode_us / 1e3 if sched else 0.0,
                          "sampling_ms": sched.sample_us / 1e3 if sched else 0.0,
                          "selection_ms": sched.select_us / 1e3 if sched else 0.0,
                          "prefill_ms": sched.prefill_us / 1e3 if sched else 0.0,
                          "kv_tokens_peak": sched.kv_tokens_peak if sched else 0,
                          "kv_tokens_per_sequence_max": max(self._family.positions(cfgs[i], len(t))
                                                            for i, t in ids.items()),
                          "errors": sum(r.stop_reason == "error" for r in results),
                          **(_transfer_stats(sched) if sched else {})}
                for r in results:
                    r.stats["batch"] = totals
        yield results

    def _batch_context(self, cfg: GenerationConfig, slots: int, capacity: int) -> tuple:
        """A context for several sequences (or one that decodes a companion pass): one KV
        buffer for ``slots`` sequences of ``capacity`` positions each."""
        capacity, need_ubatch, diffusion_kv, per_slot = self._family.context(self, cfg, slots, capacity)
        return self._shared_context(slots * per_slot * capacity, need_ubatch, slots * per_slot, diffusion_kv)

    def _shared_context(self, n_ctx: int, n_ubatch: int, n_seq: int, diffusion_kv: bool) -> tuple:
        """A context with one KV buffer (``kv_unified``) shared by ``n_seq`` sequences; kept for
        later calls of the same or a smaller shape. Returns (context, ms spent making it)."""
        ctx = self._batch_ctx
        if (ctx is not None and not ctx.closed and ctx.n_seq_max >= n_seq
                and (not self.model.is_diffusion or ctx.has_memory == diffusion_kv)
                and ctx.n_ctx >= n_ctx and ctx.n_ubatch >= n_ubatch):
            return ctx, 0.0
        if ctx is not None:
            ctx.close()
        t0 = time.perf_counter()
        self._batch_ctx = Context(self.model, n_ctx=n_ctx, n_batch=n_ubatch, n_ubatch=n_ubatch, n_seq_max=n_seq,
                                  kv_unified=True, n_threads=self.n_threads, causal=False,
                                  diffusion_kv=diffusion_kv, **self._context_args)
        return self._batch_ctx, (time.perf_counter() - t0) * 1e3

    def _stats(self, seq, cfg: GenerationConfig, run: "_Running", context_ms: float, single: bool) -> dict:
        wall_ms = (time.perf_counter() - run.t0) * 1e3
        generated = run.out.tokens
        committed = seq.committed_per_step()
        context_ms = context_ms if single else 0.0
        stats = {
            "prompt_tokens": seq.n_prompt,
            "generated_tokens": len(generated),
            "block_length": cfg.block_length,
            "sampler": run.sampler,
            "steps": cfg.steps,
            "context_created": context_ms > 0,
            "context_ms": context_ms,
            "prefill_ms": seq.prefill_us / 1e3,
            "decode_calls": seq.n_decode,
            "decode_tokens": seq.n_decode_tokens,
            "decode_ms": seq.decode_us / 1e3,
            "sampling_ms": seq.sample_us / 1e3,
            "selection_ms": seq.select_us / 1e3,
            "wall_ms": wall_ms,
            "steps_per_block": list(seq.steps_per_region),
            "committed_per_step": committed,
            "committed": sum(committed),
            "tokens_per_step": (sum(committed) / len(committed)) if committed else 0.0,
            "tokens_per_second": len(generated) / (wall_ms / 1e3) if wall_ms > 0 else 0.0,
        }
        stats.update(self._family.stats(seq, cfg))
        if not single:
            stats["slot"] = run.slot
        if cfg.profile:
            # where the wall time went; "python" is everything else (batch filling,
            # KV bookkeeping, stop checks, streaming, callbacks, the interpreter)
            parts = {"context_ms": context_ms, "prefill_ms": seq.prefill_us / 1e3,
                     "decode_ms": (seq.decode_us - seq.prefill_decode_us) / 1e3,
                     "sampling_ms": seq.sample_us / 1e3, "selection_ms": seq.select_us / 1e3}
            parts["python_ms"] = max(0.0, wall_ms - sum(parts.values()))
            stats["profile"] = parts
        return stats


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


def _transfer_stats(sched) -> dict:
    """Where a call's logits were sampled -- steps that read them where they were computed
    (``sampler="device"``), the bytes of logits llama.cpp copied to the host otherwise -- and
    its decodes that reused the previous decode's graph (one step shape: a CUDA graph replay)."""
    return {"steps_in_place": sched.n_in_place, "logits_to_host_bytes": sched.logits_copied_bytes,
            "graphs_reused": sched.graphs_reused}


class _Running:
    """A sequence of a call while it runs: its prompt's index, output and start time."""
    __slots__ = ("index", "out", "t0", "slot", "sampler")

    def __init__(self, index: int, out: _Output, t0: float, slot: int, sampler: str):
        self.index = index
        self.out = out
        self.t0 = t0
        self.slot = slot
        self.sampler = sampler



MAX_THREADS = 1024


def _as_int(name: str, value) -> int:
    """An integer option: int or any integer type (numpy's too), not a bool or a float."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None


def _int_argument(name: str, value, minimum: int, maximum: Optional[int] = MAX_INT_OPTION) -> int:
    """An integer option or argument within [minimum, maximum] (None: no upper bound)."""
    value = _as_int(name, value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


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
