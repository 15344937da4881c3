"""The engine's own API (llamadiff.engine): what Scheduler.add refuses, sequences driven
directly, and the guards that keep bad values from reaching C."""

import math

import pytest

from llamadiff import Context, GenerationConfig, Generator, LowConfidenceStatic, ParallelThreshold
from llamadiff._block import BlockSequence
from llamadiff._full import FullSequence
from llamadiff._sampling import CpuRowSampler
from llamadiff.engine import Scheduler

EXACT = dict(n_threads=1, type_k="f32", type_v="f32", flash_attn=False)


def block_context(model, n_seq=2):
    return Context(model, n_ctx=128 * n_seq, n_batch=64, n_ubatch=64, n_seq_max=n_seq, kv_unified=True,
                   causal=False, **EXACT)


def test_scheduler_runs_sequences_like_the_generator(qwen3_model):
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    with block_context(qwen3_model) as ctx:
        sched = Scheduler(ctx, CpuRowSampler(1))
        seqs = [BlockSequence(qwen3_model, p, 8, 4, 4, LowConfidenceStatic()) for p in prompts]
        for seq in seqs:
            sched.add(seq)
        steps = 0
        while not all(s.done for s in seqs):
            stepped, finished = sched.step()
            steps += 1
            assert set(finished) <= set(stepped)
        assert sched.n_steps == steps and sched.n_decode >= steps
        with Generator(qwen3_model, n_ctx=128, **EXACT) as gen:
            for seq, prompt in zip(seqs, prompts):
                solo = gen.generate(prompt, max_new_tokens=8, block_length=4, strategy="low_confidence_static",
                                    stop=[])
                assert seq.tokens[len(prompt):len(prompt) + 8] == solo.tokens
        sched.clear()
        assert ctx.memory_pos_max(0) == -1 and ctx.memory_pos_max(1) == -1


def test_scheduler_refuses_what_cannot_run(qwen3_model, llada_model):
    with block_context(qwen3_model) as ctx:
        sched = Scheduler(ctx, CpuRowSampler(1))
        other = BlockSequence(llada_model, [5, 6], 4, 4, 4, LowConfidenceStatic())
        with pytest.raises(ValueError, match="another model"):
            sched.add(other)
        seq = BlockSequence(qwen3_model, [5, 6], 4, 4, 4, LowConfidenceStatic())
        sched.add(seq)
        with pytest.raises(ValueError, match="already run"):
            sched.add(seq)
        # another block length cannot share a step (one block-causal mask per context)
        with pytest.raises(ValueError, match="block length"):
            sched.add(BlockSequence(qwen3_model, [5, 6], 4, 8, 8, LowConfidenceStatic()))
        sched.remove(seq)
        with pytest.raises(ValueError, match="already run"):
            sched.add(seq)
        fresh = BlockSequence(qwen3_model, [5, 6], 4, 4, 4, LowConfidenceStatic())
        sched.add(fresh)                      # the failed adds left the slots usable
        while not fresh.done:
            sched.step()


def test_scheduler_refuses_more_tokens_per_step_than_a_decode_holds(qwen3_model):
    with Context(qwen3_model, n_ctx=256, n_batch=16, n_ubatch=16, n_seq_max=3, kv_unified=True,
                 causal=False, **EXACT) as ctx:
        sched = Scheduler(ctx, CpuRowSampler(1))
        seqs = [BlockSequence(qwen3_model, p, 4, 4, 4, LowConfidenceStatic()) for p in ([5, 6], [7, 8], [9] * 9)]
        sched.add(seqs[0])
        sched.add(seqs[1])                 # two sequences: 2 x (store pass + block) = 16 tokens
        with pytest.raises(ValueError, match="n_ubatch >= 24"):
            sched.add(seqs[2])
        assert ctx.memory_pos_max(2) == -1      # its prefill (two full prompt blocks) was taken back
        while not all(s.done for s in seqs[:2]):
            sched.step()


@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf])
def test_full_sequence_refuses_bad_guidance_values(llada_model, bad):
    with pytest.raises(ValueError, match="cfg_scale"):
        FullSequence(llada_model, [5, 6], 8, steps=8, block_length=8, cfg_scale=bad)
    with pytest.raises(ValueError, match="alg_temp"):
        FullSequence(llada_model, [5, 6], 8, steps=8, block_length=8, alg_temp=bad)


def test_guided_sequence_needs_room_for_both_passes(llada_model):
    seq = FullSequence(llada_model, [5] * 20, 20, steps=20, block_length=8, cfg_scale=1.0)
    with Context(llada_model, n_ctx=256, n_batch=64, n_ubatch=64, n_seq_max=2, kv_unified=True, causal=False,
                 diffusion_kv=True, **EXACT) as ctx:
        with pytest.raises(ValueError, match="n_ubatch >= 80"):
            Scheduler(ctx, CpuRowSampler(1)).add(seq)


