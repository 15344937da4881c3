"""Block-diffusion generation (SDAR family) through Generator."""

import threading

import numpy as np
import pytest

from llamadiff import (Context, GenerationConfig, Generator, UnsupportedModelError,
                       testing)
from llamadiff._sampling import sample_logits
from llamadiff import Model
from llamadiff.testing import read_model

from numpy_reference import block_causal_allowed, block_diffusion_generate, forward

EXACT = dict(type_k="f32", type_v="f32", flash_attn=False)
MASK = testing.byte_vocab().mask_id
# (threshold, eb_gamma) chosen so that the tiny random model (entropies ~5 nats, p ~0.01-0.2)
# exercises the multi-token branches of the dynamic and entropy-bounded strategies
STRATEGY_ARGS = {
    "sequential": {},
    "low_confidence_static": {},
    "low_confidence_dynamic": {"threshold": 0.05},
    "entropy_bounded": {"eb_gamma": 11.0},
}


@pytest.fixture(scope="module")
def gen(qwen3_model):
    with Generator(qwen3_model, n_ctx=512, n_threads=2, **EXACT) as g:
        yield g


@pytest.fixture(scope="module")
def qwen3_data(qwen3_path):
    return read_model(qwen3_path)


PROMPT = [104, 101, 108, 108, 111, 32, 119, 111]          # 8 tokens


