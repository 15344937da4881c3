"""tests/diffusion_gemma_reference.py (NumPy float64) against transformers' DiffusionGemma.

A tiny random ``DiffusionGemmaForBlockDiffusion`` is built from transformers' own config and
model classes: 4 layers (sliding, full, sliding, full), 4 query heads, 2 kv heads on sliding
layers and 1 (with head_dim 16, proportional RoPE) on full ones, MoE with 4 experts / top-2,
vocabulary 48, canvas 16, sliding window 5 < prompt 11.  The classes always build a vision
tower; a one-layer Gemma-4 vision config keeps it small, and nothing here feeds it images.
Norm weights, router scales and the (separate) encoder/decoder ``layer_scalar`` buffers are all
random, so every one of them has to be in the right place.  The model runs in float64 with the
eager expert loop (the default grouped_mm kernel refuses float64) and sdpa attention.

Tolerances.  transformers computes a few things in float32 even in a float64 model: RMSNorm
(``.float()``), the RoPE angles/cos/sin, the router and self-conditioning softmaxes (``dtype=
float32``) and the final logits (``.to(torch.float32)``).  ``float64_islands`` patches the first
four to stay float64 (same formulas, dtype only); then hidden states and K/V agree to ~1e-15,
checked at rtol 1e-12 -- tight enough that a misplaced eps, scalar or mask shows.  Logits, which
transformers always hands out as float32, are checked at rtol 2e-6 (float32 has 6e-8); the stock
model (no patch) at rtol 3e-5 (measured ~1.5e-6: ~1e-7 float32 rounding, grown through 4 layers).

Generation is matched draw for draw: torch's CPU generator is an MT19937 that
``diffusion_gemma_reference.TorchCPUGenerator`` reproduces (randint = 32-bit output % high;
``multinomial(p, 1)`` = argmax(p / exponential_()), exponential from 53-bit uniforms), so
``torch.manual_seed(s); model.generate(...)`` and ``generate(P, ..., TorchCPUGenerator(s))``
consume the same numbers and must give the same tokens, the same number of decoder passes
and leave the generator at the same place.  The stock model is used.  Exactness rests on no
decision (an argmax, the MoE top-k, the entropy bound, the multinomial race, the stop threshold)
falling within float32 rounding of its boundary; the generation model has small weights (std
0.04) so rounding differences are not amplified, and the seeds are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

# transformers' imports use torch.jit.script_method, which torch 2.14 deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.models.diffusion_gemma", reason="transformers without DiffusionGemma")

import torch.nn.functional as F  # noqa: E402
from transformers.cache_utils import DynamicCache  # noqa: E402
from transformers.models.diffusion_gemma import modeling_diffusion_gemma as M  # noqa: E402
from transformers.models.diffusion_gemma.configuration_diffusion_gemma import DiffusionGemmaConfig  # noqa: E402
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (  # noqa: E402
    EntropyBoundSampler,
    EntropyBoundSamplerConfig,
    LinearTemperatureScheduleLogitsProcessor,
    StableAndConfidentStoppingCriteria,
)

import diffusion_gemma_reference as R  # noqa: E402

V, C, W, PROMPT = 48, 16, 5, 11


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores and another job measuring speed: keep torch to one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def build(std: float, seed: int):
    """Tiny model, float64, random weights (matrices ~ N(0, std^2), embedding N(0, 0.3^2), norm
    weights and router scales 1 + N(0, 0.3^2), layer scalars U(0.5, 1.5)); returns (model, P)."""
    text = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16,
                num_global_key_value_heads=1, sliding_window=W,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                num_experts=4, top_k_experts=2, moe_intermediate_size=24, max_position_embeddings=256,
                rms_norm_eps=1e-3, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    vision = dict(model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=8)
    cfg = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=C)
    torch.manual_seed(0)
    model = M.DiffusionGemmaForBlockDiffusion._from_config(cfg, experts_implementation="eager").double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vision" in name:
                continue
            if name.endswith(("norm.weight", "router.scale", "per_expert_scale")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                s = 0.3 if "embed_tokens" in name else std
                p.copy_(s * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g, dtype=b.dtype))
    assert model.config.text_config._attn_implementation == "sdpa"
    P = R.load_params({k: v.numpy() for k, v in model.state_dict().items()}, cfg.to_dict())
    return model, P


@pytest.fixture(scope="module")
def fwd():
    return build(std=0.3, seed=1)


@pytest.fixture(scope="module")
def gen():
    return build(std=0.04, seed=1)


@pytest.fixture
def float64_islands(monkeypatch):
    """Keep transformers' float32 islands in float64 (dtype only, same formulas)."""
    orig_float, orig_fsm, orig_tsm = torch.Tensor.float, F.softmax, torch.Tensor.softmax

    def keep(dtype, x):
        return None if (x.dtype == torch.float64 and dtype == torch.float32) else dtype

    def rope64(self, x, position_ids, layer_type):   # DiffusionGemmaTextRotaryEmbedding.forward
        freqs = position_ids[..., None].to(torch.float64) * getattr(self, f"{layer_type}_inv_freq").to(torch.float64)
        emb, scale = torch.cat((freqs, freqs), dim=-1), getattr(self, f"{layer_type}_attention_scaling")
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)

    monkeypatch.setattr(torch.Tensor, "float", lambda self, *a, **k: self if self.dtype == torch.float64
                        else orig_float(self, *a, **k))
    monkeypatch.setattr(F, "softmax", lambda input, dim=None, _stacklevel=3, dtype=None:
                        orig_fsm(input, dim=dim, dtype=keep(dtype, input)))
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, dim, dtype=None: orig_tsm(self, dim, dtype=keep(dtype, self)))
    monkeypatch.setattr(M.DiffusionGemmaTextRotaryEmbedding, "forward", rope64)


