"""Block diffusion (SDAR and the other causal bodies with a mask token): option defaults and
rules, the positions and contexts a sequence needs. The sequence itself is Cython
(``llamadiff._block.BlockSequence``)."""

from __future__ import annotations

from llamadiff._block import FIXED_SHAPE_NEEDS, BlockSequence
from llamadiff.families.base import ContextShape, Family, Setup, model_flag
from llamadiff.policy import make_policy

__all__ = ["BlockFamily"]


class BlockFamily(Family):
    name = "block"
    # a single sequence may sample on the device (sampler="device" / "backend": only its own rows)
    device_sampling = True

    def resolve(self, setup: Setup, cfg):
        """The block length (the model's trained one by default), steps, cache and threshold."""
        block = cfg.block_length or setup.defaults.block_length or 4
        if 2 * block > setup.n_ctx:
            raise ValueError(f"block_length={block} needs n_ctx >= {2 * block} (a step decodes the "
                             f"finished block and the next one together); this Generator has "
                             f"n_ctx={setup.n_ctx}")
        # the model's diffusion.steps (steps per block) where given, never above the block
        steps = cfg.steps or min(setup.defaults.steps or block, block)
        if steps > block:
            raise ValueError(f"steps ({steps}) cannot exceed block_length ({block}): each step "
                             "commits at least one token")
        cache = cfg.cache
        if cache is None or cache == "none":
            cache = cache is None
        elif not isinstance(cache, bool):
            raise ValueError(f"cache={cache!r} is for full-diffusion models; block diffusion "
                             "takes cache=True (exact KV cache) or False")
        if cfg.eps is not None:
            raise ValueError("eps (a timestep schedule) is for full-diffusion models; "
                             "block diffusion uses block_length")
        threshold = 0.85 if cfg.threshold is None else cfg.threshold
        shift = cfg.shift_logits
        if shift is None:
            # block-diffusion checkpoints predict each position from its own row (SDAR) unless
            # the GGUF says otherwise (Fast-dLLM v2 conversions write diffusion.shift_logits)
            shift = model_flag(setup.model, "diffusion.shift_logits", False)
        # None is decided per context (BlockSequence.bind): on for one sequence on a GPU
        if cfg.fixed_step_shape and (not cache or shift):
            raise ValueError(FIXED_SHAPE_NEEDS)
        return cfg.replace(block_length=block, steps=steps, cache=cache, threshold=threshold,
                           shift_logits=shift)

    def positions(self, cfg, n_prompt: int) -> int:
        """Positions a sequence occupies: whole blocks."""
        B = cfg.block_length
        return (n_prompt + cfg.max_new_tokens + B - 1) // B * B

    def check_prompt(self, setup: Setup, cfg, ids, single: bool) -> None:
        total = self.positions(cfg, len(ids))
        if total > setup.n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({cfg.max_new_tokens}), "
                             f"rounded up to whole blocks of {cfg.block_length} ({total}), exceeds "
                             f"n_ctx={setup.n_ctx}" + ("" if single else " (the bound per sequence)"))

    def policy(self, cfg):
        return make_policy(cfg.strategy, threshold=cfg.threshold, eb_gamma=cfg.eb_gamma)

    def sequence(self, model, ids, cfg, policy):
        return BlockSequence(model, ids, cfg.max_new_tokens, cfg.block_length, cfg.steps, policy,
                             temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                             seed=cfg.seed, cache=cfg.cache, shift_logits=cfg.shift_logits,
                             fixed_shape=cfg.fixed_step_shape)

    def runs_alone(self, cfg) -> bool:
        # the recompute mode (reference behaviour) re-decodes each sequence's prefix alone
        return not cfg.cache

    def context(self, setup: Setup, cfg, slots: int, capacity: int) -> ContextShape:
        """Each step decodes a store pass and a block per slot (the fused store pass decodes two
        blocks at once); prompts are prefilled in chunks of n_batch."""
        B = cfg.block_length
        if slots == 1:
            return ContextShape(capacity, max(setup.n_batch, 2 * B), 1, False)
        return ContextShape(slots * capacity, max(2 * B * slots, min(setup.n_batch, capacity)), slots, False)

    def max_slots(self, cfg, capacity: int) -> int:
        return 1 << 30

    def step_tokens(self, cfg, n_prompt: int) -> int:
        """A store pass and a block."""
        return 2 * cfg.block_length

    def batch_key(self, cfg) -> tuple:
        """One block-causal mask per context: one block length, one cache mode."""
        return ("block", cfg.block_length, bool(cfg.cache))