@pytest.mark.parametrize("strategy", sorted(STRATEGY_ARGS))
@pytest.mark.parametrize("block", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("n_prompt", [8, 5])
def test_matches_numpy_reference(gen, qwen3_data, strategy, block, n_prompt):
    """Same greedy tokens as an independent NumPy block-diffusion loop with no cache."""
    prompt = PROMPT[:n_prompt]
    steps = max(1, block // 2) if block > 2 else block
    opts = dict(max_new_tokens=12, block_length=block, steps=steps, strategy=strategy,
                stop=[], **STRATEGY_ARGS[strategy])
    ref = block_diffusion_generate(qwen3_data, prompt, 12, block, steps, strategy, MASK,
                                   **STRATEGY_ARGS[strategy])
    cached = gen.generate(prompt, **opts)
    uncached = gen.generate(prompt, cache=False, **opts)
    assert cached.tokens == ref
    assert uncached.tokens == ref
    assert MASK not in cached.tokens


def test_cache_decodes_only_the_active_block(gen):
    out = gen.generate(PROMPT, max_new_tokens=16, block_length=4, steps=4, strategy="sequential", stop=[])
    s = out.stats
    # 8-token prompt: 2 full blocks prefilled once; 4 blocks x 4 steps; each block's store
    # pass rides on the next block's first step (4 extra tokens), the last block needs none
    assert s["decode_calls"] == 1 + 16
    assert s["decode_tokens"] == 8 + 16 * 4 + 3 * 4
    assert s["steps_per_block"] == [4, 4, 4, 4]
    assert s["committed_per_step"] == [1] * 16
    nocache = gen.generate(PROMPT, max_new_tokens=16, block_length=4, steps=4,
                           strategy="sequential", stop=[], cache=False)
    assert nocache.tokens == out.tokens
    assert nocache.stats["decode_tokens"] > 2 * s["decode_tokens"]


def test_block_causal_prefill_in_one_batch(qwen3_model, qwen3_data):
    """The patched KV mask: one decode of many blocks equals the NumPy block-causal pass."""
    tokens = list(range(30, 60))
    ref = forward(qwen3_data, tokens, allowed=block_causal_allowed(len(tokens), 4))
    with Context(qwen3_model, n_ctx=64, causal=False, **EXACT) as ctx:
        ctx.set_block_causal(4)
        ctx.decode(tokens)
        one_batch = ctx.logits.copy()
        err = np.max(np.abs(one_batch - ref)) / np.max(np.abs(ref))
        assert err <= 1e-5
        # and equals block-by-block decoding through the cache (the stock-API way)
        ctx.memory_clear()
        ctx.set_block_causal(0)
        rows = []
        for s in range(0, len(tokens), 4):
            chunk = tokens[s:s + 4]
            ctx.decode(chunk, positions=range(s, s + len(chunk)))
            rows.append(ctx.logits.copy())
        np.testing.assert_allclose(np.concatenate(rows), one_batch, rtol=1e-5, atol=1e-5)
        ctx.memory_clear()
        ctx.decode(tokens)                          # off again: plain bidirectional
        assert not np.allclose(ctx.logits, one_batch, atol=1e-4)


def test_prompt_kept_and_blocks_finish(gen):
    out = gen.generate(PROMPT[:6], max_new_tokens=10, block_length=4, steps=2,
                       strategy="low_confidence_static", stop=[])
    assert len(out.tokens) == 10 and MASK not in out.tokens
    assert out.prompt_tokens == PROMPT[:6]
    assert out.stop_reason == "length"


def test_seeds(gen):
    opts = dict(max_new_tokens=16, temperature=1.0, stop=[])
    a = gen.generate(PROMPT, seed=1, **opts).tokens
    b = gen.generate(PROMPT, seed=1, **opts).tokens
    c = gen.generate(PROMPT, seed=2, **opts).tokens
    assert a == b
    assert a != c
    greedy = gen.generate(PROMPT, max_new_tokens=16, stop=[]).tokens
    assert greedy == gen.generate(PROMPT, max_new_tokens=16, stop=[], seed=99).tokens


def test_top_k_one_is_greedy(gen):
    greedy = gen.generate(PROMPT, max_new_tokens=12, strategy="sequential", stop=[]).tokens
    assert gen.generate(PROMPT, max_new_tokens=12, strategy="sequential", stop=[],
                        temperature=0.8, top_k=1, seed=5).tokens == greedy
    assert gen.generate(PROMPT, max_new_tokens=12, strategy="sequential", stop=[],
                        temperature=0.8, top_p=1e-6, seed=5).tokens == greedy


def _first_generated(gen, n=16):
    return gen.generate(PROMPT, max_new_tokens=n, strategy="sequential", stop=[]).tokens


def test_stop_token_ids_cut_generation(gen):
    free = _first_generated(gen)
    stop_id = free[5]
    out = gen.generate(PROMPT, max_new_tokens=16, strategy="sequential", stop=[stop_id])
    assert out.stop_reason == "stop"
    assert out.tokens == free[:free.index(stop_id)]
    # generation ends after the block holding the stop: fewer blocks decoded
    assert len(out.stats["steps_per_block"]) <= (free.index(stop_id) // 4) + 1


def test_stop_strings(gen, qwen3_model):
    free = _first_generated(gen)
    text_piece = qwen3_model.token_to_piece(free[6])
    out = gen.generate(PROMPT, max_new_tokens=16, strategy="sequential", stop=[text_piece])
    assert out.stop_reason == "stop"
    first = next(i for i, t in enumerate(free) if text_piece in qwen3_model.token_to_piece(t))
    assert out.tokens == free[:first]


def test_default_stop_is_end_of_generation(gen, qwen3_model):
    eos = qwen3_model.eos_token_id
    out = gen.generate(PROMPT, max_new_tokens=16, strategy="sequential")
    assert eos not in out.tokens
    if out.stop_reason == "stop":
        assert len(out.tokens) < 16


def test_context_is_reused(qwen3_model):
    with Generator(qwen3_model, n_ctx=2048) as g:
        first = g.generate(PROMPT, max_new_tokens=8, stop=[])
        second = g.generate(PROMPT, max_new_tokens=8, stop=[])
        assert first.stats["context_created"] and first.stats["context_ms"] > 0
        assert not second.stats["context_created"] and second.stats["context_ms"] == 0
        assert first.tokens == second.tokens
        # a block needing a bigger batch re-makes it once
        third = g.generate(PROMPT, max_new_tokens=8, block_length=512, steps=4, stop=[])
        assert third.stats["context_created"]


def test_stream_yields_one_chunk_per_block(gen, qwen3_model):
    chunks = list(gen.stream(PROMPT, max_new_tokens=12, block_length=4, stop=[]))
    assert [c.block_index for c in chunks] == [2, 3, 4]
    assert chunks[-1].stop_reason == "length" and all(c.stop_reason is None for c in chunks[:-1])
    tokens = [t for c in chunks for t in c.tokens]
    full = gen.generate(PROMPT, max_new_tokens=12, block_length=4, stop=[])
    assert tokens == full.tokens
    assert "".join(c.text for c in chunks) == full.text


def test_chat_and_text_prompts(gen, qwen3_model):
    out = gen.generate("hello", chat=True, max_new_tokens=4, stop=[])
    assert out.prompt_tokens[0] == qwen3_model.tokenize("<|im_start|>", add_special=False,
                                                        parse_special=True)[0]
    msgs = gen.generate([{"role": "user", "content": "hello"}], max_new_tokens=4, stop=[])
    assert msgs.prompt_tokens == out.prompt_tokens
    assert gen.generate("hello", max_new_tokens=4, stop=[]).prompt_tokens == \
        qwen3_model.tokenize("hello")


def test_config_object(gen):
    cfg = GenerationConfig(max_new_tokens=8, strategy="sequential", stop=[])
    assert gen.generate(PROMPT, config=cfg).tokens == \
        gen.generate(PROMPT, max_new_tokens=8, strategy="sequential", stop=[]).tokens
    assert gen.generate(PROMPT, config=cfg, max_new_tokens=4).stats["generated_tokens"] == 4


def test_callback_can_cancel(gen):
    seen = []

    def cb(info):
        seen.append(info)
        return info.block_index < 3

    out = gen.generate(PROMPT, max_new_tokens=16, block_length=4, callback=cb, stop=[])
    assert out.stop_reason == "cancelled"
    assert len(out.tokens) == 4                    # block 2 finished, block 3 cancelled
    assert seen[0].block_index == 2 and seen[0].positions and seen[0].tokens
    again = gen.generate(PROMPT, max_new_tokens=8, block_length=4, stop=[])
    assert again.stop_reason == "length" and len(again.tokens) == 8


def test_keyboard_interrupt_gives_partial_result(gen):
    def cb(info):
        if info.block_index == 3:
            raise KeyboardInterrupt

    out = gen.generate(PROMPT, max_new_tokens=16, block_length=4, callback=cb, stop=[])
    assert out.stop_reason == "interrupted"
    assert len(out.tokens) == 4
    assert len(gen.generate(PROMPT, max_new_tokens=8, stop=[]).tokens) == 8


@pytest.mark.parametrize("opts,match", [
    (dict(block_length=0), "block_length"),
    (dict(steps=0), "steps"),
    (dict(block_length=4, steps=5), "cannot exceed"),
    (dict(steps=8), "cannot exceed"),              # default block length is 4
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(eb_gamma=0.0), "eb_gamma"),
    (dict(strategy="fastest"), "unknown strategy"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=10_000), "n_ctx"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_k=-1), "top_k"),
])
def test_bad_options(gen, opts, match):
    with pytest.raises(ValueError, match=match):
        gen.generate(PROMPT, **opts)