def close(actual, expected, rtol, what):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = np.abs(actual - expected).max() / np.abs(expected).max()
    assert err <= rtol, f"{what}: max relative error {err:.3g} > {rtol:g}"


def hf_kv(cache, i):
    """transformers' cache layer i as [T, kv heads, hd] (batch 1)."""
    layer = cache.layers[i]
    return layer.keys[0].permute(1, 0, 2).numpy(), layer.values[0].permute(1, 0, 2).numpy()


# ----------------------------------------------------------------------------------- (a) forward

def test_rope_tables_and_loader(fwd, tmp_path):
    """rope_inv_freq vs transformers' buffers (built in float32: 1e-6), and load_params on what
    save_pretrained writes (tied weights under decoder names only, both layer_scalar sets)."""
    model, P = fwd
    rot = model.model.decoder.rotary_emb
    for i, t in enumerate(P.layer_types):
        close(R.rope_inv_freq(P.rope[t], P.head_dims[i]), getattr(rot, f"{t}_inv_freq").numpy(), 1e-6, f"inv_freq {t}")
    assert np.count_nonzero(P.inv_freq[1]) == 2    # int(0.25 * 16 // 2) rotated pairs of 8
    model.save_pretrained(tmp_path)
    from safetensors.numpy import load_file
    import json
    saved = {}
    for f in tmp_path.glob("*.safetensors"):
        saved.update(load_file(f))
    assert not any(k.startswith("model.encoder.language_model.layers.0.self_attn") for k in saved)
    P2 = R.load_params(saved, json.loads((tmp_path / "config.json").read_text()))
    assert P2.enc_scalar == P.enc_scalar and P2.dec_scalar == P.dec_scalar and P.enc_scalar != P.dec_scalar
    assert P2.head_dims == P.head_dims == [8, 16, 8, 16] and P2.kv_heads == [2, 1, 2, 1]
    for i in range(4):
        for k, v in P.layers[i].items():
            np.testing.assert_array_equal(P2.layers[i][k], v)
    np.testing.assert_array_equal(P2.embed, P.embed)


