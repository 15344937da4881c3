"""sampler="device": the rows are sampled where llama.cpp computed the logits, which are never
copied to its host buffer (vendor/patches/0008). On the CPU back end that is the CPU
sampler reading the back end's own buffer: the tokens must be those of sampler="cpu" (the
reference route, on llama.cpp's host copy) for every family, strategy, algorithm, sampling
setting, guidance, batch and the server's Batcher. tests/test_golden.py runs every frozen case
through both routes; this file checks the plumbing and the cases the golden set does not
batch."""

import numpy as np
import pytest

from llamadiff import Context, Generator, default_model
from llamadiff._sampling import CpuRowSampler
from llamadiff.samplers import make_row_sampler
from llamadiff.serving import Batcher

EXACT = dict(type_k="f32", type_v="f32", flash_attn=False, n_threads=1)


def _tokens(results):
    return [r.tokens for r in results] if isinstance(results, list) else results.tokens


def test_the_context_leaves_the_logits_in_place_and_still_reads_them(qwen3_model):
    tokens = list(range(5, 21))
    with Context(qwen3_model, n_ctx=64, n_batch=16, causal=False, **EXACT) as ctx:
        ctx.decode(tokens, logits=[i % 3 == 0 for i in range(16)])
        copied = ctx.logits.copy()
        assert not ctx.logits_stayed
        ctx.memory_clear()
        ctx.keep_logits_on_device = True
        ctx.decode(tokens, logits=[i % 3 == 0 for i in range(16)])
        assert ctx.logits_stayed and ctx.keep_logits_on_device
        np.testing.assert_array_equal(ctx.logits, copied)
        ctx.memory_clear()
        ctx.decode(tokens, logits=False)          # no rows: nothing stays
        assert not ctx.logits_stayed and ctx.logits.shape == (0, qwen3_model.n_vocab)


def test_a_batch_split_across_ubatches_is_copied_as_usual(qwen3_model):
    # a causal decode of 16 tokens in ubatches of 4: the rows of several ubatches cannot stay
    tokens = list(range(5, 21))
    with Context(qwen3_model, n_ctx=64, n_batch=16, n_ubatch=4, **EXACT) as ctx:
        ctx.decode(tokens, logits=True)
        copied = ctx.logits.copy()
        ctx.memory_clear()
        ctx.keep_logits_on_device = True
        ctx.decode(tokens, logits=True)
        assert not ctx.logits_stayed
        np.testing.assert_array_equal(ctx.logits, copied)
        ctx.memory_clear()
        ctx.decode(tokens[:4], logits=True)        # one ubatch holds every row: they stay
        assert ctx.logits_stayed
        np.testing.assert_array_equal(ctx.logits, copied[:4])


def test_routes_and_names(qwen3_model):
    device = make_row_sampler("device", model=qwen3_model)
    assert isinstance(device, CpuRowSampler) and device.in_place and device.name == "device"
    cpu = make_row_sampler("cpu", model=qwen3_model)
    assert not cpu.in_place and cpu.name == "cpu"
    with Generator(qwen3_model, n_ctx=128, sampler="device", **EXACT) as g:
        out = g.generate([5, 6, 7], max_new_tokens=8, stop=[])
        assert out.stats["sampler"] == "device"
        # every step read the rows in place: no logits reached llama.cpp's host buffer
        assert out.stats["steps_in_place"] == len(out.stats["committed_per_step"]) > 0
        assert out.stats["logits_to_host_bytes"] == 0
    with Generator(qwen3_model, n_ctx=128, sampler="cpu", **EXACT) as g:
        out = g.generate([5, 6, 7], max_new_tokens=8, stop=[])
        assert out.stats["steps_in_place"] == 0 and out.stats["logits_to_host_bytes"] > 0


BLOCK_OPTIONS = [
    dict(strategy="sequential"),
    dict(strategy="low_confidence_static", steps=2),
    dict(strategy="low_confidence_dynamic", threshold=0.3),
    dict(strategy="entropy_bounded", eb_gamma=1.0),
    dict(temperature=0.8, seed=3),
    dict(temperature=1.0, top_k=20, seed=4),
    dict(temperature=0.7, top_p=0.9, seed=5),
    dict(temperature=0.9, top_k=30, top_p=0.8, seed=6),
    dict(fixed_step_shape=True),
    dict(cache=False),
]


@pytest.mark.parametrize("options", BLOCK_OPTIONS)
def test_block_diffusion_alone_and_batched(qwen3_model, options):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [104, 101, 108, 108, 111]]
    runs = {}
    for sampler in ("cpu", "device"):
        with Generator(qwen3_model, n_ctx=256, sampler=sampler, **EXACT) as g:
            alone = [g.generate(p, max_new_tokens=12, block_length=4, stop=[], **options) for p in prompts]
            batch = g.generate(prompts, max_new_tokens=12, block_length=4, stop=[], n_parallel=3, **options)
            runs[sampler] = (_tokens(alone), _tokens(batch))
            if sampler == "device" and options.get("cache", True):
                assert batch[0].stats["batch"]["logits_to_host_bytes"] == 0
    assert runs["device"] == runs["cpu"]


