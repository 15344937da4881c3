"""NumPy float64 reference of Google's DiffusionGemma block diffusion.

The authority is transformers 5.25, ``transformers/models/diffusion_gemma/``:
``modeling_diffusion_gemma.py`` (the network) and ``generation_diffusion_gemma.py`` (the sampler
and ``DiffusionGemmaGenerationMixin.generate``).  Every function below names the code it mirrors;
tests/test_diffusion_gemma_reference.py checks them against it.  One sequence (no batch), text
only, the default DynamicCache path of ``generate`` (not the static-cache/compiled one).

What the code does (where it is easy to get wrong):

* One body, two passes.  The encoder (``DiffusionGemmaEncoderTextModel``) runs causally over the
  prompt and later over each finished block ("commit pass") and appends their K/V to the cache.
  The decoder (``DiffusionGemmaDecoderModel``) runs the canvas at positions L..L+C-1
  (L = tokens in the cache), bidirectionally, over cache + canvas, and never writes the cache.
* All weights are tied between encoder and decoder (``DiffusionGemmaModel._tied_weights_keys``),
  and ``lm_head`` is the embedding -- except the ``layer_scalar`` buffers (buffers are not tied),
  so each pass has its own per-layer scalar.  Only the decoder has ``self_conditioning``.
* Sliding layers: the encoder uses the causal window ``i - W < j <= i`` (W = sliding_window).
  The DynamicCache keeps only the last W-1 tokens of a sliding layer
  (``DynamicSlidingWindowLayer.update``), and ``generate``'s decoder mask is None (the all-True
  2D mask short-circuits in ``create_diffusion_decoder_attention_mask``), so every canvas
  position sees the same last W-1 prefix tokens plus the whole canvas -- no window inside it.
* Full ("global") layers: head_dim/kv-heads from ``per_layer_config`` (``global_head_dim``,
  ``num_global_key_value_heads``), no v_proj (V is the raw k_proj output, before k_norm and
  RoPE), proportional RoPE (the first ``int(p*hd//2)`` frequencies ``theta**(-2i/hd)``, the rest 0).
* q_norm/k_norm RMSNorm with scale, v_norm without scale; attention scale 1.0.
* Every layer has the dense GeGLU MLP *and* the top-k MoE (unconditionally; ``num_experts`` must
  be set); each branch has its own post-norm, their sum gets ``post_feedforward_layernorm``.
* RMSNorm is ``x * (mean(x^2) + eps) ** -0.5 * w`` (w used as is, not 1 + w).

Random draws come from an explicit source with ``randint(high, n)`` and ``exponential(shape)``;
``TorchCPUGenerator`` reproduces torch's default CPU generator, so ``generate`` here consumes the
very draws ``torch.manual_seed(seed); model.generate(...)`` consumes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


# ----------------------------------------------------------------------------- weights, config

@dataclass
class DiffusionGemmaParams:
    """Config values and float64 weights (``load_params``)."""

    vocab_size: int
    hidden_size: int
    num_heads: int
    layer_types: list
    head_dims: list            # per layer
    kv_heads: list             # per layer
    sliding_window: int
    rope: dict                 # layer_type -> rope_parameters
    eps: float
    softcap: float
    top_k: int
    canvas_length: int
    embed: np.ndarray          # [V, d], also the LM head
    final_norm: np.ndarray
    layers: list               # per layer: dict of shared weights
    enc_scalar: list           # per layer: encoder layer_scalar
    dec_scalar: list           # per layer: decoder layer_scalar
    sc: dict                   # self-conditioning weights
    inv_freq: dict = field(default_factory=dict)


_LAYER_KEYS = [
    "input_layernorm.weight", "post_attention_layernorm.weight", "pre_feedforward_layernorm.weight",
    "post_feedforward_layernorm.weight", "post_feedforward_layernorm_1.weight",
    "post_feedforward_layernorm_2.weight", "pre_feedforward_layernorm_2.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "self_attn.q_norm.weight", "self_attn.k_norm.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "router.scale", "router.per_expert_scale", "router.proj.weight",
    "experts.gate_up_proj", "experts.down_proj",
]


def load_params(state_dict: dict, config: dict) -> DiffusionGemmaParams:
    """Weights from a ``DiffusionGemmaForBlockDiffusion`` state dict plus its ``config.to_dict()``.

    Tied weights may be present under either name (``_tied_weights_keys``: encoder layers/norm/
    embedding <-> decoder, ``lm_head`` <-> embedding); the ``layer_scalar`` buffers are read per
    pass.  Head sizes of full-attention layers follow ``DiffusionGemmaTextConfig.__post_init__``.
    """
    text = config.get("text_config", config)
    if text.get("use_bidirectional_attention") == "all":
        raise NotImplementedError("use_bidirectional_attention='all' (bidirectional encoder) is not mirrored")
    f64 = lambda a: np.asarray(a, dtype=np.float64)

    def get(*names):
        for name in names:
            if name in state_dict:
                return f64(state_dict[name])
        raise KeyError(names[0])

    n_layers, layer_types = text["num_hidden_layers"], list(text["layer_types"])
    overrides = {int(k): v for k, v in (text.get("per_layer_config") or {}).items()}
    if not overrides:   # raw checkpoint config: the kwargs __post_init__ turns into per_layer_config
        glob = {"head_dim": text.get("global_head_dim", 512)}
        if text.get("num_global_key_value_heads") is not None:
            glob["num_key_value_heads"] = text["num_global_key_value_heads"]
        overrides = {i: glob for i, t in enumerate(layer_types) if t == "full_attention"}
    head_dims = [overrides.get(i, {}).get("head_dim", text["head_dim"]) for i in range(n_layers)]
    kv_heads = [overrides.get(i, {}).get("num_key_value_heads", text["num_key_value_heads"]) for i in range(n_layers)]

    enc, dec = "model.encoder.language_model.", "model.decoder."
    layers, enc_scalar, dec_scalar = [], [], []
    for i in range(n_layers):
        L = {}
        for key in _LAYER_KEYS:
            if key == "self_attn.v_proj.weight" and layer_types[i] != "sliding_attention":
                continue   # full layers have no v_proj
            L[key] = get(f"{dec}layers.{i}.{key}", f"{enc}layers.{i}.{key}")
        layers.append(L)
        enc_scalar.append(float(get(f"{enc}layers.{i}.layer_scalar").reshape(-1)[0]))
        dec_scalar.append(float(get(f"{dec}layers.{i}.layer_scalar").reshape(-1)[0]))
    sc = {k: get(f"{dec}self_conditioning.{k}.weight") for k in ("pre_norm", "gate_proj", "up_proj", "down_proj")}
    P = DiffusionGemmaParams(
        vocab_size=text["vocab_size"], hidden_size=text["hidden_size"], num_heads=text["num_attention_heads"],
        layer_types=layer_types, head_dims=head_dims, kv_heads=kv_heads, sliding_window=text["sliding_window"],
        rope=text["rope_parameters"], eps=text["rms_norm_eps"],
        softcap=text.get("final_logit_softcapping", 30.0),   # a class attribute: absent from to_dict()
        top_k=text["top_k_experts"], canvas_length=config.get("canvas_length", 256),
        embed=get(f"{dec}embed_tokens.weight", f"{enc}embed_tokens.weight", "lm_head.weight"),
        final_norm=get(f"{dec}norm.weight", f"{enc}norm.weight"),
        layers=layers, enc_scalar=enc_scalar, dec_scalar=dec_scalar, sc=sc)
    for i, t in enumerate(layer_types):
        P.inv_freq[i] = rope_inv_freq(P.rope[t], head_dims[i])
    return P


# ----------------------------------------------------------------------------- building blocks

def rms_norm(x, weight=None, eps=1e-6):
    """``DiffusionGemmaRMSNorm``: x * (mean(x^2) + eps)^-0.5, times ``weight`` if it has one."""
    y = x * (np.mean(x * x, axis=-1, keepdims=True) + eps) ** -0.5
    return y if weight is None else y * weight


def gelu_tanh(x):
    """``gelu_pytorch_tanh``: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(z, axis=-1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def rope_inv_freq(rope_params: dict, head_dim: int) -> np.ndarray:
    """Inverse frequencies, length head_dim/2.

    ``default`` (``DiffusionGemmaTextRotaryEmbedding.compute_default_rope_parameters``, partial
    factor 1): theta^(-2i/hd).  ``proportional`` (``modeling_rope_utils.
    _compute_proportional_rope_parameters``): the first int(p*hd//2) of theta^(-2i/hd) -- the
    exponent divides by the full head_dim -- then zeros (those dims are not rotated), / factor.
    (transformers builds these, and the angles, in float32; here they are float64.)
    """
    theta, kind = rope_params["rope_theta"], rope_params["rope_type"]
    if kind == "default":
        dim = int(head_dim * rope_params.get("partial_rotary_factor", 1.0))
        assert dim == head_dim, "default RoPE with a partial factor does not run in transformers either"
        return 1.0 / theta ** (np.arange(0, dim, 2) / dim)
    assert kind == "proportional", kind
    n_rot = int(rope_params.get("partial_rotary_factor", 1.0) * head_dim // 2)
    inv = np.zeros(head_dim // 2)
    inv[:n_rot] = 1.0 / theta ** (np.arange(0, 2 * n_rot, 2) / head_dim)
    return inv / rope_params.get("factor", 1.0)


def apply_rope(x, positions, inv_freq):
    """``apply_rotary_pos_emb`` (NeoX halves: dim i pairs with i + hd/2); x is [T, heads, hd]."""
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1))[:, None], np.sin(np.concatenate([ang, ang], -1))[:, None]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def attention(q, k, v, allowed=None):
    """Grouped-query attention with scale 1.0 (``DiffusionGemma*TextAttention.scaling``).

    q [Tq, H, hd], k/v [Tk, Hkv, hd] (query head h reads kv head h // (H/Hkv), ``repeat_kv``),
    ``allowed`` a [Tq, Tk] boolean mask or None (all).  Returns [Tq, H*hd].
    """
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.einsum("qhd,khd->hqk", q, k)
    if allowed is not None:
        s = np.where(allowed[None], s, -np.inf)
    return np.einsum("hqk,khd->qhd", softmax(s), v).reshape(q.shape[0], -1)


def moe(L, x, eps, top_k):
    """``DiffusionGemmaTextRouter`` + ``DiffusionGemmaTextExperts`` on the layer's residual x.

    Router: softmax(proj(rmsnorm_noscale(x) * scale / sqrt(d))), top-k, renormalised to sum 1,
    times ``per_expert_scale[expert]``.  Experts see rmsnorm(x, pre_feedforward_layernorm_2);
    expert e: down_e(gelu(gate_e x) * up_e x), gate/up the two halves of ``gate_up_proj[e]``.
    """
    d = x.shape[-1]
    probs = softmax((rms_norm(x, None, eps) * L["router.scale"] * d ** -0.5) @ L["router.proj.weight"].T)
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    w = np.take_along_axis(probs, idx, -1)
    w = w / w.sum(-1, keepdims=True) * L["router.per_expert_scale"][idx]
    xe = rms_norm(x, L["pre_feedforward_layernorm_2.weight"], eps)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(top_k):
            e = idx[t, j]
            gate, up = np.split(L["experts.gate_up_proj"][e] @ xe[t], 2)
            out[t] += w[t, j] * (L["experts.down_proj"][e] @ (gelu_tanh(gate) * up))
    return out


def layer_forward(P, i, x, positions, past_kv, allowed, scalar):
    """One ``DiffusionGemmaEncoderTextLayer`` / ``DiffusionGemmaDecoderTextLayer``.

    Pre-norm attention and FF blocks, each output RMS-normed before it joins the residual; the
    MoE is routed from that residual (not from the FF's input norm); finally the whole residual
    stream is multiplied by the pass's ``layer_scalar``.  Attention reads ``past_kv`` (K/V of
    earlier tokens, already trimmed to what this pass may see) followed by the new tokens' own
    K/V.  Returns (new x, (K, V) of the new tokens).
    """
    L, eps, hd = P.layers[i], P.eps, P.head_dims[i]
    T = x.shape[0]
    h = rms_norm(x, L["input_layernorm.weight"], eps)
    q = rms_norm((h @ L["self_attn.q_proj.weight"].T).reshape(T, -1, hd), L["self_attn.q_norm.weight"], eps)
    k_raw = (h @ L["self_attn.k_proj.weight"].T).reshape(T, -1, hd)
    v = (h @ L["self_attn.v_proj.weight"].T).reshape(T, -1, hd) if "self_attn.v_proj.weight" in L else k_raw
    k = apply_rope(rms_norm(k_raw, L["self_attn.k_norm.weight"], eps), positions, P.inv_freq[i])
    v = rms_norm(v, None, eps)
    q = apply_rope(q, positions, P.inv_freq[i])
    keys, vals = np.concatenate([past_kv[0], k]), np.concatenate([past_kv[1], v])
    a = attention(q, keys, vals, allowed) @ L["self_attn.o_proj.weight"].T
    x = x + rms_norm(a, L["post_attention_layernorm.weight"], eps)
    hm = rms_norm(x, L["pre_feedforward_layernorm.weight"], eps)
    dense = (gelu_tanh(hm @ L["mlp.gate_proj.weight"].T) * (hm @ L["mlp.up_proj.weight"].T)) @ L["mlp.down_proj.weight"].T
    ff = rms_norm(dense, L["post_feedforward_layernorm_1.weight"], eps) + \
        rms_norm(moe(L, x, eps, P.top_k), L["post_feedforward_layernorm_2.weight"], eps)
    x = x + rms_norm(ff, L["post_feedforward_layernorm.weight"], eps)
    return x * scalar, (k, v)


def lm_logits(P, h):
    """``DiffusionGemmaForBlockDiffusion.forward``: tied head, then cap * tanh(z / cap)."""
    return P.softcap * np.tanh((h @ P.embed.T) / P.softcap)


def empty_cache(P):
    """Per layer (K [T, Hkv, hd], V [T, Hkv, hd]) of every token encoded so far (all of them, also
    for sliding layers; ``decoder_forward`` keeps the last W-1 itself)."""
    return [(np.zeros((0, P.kv_heads[i], P.head_dims[i])),) * 2 for i in range(len(P.layers))]


def encoder_forward(P, tokens, cache=None):
    """``DiffusionGemmaEncoderTextModel.forward``: causal pass over new tokens, appending their K/V.

    Tokens sit at positions past..past+n-1 (past = tokens already in ``cache``); query i sees key j
    iff j <= i, and on sliding layers also j > i - W (``sliding_window_overlay``).  Input embedding
    E[t] * sqrt(d) (``DiffusionGemmaTextScaledWordEmbedding``), encoder layer scalars.
    Returns (final-normed hidden [n, d], logits [n, V] = ``lm_logits`` of it -- not a transformers
    output, ``generate`` only keeps the cache -- and the extended cache).
    """
    cache = empty_cache(P) if cache is None else cache
    tokens = np.asarray(tokens)
    past, n = cache[0][0].shape[0], len(tokens)
    pos = np.arange(past, past + n)
    kpos = np.arange(past + n)
    x = P.embed[tokens] * math.sqrt(P.hidden_size)
    new_cache = []
    for i, t in enumerate(P.layer_types):
        allowed = kpos[None, :] <= pos[:, None]
        if t == "sliding_attention":
            allowed &= kpos[None, :] > pos[:, None] - P.sliding_window
        x, (k, v) = layer_forward(P, i, x, pos, cache[i], allowed, P.enc_scalar[i])
        new_cache.append((np.concatenate([cache[i][0], k]), np.concatenate([cache[i][1], v])))
    h = rms_norm(x, P.final_norm, P.eps)
    return h, lm_logits(P, h), new_cache


def self_conditioning_input(P, canvas, sc_logits=None):
    """Decoder input embeddings (``DiffusionGemmaDecoderModel.forward`` + ``DiffusionGemmaSelfConditioning``).

    x = rmsnorm_noscale(E[c] sqrt(d) + SC(rmsnorm(s, pre_norm))), SC = down(gelu(gate .) * up .),
    s = softmax(sc_logits) @ E * sqrt(d); with no logits s = 0, so SC(0) = 0 and
    x = rmsnorm_noscale(E[c] sqrt(d)) -- the post-norm is applied on the first step too.
    """
    scale = math.sqrt(P.hidden_size)
    emb = P.embed[np.asarray(canvas)] * scale
    if sc_logits is None:
        return rms_norm(emb, None, P.eps)
    s = softmax(np.asarray(sc_logits, dtype=np.float64)) @ P.embed * scale
    n = rms_norm(s, P.sc["pre_norm"], P.eps)
    sig = (gelu_tanh(n @ P.sc["gate_proj"].T) * (n @ P.sc["up_proj"].T)) @ P.sc["down_proj"].T
    return rms_norm(emb + sig, None, P.eps)


def decoder_hidden(P, canvas, cache, sc_logits=None):
    """``DiffusionGemmaDecoderModel.forward``: the canvas's final-normed hidden states [C, d].

    Canvas positions L..L+C-1 (L = tokens in ``cache``); no mask: full layers see the whole cache and
    the canvas, sliding layers the cache's last W-1 tokens (``DynamicSlidingWindowLayer`` keeps
    ``[-W+1:]``) and the canvas; decoder layer scalars; the cache is read only.
    """
    past, C = cache[0][0].shape[0], len(canvas)
    pos = np.arange(past, past + C)
    x = self_conditioning_input(P, canvas, sc_logits)
    for i, t in enumerate(P.layer_types):
        k, v = cache[i]
        if t == "sliding_attention":
            k, v = k[-P.sliding_window + 1:], v[-P.sliding_window + 1:]   # same slice as transformers
        x, _ = layer_forward(P, i, x, pos, (k, v), None, P.dec_scalar[i])
    return rms_norm(x, P.final_norm, P.eps)


def decoder_forward(P, canvas, cache, sc_logits=None):
    """``DiffusionGemmaForBlockDiffusion.forward(decoder_input_ids=canvas, cache=cache,
    self_conditioning_logits=sc_logits)``: canvas logits [C, V] (transformers returns them as float32)."""
    return lm_logits(P, decoder_hidden(P, canvas, cache, sc_logits))


# ----------------------------------------------------------------------------- random draws

class TorchCPUGenerator:
    """Draws identical to torch's default CPU generator after ``torch.manual_seed(seed)``.

    torch's CPU generator is an MT19937 seeded like numpy's legacy ``RandomState(seed)``.
    * ``torch.randint(0, high, size)`` (high < 2^32): one 32-bit output per value, ``% high``.
    * ``Tensor.exponential_()``: u = (64-bit output & (2^53-1)) * 2^-53 (64 = first<<32 | second),
      value -log1p(-u).
    * ``torch.multinomial(p, 1)`` (CPU, one sample): ``argmax(p / exponential_(like p))``, row major.
    """

    def __init__(self, seed: int):
        self.bits = np.random.MT19937()
        self.bits._legacy_seeding(seed)

    def randint(self, high: int, n: int) -> np.ndarray:
        assert high < 2 ** 32
        return (self.bits.random_raw(n) % np.uint64(high)).astype(np.int64)

    def exponential(self, shape) -> np.ndarray:
        raw = self.bits.random_raw(2 * int(np.prod(shape)))
        u = (((raw[0::2] << np.uint64(32)) | raw[1::2]) & np.uint64(2 ** 53 - 1)) * 2.0 ** -53
        return -np.log1p(-u).reshape(shape)


class NumpyDraws:
    """Any other source: a ``numpy.random.Generator``."""

    def __init__(self, rng):
        self.rng = rng

    def randint(self, high, n):
        return self.rng.integers(0, high, n)

    def exponential(self, shape):
        return self.rng.exponential(size=shape)


# ----------------------------------------------------------------------------- sampler

def temperature(cur_step: int, max_steps: int, t_min: float, t_max: float) -> float:
    """``LinearTemperatureScheduleLogitsProcessor``: t_min + (t_max - t_min) * cur_step / N.

    ``cur_step`` counts the steps *remaining*: N on the first step (T = t_max), 1 on the last
    (T = t_min + (t_max - t_min)/N; t_min itself is never reached).  Logits are divided by it.
    """
    return t_min + (t_max - t_min) * (cur_step / max_steps)


def entropy(logits):
    """``torch.distributions.Categorical(logits=z).entropy()`` over the last axis."""
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    return -(np.exp(logp) * logp).sum(-1)


def sample_categorical(probs, exponentials):
    """``torch.multinomial(probs, 1)`` on CPU: argmax(p / Exp(1)) per row (an exponential race)."""
    return np.argmax(probs / exponentials, axis=-1)


def entropy_bound_accept(processed_logits, bound: float):
    """``EntropyBoundSampler.accept_canvas``'s mask: sort the positions' entropies ascending and
    accept the prefix whose sum *of the earlier ones* (cumsum - own) is <= bound -- the lowest-
    entropy position always passes.  (Ties in entropy are ordered as np's stable sort does.)"""
    h = entropy(processed_logits)
    order = np.argsort(h, kind="stable")
    sorted_h = h[order]
    mask = np.zeros(h.shape, dtype=bool)
    mask[order] = np.cumsum(sorted_h) - sorted_h <= bound
    return mask


def renoise(accept_mask, denoiser_canvas, random_canvas):
    """``accept_canvas`` then ``renoise_canvas``: where(accepted, denoiser sample, fresh uniform).

    The previous canvas does not survive anywhere: accepted positions take this step's sample,
    the others a new uniform token (a whole canvas of uniforms is drawn every step).
    """
    return np.where(accept_mask, denoiser_canvas, random_canvas)


class StopRule:
    """``StableAndConfidentStoppingCriteria``: stop when the argmax canvas equals each of the last
    ``stability`` argmax canvases (history starts as -1, so never before step stability+1; 0
    means always stable) and the mean entropy of the processed logits is < ``confidence``."""

    def __init__(self, stability: int, confidence: float):
        self.stability, self.confidence, self.history, self.last = stability, confidence, [], None

    def __call__(self, argmax_canvas, processed_logits) -> bool:
        stable = len(self.history) == self.stability and all(np.array_equal(h, argmax_canvas) for h in self.history)
        self.history = (self.history + [np.array(argmax_canvas)])[-self.stability:] if self.stability else []
        self.last = (stable, bool(entropy(processed_logits).mean() < self.confidence))
        return all(self.last)


# ----------------------------------------------------------------------------- generate

def generate(P, prompt, draws, *, max_new_tokens=256, max_denoising_steps=48, entropy_bound=0.1,
             t_min=0.4, t_max=0.8, stability_threshold=1, confidence_threshold=0.005,
             eos_token_id=None, pad_token_id=None, trace=None):
    """``DiffusionGemmaGenerationMixin.generate`` for one sequence; defaults are
    ``DiffusionGemmaGenerationConfig._get_default_generation_params``.

    Per block (at most ceil(max_new_tokens / C) blocks; the last is not cut, so up to C-1 tokens
    more than max_new_tokens come out):
      1. encoder pass over the prompt (first block) or the previous block (commit pass);
      2. canvas = C uniform tokens; no self-conditioning logits; stop-rule history reset;
      3. for cur_step = N..1: z = decoder logits / T(cur_step); sample = multinomial(softmax(z));
         argmax = argmax(z); accept by entropy bound; renoise the rest; stop rule on (argmax, z);
         z becomes the next step's self-conditioning logits; break if stopped;
      4. the block is the last step's argmax (not the sampled canvas);
      5. stop if the block holds an EOS (or the length reached prompt + max_new_tokens); then the
         tokens after the first EOS of the block become ``pad_token_id`` (when both are set).
    Returns (tokens, steps per block); ``trace``, a list, gets one (block, cur_step, accepted
    count, stable, confident) tuple per step.
    """
    V, C = P.vocab_size, P.canvas_length
    prompt = [int(t) for t in prompt]
    eos = set() if eos_token_id is None else set(np.atleast_1d(eos_token_id).tolist())
    out, cache, steps, pending = list(prompt), None, [], prompt
    for b in range(math.ceil(max_new_tokens / C)):
        _, _, cache = encoder_forward(P, pending, cache)
        if hasattr(draws, "begin_block"):     # a source keyed by position (llamadiff's counter RNG)
            draws.begin_block(len(out))
        canvas, sc, stop = draws.randint(V, C), None, StopRule(stability_threshold, confidence_threshold)
        argmax, n = canvas, 0
        for cur_step in range(max_denoising_steps, 0, -1):
            n += 1
            logits = decoder_forward(P, canvas, cache, sc)
            T = temperature(cur_step, max_denoising_steps, t_min, t_max)
            z = logits / T
            if hasattr(draws, "categorical"):    # a source with its own draw from softmax(logits / T)
                sample = draws.categorical(logits, T)
            else:
                sample = sample_categorical(softmax(z), draws.exponential((C, V)))
            argmax = np.argmax(z, -1)
            accepted = entropy_bound_accept(z, entropy_bound)
            canvas = renoise(accepted, sample, draws.randint(V, C))
            sc, stopped = z, stop(argmax, z)
            if trace is not None:
                trace.append((b, cur_step, int(accepted.sum())) + stop.last)
            if stopped:
                break
        steps.append(n)
        block = [int(t) for t in argmax]
        out += block
        hit = [j for j, t in enumerate(block) if t in eos]
        if hit or len(out) >= len(prompt) + max_new_tokens:
            if hit and pad_token_id is not None:
                out[len(out) - C + hit[0] + 1:] = [pad_token_id] * (C - hit[0] - 1)
            break
        pending = block
    return out, steps
