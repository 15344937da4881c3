"""Writers for tiny random-weight GGUF models, for tests and benchmarks.

The models written here load in llama.cpp like real converted checkpoints
but need no download: every weight is drawn from a seeded numpy generator,
so the same arguments always give a byte-identical file.

Ten architectures are supported, the ones llamadiff runs:

* ``qwen3``: a plain Qwen3 GGUF.  Block-diffusion checkpoints (SDAR,
  TraDo, ...) are exactly that, with a ``<|MASK|>`` token in the
  vocab; like real conversions they usually carry no
  ``tokenizer.ggml.mask_token_id``, so by default none is written.
* ``qwen3moe``: the mixture-of-experts Qwen3 (SDAR MoE checkpoints are
  that), with the same vocab and mask-token defaults as ``qwen3``.
* ``qwen2`` (q/k/v biases; Fast-dLLM v2's body), ``llama`` (NORM RoPE) and
  ``bailingmoe2`` (fused QKV, q/k norm, partial RoPE, sigmoid-gated experts
  in groups with a selection bias, a shared expert and leading dense layers;
  LLaDA2.0's body) and ``mistral3`` (Ministral 3: llama's layout with the
  llama-4 attention temperature; Nemotron-Labs-Diffusion's body): the other
  causal bodies block diffusion runs on, with the same defaults as ``qwen3``.
* ``llada`` and ``dream``: llama.cpp's own diffusion architectures, written
  with the metadata ``convert_hf_to_gguf.py`` gives them (non-causal
  attention, mask token id, ``diffusion.shift_logits`` for LLaDA).
* ``llada-moe`` and ``rnd1``: llama.cpp's mixture-of-experts diffusion
  architectures (LLaDA-MoE; RND1, a Qwen3-MoE made bidirectional), again
  with their converters' metadata (non-causal attention, mask token id,
  ``diffusion.shift_logits`` = false for LLaDA-MoE only).

The MoE archs get ``ModelShape.n_expert`` experts (``n_expert_used`` routed
per token) of feed-forward width ``n_ff_exp``, stored as llama.cpp's 3-D
``ffn_{gate,up,down}_exps`` tensors plus an F32 router ``ffn_gate_inp``;
they have no dense FFN.  The dense archs ignore those fields.

The vocab is a GPT-2 style byte-level BPE vocab: the 256 byte tokens, a
handful of merges (so that "hello world" tokenizes to two tokens), and the
special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` and
``<|MASK|>``.  It can be padded with ordinary tokens up to a realistic size
so that benchmarks see a realistic logits width.

:func:`read_model` reads a file back (weights as float64 in ``out x in``
layout), which is what the float64 reference forward pass in the test suite
consumes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import zlib
from typing import Any, Mapping, NamedTuple

import numpy as np

import gguf
from gguf import GGUFValueType, TokenType

from llamadiff.convert import FAMILIES as CONVERT_FAMILIES

__all__ = [
    "ARCHS",
    "rewrite_model",
    "QWEN_CHAT_TEMPLATE",
    "ModelShape",
    "Vocab",
    "ModelData",
    "byte_vocab",
    "write_model",
    "write_qwen3",
    "write_llada",
    "write_dream",
    "write_qwen3moe",
    "write_llada_moe",
    "write_rnd1",
    "write_qwen2",
    "write_llama",
    "write_mistral3",
    "write_bailingmoe2",
    "read_model",
    "HF_FAMILIES",
    "write_hf_checkpoint",
    "write_sdar_checkpoint",
]

ARCHS = ("qwen3", "llada", "dream", "qwen3moe", "llada-moe", "rnd1", "qwen2", "llama", "bailingmoe2",
         "mistral3")

# How llama.cpp applies RoPE for each architecture (llama_model_rope_type):
# "neox" rotates pairs (i, i + n_rot/2), "norm" rotates pairs (2i, 2i + 1).
ROPE_TYPE = {"qwen3": "neox", "dream": "neox", "llada": "norm",
             "qwen3moe": "neox", "llada-moe": "neox", "rnd1": "neox",
             "qwen2": "neox", "llama": "norm", "bailingmoe2": "neox", "mistral3": "norm"}

# Architectures llama.cpp always runs with bidirectional attention (their
# load_arch_hparams force causal_attn = false, whatever the metadata says);
# llm_arch_is_diffusion is true for exactly these.
DIFFUSION_ARCHS = ("llada", "dream", "llada-moe", "rnd1")

# Causal bodies: block diffusion runs on them (with a mask token in the vocab).
CAUSAL_ARCHS = ("qwen3", "qwen3moe", "qwen2", "llama", "bailingmoe2", "mistral3")

# Mixture-of-experts architectures: routed experts instead of a dense FFN.
# bailingmoe2 adds a shared expert, a selection bias and leading dense layers.
MOE_ARCHS = ("qwen3moe", "llada-moe", "rnd1", "bailingmoe2")

# How each MoE arch weighs its routed experts (build_moe_ffn's arguments in
# src/models/<arch>.cpp): gating function, and whether the chosen experts'
# weights are renormalised to sum to 1.  bailingmoe2 reads both from metadata.
MOE_GATING = {"qwen3moe": ("softmax", True), "llada-moe": ("softmax", False),
              "rnd1": ("softmax", True)}
GATING_FUNCS = {1: "softmax", 2: "sigmoid", 3: "softmax_weight", 4: "sqrt_softplus"}

# Architectures with per-head RMSNorm on q and k (attn_{q,k}_norm).
_QK_NORM_ARCHS = ("qwen3", "qwen3moe", "llada-moe", "rnd1", "bailingmoe2")

# Architectures whose q/k/v projections are one fused attn_qkv tensor.
_FUSED_QKV_ARCHS = ("bailingmoe2",)

# Qwen's simple ChatML template; llama.cpp recognises it as "chatml".
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Merges in rank order.  Each one only joins tokens that exist already, and
# no earlier merge splits the words the later ones build, so "hello world"
# becomes ["hello", "Ġworld"] and " the" becomes ["Ġthe"].
_MERGES = (
    "Ġ t", "Ġ a", "h e", "i n", "r e", "e r", "Ġt h", "Ġth e",
    "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|MASK|>")


# --------------------------------------------------------------------------
# vocab
# --------------------------------------------------------------------------

def _bytes_to_unicode() -> list[tuple[int, str]]:
    """GPT-2's byte -> printable character map, in GPT-2 vocab order.

    Printable latin-1 bytes map to themselves and come first; the others
    (controls, space, ...) map to U+0100 onwards.  The order matches the
    first 256 ids of GPT-2 and Qwen vocabs ("!" is token 0).
    """
    bs = (list(range(ord("!"), ord("~") + 1))
          + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [(b, chr(c)) for b, c in zip(bs, cs)]


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A tokenizer vocab as stored in GGUF.

    ``special`` maps the text of each special (CONTROL) token to its id.
    """

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special: dict[str, int]

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    def id(self, text: str) -> int:
        """Id of the token whose text is exactly ``text``."""
        try:
            return self.special[text]
        except KeyError:
            return self.tokens.index(text)

    @property
    def eos_id(self) -> int:
        return self.special["<|endoftext|>"]

    @property
    def eot_id(self) -> int:
        return self.special["<|im_end|>"]

    @property
    def mask_id(self) -> int:
        return self.special["<|MASK|>"]


