"""Canvas diffusion (DiffusionGemma, arch diffusion-gemma, vendor/patches/0012) against the NumPy
float64 reference (tests/diffusion_gemma_reference.py, itself checked against transformers).

The tiny model (llamadiff.testing.CanvasShape: 4 layers, sliding window 5, canvas 16, random
encoder and decoder layer scalars, the test vocabulary) is written as a GGUF from the same
weights the reference loads. The reference draws through llamadiff's counter RNG (the uniform
canvas tokens by position and step, the denoiser's draw with llamadiff's row sampler on the
reference's own logits), so llamadiff and the reference must give the same tokens and take the
same number of steps per canvas: greedy (top_k=1) and sampled. Prompts are longer than the
sliding window, so the decoder's sliding rule (the last W-1 prefix tokens for every canvas row)
decides what the canvas sees. Exact numerics: an F32 KV cache without flash attention (then
llama.cpp's logits agree with the reference to ~2e-6; ggml-cpu's flash attention and an F16 cache
round K / V to half precision, ~1e-3 relative).
"""

from __future__ import annotations

import numpy as np
import pytest

import diffusion_gemma_reference as R
from llamadiff import Generator
from llamadiff import testing as T
from llamadiff._canvas import CanvasSequence, uniform_tokens
from llamadiff._core import Context, Model
from llamadiff._sampling import CpuRowSampler, sample_logits
from llamadiff.engine import Scheduler
from llamadiff.errors import UnsupportedModelError

SHAPE = T.CanvasShape()
PROMPT = [5, 17, 99, 3, 42, 7, 8, 11, 200, 13, 60]


class CounterDraws:
    """The reference's random source, drawing what a CanvasSequence draws."""

    def __init__(self, seed: int, greedy: bool = False):
        self.seed, self.greedy = seed, greedy

    def begin_block(self, start: int) -> None:
        self.start, self.k = start, 0

    def randint(self, high: int, n: int):
        # the k-th canvas of a block enters step k - 1: counter slot 2k - 1
        self.k += 1
        return np.array(uniform_tokens(self.seed, range(self.start, self.start + n), 2 * self.k - 1, high))

    def categorical(self, logits, temperature: float):
        if self.greedy:
            return np.argmax(logits, -1)
        counters = [((self.start + j) << 16) | (2 * (self.k - 1)) for j in range(logits.shape[0])]
        tokens, _, _ = sample_logits(np.ascontiguousarray(logits, np.float32), temperature=temperature,
                                     seed=self.seed, counters=counters)
        return np.array(tokens)