FULL_OPTIONS = [
    dict(algorithm="origin"), dict(algorithm="entropy"), dict(algorithm="margin"),
    dict(algorithm="random", seed=2), dict(algorithm="confidence"),
    dict(cache="prefix", parallel="threshold"), dict(cache="dual", parallel="factor"),
    dict(cfg_scale=1.5),
    dict(cfg_scale=1.0, temperature=1.0, add_gumbel_noise=True, seed=8),
    dict(temperature=1.0, add_gumbel_noise=True, alg_temp=0.5, seed=9),
    dict(temperature=0.8, top_k=20, top_p=0.9, seed=10),
    dict(eps=1e-3, temperature=0.9, seed=7),
]


@pytest.mark.parametrize("options", FULL_OPTIONS)
def test_full_diffusion_alone_and_batched(llada_model, options):
    prompts = ["one", "two three", "four five six"]
    schedule = {} if "eps" in options else dict(block_length=8)
    runs = {}
    for sampler in ("cpu", "device"):
        with Generator(llada_model, n_ctx=256, sampler=sampler, **EXACT) as g:
            alone = [g.generate(p, max_new_tokens=16, steps=16, stop=[], **schedule, **options) for p in prompts]
            batch = g.generate(prompts, max_new_tokens=16, steps=16, stop=[], **schedule, **options)
            runs[sampler] = (_tokens(alone), _tokens(batch))
            if sampler == "device":
                assert batch[0].stats["batch"]["logits_to_host_bytes"] == 0
                assert batch[0].stats["batch"]["steps_in_place"] == batch[0].stats["batch"]["steps"]
    assert runs["device"] == runs["cpu"]


def test_the_llama_cpp_compatible_loop_reads_host_rows(llada_model):
    # upstream's loop edits the rows in place: those steps keep llama.cpp's host copy
    outs = {}
    for sampler in ("cpu", "device"):
        with Generator(llada_model, n_ctx=256, sampler=sampler, **EXACT) as g:
            out = g.generate("hello world", max_new_tokens=16, steps=16, block_length=8, rng="llama.cpp",
                             temperature=0.7, seed=3, stop=[])
            assert out.stats["steps_in_place"] == 0
            outs[sampler] = out.tokens
    assert outs["device"] == outs["cpu"]


def test_the_server_batcher_samples_in_place():
    prompts = ["47+38=", "sort 93715=", "rev python=", "copy k9x2="]
    answers = {}
    for sampler in ("cpu", "device"):
        with Batcher(default_model("block"), n_parallel=4, n_ctx=256, sampler=sampler, **EXACT) as batcher:
            requests = [batcher.submit(p, max_new_tokens=12) for p in prompts]
            answers[sampler] = [r.result(120).tokens for r in requests]
            # the last step's rows were read where the CPU back end computed them (no host copy)
            assert batcher.generator.contexts.shared.logits_stayed == (sampler == "device")
    assert answers["device"] == answers["cpu"]


def test_rows_of_one_ubatch_followed_by_others_are_copied(qwen3_model):
    """A batch split into ubatches reuses the compute buffer: even when the first ubatch holds
    every output row, the rows must be copied (a later ubatch would overwrite them)."""
    tokens = [5 + (i * 7) % 100 for i in range(32)]
    for flags in ([True] + [False] * 31, [True] * 16 + [False] * 16):
        got = []
        for on in (False, True):
            with Context(qwen3_model, n_ctx=128, n_batch=64, n_ubatch=16, **EXACT) as ctx:
                ctx.keep_logits_on_device = on
                ctx.decode(tokens, logits=flags)
                assert not ctx.logits_stayed
                got.append(ctx.logits.copy())
        np.testing.assert_array_equal(got[1], got[0])


def test_a_scheduler_refuses_several_sequences_on_a_split_kv_buffer(llada_model):
    """Sequences of different lengths on a context with a KV buffer per sequence: llama.cpp
    would split each step into ubatches of equal shares (a position would then miss part of its
    own step, and a step's rows would span ubatches). The scheduler refuses the second one."""
    from llamadiff._full import FullSequence
    from llamadiff.engine import Scheduler
    with Context(llada_model, n_ctx=256, n_batch=128, n_ubatch=128, n_seq_max=2, kv_unified=False,
                 causal=False, diffusion_kv=True, **EXACT) as ctx:
        sched = Scheduler(ctx, CpuRowSampler(1, in_place=True))
        sched.add(FullSequence(llada_model, [5] * 40, 16, steps=16, block_length=8))
        with pytest.raises(ValueError, match="kv_unified=True"):
            sched.add(FullSequence(llada_model, [5] * 4, 16, steps=16, block_length=8))
        sched.step()
        assert not ctx.keep_logits_on_device          # the scheduler leaves the context as it was
        ctx.keep_logits_on_device = True              # ... also when its owner had set it
        sched.step()
        assert ctx.keep_logits_on_device