def byte_vocab(n_vocab_pad: int = 0) -> Vocab:
    """The test vocab: bytes, merges, special tokens, then ``n_vocab_pad`` fillers.

    Fillers are NORMAL tokens named ``<|extra_N|>``.  They sit after the
    special tokens so the special ids do not depend on the padding, and
    they are NORMAL rather than USER_DEFINED because llama.cpp scans every
    USER_DEFINED token on each tokenize call, which would make a 150k
    vocab very slow to tokenize with.  BPE never produces them.
    """
    if n_vocab_pad < 0:
        raise ValueError("n_vocab_pad must be >= 0")
    tokens = [ch for _, ch in _bytes_to_unicode()]
    types = [int(TokenType.NORMAL)] * len(tokens)
    known = set(tokens)
    for merge in _MERGES:
        left, right = merge.split(" ")
        assert left in known and right in known, merge
        merged = left + right
        if merged not in known:
            tokens.append(merged)
            types.append(int(TokenType.NORMAL))
            known.add(merged)
    special = {}
    for text in SPECIAL_TOKENS:
        special[text] = len(tokens)
        tokens.append(text)
        types.append(int(TokenType.CONTROL))
    for i in range(n_vocab_pad):
        tokens.append(f"<|extra_{i}|>")
        types.append(int(TokenType.NORMAL))
    return Vocab(tokens=tokens, token_types=types, merges=list(_MERGES), special=special)


# --------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------

@dataclasses.dataclass
class ModelShape:
    """Model dimensions.  The defaults make a model of a few hundred kB.

    ``qkv_bias`` None means the architecture's own choice (Dream, being
    Qwen2-like, has q/k/v biases; Qwen3 and LLaDA do not).  ``n_vocab_pad``
    appends that many filler tokens to the vocab (see :func:`byte_vocab`),
    e.g. ``151936 - len(byte_vocab().tokens)`` for a Qwen-sized vocab.

    ``n_expert``, ``n_expert_used`` and ``n_ff_exp`` size the routed experts
    of the MoE archs (qwen3moe, llada-moe, rnd1, bailingmoe2); ``n_ff`` is
    then only written as ``feed_forward_length``, as real MoE conversions
    do.  The dense archs ignore all three.

    bailingmoe2 alone reads the rest: ``n_expert_shared`` shared experts
    (width ``n_ff_exp`` each), ``n_dense_lead`` leading layers with a dense
    FFN of width ``n_ff``, experts in ``n_expert_groups`` groups of which
    ``n_group_used`` are searched, ``expert_weights_scale`` on the routed
    weights, and RoPE on the first ``n_rot`` dims of each head (None: all;
    its default, like Ling 2.0's ``partial_rotary_factor`` 0.5, is half).
    """

    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 16
    n_ff: int = 128
    n_ctx_train: int = 4096
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    tie_embeddings: bool = False
    qkv_bias: bool | None = None
    n_vocab_pad: int = 0
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_exp: int = 32
    n_expert_shared: int = 1
    n_dense_lead: int = 1
    n_expert_groups: int = 2
    n_group_used: int = 1
    expert_weights_scale: float = 2.5
    # mistral3 (Ministral 3, Nemotron-Labs-Diffusion's body): llama-4 attention temperature,
    # q scaled by 1 + beta * log(1 + floor(pos / attn_temp_length)) (beta 0: off)
    attn_temp_beta: float = 0.1
    attn_temp_length: int = 8
    n_rot: int | None = None


class _Tensor(NamedTuple):
    name: str
    shape: tuple[int, ...]  # numpy layout: (out, in) for matrices, (expert, out, in) for experts
    kind: str               # "embedding", "matrix", "router", "norm" or "bias"
    fan_in: int


def _tensor_dtype(t: _Tensor, wtype: np.dtype) -> np.dtype:
    """The stored type: ``wtype`` for weight matrices (2-D or 3-D), F32 otherwise.

    The MoE router (ffn_gate_inp) is always F32, as convert_hf_to_gguf.py keeps it.
    """
    return wtype if t.kind in ("matrix", "embedding") else np.dtype(np.float32)


def _tensor_plan(arch: str, shape: ModelShape, n_vocab: int, qkv_bias: bool) -> list[_Tensor]:
    """Tensors the arch's load_arch_tensors expects, in conversion order."""
    E, H, KV, D, F = shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim, shape.n_ff
    plan = [_Tensor("token_embd.weight", (n_vocab, E), "embedding", E)]
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        plan.append(_Tensor(p + "attn_norm.weight", (E,), "norm", E))
        if arch in _FUSED_QKV_ARCHS:
            # rows: q (H * D), then k and v (KV * D each), as build_qkv splits them
            plan.append(_Tensor(p + "attn_qkv.weight", ((H + 2 * KV) * D, E), "matrix", E))
        else:
            plan.append(_Tensor(p + "attn_q.weight", (H * D, E), "matrix", E))
            plan.append(_Tensor(p + "attn_k.weight", (KV * D, E), "matrix", E))
            plan.append(_Tensor(p + "attn_v.weight", (KV * D, E), "matrix", E))
        if qkv_bias:
            plan.append(_Tensor(p + "attn_q.bias", (H * D,), "bias", E))
            plan.append(_Tensor(p + "attn_k.bias", (KV * D,), "bias", E))
            plan.append(_Tensor(p + "attn_v.bias", (KV * D,), "bias", E))
        plan.append(_Tensor(p + "attn_output.weight", (E, H * D), "matrix", H * D))
        if arch in _QK_NORM_ARCHS:
            plan.append(_Tensor(p + "attn_q_norm.weight", (D,), "norm", D))
            plan.append(_Tensor(p + "attn_k_norm.weight", (D,), "norm", D))
        plan.append(_Tensor(p + "ffn_norm.weight", (E,), "norm", E))
        if arch in MOE_ARCHS and not (arch == "bailingmoe2" and i < shape.n_dense_lead):
            # GGML ne: gate_inp {E, X}; gate/up {E, FX, X}; down {FX, E, X}.
            X, FX = shape.n_expert, shape.n_ff_exp
            plan.append(_Tensor(p + "ffn_gate_inp.weight", (X, E), "router", E))
            if arch == "bailingmoe2":
                plan.append(_Tensor(p + "exp_probs_b.bias", (X,), "bias", E))
            plan.append(_Tensor(p + "ffn_gate_exps.weight", (X, FX, E), "matrix", E))
            plan.append(_Tensor(p + "ffn_up_exps.weight", (X, FX, E), "matrix", E))
            plan.append(_Tensor(p + "ffn_down_exps.weight", (X, E, FX), "matrix", FX))
            if arch == "bailingmoe2":
                FS = FX * shape.n_expert_shared
                plan.append(_Tensor(p + "ffn_gate_shexp.weight", (FS, E), "matrix", E))
                plan.append(_Tensor(p + "ffn_up_shexp.weight", (FS, E), "matrix", E))
                plan.append(_Tensor(p + "ffn_down_shexp.weight", (E, FS), "matrix", FS))
        else:
            plan.append(_Tensor(p + "ffn_gate.weight", (F, E), "matrix", E))
            plan.append(_Tensor(p + "ffn_up.weight", (F, E), "matrix", E))
            plan.append(_Tensor(p + "ffn_down.weight", (E, F), "matrix", F))
    plan.append(_Tensor("output_norm.weight", (E,), "norm", E))
    if not shape.tie_embeddings:
        plan.append(_Tensor("output.weight", (n_vocab, E), "matrix", E))
    return plan


def _make_tensor(t: _Tensor, seed: int, gain: float, wtype: np.dtype) -> np.ndarray:
    # One generator per tensor, keyed by its name: a tensor's values do not
    # depend on which other tensors the model has (e.g. tied or not).
    key = zlib.crc32(t.name.encode())
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(key,))))
    noise = rng.standard_normal(t.shape, dtype=np.float32)
    if t.kind == "norm":
        # Around 1, so RMSNorm keeps activations at unit scale.
        return (1.0 + np.float32(0.1) * noise).astype(np.float32)
    if t.kind == "bias":
        return (np.float32(0.1 * gain) * noise).astype(np.float32)
    # 1/sqrt(fan_in) keeps every projection's output near unit variance
    # (for a 3-D expert tensor, fan_in is its last dim: each expert's own).
    # The embedding uses the same scale so that tied output logits are
    # about N(0, 1) too, neither flat nor one-hot.
    noise *= np.float32(gain / np.sqrt(t.fan_in))
    return noise.astype(_tensor_dtype(t, wtype))