def _tiny(directory, std: float, embd_t: bool = True):
    weights = T.canvas_weights(SHAPE, seed=1, std=std)
    path = T.write_diffusion_gemma(directory / f"dg-{std}-{embd_t}.gguf", shape=SHAPE, weights=weights, embd_t=embd_t)
    P = R.load_params({k: v.astype(np.float64) for k, v in weights.items()}, T.canvas_config(SHAPE))
    return path, P, Model(str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    made = _tiny(tmp_path_factory.mktemp("canvas"), 0.04)
    yield made
    made[2].close()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The layout of the published GGUFs: no transposed embedding (self-conditioning by out_prod)."""
    made = _tiny(tmp_path_factory.mktemp("published"), 0.04, embd_t=False)
    yield made
    made[2].close()


@pytest.fixture(scope="module")
def quiet(tmp_path_factory):
    """Weights of std 0.004: each position's argmax is mostly its own token, so canvases settle
    and the stop rule ends them early (the std-0.04 model's never settle within 8 steps)."""
    made = _tiny(tmp_path_factory.mktemp("quiet"), 0.004)
    yield made
    made[2].close()


def run_sequence(model, prompt, n_new, steps, **kw):
    # exact numerics: an F32 KV cache and no flash attention (ggml-cpu's flash attention rounds
    # K / V to half precision: ~1e-3 relative in the logits, enough to move a draw)
    ctx = Context(model, n_ctx=256, n_batch=64, n_ubatch=64, causal=False, type_k="f32", type_v="f32",
                  flash_attn=False)
    seq = CanvasSequence(model, prompt, n_new, SHAPE.canvas_length, steps, eog_tokens=model.eog_token_ids, **kw)
    scheduler = Scheduler(ctx, CpuRowSampler(1))
    scheduler.add(seq)
    while not seq.done:
        scheduler.step()
    ctx.close()
    return seq


@pytest.mark.parametrize("body,greedy,seed,settings", [
    ("tiny", True, 0, {}),
    ("tiny", False, 3, {}),
    ("tiny", False, 7, {}),
    ("published", False, 3, {}),
    ("published", False, 5, dict(entropy_bound=50.0)),
    # a loose bound: most positions accepted (their draws decide the next canvas)
    ("tiny", False, 5, dict(entropy_bound=50.0)),
    ("tiny", True, 2, dict(entropy_bound=50.0, stability=2)),
    # canvases that settle: the stop rule ends them before the last step
    ("quiet", True, 0, dict(entropy_bound=50.0, confidence=10.0)),
    ("quiet", False, 5, dict(entropy_bound=50.0, confidence=10.0)),
    ("quiet", True, 1, dict(entropy_bound=50.0, confidence=10.0, stability=2)),
])
def test_tokens_and_steps_match_the_reference(request, body, greedy, seed, settings):
    _, P, model = request.getfixturevalue(body)
    eog = list(model.eog_token_ids)
    ref_kw = {"entropy_bound": settings.get("entropy_bound", 0.1),
              "confidence_threshold": settings.get("confidence", 0.005),
              "stability_threshold": settings.get("stability", 1)}
    ref, ref_steps = R.generate(P, PROMPT, CounterDraws(seed, greedy), max_new_tokens=40, max_denoising_steps=8,
                                eos_token_id=eog, **ref_kw)
    seq = run_sequence(model, PROMPT, 40, 8, top_k=1 if greedy else 0, seed=seed, **settings)
    assert seq.tokens[:len(ref)] == [int(t) for t in ref]
    assert list(seq.steps_per_region) == ref_steps
    if body == "quiet":
        assert min(ref_steps) < 8          # the stop rule took part


@pytest.mark.parametrize("body,seed", [("tiny", 3), ("quiet", 5)])
def test_recomputing_the_prefix_gives_the_same_tokens(request, body, seed):
    """cache=False (every step encodes prompt and committed canvases again) against the cache."""
    model = request.getfixturevalue(body)[2]
    kw = dict(entropy_bound=50.0, confidence=10.0) if body == "quiet" else {}
    cached = run_sequence(model, PROMPT, 40, 8, seed=seed, **kw)
    again = run_sequence(model, PROMPT, 40, 8, seed=seed, cache=False, **kw)
    assert again.tokens == cached.tokens and list(again.steps_per_region) == list(cached.steps_per_region)
    assert again.n_decode_tokens > cached.n_decode_tokens


def test_self_conditioning_and_the_encoder_scalars_matter(tiny):
    """The comparison can fail: without self-conditioning, or with the decoder's layer scalars in
    the encoder too, the reference gives other tokens than llamadiff."""
    _, P, model = tiny
    eog = list(model.eog_token_ids)
    seq = run_sequence(model, PROMPT, 32, 8, top_k=1, seed=0)
    no_sc = R.decoder_forward
    try:
        R.decoder_forward = lambda P_, canvas, cache, sc=None: no_sc(P_, canvas, cache, None)
        ref, _ = R.generate(P, PROMPT, CounterDraws(0, True), max_new_tokens=32, max_denoising_steps=8, eos_token_id=eog)
    finally:
        R.decoder_forward = no_sc
    assert seq.tokens[:len(ref)] != [int(t) for t in ref]
    import dataclasses
    Q = dataclasses.replace(P, enc_scalar=list(P.dec_scalar))
    ref, _ = R.generate(Q, PROMPT, CounterDraws(0, True), max_new_tokens=32, max_denoising_steps=8, eos_token_id=eog)
    assert seq.tokens[:len(ref)] != [int(t) for t in ref]


@pytest.fixture(scope="module")
def gen(tiny):
    g = Generator(str(tiny[0]), n_ctx=512)
    yield g
    g.close()


def test_generator_batches_streams_and_reports_steps(gen):
    prompts = ["hello world, this is a prompt", "a b c d e f g", "xyz"]
    single = [gen.generate(p, max_new_tokens=40, steps=6, seed=4) for p in prompts]
    batch = gen.generate(prompts, max_new_tokens=40, steps=6, seed=4)
    assert [r.tokens for r in batch] == [r.tokens for r in single]
    chunks = list(gen.stream(prompts[0], max_new_tokens=40, steps=6, seed=4))
    assert sum((c.tokens for c in chunks), []) == single[0].tokens
    assert all(len(c.tokens) <= SHAPE.canvas_length for c in chunks)
    steps = []
    gen.generate(prompts[0], max_new_tokens=40, steps=6, seed=4, callback=steps.append)
    assert steps and all(len(s.positions) == SHAPE.canvas_length for s in steps)
    assert all(s.block_end - s.block_start == SHAPE.canvas_length for s in steps)
    assert single[0].stats["accepted"] >= sum(single[0].stats["steps_per_block"])


def test_model_defaults_are_read_and_options_of_other_families_refused(tiny, gen, tmp_path):
    cfg = gen.resolve(None, {})
    assert (cfg.steps, cfg.t_min, cfg.t_max, cfg.entropy_bound, cfg.stability, cfg.confidence) == \
        (48, 0.4, 0.8, 0.1, 1, 0.005)
    path = T.write_diffusion_gemma(tmp_path / "d.gguf", shape=SHAPE, seed=1, metadata={
        "diffusion.eb_max_steps": 12, "diffusion.eb_t_min": 0.25, "diffusion.eb_entropy_bound": 0.5,
        "diffusion.eb_stability_threshold": 3})
    with Generator(str(path), n_ctx=256) as g:
        cfg = g.resolve(None, {})
        assert (cfg.steps, cfg.t_min, cfg.entropy_bound, cfg.stability) == (12, 0.25, 0.5, 3)
    for bad, words in [(dict(temperature=0.5), "t_max down to t_min"), (dict(block_length=7), "16 positions"),
                       (dict(strategy="low_confidence_static"), "canvas diffusion"),
                       (dict(t_min=0.9, t_max=0.5), "must not exceed"), (dict(mode="speculative"), "canvas"),
                       (dict(eps=0.1), "full"), (dict(max_new_tokens=600), "exceeds n_ctx")]:
        with pytest.raises(ValueError, match=words):
            gen.generate("hi", **bad)
    with pytest.raises(ValueError, match="at least one token"):
        CanvasSequence(gen.model, [], 4, SHAPE.canvas_length, 4)


@pytest.mark.parametrize("value", [0, 2 ** 31])
def test_a_corrupt_canvas_length_is_refused(tmp_path, value):
    path = T.write_diffusion_gemma(tmp_path / "c.gguf", shape=SHAPE, seed=1,
                                   metadata={"diffusion.canvas_length": value})
    with Generator(str(path), n_ctx=256) as g:
        with pytest.raises(UnsupportedModelError, match="canvas_length"):
            g.generate("hi", max_new_tokens=4)


def test_a_canvas_longer_than_the_context_is_refused(tiny):
    with Generator(str(tiny[0]), n_ctx=16) as g:
        with pytest.raises(ValueError, match="n_ctx"):
            g.generate("hi", max_new_tokens=4)
