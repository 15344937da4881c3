"""Token editing (LLaDA2.1): the fill and edit rule against a NumPy reference on the bailingmoe2
test body (LLaDA2.x's body), the KV cache against recomputation, batched against single, the
options refused where nothing would read them, and a downstream Cython policy that edits
(tests/test_examples.py builds it)."""

import pytest

from llamadiff import Generator, testing
from llamadiff.policy import TokenEditing, make_policy

from numpy_reference import token_editing_generate

EXACT = dict(type_k="f32", type_v="f32", flash_attn=False)
MASK = testing.byte_vocab().mask_id
PROMPT = [104, 101, 108, 108, 111, 32, 119, 111, 114]     # 9 tokens: the first block starts mid-prompt
B = 8
# the tiny body's probabilities are small (random weights, a 300-token vocabulary): thresholds
# scaled to them, so that a step fills several positions and edits happen
QUALITY = dict(threshold=0.012, editing_threshold=0.011, max_post_steps=6)
SPEED = dict(threshold=0.008, editing_threshold=0.0)


@pytest.fixture(scope="module")
def body(tmp_path_factory):
    return testing.write_model(tmp_path_factory.mktemp("editing") / "bailingmoe2.gguf", "bailingmoe2", seed=5)


def _ref(body, mode, n=20):
    edit = mode.get("editing_threshold") or None
    return token_editing_generate(testing.read_model(body), PROMPT, n, B, MASK, mode["threshold"], edit,
                                  mode.get("max_post_steps", 16))


@pytest.mark.parametrize("mode", [QUALITY, SPEED], ids=["quality", "speed"])
def test_token_editing_matches_the_numpy_reference(body, mode):
    """Token for token, with the number of forwards and edits: the KV cache and recomputation."""
    tokens, forwards, edits = _ref(body, mode)
    if mode is QUALITY:
        assert edits > 0, "the test body should edit with these thresholds"
    with Generator(body, n_ctx=128, n_threads=2, **EXACT) as gen:
        for cache in (True, False):
            res = gen.generate(PROMPT, max_new_tokens=20, block_length=B, strategy="token_editing", stop=[],
                               cache=cache, **mode)
            assert res.tokens == tokens, cache
            assert len(res.stats["committed_per_step"]) == forwards
            assert res.stats.get("edits", 0) == edits


def test_editing_off_is_the_threshold_rule(body):
    """editing_threshold=0 is editing off: ParallelThreshold's tokens, no post steps."""
    with Generator(body, n_ctx=128, n_threads=2, **EXACT) as gen:
        off = gen.generate(PROMPT, max_new_tokens=20, block_length=B, strategy="token_editing", stop=[], **SPEED)
        from llamadiff.policy import ParallelThreshold
        plain = gen.generate(PROMPT, max_new_tokens=20, block_length=B, stop=[],
                             strategy=ParallelThreshold(SPEED["threshold"]))
    assert off.tokens == plain.tokens
    assert off.stats["committed_per_step"] == plain.stats["committed_per_step"]


def test_batched_editing_equals_single(body):
    prompts = [PROMPT, [50, 51, 52], list(range(60, 75))]
    opts = dict(max_new_tokens=16, block_length=B, strategy="token_editing", stop=[], **QUALITY)
    with Generator(body, n_ctx=128, n_threads=2, **EXACT) as gen:
        alone = [gen.generate(p, **opts) for p in prompts]
        together = gen.generate(prompts, n_parallel=3, **opts)
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.stats["edits"] for r in together] == [r.stats["edits"] for r in alone]


def test_edits_reach_step_callbacks(body):
    """A step's StepInfo lists the positions it filled and those it overwrote."""
    seen = []
    with Generator(body, n_ctx=128, n_threads=2, **EXACT) as gen:
        res = gen.generate(PROMPT, max_new_tokens=20, block_length=B, strategy="token_editing", stop=[],
                           callback=seen.append, **QUALITY)
    n_prompt = len(PROMPT)
    written = {}
    for info in seen:
        for p, t in zip(info.positions, info.tokens):
            written[p] = t
    assert [written[p] for p in range(n_prompt, n_prompt + 20)] == res.tokens
    assert sum(len(i.positions) for i in seen) == 20 + res.stats["edits"] + (
        (n_prompt + 20 + B - 1) // B * B - n_prompt - 20)      # the last block's positions past the end too


@pytest.mark.parametrize("opts,match", [
    (dict(editing_threshold=0.5), "editing_threshold is a setting of strategy='token_editing'"),
    (dict(max_post_steps=4), "max_post_steps is a setting of strategy='token_editing'"),
    (dict(strategy="token_editing", editing_threshold=0, max_post_steps=4), "editing_threshold=0 turns editing off"),
    (dict(strategy="token_editing", editing_threshold=1.5), r"editing_threshold must be in \[0, 1\]"),
    (dict(strategy="token_editing", editing_threshold=-0.1), r"editing_threshold must be in \[0, 1\]"),
    (dict(strategy="token_editing", max_post_steps=-1), "max_post_steps must be >= 0"),
    (dict(strategy="token_editing", shift_logits=True), "token editing .* needs unshifted rows"),
    (dict(strategy=TokenEditing(0.5, 0.5), editing_threshold=0.5), "set it on the policy object"),
])
def test_editing_options_refused_where_nothing_reads_them(body, opts, match):
    with Generator(body, n_ctx=128, n_threads=2) as gen:
        with pytest.raises(ValueError, match=match):
            gen.generate(PROMPT, max_new_tokens=8, block_length=B, **opts)


def test_editing_on_a_full_diffusion_model_is_refused(tmp_path):
    full = testing.write_model(tmp_path / "llada.gguf", "llada", seed=1)
    with Generator(full, n_ctx=128, n_threads=2) as gen:
        with pytest.raises(ValueError, match="editing_threshold is an option of block diffusion"):
            gen.generate(PROMPT, max_new_tokens=8, editing_threshold=0.5)
        with pytest.raises(ValueError, match="token editing, LLaDA2.1.*full-diffusion"):
            gen.generate(PROMPT, max_new_tokens=8, strategy=TokenEditing(0.5, 0.5))


def test_policy_settings():
    p = make_policy("token_editing", threshold=0.7, editing_threshold=0.5, max_post_steps=16)
    assert (p.edits, p.post_steps, p.adaptive) == (True, 16, True)
    off = TokenEditing(0.5, 0.0, 16)
    assert (off.edits, off.post_steps) == (False, 0)
    assert TokenEditing(0.5, 1.0).edits is False