def _infer_value(key: str, value: Any) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], GGUFValueType):
        val, vtype = value
        sub = None
        if vtype == GGUFValueType.ARRAY:
            sub = GGUFValueType.get_type(val[0]) if len(val) else GGUFValueType.INT32
        return val, vtype, sub
    if isinstance(value, (bool, np.bool_)):
        return bool(value), GGUFValueType.BOOL, None
    if isinstance(value, (int, np.integer)):
        # llama.cpp reads ids, lengths and counts as uint32 and checks the type.
        vtype = GGUFValueType.UINT32 if value >= 0 else GGUFValueType.INT32
        return int(value), vtype, None
    if isinstance(value, (float, np.floating)):
        return float(value), GGUFValueType.FLOAT32, None
    if isinstance(value, str):
        return value, GGUFValueType.STRING, None
    if isinstance(value, (list, np.ndarray)):
        vals = list(value)
        if not vals:
            raise ValueError(f"metadata {key!r}: empty arrays cannot be typed")
        return vals, GGUFValueType.ARRAY, GGUFValueType.get_type(vals[0])
    raise TypeError(f"metadata {key!r}: unsupported value type {type(value).__name__}")


def write_model(
    path: str | os.PathLike[str],
    arch: str = "qwen3",
    *,
    shape: ModelShape | None = None,
    seed: int = 0,
    dtype: str = "f32",
    weight_scale: float | None = None,
    metadata: Mapping[str, Any] | None = None,
    mask_id_in_metadata: bool | None = None,
    block_length: int | None = None,
    tensors: Mapping[str, np.ndarray] | None = None,
) -> pathlib.Path:
    """Write a random-weight GGUF model and return its path.

    ``dtype`` ("f32" or "f16") is the type of the 2-D weight matrices; norm
    weights and biases are always F32, as in real conversions.
    ``weight_scale`` multiplies the standard deviation of every matrix and
    bias (default 1: each matrix has std 1/sqrt(fan_in)).
    ``mask_id_in_metadata`` writes ``tokenizer.ggml.mask_token_id``; it
    defaults to False for the causal archs (``CAUSAL_ARCHS``) and True for the diffusion
    archs (llada, dream, llada-moe, rnd1).
    ``block_length`` is written as ``diffusion.block_length`` (uint32).
    ``tensors`` gives the weights (GGUF names, numpy layout ``(out, in)``, or
    ``(n_expert, out, in)`` for expert tensors) instead of
    random ones -- how trained models are exported; every tensor of the plan must be there.
    ``metadata`` adds or replaces key/values after the defaults: a plain
    value gets an inferred type (non-negative int -> uint32, float ->
    float32, bool, str, list), a ``(value, GGUFValueType)`` pair an explicit
    one, and None removes the key.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}, expected one of {ARCHS}")
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    shape = dataclasses.replace(shape) if shape is not None else ModelShape()
    if shape.n_head % shape.n_head_kv:
        raise ValueError("n_head must be a multiple of n_head_kv")
    if shape.head_dim % 2:
        raise ValueError("head_dim must be even for RoPE")
    if arch in ("dream", "llada-moe") and shape.n_head * shape.head_dim != shape.n_embd:
        # llama.cpp sizes Dream's and LLaDA-MoE's q/o projections as
        # n_embd x n_embd (and Dream derives head_dim from n_embd / n_head).
        raise ValueError(f"{arch} needs n_head * head_dim == n_embd")
    if arch in MOE_ARCHS:
        if shape.n_expert < 1 or shape.n_ff_exp < 1:
            raise ValueError(f"{arch} needs n_expert >= 1 and n_ff_exp >= 1")
        if not 1 <= shape.n_expert_used <= shape.n_expert:
            raise ValueError("n_expert_used must be in [1, n_expert]")
    if arch in ("llada-moe", "bailingmoe2") and shape.tie_embeddings:
        # their load_arch_tensors require output.weight (no fallback).
        raise ValueError(f"{arch} cannot tie embeddings: llama.cpp requires output.weight")
    if arch in ("qwen2", "bailingmoe2") and shape.n_head * shape.head_dim != shape.n_embd:
        # llama.cpp sizes their q (and fused qkv) projections from n_embd
        raise ValueError(f"{arch} needs n_head * head_dim == n_embd")
    if arch == "bailingmoe2":
        if shape.n_expert_shared < 1:
            raise ValueError("bailingmoe2 needs n_expert_shared >= 1")
        if not 0 <= shape.n_dense_lead <= shape.n_layer:
            raise ValueError("n_dense_lead must be in [0, n_layer]")
        groups, used = shape.n_expert_groups, shape.n_group_used
        if groups > 1 and (shape.n_expert % groups or not 0 < used < groups or groups >= shape.n_expert):
            raise ValueError("n_expert_groups must divide n_expert (and be below it), with "
                             "0 < n_group_used < n_expert_groups")
    if arch == "bailingmoe2" and shape.n_rot is None:
        shape.n_rot = shape.head_dim // 2
    if shape.n_rot is not None and (shape.n_rot % 2 or not 0 < shape.n_rot <= shape.head_dim):
        raise ValueError("n_rot must be even and in [2, head_dim]")
    if shape.n_rot not in (None, shape.head_dim) and arch not in ("llama", "bailingmoe2"):   # the rest: whole heads
        raise ValueError(f"{arch} rotates whole heads: n_rot must be None or head_dim")
    if mask_id_in_metadata is None:
        mask_id_in_metadata = arch not in CAUSAL_ARCHS
    qkv_bias = shape.qkv_bias if shape.qkv_bias is not None else arch in ("dream", "qwen2")
    gain = 1.0 if weight_scale is None else float(weight_scale)
    wtype = np.dtype(np.float32 if dtype == "f32" else np.float16)

    vocab = byte_vocab(shape.n_vocab_pad)
    n_vocab = vocab.n_tokens
    eos = vocab.special["<|endoftext|>"]

    kv: dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]] = {}

    def put(key: str, value: Any, vtype: GGUFValueType) -> None:
        sub = None
        if vtype == GGUFValueType.ARRAY:
            sub = GGUFValueType.get_type(value[0])
        kv[key] = (value, vtype, sub)

    U32, F32, BOOL, STR, ARR = (GGUFValueType.UINT32, GGUFValueType.FLOAT32,
                                GGUFValueType.BOOL, GGUFValueType.STRING, GGUFValueType.ARRAY)
    put("general.name", f"llamadiff-test-{arch}", STR)
    put("general.file_type", int(gguf.LlamaFileType.ALL_F32 if dtype == "f32"
                                 else gguf.LlamaFileType.MOSTLY_F16), U32)
    put(f"{arch}.context_length", shape.n_ctx_train, U32)
    put(f"{arch}.embedding_length", shape.n_embd, U32)
    put(f"{arch}.block_count", shape.n_layer, U32)
    put(f"{arch}.feed_forward_length", shape.n_ff, U32)
    put(f"{arch}.attention.head_count", shape.n_head, U32)
    put(f"{arch}.attention.head_count_kv", shape.n_head_kv, U32)
    put(f"{arch}.rope.freq_base", float(shape.rope_theta), F32)
    put(f"{arch}.attention.layer_norm_rms_epsilon", float(shape.rms_eps), F32)
    if arch in ("qwen3", "qwen3moe", "llada-moe", "rnd1"):
        # Qwen3's head_dim is independent of n_embd / n_head; the converters
        # write it for every config with a head_dim (LLaDA-MoE's included).
        put(f"{arch}.attention.key_length", shape.head_dim, U32)
        put(f"{arch}.attention.value_length", shape.head_dim, U32)
    if arch in MOE_ARCHS:
        put(f"{arch}.expert_count", shape.n_expert, U32)
        put(f"{arch}.expert_used_count", shape.n_expert_used, U32)
        put(f"{arch}.expert_feed_forward_length", shape.n_ff_exp, U32)
    if arch == "bailingmoe2":
        # what BailingMoeV2Model.set_gguf_parameters writes for Ling 2.0 / LLaDA2.0 configs
        put(f"{arch}.rope.dimension_count", shape.n_rot, U32)
        put(f"{arch}.leading_dense_block_count", shape.n_dense_lead, U32)
        put(f"{arch}.vocab_size", n_vocab, U32)
        put(f"{arch}.expert_shared_feed_forward_length", shape.n_ff_exp * shape.n_expert_shared, U32)
        put(f"{arch}.expert_weights_scale", float(shape.expert_weights_scale), F32)
        put(f"{arch}.expert_shared_count", shape.n_expert_shared, U32)
        put(f"{arch}.expert_weights_norm", True, BOOL)
        put(f"{arch}.expert_gating_func", 2, U32)           # sigmoid
        put(f"{arch}.nextn_predict_layers", 0, U32)
        if shape.n_expert_groups > 1:
            put(f"{arch}.expert_group_count", shape.n_expert_groups, U32)
            put(f"{arch}.expert_group_used_count", shape.n_group_used, U32)
    if arch in ("llama", "mistral3", "llada"):
        # llama's layout (mistral3: what Ministral3Model.set_gguf_parameters writes, its YaRN
        # factor 1 being plain RoPE); only llama rotates part of a head
        put(f"{arch}.vocab_size", n_vocab, U32)
        put(f"{arch}.rope.dimension_count", shape.n_rot or shape.head_dim, U32)
        if shape.head_dim * shape.n_head != shape.n_embd:
            put(f"{arch}.attention.key_length", shape.head_dim, U32)
            put(f"{arch}.attention.value_length", shape.head_dim, U32)
    if arch == "mistral3" and shape.attn_temp_beta:
        put(f"{arch}.attention.temperature_scale", float(shape.attn_temp_beta), F32)
        put(f"{arch}.rope.scaling.original_context_length", int(shape.attn_temp_length), U32)
    if arch in DIFFUSION_ARCHS:
        put(f"{arch}.attention.causal", False, BOOL)
    if arch in ("llada", "llada-moe"):
        # Only the LLaDA converters write this; Dream and RND1 files leave it
        # out and consumers (llama.cpp's diffusion-cli) then default to shifting.
        put("diffusion.shift_logits", False, BOOL)
    if block_length is not None:
        put("diffusion.block_length", int(block_length), U32)

    put("tokenizer.ggml.model", "gpt2", STR)
    put("tokenizer.ggml.pre", "qwen2", STR)
    put("tokenizer.ggml.tokens", vocab.tokens, ARR)
    kv["tokenizer.ggml.token_type"] = (vocab.token_types, ARR, GGUFValueType.INT32)
    put("tokenizer.ggml.merges", vocab.merges, ARR)
    # Without an explicit bos id a gpt2-type vocab defaults to token 11.
    put("tokenizer.ggml.bos_token_id", eos, U32)
    put("tokenizer.ggml.eos_token_id", eos, U32)
    # EOT would otherwise be picked by text from an unordered map.
    put("tokenizer.ggml.eot_token_id", vocab.special["<|im_end|>"], U32)
    put("tokenizer.ggml.padding_token_id", eos, U32)
    if mask_id_in_metadata:
        put("tokenizer.ggml.mask_token_id", vocab.mask_id, U32)
    put("tokenizer.ggml.add_bos_token", arch == "llada", BOOL)
    if arch in ("qwen3", "dream", "qwen3moe", "rnd1", "qwen2"):
        put("tokenizer.chat_template", QWEN_CHAT_TEMPLATE, STR)

    for key, value in (metadata or {}).items():
        if value is None:
            kv.pop(key, None)
        else:
            kv[key] = _infer_value(key, value)

    plan = _tensor_plan(arch, shape, n_vocab, qkv_bias)
    if tensors is not None:
        for t in plan:
            if t.name not in tensors:
                raise ValueError(f"tensors lacks {t.name}")
            if tuple(np.shape(tensors[t.name])) != t.shape:
                raise ValueError(f"{t.name} has shape {np.shape(tensors[t.name])}, expected {t.shape}")

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch)
    for key, (value, vtype, sub) in kv.items():
        if key == "general.architecture":
            continue
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in plan:
        tt = _tensor_dtype(t, wtype)
        nbytes = int(np.prod(t.shape)) * tt.itemsize
        writer.add_tensor_info(t.name, t.shape, tt, nbytes)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # Tensors are generated and written one at a time, so a large model
        # never has to fit in memory at once.
        for t in plan:
            if tensors is None:
                data = _make_tensor(t, seed, gain, wtype)
            else:
                tt = _tensor_dtype(t, wtype)
                data = np.ascontiguousarray(np.asarray(tensors[t.name]), dtype=tt)
            writer.write_tensor_data(data)
    finally:
        writer.close()
    return path


def write_qwen3(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="qwen3"`` (a block-diffusion checkpoint)."""
    return write_model(path, "qwen3", **kw)


