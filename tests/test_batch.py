"""Batched generation: many prompts in one context, continuous batching, identical tokens."""

import pytest

from llamadiff import Generator

PROMPTS = ["hello", "the quick brown fox jumps", "a", "1 2 3 4 5 6 7 8 9 10 11 12", "xyz", "block diffusion"]


@pytest.fixture(scope="module")
def gen(qwen3_model):
    g = Generator(qwen3_model, n_ctx=256, n_threads=2, type_k="f32", type_v="f32", flash_attn=False)
    yield g
    g.close()


@pytest.mark.parametrize("n_parallel", [1, 2, 4, 6])
@pytest.mark.parametrize("opts", [
    dict(strategy="low_confidence_static"),
    dict(strategy="low_confidence_dynamic", threshold=0.3),
    dict(strategy="entropy_bounded", eb_gamma=1.0),
    dict(temperature=0.8, top_k=20, seed=3),
])
def test_same_tokens_as_alone(gen, n_parallel, opts):
    alone = [gen.generate(p, max_new_tokens=20, block_length=4, stop=[], **opts) for p in PROMPTS]
    together = gen.generate(PROMPTS, max_new_tokens=20, block_length=4, stop=[], n_parallel=n_parallel, **opts)
    assert isinstance(together, list) and len(together) == len(PROMPTS)
    for a, b in zip(alone, together):
        assert b.tokens == a.tokens and b.text == a.text and b.stop_reason == a.stop_reason
        assert b.prompt_tokens == a.prompt_tokens
    batch = together[0].stats["batch"]
    assert batch["n_parallel"] == n_parallel and batch["generated_tokens"] == sum(len(a.tokens) for a in alone)
    # one decode per step carries every active sequence
    assert batch["steps"] <= sum(a.stats["decode_calls"] for a in alone)
    if n_parallel > 1:
        assert batch["steps"] < sum(a.stats["decode_calls"] for a in alone)


def test_continuous_batching_reuses_slots_and_frees_kv(gen):
    # different lengths and stops: sequences finish at different steps and hand their slot on
    alone = [gen.generate(p, max_new_tokens=4 + 4 * i, block_length=4, stop=[]) for i, p in enumerate(PROMPTS)]
    stop_tok = alone[3].tokens[5]
    with_stop = gen.generate(PROMPTS[3], max_new_tokens=16, block_length=4, stop=[stop_tok])
    res = gen.generate(PROMPTS, max_new_tokens=24, block_length=4, stop=[], n_parallel=2)
    assert {r.stats["slot"] for r in res} == {0, 1}
    for r, a in zip(gen.generate(PROMPTS[:3], max_new_tokens=12, block_length=4, stop=[], n_parallel=2),
                    [gen.generate(p, max_new_tokens=12, block_length=4, stop=[]) for p in PROMPTS[:3]]):
        assert r.tokens == a.tokens
    mixed = gen.generate([PROMPTS[3], PROMPTS[0]], max_new_tokens=16, block_length=4, stop=[stop_tok], n_parallel=2)
    assert mixed[0].tokens == with_stop.tokens and mixed[0].stop_reason == with_stop.stop_reason
    ctx = gen.contexts.shared
    assert all(ctx.memory_pos_max(seq) == -1 for seq in range(ctx.n_seq_max))   # every slot released
    assert res[0].stats["batch"]["kv_tokens_peak"] <= 2 * res[0].stats["batch"]["kv_tokens_per_sequence_max"]


def test_stream_over_a_list(gen):
    res = gen.generate(PROMPTS, max_new_tokens=12, block_length=4, stop=[], n_parallel=3)
    chunks = list(gen.stream(PROMPTS, max_new_tokens=12, block_length=4, stop=[], n_parallel=3))
    for i, r in enumerate(res):
        mine = [c for c in chunks if c.index == i]
        assert sum((c.tokens for c in mine), []) == r.tokens
        assert "".join(c.text for c in mine) == r.text
        assert mine[-1].stop_reason == r.stop_reason and all(c.stop_reason is None for c in mine[:-1])
    seen = []
    gen.generate(PROMPTS[:2], max_new_tokens=8, block_length=4, stop=[], n_parallel=2, callback=seen.append)
    assert {s.index for s in seen} == {0, 1}