def _forward_checks(model, P, rtol_hidden, rtol_logits):
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, V, (1, PROMPT), generator=g)
    block = torch.randint(0, V, (1, C), generator=g)
    canvas = torch.randint(0, V, (1, C), generator=g)
    sc = 3 * torch.randn(1, C, V, generator=g, dtype=torch.float64)
    cache = DynamicCache(config=model.config.text_config)
    ref_cache = None
    with torch.no_grad():
        for step, tokens in (("prompt", prompt), ("commit", block)):
            h = model.model.encoder(input_ids=tokens, cache=cache).last_hidden_state
            rh, rlogits, ref_cache = R.encoder_forward(P, tokens[0].numpy(), ref_cache)
            close(h[0].numpy(), rh, rtol_hidden, f"encoder hidden ({step})")
            close(R.lm_logits(P, h[0].numpy()), rlogits, rtol_hidden, f"encoder logits ({step})")
            for i, t in enumerate(P.layer_types):
                k, v = hf_kv(cache, i)
                keep = W - 1 if t == "sliding_attention" else ref_cache[i][0].shape[0]
                assert k.shape[0] == keep, (step, i, k.shape)
                close(k, ref_cache[i][0][-keep:], rtol_hidden, f"K layer {i} ({step})")
                close(v, ref_cache[i][1][-keep:], rtol_hidden, f"V layer {i} ({step})")
            for s in (None, sc):
                label = f"decoder after {step}, self-conditioning {'on' if s is not None else 'off'}"
                ref_s = None if s is None else s[0].numpy()
                hd = model.model.decoder(decoder_input_ids=canvas, cache=cache, self_conditioning_logits=s)
                close(hd.last_hidden_state[0].numpy(), R.decoder_hidden(P, canvas[0].numpy(), ref_cache, ref_s),
                      rtol_hidden, label + " hidden")
                out = model(decoder_input_ids=canvas, cache=cache, self_conditioning_logits=s)
                assert out.logits.dtype == torch.float32
                close(out.logits[0].numpy(), R.decoder_forward(P, canvas[0].numpy(), ref_cache, ref_s),
                      rtol_logits, label + " logits")
            assert cache.get_seq_length() == ref_cache[0][0].shape[0]   # the decoder wrote nothing


def test_forward_float64(fwd, float64_islands):
    """(a) encoder hidden/K/V (prompt, then a commit pass through the sliding cache) and decoder
    hidden/logits with and without self-conditioning; float32 islands patched to float64."""
    model, P = fwd
    P = R.DiffusionGemmaParams(**{**P.__dict__, "inv_freq": {   # transformers' (float32-built) tables
        i: getattr(model.model.decoder.rotary_emb, f"{t}_inv_freq").numpy() for i, t in enumerate(P.layer_types)}})
    for emb in (model.model.decoder.embed_tokens, model.model.encoder.language_model.embed_tokens):
        emb.embed_scale.fill_(math.sqrt(P.hidden_size))           # was float32-rounded sqrt(d)
    try:
        _forward_checks(model, P, rtol_hidden=1e-12, rtol_logits=2e-6)
    finally:
        for emb in (model.model.decoder.embed_tokens, model.model.encoder.language_model.embed_tokens):
            emb.embed_scale.copy_(torch.tensor(math.sqrt(P.hidden_size), dtype=torch.float32))


def test_forward_stock(fwd):
    """(a) the same on the unpatched model: float32-island rounding only."""
    _forward_checks(*fwd, rtol_hidden=3e-5, rtol_logits=3e-5)


# ----------------------------------------------------------------------------------- (b) sampler