def write_llada(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="llada"``."""
    return write_model(path, "llada", **kw)


def write_dream(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="dream"``."""
    return write_model(path, "dream", **kw)


def write_qwen3moe(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="qwen3moe"`` (a block-diffusion MoE checkpoint)."""
    return write_model(path, "qwen3moe", **kw)


def write_qwen2(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="qwen2"`` (Fast-dLLM v2's body)."""
    return write_model(path, "qwen2", **kw)


def write_mistral3(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="mistral3"`` (Ministral 3: llama's layout, RoPE over
    whole heads, llama-4 attention temperature)."""
    return write_model(path, "mistral3", **kw)


def write_llama(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="llama"``."""
    return write_model(path, "llama", **kw)


def write_bailingmoe2(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="bailingmoe2"`` (LLaDA2.0's body)."""
    return write_model(path, "bailingmoe2", **kw)


def write_llada_moe(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="llada-moe"``."""
    return write_model(path, "llada-moe", **kw)


def write_rnd1(path: str | os.PathLike[str], **kw: Any) -> pathlib.Path:
    """:func:`write_model` with ``arch="rnd1"``."""
    return write_model(path, "rnd1", **kw)


def rewrite_model(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                  metadata: Mapping[str, Any]) -> pathlib.Path:
    """Copy the GGUF ``src`` (any model, the shipped ones too) to ``dst`` with key/values of
    ``metadata`` replaced, added or (value None) removed, typed as :func:`write_model`'s
    ``metadata``; the tensors as they are."""
    from llamadiff.fuse import copy_gguf

    typed = {key: None if value is None else _infer_value(key, value) for key, value in metadata.items()}
    return copy_gguf(src, dst, typed)


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------

class ModelData(NamedTuple):
    """A model read back by :func:`read_model`; unpacks as a 4-tuple."""

    arch: str
    hparams: dict[str, Any]
    weights: dict[str, np.ndarray]
    vocab: Vocab


def _field_value(field: Any) -> Any:
    value = field.contents()
    if isinstance(value, np.generic):
        value = value.item()
    return value


def read_model(path: str | os.PathLike[str]) -> ModelData:
    """Read a GGUF model written by :func:`write_model` (or a compatible one).

    ``weights`` maps tensor names to float64 arrays in numpy layout (a
    matrix is ``out x in``).  ``hparams`` holds normalised hyperparameters
    with llama.cpp's defaults applied, plus ``metadata``: every scalar
    key/value of the file.  Only unquantized (F32/F16/BF16) tensors are
    supported.
    """
    reader = gguf.GGUFReader(path)
    fields = reader.fields
    meta: dict[str, Any] = {}
    for key, field in fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == GGUFValueType.ARRAY:
            continue
        meta[key] = _field_value(field)
    arch = meta["general.architecture"]

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    types = (list(fields["tokenizer.ggml.token_type"].contents())
             if "tokenizer.ggml.token_type" in fields else [int(TokenType.NORMAL)] * len(tokens))
    merges = (list(fields["tokenizer.ggml.merges"].contents())
              if "tokenizer.ggml.merges" in fields else [])
    special = {tokens[i]: i for i, t in enumerate(types) if t == TokenType.CONTROL}
    vocab = Vocab(tokens=tokens, token_types=[int(t) for t in types], merges=merges, special=special)

    weights: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16,
                                 gguf.GGMLQuantizationType.BF16):
            raise ValueError(f"{t.name}: quantized tensors ({t.tensor_type.name}) are not supported")
        data = np.asarray(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            data = (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        # GGUF lists dims fastest first; numpy wants them slowest first.
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        weights[t.name] = data.astype(np.float64).reshape(shape)

    n_embd = int(get("embedding_length"))
    n_head = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", n_embd // n_head))
    causal = bool(get("attention.causal", True))
    if arch in DIFFUSION_ARCHS:
        causal = False
    mask_id = meta.get("tokenizer.ggml.mask_token_id")
    if mask_id is None and "<|MASK|>" in special:
        mask_id = special["<|MASK|>"]
    hparams: dict[str, Any] = {
        "n_vocab": len(tokens),
        "n_embd": n_embd,
        "n_layer": int(get("block_count")),
        "n_head": n_head,
        "n_head_kv": int(get("attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "head_dim_v": int(get("attention.value_length", n_embd // n_head)),
        "n_rot": int(get("rope.dimension_count", head_dim)),
        "n_ff": int(get("feed_forward_length")),
        "n_ctx_train": int(get("context_length")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "rope_type": ROPE_TYPE.get(arch),
        "rms_eps": float(get("attention.layer_norm_rms_epsilon")),
        "causal": causal,
        "tie_embeddings": "output.weight" not in weights,
        "mask_id": mask_id,
        "mask_id_in_metadata": "tokenizer.ggml.mask_token_id" in meta,
        "shift_logits": meta.get("diffusion.shift_logits"),
        "block_length": meta.get("diffusion.block_length"),
        "eos_id": meta.get("tokenizer.ggml.eos_token_id"),
        "n_expert": int(get("expert_count", 0)),
        "n_expert_used": int(get("expert_used_count", 0)),
        "n_ff_exp": int(get("expert_feed_forward_length", 0)),
        # how routed experts are weighed (bailingmoe2: from its metadata)
        "gating": (MOE_GATING.get(arch) or (GATING_FUNCS.get(int(get("expert_gating_func", 0))),
                                            bool(get("expert_weights_norm", False)))) if arch in MOE_ARCHS else None,
        "expert_weights_scale": float(get("expert_weights_scale", 0.0)),
        "n_expert_groups": int(get("expert_group_count", 0)),
        "n_group_used": int(get("expert_group_used_count", 0)),
        "n_dense_lead": int(get("leading_dense_block_count", 0)),
        # llama-4 attention temperature (mistral3): beta and the length positions are floored by
        "attn_temp_beta": float(get("attention.temperature_scale", 0.0)),
        "attn_temp_length": int(get("rope.scaling.original_context_length", get("context_length"))),
        "metadata": meta,
    }
    return ModelData(arch, hparams, weights, vocab)


# --------------------------------------------------------------------------- HF checkpoints

_HF_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
}
# BailingMoeV2 / LLaDA2.0 (modeling_llada2_moe.py) names where they differ from Qwen's
_HF_BAILING_NAMES = {
    "attn_qkv": "attention.query_key_value", "attn_output": "attention.dense",
    "attn_q_norm": "attention.query_layernorm", "attn_k_norm": "attention.key_layernorm",
    "exp_probs_b": "mlp.gate", "ffn_gate_shexp": "mlp.shared_experts.gate_proj",
    "ffn_up_shexp": "mlp.shared_experts.up_proj", "ffn_down_shexp": "mlp.shared_experts.down_proj",
}


def hf_tensor_name(gguf_name: str, arch: str = "qwen3") -> str:
    """The Hugging Face name of a GGUF tensor name (Qwen2 / Qwen3 / SDAR / Fast-dLLM v2
    layout, or BailingMoeV2 / LLaDA2.0's for ``arch="bailingmoe2"``). Routed-expert tensors
    have one HF tensor per expert: see :func:`hf_tensors`."""
    if gguf_name == "token_embd.weight":
        return "model.word_embeddings.weight" if arch == "bailingmoe2" else "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    _, layer, kind, suffix = gguf_name.split(".")
    names = dict(_HF_LAYER_NAMES, **_HF_BAILING_NAMES) if arch == "bailingmoe2" else _HF_LAYER_NAMES
    if kind == "exp_probs_b":
        return f"model.layers.{layer}.mlp.gate.expert_bias"
    return f"model.layers.{layer}.{names[kind]}.{suffix}"


def _hf_rope_order(w: np.ndarray, n_head: int) -> np.ndarray:
    """A q / k projection from llama.cpp's NORM-RoPE row order (pairs 2i, 2i + 1) back to the
    Hugging Face order (pairs i, i + d/2): the inverse of llama.cpp's LlamaModel.permute."""
    out_dim = w.shape[0]
    return (w.reshape(n_head, out_dim // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def hf_tensors(weights: Mapping[str, np.ndarray], arch: str, n_head: int = 0, n_head_kv: int = 0
               ) -> dict[str, np.ndarray]:
    """GGUF-named weights (numpy layout) as a Hugging Face checkpoint stores them: float32,
    HF names, routed experts split into ``mlp.experts.E.{gate,up,down}_proj``; for the llama
    layouts (``llama``, ``mistral3``) q / k rows in Hugging Face's RoPE order (``n_head`` and
    ``n_head_kv`` needed)."""
    out = {}
    for name, value in weights.items():
        value = np.ascontiguousarray(value, dtype=np.float32)
        if arch in ("llama", "mistral3") and name.endswith((".attn_q.weight", ".attn_k.weight")):
            value = np.ascontiguousarray(_hf_rope_order(value, n_head if ".attn_q." in name else n_head_kv))
        _, *rest = name.split(".")
        if len(rest) == 3 and rest[1].endswith("_exps"):
            layer, kind = rest[0], rest[1][len("ffn_"):-len("_exps")]
            for e in range(value.shape[0]):
                out[f"model.layers.{layer}.mlp.experts.{e}.{kind}_proj.weight"] = np.ascontiguousarray(value[e])
        else:
            out[hf_tensor_name(name, arch)] = value
    return out


# The published checkpoint formats written by write_hf_checkpoint, by name, and the format
# (``architectures`` name, llamadiff.convert.FAMILIES) each one is.
HF_CHECKPOINTS = {"sdar": "SDARForCausalLM", "trado": "SDARForCausalLM", "sdar-moe": "SDARMoeForCausalLM",
                  "fast-dllm-v2": "Fast_dLLM_QwenForCausalLM", "llada2": "LLaDA2MoeModelLM",
                  "llada2.1": "LLaDA2MoeModelLM", "nemotron-diffusion": "NemotronDiffusionForCausalLM",
                  "stable-diffcoder": "StableDiffCoderForCausalLM"}


def _hf_family(name: str) -> tuple:
    """(GGUF arch of the body, config.json architectures / model_type / auto_map module,
    block-length key, mask token text) of a checkpoint format, from llamadiff.convert."""
    hf_arch = HF_CHECKPOINTS[name]
    f = CONVERT_FAMILIES[hf_arch]
    return f.gguf_arch, hf_arch, f.model_type, f.modeling, f.published_block_key, f.mask_texts[0]


HF_FAMILIES = {name: _hf_family(name) for name in HF_CHECKPOINTS}

# LLaDA2.0's chat format (role tags, <|role_end|>), as text
LLADA2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<role>' + message['role'] | upper + '</role>' + message['content'] + '<|role_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}"
)


def _hf_config(family: str, shape: ModelShape, vocab: Vocab, block_length: int) -> dict:
    arch, hf_arch, model_type, module, block_key, _ = HF_FAMILIES[family]
    config = {
        "architectures": [hf_arch], "model_type": model_type,
        "auto_map": {"AutoConfig": f"configuration_{model_type.lower()}.Config",
                     "AutoModelForCausalLM": f"{module}.{hf_arch}"},
        "vocab_size": vocab.n_tokens, "hidden_size": shape.n_embd,
        "intermediate_size": shape.n_ff, "num_hidden_layers": shape.n_layer,
        "num_attention_heads": shape.n_head, "num_key_value_heads": shape.n_head_kv,
        "max_position_embeddings": shape.n_ctx_train, "rms_norm_eps": shape.rms_eps,
        "rope_theta": shape.rope_theta, "rope_scaling": None, "tie_word_embeddings": shape.tie_embeddings,
        "torch_dtype": "float32", "bos_token_id": vocab.eos_id, "eos_token_id": vocab.eos_id,
    }
    if arch in ("qwen3", "qwen3moe"):
        config.update(head_dim=shape.head_dim, attention_bias=False, mask_token_id=vocab.mask_id)
    if arch == "qwen3moe":
        config.update(num_experts=shape.n_expert, num_experts_per_tok=shape.n_expert_used,
                      moe_intermediate_size=shape.n_ff_exp, decoder_sparse_step=1,
                      norm_topk_prob=True, mlp_only_layers=[])
    if arch == "qwen2":
        # Qwen2.5's keys (Fast-dLLM v2 keeps them: full attention in every layer)
        config.update(use_sliding_window=False, sliding_window=shape.n_ctx_train, max_window_layers=shape.n_layer,
                      layer_types=["full_attention"] * shape.n_layer)
    if arch == "bailingmoe2":
        config.update(head_dim=shape.head_dim, partial_rotary_factor=shape.n_rot / shape.head_dim,
                      rotary_dim=shape.n_rot, num_experts=shape.n_expert,
                      num_experts_per_tok=shape.n_expert_used, num_shared_experts=shape.n_expert_shared,
                      moe_intermediate_size=shape.n_ff_exp, first_k_dense_replace=shape.n_dense_lead,
                      n_group=shape.n_expert_groups, topk_group=shape.n_group_used,
                      score_function="sigmoid", routed_scaling_factor=shape.expert_weights_scale,
                      norm_topk_prob=True, moe_router_enable_expert_bias=True, router_dtype="fp32",
                      use_qkv_bias=False, use_bias=False, use_qk_norm=True, norm_head=False,
                      pad_token_id=vocab.eos_id)
    if arch == "mistral3":
        # Ministral 3's text config: YaRN (factor 1 here: plain RoPE) carrying the llama-4
        # attention temperature
        config.update(head_dim=shape.head_dim, sliding_window=None, mask_token_id=vocab.mask_id,
                      rope_parameters={"rope_type": "yarn", "rope_theta": shape.rope_theta, "factor": 1.0,
                                       "original_max_position_embeddings": shape.attn_temp_length,
                                       "llama_4_scaling_beta": shape.attn_temp_beta, "mscale": 1.0,
                                       "mscale_all_dim": 1.0, "beta_fast": 32.0, "beta_slow": 1.0})
    if arch == "llama":
        # Seed-Coder's keys (a llama body)
        config.update(head_dim=shape.head_dim, attention_bias=False, mlp_bias=False, hidden_act="silu",
                      mask_token_id=vocab.mask_id, pretraining_tp=1)
    if block_key is not None:
        config[block_key] = block_length
    return config


def write_hf_checkpoint(directory, family: str = "sdar", *, shape: "ModelShape | None" = None,
                        seed: int = 0, block_length: int = 4) -> pathlib.Path:
    """Write a tiny Hugging Face checkpoint in a block-diffusion family's published format
    (``HF_FAMILIES``: config.json with its keys, model.safetensors with its tensor names,
    tokenizer.json and tokenizer_config.json with its mask token and chat template), holding
    the weights ``write_model(arch, shape=shape, seed=seed)`` writes for the family's body.
    LLaDA2.0 configs carry no block length (its published default is 32). Needs
    ``safetensors`` and ``tokenizers`` (the ``convert`` extra).
    """
    import tempfile

    from safetensors.numpy import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if family not in HF_FAMILIES:
        raise ValueError(f"unknown family {family!r}, expected one of {tuple(HF_FAMILIES)}")
    arch, _, _, _, _, mask_text = HF_FAMILIES[family]
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shape = dataclasses.replace(shape) if shape is not None else ModelShape()
    if arch == "bailingmoe2" and shape.n_rot is None:
        shape.n_rot = shape.head_dim // 2
    vocab = byte_vocab(shape.n_vocab_pad)
    # the weights: those of the equivalent GGUF, renamed
    with tempfile.TemporaryDirectory() as tmp:
        data = read_model(write_model(pathlib.Path(tmp) / "m.gguf", arch, shape=shape, seed=seed))
    save_file(hf_tensors(data.weights, arch, shape.n_head, shape.n_head_kv), str(directory / "model.safetensors"))

    # every token keeps its GGUF id (specials and padding included); specials are then
    # marked special, which keeps their ids since they are already in the vocabulary
    texts = [mask_text if t == "<|MASK|>" else t for t in vocab.tokens]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(texts)},
                     merges=[tuple(m.split(" ")) for m in vocab.merges])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [texts[i] for i in sorted(vocab.special.values())]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.save(str(directory / "tokenizer.json"))
    template = LLADA2_CHAT_TEMPLATE if arch == "bailingmoe2" else QWEN_CHAT_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": mask_text,
        "chat_template": template,
        "added_tokens_decoder": {str(texts.index(t)): {"content": t, "special": True} for t in specials},
    }, indent=1))
    config = _hf_config(family, shape, vocab, block_length)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    if family == "llada2.1":
        # LLaDA2.1 ships LLaDA2.0's config; its decoding rule comes with the generation settings
        # (the keys its model card passes to generate(): assumed, docs/MODELS.md)
        (directory / "generation_config.json").write_text(json.dumps({
            "bos_token_id": vocab.eos_id, "eos_token_id": vocab.eos_id, "threshold": 0.7,
            "editing_threshold": 0.5, "max_post_steps": 16, "block_length": 32}, indent=1))
    return directory


def write_sdar_checkpoint(directory, *, shape: "ModelShape | None" = None, seed: int = 0,
                          block_length: int = 4) -> pathlib.Path:
    """:func:`write_hf_checkpoint` of an SDAR checkpoint (the weights of ``write_qwen3``)."""
    return write_hf_checkpoint(directory, "sdar", shape=shape, seed=seed, block_length=block_length)


# --------------------------------------------------------------------------
# DiffusionGemma (arch diffusion-gemma, vendor/patches/0012)
# --------------------------------------------------------------------------

@dataclasses.dataclass
class CanvasShape:
    """A tiny DiffusionGemma: the Gemma 4 body (sliding and full layers, dense GeGLU plus MoE in
    every layer, V = K on full layers, proportional RoPE there), two sets of layer scalars and
    the self-conditioning MLP. Defaults: 4 layers (sliding, full, sliding, full), the test vocab."""

    n_embd: int = 32
    n_ff: int = 48
    n_head: int = 4
    n_head_kv: int = 2             # sliding layers
    head_dim: int = 8              # sliding layers
    n_head_kv_full: int = 1
    head_dim_full: int = 16
    layer_types: tuple = ("sliding_attention", "full_attention", "sliding_attention", "full_attention")
    sliding_window: int = 5
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_exp: int = 24
    rope_theta: float = 1e6        # full layers (proportional)
    rope_theta_swa: float = 1e4
    partial_rotary_factor: float = 0.25
    rms_eps: float = 1e-3
    softcap: float = 30.0
    canvas_length: int = 16
    n_ctx_train: int = 4096
    n_vocab_pad: int = 0           # fillers after the test vocabulary (a published-size vocabulary)


# HF name (after model.decoder. / model.encoder.language_model.) -> GGUF name of a layer tensor
_CANVAS_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "post_attention_norm",
    "pre_feedforward_layernorm.weight": "ffn_norm", "post_feedforward_layernorm.weight": "post_ffw_norm",
    "post_feedforward_layernorm_1.weight": "post_ffw_norm_1", "post_feedforward_layernorm_2.weight": "post_ffw_norm_2",
    "pre_feedforward_layernorm_2.weight": "pre_ffw_norm_2", "self_attn.q_proj.weight": "attn_q",
    "self_attn.k_proj.weight": "attn_k", "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
    "self_attn.q_norm.weight": "attn_q_norm", "self_attn.k_norm.weight": "attn_k_norm",
    "mlp.gate_proj.weight": "ffn_gate", "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down",
    "router.scale": "ffn_gate_inp.scale", "router.per_expert_scale": "ffn_down_exps.scale",
    "router.proj.weight": "ffn_gate_inp", "experts.gate_up_proj": "ffn_gate_up_exps",
    "experts.down_proj": "ffn_down_exps",
}


