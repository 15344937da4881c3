"""The options of a generation: ``GenerationConfig`` and the declaration of each option.

Every option is declared once, as a ``GenerationConfig`` field made by ``_option``: its default,
help text, command-line flags, choices, bounds and the family it belongs to. Validation
(``GenerationConfig.validate``), the command line (``llamadiff.cli``), the server's request
fields (``llamadiff.server``) and the options table of docs/GENERATION.md (``options_table``)
all read those declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import struct
from typing import Any, Callable, Optional, Sequence, Union

from llamadiff._full import CACHE_MODES
from llamadiff.engine import StepInfo
from llamadiff.policy import ALGORITHMS, PARALLEL_MODES, STRATEGIES, RemaskPolicy

__all__ = ["GenerationConfig", "option_fields", "options_table", "OPTION_ALIASES", "MAX_STOPS", "MAX_STOP_CHARS"]

# Bounds of numeric options. Integers reach C as int32 (a larger top_k or block length is
# an error naming the option, not an OverflowError); no float option means anything past
# 1e4 (a temperature of 1e4 already samples uniformly).
MAX_INT_OPTION = 2 ** 31 - 1
MAX_FLOAT_OPTION = 1e4
FLT_MIN = 1.1754943508222875e-38     # the smallest normal single-precision number
# stops: how many strings, and how long one; searching costs (strings x their length) per token.
# Token ids are a set lookup each: bounded only so that a list cannot be absurd (a server adds
# the model's end-of-generation ids to a client's strings)
MAX_STOPS = 64
MAX_STOP_CHARS = 256
MAX_STOP_IDS = 1024

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
        "(default: one per new token); canvas diffusion: most steps per canvas (default: the model's, else 48)",
        flags=("-s", "--steps", "--diffusion-steps"), minimum=1)
    mode: str = _option(
        "diffusion", "how a block-diffusion checkpoint decodes: diffusion (blocks denoised); autoregressive "
        "(one token per step, causal); speculative (the rest of each block drafted by one diffusion pass, "
        "verified by one causal pass: exactly the greedy autoregressive output, in fewer passes)",
        choices=("diffusion", "autoregressive", "speculative"), group="block")
    strategy: Union[str, RemaskPolicy, None] = _option(
        None, "remasking policy of block diffusion (default low_confidence_dynamic, unless the model's GGUF "
        "names one in diffusion.strategy: every position above --threshold at once; low_confidence_static: the "
        "schedule's count per step; token_editing: LLaDA2.1's fill and edit rule; a RemaskPolicy object "
        "drives either family)", choices=tuple(STRATEGIES), group="block")
    threshold: Optional[float] = _option(
        None, "confidence threshold: low_confidence_dynamic (default 0.85), token_editing's fill (default: "
        "the model's, else 0.7) or --parallel threshold (default 0.9)", bounds=(0.0, 1.0, "(]"))
    editing_threshold: Optional[float] = _option(
        None, "token_editing: a placed token of the active block is overwritten when the prediction there "
        "differs and its probability exceeds this (default: the model's, else 0.5; 0 or 1: editing off)",
        bounds=(0.0, 1.0, "[]"), group="block")
    max_post_steps: Optional[int] = _option(
        None, "token_editing with editing on: steps a block may take after its last mask is filled (it ends "
        "at the first that changes nothing; default: the model's, else 16)", minimum=0, maximum=4096,
        group="block")
    eb_gamma: float = _option(0.35, "entropy bound (entropy_bounded)", bounds=(0.0, None, "("), group="block")
    # canvas diffusion only (DiffusionGemma); None: the model's (its GGUF's diffusion.eb_*), else the
    # published defaults
    t_min: Optional[float] = _option(
        None, "canvas diffusion: the temperature the schedule runs down to (default: the model's, else 0.4); "
        "step k of N samples at t_min + (t_max - t_min) (N - k) / N", bounds=(0.0, None, "("), group="canvas")
    t_max: Optional[float] = _option(
        None, "canvas diffusion: the first step's temperature (default: the model's, else 0.8)",
        bounds=(0.0, None, "("), group="canvas")
    entropy_bound: Optional[float] = _option(
        None, "canvas diffusion: a step accepts positions by ascending entropy while the entropies before "
        "one sum to at most this (default: the model's, else 0.1)", bounds=(0.0, None, "["), group="canvas")
    stability: Optional[int] = _option(
        None, "canvas diffusion: a canvas stops when its argmax equals the last this many steps' (and its "
        "mean entropy is below --confidence; default: the model's, else 1)", minimum=0, maximum=64,
        group="canvas")
    confidence: Optional[float] = _option(
        None, "canvas diffusion: the mean entropy below which a stable canvas stops (default: the model's, "
        "else 0.005)", bounds=(0.0, None, "["), group="canvas")
    temperature: float = _option(0.0, "0 = greedy", flags=("--temperature", "--temp"), bounds=(0.0, None, "["))
    top_k: int = _option(0, "keep the k most likely tokens (0: off)", minimum=0)
    top_p: float = _option(1.0, "nucleus sampling mass (1: off)", bounds=(0.0, 1.0, "(]"))
    seed: int = _option(0, "seed of the counter-based RNG", minimum=0, maximum=2 ** 64 - 1)
    stop: Optional[Sequence[Union[str, int]]] = _option(
        None, "stop string (repeatable; default: the model's end-of-generation tokens)", cli="append")
    cache: Union[bool, str, None] = _option(
        None, "block and canvas diffusion: True (exact KV cache, default) or False (recompute); full "
        "diffusion: none (exact, default), prefix or dual (Fast-dLLM caches)", cli=None)
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
            strings = sum(isinstance(item, str) for item in self.stop)
            if strings > MAX_STOPS:
                raise ValueError(f"stop holds {strings} strings; at most {MAX_STOPS} (each one is looked "
                                 "for in every token's text)")
            if len(self.stop) - strings > MAX_STOP_IDS:
                raise ValueError(f"stop holds {len(self.stop) - strings} token ids; at most {MAX_STOP_IDS}")
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
        family = {"block": "block diffusion", "full": "full diffusion",
                  "canvas": "canvas diffusion"}.get(meta["group"], "both")
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


def length_given(config: Optional[GenerationConfig], options: dict) -> bool:
    """Whether a call names its generation length (else the model's default may depend on
    the prompt's length)."""
    given = options.get("max_new_tokens", options.get("max_tokens"))
    return given is not None or (config is not None and config.max_new_tokens is not None)