def test_bad_input(gen):
    with pytest.raises(ValueError, match="empty"):
        gen.generate([], max_new_tokens=8)
    with pytest.raises(ValueError, match="n_parallel"):
        gen.generate(PROMPTS, max_new_tokens=8, n_parallel=0)
    with pytest.raises(TypeError, match="n_parallel"):
        gen.generate("one prompt", max_new_tokens=8, n_parallel=2)
    # the recompute mode runs a list one prompt after another, with a solo run's tokens
    recomputed = gen.generate(PROMPTS[:2], max_new_tokens=8, cache=False, stop=[])
    assert recomputed[0].stats["batch"]["n_parallel"] == 1
    assert [r.tokens for r in recomputed] == [gen.generate(p, max_new_tokens=8, stop=[]).tokens for p in PROMPTS[:2]]
    # one bad prompt does not lose the others' results
    res = gen.generate(["fine", "x " * 400, [1, 10 ** 7], "also fine"], max_new_tokens=8, block_length=4, stop=[])
    assert [r.stop_reason for r in res] == ["length", "error", "error", "length"]
    assert "n_ctx" in res[1].error and "out of range" in res[2].error
    assert res[0].tokens == gen.generate("fine", max_new_tokens=8, block_length=4, stop=[]).tokens
    assert res[0].stats["batch"]["errors"] == 2


@pytest.mark.parametrize("options", [dict(block_length=8, steps=16), dict(block_length=8, cache="dual"),
                                     dict(block_length=8, cache="prefix", parallel="threshold"),
                                     dict(block_length=8, steps=16, cfg_scale=1.0),
                                     dict(block_length=8, steps=16, temperature=0.8, seed=3)])
def test_full_family_lists_decode_together(llada_model, options):
    """Full-diffusion lists share one decode per step, with the tokens of solo runs (exact
    numerics: with an F16 KV cache the batch shape can flip a near-tie, as documented)."""
    prompts = ["one", "two three", "four five six"]
    with Generator(llada_model, n_ctx=256, n_threads=1, type_k="f32", type_v="f32", flash_attn=False) as g:
        res = g.generate(prompts, max_new_tokens=16, stop=[], **options)
        assert [r.tokens for r in res] == [g.generate(p, max_new_tokens=16, stop=[], **options).tokens
                                           for p in prompts]
        batch = res[0].stats["batch"]
        assert batch["n_parallel"] == 3
        # one shared decode per step (guidance's unconditional passes ride on it too)
        assert batch["steps"] == max(len(r.stats["committed_per_step"]) for r in res)
        assert batch["decode_calls"] == batch["steps"]
        chunks = list(g.stream(prompts[:2], max_new_tokens=16, stop=[], **options))
        assert [c.index for c in chunks] == [0, 1, 0, 1]


def test_full_family_parity_lists_run_one_after_another(llada_model):
    """rng="llama.cpp" reproduces upstream's single-sequence loop: a list runs in turn."""
    with Generator(llada_model, n_ctx=256, n_threads=2) as g:
        res = g.generate(["one", "two"], max_new_tokens=16, block_length=8, steps=16, rng="llama.cpp", stop=[])
        assert res[0].stats["batch"]["n_parallel"] == 1
        assert [r.tokens for r in res] == [g.generate(p, max_new_tokens=16, block_length=8, steps=16,
                                                      rng="llama.cpp", stop=[]).tokens for p in ("one", "two")]


@pytest.mark.parametrize("n_parallel", [1, 3, 16])
def test_one_step_shape_keeps_the_graph_between_steps(qwen3_model, n_parallel):
    """fixed_step_shape=True: every step of a batch decodes the same shape, so llama.cpp reuses
    the previous step's graph (on a CUDA device: a replay of the captured CUDA graph). Only the
    first step after the prefills, and the KV view growing past a 256-cell step, build anew;
    the minimal steps change shape nearly every step. Same tokens either way."""
    prompts = [[5 + i, 6, 7, 8, 9, 10, 11, 12] for i in range(n_parallel)]
    runs = {}
    with Generator(qwen3_model, n_ctx=256, n_threads=1, type_k="f32", type_v="f32", flash_attn=False) as g:
        for fixed in (True, False):
            out = g.generate(prompts, max_new_tokens=24, block_length=4, stop=[], n_parallel=n_parallel,
                             fixed_step_shape=fixed)
            runs[fixed] = ([r.tokens for r in out], out[0].stats["batch"])
    (fixed_tokens, fixed), (plain_tokens, plain) = runs[True], runs[False]
    assert fixed_tokens == plain_tokens
    prefills = fixed["decode_calls"] - fixed["steps"]
    # consecutive prefills of one shape reuse their graph too: count the steps' own reuse
    step_reuse = fixed["graphs_reused"] - max(prefills - 1, 0)
    assert step_reuse >= fixed["steps"] - 2 - (fixed["kv_tokens_peak"] // 256)
    assert plain["graphs_reused"] < fixed["graphs_reused"]