def canvas_config(shape: CanvasShape, vocab: "Vocab | None" = None) -> dict:
    """The checkpoint's config.json (DiffusionGemmaConfig.to_dict()'s text part and the root
    ``canvas_length``), as tests/diffusion_gemma_reference.load_params reads it."""
    vocab = vocab or byte_vocab()
    text = dict(vocab_size=vocab.n_tokens, hidden_size=shape.n_embd, intermediate_size=shape.n_ff,
                num_hidden_layers=len(shape.layer_types), num_attention_heads=shape.n_head,
                num_key_value_heads=shape.n_head_kv, head_dim=shape.head_dim, global_head_dim=shape.head_dim_full,
                num_global_key_value_heads=shape.n_head_kv_full, sliding_window=shape.sliding_window,
                layer_types=list(shape.layer_types), num_experts=shape.n_expert, top_k_experts=shape.n_expert_used,
                moe_intermediate_size=shape.n_ff_exp, max_position_embeddings=shape.n_ctx_train,
                rms_norm_eps=shape.rms_eps, final_logit_softcapping=shape.softcap,
                rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": shape.rope_theta_swa},
                                 "full_attention": {"rope_type": "proportional", "rope_theta": shape.rope_theta,
                                                    "partial_rotary_factor": shape.partial_rotary_factor}},
                eos_token_id=vocab.eos_id, pad_token_id=vocab.eos_id, bos_token_id=vocab.eos_id,
                model_type="diffusion_gemma_text")
    return {"architectures": ["DiffusionGemmaForBlockDiffusion"], "model_type": "diffusion_gemma",
            "text_config": text, "canvas_length": shape.canvas_length, "tie_word_embeddings": True}


