"""Block diffusion (SDAR and the other causal bodies with a mask token): option defaults and
rules, the positions and contexts a sequence needs. The sequence itself is Cython
(``llamadiff._block.BlockSequence``)."""

from __future__ import annotations

import dataclasses

from llamadiff._block import EDITS_NEED_UNSHIFTED, FIXED_SHAPE_NEEDS, BlockSequence
from llamadiff._causal import SPECULATION_GREEDY, CausalSequence
from llamadiff.config import GenerationConfig
from llamadiff.families.base import ContextShape, Family, Setup, model_flag
from llamadiff.policy import RemaskPolicy, make_policy

__all__ = ["BlockFamily"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}


class BlockFamily(Family):
    name = "block"
    # a single sequence may sample on the device (sampler="device" / "backend": only its own rows)
    device_sampling = True

    # options only the diffusion mode reads (causal modes refuse them when given)
    DIFFUSION_ONLY = ("strategy", "threshold", "eb_gamma", "editing_threshold", "max_post_steps", "steps",
                      "fixed_step_shape")

    def resolve(self, setup: Setup, cfg):
        """The block length (the model's trained one by default), steps, cache and threshold."""
        if cfg.mode != "diffusion":
            return self._resolve_causal(setup, cfg)
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
        shift = cfg.shift_logits
        if shift is None:
            # block-diffusion checkpoints predict each position from its own row (SDAR) unless
            # the GGUF says otherwise (Fast-dLLM v2 conversions write diffusion.shift_logits)
            shift = model_flag(setup.model, "diffusion.shift_logits", False)
        rule = self._rule(setup, cfg, shift)
        # None is decided per context (BlockSequence.bind): on for one sequence on a GPU
        if cfg.fixed_step_shape and (not cache or shift):
            raise ValueError(FIXED_SHAPE_NEEDS)
        return cfg.replace(block_length=block, steps=steps, cache=cache, shift_logits=shift, **rule)

    def _resolve_causal(self, setup: Setup, cfg):
        """mode="autoregressive" / "speculative": the block length (the draft's window and a
        stream's chunk; the model's by default); what only diffusion reads is refused."""
        for name in self.DIFFUSION_ONLY:
            if getattr(cfg, name) != _DEFAULTS[name]:
                raise ValueError(f"{name} is a setting of diffusion decoding; mode={cfg.mode!r} decodes "
                                 "causally and would ignore it")
        if cfg.cache is False or (cfg.cache is not None and not isinstance(cfg.cache, bool)):
            raise ValueError(f"mode={cfg.mode!r} decodes with the KV cache: cache={cfg.cache!r} is refused")
        if cfg.mode == "speculative" and (cfg.temperature != 0 or cfg.top_k != 0 or cfg.top_p != 1.0):
            raise ValueError(SPECULATION_GREEDY)
        if cfg.mode == "speculative" and cfg.seed != 0:
            raise ValueError("seed: speculative decoding is greedy and draws nothing; leave seed unset")
        if cfg.eps is not None:
            raise ValueError("eps (a timestep schedule) is for full-diffusion models")
        if cfg.mode == "autoregressive":
            # one token per step, each its own chunk of a stream (stops are seen at every token)
            for name in ("block_length", "shift_logits"):
                if getattr(cfg, name) is not None:
                    raise ValueError(f"{name} is a setting of diffusion decoding and of speculation's "
                                     "drafts; mode='autoregressive' decodes one causal token at a time "
                                     "and would ignore it")
            return cfg.replace(block_length=1, cache=True, shift_logits=False)
        block = cfg.block_length or setup.defaults.block_length or 4
        if block < 2:
            raise ValueError("speculative decoding drafts the rest of a block: block_length must be >= 2")
        if 2 * block > setup.n_ctx:
            raise ValueError(f"block_length={block} needs n_ctx >= {2 * block}; this Generator has "
                             f"n_ctx={setup.n_ctx}")
        shift = cfg.shift_logits
        if shift is None:
            shift = model_flag(setup.model, "diffusion.shift_logits", False)
        return cfg.replace(block_length=block, cache=True, shift_logits=shift)

    @staticmethod
    def _rule(setup: Setup, cfg, shift: bool) -> dict:
        """The strategy and its settings: the call's, else the model's (diffusion.strategy and its
        thresholds: a LLaDA2.1 conversion writes token_editing), else low_confidence_dynamic.
        The token-editing settings are refused where nothing would read them."""
        d = setup.defaults
        strategy = cfg.strategy
        if strategy is None:
            strategy = d.strategy or "low_confidence_dynamic"
            if strategy == "token_editing" and shift:
                strategy = "low_confidence_dynamic"     # no model value makes a default call fail
        editing = strategy == "token_editing"
        named = strategy if isinstance(strategy, str) else None
        if cfg.threshold is not None and named not in ("low_confidence_dynamic", "token_editing"):
            raise ValueError(f"threshold is a setting of low_confidence_dynamic and token_editing (and of full "
                             f"diffusion's parallel modes); strategy={strategy!r} would ignore it")
        if cfg.eb_gamma != _DEFAULTS["eb_gamma"] and named != "entropy_bounded":
            raise ValueError(f"eb_gamma is a setting of entropy_bounded; strategy={strategy!r} would ignore it")
        if not editing:
            for name in ("editing_threshold", "max_post_steps"):
                if getattr(cfg, name) is not None:
                    where = ("set it on the policy object" if isinstance(strategy, RemaskPolicy)
                             else f"strategy={strategy!r} would ignore it")
                    raise ValueError(f"{name} is a setting of strategy='token_editing' (LLaDA2.1's token "
                                     f"editing); {where}")
            threshold = cfg.threshold if cfg.threshold is not None else (d.threshold or 0.85)
            return dict(strategy=strategy, threshold=threshold)
        threshold = cfg.threshold if cfg.threshold is not None else (d.threshold or 0.7)
        edit = cfg.editing_threshold
        if edit is None:
            edit = d.editing_threshold if d.editing_threshold is not None else 0.5
        on = 0.0 < edit < 1.0
        if on and shift:
            raise ValueError(EDITS_NEED_UNSHIFTED)
        post = cfg.max_post_steps
        if post is not None and not on:
            raise ValueError(f"max_post_steps counts the steps a block takes after its last mask while "
                             f"token editing is on; editing_threshold={edit:g} turns editing off, so none "
                             "are taken: leave max_post_steps unset")
        if post is None:
            post = d.max_post_steps if d.max_post_steps is not None else 16
        return dict(strategy=strategy, threshold=threshold, editing_threshold=edit, max_post_steps=post)

    def positions(self, cfg, n_prompt: int) -> int:
        """Positions a sequence occupies: whole blocks (the causal modes: what they decode)."""
        if cfg.mode != "diffusion":
            return n_prompt + cfg.max_new_tokens
        B = cfg.block_length
        return (n_prompt + cfg.max_new_tokens + B - 1) // B * B

    def check_prompt(self, setup: Setup, cfg, ids, single: bool) -> None:
        total = self.positions(cfg, len(ids))
        if total > setup.n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({cfg.max_new_tokens}), "
                             f"rounded up to whole blocks of {cfg.block_length} ({total}), exceeds "
                             f"n_ctx={setup.n_ctx}" + ("" if single else " (the bound per sequence)"))

    def policy(self, cfg):
        if cfg.mode != "diffusion":
            return None
        editing = {} if cfg.editing_threshold is None else dict(
            editing_threshold=cfg.editing_threshold, max_post_steps=cfg.max_post_steps)
        return make_policy(cfg.strategy, threshold=cfg.threshold, eb_gamma=cfg.eb_gamma, **editing)

    def sequence(self, model, ids, cfg, policy):
        if cfg.mode != "diffusion":
            return CausalSequence(model, ids, cfg.max_new_tokens, cfg.block_length,
                                  speculative=cfg.mode == "speculative", temperature=cfg.temperature,
                                  top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed, shift_logits=cfg.shift_logits)
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
        """A store pass and a block; a causal mode: the pending token (and a block of drafts)."""
        if cfg.mode == "autoregressive":
            return 1
        if cfg.mode == "speculative":
            return cfg.block_length + 1
        return 2 * cfg.block_length

    def needs_host_logits(self, cfg) -> bool:
        """Speculation's draft pass reads its rows on the host (its argmax is the draft)."""
        return cfg.mode == "speculative"

    def stats(self, seq, cfg) -> dict:
        """Token editing: how many placed tokens the policy overwrote. Speculation: its verify
        passes, the drafts made and kept, and the tokens kept per verify pass."""
        if isinstance(seq, CausalSequence):
            out = {"mode": cfg.mode}
            if seq.speculative:
                out.update(verify_passes=seq.n_verify, drafted=seq.n_drafted, accepted=seq.n_accepted,
                           acceptance_length=seq.acceptance_length, draft_ms=seq.draft_us / 1e3)
            return out
        return {"edits": seq.n_edits_total} if seq.policy.edits else {}

    def batch_key(self, cfg) -> tuple:
        """One block-causal mask per context: one block length, one cache mode. The causal modes
        share one (causal attention; the drafts switch it for their own passes)."""
        if cfg.mode != "diffusion":
            return ("causal", cfg.block_length)
        return ("block", cfg.block_length, bool(cfg.cache))