def test_temperature_schedule():
    proc = LinearTemperatureScheduleLogitsProcessor(t_min=0.4, t_max=0.8, max_denoising_steps=12)
    z = torch.randn(1, C, V, dtype=torch.float64)
    for cur in range(12, 0, -1):
        T = R.temperature(cur, 12, 0.4, 0.8)
        close(proc(None, z, cur_step=cur).numpy(), z.numpy() / T, 1e-15, f"T({cur}) int")
        # generate passes cur_step as an int32 tensor: the temperature becomes float32
        close(proc(None, z, cur_step=torch.tensor(cur, dtype=torch.int32)).numpy(), z.numpy() / T, 1e-6, f"T({cur})")
    assert R.temperature(12, 12, 0.4, 0.8) == pytest.approx(0.8) and R.temperature(1, 12, 0.4, 0.8) > 0.4


def _varied_logits(g, rows=C):
    """Logits whose entropies spread from ~0 to ~log V."""
    scale = torch.logspace(-1, 1.5, rows, dtype=torch.float64)[torch.randperm(rows, generator=g)]
    return torch.randn(1, rows, V, generator=g, dtype=torch.float64) * scale[None, :, None]


def test_entropy_accept_renoise_initialize():
    g = torch.Generator().manual_seed(3)
    n_accepted = set()
    for trial in range(20):
        z = _varied_logits(g)
        close(R.entropy(z[0].numpy()), torch.distributions.Categorical(logits=z).entropy()[0].numpy(), 1e-12, "entropy")
        bound = [0.05, 0.5, 2.0, 10.0][trial % 4]
        sampler = EntropyBoundSampler(EntropyBoundSamplerConfig(entropy_bound=bound), C, V, 12)
        current, denoiser = torch.randint(0, V, (2, 1, C), generator=g)
        accepted = sampler.accept_canvas(current, denoiser, z, cur_step=5)
        mask = R.entropy_bound_accept(z[0].numpy(), bound)
        np.testing.assert_array_equal(sampler.accepted_token_mask[0].numpy(), mask)
        np.testing.assert_array_equal(accepted[0].numpy(), np.where(mask, denoiser[0].numpy(), current[0].numpy()))
        n_accepted.add(int(mask.sum()))
        torch.manual_seed(trial)
        renoised = sampler.renoise_canvas(accepted, cur_step=5)
        draws = R.TorchCPUGenerator(trial)
        np.testing.assert_array_equal(renoised[0].numpy(), R.renoise(mask, denoiser[0].numpy(), draws.randint(V, C)))
        torch.manual_seed(100 + trial)
        init = sampler.initialize_canvas(1, torch.device("cpu"))
        np.testing.assert_array_equal(init[0].numpy(), R.TorchCPUGenerator(100 + trial).randint(V, C))
    assert len(n_accepted) >= 5 and min(n_accepted) >= 1, n_accepted


def test_multinomial_draws():
    """torch.multinomial(softmax(z), 1) as generate calls it (float32 probabilities) = the
    reference's exponential race on TorchCPUGenerator draws."""
    g = torch.Generator().manual_seed(4)
    for seed in range(5):
        probs = torch.softmax(_varied_logits(g, rows=64)[0], dim=-1, dtype=torch.float32)
        torch.manual_seed(seed)
        got = torch.multinomial(probs, num_samples=1).squeeze(-1).numpy()
        torch.manual_seed(seed)
        exp32 = torch.empty(64, V, dtype=torch.float32).exponential_().numpy()
        draws = R.TorchCPUGenerator(seed)
        e = draws.exponential((64, V))
        np.testing.assert_array_equal(e.astype(np.float32), exp32)
        np.testing.assert_array_equal(R.sample_categorical(probs.numpy().astype(np.float64), e), got)
        torch.manual_seed(seed)
        torch.multinomial(probs, num_samples=1)
        np.testing.assert_array_equal(torch.randint(0, V, (8,)).numpy(), draws.randint(V, 8))  # same place