def canvas_weights(shape: CanvasShape, seed: int = 0, std: float = 0.04, vocab: "Vocab | None" = None,
                   tiled: bool = False) -> dict:
    """Random float32 weights under the checkpoint's names (the decoder's; the encoder holds only
    its own ``layer_scalar``): matrices ~ N(0, std^2), embedding N(0, 0.3^2), norm weights and
    router scales 1 + N(0, 0.3^2), layer scalars U(0.5, 1.5). ``tiled``: matrices repeat one
    random block of 4096 values (for timing models of published size, quick to make)."""
    vocab = vocab or byte_vocab(shape.n_vocab_pad)
    rng = np.random.default_rng(seed)
    d, V, E = shape.n_embd, vocab.n_tokens, shape.n_expert
    out: dict = {}
    block = rng.standard_normal(4096).astype(np.float32)

    def mat(*dims):
        if tiled:
            return np.resize(block, dims) * np.float32(std)
        return (std * rng.standard_normal(dims)).astype(np.float32)

    def norm(n):
        return (1 + 0.3 * rng.standard_normal(n)).astype(np.float32)

    dec, enc = "model.decoder.", "model.encoder.language_model."
    out[dec + "embed_tokens.weight"] = (mat(V, d) * np.float32(0.3 / std) if tiled else
                                        (0.3 * rng.standard_normal((V, d))).astype(np.float32))
    out[dec + "norm.weight"] = norm(d)
    for k, dims in (("pre_norm", None), ("gate_proj", (shape.n_ff, d)), ("up_proj", (shape.n_ff, d)),
                    ("down_proj", (d, shape.n_ff))):
        out[f"{dec}self_conditioning.{k}.weight"] = norm(d) if dims is None else mat(*dims)
    for i, kind in enumerate(shape.layer_types):
        full = kind == "full_attention"
        hd, hkv = (shape.head_dim_full, shape.n_head_kv_full) if full else (shape.head_dim, shape.n_head_kv)
        p = f"{dec}layers.{i}."
        for key in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                    "post_feedforward_layernorm", "post_feedforward_layernorm_1", "post_feedforward_layernorm_2",
                    "pre_feedforward_layernorm_2"):
            out[p + key + ".weight"] = norm(d)
        out[p + "self_attn.q_proj.weight"] = mat(shape.n_head * hd, d)
        out[p + "self_attn.k_proj.weight"] = mat(hkv * hd, d)
        if not full:
            out[p + "self_attn.v_proj.weight"] = mat(hkv * hd, d)
        out[p + "self_attn.o_proj.weight"] = mat(d, shape.n_head * hd)
        out[p + "self_attn.q_norm.weight"] = norm(hd)
        out[p + "self_attn.k_norm.weight"] = norm(hd)
        out[p + "mlp.gate_proj.weight"] = mat(shape.n_ff, d)
        out[p + "mlp.up_proj.weight"] = mat(shape.n_ff, d)
        out[p + "mlp.down_proj.weight"] = mat(d, shape.n_ff)
        out[p + "router.scale"] = norm(d)
        out[p + "router.per_expert_scale"] = norm(E)
        out[p + "router.proj.weight"] = mat(E, d)
        out[p + "experts.gate_up_proj"] = mat(E, 2 * shape.n_ff_exp, d)
        out[p + "experts.down_proj"] = mat(E, d, shape.n_ff_exp)
        out[p + "layer_scalar"] = (0.5 + rng.random(1)).astype(np.float32)
        out[f"{enc}layers.{i}.layer_scalar"] = (0.5 + rng.random(1)).astype(np.float32)
    return out