def test_bad_prompts_and_types(gen):
    with pytest.raises(TypeError):
        gen.generate(PROMPT, max_new_tokens="many")
    with pytest.raises(TypeError):
        gen.generate(PROMPT, not_an_option=1)
    with pytest.raises(ValueError, match="out of range"):
        gen.generate([1, 10**6])
    with pytest.raises(TypeError):
        gen.generate([1.5, 2])
    with pytest.raises(ValueError, match="n_ctx"):
        gen.generate(list(range(50)) * 10, max_new_tokens=64)


def test_model_without_mask_token_is_refused(tmp_path):
    tokens = [("<|unused|>" if t == "<|MASK|>" else t) for t in testing.byte_vocab().tokens]
    path = testing.write_model(tmp_path / "plain.gguf", "qwen3", metadata={"tokenizer.ggml.tokens": tokens})
    with Model(path) as model:
        assert model.family is None
        with pytest.raises(UnsupportedModelError, match="not a diffusion model"):
            Generator(model, n_ctx=128)          # refused up front, not at generate()


def test_progress_bar(gen, capsys):
    out = gen.generate(PROMPT, max_new_tokens=8, progress=True, stop=[])
    assert len(out.tokens) == 8
    assert "8/8" in capsys.readouterr().err


def test_telemetry(gen):
    s = gen.generate(PROMPT, max_new_tokens=8, stop=[]).stats
    for key in ("prefill_ms", "decode_calls", "decode_tokens", "decode_ms", "sampling_ms",
                "steps_per_block", "committed_per_step", "tokens_per_second", "wall_ms"):
        assert key in s
    assert s["decode_ms"] > 0 and s["tokens_per_second"] > 0
    assert sum(s["committed_per_step"]) >= 8


def test_generators_sharing_a_model_run_in_parallel(qwen3_model):
    expected = {}
    prompts = {"a": PROMPT, "b": PROMPT[::-1]}
    with Generator(qwen3_model, n_ctx=256, n_threads=1) as g:
        for k, p in prompts.items():
            expected[k] = g.generate(p, max_new_tokens=24, stop=[]).tokens
    got, errors = {}, []

    def work(key):
        try:
            with Generator(qwen3_model, n_ctx=256, n_threads=1) as g:
                for _ in range(3):
                    got[key] = g.generate(prompts[key], max_new_tokens=24, stop=[]).tokens
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == expected


def test_one_generator_serialises_threads(gen):
    expected = gen.generate(PROMPT, max_new_tokens=12, stop=[]).tokens
    results = []

    def work():
        results.append(gen.generate(PROMPT, max_new_tokens=12, stop=[]).tokens)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expected] * 4


# --------------------------------------------------------------------------- the row sampler