def test_adaptive_policy_past_the_scheduled_steps(llada_model):
    """A parallel mode may take more steps than scheduled: the schedule's count stays defined."""
    with Generator(llada_model, n_ctx=256, **EXACT) as gen:
        res = gen.generate("hi", max_new_tokens=32, block_length=32, steps=4, parallel="threshold",
                           threshold=1.0, stop=[])
        assert len(res.tokens) == 32 and res.stats["steps_per_block"] == [32]
        assert llada_model.mask_token_id not in res.stats["sequence"]


def test_parallel_policy_on_block_diffusion(qwen3_model):
    with Generator(qwen3_model, n_ctx=128, **EXACT) as gen:
        res = gen.generate([5, 6, 7], max_new_tokens=8, block_length=4, steps=2,
                           strategy=ParallelThreshold(1.0), stop=[])
        # threshold 1.0 commits one position per step, past steps=2: the policy is adaptive
        assert set(res.stats["committed_per_step"]) == {1}
        assert max(res.stats["steps_per_block"]) == 4 and len(res.tokens) == 8


def test_config_refuses_none_and_misplaced_values():
    for name in ("temperature", "top_k", "seed", "algorithm", "rng", "add_gumbel_noise"):
        with pytest.raises(TypeError, match=name):
            GenerationConfig(**{name: None})
    for cache in (0, 1.5, [], "exact"):
        with pytest.raises(ValueError, match="cache"):
            GenerationConfig(cache=cache)
    with pytest.raises(ValueError, match="parallel"):
        GenerationConfig(parallel=LowConfidenceStatic())


def test_former_module_names_still_import():
    from llamadiff import _remask, policy
    assert _remask.RemaskPolicy is policy.RemaskPolicy and _remask.make_policy is policy.make_policy
    assert isinstance(_remask.make_policy("sequential"), policy.Sequential)


# -- one batch shape per step (fixed_step_shape): what lets a GPU replay its CUDA graph ------

@pytest.mark.parametrize("block,steps", [(4, 4), (4, 2), (8, 3)])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("strategy", ["low_confidence_static", "low_confidence_dynamic", "sequential"])
def test_fixed_step_shape_gives_the_same_tokens(qwen3_model, block, steps, temperature, strategy):
    """Decoding the finished block again at every step (and a row for every position) rewrites
    its KV with the values it has and draws every masked row with its own RNG counter: the
    tokens are those of the minimal steps, prompt ending inside a block or on its edge."""
    with Generator(qwen3_model, n_ctx=256) as g:
        for prompt in ([5, 6, 7], [5, 6, 7, 8, 9, 10, 11, 12], [3]):
            kw = dict(max_new_tokens=20, block_length=block, steps=steps, temperature=temperature, seed=3,
                      strategy=strategy, stop=[])
            plain = g.generate(prompt, fixed_step_shape=False, **kw)
            fixed = g.generate(prompt, fixed_step_shape=True, **kw)
            assert fixed.tokens == plain.tokens
            # after the first generated block every step decodes 2 blocks (the fixed shape)
            assert fixed.stats["decode_tokens"] > plain.stats["decode_tokens"]
            assert fixed.stats["decode_calls"] == plain.stats["decode_calls"]


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_fixed_step_shape_in_a_batch(qwen3_model, temperature):
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6], [9] * 11, [4]]
    with Generator(qwen3_model, n_ctx=256) as g:
        runs = [[r.tokens for r in g.generate(prompts, max_new_tokens=20, block_length=4, steps=4,
                                              temperature=temperature, seed=5, stop=[], n_parallel=3,
                                              fixed_step_shape=fixed)]
                for fixed in (False, True)]
        single = [g.generate(p, max_new_tokens=20, block_length=4, steps=4, temperature=temperature, seed=5,
                             stop=[], fixed_step_shape=True).tokens for p in prompts]
    assert runs[1] == runs[0] == single


def test_fixed_step_shape_is_off_on_the_cpu_and_checked(qwen3_model, llada_model):
    assert not qwen3_model.on_gpu
    with Generator(qwen3_model, n_ctx=256) as g:
        default = g.generate([5, 6, 7], max_new_tokens=12, stop=[])
        plain = g.generate([5, 6, 7], max_new_tokens=12, stop=[], fixed_step_shape=False)
        assert default.stats["decode_tokens"] == plain.stats["decode_tokens"]
        with pytest.raises(ValueError, match="needs cache=True and shift_logits=False"):
            g.generate([5, 6, 7], max_new_tokens=8, fixed_step_shape=True, cache=False)
        with pytest.raises(ValueError, match="needs cache=True and shift_logits=False"):
            g.generate([5, 6, 7], max_new_tokens=8, fixed_step_shape=True, shift_logits=True)
        with pytest.raises(TypeError, match="fixed_step_shape must be None, True or False"):
            g.generate([5, 6, 7], max_new_tokens=8, fixed_step_shape=1)
    with Generator(llada_model, n_ctx=128) as g:
        with pytest.raises(ValueError, match="fixed_step_shape is an option of block diffusion"):
            g.generate([5, 6, 7], max_new_tokens=8, fixed_step_shape=True)
    with pytest.raises(ValueError, match="needs cache=True and shift_logits=False"):
        BlockSequence(qwen3_model, [5, 6], 4, 4, 4, LowConfidenceStatic(), cache=False, fixed_shape=True)