def test_stop_rule():
    g = torch.Generator().manual_seed(5)
    canvases = torch.randint(0, V, (3, 1, C), generator=g)
    pattern = [0, 0, 1, 1, 1, 2, 1, 1, 0, 0, 0, 0, 0, 2, 2]
    for stability in (0, 1, 2, 3):
        for confidence in (0.5, 1.5, 100.0):
            hf = StableAndConfidentStoppingCriteria(stability, confidence)
            ref = R.StopRule(stability, confidence)
            seen = set()
            for k, p in enumerate(pattern):   # alternate high (~3.4) and low (~0.3) mean entropy
                z = torch.randn(1, C, V, generator=g, dtype=torch.float64) * (1.0, 10.0)[k % 2]
                a = hf(canvases[p], z).item()
                b = ref(canvases[p][0].numpy(), z[0].numpy())
                assert a == b, (stability, confidence, p)
                seen.add(ref.last)
            if confidence == 1.5 and stability:
                assert len(seen) == 4, seen   # every (stable, confident) combination occurred


# ----------------------------------------------------------------------------------- (c) generate

def _both(model, P, seed, **kw):
    prompt = (torch.arange(PROMPT) * 7 % (V - 3) + 3)[None]
    hf_kw = dict(kw)
    hf_kw["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=hf_kw.pop("entropy_bound"))
    torch.manual_seed(seed)
    out = model.generate(prompt, **hf_kw)
    hf_next = torch.randint(0, V, (8,)).numpy()
    draws, trace = R.TorchCPUGenerator(seed), []
    tokens, steps = R.generate(P, prompt[0].numpy(), draws, trace=trace, **kw)
    assert out.sequences[0].tolist() == tokens, f"seed {seed} {kw}\n hf  {out.sequences[0].tolist()}\n ref {tokens}"
    new = out.sequences.shape[1] - PROMPT
    valid = new if kw.get("pad_token_id") is None else int((out.sequences[0, PROMPT:] != kw["pad_token_id"]).sum())
    assert round(valid / out.tokens_per_forward.item()) == sum(steps), (steps, out.tokens_per_forward)
    np.testing.assert_array_equal(draws.randint(V, 8), hf_next)    # both consumed the same draws
    return tokens, steps, trace


def test_generate_matches_transformers(gen):
    """(c) whole generations, token for token, three stop-rule settings and an EOS stop."""
    model, P = gen
    base = dict(max_new_tokens=40, max_denoising_steps=24, entropy_bound=0.5)
    runs = [
        (0, dict(base, t_min=0.2, t_max=0.4, stability_threshold=1, confidence_threshold=0.3)),
        (1, dict(base, t_min=0.2, t_max=0.4, stability_threshold=0, confidence_threshold=0.3)),
        (2, dict(base, t_min=0.05, t_max=0.1, stability_threshold=2, confidence_threshold=100.0)),
    ]
    traces, first = [], None
    for seed, kw in runs:
        tokens, steps, trace = _both(model, P, seed, **kw)
        assert len(tokens) == PROMPT + 3 * C and len(steps) == 3   # ceil(40/16) blocks, not cut to 40
        traces += trace
        first = first or (tokens, steps)
    accepted = {a for _, _, a, _, _ in traces}
    assert len(accepted) >= 8 and max(accepted) == C, accepted          # the bound lets few..all through
    early = [(b, cur) for b, cur, _, stable, confident in traces if stable and confident and cur > 1]
    assert early, "no block stopped early"
    assert any(s and not c for *_, s, c in traces) and any(c and not s for *_, s, c in traces)

    # EOS: a token of block 2 absent from block 1 (not its last token) -> stop after block 2, pad after it
    tokens = first[0]
    b1, b2 = tokens[PROMPT:PROMPT + C], tokens[PROMPT + C:PROMPT + 2 * C]
    eos = next(t for t in b2[:-1] if t not in b1 and t != 0)
    tokens, steps, _ = _both(model, P, runs[0][0], eos_token_id=eos, pad_token_id=0, **runs[0][1])
    cut = b2.index(eos) + 1
    assert len(steps) == 2 and tokens == first[0][:PROMPT + C + cut] + [0] * (C - cut)
