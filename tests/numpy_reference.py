"""Independent float64 forward pass for the models in llamadiff.testing.

It recomputes, in plain numpy, what llama.cpp's graphs for every arch of
llamadiff.testing compute (src/models/<arch>.cpp), so tests can check the
logits llamadiff gets from llama.cpp against a reference that shares no
code with it.  The attention pattern is an explicit boolean matrix, which
lets the same function check causal, bidirectional and block-causal
decoding.

Per architecture:

* all: RMSNorm (x / sqrt(mean(x^2) + eps) * w), grouped-query attention with
  scale 1/sqrt(head_dim), SwiGLU FFN (down(silu(gate(x)) * up(x))), final
  RMSNorm, output projection (token_embd when the embeddings are tied).
* qwen3, qwen3moe, rnd1, llada-moe: per-head RMSNorm of q and k before RoPE;
  NEOX RoPE.
* dream, qwen2: q/k/v biases; NEOX RoPE.
* llada, llama: NORM RoPE (consecutive pairs).
* bailingmoe2: one fused qkv projection, per-head q/k RMSNorm, NEOX RoPE on
  the first n_rot dims of each head.
* MoE layers (llama.cpp's build_moe_ffn): router logits -> softmax or
  sigmoid; a selection bias (bailingmoe2's exp_probs_b) shifts which experts
  are chosen but not their weights; with expert groups, only the groups
  whose two best experts score highest are searched; the top n_expert_used
  experts are run, weighted by their (optionally renormalised, optionally
  scaled) probabilities; bailingmoe2 adds a shared expert, and its first
  n_dense_lead layers have a dense FFN instead.

Only q/k/v biases are applied: these graphs pass no bias to the attention
output, FFN or output projections even where the loader accepts one.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from llamadiff.testing import ModelData, read_model


def causal_allowed(n: int) -> np.ndarray:
    """Query i may attend to keys 0..i."""
    return np.tril(np.ones((n, n), dtype=bool))


def full_allowed(n: int) -> np.ndarray:
    """Every query may attend to every key."""
    return np.ones((n, n), dtype=bool)


def block_causal_allowed(n_tokens: int, block_length: int, prefix: int = 0,
                         *, prefix_causal: bool = True) -> np.ndarray:
    """Block-diffusion attention: bidirectional within a block, causal across blocks.

    The first ``prefix`` tokens are the prompt: they attend causally to
    each other (as after a causal prefill; ``prefix_causal=False`` makes
    them one bidirectional block instead).  The tokens after it are cut
    into blocks of ``block_length`` starting at ``prefix`` (the last one may
    be shorter); a token sees the whole prompt, every earlier block and
    its own block.
    """
    if block_length <= 0:
        raise ValueError("block_length must be positive")
    if not 0 <= prefix <= n_tokens:
        raise ValueError("prefix must be within 0..n_tokens")
    idx = np.arange(n_tokens)
    # Prompt tokens get block -1 (or their own position, when causal) so
    # that every generated block sees all of them.
    block = np.where(idx < prefix, -1, (idx - prefix) // block_length)
    allowed = block[None, :] <= block[:, None]
    allowed[:, :prefix] &= (idx[:, None] >= prefix) | (idx[None, :prefix] <= idx[:, None]) | (not prefix_causal)
    return allowed


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def _rope(x: np.ndarray, pos: np.ndarray, n_rot: int, theta: float, mode: str) -> np.ndarray:
    """Rotate x (n_tokens, n_heads, head_dim) as ggml_rope_ext does.

    Pair i (0 <= i < n_rot/2) turns by pos * theta^(-2i/n_rot).  In "norm"
    mode the pair is (2i, 2i+1); in "neox" mode it is (i, i + n_rot/2).
    Dims past n_rot are left alone.
    """
    half = n_rot // 2
    inv_freq = theta ** (-2.0 * np.arange(half, dtype=np.float64) / n_rot)
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]      # (n, half)
    cos = np.cos(ang)[:, None, :]
    sin = np.sin(ang)[:, None, :]
    out = x.copy()
    if mode == "neox":
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half] = a * cos - b * sin
        out[..., half:n_rot] = a * sin + b * cos
    elif mode == "norm":
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2] = a * cos - b * sin
        out[..., 1:n_rot:2] = a * sin + b * cos
    else:
        raise ValueError(f"unknown rope mode {mode!r}")
    return out


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _linear(w: dict[str, np.ndarray], name: str, x: np.ndarray, use_bias: bool = False) -> np.ndarray:
    y = x @ w[name + ".weight"].T
    bias = w.get(name + ".bias") if use_bias else None
    return y if bias is None else y + bias


def _moe(w: dict[str, np.ndarray], p: str, h: np.ndarray, hp: dict[str, Any]) -> np.ndarray:
    """One MoE feed-forward block, as build_moe_ffn computes it (+ a shared expert if any)."""
    gating, norm_w = hp["gating"]
    logits = h @ w[p + "ffn_gate_inp.weight"].T                   # (n, n_expert)
    if gating == "softmax":
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs = e / e.sum(axis=-1, keepdims=True)
    elif gating == "sigmoid":
        probs = 1.0 / (1.0 + np.exp(-logits))
    else:
        raise NotImplementedError(f"gating {gating!r}")
    select = probs + w[p + "exp_probs_b.bias"] if p + "exp_probs_b.bias" in w else probs
    n_groups, k = hp["n_expert_groups"], hp["n_expert_used"]
    if n_groups > 1:
        per = select.shape[1] // n_groups
        grouped = select.reshape(select.shape[0], n_groups, per)
        score = np.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)    # (n, n_groups): top-2 sum
        keep = np.argsort(-score, axis=-1, kind="stable")[:, :hp["n_group_used"]]
        masked = np.full_like(grouped, -np.inf)
        rows = np.arange(select.shape[0])[:, None]
        masked[rows, keep] = grouped[rows, keep]
        select = masked.reshape(select.shape)
    chosen = np.argsort(-select, axis=-1, kind="stable")[:, :k]    # (n, k)
    weights = np.take_along_axis(probs, chosen, axis=-1)
    if norm_w:
        weights = weights / np.maximum(weights.sum(axis=-1, keepdims=True), 6.103515625e-5)
    if hp["expert_weights_scale"] not in (0.0, 1.0):
        weights = weights * hp["expert_weights_scale"]
    gate, up, down = (w[p + f"ffn_{n}_exps.weight"] for n in ("gate", "up", "down"))
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        for j in range(k):
            e = chosen[t, j]
            ff = _silu(gate[e] @ h[t]) * (up[e] @ h[t])
            out[t] += weights[t, j] * (down[e] @ ff)
    if p + "ffn_gate_shexp.weight" in w:
        out += _linear(w, p + "ffn_down_shexp",
                       _silu(_linear(w, p + "ffn_gate_shexp", h)) * _linear(w, p + "ffn_up_shexp", h))
    return out


def forward(model: ModelData | str | os.PathLike[str], tokens: Any,
            positions: Any = None, allowed: np.ndarray | None = None) -> np.ndarray:
    """Logits (n_tokens, n_vocab) in float64 for one sequence.

    ``model`` is what :func:`llamadiff.testing.read_model` returns, or a
    path.  ``positions`` default to 0..n-1.  ``allowed[i, j]`` says whether
    query i may attend to key j; it defaults to causal attention for qwen3
    and full attention for llada and dream, as llama.cpp runs them.
    """
    if not isinstance(model, ModelData):
        model = read_model(model)
    arch, hp, w, _ = model
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    n = tokens.shape[0]
    pos = np.arange(n) if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)
    if pos.shape[0] != n:
        raise ValueError("positions must have one entry per token")
    if allowed is None:
        allowed = causal_allowed(n) if hp["causal"] else full_allowed(n)
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.shape != (n, n):
        raise ValueError(f"allowed must be ({n}, {n}), got {allowed.shape}")
    if not allowed.any(axis=1).all():
        raise ValueError("every query must be allowed at least one key")

    eps = hp["rms_eps"]
    n_head, n_head_kv, hd = hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    group = n_head // n_head_kv
    scale = 1.0 / np.sqrt(hd)
    bias = np.where(allowed, 0.0, -np.inf)

    x = w["token_embd.weight"][tokens]
    for il in range(hp["n_layer"]):
        p = f"blk.{il}."
        h = _rms_norm(x, w[p + "attn_norm.weight"], eps)
        if p + "attn_qkv.weight" in w:
            qkv = _linear(w, p + "attn_qkv", h, use_bias=True)
            q, k, v = np.split(qkv, [n_head * hd, (n_head + n_head_kv) * hd], axis=-1)
        else:
            q = _linear(w, p + "attn_q", h, use_bias=True)
            k = _linear(w, p + "attn_k", h, use_bias=True)
            v = _linear(w, p + "attn_v", h, use_bias=True)
        q = q.reshape(n, n_head, hd)
        k = k.reshape(n, n_head_kv, hd)
        v = v.reshape(n, n_head_kv, hp["head_dim_v"])
        if p + "attn_q_norm.weight" in w:
            q = _rms_norm(q, w[p + "attn_q_norm.weight"], eps)
            k = _rms_norm(k, w[p + "attn_k_norm.weight"], eps)
        q = _rope(q, pos, hp["n_rot"], hp["rope_theta"], hp["rope_type"])
        k = _rope(k, pos, hp["n_rot"], hp["rope_theta"], hp["rope_type"])
        if hp.get("attn_temp_beta"):
            # llama-4 attention temperature (mistral3): q scaled per absolute position
            q = q * (1.0 + hp["attn_temp_beta"] * np.log1p(np.floor(pos / hp["attn_temp_length"])))[:, None, None]
        # Query head j reads kv head j // group (ggml's broadcast in mul_mat).
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("ihd,jhd->hij", q, k) * scale + bias[None]
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        attn = np.einsum("hij,jhd->ihd", probs, v).reshape(n, -1)
        x = x + _linear(w, p + "attn_output", attn)

        h = _rms_norm(x, w[p + "ffn_norm.weight"], eps)
        if p + "ffn_gate_inp.weight" in w:
            x = x + _moe(w, p, h, hp)
        else:
            ff = _silu(_linear(w, p + "ffn_gate", h)) * _linear(w, p + "ffn_up", h)
            x = x + _linear(w, p + "ffn_down", ff)

    x = _rms_norm(x, w["output_norm.weight"], eps)
    out = w.get("output.weight", w["token_embd.weight"])
    return x @ out.T


def _row_stats(logits_row: np.ndarray, mask_id: int) -> tuple[int, float, float]:
    """Greedy x0, p(x0) and entropy of softmax(logits) with the mask token excluded."""
    row = np.array(logits_row, dtype=np.float64)
    row[mask_id] = -np.inf
    row -= row.max()
    p = np.exp(row)
    p /= p.sum()
    x0 = int(np.argmax(p))
    nz = p[p > 0]
    return x0, float(p[x0]), float(-(nz * np.log(nz)).sum())


def _masked_canvas(model, prompt, max_new_tokens: int, block_length: int, mask_id: int) -> tuple:
    """(model data, the prompt followed by masks up to whole blocks, prompt length, blocks)."""
    if not isinstance(model, ModelData):
        model = read_model(model)
    n_prompt = len(prompt)
    n_blocks = -(-(n_prompt + max_new_tokens) // block_length)
    return model, list(prompt) + [mask_id] * (n_blocks * block_length - n_prompt), n_prompt, n_blocks


def block_diffusion_generate(model, prompt, max_new_tokens: int, block_length: int, steps: int,
                             strategy: str, mask_id: int, threshold: float = 0.85,
                             eb_gamma: float = 0.35, shift: bool = False) -> list[int]:
    """Greedy block diffusion as SDAR's generate.py defines it, recomputed without any cache.

    Every step runs the whole prefix + active block through :func:`forward` with a
    block-causal mask (blocks aligned to absolute positions), picks x0 = argmax and
    commits positions per ``strategy``; the last step of a block commits what is left.
    Ties between equal scores go to the leftmost position.  ``shift``: position p is
    predicted by the row of p - 1 (Fast-dLLM v2).
    """
    model, x, n_prompt, n_blocks = _masked_canvas(model, prompt, max_new_tokens, block_length, mask_id)
    B = block_length
    for k in range(n_prompt // B, n_blocks):
        s = k * B
        for step in range(steps):
            # with shifted rows position 0 has no row to predict it: it stays as given
            masked = [i for i in range(B) if x[s + i] == mask_id and not (shift and s + i == 0)]
            if not masked:
                break
            rows = forward(model, x[:s + B], allowed=block_causal_allowed(s + B, B))
            if shift:
                rows = np.vstack([rows[:1], rows])     # row p - 1 predicts p (p = 0 unused)
            logits = rows[s:s + B]
            stats = [_row_stats(logits[i], mask_id) for i in masked]
            x0 = [st[0] for st in stats]
            prob = [st[1] for st in stats]
            ent = [st[2] for st in stats]
            n = min(max(B // steps + (1 if step < B % steps else 0), 1), len(masked))
            order_p = sorted(range(len(masked)), key=lambda j: (-prob[j], j))
            if step == steps - 1:
                chosen = list(range(len(masked)))
            elif strategy == "sequential":
                chosen = list(range(n))
            elif strategy == "low_confidence_static":
                chosen = order_p[:n]
            elif strategy == "low_confidence_dynamic":
                high = [j for j in range(len(masked)) if prob[j] > threshold]
                chosen = high if len(high) >= n else order_p[:n]
            elif strategy == "entropy_bounded":
                chosen, total = [], 0.0
                for j in sorted(range(len(masked)), key=lambda j: (ent[j], j)):
                    total += ent[j]
                    if total >= eb_gamma:
                        break
                    chosen.append(j)
                chosen = chosen or [min(range(len(masked)), key=lambda j: (ent[j], j))]
            else:
                raise ValueError(strategy)
            for j in chosen:
                x[s + masked[j]] = x0[j]
    return x[n_prompt:n_prompt + max_new_tokens]


def token_editing_generate(model, prompt, max_new_tokens: int, block_length: int, mask_id: int,
                           threshold: float, editing_threshold: Optional[float],
                           max_post_steps: int = 16) -> tuple[list[int], int, int]:
    """Greedy LLaDA2.1 token editing (the paper's M2T + T2T), recomputed without any cache.

    Inside the active block, each step runs prefix + block block-causally and takes x0 = argmax
    and its probability at every position. Fill: the masked positions with p > ``threshold``, or
    the single most confident masked one. Edit (``editing_threshold`` not None): every position
    placed at an earlier step (prompt tokens excluded) whose argmax differs from it and whose p
    exceeds ``editing_threshold``. Both apply at once. With editing, a block whose masks are all
    filled keeps stepping, at most ``max_post_steps`` more steps, and ends at the first step that
    changes nothing. Returns (tokens, forwards, edits).
    """
    model, x, n_prompt, n_blocks = _masked_canvas(model, prompt, max_new_tokens, block_length, mask_id)
    B = block_length
    forwards = edits = 0
    for k in range(n_prompt // B, n_blocks):
        s = k * B
        post = 0
        while True:
            masked = [i for i in range(B) if x[s + i] == mask_id]
            if not masked:
                if editing_threshold is None or post >= max_post_steps:
                    break
                post += 1
            rows = forward(model, x[:s + B], allowed=block_causal_allowed(s + B, B))
            forwards += 1
            stats = [_row_stats(rows[s + i], mask_id) for i in range(B)]
            fill = []
            if masked:
                fill = [i for i in masked if stats[i][1] > threshold]
                fill = fill or [min(masked, key=lambda i: (-stats[i][1], i))]
            edit = []
            if editing_threshold is not None:
                edit = [i for i in range(B) if x[s + i] != mask_id and s + i >= n_prompt
                        and stats[i][0] != x[s + i] and stats[i][1] > editing_threshold]
            for i in fill + edit:
                x[s + i] = stats[i][0]
            edits += len(edit)
            if not fill and not edit:
                break
    return x[n_prompt:n_prompt + max_new_tokens], forwards, edits