def _np_stats(row, temperature=1.0):
    z = np.asarray(row, dtype=np.float64) / (temperature or 1.0)
    p = np.exp(z - z.max())
    p /= p.sum()
    return p, float(-(p * np.log(p)).sum())


def test_sampler_greedy_stats_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 151936)).astype(np.float32) * 3
    tokens, probs, ents = sample_logits(logits, n_threads=2)
    for r in range(16):
        p, h = _np_stats(logits[r])
        assert tokens[r] == int(np.argmax(logits[r]))
        assert abs(probs[r] - p[tokens[r]]) <= 1e-5 * p[tokens[r]]
        assert abs(ents[r] - h) <= 1e-5 * h


def test_sampler_skips_the_mask_token():
    logits = np.zeros((1, 10), dtype=np.float32)
    logits[0, 3] = 50.0
    tokens, probs, _ = sample_logits(logits, skip_token=3)
    assert tokens[0] != 3 and abs(probs[0] - 1 / 9) < 1e-6


def test_sampler_distribution_chi_square():
    """Draws at temperature 0.7 with top-k 5 follow the filtered softmax."""
    base = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0], dtype=np.float32)
    n = 20000
    logits = np.tile(base, (n, 1))
    tokens, probs, _ = sample_logits(logits, temperature=0.7, top_k=5, seed=11,
                                     counters=np.arange(n), n_threads=2)
    p = np.exp(base[:5] / 0.7)
    p /= p.sum()
    counts = np.bincount(tokens, minlength=8)
    assert counts[5:].sum() == 0
    chi2 = float(((counts[:5] - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 20.5            # chi-square, 4 degrees of freedom, p = 0.0004
    np.testing.assert_allclose(probs, p[tokens], rtol=1e-5)


def test_sampler_top_p():
    base = np.array([[3.0, 2.0, 1.0, 0.0, -1.0]], dtype=np.float32)
    p = np.exp(base[0] - 3.0)
    p /= p.sum()
    # top_p just above p0 keeps the two best tokens
    tokens = {int(sample_logits(base, temperature=1.0, top_p=float(p[0]) + 1e-3, seed=s)[0][0])
              for s in range(200)}
    assert tokens == {0, 1}


@pytest.mark.parametrize("opts,kind,match", [
    (dict(stop=0.5), TypeError, "stop must be a list of strings / token ids, not float"),
    (dict(stop=np.float64(0.5)), TypeError, "stop must be a list.*not float64"),
    (dict(stop=object()), TypeError, "stop must be a list.*not object"),
    (dict(stop={}), TypeError, "stop must be a list.*not dict"),
    (dict(stop="###"), TypeError, r"stop=\['###'\] for one"),
    (dict(progress="abc"), TypeError, "progress must be True or False"),
    (dict(progress=[None]), TypeError, "progress must be True or False"),
    (dict(profile=2 ** 63), TypeError, "profile must be True or False"),
    (dict(profile=1), TypeError, "profile must be True or False"),
    (dict(add_gumbel_noise="yes"), TypeError, "add_gumbel_noise must be True or False"),
])
def test_loose_settings_are_refused_by_name(gen, opts, kind, match):
    with pytest.raises(kind, match=match):
        gen.generate(PROMPT, max_new_tokens=4, **opts)


@pytest.mark.parametrize("opts", [dict(cfg_scale=1.0), dict(rng="llama.cpp"), dict(algorithm="entropy"),
                                  dict(eps=1e-3), dict(alg_temp=0.5), dict(add_gumbel_noise=True),
                                  dict(parallel="threshold"), dict(factor=2.0)])
def test_full_diffusion_options_on_a_block_model_are_refused(gen, opts):
    with pytest.raises(ValueError, match=rf"{next(iter(opts))} is an option of full diffusion.*this model "
                                         r"\(qwen3\) runs block diffusion"):
        gen.generate(PROMPT, max_new_tokens=4, **opts)


@pytest.mark.parametrize("opts", [dict(strategy="sequential"), dict(eb_gamma=1.0), dict(fixed_step_shape=True)])
def test_block_diffusion_options_on_a_full_model_are_refused(llada_model, opts):
    with Generator(llada_model, n_ctx=128, n_threads=1) as g:
        with pytest.raises(ValueError, match=rf"{next(iter(opts))} is an option of block diffusion.*this model "
                                             r"\(llada\) runs full diffusion"):
            g.generate("hi", max_new_tokens=4, **opts)
        # a RemaskPolicy object drives either family; an option at its default is no choice
        from llamadiff import LowConfidenceStatic
        assert len(g.generate("hi", max_new_tokens=4, stop=[], strategy=LowConfidenceStatic(),
                              eb_gamma=0.35).tokens) == 4
