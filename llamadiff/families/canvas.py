"""Canvas diffusion (Google's DiffusionGemma, GGUF arch ``diffusion-gemma``): option defaults and
rules, the positions and contexts a sequence needs. The sequence itself is Cython
(``llamadiff._canvas.CanvasSequence``; semantics there and in docs/GENERATION.md)."""

from __future__ import annotations

import dataclasses

from llamadiff._canvas import MAX_CANVAS_STEPS, CanvasSequence
from llamadiff.bodies import CANVAS_ARCH
from llamadiff.errors import UnsupportedModelError
from llamadiff.config import GenerationConfig
from llamadiff.families.base import ContextShape, Family, Setup, model_float, model_int

__all__ = ["CanvasFamily", "CANVAS_ARCH"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}

# option -> (GGUF key of the model's value, kind, low, high, published default); the keys are
# those of the published GGUFs (llama.cpp PR #24423's converter)
MODEL_SETTINGS = {
    "steps": ("diffusion.eb_max_steps", int, 1, MAX_CANVAS_STEPS, 48),
    "t_min": ("diffusion.eb_t_min", float, 1e-6, 1e4, 0.4),
    "t_max": ("diffusion.eb_t_max", float, 1e-6, 1e4, 0.8),
    "entropy_bound": ("diffusion.eb_entropy_bound", float, 0.0, 1e4, 0.1),
    "stability": ("diffusion.eb_stability_threshold", int, 0, 64, 1),
    "confidence": ("diffusion.eb_confidence_threshold", float, 0.0, 1e4, 0.005),
}

# options of every family that a canvas would ignore (refused when given; the options of the
# block and full families are refused by name before, Generator._check_family_options)
IGNORED = {
    "threshold": "positions are accepted by the entropy bound (entropy_bound)",
    "temperature": "the temperature follows the schedule from t_max down to t_min (set those)",
    "shift_logits": "every position is predicted from its own row",
}


def canvas_length(model) -> int:
    """The model's canvas (``diffusion.canvas_length``, which a conversion must write)."""
    value = model_int(model, "diffusion.canvas_length", 1, 65536)
    if value is None:
        raise UnsupportedModelError(
            f"this {CANVAS_ARCH} model has no usable diffusion.canvas_length (a positive number of "
            f"positions, got {model.meta('diffusion.canvas_length')!r}): convert it again with llamadiff convert")
    return value


class CanvasFamily(Family):
    name = "canvas"

    def resolve(self, setup: Setup, cfg):
        """The canvas length (the model's), steps and the sampler's settings: the call's, else the
        model's GGUF values, else the published defaults; what a canvas would ignore is refused."""
        for name, why in IGNORED.items():
            if getattr(cfg, name) != _DEFAULTS[name]:
                raise ValueError(f"{name} is not a setting of canvas diffusion (DiffusionGemma): {why}")
        if cfg.cache not in (None, True, False):
            raise ValueError(f"cache={cfg.cache!r}: canvas diffusion takes cache=True (the exact prefix cache, "
                             "default) or False (every step encodes the prefix again)")
        C = canvas_length(setup.model)
        if cfg.block_length not in (None, C):
            raise ValueError(f"block_length={cfg.block_length}: a DiffusionGemma canvas is the model's "
                             f"{C} positions (diffusion.canvas_length)")
        if C + 1 > setup.n_ctx:
            raise ValueError(f"the model's canvas of {C} positions and a prompt need n_ctx > {C}; this "
                             f"Generator has n_ctx={setup.n_ctx}")
        values = {}
        for name, (key, kind, low, high, default) in MODEL_SETTINGS.items():
            value = getattr(cfg, name)
            if value is None:
                read = model_int if kind is int else model_float
                value = read(setup.model, key, low, high)
                value = default if value is None else value
            values[name] = value
        if values["steps"] > MAX_CANVAS_STEPS:
            raise ValueError(f"steps must be at most {MAX_CANVAS_STEPS} per canvas, got {values['steps']}")
        if values["t_min"] > values["t_max"]:
            raise ValueError(f"t_min ({values['t_min']:g}) must not exceed t_max ({values['t_max']:g})")
        # block_length carries the canvas length (a region of the engine is one canvas)
        return cfg.replace(block_length=C, cache=cfg.cache is not False, **values)

    def positions(self, cfg, n_prompt: int) -> int:
        """The prompt and whole canvases (the last is not cut)."""
        C = cfg.block_length
        return n_prompt + -(-cfg.max_new_tokens // C) * C

    def check_prompt(self, setup: Setup, cfg, ids, single: bool) -> None:
        if not ids:
            raise ValueError("canvas diffusion needs a prompt of at least one token")
        total = self.positions(cfg, len(ids))
        if total > setup.n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({cfg.max_new_tokens}), rounded up "
                             f"to whole canvases of {cfg.block_length} ({total}), exceeds n_ctx={setup.n_ctx}"
                             + ("" if single else " (the bound per sequence)"))

    def policy(self, cfg):
        return None

    def sequence(self, model, ids, cfg, policy):
        return CanvasSequence(model, ids, cfg.max_new_tokens, cfg.block_length, cfg.steps,
                              t_min=cfg.t_min, t_max=cfg.t_max, entropy_bound=cfg.entropy_bound,
                              stability=cfg.stability, confidence=cfg.confidence, top_k=cfg.top_k,
                              top_p=cfg.top_p, seed=cfg.seed, eog_tokens=model.eog_token_ids, cache=cfg.cache)

    def runs_alone(self, cfg) -> bool:
        # without the cache each sequence encodes its prefix alone, every step
        return not cfg.cache

    def context(self, setup: Setup, cfg, slots: int, capacity: int) -> ContextShape:
        """A step decodes one canvas per slot (non-causal: all in one ubatch); prompts are prefilled
        in chunks of n_batch."""
        C = cfg.block_length
        if slots == 1:
            return ContextShape(capacity, max(setup.n_batch, C), 1, False)
        return ContextShape(slots * capacity, max(C * slots, min(setup.n_batch, capacity)), slots, False)

    def max_slots(self, cfg, capacity: int) -> int:
        return 1 << 30

    def step_tokens(self, cfg, n_prompt: int) -> int:
        return cfg.block_length

    def batch_key(self, cfg) -> tuple:
        """Canvas sequences share any step (each decodes its own canvas; the phase is per decode)."""
        return ("canvas", bool(cfg.cache))

    def needs_host_logits(self, cfg) -> bool:
        """The canvas rows are sampled on the host (argmax, entropy and draw of every position)."""
        return True

    def stats(self, seq, cfg) -> dict:
        """Positions the entropy bound accepted, in all and per decoder pass."""
        passes = sum(seq.steps_per_region) or 1
        return {"accepted": seq.n_accepted, "accepted_per_step": seq.n_accepted / passes}
