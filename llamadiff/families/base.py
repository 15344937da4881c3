"""What a diffusion family brings to the engine: the ``Family`` base, the shape of a context, and
what a family's rules read of the model and of the Generator that runs it.

A family decides option defaults and rules (``resolve``), how many positions a prompt takes,
which engine ``Sequence`` runs it, and which contexts it needs. The front ends
(``llamadiff.generator``, ``llamadiff.serving``) and the batch driver (``llamadiff.batch``) call
a family only through the members declared here.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from llamadiff.config import MAX_INT_OPTION, GenerationConfig

__all__ = ["Family", "ContextShape", "ModelDefaults", "Setup", "model_choice", "model_flag", "model_float",
           "model_int"]


class ContextShape(NamedTuple):
    """The llama.cpp context a batch needs: KV positions in all, tokens per decode, sequence ids,
    and whether a full-diffusion body gets a KV memory (its caches need one)."""
    n_ctx: int
    n_ubatch: int
    n_seq: int
    diffusion_kv: bool


def model_int(model, key: str, low: int = 1, high: int = MAX_INT_OPTION) -> Optional[int]:
    """An int GGUF value in [low, high] of a model's defaults (``diffusion.*``), or None when
    absent or not such a number (a corrupt value falls back to the built-in default)."""
    try:
        value = int(model.meta(key))
    except (TypeError, ValueError):
        return None
    return value if low <= value <= high else None


def model_float(model, key: str, low: float, high: float) -> Optional[float]:
    """A float GGUF value in [low, high] of a model's defaults, or None when absent or not such a
    number (a corrupt value falls back to the built-in default)."""
    try:
        value = float(model.meta(key))
    except (TypeError, ValueError):
        return None
    return value if low <= value <= high else None


def model_choice(model, key: str, choices) -> Optional[str]:
    """A GGUF string of a model's defaults that names one of ``choices``, or None."""
    value = model.meta(key)
    return value if isinstance(value, str) and value in choices else None


def model_flag(model, key: str, default: bool) -> bool:
    """A boolean GGUF value of a model's defaults (``diffusion.*``); ``default`` when absent."""
    meta = model.meta(key)
    return default if meta is None else str(meta).strip().lower() in ("true", "1")


class ModelDefaults(NamedTuple):
    """What a model's GGUF says about generating with it (``diffusion.*``; docs/GENERATION.md,
    "Model defaults"); None where it says nothing usable."""
    block_length: Optional[int]
    steps: Optional[int]
    gen_length: Optional[int]
    seq_length: Optional[int]
    # the decoding rule a checkpoint was published with (LLaDA2.1: token_editing and its thresholds)
    strategy: Optional[str] = None
    threshold: Optional[float] = None
    editing_threshold: Optional[float] = None
    max_post_steps: Optional[int] = None

    @classmethod
    def read(cls, model) -> "ModelDefaults":
        from llamadiff.policy import STRATEGIES
        return cls(model_int(model, "diffusion.block_length"), model_int(model, "diffusion.steps"),
                   model_int(model, "diffusion.gen_length"), model_int(model, "diffusion.seq_length"),
                   model_choice(model, "diffusion.strategy", STRATEGIES),
                   model_float(model, "diffusion.threshold", 1e-6, 1.0),
                   model_float(model, "diffusion.editing_threshold", 0.0, 1.0),
                   model_int(model, "diffusion.max_post_steps", 0, 4096))


class Setup(NamedTuple):
    """What a family's rules read of the Generator that runs it."""
    model: object               # llamadiff.Model
    defaults: ModelDefaults
    n_ctx: int                  # the bound of one sequence's prompt + generation
    n_batch: int                # tokens per prefill decode


class Family:
    """A diffusion family. Subclasses define every member; the engine calls nothing else."""

    #: ``Model.family`` of the models it runs
    name: str = ""
    #: a single sequence may sample its rows where llama.cpp computed them (``sampler="device"``)
    device_sampling: bool = False

    def resolve(self, setup: Setup, cfg: GenerationConfig) -> GenerationConfig:
        """A call's options with this family's defaults filled in and its rules checked."""
        raise NotImplementedError

    def trained_length(self, setup: Setup) -> tuple:
        """(positions, what) the model learned: a prompt + generation beyond it warns."""
        return setup.model.n_ctx_train, "a context of"

    def positions(self, cfg: GenerationConfig, n_prompt: int) -> int:
        """KV positions one sequence of ``n_prompt`` prompt tokens occupies."""
        raise NotImplementedError

    def check_prompt(self, setup: Setup, cfg: GenerationConfig, ids: list, single: bool) -> None:
        """Refuse (ValueError) a prompt that cannot run with these options."""
        raise NotImplementedError

    def policy(self, cfg: GenerationConfig):
        """The remasking policy every sequence of a call shares (None: each makes its own)."""
        raise NotImplementedError

    def sequence(self, model, ids: list, cfg: GenerationConfig, policy):
        """The engine ``Sequence`` that generates after prompt ``ids``."""
        raise NotImplementedError

    def runs_alone(self, cfg: GenerationConfig) -> bool:
        """Whether a sequence of these options decodes alone (one per context)."""
        raise NotImplementedError

    def context(self, setup: Setup, cfg: GenerationConfig, slots: int, capacity: int) -> ContextShape:
        """The context ``slots`` sequences of at most ``capacity`` positions each need."""
        raise NotImplementedError

    def max_slots(self, cfg: GenerationConfig, capacity: int) -> int:
        """The most sequences of ``capacity`` positions one context should decode together."""
        raise NotImplementedError

    def step_tokens(self, cfg: GenerationConfig, n_prompt: int) -> int:
        """Tokens one step of such a sequence puts in the shared batch (serving's step budget)."""
        raise NotImplementedError

    def batch_key(self, cfg: GenerationConfig) -> tuple:
        """Requests share a step when their keys agree."""
        raise NotImplementedError

    def serving_context(self, setup: Setup, cfg: GenerationConfig, slots: int) -> ContextShape:
        """The context of a serving batch of ``slots`` requests: each may take up to ``n_ctx``
        positions."""
        return self.context(setup, cfg, slots, setup.n_ctx)

    def stats(self, seq, cfg: GenerationConfig) -> dict:
        """The family's entries in a result's ``stats``."""
        return {}

    def needs_host_logits(self, cfg: GenerationConfig) -> bool:
        """Whether a sequence of these options reads logits rows itself, in host memory (then a
        sampler route that computes no host rows, ``sampler="backend"``, gives way to the CPU's)."""
        return False
