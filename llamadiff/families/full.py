"""Full diffusion (LLaDA, Dream, RND1: llama.cpp's diffusion architectures): option defaults and
rules, the positions and contexts a sequence needs. The sequence itself is Cython
(``llamadiff._full.FullSequence``)."""

from __future__ import annotations

from llamadiff._full import DEFAULT_EPS, FullSequence, UpstreamFullSequence, check_modes
from llamadiff.families.base import ContextShape, Family, Setup, model_flag
from llamadiff.bodies import TIMESTEP_ARCHS
from llamadiff.policy import RemaskPolicy, make_full_policy

__all__ = ["FullFamily", "BATCH_TOKENS"]

# tokens one full-diffusion batch may decode at once (every slot's whole sequence): bounds
# the non-causal attention's work and memory
BATCH_TOKENS = 2048


def _per_request(cfg) -> int:
    """Sequence ids (and decodes of the sequence) per request: two with guidance."""
    return 2 if cfg.cfg_scale > 0 else 1


def _rounded(capacity: int) -> int:
    """Rounded up to 64 positions, so that nearby lengths reuse one context."""
    return (capacity + 63) // 64 * 64


class FullFamily(Family):
    name = "full"
    device_sampling = False      # every row is read on the host

    def resolve(self, setup: Setup, cfg):
        """The schedule, steps, cache, shift_logits and threshold of a call."""
        if cfg.fixed_step_shape:
            raise ValueError("fixed_step_shape is for block diffusion (a full-diffusion step "
                             "decodes the whole canvas, one shape already)")
        if cfg.block_length is not None and cfg.eps is not None:
            raise ValueError("give one schedule: block_length (LLaDA-style blocks) or eps "
                             "(Dream-style timesteps), not both")
        block, eps = cfg.block_length, cfg.eps
        if block is None and eps is None:
            if setup.model.architecture in TIMESTEP_ARCHS:
                eps = DEFAULT_EPS
            else:
                block = 32
        steps = cfg.steps
        if steps is None:
            # the model's diffusion.steps (all steps) where given: never above one per new token,
            # never below one per block of the schedule in use
            steps = min(setup.defaults.steps or cfg.max_new_tokens, cfg.max_new_tokens)
            if block:
                steps = max(steps, -(-cfg.max_new_tokens // block))
        if steps > 4 * cfg.max_new_tokens:
            raise ValueError(f"steps ({steps}) is more than 4 per new token ({cfg.max_new_tokens}): "
                             "the extra steps would commit nothing")
        cache = cfg.cache
        if cache is None or cache is False:
            cache = "none"
        elif cache is True:
            raise ValueError("full diffusion has no exact cache: choose cache='none' (exact), "
                             "'prefix' or 'dual' (approximate)")
        shift = cfg.shift_logits
        if shift is None:
            shift = model_flag(setup.model, "diffusion.shift_logits", True)
        threshold = 0.9 if cfg.threshold is None else cfg.threshold
        custom = isinstance(cfg.strategy, RemaskPolicy)
        check_modes(block or 0, eps or 0.0, cache, cfg.parallel, cfg.cfg_scale, cfg.rng, custom)
        if not custom:
            make_full_policy(cfg.algorithm, parallel=cfg.parallel, alg_temp=cfg.alg_temp,
                             threshold=threshold, factor=cfg.factor)      # its rules, up front
        return cfg.replace(block_length=block, eps=eps, steps=steps, cache=cache,
                           shift_logits=shift, threshold=threshold)

    def trained_length(self, setup: Setup) -> tuple:
        if setup.defaults.seq_length is not None:        # the length it learned to denoise whole
            return setup.defaults.seq_length, "sequences of"
        return super().trained_length(setup)

    def positions(self, cfg, n_prompt: int) -> int:
        return n_prompt + cfg.max_new_tokens

    def check_prompt(self, setup: Setup, cfg, ids, single: bool) -> None:
        n = len(ids)
        if not ids:
            raise ValueError("the prompt is empty: full diffusion needs at least one prompt token")
        if n + cfg.max_new_tokens > setup.n_ctx:
            raise ValueError(f"prompt ({n} tokens) + max_new_tokens ({cfg.max_new_tokens}) "
                             f"= {n + cfg.max_new_tokens} exceeds n_ctx={setup.n_ctx}")

    def policy(self, cfg):
        # None: each sequence takes the policy of its algorithm / parallel mode
        return cfg.strategy if isinstance(cfg.strategy, RemaskPolicy) else None

    def sequence(self, model, ids, cfg, policy):
        # rng="llama.cpp": llama-diffusion-cli's loop, draw for draw
        kind = UpstreamFullSequence if cfg.rng == "llama.cpp" else FullSequence
        return kind(model, ids, cfg.max_new_tokens, steps=cfg.steps,
                    block_length=cfg.block_length or 0, eps=cfg.eps or 0.0,
                    algorithm=cfg.algorithm, cache=cfg.cache, parallel=cfg.parallel,
                    threshold=cfg.threshold, factor=cfg.factor, cfg_scale=cfg.cfg_scale,
                    alg_temp=cfg.alg_temp, add_gumbel_noise=cfg.add_gumbel_noise,
                    shift_logits=cfg.shift_logits, temperature=cfg.temperature,
                    top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed, rng=cfg.rng, policy=policy)

    def runs_alone(self, cfg) -> bool:
        # upstream's way (rng="llama.cpp") has no KV memory: one sequence per decode
        return cfg.rng == "llama.cpp"

    def context(self, setup: Setup, cfg, slots: int, capacity: int) -> ContextShape:
        """A step may decode every slot's whole sequence in one non-causal batch, twice with
        guidance."""
        n = slots * _per_request(cfg)
        total = n * _rounded(capacity)
        return ContextShape(total, total, n, cfg.rng != "llama.cpp")

    def max_slots(self, cfg, capacity: int) -> int:
        return max(1, BATCH_TOKENS // (_per_request(cfg) * _rounded(capacity)))

    def step_tokens(self, cfg, n_prompt: int) -> int:
        """All of it (twice when guided)."""
        return _per_request(cfg) * (n_prompt + cfg.max_new_tokens)

    def batch_key(self, cfg) -> tuple:
        """A guided request takes two sequence ids."""
        return ("full", cfg.rng, cfg.cfg_scale > 0)

    def serving_context(self, setup: Setup, cfg, slots: int) -> ContextShape:
        """Each step decodes every running sequence whole, and all of them stay in the KV cache,
        so one budget of tokens bounds both (requests wait for room); at least one request of
        the Generator's n_ctx."""
        budget = max(BATCH_TOKENS, _per_request(cfg) * _rounded(setup.n_ctx))
        return ContextShape(budget, budget, slots * _per_request(cfg), cfg.rng != "llama.cpp")

    def needs_host_logits(self, cfg) -> bool:
        return False        # its batches sample on the CPU route anyway (device_sampling is False)

    def stats(self, seq, cfg) -> dict:
        return dict(schedule="block" if cfg.block_length else "timestep", eps=cfg.eps,
                    algorithm=cfg.algorithm, cache=cfg.cache, parallel=cfg.parallel,
                    policy=seq.policy.name, sequence=seq.tokens)
