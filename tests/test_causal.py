"""Causal decoding of block-diffusion checkpoints: mode="autoregressive" and the lossless
self-speculation of mode="speculative", against llama.cpp's own autoregressive decoding
(llama_decode one token at a time, the greedy token with the mask token left out), on every
causal test body and on the shipped block model; batched against single; the options each
mode refuses."""

import numpy as np
import pytest

from llamadiff import Context, Generator, Model, testing
from llamadiff.paths import default_model

EXACT = dict(type_k="f32", type_v="f32", flash_attn=False)
PROMPT = [104, 101, 108, 108, 111, 32, 119]


def llama_cpp_greedy(path, prompt, n):
    """Greedy autoregressive decoding with llama.cpp: a causal context, one token per decode."""
    model = Model(path)
    mask = model.mask_token_id
    out = []
    with Context(model, n_ctx=256, causal=True, **EXACT) as ctx:
        ctx.decode(list(prompt), logits="last")
        for _ in range(n):
            row = np.array(ctx.logits[-1], dtype=np.float64)
            if mask is not None:
                row[mask] = -np.inf
            tok = int(np.argmax(row))
            out.append(tok)
            ctx.decode([tok], logits="last")
    return out


@pytest.fixture(scope="module")
def bodies(tmp_path_factory):
    d = tmp_path_factory.mktemp("causal")
    return {arch: testing.write_model(d / f"{arch}.gguf", arch, seed=7) for arch in testing.CAUSAL_ARCHS}


@pytest.mark.parametrize("arch", testing.CAUSAL_ARCHS)
def test_speculation_is_lossless_on_every_causal_body(bodies, arch):
    ref = llama_cpp_greedy(bodies[arch], PROMPT, 20)
    with Generator(bodies[arch], n_ctx=256, n_threads=2, **EXACT) as gen:
        ar = gen.generate(PROMPT, max_new_tokens=20, mode="autoregressive", stop=[])
        assert ar.tokens == ref
        for block in (2, 4, 8):
            spec = gen.generate(PROMPT, max_new_tokens=20, mode="speculative", block_length=block, stop=[])
            assert spec.tokens == ref, block
            assert spec.stats["verify_passes"] == len(spec.stats["committed_per_step"]) <= 20
            assert sum(spec.stats["committed_per_step"]) == 20


def test_speculation_with_shifted_rows(bodies):
    """Fast-dLLM v2's rows (p - 1 predicts p) change the drafts, never the output."""
    ref = llama_cpp_greedy(bodies["qwen2"], PROMPT, 16)
    with Generator(bodies["qwen2"], n_ctx=256, n_threads=2, **EXACT) as gen:
        spec = gen.generate(PROMPT, max_new_tokens=16, mode="speculative", block_length=4, shift_logits=True,
                            stop=[])
    assert spec.tokens == ref


def test_speculation_is_lossless_on_the_shipped_block_model():
    path = default_model("block")
    prompts = ["sort 93715=", "rev python=", "47+38=", "copy abcabc="]
    accepted = 0
    with Generator(path, n_ctx=256, n_threads=2, **EXACT) as gen:
        for text in prompts:
            ids = gen.prompt_tokens(text)
            ref = llama_cpp_greedy(path, ids, 12)
            spec = gen.generate(ids, max_new_tokens=12, mode="speculative", stop=[])
            assert spec.tokens == ref, text
            assert spec.stats["acceptance_length"] >= 1.0
            accepted += spec.stats["accepted"]
    assert accepted > 0          # some drafts were kept: the accepting path ran


def test_batched_speculation_equals_single(bodies):
    prompts = [PROMPT, [50, 51, 52], list(range(60, 75))]
    with Generator(bodies["qwen3"], n_ctx=256, n_threads=2, **EXACT) as gen:
        for mode, extra in (("speculative", dict(block_length=4)), ("autoregressive", {})):
            alone = [gen.generate(p, max_new_tokens=12, mode=mode, stop=[], **extra).tokens for p in prompts]
            together = [r.tokens for r in gen.generate(prompts, max_new_tokens=12, mode=mode, stop=[],
                                                       n_parallel=3, **extra)]
            assert together == alone
            assert alone[0] == llama_cpp_greedy(bodies["qwen3"], PROMPT, 12)


def test_streaming_yields_each_block(bodies):
    with Generator(bodies["qwen3"], n_ctx=256, n_threads=2, **EXACT) as gen:
        chunks = list(gen.stream(PROMPT, max_new_tokens=10, mode="speculative", block_length=4, stop=[]))
        whole = gen.generate(PROMPT, max_new_tokens=10, mode="speculative", block_length=4, stop=[])
    assert [t for c in chunks for t in c.tokens] == whole.tokens
    assert len(chunks) >= 3          # positions 7..16: blocks [4, 8), [8, 12), [12, 16), [16, 20)