def canvas_gguf_tensors(weights: Mapping[str, np.ndarray], shape: CanvasShape, embd_t: bool = True) -> dict:
    """The checkpoint's weights under the GGUF names llama.cpp's diffusion-gemma loader reads
    (the published GGUFs' names), numpy layout; plus ``rope_freqs`` (1 for the rotated pairs of
    full layers, 1e30 -- not rotated -- for the rest, as llama.cpp's Gemma 4 converter writes) and,
    with ``embd_t``, ``self_cond_embd_t`` (the embedding transposed, which llamadiff's conversions
    add: the self-conditioning product as a matrix product; the published GGUFs lack it)."""
    dec, enc = "model.decoder.", "model.encoder.language_model."
    out = {"token_embd.weight": weights[dec + "embed_tokens.weight"], "output_norm.weight": weights[dec + "norm.weight"]}
    if embd_t:
        out["self_cond_embd_t.weight"] = np.ascontiguousarray(weights[dec + "embed_tokens.weight"].T)
    for k, name in (("pre_norm", "self_cond_pre_norm"), ("gate_proj", "self_cond_gate"), ("up_proj", "self_cond_up"),
                    ("down_proj", "self_cond_down")):
        out[name + ".weight"] = weights[f"{dec}self_conditioning.{k}.weight"]
    n_rot = int(shape.head_dim_full * shape.partial_rotary_factor / 2)
    out["rope_freqs.weight"] = np.array([1.0] * n_rot + [1e30] * (shape.head_dim_full // 2 - n_rot), np.float32)
    for i in range(len(shape.layer_types)):
        for key, name in _CANVAS_LAYER_NAMES.items():
            w = weights.get(f"{dec}layers.{i}.{key}")
            if w is not None:
                out[f"blk.{i}.{name}" + ("" if name.endswith(".scale") else ".weight")] = w
        out[f"blk.{i}.layer_output_scale.weight"] = weights[f"{dec}layers.{i}.layer_scalar"]
        out[f"blk.{i}.enc_layer_output_scale.weight"] = weights[f"{enc}layers.{i}.layer_scalar"]
    return out


def write_diffusion_gemma(path: str | os.PathLike[str], *, shape: CanvasShape | None = None, seed: int = 0,
                          std: float = 0.04, dtype: str = "f32", metadata: Mapping[str, Any] | None = None,
                          weights: Mapping[str, np.ndarray] | None = None, tiled: bool = False,
                          embd_t: bool = True) -> pathlib.Path:
    """A tiny DiffusionGemma GGUF (arch ``diffusion-gemma``, what ``llamadiff convert`` writes for
    the published format) from ``weights`` (``canvas_weights``'s names; default: random ones of
    ``seed``). ``dtype`` is the type of the 2-D matrices (the MoE's 3-D ones too); ``metadata``
    adds or replaces keys as in ``write_model`` (None removes one); ``tiled`` as in ``canvas_weights``,
    ``embd_t`` as in ``canvas_gguf_tensors`` (False: as the published GGUFs)."""
    shape = shape or CanvasShape()
    vocab = byte_vocab(shape.n_vocab_pad)
    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be 'f32' or 'f16', not {dtype!r}")
    weights = canvas_weights(shape, seed, std, vocab, tiled) if weights is None else weights
    tensors = canvas_gguf_tensors(weights, shape, embd_t)
    arch = "diffusion-gemma"
    swa = [t == "sliding_attention" for t in shape.layer_types]
    kv = {
        "general.name": f"llamadiff-test-{arch}", f"{arch}.context_length": shape.n_ctx_train,
        f"{arch}.embedding_length": shape.n_embd, f"{arch}.block_count": len(shape.layer_types),
        f"{arch}.feed_forward_length": shape.n_ff, f"{arch}.attention.head_count": shape.n_head,
        f"{arch}.attention.head_count_kv": ([shape.n_head_kv if s else shape.n_head_kv_full for s in swa],
                                            GGUFValueType.ARRAY),
        f"{arch}.rope.freq_base": float(shape.rope_theta), f"{arch}.rope.freq_base_swa": float(shape.rope_theta_swa),
        f"{arch}.attention.layer_norm_rms_epsilon": float(shape.rms_eps),
        f"{arch}.attention.key_length": shape.head_dim_full, f"{arch}.attention.value_length": shape.head_dim_full,
        f"{arch}.attention.key_length_swa": shape.head_dim, f"{arch}.attention.value_length_swa": shape.head_dim,
        f"{arch}.rope.dimension_count": shape.head_dim_full, f"{arch}.rope.dimension_count_swa": shape.head_dim,
        f"{arch}.attention.sliding_window": shape.sliding_window,
        f"{arch}.attention.sliding_window_pattern": (swa, GGUFValueType.ARRAY),
        f"{arch}.expert_count": shape.n_expert, f"{arch}.expert_used_count": shape.n_expert_used,
        f"{arch}.expert_feed_forward_length": shape.n_ff_exp,
        f"{arch}.final_logit_softcapping": float(shape.softcap),
        f"{arch}.embedding_length_per_layer_input": 0, f"{arch}.attention.shared_kv_layers": 0,
        f"{arch}.attention.causal": False,
        "diffusion.canvas_length": shape.canvas_length,
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": vocab.tokens,
        "tokenizer.ggml.merges": vocab.merges, "tokenizer.ggml.bos_token_id": vocab.eos_id,
        "tokenizer.ggml.eos_token_id": vocab.eos_id, "tokenizer.ggml.eot_token_id": vocab.eot_id,
        "tokenizer.ggml.padding_token_id": vocab.eos_id, "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": QWEN_CHAT_TEMPLATE,
    }
    for key, value in (metadata or {}).items():
        if value is None:
            kv.pop(key, None)
        else:
            kv[key] = value
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch)
    for key, value in kv.items():
        value, vtype, sub = _infer_value(key, value)
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.add_key_value("tokenizer.ggml.token_type", vocab.token_types, GGUFValueType.ARRAY,
                         sub_type=GGUFValueType.INT32)
    wtype = np.dtype(np.float32 if dtype == "f32" else np.float16)
    stored = {}
    for name, w in tensors.items():
        matrix = w.ndim >= 2 and "ffn_gate_inp" not in name     # the router stays F32, as converted
        stored[name] = np.ascontiguousarray(w, dtype=wtype if matrix else np.float32)
        writer.add_tensor(name, stored[name])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


class _CanvasVocab(NamedTuple):
    """The tiny DiffusionGemma checkpoint's tokenizer: Gemma's special tokens first (pad 0, eos 1,
    bos 2, unk 3, mask 4), byte fallback, then a few merged pieces; 276 tokens like ``byte_vocab``."""
    tokens: list
    merges: list

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def eos_id(self) -> int:
        return 1


def canvas_vocab() -> _CanvasVocab:
    pieces = ["▁", "e", "t", "a", "o", "i", "n", "s", "r", "h", "▁t", "▁a", "th", "he", "▁th"]
    merges = ["▁ t", "▁ a", "t h", "h e", "▁t h"]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    return _CanvasVocab(tokens, merges)


def write_canvas_checkpoint(directory, *, shape: CanvasShape | None = None, seed: int = 0, std: float = 0.04,
                            generation: Mapping[str, Any] | None = None, encoder_names: bool = False) -> pathlib.Path:
    """A tiny DiffusionGemma checkpoint in the published Hugging Face format (config.json of
    ``DiffusionGemmaForBlockDiffusion`` with ``canvas_length``, model.safetensors under the
    model's names -- the decoder's weights, the encoder's layer scalars, the self-conditioning
    MLP --, a byte-fallback BPE tokenizer.json with Gemma's special tokens, tokenizer_config.json
    with a chat template, generation_config.json with the sampler's settings). The weights are
    ``canvas_weights(shape, seed, std)`` of a 276-token vocabulary, so the conversion of this
    directory holds the tensors ``write_diffusion_gemma(weights=...)`` writes. ``encoder_names``:
    store the tied weights under the encoder's names instead (transformers may save either).
    Needs ``safetensors`` and ``tokenizers`` (the ``convert`` extra)."""
    from safetensors.numpy import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    shape = shape or CanvasShape()
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = canvas_vocab()
    weights = canvas_weights(shape, seed, std, vocab)
    if encoder_names:
        enc = "model.encoder.language_model."
        weights = {(enc + k[len("model.decoder."):] if k.startswith("model.decoder.layers.")
                    and not k.endswith("layer_scalar") else k): v for k, v in weights.items()}
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(directory / "model.safetensors"))
    bpe = models.BPE(vocab={t: i for i, t in enumerate(vocab.tokens)}, merges=[tuple(m.split(" ")) for m in vocab.merges],
                     byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in vocab.tokens[:5]])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>", "eos_token": "<eos>",
        "bos_token": "<bos>", "unk_token": "<unk>", "mask_token": "<mask>", "chat_template": QWEN_CHAT_TEMPLATE,
        "added_tokens_decoder": {str(i): {"content": t, "special": True} for i, t in enumerate(vocab.tokens[:5])},
    }, indent=1))
    config = canvas_config(shape, vocab)
    config["text_config"].update(bos_token_id=2, pad_token_id=0)
    (directory / "config.json").write_text(json.dumps(config, indent=1))
    gen = {"max_denoising_steps": 48, "t_min": 0.4, "t_max": 0.8, "stability_threshold": 1,
           "confidence_threshold": 0.005, "sampler_config": {"entropy_bound": 0.1}, "eos_token_id": [1]}
    gen.update(generation or {})
    (directory / "generation_config.json").write_text(json.dumps(gen, indent=1))
    return directory