def test_autoregressive_streams_token_by_token_and_stops_at_once(bodies):
    """mode="autoregressive" yields each token as it comes and sees a stop at the token."""
    with Generator(bodies["qwen3"], n_ctx=256, n_threads=2, **EXACT) as gen:
        whole = gen.generate(PROMPT, max_new_tokens=12, mode="autoregressive", stop=[])
        chunks = list(gen.stream(PROMPT, max_new_tokens=12, mode="autoregressive", stop=[]))
        assert [len(c.tokens) for c in chunks] == [1] * 12
        stopped = gen.generate(PROMPT, max_new_tokens=12, mode="autoregressive", stop=[whole.tokens[3]])
    assert stopped.tokens == whole.tokens[:whole.tokens.index(whole.tokens[3])]      # cut before the stop
    assert stopped.stats["decode_calls"] <= whole.tokens.index(whole.tokens[3]) + 2


def test_speculation_backend_route_falls_back_for_its_drafts():
    """sampler="backend" computes no host rows, which the draft pass reads: the CPU route
    samples a speculative call instead (drafts are kept, as with the CPU route)."""
    with Generator(default_model("block"), n_ctx=256, n_threads=2, sampler="backend") as gen:
        backend = gen.generate("sort 93715=", max_new_tokens=24, mode="speculative", stop=[])
    with Generator(default_model("block"), n_ctx=256, n_threads=2, sampler="cpu") as gen:
        cpu = gen.generate("sort 93715=", max_new_tokens=24, mode="speculative", stop=[])
    assert backend.tokens == cpu.tokens
    assert backend.stats["accepted"] == cpu.stats["accepted"] > 0


def test_autoregressive_sampling_is_seeded(bodies):
    with Generator(bodies["llama"], n_ctx=256, n_threads=2) as gen:
        a = gen.generate(PROMPT, max_new_tokens=12, mode="autoregressive", temperature=1.0, seed=3, stop=[])
        b = gen.generate(PROMPT, max_new_tokens=12, mode="autoregressive", temperature=1.0, seed=3, stop=[])
        c = gen.generate(PROMPT, max_new_tokens=12, mode="autoregressive", temperature=1.0, seed=4, stop=[])
    assert a.tokens == b.tokens != c.tokens


@pytest.mark.parametrize("opts,match", [
    (dict(mode="speculative", temperature=0.7), "lossless against greedy decoding"),
    (dict(mode="speculative", top_k=5), "lossless against greedy decoding"),
    (dict(mode="speculative", block_length=1), "block_length must be >= 2"),
    (dict(mode="speculative", seed=3), "seed: speculative decoding is greedy"),
    (dict(mode="autoregressive", strategy="sequential"), "strategy is a setting of diffusion decoding"),
    (dict(mode="speculative", steps=2), "steps is a setting of diffusion decoding"),
    (dict(mode="speculative", threshold=0.5), "threshold is a setting of diffusion decoding"),
    (dict(mode="autoregressive", cache=False), "decodes with the KV cache"),
    (dict(mode="autoregressive", block_length=4), "block_length is a setting of diffusion decoding"),
    (dict(mode="autoregressive", shift_logits=True), "shift_logits is a setting of diffusion decoding"),
    (dict(mode="beam"), "unknown mode 'beam'"),
])
def test_causal_modes_refuse_what_they_ignore(bodies, opts, match):
    with Generator(bodies["qwen3"], n_ctx=256, n_threads=2) as gen:
        with pytest.raises(ValueError, match=match):
            gen.generate(PROMPT, max_new_tokens=8, **opts)


def test_speculation_on_a_body_that_cannot_decode_causally(tmp_path):
    full = testing.write_model(tmp_path / "llada.gguf", "llada", seed=1)
    with Generator(full, n_ctx=128, n_threads=2) as gen:
        with pytest.raises(ValueError, match="mode is an option of block diffusion.*decodes causally"):
            gen.generate(PROMPT, max_new_tokens=8, mode="speculative")


def test_drafts_of_a_batch_share_one_pass(bodies):
    """A step of several speculative sequences is two decodes: one for all of their drafts,
    one verify pass for all of them; the context is causal again after it, and a causal context
    is refused (its drafts could not attend block-causally)."""
    from llamadiff._causal import CausalSequence
    from llamadiff._sampling import CpuRowSampler
    from llamadiff.engine import Scheduler

    model = Model(bodies["qwen3"])
    prompts = [PROMPT, [50, 51, 52], list(range(60, 71))]
    with Context(model, n_ctx=384, n_batch=64, n_ubatch=64, n_seq_max=3, kv_unified=True, causal=False,
                 **EXACT) as ctx:
        sched = Scheduler(ctx, CpuRowSampler(1))
        seqs = [CausalSequence(model, p, 12, 4, speculative=True) for p in prompts]
        for seq in seqs:
            sched.add(seq)
        before = sched.n_decode
        sched.step()
        assert sched.n_decode - before == 2
        assert ctx.block_causal == 1
        while not all(s.done for s in seqs):
            sched.step()
        for seq, prompt in zip(seqs, prompts):
            assert seq.tokens[len(prompt):] == llama_cpp_greedy(bodies["qwen3"], prompt, 12)
    with Context(model, n_ctx=128, causal=True, **EXACT) as ctx:
        with pytest.raises(ValueError, match="causal=False"):
            Scheduler(ctx, CpuRowSampler(1)).add(CausalSequence(model, PROMPT, 8, 4, speculative=True))
